package sender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"

	"github.com/smtpkit/smtpkit/internal/tlsconf"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// ErrOutcomeUnknown is smtp.ErrOutcomeUnknown: a message whose commit
// point was written but whose answer was lost (or whose caller stopped
// waiting after it was written). It may or may not have been delivered;
// the sender never sends it again.
var ErrOutcomeUnknown = smtp.ErrOutcomeUnknown

// ErrClosed is returned by Send after Shutdown or Close.
var ErrClosed = errors.New("sender: closed")

// ErrFailingFast is wrapped by the error a Send returns at once, without
// trying, while sessions keep failing (see Config.MaxDialFailures). The
// error is an [*smtp.Error] with its cause's own Op, Kind, Code, Enhanced
// code and text, and it wraps the cause: it classifies as the cause
// does.
var ErrFailingFast = errors.New("sender: failing fast")

// Sender sends messages over a bounded set of SMTP sessions, each run by
// a writer and a reader goroutine of its own. It is safe for concurrent
// use; share one per server.
//
// A Send waits, in the order Sends came, for a session with room for its
// message; the session writes it, and answers it the moment the server's
// replies settle it, whatever the other messages on that session are
// doing. A message that cannot have been delivered is written again on
// another session (see [Sender.Send]).
type Sender struct {
	cfg Config
	sem *semaphore.Weighted // one unit per session goroutine
	// ctx is cancelled by Close: it interrupts every session's I/O.
	ctx    context.Context
	cancel context.CancelFunc
	// shutdown is closed by Shutdown and Close: sessions finish their
	// in-flight work and QUIT.
	shutdown     chan struct{}
	shutdownOnce sync.Once
	wg           sync.WaitGroup // every session goroutine

	mu sync.Mutex // guards the fields below
	// closed refuses new Sends and new session goroutines.
	closed bool
	// head and tail are the attempts waiting for a session, oldest
	// first: each belongs to a caller blocked in Send, so this is not a
	// queue, only the order in which blocked callers are served (a
	// replay goes first). nwaiting counts them.
	head, tail *attempt
	nwaiting   int
	// parked are the sessions whose writer waits for an attempt, with
	// room in its window, the most recently parked last: a new attempt
	// wakes the most recent one with nothing in flight, else starts a
	// session, else wakes the most recent one with transactions in
	// flight whose server is not silent (it writes the attempt behind
	// them at once). Sessions beyond the load go idle and retire.
	parked []*conn
	// conns are every session goroutine's conn.
	conns []*conn
	// dialers are the sessions that have not yet looked for their first
	// attempt (most are dialing): a session is started only while there
	// are fewer of them than waiting attempts, and when the last waiting
	// caller withdraws, their dials are abandoned.
	dialers []*conn
	// failures counts consecutive failed sessions: dials that failed,
	// and sessions that ended (421, loss, refused login) before the
	// server gave any transaction a verdict. lastErr is the latest
	// cause, retryAt when the next dial may start (the backoff bo).
	// At cfg.MaxDialFailures Send fails fast; once retryAt has passed,
	// one Send is let through to start one new session (the probe), and
	// probing is set until that session ends.
	failures int
	lastErr  error
	retryAt  time.Time
	probing  bool
	bo       backoff.BackOff

	// failing is set while failures > 0 (written under mu), so that the
	// sessions' hot path need not take mu to report progress.
	failing atomic.Bool

	// hookValues is set when a hook reads the caller's context values
	// (Options.Policy or Options.AuditContext): WriteTx then gets them.
	hookValues bool

	// red remembers every secret any session of the Sender sent during
	// AUTH, and filters every reply of every later session with them
	// (greetings and EHLO replies before AUTH included): a server that
	// echoes a password at the next connection reveals nothing. It is
	// safe for concurrent use.
	red *smtp.Redactor

	stats counters
}

type counters struct {
	open, waiting                                       atomic.Int64
	dials, dialFailures                                 atomic.Int64
	sent, failed, replayed, unknown, seen421, withdrawn atomic.Int64
	// writerWakes counts the writers' wake-ups (not in Stats: a
	// measure of the design, for its tests).
	writerWakes atomic.Int64
}

// Stats is a snapshot of a Sender's counters.
type Stats struct {
	// Open is the number of sessions (dialing or connected); Idle the
	// connected ones with nothing in flight.
	Open, Idle int64
	// Waiting is the number of Sends waiting for a session.
	Waiting int64
	// Dials and DialFailures count connection attempts (each includes
	// TLS, greeting, EHLO and AUTH).
	Dials, DialFailures int64
	// Sent counts the Sends that returned an Outcome; Failed those that
	// returned an error other than their context's or one wrapping
	// ErrOutcomeUnknown (refusals, bad input, fail-fast, ErrClosed);
	// Unknown those whose error wraps ErrOutcomeUnknown. Every Send
	// counts once in Sent, Failed, Unknown or Withdrawn.
	Sent, Failed, Unknown int64
	// Replayed counts the times a message was written again after an
	// attempt that could not have delivered it (its own 421, or a
	// session lost before its commit point).
	Replayed int64
	// Seen421 counts the 421 replies the sessions met (each ends its
	// session), at connection time or later.
	Seen421 int64
	// Withdrawn counts the Sends whose context ended before their
	// message's commit point was written; they returned ctx.Err().
	Withdrawn int64
}

// New returns a Sender for cfg. It dials nothing until the first Send.
func New(cfg Config) (*Sender, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{
		cfg:      cfg,
		sem:      semaphore.NewWeighted(int64(cfg.MaxConns)),
		ctx:      ctx,
		cancel:   cancel,
		shutdown: make(chan struct{}),
		bo:       cfg.Backoff(),
		red:      cfg.Options.Redactor,
	}
	s.hookValues = cfg.Options.Policy != nil || cfg.Options.AuditContext != nil
	if s.red == nil {
		s.red = new(smtp.Redactor)
	}
	return s, nil
}

// A request is one Send: its message, and what the caller's goroutine
// (which alone owns it) has learnt from its attempts.
type request struct {
	ctx  context.Context
	env  smtp.Envelope
	body body
	// refusals counts the attempts that failed by their own fault: the
	// server answered them with 421, or their connection was lost while
	// they were the oldest in flight, before their commit point.
	refusals int
	// stateRetried is set once the request was written again after a 503
	// (a server in the wrong state): that happens once.
	stateRetried bool
}

// An attempt is one try at writing a request on a session: the caller
// makes it and waits for its answer, a session takes it, writes it and
// answers it. Its state only moves forward; each move is a
// compare-and-swap, so exactly one side answers the caller.
//
//	stWaiting   -> stActive     a session takes it
//	stWaiting   -> stWithdrawn  its caller gives up before that
//	stWaiting   -> stAnswered   refused while waiting: the sender shut
//	                            down, or started failing fast
//	stActive    -> stEOF        the body reached EOF: from now on its
//	                            commit point may be on the wire
//	stActive    -> stWithdrawn  its caller gives up: the body reader
//	                            refuses to reach EOF, so the commit
//	                            point is never written
//	stEOF       -> stAbandoned  its caller gives up after EOF: it
//	                            returns ErrOutcomeUnknown, and the
//	                            session still reads the real outcome
//	                            (for the audit hook)
//	stActive/stEOF -> stAnswered the session answers on result
type attempt struct {
	req    *request
	result chan result // buffered (1): the answer never blocks
	state  atomic.Int32
	// conn is the session that took the attempt, set before it leaves
	// stWaiting; a caller that withdraws it tells that session.
	conn atomic.Pointer[conn]

	// prev and next link the waiting list; listed is set while the
	// attempt is on it. Guarded by Sender.mu.
	prev, next *attempt
	listed     bool

	// tx is the transaction written for it; set by the writer that took
	// it before it is put in the window.
	tx *smtp.Tx
	// bodyBusy is set while the writer may still read the body: from
	// before WriteTx until the writer's next write-half call has
	// returned (a DATA body is written after its 354, by the next
	// Flush or WriteTx). An attempt is not answered before: a caller
	// told to write it again rewinds the body.
	bodyBusy atomic.Bool
}

const (
	stWaiting int32 = iota
	stActive
	stEOF
	stWithdrawn
	stAbandoned
	stAnswered
)

// errWithdrawn is what a withdrawn attempt's body returns to the smtp
// core instead of EOF, so its commit point is never written.
var errWithdrawn = errors.New("sender: request withdrawn by its caller")

// result is a session's answer to an attempt.
type result struct {
	out *smtp.Outcome
	err error
	// replay: the message was not committed and may be written again.
	replay bool
	// own: the attempt failed by its own fault (see request.refusals).
	own bool
	// wrote: the attempt's transaction was written (in part or whole).
	wrote bool
	// state503: the server answered 503 to its MAIL, RCPT or DATA; it
	// may be written again once, on another session.
	state503 bool
}

// body is a request's message body as the smtp core reads it: it counts
// what was read, so the message can be written again if nothing was read
// yet or if the body is an io.Seeker; and it is the gate of the commit
// point: it reports EOF only to an attempt its caller has not withdrawn.
// at is the current attempt, set by the caller's goroutine before the
// attempt is put on the waiting list; the rest is used by the session
// holding that attempt.
type body struct {
	at    *attempt
	r     io.Reader
	n     int64
	start int64
	seek  io.Seeker
	// gate is what WriteTo hands the body (kept here: no allocation
	// per message).
	gate gate
}

func (b *body) Read(p []byte) (int, error) {
	at := b.at
	if at.state.Load() == stWithdrawn {
		return 0, errWithdrawn
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err == io.EOF && !at.state.CompareAndSwap(stActive, stEOF) && at.state.Load() != stEOF {
		return n, errWithdrawn
	}
	return n, err
}

// gatePiece is the most a WriteTo body hands the core between two looks
// at whether its caller withdrew: a 25 MiB *bytes.Reader writes itself
// in one call, and a withdrawal must stop it within a piece.
const gatePiece = 1 << 20

// WriteTo lets a body that writes itself (io.WriterTo: *bytes.Reader,
// *bytes.Buffer, *strings.Reader) reach the core's copy-free road, with
// the gate of Read: a look at the attempt's state before each piece of
// at most gatePiece octets, and EOF only for an attempt not withdrawn.
// Any other body (an *os.File among them, which the core reads into its
// own buffer) is read through Read.
func (b *body) WriteTo(w io.Writer) (int64, error) {
	wt, ok := b.r.(io.WriterTo)
	if _, file := b.r.(*os.File); !ok || file {
		return io.Copy(w, readOnly{b})
	}
	at := b.at
	if at.state.Load() == stWithdrawn {
		return 0, errWithdrawn
	}
	b.gate = gate{b: b, w: w}
	n, err := wt.WriteTo(&b.gate)
	// A body that kept the gate (against the io.WriterTo contract) must
	// not reach the session's next message through it.
	b.gate.w = gateClosed{}
	if err == nil && !at.state.CompareAndSwap(stActive, stEOF) && at.state.Load() != stEOF {
		return n, errWithdrawn
	}
	return n, err
}

// gateClosed is the gate's writer once WriteTo has returned.
type gateClosed struct{}

func (gateClosed) Write([]byte) (int, error) { return 0, errWithdrawn }

// readOnly hides every method of a body but Read.
type readOnly struct{ b *body }

func (r readOnly) Read(p []byte) (int, error) { return r.b.Read(p) }

// gate is what a WriteTo body writes to: it counts what passed (for
// rewind) and stops a withdrawn attempt between pieces.
type gate struct {
	b *body
	w io.Writer
}

func (g *gate) Write(p []byte) (int, error) { return gateWrite(g, p, g.w.Write) }

// WriteString keeps a *strings.Reader's string from being copied into a
// new []byte on its way to the core.
func (g *gate) WriteString(s string) (int, error) {
	return gateWrite(g, s, func(q string) (int, error) { return io.WriteString(g.w, q) })
}

// gateWrite hands p to write in pieces of at most gatePiece octets, each
// after a look at whether the attempt was withdrawn.
func gateWrite[T []byte | string](g *gate, p T, write func(T) (int, error)) (int, error) {
	total := 0
	for len(p) > 0 {
		if g.b.at.state.Load() == stWithdrawn {
			return total, errWithdrawn
		}
		q := p[:min(len(p), gatePiece)]
		// What was handed over counts, written or not: the body has
		// moved past it.
		g.b.n += int64(len(q))
		n, err := write(q)
		total += n
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// rewind makes the body readable from its start again.
func (b *body) rewind() bool {
	if b.n == 0 {
		return true
	}
	if b.seek == nil {
		return false
	}
	if _, err := b.seek.Seek(b.start, io.SeekStart); err != nil {
		return false
	}
	b.n = 0
	return true
}

// tagKey is the context key of WithTag.
type tagKey struct{}

// WithTag returns a copy of ctx carrying tag: a Send made with it (or
// with a context derived from it) puts tag in its envelope's Tag, when
// that is empty, so every audit event of the message carries it
// ([smtp.Event.Tag]), the late one included. Use it to match an
// ErrOutcomeUnknown to the event that settles it: an order number, a
// request id. The tag is never sent to the server.
func WithTag(ctx context.Context, tag string) context.Context {
	return context.WithValue(ctx, tagKey{}, tag)
}

// Tag returns the tag WithTag attached to ctx, or "".
func Tag(ctx context.Context) string {
	t, _ := ctx.Value(tagKey{}).(string)
	return t
}

func newRequest(ctx context.Context, env smtp.Envelope, r io.Reader) *request {
	req := &request{ctx: ctx}
	if env.Tag == "" {
		env.Tag = Tag(ctx)
	}
	req.body = body{r: r}
	if s, ok := r.(io.Seeker); ok {
		if off, err := s.Seek(0, io.SeekCurrent); err == nil {
			req.body.seek, req.body.start = s, off
		}
	}
	if env.Size <= 0 {
		switch b := r.(type) {
		case *bytes.Reader:
			env.Size = int64(b.Len())
		case *strings.Reader:
			env.Size = int64(b.Len())
		case *bytes.Buffer:
			env.Size = int64(b.Len())
		}
	}
	req.env = env
	return req
}

// Send delivers one message through one of the sender's sessions and
// returns exactly one answer. It waits for a free session (dialing one
// when fewer than MaxConns are open) until ctx ends; there is no queue.
//
// If ctx ends before the message's commit point (the final "." or BDAT
// ... LAST) was written, Send returns ctx.Err() at once and the message
// is withdrawn: it is never committed, and the session goes on serving
// others when it can (a caller that gives up never counts as a failing
// server). If ctx ends after, Send
// returns at once an [*smtp.Error] wrapping both ctx.Err() and
// [ErrOutcomeUnknown]; the session finishes the transaction and its real
// outcome still reaches the audit hook. A Send cut short by Shutdown or
// Close returns an error wrapping [ErrClosed] (and ErrOutcomeUnknown if
// its commit point had been written). Other errors are [*smtp.Error]
// values, classified by smtp.IsTemporary and smtp.IsPermanent.
//
// A message is never written again after its commit point. It is written
// again, on another session, only when the server answered its own
// transaction with 421 or the connection was lost before its commit
// point, and only if its body is unread or an io.Seeker; the attempts
// that failed by its own fault are bounded by MaxAttempts.
//
// Send reads body and env.To. When it returns an Outcome, or an error
// other than those below, it no longer uses them. When it returns because
// its ctx ended, or with an error wrapping ErrClosed (Shutdown or Close)
// or ErrOutcomeUnknown, a session may still be using them: a Read of body
// already under way may still run (none begins after Send returned), and
// env.To is read until the server's replies to the message are in. Do not
// change env.To's elements, or what body reads from, after such an error;
// give a later Send a new body (as net/http asks of a Request's Body).
func (s *Sender) Send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error) {
	out, err := s.send(ctx, env, body)
	st := &s.stats
	switch {
	case err == nil:
		st.sent.Add(1)
	case errors.Is(err, ErrOutcomeUnknown):
		st.unknown.Add(1)
	case ctx.Err() != nil && err == ctx.Err():
		st.withdrawn.Add(1)
	default:
		st.failed.Add(1)
	}
	return out, err
}

// send is the life of one request, on its caller's goroutine: attempts,
// one after another, until one is answered with something other than
// "write it again", or the request may not be written again.
func (s *Sender) send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error) {
	if body == nil {
		return nil, &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindInvalidInput, Message: "nil body"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := newRequest(ctx, env, body)
	for replay := false; ; replay = true {
		at := &attempt{req: req, result: make(chan result, 1)}
		req.body.at = at
		if err := s.enqueue(at, replay); err != nil {
			return nil, err
		}
		r := s.await(ctx, at)
		if !r.replay {
			return r.out, r.err
		}
		if r.own {
			req.refusals++
		}
		if r.state503 {
			if req.stateRetried {
				return nil, r.err
			}
			req.stateRetried = true
		}
		switch {
		case req.refusals >= s.cfg.MaxAttempts, !req.body.rewind():
			return nil, r.err
		case ctx.Err() != nil:
			return nil, ctx.Err() // nothing was committed
		}
		if r.wrote {
			s.stats.replayed.Add(1)
		}
	}
}

// await waits for at's answer, or for ctx to end: then it withdraws the
// attempt (before its commit point) or abandons it (after).
func (s *Sender) await(ctx context.Context, at *attempt) result {
	select {
	case r := <-at.result:
		return r
	case <-ctx.Done():
	}
	for {
		switch st := at.state.Load(); st {
		case stWaiting:
			if at.state.CompareAndSwap(stWaiting, stWithdrawn) {
				s.unlink(at)
				return result{err: ctx.Err()}
			}
		case stActive:
			if at.state.CompareAndSwap(stActive, stWithdrawn) {
				at.conn.Load().withdrawn()
				return result{err: ctx.Err()}
			}
		case stEOF:
			if at.state.CompareAndSwap(stEOF, stAbandoned) {
				return result{err: &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindIO,
					Message: "the caller's context ended after the message's commit point may have been written",
					Err:     fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())}}
			}
		default: // stAnswered: the result is on its way
			return <-at.result
		}
	}
}

// enqueue puts at on the waiting list (first, for a replay) and gets a
// session to take it: it wakes the most recently parked session with
// nothing in flight, or starts one if there is room, or else wakes the
// most recently parked session with room in its window whose server is
// not silent. It refuses at after Shutdown, and while the sender fails
// fast, except for one attempt once the backoff has passed: that one
// starts the probe.
func (s *Sender) enqueue(at *attempt, first bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	probe := false
	if err := s.failFastLocked(); err != nil {
		if s.probing || time.Now().Before(s.retryAt) {
			return err
		}
		probe = true
	}
	switch {
	case s.head == nil:
		s.head, s.tail = at, at
	case first:
		at.next, s.head.prev, s.head = s.head, at, at
	default:
		at.prev, s.tail.next, s.tail = s.tail, at, at
	}
	at.listed = true
	s.nwaiting++
	s.stats.waiting.Store(int64(s.nwaiting))
	if s.wakeParkedLocked(true) || s.lookingLocked() || s.spawnLocked(probe) {
		return nil
	}
	s.wakeParkedLocked(false)
	return nil
}

// lookingLocked reports whether a session with nothing in flight will
// look at the waiting list before it parks (its writer is between two
// looks, flushing): it takes the attempt then, and no second connection
// is dialed for a caller that sends again as soon as it is answered.
func (s *Sender) lookingLocked() bool {
	for _, a := range s.conns {
		if a.looking && a.nflight.Load() == 0 {
			return true
		}
	}
	return false
}

// wakeParkedLocked wakes the most recently parked session that is idle
// (nothing in flight), or, with idle false, one with transactions in
// flight whose server is not silent. It reports whether it woke one.
func (s *Sender) wakeParkedLocked(idle bool) bool {
	for i := len(s.parked) - 1; i >= 0; i-- {
		a := s.parked[i]
		busy := a.nflight.Load() > 0
		if busy == idle || busy && a.silent() {
			continue
		}
		s.parked = slices.Delete(s.parked, i, i+1)
		a.parked = false
		a.looking = true
		a.wake <- struct{}{} // one slot, empty while parked: never blocks
		return true
	}
	return false
}

// unlinkLocked takes at off the waiting list, if it is on it.
func (s *Sender) unlinkLocked(at *attempt) {
	if !at.listed {
		return
	}
	if at.prev == nil {
		s.head = at.next
	} else {
		at.prev.next = at.next
	}
	if at.next == nil {
		s.tail = at.prev
	} else {
		at.next.prev = at.prev
	}
	at.prev, at.next, at.listed = nil, nil, false
	s.nwaiting--
	s.stats.waiting.Store(int64(s.nwaiting))
}

// unlink takes a withdrawn attempt off the waiting list. If nobody waits
// any more, the sessions still dialing for them give up: a dial (and its
// backoff) lasts only while someone waits.
func (s *Sender) unlink(at *attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unlinkLocked(at)
	if s.nwaiting == 0 {
		for _, a := range s.dialers {
			a.abandonDial()
		}
	}
}

// dialedLocked takes a off the dialers: it has looked for an attempt, or
// ended.
func (s *Sender) dialedLocked(a *conn) {
	if i := slices.Index(s.dialers, a); i >= 0 {
		s.dialers = slices.Delete(s.dialers, i, i+1)
	}
}

// next takes the oldest waiting attempt for session a, or returns nil.
// With park set and nothing waiting, it parks a instead: an enqueue
// wakes it. Attempts are taken one at a time, each just before
// it is written, so none waits bound to a session whose write blocks
// while another session could take it. An attempt taken here may have
// been withdrawn by its caller meanwhile; take tells.
func (s *Sender) next(a *conn, park bool) *attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialedLocked(a)
	// A session with transactions in flight leaves to the sessions
	// being dialed as many attempts as there are of them: behind a slow
	// reply (a content filter), a new connection may be the faster way,
	// and the enqueue that started one meant it for this attempt.
	if at := s.head; at != nil && (a.nflight.Load() == 0 || s.nwaiting > len(s.dialers)) {
		s.unlinkLocked(at)
		a.looking = false
		return at
	}
	a.looking = !park
	if park {
		s.parkLocked(a)
	}
	return nil
}

// parkLocked puts a's writer on the parked list, where an enqueue finds
// it and wakes it through its wake slot (which must be empty).
func (s *Sender) parkLocked(a *conn) {
	a.parked, a.looking = true, false
	s.parked = append(s.parked, a)
}

// nextFor is next for the reader writing in a's writer's stead (see
// conn.help): it takes the oldest waiting attempt only if ok says the
// reader may write it, and touches neither the parked list nor
// a.looking. It reports, when it takes none, whether nothing waits.
func (s *Sender) nextFor(a *conn, ok func(*attempt) bool) (at *attempt, empty bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at = s.head
	switch {
	case at == nil:
		return nil, true
	case a.nflight.Load() > 0 && s.nwaiting <= len(s.dialers), !ok(at):
		return nil, false
	}
	s.unlinkLocked(at)
	return at, false
}

// parkWriter parks a's writer for the reader, which holds its write
// token while the writer waits, if nothing waits. It reports whether
// the writer is parked with nothing waiting: the next enqueue wakes it.
func (s *Sender) parkWriter(a *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.head != nil {
		return false
	}
	// A token in wake (an enqueue woke the writer, which has not taken
	// it yet) will make it look: parking it now would break the rule
	// that wake is empty while it is parked.
	if !a.parked && len(a.wake) == 0 {
		s.parkLocked(a)
	}
	return true
}

// notLooking records that a's writer waits without looking at the
// waiting list (its window is full, its server silent, or it retires).
func (s *Sender) notLooking(a *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.looking = false
}

// unpark takes a off the parked list. It reports false if an enqueue
// woke a meanwhile: a's wake slot then holds the token.
func (s *Sender) unpark(a *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !a.parked {
		return false
	}
	a.parked = false
	a.looking = true
	for i, p := range s.parked {
		if p == a {
			s.parked = slices.Delete(s.parked, i, i+1)
			break
		}
	}
	return true
}

// waitingNow reports whether any attempt waits for a session.
func (s *Sender) waitingNow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nwaiting > 0
}

// spawnLocked starts a session goroutine if the sender is open, fewer
// session goroutines are dialing than attempts wait, and fewer than
// MaxConns run. Holding mu, it adds no goroutine to wg after Close has
// begun waiting for them. A probe is the one session started while the
// sender fails fast.
func (s *Sender) spawnLocked(probe bool) bool {
	if s.closed || len(s.dialers) >= s.nwaiting || !s.sem.TryAcquire(1) {
		return false
	}
	a := newConn(s, probe)
	s.dialers = append(s.dialers, a)
	s.conns = append(s.conns, a)
	if probe {
		s.probing = true
	}
	s.wg.Add(1)
	s.stats.open.Add(1)
	go a.run()
	return true
}

// kick starts sessions for the waiting attempts, as many as there is
// room for: a session goroutine ended, so one may start in its place.
func (s *Sender) kick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.spawnLocked(false) {
	}
}

// failWaitingLocked answers every waiting attempt with err.
func (s *Sender) failWaitingLocked(err error) {
	for s.head != nil {
		at := s.head
		s.unlinkLocked(at)
		if at.state.CompareAndSwap(stWaiting, stAnswered) {
			at.result <- result{err: err}
		}
	}
}

// failFastLocked returns the error for Sends while sessions keep
// failing, or nil: an [*smtp.Error] with the last cause's own Op, Kind,
// codes and text, saying once that the sender fails fast and until
// when, and wrapping ErrFailingFast and the cause.
func (s *Sender) failFastLocked() error {
	if s.failures < s.cfg.MaxDialFailures {
		return nil
	}
	ff := &failingFast{until: s.retryAt, cause: s.lastErr}
	e := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: ff}
	if ce, ok := errors.AsType[*smtp.Error](s.lastErr); ok {
		e.Op, e.Kind, e.Code, e.Enhanced, e.Recipient = ce.Op, ce.Kind, ce.Code, ce.Enhanced, ce.Recipient
		e.Message = ce.Message
		if ce.Err != nil {
			if e.Message != "" {
				e.Message += ": "
			}
			e.Message += ce.Err.Error()
		}
	} else if s.lastErr != nil {
		e.Message = s.lastErr.Error()
	}
	return e
}

// failingFast is the cause of a fail-fast error: it says until when, and
// unwraps to ErrFailingFast and the session's cause.
type failingFast struct {
	until time.Time
	cause error
}

func (f *failingFast) Error() string {
	return "sender failing fast until " + f.until.Format("15:04:05.000") + ", after sessions kept failing"
}

func (f *failingFast) Unwrap() []error {
	if f.cause == nil {
		return []error{ErrFailingFast}
	}
	return []error{ErrFailingFast, f.cause}
}

// dialDelay is how long a new session waits before dialing: nothing
// after a success, what is left of the backoff after failures.
func (s *Sender) dialDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(time.Until(s.retryAt), 0)
}

// sessionFailed records a session that delivered nothing: its dial
// failed, or it broke (421, loss, a server silent past its timeout)
// before the server accepted any message, and not because its callers
// gave up. The next dial waits the backoff; when Sends
// start failing fast, the waiting ones are answered with the fail-fast
// error.
func (s *Sender) sessionFailed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures++
	if credentialsRefused(err) || smtp.IsConfig(err) {
		// Retrying a refused password soon only risks locking the
		// account, and no setup error (an untrusted certificate, the
		// wrong TLS mode) goes away by itself: fail fast now, and let
		// the backoff pace the next attempt, which only a Send starts.
		s.failures = max(s.failures, s.cfg.MaxDialFailures)
	}
	s.lastErr = err
	d := s.bo.NextBackOff()
	if d == backoff.Stop {
		d = time.Second
	}
	s.retryAt = time.Now().Add(d)
	s.failing.Store(true)
	if err := s.failFastLocked(); err != nil {
		s.failWaitingLocked(err)
	}
}

// progress records that a server accepted a message (a 2xx to a
// committed transaction): the failures are forgotten, and the backoff
// starts again from its first step. A refusal is no progress: a server
// that refuses and then hangs up is still failing.
func (s *Sender) progress() {
	if !s.failing.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = 0
	s.lastErr = nil
	s.retryAt = time.Time{}
	s.bo.Reset()
	s.failing.Store(false)
}

// sessionEnded is a session goroutine's last word under mu.
func (s *Sender) sessionEnded(a *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialedLocked(a)
	a.looking = false
	if i := slices.Index(s.conns, a); i >= 0 {
		s.conns = slices.Delete(s.conns, i, i+1)
	}
	if a.probe {
		s.probing = false
	}
}

// credentialsRefused reports whether a dial failed because the server
// permanently refused the credentials (5xx to AUTH) or they were invalid.
func credentialsRefused(err error) bool {
	e, ok := errors.AsType[*smtp.Error](err)
	return ok && e.Op == smtp.OpAUTH && (e.Kind == smtp.KindInvalidInput || e.Kind == smtp.KindAuth && e.Code >= 500)
}

// sleep waits d, or until ctx ends or the sender is shut down; it
// reports whether the full time passed.
func (s *Sender) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-s.shutdown:
	}
	return false
}

// connect dials, greets, upgrades and authenticates one session, within
// parent and DialTimeout (which bounds all of it, whatever the caller's
// context). A session that never got going because client and server
// disagree on TLS says so.
func (s *Sender) connect(parent context.Context, a *conn) (*smtp.Client, error) {
	s.stats.dials.Add(1)
	cfg := &s.cfg
	ctx, cancel := context.WithTimeout(parent, cfg.DialTimeout)
	defer cancel()
	c, err := s.dialSession(ctx, a)
	if err != nil && parent.Err() == nil {
		if hint := tlsModeHint(cfg.Security, err); hint != "" {
			// A setup error (smtp.IsConfig): nothing will go until the
			// Security mode or the port changes.
			e := &smtp.Error{Op: smtp.OpGreeting, Kind: smtp.KindInvalidInput, Message: hint}
			if de, ok := errors.AsType[*smtp.Error](err); ok {
				e.Err = de.Err
				if de.Err == nil {
					e.Err = errors.New(de.Message)
				}
			} else {
				e.Err = err
			}
			err = e
		}
	}
	return c, err
}

func (s *Sender) dialSession(ctx context.Context, a *conn) (*smtp.Client, error) {
	cfg := &s.cfg
	var t transport.Transport
	var err error
	switch {
	case cfg.Dial != nil:
		t, err = cfg.Dial(ctx)
	case cfg.Security == ImplicitTLS:
		t, err = transport.DialTLS(ctx, cfg.Addr, cfg.Options.TLSConfig)
	default:
		t, err = transport.Dial(ctx, cfg.Addr)
	}
	if err != nil {
		// Certificate names and anything else from the server pass the
		// Sender's one filter.
		return nil, &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: s.red.WrapError(err)}
	}
	opts := cfg.Options
	if (opts.TLSConfig == nil || opts.TLSConfig.ServerName == "") && cfg.Addr != "" {
		// The server's name, for STARTTLS and OAUTHBEARER: Addr's host.
		opts.TLSConfig = tlsconf.Client(opts.TLSConfig, cfg.Addr)
	}
	if opts.Redactor == nil {
		opts.Redactor = s.red
	}
	var c *smtp.Client
	if cfg.Security == StartTLS {
		st, ok := t.(transport.StartTLSCapable)
		if !ok {
			t.Close()
			return nil, &smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindInvalidInput, Message: "Config.Dial returned a transport that cannot be upgraded (wrap it with transport.Upgradable)"}
		}
		c, err = smtp.ConnectStartTLS(ctx, st, &opts)
	} else {
		c, err = smtp.Connect(ctx, t, &opts)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Credentials != nil {
		cr, err := cfg.Credentials(ctx)
		if err != nil {
			c.Close()
			return nil, &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Message: "credentials provider failed", Err: err}
		}
		if cr.Mechanism == "" {
			err = c.Login(ctx, cr.Username, cr.Secret)
		} else {
			err = c.LoginWith(ctx, cr.Mechanism, cr.Username, cr.Secret)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Verify checks the configuration end to end, as a service does at
// startup: it dials, sets up TLS, reads the greeting, sends EHLO,
// authenticates when Credentials is set, and ends the session with QUIT,
// within ctx and DialTimeout. It returns nil, or the [*smtp.Error] a Send
// would have met (classify it with smtp.IsConfig, smtp.IsTemporary...),
// or ErrClosed after Shutdown or Close. It does not count towards
// fail-fast, and is safe to call at any time from any goroutine.
func (s *Sender) Verify(ctx context.Context) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	c, err := s.connect(ctx, nil)
	if err != nil {
		if s.ctx.Err() != nil {
			return ErrClosed
		}
		return err
	}
	return c.Quit(ctx)
}

// Shutdown stops accepting Sends: new Sends, and Sends still waiting for
// a session (none has written their message yet), return ErrClosed at
// once, as does a message in flight that would have to be written again
// on another session. It lets the sessions finish the messages they have
// written, QUIT, and waits for them until ctx ends; then it closes what
// is left, like Close, and returns ctx.Err(). It is idempotent.
func (s *Sender) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}

// Close aborts at once: Sends waiting for a session return ErrClosed,
// every session is closed without QUIT, messages in flight are answered
// (ErrOutcomeUnknown for those past their commit point), and Close waits for every goroutine the Sender started. It is
// idempotent.
func (s *Sender) Close() error {
	s.beginShutdown()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Sender) beginShutdown() {
	s.shutdownOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.failWaitingLocked(ErrClosed)
		s.mu.Unlock()
		close(s.shutdown)
	})
}

// Stats returns a snapshot of the counters.
func (s *Sender) Stats() Stats {
	var idle int64
	s.mu.Lock()
	for _, a := range s.conns {
		if a.up.Load() && a.nflight.Load() == 0 {
			idle++
		}
	}
	s.mu.Unlock()
	return Stats{
		Open:         s.stats.open.Load(),
		Idle:         idle,
		Waiting:      s.stats.waiting.Load(),
		Dials:        s.stats.dials.Load(),
		DialFailures: s.stats.dialFailures.Load(),
		Sent:         s.stats.sent.Load(),
		Failed:       s.stats.failed.Load(),
		Unknown:      s.stats.unknown.Load(),
		Replayed:     s.stats.replayed.Load(),
		Seen421:      s.stats.seen421.Load(),
		Withdrawn:    s.stats.withdrawn.Load(),
	}
}

package sender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"

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

// Sender sends messages over a bounded set of SMTP sessions, each owned
// by one goroutine. It is safe for concurrent use; share one per server.
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
	// head and tail are the Sends waiting for a session, oldest first:
	// each is a caller blocked in Send, so this is not a queue, only the
	// order in which blocked callers are served. Sessions take requests
	// from the head without waking their callers; a caller is woken once,
	// by its answer.
	head, tail *request
	queued     int
	// parked are the sessions with nothing in flight, waiting for a
	// request, the most recently used last: a new request wakes that one,
	// so sessions beyond the load go idle and retire.
	parked []*conn
	// dialFailures counts consecutive failed dials; lastDialErr is the
	// latest. At cfg.MaxDialFailures Send fails fast while one session
	// goroutine (the probe) keeps trying.
	dialFailures int
	lastDialErr  error
	probing      bool
	// dialing counts the session goroutines started for waiting Sends
	// that have not yet reached their first request (most are dialing):
	// a session is started only while there are fewer of them than
	// waiting Sends.
	dialing int
	bo      backoff.BackOff

	stats counters
}

type counters struct {
	open, idle, waiting                                 atomic.Int64
	dials, dialFailures                                 atomic.Int64
	sent, failed, replayed, unknown, seen421, withdrawn atomic.Int64
}

// Stats is a snapshot of a Sender's counters.
type Stats struct {
	// Open is the number of sessions (dialing or connected); Idle those
	// with nothing in flight.
	Open, Idle int
	// Waiting is the number of Sends waiting for a session.
	Waiting int
	// Dials and DialFailures count connection attempts (each includes
	// TLS, greeting, EHLO and AUTH).
	Dials, DialFailures int64
	// Sent counts the Sends that returned an Outcome; Failed those that
	// returned an error other than their context's or one wrapping
	// ErrOutcomeUnknown (refusals, bad input, fail-fast, ErrClosed);
	// Unknown those whose error wraps ErrOutcomeUnknown. Every Send
	// counts once in Sent, Failed, Unknown or Withdrawn.
	Sent, Failed, Unknown int64
	// Replayed counts requests written again on a new session after a
	// 421 or a lost session before their commit point.
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
	}
	return s, nil
}

// Request states. The caller (Send) and the session goroutine holding
// the request race on the transitions; each is a compare-and-swap, so
// exactly one side answers the caller.
//
//	stQueued    -> stActive     the session takes it
//	stQueued    -> stWithdrawn  the caller gives up before that
//	stQueued    -> stAnswered   refused while waiting: the sender shut
//	                            down, or started failing fast
//	stActive    -> stEOF        the body reached EOF: from now on its
//	                            commit point may be on the wire
//	stActive    -> stWithdrawn  the caller gives up: the body reader
//	                            refuses to reach EOF, so the commit
//	                            point is never written
//	stEOF       -> stActive     the session will replay it (the commit
//	                            point was not written, or drew a 421)
//	stEOF       -> stAbandoned  the caller gives up after EOF: it
//	                            returns ErrOutcomeUnknown and the session
//	                            still reads the real outcome (for audit)
//	stActive/stEOF -> stAnswered the session answers on result
const (
	stQueued int32 = iota
	stActive
	stEOF
	stWithdrawn
	stAbandoned
	stAnswered
)

// errWithdrawn is what a withdrawn request's body returns to the smtp
// core instead of EOF, so its commit point is never written.
var errWithdrawn = errors.New("sender: request withdrawn by its caller")

type request struct {
	ctx    context.Context
	env    smtp.Envelope
	body   body
	result chan result // buffered (1): the answer never blocks
	state  atomic.Int32
	// conn is the session goroutine holding the request, set before it
	// leaves stQueued; a caller that withdraws it tells that session.
	conn atomic.Pointer[conn]

	// prev and next link the waiting list; queued is set while the
	// request is on it. Guarded by Sender.mu.
	prev, next *request
	queued     bool

	// Owned by the session goroutine that holds the request.
	tx       *smtp.Tx
	attempts int
	lastErr  error
}

type result struct {
	out *smtp.Outcome
	err error
}

// body is a request's message body as the smtp core reads it: it counts
// what was read, so the request can be written again if nothing was read
// yet or if the body is an io.Seeker; and it is the gate of the commit
// point: it reports EOF only to a request its caller has not withdrawn.
type body struct {
	req   *request
	r     io.Reader
	n     int64
	start int64
	seek  io.Seeker
}

func (b *body) Read(p []byte) (int, error) {
	if b.req.state.Load() == stWithdrawn {
		return 0, errWithdrawn
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err == io.EOF && !b.req.state.CompareAndSwap(stActive, stEOF) && b.req.state.Load() != stEOF {
		return n, errWithdrawn
	}
	return n, err
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

func newRequest(ctx context.Context, env smtp.Envelope, r io.Reader) *request {
	req := &request{ctx: ctx, result: make(chan result, 1)}
	req.body = body{req: req, r: r}
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
// is withdrawn: it is never committed (the session abandons it with
// RSET, or drops the connection when bytes of it are half-written; a
// connection left with nothing else to do is kept if the server answers
// within a second, and interrupted otherwise). If
// ctx ends after, Send returns at once an [*smtp.Error] wrapping both
// ctx.Err() and [ErrOutcomeUnknown]; the session finishes the
// transaction and its real outcome still reaches the audit hook. Other
// errors are [*smtp.Error] values, classified by smtp.IsTemporary and
// smtp.IsPermanent, or [ErrClosed]. A message is never written again
// after its commit point: after a 421 or a lost session, only requests
// whose commit point was not written (or that got the 421) are replayed
// on a new session, and only if their body is unread or an io.Seeker.
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

func (s *Sender) send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error) {
	if body == nil {
		return nil, &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindInvalidInput, Message: "nil body"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := newRequest(ctx, env, body)
	if err := s.enqueue(req); err != nil {
		return nil, err
	}
	select {
	case r := <-req.result:
		return r.out, r.err
	case <-ctx.Done():
	}
	for {
		switch st := req.state.Load(); st {
		case stQueued:
			if req.state.CompareAndSwap(stQueued, stWithdrawn) {
				s.unlink(req)
				return nil, ctx.Err()
			}
		case stActive:
			if req.state.CompareAndSwap(stActive, stWithdrawn) {
				req.conn.Load().withdrawn()
				return nil, ctx.Err()
			}
		case stEOF:
			if req.state.CompareAndSwap(stEOF, stAbandoned) {
				return nil, &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindIO,
					Message: "the caller's context ended after the message's commit point may have been written",
					Err:     fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())}
			}
		default: // stAnswered: the result is on its way
			r := <-req.result
			return r.out, r.err
		}
	}
}

// enqueue puts req on the waiting list and gets a session to take it: it
// wakes the most recently parked session, or starts one if there is
// room. It refuses req after Shutdown, and while the sender fails fast.
func (s *Sender) enqueue(req *request) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.failFastLocked(); err != nil {
		return err
	}
	req.prev, req.queued = s.tail, true
	if s.tail == nil {
		s.head = req
	} else {
		s.tail.next = req
	}
	s.tail = req
	s.queued++
	s.stats.waiting.Store(int64(s.queued))
	if n := len(s.parked); n > 0 {
		a := s.parked[n-1]
		s.parked[n-1] = nil
		s.parked = s.parked[:n-1]
		a.parked = false
		a.wake <- struct{}{} // one slot, empty while parked: never blocks
		return nil
	}
	s.spawnLocked()
	return nil
}

// unlinkLocked takes req off the waiting list, if it is on it.
func (s *Sender) unlinkLocked(req *request) {
	if !req.queued {
		return
	}
	if req.prev == nil {
		s.head = req.next
	} else {
		req.prev.next = req.next
	}
	if req.next == nil {
		s.tail = req.prev
	} else {
		req.next.prev = req.prev
	}
	req.prev, req.next, req.queued = nil, nil, false
	s.queued--
	s.stats.waiting.Store(int64(s.queued))
}

// unlink takes a withdrawn request off the waiting list.
func (s *Sender) unlink(req *request) {
	s.mu.Lock()
	s.unlinkLocked(req)
	s.mu.Unlock()
}

// next takes the oldest waiting request for session a, or returns nil.
// With park set and nothing waiting, it parks a instead: the next
// enqueue wakes it. Requests are taken one at a time, each just before
// it is written, so none waits bound to a session whose write blocks
// while another session could take it. A request taken here may have
// been withdrawn by its caller meanwhile; hold tells.
func (s *Sender) next(a *conn, park bool) (req *request, parked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.dialing {
		a.dialing = false
		s.dialing--
	}
	if req = s.head; req != nil {
		s.unlinkLocked(req)
		return req, false
	}
	if park {
		a.parked = true
		s.parked = append(s.parked, a)
	}
	return nil, park
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
	for i, p := range s.parked {
		if p == a {
			s.parked = slices.Delete(s.parked, i, i+1)
			break
		}
	}
	return true
}

// spawnLocked starts a session goroutine if the sender is open, fewer
// session goroutines are dialing than requests wait, and fewer than
// MaxConns run. Holding mu, it adds no goroutine to wg after Close has
// begun waiting for them.
func (s *Sender) spawnLocked() bool {
	if s.closed || s.dialing >= s.queued || !s.sem.TryAcquire(1) {
		return false
	}
	s.dialing++
	s.wg.Add(1)
	s.stats.open.Add(1)
	go s.session()
	return true
}

// kick starts sessions for the waiting requests, as many as there is
// room for: a session goroutine ended, so one may start in its place.
func (s *Sender) kick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.spawnLocked() {
	}
}

// failQueuedLocked answers every waiting request with err.
func (s *Sender) failQueuedLocked(err error) {
	for s.head != nil {
		req := s.head
		s.unlinkLocked(req)
		if req.state.CompareAndSwap(stQueued, stAnswered) {
			req.result <- result{err: err}
		}
	}
}

// failFastLocked returns the error for Sends while dials keep failing,
// or nil. The error wraps the last dial error and carries its code and
// kind, so it classifies as that error does.
func (s *Sender) failFastLocked() error {
	if s.dialFailures < s.cfg.MaxDialFailures {
		return nil
	}
	e := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO,
		Message: "the server cannot be reached or refused the login; failing fast while a probe retries",
		Err:     s.lastDialErr}
	if de, ok := errors.AsType[*smtp.Error](s.lastDialErr); ok {
		e.Op, e.Kind, e.Code, e.Enhanced = de.Op, de.Kind, de.Code, de.Enhanced
	}
	return e
}

// failingFast returns the fail-fast error, or nil while dials work.
func (s *Sender) failingFast() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failFastLocked()
}

// dialed records that a session goroutine ended before it reached its
// first request.
func (s *Sender) dialed() {
	s.mu.Lock()
	s.dialing--
	s.mu.Unlock()
}

// dialDelay is how long a new session waits before dialing: nothing
// after a success, the backoff after failures.
func (s *Sender) dialDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialFailures == 0 {
		return 0
	}
	d := s.bo.NextBackOff()
	if d == backoff.Stop {
		d = time.Second
	}
	return d
}

// dialFailed records a failed dial; when Sends start failing fast, it
// answers the waiting ones with the fail-fast error. It reports
// whether the caller has become the probe: the one session goroutine
// that keeps dialing, with backoff, while Sends fail fast.
func (s *Sender) dialFailed(err error) (probe bool) {
	s.stats.dialFailures.Add(1)
	if e, ok := errors.AsType[*smtp.Error](err); ok && e.Code == 421 {
		s.stats.seen421.Add(1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialFailures++
	if credentialsRefused(err) {
		// Retrying a refused password at once only risks locking the
		// account: fail fast now, and let the probe's backoff pace
		// further attempts.
		s.dialFailures = max(s.dialFailures, s.cfg.MaxDialFailures)
	}
	s.lastDialErr = err
	if err := s.failFastLocked(); err != nil {
		s.failQueuedLocked(err)
	}
	if s.dialFailures >= s.cfg.MaxDialFailures && !s.probing {
		s.probing = true
		return true
	}
	return false
}

// credentialsRefused reports whether a dial failed because the server
// permanently refused the credentials (5xx to AUTH) or they were invalid.
func credentialsRefused(err error) bool {
	e, ok := errors.AsType[*smtp.Error](err)
	return ok && e.Op == smtp.OpAuth && (e.Kind == smtp.KindInvalidInput || e.Kind == smtp.KindAuth && e.Code >= 500)
}

// dialSucceeded records a dial that worked; the probe gives up its role.
func (s *Sender) dialSucceeded(probe bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialFailures = 0
	s.lastDialErr = nil
	s.bo.Reset()
	if probe {
		s.probing = false
	}
}

func (s *Sender) stopProbing() {
	s.mu.Lock()
	s.probing = false
	s.mu.Unlock()
}

// sleep waits d, or until the sender is closed or stop is closed; it
// reports whether the full time passed.
func (s *Sender) sleep(d time.Duration, stop <-chan struct{}) bool {
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
	case <-stop:
	}
	return false
}

// connect dials, greets, upgrades and authenticates one session, within
// ctx and DialTimeout.
func (s *Sender) connect(parent context.Context, a *conn) (*smtp.Client, error) {
	s.stats.dials.Add(1)
	cfg := &s.cfg
	ctx, cancel := context.WithTimeout(parent, cfg.DialTimeout)
	defer cancel()
	var t transport.Transport
	var err error
	switch {
	case cfg.Dial != nil:
		t, err = cfg.Dial(ctx)
	case cfg.Security == ImplicitTLS:
		t, err = transport.DialTLS(ctx, cfg.Addr, cfg.TLSConfig)
	default:
		t, err = transport.Dial(ctx, cfg.Addr)
	}
	if err != nil {
		return nil, &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: err}
	}
	t = a.watch(t)
	opts := cfg.Options
	if opts.ServerName == "" && cfg.Addr != "" {
		opts.ServerName = cfg.Addr
	}
	var c *smtp.Client
	if cfg.Security == StartTLS {
		st, ok := t.(transport.StartTLSCapable)
		if !ok {
			t.Close()
			return nil, &smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindInvalidInput, Message: "Config.Dial returned a transport that cannot be upgraded (wrap it with transport.Upgradable)"}
		}
		tcfg := cfg.TLSConfig
		if (tcfg == nil || tcfg.ServerName == "") && cfg.Addr != "" {
			tcfg = transport.ClientTLSConfig(tcfg, cfg.Addr)
		}
		c, err = smtp.ConnectStartTLS(ctx, st, cfg.LocalName, tcfg, &opts)
	} else {
		c, err = smtp.Connect(ctx, t, cfg.LocalName, &opts)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Credentials != nil {
		cr, err := cfg.Credentials(ctx)
		if err != nil {
			c.Close()
			return nil, &smtp.Error{Op: smtp.OpAuth, Kind: smtp.KindAuth, Message: "credentials provider failed", Err: err}
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

// Shutdown stops accepting Sends (they return ErrClosed), lets the
// sessions finish their in-flight work and QUIT, and waits for them
// until ctx ends; then it closes what is left, like Close, and returns
// ctx.Err(). It is idempotent.
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

// Close aborts at once: every session is closed without QUIT, requests
// in flight are answered (ErrOutcomeUnknown for those past their commit
// point), and Close waits for every goroutine the Sender started. It is
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
		s.failQueuedLocked(ErrClosed)
		s.mu.Unlock()
		close(s.shutdown)
	})
}

// Stats returns a snapshot of the counters.
func (s *Sender) Stats() Stats {
	return Stats{
		Open:         int(s.stats.open.Load()),
		Idle:         int(s.stats.idle.Load()),
		Waiting:      int(s.stats.waiting.Load()),
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

package sender

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/internal/smtpx"
	"github.com/smtpkit/smtpkit/smtp"
)

// What the sessions need of smtp.Tx and smtp.Client beyond the API
// (package smtp sets them; see internal/smtpx).
var (
	clientSilent  = smtpx.ClientSilent.(func(*smtp.Client) time.Duration)
	txSettled     = smtpx.TxSettled.(func(*smtp.Tx) (bool, *smtp.Outcome, error, bool, bool, error))
	clientFinish  = smtpx.ClientFinished.(func(*smtp.Client) uint64)
	openWaiting   = smtpx.ClientOpenWaiting.(func(*smtp.Client) bool)
	readerWrites  = smtpx.ClientWritesFromReader.(func(*smtp.Client, int) bool)
	flushReady    = smtpx.ClientFlushReady.(func(*smtp.Client, context.Context, bool) (bool, error))
	replyBuffered = smtpx.ClientReplyBuffered.(func(*smtp.Client) bool)
)

// conn is one connection and its two goroutines, as net/http's
// persistConn has writeLoop and readLoop. The writer (run) dials, takes
// attempts and writes them, in order: it alone writes commands. The
// reader (read) reads replies and answers each attempt the moment its
// transaction is done. A conn never redials: an attempt that may be
// written again goes back to its caller, which puts it on the waiting
// list for another session.
type conn struct {
	s *Sender
	// probe is set (for good) on the one session started while the
	// sender fails fast.
	probe bool
	// c is set by the writer before the reader starts, and only read
	// after.
	c *smtp.Client
	// ctx bounds the connection: cancelled by Close (through the
	// sender's), by abandonDial, and by the grace after a withdrawal.
	ctx context.Context

	// wtok is the write token: whoever holds it writes on c and owns
	// the fields below it. The writer holds it except while it waits in
	// serve's select; the reader takes it only with TryLock, to write in
	// the writer's stead (help), so it never waits for the writer.
	wtok sync.Mutex
	// helps is set, before the reader starts, when the reader may write
	// in the writer's stead: no Policy hook (user code that may be slow
	// must not hold up the reading of replies).
	helps bool

	// Owned by the holder of wtok.
	born    time.Time
	written int // attempts written on the connection
	// last is the attempt written last, whose body the next write-half
	// call may still read (see attempt.bodyBusy).
	last *attempt

	// up is set while the session is connected (for Stats).
	up atomic.Bool
	// noMore is set once the session must take no more attempts: the
	// server is closing it (a 421 seen by WriteTx), or answered 503 to a
	// transaction's MAIL, RCPT or DATA (its state is wrong). Set by
	// either goroutine.
	noMore atomic.Bool
	// nflight is len(inflight), for the enqueuers, who may not take mu.
	nflight atomic.Int32
	// idle is when the window last emptied (unix nanoseconds), stored
	// by whoever emptied it; set when the session starts.
	idle atomic.Int64

	// parked is set while the writer waits on the sender's parked list,
	// and looking while it runs between two looks at the waiting list
	// with nothing taken since (both guarded by Sender.mu); wake, with
	// one slot, is how the enqueue that takes it off the list wakes it.
	parked  bool
	looking bool
	wake    chan struct{}
	// progress, with one slot, is the reader's word to the writer that
	// an attempt was answered or the session ended.
	progress chan struct{}
	// readerDone is closed when the reader goroutine ends.
	readerDone chan struct{}

	mu sync.Mutex // guards the fields below
	// inDial is set until the connection is made: abandonDial cancels
	// ctx only then.
	inDial bool
	// stop cancels ctx.
	stop context.CancelFunc
	// inflight are the attempts written and not yet answered, in order:
	// the writer appends, whoever answers pops.
	inflight []*attempt
	// live counts the attempts taken and not yet answered, other than
	// those their callers withdrew.
	live int
	// grace, when set, ends the connection withdrawGrace after it was
	// left with no live attempt and withdrawn ones in flight, unless an
	// answer came meanwhile; withdrew is set from a withdrawal until then.
	grace    *time.Timer
	withdrew bool
	// delivered is set once the server accepted a message on the
	// session: the server works, and the session did not fail.
	delivered bool
	// blamed is set once a loss has been counted against the attempt
	// that was oldest in flight; seen421 once the connection's 421 has
	// been counted.
	blamed  bool
	seen421 bool
	// notYet, when not zero, is one more than the client's count of
	// finished transactions when answerDone last found the oldest in
	// flight not done (see answerDone); stored under mu, read without.
	notYet atomic.Uint64
	// callerEnded is set when the session ended because callers gave
	// up: a body withdrawn mid-DATA dropped it, or the grace ran out.
	// That is never the server's failure.
	callerEnded bool
}

// withdrawGrace is how long a connection whose last live attempt was
// withdrawn may go on with the exchange under way (the RSET that abandons
// the transaction, or the replies of transactions nobody waits for)
// without any answer before it is closed: a server that answers keeps
// the connection, one that stalls frees the session within this time.
const withdrawGrace = time.Second

// silentAfter is how long a server may owe a reply without sending any
// before its session takes no new attempt: the replies to MAIL, RCPT and
// BDAT chunks come within a round trip and the server's lookup time on
// any server a sender talks to, far below this; a server past it has
// stalled, or is running a slow check (a content filter before the final
// reply). Either way, a new message written behind it would get its
// replies only after the slow one (replies come in order): it is better
// off on another session, or waiting for one. The bound is never
// extended by new work, since none is given.
const silentAfter = 200 * time.Millisecond

// newConn makes the conn a new writer goroutine will run; its context
// is the sender's until the session ends, abandons its dial, or runs out
// of grace.
func newConn(s *Sender, probe bool) *conn {
	a := &conn{s: s, probe: probe, wake: make(chan struct{}, 1), progress: make(chan struct{}, 1),
		readerDone: make(chan struct{}), inDial: true}
	a.ctx, a.stop = context.WithCancel(s.ctx)
	return a
}

// abandonDial ends the wait and the dial of a session nobody waits for
// any more (called with Sender.mu held).
func (a *conn) abandonDial() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inDial {
		a.stop()
	}
}

// run is the writer goroutine of one conn. It waits what is left of the
// backoff, dials if anyone still waits, starts the reader, and writes
// attempts until the connection is done. A dial that fails, or a
// connection that breaks before the server accepted any message (other
// than by callers giving up), counts as a failed session (backoff,
// fail-fast).
func (a *conn) run() {
	s := a.s
	defer func() {
		s.sessionEnded(a)
		a.mu.Lock()
		a.stop()
		a.disarmGraceLocked()
		a.mu.Unlock()
		s.stats.open.Add(-1)
		s.sem.Release(1)
		s.kick() // a waiting Send may start a session in this one's place
		s.wg.Done()
	}()
	// The probe runs only while someone waits: so does every dial.
	if !s.sleep(a.ctx, s.dialDelay()) || isShutdown(s) || !s.waitingNow() {
		return
	}
	c, err := s.connect(a.ctx, a)
	a.mu.Lock()
	a.inDial = false
	a.mu.Unlock()
	if err == nil && a.ctx.Err() != nil {
		c.Close() // abandoned as it connected
		return
	}
	if err != nil {
		if a.ctx.Err() == nil {
			s.stats.dialFailures.Add(1)
			if e, ok := errors.AsType[*smtp.Error](err); ok && e.Code == 421 {
				s.stats.seen421.Add(1)
			}
			s.sessionFailed(err)
		}
		return
	}
	a.c, a.born = c, time.Now()
	a.idle.Store(a.born.UnixNano())
	a.up.Store(true)
	a.helps = s.cfg.Options.Policy == nil
	// The writer holds the write token from here until the reader has
	// ended, except while it waits in serve.
	a.wtok.Lock()
	s.wg.Add(1)
	go a.read()
	broke := a.serve()
	a.bodyDone()
	<-a.readerDone
	a.wtok.Unlock()
	a.up.Store(false)
	a.answerDone() // what the reader could not answer while a body was busy
	a.mu.Lock()
	a.count421Locked(false, c.Err())
	if errors.Is(c.Err(), errWithdrawn) {
		// A caller withdrew in the middle of a DATA body: the session
		// was dropped before the final dot. The server did nothing
		// wrong.
		a.callerEnded = true
	}
	failed := broke && a.written > 0 && !a.delivered && !a.callerEnded
	a.mu.Unlock()
	if failed && s.ctx.Err() == nil {
		s.sessionFailed(c.Err())
	}
}

// read is the reader goroutine: it reads every reply, writes what the
// reply made writable when it may (help), answers the attempts whose
// transactions are done, in order, and wakes the writer for what is
// left to it. With nothing owed it still reads, so a server that closes
// an idle session (or sends a reply before its command) is seen at
// once.
func (a *conn) read() {
	defer a.s.wg.Done()
	defer close(a.readerDone)
	var finished uint64
	var later []answerLater
	a.c.ReadReplies(a.ctx, func() {
		// A reply that finished no transaction (a recipient's, a
		// chunk's) answers nobody; the writer answers what waited for
		// its body (bodyDone, then answerDone).
		if n := clientFinish(a.c); n != finished {
			finished = n
			a.settleDone(&later)
		}
		quiet := a.help(&later)
		// The answers wait while another whole reply is buffered: the
		// next callback may write what it lets be written (a 354's
		// body) before the callers are woken, each a system call
		// (replies that come together are answered together, after
		// the writes they allow).
		// (ReadReplies' last call, once the session is closed, holds no
		// read half any more: it gives them.)
		if a.c.State() == smtp.StateClosed || !replyBuffered(a.c) {
			for i := range later {
				a.answer(later[i].at, later[i].r)
				later[i] = answerLater{}
			}
			later = later[:0]
		}
		if !quiet {
			a.signal()
		}
	})
}

// helpBodyMax is the largest body the reader writes in the writer's
// stead: while it writes, it reads no reply, and a wake-up of the
// writer is worth saving only for a message that takes less time to
// write than one.
const helpBodyMax = 64 << 10

// txReplies is at most how many replies a transaction to n recipients
// leaves owed: MAIL, each RCPT, DATA or a chunk, the final reply (and an
// RSET before it, if due, is counted by the core).
func txReplies(n int) int { return n + 3 }

// helpable reports whether the reader may read at's body: it is in
// memory (reading it never waits) and small.
func helpable(at *attempt) bool {
	r := at.req.body.r
	return inMemory(r) && r.(interface{ Len() int }).Len() <= helpBodyMax
}

// help is the reader's turn at the writer's work, after a reply: if the
// writer is not writing (the write token is free) and what there is to
// write can be written without waiting for a reply or a body, the reader
// writes it (the body of a DATA transaction whose 354 it just read, the
// attempts waiting for the room an answer made), so the writer is not
// woken for it: a goroutine hand-over less per message on the way from
// one reply to the next command. It reports whether the writer need not
// be woken: it has nothing to do that a later reply, or an enqueue that
// wakes it from the parked list, will not bring it to. The answers it
// settles join *later, behind those the reply settled, in order.
func (a *conn) help(later *[]answerLater) bool {
	if !a.helps || !a.wtok.TryLock() {
		return false
	}
	defer a.wtok.Unlock()
	s := a.s
	if a.ctx.Err() != nil || a.c.State() != smtp.StateReady && a.c.State() != smtp.StateTransaction {
		return false
	}
	if a.last != nil && a.last.bodyBusy.Load() && !helpable(a.last) {
		// The next write-half call may read a body that can block.
		return false
	}
	stop := false // the writer must look for itself
	wrote := false
	for {
		if a.done() {
			stop = true
			break
		}
		// (With no attempt written since the last write-half call that
		// left nothing open, no transaction is open.)
		if a.room() <= 0 || a.nflight.Load() > 0 && a.silent() || a.last != nil && openWaiting(a.c) {
			break
		}
		// Two looks without the sender's lock first, each of which can
		// only send the reader on (a stale count of the waiting is
		// settled under the lock, by parkWriter or nextFor): nothing
		// waits; or the replies owed leave no room for even one
		// recipient's transaction (a wide window), which is the
		// writer's to write.
		if s.stats.waiting.Load() == 0 {
			break
		}
		if !readerWrites(a.c, txReplies(1)) {
			stop = true
			break
		}
		at, empty := s.nextFor(a, func(at *attempt) bool {
			// One recipient's transaction passed the look above.
			n := len(at.req.env.To)
			return helpable(at) && (n == 1 || readerWrites(a.c, txReplies(n)))
		})
		if at == nil {
			// Nothing waits (the writer is parked below), or what
			// waits is not for the reader to write.
			stop = !empty
			break
		}
		a.start(at, later)
		wrote = true
	}
	open := false
	if wrote || a.last != nil {
		var err error
		open, err = flushReady(a.c, a.ctx, true)
		if err != nil {
			return false
		}
		if !open {
			a.bodyDone()
		}
		a.settleDone(later)
	}
	switch {
	case stop:
		return false
	case open && !openWaiting(a.c):
		// A body the reader could not write.
		return false
	case a.nflight.Load() > 0 && (a.room() <= 0 || open || a.silent()):
		// A reply to come (or the timeout of the one owed) brings the
		// reader back.
		return true
	}
	// Room, and nothing waits: the reader parks the writer (if it is
	// not parked already), which the next enqueue wakes. (Its idle
	// timer runs while it is parked.)
	return s.parkWriter(a)
}

// signal tells the writer that something changed.
func (a *conn) signal() {
	select {
	case a.progress <- struct{}{}:
	default:
	}
}

// idleSince is when the window last emptied.
func (a *conn) idleSince() time.Time { return time.Unix(0, a.idle.Load()) }

// done reports whether the session takes no new attempt: it retires,
// the sender shuts down, or the server has made it take no more.
func (a *conn) done() bool {
	return a.retiring() || isShutdown(a.s) || a.noMore.Load()
}

// retiring reports whether the session should take no new attempt, for
// good.
func (a *conn) retiring() bool {
	cfg := &a.s.cfg
	if cfg.MaxMessagesPerConn > 0 && a.written >= cfg.MaxMessagesPerConn {
		return true
	}
	return cfg.MaxLifetime > 0 && time.Since(a.born) >= cfg.MaxLifetime
}

// room is how many more attempts the session may write now: what the
// window (MaxInFlight) leaves.
func (a *conn) room() int {
	return a.s.cfg.MaxInFlight - int(a.nflight.Load())
}

// silent reports whether the server has owed a reply for longer than
// silentAfter.
func (a *conn) silent() bool {
	return clientSilent(a.c) > silentAfter
}

// serve runs the writer until the connection is done. It reports true if
// the connection broke, false if it ended in order: idle, retired, shut
// down. Every attempt written has been answered, or will be by the
// reader, when it returns; the session is closed.
func (a *conn) serve() (broke bool) {
	s := a.s
	var idle *time.Timer
	defer func() {
		if idle != nil {
			idle.Stop()
		}
	}()
	for {
		if a.c.State() == smtp.StateClosed {
			return true
		}
		busy := a.nflight.Load() > 0
		done := a.done()
		if done && !busy {
			if a.noMore.Load() {
				a.c.Close()
				return true
			}
			a.quit()
			return false
		}
		take, leave := a.takes(done)
		if take {
			if at := s.next(a, false); at != nil {
				a.start(at, nil)
				continue
			}
		}
		// Nothing to write now: what is buffered leaves (and the body of
		// a transaction that waited for its replies, unless it is left
		// to the reader), then the writer waits for an attempt, an
		// answer or the end.
		var ferr error
		if leave {
			var open bool
			open, ferr = flushReady(a.c, a.ctx, false)
			if !open {
				a.bodyDone()
			}
		} else {
			ferr = a.c.Flush(a.ctx)
			a.bodyDone()
		}
		// The writer may have read replies itself, while the reader
		// was between two reads: it answers what they finished.
		a.answerDone()
		if errors.Is(ferr, smtp.ErrClosed) {
			continue
		}
		// What the flush and the answers changed: room in the window
		// (the writer may have answered attempts itself, and the
		// reader's word of it is spent), a 503 (take no more), a server
		// now silent, a transaction now left to the reader. A session
		// that takes no more and has nothing left in flight ends now:
		// nobody would wake its writer (it gave the last answer
		// itself), and an enqueue that found it looking left the
		// waiting attempt to it, which the session's end hands on.
		done = a.done()
		if done && a.nflight.Load() == 0 {
			continue
		}
		take, _ = a.takes(done)
		if take {
			if at := s.next(a, true); at != nil {
				a.start(at, nil)
				continue
			}
		}
		if !take {
			s.notLooking(a)
		}
		busy = a.nflight.Load() > 0
		var idleC <-chan time.Time
		if !done {
			// The idle timer runs whenever the writer waits: the window
			// may empty while it sleeps (the reader does not wake a
			// parked writer for that), so it counts from when it last
			// did.
			d := s.cfg.IdleTimeout
			if !busy {
				d -= time.Since(a.idleSince())
			}
			if idle == nil {
				idle = time.NewTimer(d)
			} else {
				idle.Reset(d)
			}
			idleC = idle.C
		}
		shutdownC := s.shutdown
		if done {
			shutdownC = nil // seen already: wait for the answers
		}
		timedOut := false
		// While the writer waits, the reader may write in its stead.
		a.wtok.Unlock()
		select {
		case <-a.wake:
			// An enqueue took the writer off the parked list.
		case <-a.progress:
		case <-idleC:
			timedOut = true
		case <-shutdownC:
		case <-a.ctx.Done():
		}
		a.wtok.Lock()
		s.stats.writerWakes.Add(1)
		if idleC != nil {
			if !timedOut && !idle.Stop() {
				<-idle.C
			}
		}
		if !s.unpark(a) {
			// Not parked (any more): an enqueue that took it off the
			// parked list (where it or the reader put it) left its
			// token in wake; the writer looks at the list anyway.
			select {
			case <-a.wake:
			default:
			}
		}
		if a.ctx.Err() != nil {
			a.c.Close()
			continue
		}
		if timedOut && a.nflight.Load() == 0 && time.Since(a.idleSince()) >= s.cfg.IdleTimeout {
			a.quit()
			return false
		}
	}
}

// takes reports whether the writer should take an attempt now (it is
// not done, has room, its server is not silent, and nothing is left to
// the reader), and whether it leaves the open transaction to the
// reader: a DATA transaction waiting for its 354, or a chunked one for
// its RCPT replies, with a small body in memory, whose body the reader
// writes when it reads that reply (help), and the attempts behind it;
// the writer would only wait.
func (a *conn) takes(done bool) (take, leave bool) {
	leave = a.helps && a.last != nil && helpable(a.last) && openWaiting(a.c)
	take = !done && !leave && !a.noMore.Load() && a.room() > 0 && !(a.nflight.Load() > 0 && a.silent())
	return take, leave
}

// start takes an attempt from the waiting list and writes it; the
// answers it settles are given at once, or left in *later (see
// settleDone). A body that may block on its reader (not one in memory)
// is read only once what is buffered has left, so that no other
// attempt's commit point waits in the buffer behind a slow body.
func (a *conn) start(at *attempt, later *[]answerLater) {
	if !a.take(at) {
		return
	}
	req := &at.req.body
	if !inMemory(req.r) {
		a.c.Flush(a.ctx)
		a.bodyDone()
		a.settleDone(later)
	}
	at.bodyBusy.Store(true)
	ctx := a.ctx
	if a.s.hookValues {
		// The Policy and AuditContext hooks see the values of the
		// caller's context; the I/O keeps the connection's.
		ctx = callerValues{Context: a.ctx, caller: at.req.ctx}
	}
	tx, err := a.c.WriteTx(ctx, at.req.env, req)
	a.bodyDone() // the one before it: WriteTx finished its body
	if err != nil {
		at.bodyBusy.Store(false)
		// Nothing of it was written: on a closed (or closing)
		// connection it may go to another session, and this was not
		// its fault. This session takes no more (its caller would
		// otherwise hand it straight back).
		replay := errors.Is(err, smtp.ErrClosed)
		if replay {
			a.noMore.Store(true)
		}
		a.answer(at, result{err: err, replay: replay})
		return
	}
	a.written++
	a.mu.Lock()
	at.tx = tx
	a.inflight = append(a.inflight, at)
	a.nflight.Store(int32(len(a.inflight)))
	a.mu.Unlock()
	a.last = at
	// Settled while it was written (refused without PIPELINING, or the
	// session closed), or earlier ones finished by replies the writer
	// read itself: the reader may have nothing more to read.
	a.settleDone(later)
}

// callerValues is a connection's context (its cancellation, which the
// smtp core watches once per connection, the Done channel being the
// same) with the values of a caller's context looked up first.
type callerValues struct {
	context.Context
	caller context.Context
}

func (v callerValues) Value(key any) any {
	if x := v.caller.Value(key); x != nil {
		return x
	}
	return v.Context.Value(key)
}

// bodyDone records that the writer is done with the body of the attempt
// it wrote last: its last write-half call has returned (see
// attempt.bodyBusy).
func (a *conn) bodyDone() {
	if a.last != nil {
		a.last.bodyBusy.Store(false)
		a.last = nil
	}
}

// inMemory reports whether reading r never waits (each of these has a
// Len method: see helpable).
func inMemory(r io.Reader) bool {
	switch r.(type) {
	case *bytes.Reader, *strings.Reader, *bytes.Buffer:
		return true
	}
	return false
}

// take counts at as this session's. It reports false if its caller
// withdrew it while it waited. The state change and the count change
// together under mu: a caller that withdraws at once it is active calls
// withdrawn, which takes mu, so it always finds at counted (and an
// attempt withdrawn before is never counted).
func (a *conn) take(at *attempt) bool {
	at.conn.Store(a)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !at.state.CompareAndSwap(stWaiting, stActive) {
		return false
	}
	a.live++
	return true
}

// answerDone answers, in order, the attempts at the head of the window
// whose transactions are done. Either goroutine may call it: each
// attempt is taken off the window once, under mu.
func (a *conn) answerDone() { a.settleDone(nil) }

// answerLater is an answer settled and not yet given (see settleDone).
type answerLater struct {
	at *attempt
	r  result
}

// settleDone is answerDone; with later not nil, it takes the attempts
// off the window but leaves their answers in *later, for the reader to
// give once it has written what their room lets it write (help): waking
// a caller costs the time of a system call, better spent after the
// next message has left than before.
func (a *conn) settleDone(later *[]answerLater) {
	for {
		// The oldest in flight was not done when the client had
		// finished notYet-1 transactions: while that count stands, it
		// still is not (only its own end moves the count past it, and
		// only its end takes it off the head).
		fin := clientFinish(a.c)
		if a.notYet.Load() == fin+1 {
			return
		}
		a.mu.Lock()
		if len(a.inflight) == 0 || a.inflight[0].bodyBusy.Load() {
			a.mu.Unlock()
			return
		}
		at := a.inflight[0]
		done, out, err, replay, own421, sessionErr := txSettled(at.tx)
		if !done {
			a.notYet.Store(fin + 1)
			a.mu.Unlock()
			return
		}
		n := copy(a.inflight, a.inflight[1:])
		a.inflight[n] = nil
		a.inflight = a.inflight[:n]
		a.nflight.Store(int32(n))
		if n == 0 {
			a.idle.Store(time.Now().UnixNano())
		}
		r := a.settleLocked(out, err, replay, own421, sessionErr)
		a.mu.Unlock()
		if err == nil {
			a.s.progress()
		}
		if later != nil {
			*later = append(*later, answerLater{at, r})
			continue
		}
		a.answer(at, r)
	}
}

// settleLocked is the answer for an attempt whose transaction is done
// (a.mu held), saying whether the message may be written again, and
// whose fault it was if so: the server's 421 to this very transaction,
// or a loss while it was the oldest in flight. A refusal by a session
// the server was closing, a message the server never processed after
// its 421, a 503 (its state, not the message) and a loss a caller's
// withdrawal caused are not the message's fault. The transaction's
// state comes from one look (txSettled).
func (a *conn) settleLocked(out *smtp.Outcome, err error, replay, own421 bool, sessionErr error) result {
	r := result{out: out, err: err, wrote: true}
	e, _ := errors.AsType[*smtp.Error](err)
	a.count421Locked(own421, sessionErr)
	switch {
	case err == nil:
		a.delivered = true
	case own421:
		r.replay, r.own = true, true
		a.blamed = true
	case replay:
		r.replay = true
		switch {
		case e != nil && e.Kind == smtp.KindProtocol && e.Code == 503:
			r.state503 = true
			a.noMore.Store(true)
		case e != nil && e.Kind == smtp.KindIO && !a.seen421 && !a.callerEnded:
			// A loss: the first one counts against the oldest attempt
			// in flight, the others are the connection's fault.
			r.own = !a.blamed
			a.blamed = true
		}
	}
	return r
}

// count421Locked counts the connection's 421 once, before any answer
// that follows from it: own421, a transaction's own; sessionErr, what
// closed the session.
func (a *conn) count421Locked(own421 bool, sessionErr error) {
	if a.seen421 {
		return
	}
	e, _ := errors.AsType[*smtp.Error](sessionErr)
	if own421 || e != nil && e.Code == 421 {
		a.seen421 = true
		a.s.stats.seen421.Add(1)
	}
}

// answer ends the session's hold on at, answering its caller unless the
// caller has answered itself (withdrawn, or gone with ErrOutcomeUnknown).
// After Close, a loss is reported as ErrClosed: the caller's own context
// is not what ended it.
func (a *conn) answer(at *attempt, r result) {
	if r.err != nil && a.s.ctx.Err() != nil {
		if e, ok := errors.AsType[*smtp.Error](r.err); !ok || e.Kind == smtp.KindIO {
			r = result{err: closedError(r.err)}
		}
	}
	for {
		switch st := at.state.Load(); st {
		case stActive, stEOF:
			if !at.state.CompareAndSwap(st, stAnswered) {
				continue
			}
			at.result <- r // buffered (1), answered once: never blocks
			a.release()
			return
		case stAbandoned:
			a.release()
			return
		default: // stWithdrawn: the caller released it
			return
		}
	}
}

// closedError is the answer for an attempt whose session Close ended.
func closedError(cause error) error {
	op := smtp.OpSend
	if e, ok := errors.AsType[*smtp.Error](cause); ok {
		op = e.Op
	}
	if errors.Is(cause, ErrOutcomeUnknown) {
		return &smtp.Error{Op: op, Kind: smtp.KindIO, Message: "the sender was closed after the message's commit point was written",
			Err: errors.Join(ErrOutcomeUnknown, ErrClosed)}
	}
	return &smtp.Error{Op: op, Kind: smtp.KindIO, Message: "the sender was closed before the message was committed", Err: ErrClosed}
}

func (a *conn) disarmGraceLocked() {
	if a.grace != nil {
		a.grace.Stop()
		a.grace = nil
	}
	a.withdrew = false
}

// armGraceLocked starts the grace for the connection, unless it runs
// already.
func (a *conn) armGraceLocked() {
	if a.grace != nil {
		return
	}
	// t is set, under mu, before graceOver can read it under mu.
	var t *time.Timer
	t = time.AfterFunc(withdrawGrace, func() { a.graceOver(&t) })
	a.grace = t
}

// release is the session's end of its hold on an attempt: an answer
// came, so the connection works; if that leaves only withdrawn work, the
// grace starts again (see withdrawn).
func (a *conn) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live--
	if a.grace != nil {
		a.grace.Stop()
		a.grace = nil
	}
	if a.live == 0 && a.withdrew && len(a.inflight) > 0 {
		a.armGraceLocked()
	}
}

// withdrawn is called by the caller of a taken attempt it withdrew. When
// no attempt is left whose outcome matters, the connection gets
// withdrawGrace to finish the exchange under way (abandoning the
// transaction with RSET, reading the replies owed) before it is closed:
// a session blocked on a server that stopped answering does not hold its
// place for long, and one that answers keeps its connection. (The
// withdrawn attempt itself is safe either way: its body never reaches
// EOF.) A session closed so ended because its callers gave up, which is
// not the server's failure.
func (a *conn) withdrawn() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live--
	a.withdrew = true
	if a.live == 0 {
		a.armGraceLocked()
	}
}

// graceOver closes the connection if *t is still its grace and no live
// attempt came meanwhile.
func (a *conn) graceOver(t **time.Timer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.grace != *t {
		return // disarmed, or replaced
	}
	a.grace = nil
	if a.live == 0 && len(a.inflight) > 0 {
		a.callerEnded = true
		a.stop()
	}
}

func isShutdown(s *Sender) bool {
	select {
	case <-s.shutdown:
		return true
	default:
		return false
	}
}

// quit ends the session politely.
func (a *conn) quit() {
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	a.c.Quit(ctx)
}

// tlsModeHint names the likely cause of a session that never got going
// because client and server disagree on TLS: a plaintext (or STARTTLS)
// client that got no greeting from a server waiting for a TLS handshake,
// or an implicit-TLS client whose handshake read a plaintext greeting.
func tlsModeHint(sec Security, err error) string {
	e, ok := errors.AsType[*smtp.Error](err)
	if !ok {
		return ""
	}
	switch {
	case sec != ImplicitTLS && e.Op == smtp.OpGreeting && e.Kind == smtp.KindIO && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)):
		return "the server did not greet in plaintext within DialTimeout: it may expect implicit TLS (port 465; Security ImplicitTLS)"
	case sec == ImplicitTLS:
		if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
			return "the server answered the TLS handshake in plaintext: it expects STARTTLS (port 587; Security StartTLS) or no TLS"
		}
	}
	return ""
}

package sender

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/smtp"
)

// conn is one session goroutine and its one connection: it dials, serves
// attempts until idle, retired, shut down or broken, and ends. It never
// redials: an attempt that may be written again goes back to its caller,
// which puts it on the waiting list for another session. Unless noted,
// every field is owned by the session goroutine; nothing else touches the
// smtp.Client.
type conn struct {
	s *Sender
	// probe is set (for good) on the one session started while the
	// sender fails fast.
	probe bool
	c     *smtp.Client // nil until connected
	born  time.Time
	// written counts the attempts written on the connection; inflight
	// are those whose replies are not yet read, in order.
	written  int
	inflight []*attempt
	// verdicts is set once the server gave any transaction a verdict
	// (an outcome, or a refusal other than 421): a session that ends
	// without one counts as failed. blamed is set once a loss has been
	// counted against the attempt that was oldest in flight.
	verdicts bool
	blamed   bool
	// seen421 is set once the connection's 421 has been counted.
	seen421 bool
	// full is set once WriteTx refused an attempt because the session is
	// closed or closing (a 421 whose committed transactions are still
	// being read): the session takes no more.
	full bool
	// ctx bounds the connection: cancelled by Close (through the
	// sender's), and by the grace after a withdrawal (see withdrawn).
	ctx context.Context

	// parked is set while the session waits on the sender's parked
	// list (guarded by Sender.mu); wake, with one slot, is how the
	// enqueue that takes it off the list wakes it.
	parked bool
	wake   chan struct{}
	// listening is set while the session is on the sender's listeners
	// (guarded by Sender.mu): waiting in ReadTx for a reply, with room
	// for more attempts, since listenSince.
	listening   bool
	listenSince time.Time
	// slow is set (for good) once a caller withdrew or abandoned an
	// attempt the session had taken: it listens no more.
	slow atomic.Bool

	// Answers reach their callers in batches (see watch.go): while
	// batching is set they wait in batch (since batchSince), and go out
	// from deliver. batchTimer sends them if one I/O lasts batchFor;
	// timing is set while it runs.
	batching   bool
	timing     bool
	batchTimer *time.Timer
	batchMu    sync.Mutex // guards batch and batchSince
	batch      []answer
	batchSince time.Time

	mu sync.Mutex // guards the fields below
	// inDial is set until the connection is made: abandonDial cancels
	// ctx only then.
	inDial bool
	// live counts the attempts taken and not yet answered, other than
	// those their callers withdrew.
	live int
	// stop cancels ctx.
	stop context.CancelFunc
	// grace, when set, ends the connection withdrawGrace after it was
	// left with no live attempt and withdrawn ones in flight, unless the
	// session has come back to having nothing in flight by then;
	// withdrew is set from a withdrawal until then.
	grace    *time.Timer
	withdrew bool
}

// withdrawGrace is how long a connection whose last live attempt was
// withdrawn may go on with the exchange under way (the RSET that abandons
// the transaction, or the replies of transactions nobody waits for)
// before its I/O is interrupted: a server that answers keeps the
// connection, one that stalls frees the session within this time.
const withdrawGrace = time.Second

// newConn makes the conn a new session goroutine will run; its context
// is the sender's until the session ends, abandons its dial, or runs out
// of grace.
func newConn(s *Sender, probe bool) *conn {
	a := &conn{s: s, probe: probe, wake: make(chan struct{}, 1), inDial: true}
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

// run is the goroutine of one conn. It waits what is left of the
// backoff, dials if anyone still waits, and serves attempts until the
// connection is done. A dial that fails, or a connection that ends
// broken before the server gave any transaction a verdict, counts as a
// failed session (backoff, fail-fast).
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
	if a.serve() && a.written > 0 && !a.verdicts && s.ctx.Err() == nil {
		s.sessionFailed(c.Err())
	}
}

// retiring reports whether the session should take no new attempt.
func (a *conn) retiring() bool {
	cfg := &a.s.cfg
	if cfg.MaxMessagesPerConn > 0 && a.written >= cfg.MaxMessagesPerConn {
		return true
	}
	return cfg.MaxLifetime > 0 && time.Since(a.born) >= cfg.MaxLifetime
}

// open reports whether the session may take more attempts.
func (a *conn) open() bool {
	return !a.full && !a.retiring() && !isShutdown(a.s) && a.c.State() != smtp.StateClosed
}

// serve runs the connection until it is done. It reports true if the
// connection broke, false if it ended in order: idle, retired, shut
// down, closed. Every attempt taken has been answered when it returns.
func (a *conn) serve() (broke bool) {
	s := a.s
	idle := time.NewTimer(s.cfg.IdleTimeout)
	defer idle.Stop()
	defer a.deliver()
	for {
		if a.c.State() == smtp.StateClosed || a.full && len(a.inflight) == 0 {
			a.c.Close()
			a.note421(nil)
			a.readAll()
			return true
		}
		if len(a.inflight) > 0 {
			a.fill()
			if len(a.inflight) > 0 && a.c.State() != smtp.StateClosed {
				a.readReplies()
			}
			continue
		}
		// Nothing in flight: the connection is quiet.
		a.quiet()
		if a.retiring() || isShutdown(s) {
			a.deliver()
			a.quit()
			return false
		}
		// Look for work (or park) before answering: a caller that
		// sends again at once then finds this session parked, rather
		// than dialing another.
		at := s.next(a, true)
		a.deliver()
		if at != nil {
			a.start(at)
			continue
		}
		idle.Reset(s.cfg.IdleTimeout)
		s.stats.idle.Add(1)
		select {
		case <-a.wake:
			s.stats.idle.Add(-1)
			continue
		case <-idle.C:
		case <-s.shutdown:
		case <-s.ctx.Done():
		}
		s.stats.idle.Add(-1)
		if !s.unpark(a) {
			// Woken at the same moment: serve the attempt (or see the
			// shutdown on the next turn).
			<-a.wake
			continue
		}
		if s.ctx.Err() != nil {
			a.c.Close()
		} else {
			a.quit()
		}
		return false
	}
}

// fill takes waiting attempts until the window is full, without waiting
// for any.
func (a *conn) fill() {
	for a.room() > 0 && a.open() {
		at := a.s.next(a, false)
		if at == nil {
			return
		}
		a.start(at)
	}
}

// room is how many more attempts the session may write now: what the
// window (MaxInFlight) leaves, within what MaxMessagesPerConn leaves.
func (a *conn) room() int {
	r := a.s.cfg.MaxInFlight - len(a.inflight)
	if m := a.s.cfg.MaxMessagesPerConn; m > 0 {
		r = min(r, m-a.written)
	}
	return r
}

// answer is an attempt's answer waiting in the batch.
type answer struct {
	at  *attempt
	res result
}

// readReplies answers the oldest transaction in flight, waiting for its
// reply if need be, and with it every later one whose reply has already
// arrived. The answers reach their callers together, after the reads: a
// burst of ready goroutines costs the scheduler one wake-up of an idle
// thread rather than one per message. When nothing is left in flight,
// serve sends them after it has looked for more work.
func (a *conn) readReplies() {
	a.batching = true
	if !a.readOldest() {
		// A new attempt waits: serve writes it, then comes back.
		a.batching = false
		a.deliver()
		return
	}
	a.c.Poll()
	for len(a.inflight) > 0 && a.inflight[0].tx.Done() {
		a.readOldest()
	}
	a.batching = false
	if len(a.inflight) > 0 {
		a.deliver()
	}
}

// start takes an attempt from the waiting list and writes it.
func (a *conn) start(at *attempt) {
	if a.take(at) {
		a.write(at)
	}
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

// write writes a taken attempt's transaction on the connection, unless
// its caller withdrew it meanwhile.
func (a *conn) write(at *attempt) {
	if at.state.Load() == stWithdrawn {
		return // the caller released it
	}
	req := at.req
	tx, err := a.c.WriteTx(a.ctx, req.env, &req.body)
	if err != nil && a.ctx.Err() != nil && a.c.State() != smtp.StateClosed {
		// The connection's context was cancelled (its last caller
		// withdrew) just before this attempt was taken: WriteTx wrote
		// nothing and left the session as it was. The connection is
		// being abandoned; the attempt goes to another.
		a.c.Close()
		err = &smtp.Error{Op: smtp.OpMail, Kind: smtp.KindIO, Err: smtp.ErrClosed, Message: "connection abandoned"}
	}
	if err != nil {
		// Nothing of it was written: on a closed (or closing)
		// connection it may go to another session, and this was not
		// its fault. This session takes no more (its caller would
		// otherwise hand it straight back).
		replay := errors.Is(err, smtp.ErrClosed)
		a.full = a.full || replay
		a.note421(nil)
		a.answer(at, result{err: err, replay: replay})
		return
	}
	a.written++
	at.tx = tx
	a.inflight = append(a.inflight, at)
}

// popOldest takes the oldest transaction off the window. It shifts the
// rest down rather than reslicing, so appends reuse the same array (the
// window is short: reslicing wore its capacity away, an allocation every
// few messages).
func (a *conn) popOldest() *attempt {
	at := a.inflight[0]
	n := copy(a.inflight, a.inflight[1:])
	a.inflight[n] = nil
	a.inflight = a.inflight[:n]
	return at
}

// readOldest reads the reply of the oldest transaction in flight. While
// the window has room, the wait for it is one a new attempt may
// interrupt (see Sender.listeners): readOldest then reports false, the
// transaction still in flight, as it does if an attempt already waits.
func (a *conn) readOldest() bool {
	at := a.inflight[0]
	listening := false
	if !at.tx.Done() && a.room() > 0 && a.open() {
		var busy bool
		if listening, busy = a.s.listen(a); busy {
			return false
		}
	}
	out, err := a.c.ReadTx(a.ctx, at.tx)
	if listening {
		a.s.unlisten(a)
	}
	if errors.Is(err, smtp.ErrInterrupted) {
		return false
	}
	// (waiting, on a read or write within ReadTx, answers only
	// transactions already done at the head: never at, which ReadTx
	// leaves done only once it reads no more.)
	a.popOldest()
	a.settle(at, out, err)
	return true
}

// readAll settles every transaction of a connection that broke: smtp
// has settled them all, so ReadTx returns at once.
func (a *conn) readAll() {
	for len(a.inflight) > 0 {
		at := a.popOldest()
		out, err := a.c.ReadTx(a.ctx, at.tx)
		a.settle(at, out, err)
	}
}

// settle answers an attempt whose transaction is done, saying whether the
// message may be written again, and whose fault it was if so: the
// server's 421 to this very transaction, or a loss while it was the
// oldest in flight.
func (a *conn) settle(at *attempt, out *smtp.Outcome, err error) {
	tx := at.tx
	at.tx = nil
	a.note421(tx)
	r := result{out: out, err: err, wrote: true}
	e, _ := errors.AsType[*smtp.Error](err)
	switch {
	case err == nil, e != nil && e.Kind == smtp.KindRejected && !tx.Answered421():
		// A verdict: the server works.
		a.verdicts = true
		a.s.progress()
	case tx.Answered421():
		r.replay, r.own = true, true
		a.blamed = true
	case e != nil && e.Kind == smtp.KindIO:
		// A loss: the first one counts against the oldest attempt in
		// flight, the others are the connection's fault.
		r.replay = tx.Replayable()
		r.own = r.replay && !a.blamed
		a.blamed = true
	}
	a.answer(at, r)
}

// note421 counts the connection's 421 once, before any answer that
// follows from it: tx's own, or the one that closed the session.
func (a *conn) note421(tx *smtp.Tx) {
	if a.seen421 {
		return
	}
	e, _ := errors.AsType[*smtp.Error](a.c.Err())
	if tx != nil && tx.Answered421() || e != nil && e.Code == 421 {
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
			if a.batching {
				a.batchMu.Lock()
				if len(a.batch) == 0 {
					a.batchSince = time.Now()
				}
				a.batch = append(a.batch, answer{at, r})
				a.batchMu.Unlock()
			} else {
				at.result <- r
			}
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

// quiet is called when the session has nothing in flight: a connection
// that outlived a withdrawal is kept.
func (a *conn) quiet() {
	a.mu.Lock()
	a.disarmGraceLocked()
	a.mu.Unlock()
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

// release is the session's end of its hold on an attempt. If that leaves
// only withdrawn work, the grace starts (see withdrawn).
func (a *conn) release() {
	a.mu.Lock()
	a.live--
	if a.live == 0 && a.withdrew {
		a.armGraceLocked()
	}
	a.mu.Unlock()
}

// withdrawn is called by the caller of a taken attempt it withdrew. When
// no attempt is left whose outcome matters, the connection gets
// withdrawGrace to finish the exchange under way (abandoning the
// transaction with RSET, reading the replies owed) before its I/O is
// interrupted: a session blocked on a server that stopped answering does
// not hold its place for long, and one that answers keeps its connection.
// (The withdrawn attempt itself is safe either way: its body never
// reaches EOF.)
func (a *conn) withdrawn() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live--
	a.withdrew = true
	if a.live == 0 {
		a.armGraceLocked()
	}
}

// graceOver interrupts the connection if *t is still its grace and no
// live attempt came meanwhile.
func (a *conn) graceOver(t **time.Timer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.grace != *t {
		return // disarmed, or replaced
	}
	a.grace = nil
	if a.live == 0 {
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

package sender

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/smtpkit/smtpkit/smtp"
)

// conn is one session goroutine and the connections it makes, one after
// another: it dials, serves requests, and after a 421 or a lost
// connection redials to replay what it may. Unless noted, every field is
// owned by that goroutine (the session loop); nothing else touches the
// smtp.Client.
type conn struct {
	s        *Sender
	c        *smtp.Client // nil while dialing
	born     time.Time
	written  int        // transactions written on this connection
	inflight []*request // written, replies not yet read, in order
	replay   []*request // to write again on a new connection, in order
	// dialing is set until the goroutine first looks for a request (or
	// ends): a Send that waits for a session counts on it. Guarded by
	// Sender.mu after the goroutine starts.
	dialing bool
	// parked is set while the session waits for a request on the
	// sender's parked list (guarded by Sender.mu); wake, with one slot,
	// is how the enqueue that takes it off the list wakes it.
	parked bool
	wake   chan struct{}
	// While holding is set (see settleReplies and waiting), answers wait
	// in answers (since heldSince) and reach their callers together, from
	// deliver: at the end of settleReplies, before the session parks or
	// its loop ends, before an I/O once held for holdMax, or from
	// holdTimer when one I/O lasts holdFor (timing is set while it runs).
	holding   bool
	timing    bool
	holdTimer *time.Timer
	ansMu     sync.Mutex // guards answers and heldSince
	answers   []answer
	heldSince time.Time
	// probe is set while this goroutine is the sender's one probe: it
	// keeps dialing while Sends fail fast, and must not end before a
	// dial works (or the sender closes).
	probe bool
	// io bounds the current connection (and its dial): it is cancelled
	// by Close, and when the requests this goroutine holds have all been
	// withdrawn: at once while dialing, after withdrawGrace when connected
	// (see withdrawn).
	io context.Context

	mu sync.Mutex // guards the fields below
	// live counts the requests held (taken and not yet finished), other
	// than those their callers withdrew.
	live int
	// stop cancels io.
	stop context.CancelFunc
	// epoch counts the contexts io has had; inDial is set from the start
	// of a dial until it connects.
	epoch  uint64
	inDial bool
	// grace, when set, ends the current connection withdrawGrace after
	// it was left with no live request and withdrawn ones in flight,
	// unless the session has come back to having nothing in flight by
	// then; withdrew is set from a withdrawal until then.
	grace    *time.Timer
	withdrew bool
}

// withdrawGrace is how long a connection whose last live request was
// withdrawn may go on with the exchange under way (the RSET that abandons
// the transaction, or the replies of transactions nobody waits for)
// before its I/O is interrupted: a server that answers keeps the
// connection, one that stalls frees the session within this time.
const withdrawGrace = time.Second

// session is the goroutine of one conn. It dials (waiting the backoff
// after failures; after MaxDialFailures it may become the one probe that
// keeps trying while Sends fail fast), then serves requests until idle,
// retired or shut down; a connection that breaks is redialed as long as
// requests wait to be replayed.
func (s *Sender) session() {
	a := &conn{s: s, dialing: true, wake: make(chan struct{}, 1)}
	defer func() {
		if a.dialing { // only this goroutine clears it
			s.dialed()
		}
		if a.probe {
			s.stopProbing()
		}
		a.endEpoch()
		s.stats.open.Add(-1)
		s.sem.Release(1)
		s.kick() // a waiting Send may start a session in this one's place
		s.wg.Done()
	}()
	for {
		if a.c == nil && !a.dialLoop() {
			return
		}
		if !a.serve() {
			return
		}
		// The connection broke: settle what was in flight, then redial
		// for the requests to replay.
		a.settleInflight()
		a.c = nil
		if !a.redial() && !a.probe {
			return
		}
	}
}

// dialLoop makes the goroutine's first connection, or, as the probe,
// dials until a connection works. It reports whether it has one.
func (a *conn) dialLoop() bool {
	s := a.s
	for {
		if !s.sleep(s.dialDelay(), s.shutdown) || isShutdown(s) {
			return false
		}
		io := a.newEpoch(false)
		c, err := s.connect(io, a)
		if err == nil {
			s.dialSucceeded(a.probe)
			a.probe = false
			a.connected(c)
			return true
		}
		if s.ctx.Err() != nil {
			return false
		}
		if s.dialFailed(err) {
			a.probe = true
		}
		if !a.probe {
			return false
		}
	}
}

// redial connects again for the requests to replay, with backoff, until
// one connection works, every waiting caller is gone (their contexts
// bound the redial), the sender is closed, or dials fail so often that
// the sender fails fast (then the requests get the fail-fast error). It
// reports whether it has a connection.
func (a *conn) redial() bool {
	s := a.s
	var bo backoff.BackOff
	for {
		a.pruneReplay()
		if len(a.replay) == 0 {
			return false
		}
		if s.ctx.Err() != nil {
			a.failReplay(nil)
			return false
		}
		if err := s.failingFast(); err != nil {
			a.failReplay(err)
			return false
		}
		io := a.newEpoch(true)
		if bo != nil {
			d := bo.NextBackOff()
			if d == backoff.Stop {
				a.failReplay(nil)
				return false
			}
			if !s.sleep(d, io.Done()) {
				continue // closed, or every caller withdrew
			}
		} else {
			bo = s.cfg.Backoff()
		}
		c, err := s.connect(io, a)
		if err == nil {
			s.dialSucceeded(a.probe)
			a.probe = false
			a.connected(c)
			replay := a.replay
			a.replay = nil
			for _, req := range replay {
				a.write(req)
			}
			return true
		}
		if io.Err() != nil {
			continue // closed, or every caller withdrew: not the server's fault
		}
		if s.dialFailed(err) {
			a.probe = true
		}
	}
}

// newEpoch starts the context that bounds one connection and its dial.
// For a redial (bounded), it is born cancelled if every request the
// goroutine held has been withdrawn meanwhile.
func (a *conn) newEpoch(bounded bool) context.Context {
	ctx, cancel := context.WithCancel(a.s.ctx)
	a.mu.Lock()
	if a.stop != nil {
		a.stop()
	}
	a.stop = cancel
	a.epoch++
	a.inDial = true
	a.disarmGraceLocked()
	if bounded && a.live == 0 {
		cancel()
	}
	a.mu.Unlock()
	a.io = ctx
	return ctx
}

func (a *conn) endEpoch() {
	a.mu.Lock()
	if a.stop != nil {
		a.stop()
	}
	a.disarmGraceLocked()
	a.mu.Unlock()
}

func (a *conn) connected(c *smtp.Client) {
	a.c, a.born, a.written = c, time.Now(), 0
	a.mu.Lock()
	a.inDial = false
	a.mu.Unlock()
}

// settled is called when the session has nothing in flight: a
// connection that outlived a withdrawal is kept.
func (a *conn) settled() {
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

// armGraceLocked starts the grace for the current connection, unless it
// runs already. While dialing there is no exchange to finish: the dial
// is interrupted at once.
func (a *conn) armGraceLocked() {
	if a.inDial {
		a.stop()
		return
	}
	if a.grace != nil {
		return
	}
	epoch := a.epoch
	// t is set, under mu, before graceOver can read it under mu.
	var t *time.Timer
	t = time.AfterFunc(withdrawGrace, func() { a.graceOver(epoch, &t) })
	a.grace = t
}

// hold counts req as held by this goroutine. It reports false if its
// caller withdrew it while it waited to be taken. The state change and
// the count change together under mu: a caller that withdraws req once
// it is active calls withdrawn, which takes mu, so it always finds req
// counted (and a request withdrawn before is never counted).
func (a *conn) hold(req *request) bool {
	req.conn.Store(a)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !req.state.CompareAndSwap(stQueued, stActive) {
		return false
	}
	a.live++
	return true
}

// release is the session's end of its hold on a request. If that leaves
// only withdrawn work, the grace starts (see withdrawn).
func (a *conn) release() {
	a.mu.Lock()
	a.live--
	if a.live == 0 && a.withdrew && a.stop != nil {
		a.armGraceLocked()
	}
	a.mu.Unlock()
}

// withdrawn is called by the caller of a held request it withdrew. When
// no held request is left whose outcome matters, a redial nobody waits
// for ends at once, and a connection gets withdrawGrace to finish the
// exchange under way (abandoning the transaction with RSET, reading the
// replies owed) before its I/O is interrupted: a session blocked on a
// server that stopped answering does not hold its place for long, and
// one that answers keeps its connection. (The withdrawn request itself
// is safe either way: its body never reaches EOF.)
func (a *conn) withdrawn() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live--
	a.withdrew = true
	if a.live == 0 && a.stop != nil {
		a.armGraceLocked()
	}
}

// graceOver interrupts the connection of epoch if *t is still its grace
// and no live request came meanwhile.
func (a *conn) graceOver(epoch uint64, t **time.Timer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.grace != *t {
		return // disarmed, or replaced
	}
	a.grace = nil
	if a.epoch == epoch && a.live == 0 && a.stop != nil {
		a.stop()
	}
}

// window is how many transactions may be in flight.
func (a *conn) window() int { return a.s.cfg.MaxInFlight }

// room is how many more requests the session may take now: what the
// window leaves, within what MaxMessagesPerConn leaves.
func (a *conn) room() int {
	r := a.window() - len(a.inflight)
	if m := a.s.cfg.MaxMessagesPerConn; m > 0 {
		r = min(r, m-a.written)
	}
	return r
}

// retiring reports whether the session should take no new request.
func (a *conn) retiring() bool {
	cfg := &a.s.cfg
	if cfg.MaxMessagesPerConn > 0 && a.written >= cfg.MaxMessagesPerConn {
		return true
	}
	return cfg.MaxLifetime > 0 && time.Since(a.born) >= cfg.MaxLifetime
}

// serve runs the connection until it is done. It reports true if the
// connection broke (and the goroutine should redial for what it has to
// replay), false if it ended in order: idle, retired, shut down, closed.
func (a *conn) serve() (broken bool) {
	s := a.s
	idle := time.NewTimer(s.cfg.IdleTimeout)
	defer idle.Stop()
	defer a.deliver()
	for {
		if a.c.State() == smtp.StateClosed {
			a.closed()
			return true
		}
		if len(a.inflight) == 0 {
			if a.retiring() || isShutdown(s) {
				a.quit()
				return false
			}
			a.deliver()
			a.settled()
			took, parked := a.fill(true)
			if took {
				continue
			}
			if !parked { // no room: cannot happen while MaxInFlight >= 1
				a.quit()
				return false
			}
			// Parked: wait for an enqueue to wake the session.
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
				// Woken at the same moment: serve the request (or see
				// the shutdown on the next turn).
				<-a.wake
				continue
			}
			if s.ctx.Err() != nil {
				a.c.Close()
				a.c = nil
			} else {
				a.quit()
			}
			return false
		}
		a.fill(false)
		if len(a.inflight) > 0 && a.c.State() != smtp.StateClosed {
			a.settleReplies()
		}
	}
}

// answer is a request's answer held back by settleReplies.
type answer struct {
	req *request
	res result
}

// settleReplies answers the oldest transaction in flight, waiting for its
// reply if need be, and with it every later one whose reply has already
// arrived. The answers reach their callers together, after the reads: a
// burst of ready goroutines costs the scheduler one wake-up of an idle
// thread rather than one per message. Answers held back while the
// session does I/O go out within holdFor of a wait (see waiting).
func (a *conn) settleReplies() {
	a.holding = true
	a.readOldest()
	a.c.Poll()
	for len(a.inflight) > 0 && a.inflight[0].tx.Done() {
		a.readOldest()
	}
	a.holding = false
	a.deliver()
}

// fill starts waiting requests until the window is full, without
// waiting for one. With park set (nothing in flight, and the caller has
// checked that the session may take requests) and nothing waiting, it
// parks the session. It reports whether it took any request, and whether
// it parked the session.
func (a *conn) fill(park bool) (took, parked bool) {
	s := a.s
	if !park && !a.open() {
		return false, false
	}
	for a.room() > 0 {
		req, p := s.next(a, park && !took)
		if req == nil {
			return took, p
		}
		took = true
		a.start(req)
		if !a.open() {
			break
		}
	}
	return took, false
}

// open reports whether the session may take more requests.
func (a *conn) open() bool {
	return !a.retiring() && !isShutdown(a.s) && a.c.State() != smtp.StateClosed
}

// closed notes a connection that ended by a failure.
func (a *conn) closed() {
	if e, ok := errors.AsType[*smtp.Error](a.c.Err()); ok && e.Code == 421 {
		a.s.stats.seen421.Add(1)
	}
}

// start holds and writes a request taken from the waiting list.
func (a *conn) start(req *request) {
	if a.hold(req) {
		a.write(req)
	}
}

// write starts one held request on the connection, unless its caller
// withdrew it.
func (a *conn) write(req *request) {
	if req.state.Load() == stWithdrawn {
		return // the caller released it
	}
	if req.attempts >= a.s.cfg.MaxAttempts || (req.attempts > 0 && !req.body.rewind()) {
		a.finish(req, nil, req.lastErr)
		return
	}
	tx, err := a.c.WriteTx(a.io, req.env, &req.body)
	if err != nil && a.io.Err() != nil && a.c.State() != smtp.StateClosed {
		// The connection's context was cancelled (its last caller
		// withdrew) just before this request was taken: WriteTx wrote
		// nothing and left the session as it was. The connection is
		// being abandoned; the request goes on the next one.
		a.c.Close()
		err = &smtp.Error{Op: smtp.OpMail, Kind: smtp.KindIO, Err: smtp.ErrClosed, Message: "connection abandoned"}
	}
	if err != nil {
		if errors.Is(err, smtp.ErrClosed) && a.s.ctx.Err() == nil {
			// Nothing of it was written (the connection was found
			// closed): it goes on the next connection, and this was
			// not an attempt.
			if req.lastErr == nil {
				req.lastErr = err
			}
			a.replay = append(a.replay, req)
			return
		}
		a.finish(req, nil, err)
		return
	}
	if req.attempts > 0 {
		a.s.stats.replayed.Add(1)
	}
	req.attempts++
	a.written++
	req.tx = tx
	a.inflight = append(a.inflight, req)
}

// popOldest takes the oldest transaction off the window. It shifts the
// rest down rather than reslicing, so appends reuse the same array (the
// window is short: reslicing wore its capacity away, an allocation every
// few messages).
func (a *conn) popOldest() *request {
	req := a.inflight[0]
	n := copy(a.inflight, a.inflight[1:])
	a.inflight[n] = nil
	a.inflight = a.inflight[:n]
	return req
}

// readOldest reads the reply of the oldest transaction in flight.
func (a *conn) readOldest() {
	req := a.popOldest()
	out, err := a.c.ReadTx(a.io, req.tx)
	a.settle(req, out, err)
}

// settleInflight settles the transactions of a connection that broke:
// each has failed (smtp settles them all when a session breaks).
func (a *conn) settleInflight() {
	for _, req := range a.inflight {
		out, err := a.c.ReadTx(a.io, req.tx)
		a.settle(req, out, err)
	}
	clear(a.inflight)
	a.inflight = a.inflight[:0]
}

// settle answers a finished request, or keeps it for replay: its commit
// point was not written, or the server answered it with 421.
func (a *conn) settle(req *request, out *smtp.Outcome, err error) {
	tx := req.tx
	req.tx = nil
	if err != nil && tx.Replayable() && a.s.ctx.Err() == nil {
		req.lastErr = err
		// A request whose body reached EOF may be its caller's again.
		req.state.CompareAndSwap(stEOF, stActive)
		switch req.state.Load() {
		case stActive:
			a.replay = append(a.replay, req)
			return
		case stWithdrawn:
			return
		}
	}
	a.finish(req, out, err)
}

// finish ends the session's hold on req, answering its caller unless the
// caller has answered itself (withdrawn, or gone with ErrOutcomeUnknown).
func (a *conn) finish(req *request, out *smtp.Outcome, err error) {
	for {
		switch st := req.state.Load(); st {
		case stActive, stEOF:
			if !req.state.CompareAndSwap(st, stAnswered) {
				continue
			}
			if a.holding {
				a.ansMu.Lock()
				if len(a.answers) == 0 {
					a.heldSince = time.Now()
				}
				a.answers = append(a.answers, answer{req, result{out, err}})
				a.ansMu.Unlock()
			} else {
				req.result <- result{out, err}
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

// pruneReplay answers the requests that cannot be written again: their
// caller is gone, their attempts are used up, or their body cannot be
// rewound.
func (a *conn) pruneReplay() {
	kept := a.replay[:0]
	for _, req := range a.replay {
		switch {
		case req.state.Load() == stWithdrawn:
		case req.ctx.Err() != nil:
			a.finish(req, nil, req.ctx.Err())
		case req.attempts >= a.s.cfg.MaxAttempts, !req.body.rewind():
			a.finish(req, nil, req.lastErr)
		default:
			kept = append(kept, req)
		}
	}
	clear(a.replay[len(kept):])
	a.replay = kept
}

// failReplay answers every request waiting for a replay with err, or
// with its last error when err is nil.
func (a *conn) failReplay(err error) {
	for _, req := range a.replay {
		e := err
		if e == nil {
			e = req.lastErr
		}
		a.finish(req, nil, e)
	}
	clear(a.replay)
	a.replay = nil
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
	ctx, cancel := context.WithTimeout(a.io, 5*time.Second)
	defer cancel()
	a.c.Quit(ctx)
	a.c = nil
}

package sender

import (
	"context"
	"errors"
	"time"

	"github.com/smtpkit/smtpkit/smtp"
)

// conn is one session and the goroutine that owns it. Every field is
// owned by that goroutine (the session loop); nothing else touches the
// smtp.Client.
type conn struct {
	s        *Sender
	c        *smtp.Client
	born     time.Time
	written  int        // transactions written on this session
	inflight []*request // written, replies not yet read, in order
	replay   []*request // to write again on a new session, in order
}

// session is the goroutine of one connection: it dials (waiting the
// backoff after failures; after MaxDialFailures it becomes the one probe
// that keeps trying while Sends fail fast), then serves requests until
// idle, retired, shut down or broken beyond repair.
func (s *Sender) session() {
	defer s.wg.Done()
	defer s.sem.Release(1)
	defer s.stats.open.Add(-1)
	probe := false
	for {
		if !s.sleep(s.dialDelay(), nil) {
			if probe {
				s.stopProbing()
			}
			return
		}
		c, err := s.connect()
		if err == nil {
			s.dialSucceeded(probe)
			a := &conn{s: s, c: c, born: time.Now()}
			a.serve()
			return
		}
		if s.ctx.Err() != nil {
			if probe {
				s.stopProbing()
			}
			return
		}
		if !s.dialFailed(err) && !probe {
			return
		}
		probe = true
	}
}

// window is how many transactions may be in flight.
func (a *conn) window() int { return a.s.cfg.MaxInFlight }

// retiring reports whether the session should take no new request.
func (a *conn) retiring() bool {
	cfg := &a.s.cfg
	if cfg.MaxMessagesPerConn > 0 && a.written >= cfg.MaxMessagesPerConn {
		return true
	}
	return cfg.MaxLifetime > 0 && time.Since(a.born) >= cfg.MaxLifetime
}

func (a *conn) serve() {
	s := a.s
	idle := time.NewTimer(s.cfg.IdleTimeout)
	defer idle.Stop()
	for {
		if a.c.State() == smtp.StateClosed {
			if !a.recover() {
				return
			}
			continue
		}
		if len(a.inflight) == 0 {
			if a.retiring() {
				a.quit()
				return
			}
			idle.Reset(s.cfg.IdleTimeout)
			s.stats.idle.Add(1)
			select {
			case req := <-s.reqs:
				s.stats.idle.Add(-1)
				a.write(req)
			case <-idle.C:
				s.stats.idle.Add(-1)
				a.quit()
				return
			case <-s.shutdown:
				s.stats.idle.Add(-1)
				a.quit()
				return
			case <-s.ctx.Done():
				s.stats.idle.Add(-1)
				a.c.Close()
				return
			}
			continue
		}
		// Fill the window with whatever is waiting, without blocking.
	fill:
		for len(a.inflight) < a.window() && !a.retiring() && a.c.State() != smtp.StateClosed {
			select {
			case req := <-s.reqs:
				a.write(req)
			default:
				break fill
			}
		}
		if len(a.inflight) > 0 && a.c.State() != smtp.StateClosed {
			a.readOldest()
		}
	}
}

// write starts one request on the session, unless its caller withdrew it.
func (a *conn) write(req *request) {
	if !req.state.CompareAndSwap(stQueued, stWriting) && req.attempts == 0 {
		return // withdrawn before it was written
	}
	if req.attempts > 0 && !req.body.rewind() {
		a.answer(req, nil, req.lastErr)
		return
	}
	req.attempts++
	a.written++
	tx, err := a.c.WriteTx(a.s.ctx, req.env, req.body)
	if err != nil {
		if errors.Is(err, smtp.ErrClosed) && a.s.ctx.Err() == nil {
			// Nothing of it was written: it goes on the next session.
			req.lastErr = err
			a.replay = append(a.replay, req)
			return
		}
		a.answer(req, nil, err)
		return
	}
	req.tx = tx
	a.inflight = append(a.inflight, req)
}

// readOldest reads the reply of the oldest transaction in flight.
func (a *conn) readOldest() {
	req := a.inflight[0]
	a.inflight[0] = nil
	a.inflight = a.inflight[1:]
	out, err := a.c.ReadTx(a.s.ctx, req.tx)
	a.settle(req, out, err)
}

// settle answers a finished request, or keeps it for replay.
func (a *conn) settle(req *request, out *smtp.Outcome, err error) {
	if err != nil && req.tx.Replayable() && a.s.ctx.Err() == nil {
		req.lastErr = err
		req.tx = nil
		a.replay = append(a.replay, req)
		return
	}
	a.answer(req, out, err)
}

func (a *conn) answer(req *request, out *smtp.Outcome, err error) {
	if req.answered {
		return
	}
	req.answered = true
	st := &a.s.stats
	switch {
	case err == nil:
		st.sent.Add(1)
	case errors.Is(err, ErrOutcomeUnknown):
		st.unknown.Add(1)
	default:
		st.failed.Add(1)
	}
	req.result <- result{out, err}
}

// recover handles a session that broke: it settles what was in flight,
// then redials and writes the replayable requests again, in order. It
// returns false when the goroutine should end.
func (a *conn) recover() bool {
	s := a.s
	if e, ok := errors.AsType[*smtp.Error](a.c.Err()); ok && e.Code == 421 {
		s.stats.seen421.Add(1)
	}
	for _, req := range a.inflight {
		out, err := a.c.ReadTx(s.ctx, req.tx)
		a.settle(req, out, err)
	}
	clear(a.inflight)
	a.inflight = a.inflight[:0]
	bo := s.cfg.Backoff()
	for {
		a.pruneReplay()
		if len(a.replay) == 0 {
			return false
		}
		if s.ctx.Err() != nil {
			a.failReplay()
			return false
		}
		c, err := s.connect()
		if err == nil {
			s.dialSucceeded(false)
			a.c, a.born, a.written = c, time.Now(), 0
			replay := a.replay
			a.replay = nil
			for _, req := range replay {
				s.stats.replayed.Add(1)
				a.write(req)
			}
			return true
		}
		s.dialFailed(err)
		for _, req := range a.replay {
			req.lastErr = err
		}
		d := bo.NextBackOff()
		if d < 0 {
			a.failReplay()
			return false
		}
		// Wait the backoff, or until the oldest waiting caller gives up.
		if !s.sleep(d, a.replay[0].ctx.Done()) && (s.ctx.Err() != nil || isShutdown(s)) {
			a.failReplay()
			return false
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
		case req.ctx.Err() != nil:
			a.answer(req, nil, req.ctx.Err())
		case req.attempts >= a.s.cfg.MaxAttempts:
			a.answer(req, nil, req.lastErr)
		case !req.body.rewind():
			a.answer(req, nil, req.lastErr)
		default:
			kept = append(kept, req)
		}
	}
	clear(a.replay[len(kept):])
	a.replay = kept
}

func (a *conn) failReplay() {
	for _, req := range a.replay {
		a.answer(req, nil, req.lastErr)
	}
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
	ctx, cancel := context.WithTimeout(a.s.ctx, 5*time.Second)
	defer cancel()
	a.c.Quit(ctx)
}

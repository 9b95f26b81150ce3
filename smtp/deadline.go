package smtp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/transport"
)

// deadliner keeps the transport deadlines of the two halves. On a
// transport with SetReadDeadline and SetWriteDeadline each half has its
// own; on one with SetDeadline alone, the sooner of the two set is in
// force (a half whose deadline passes first fails the session anyway).
type deadliner struct {
	mu sync.Mutex // guards the fields below
	t  transport.Transport
	rw splitDeadlines // nil: only SetDeadline
	// r and w are the deadlines of the read and the write half; zero
	// means none. combined is what SetDeadline last set, for a
	// transport without split deadlines.
	r, w     time.Time
	combined time.Time
	// intR and intW are set by a context's cancellation (interrupt)
	// of the read or the write half, until uninterrupt: every deadline
	// that half sets stays in the past.
	intR, intW bool
	// rArmed mirrors !r.IsZero() (written under mu), so that clearing a
	// read deadline that is not set, once per reply, takes no lock.
	rArmed atomic.Bool
}

type splitDeadlines interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// past is the deadline that interrupts blocked I/O at once.
var past = time.Unix(1, 0)

// reset starts the deadlines afresh on t (a new session, or the TLS
// transport after STARTTLS).
func (d *deadliner) reset(t transport.Transport) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.t = t
	d.rw, _ = t.(splitDeadlines)
	d.r, d.w, d.combined = time.Time{}, time.Time{}, time.Time{}
	d.intR, d.intW = false, false
	d.rArmed.Store(false)
}

// flag returns the interruption flag of the half whose deadline is
// *which.
func (d *deadliner) flag(which *time.Time) *bool {
	if which == &d.r {
		return &d.intR
	}
	return &d.intW
}

// interrupt sets a past deadline for one half (*which is d.r or d.w): a
// context ended. On a transport with SetDeadline alone, that interrupts
// both.
func (d *deadliner) interrupt(which *time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rw == nil {
		// One deadline for both: both halves are interrupted.
		d.intR, d.intW = true, true
		d.r, d.w = past, past
	}
	*d.flag(which) = true
	*which = past
	d.apply(which)
}

// uninterrupt undoes interrupt for a half that goes on: the context that
// ended was not the next call's. The half sets its deadline again before
// its next I/O. On a transport with SetDeadline alone, it undoes both.
func (d *deadliner) uninterrupt(which *time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rw == nil {
		// One deadline for both, so both were interrupted; a half whose
		// own context has ended sets a past deadline again (see set).
		d.intR, d.intW = false, false
		d.r, d.w = time.Time{}, time.Time{}
	}
	*d.flag(which) = false
	*which = time.Time{}
	d.apply(which)
}

// readArmed reports whether the read half has a deadline.
func (d *deadliner) readArmed() bool { return d.rArmed.Load() }

// set sets the deadline *which (d.r or d.w) to ctx's deadline or
// now+timeout, whichever is sooner; with timeout < 0, to none.
//
// Moving a deadline re-arms two runtime timers, and a session sets one
// per reply: a deadline that would move later by less than
// timeout/deadlineSlack is left as it is, so a step may time out up to
// that much early (under 5 s of a 5 min timeout). A deadline that must
// come sooner is always set.
func (d *deadliner) set(which *time.Time, ctx context.Context, timeout time.Duration) {
	var dl time.Time
	if timeout >= 0 {
		dl = time.Now().Add(timeout)
		if cd, ok := ctx.Deadline(); ok && cd.Before(dl) {
			dl = cd
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if *d.flag(which) || ctx.Err() != nil {
		dl = past
	} else if cur := *which; !cur.IsZero() && !dl.IsZero() && !dl.Before(cur) && dl.Sub(cur) < timeout/deadlineSlack {
		return
	}
	if dl.Equal(*which) {
		return
	}
	*which = dl
	d.apply(which)
}

// clearRead removes the read half's deadline: nothing is owed.
func (d *deadliner) clearRead() {
	if !d.rArmed.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.intR || d.r.IsZero() {
		return
	}
	d.r = time.Time{}
	d.apply(&d.r)
}

// apply hands the deadline just changed to the transport (d.mu held).
// Every change of a deadline ends here.
func (d *deadliner) apply(which *time.Time) {
	d.rArmed.Store(!d.r.IsZero())
	if d.rw != nil {
		if which == &d.r {
			d.rw.SetReadDeadline(d.r)
		} else {
			d.rw.SetWriteDeadline(d.w)
		}
		return
	}
	c := d.r
	if c.IsZero() || !d.w.IsZero() && d.w.Before(c) {
		c = d.w
	}
	if !c.Equal(d.combined) {
		d.combined = c
		d.t.SetDeadline(c)
	}
}

// deadlineSlack: see set.
const deadlineSlack = 64

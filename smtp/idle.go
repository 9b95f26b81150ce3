package smtp

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// checkIdle looks for a close or an unsolicited reply (a 421 at the
// server's idle timeout) on a session with nothing in flight that sat
// unused for idlePeekAfter, before a transaction is written on it:
// written to a server that has gone, a pipelined transaction's commit
// point could leave before the loss is seen, and the outcome would be
// unknown. A goroutine reading the session (ReadReplies) sees such a reply
// at once, so nothing is checked then. Where the kernel can be asked
// (peekSocket) this costs one non-blocking system call and catches a
// close of any age; elsewhere a session unused for idleProbeAfter is
// probed with a 2 ms read. Bytes already buffered with nothing owed are
// always a reply sent before its command.
func (c *Client) checkIdle(ctx context.Context) {
	c.mu.Lock()
	if len(c.pending) > 0 || c.State() == StateClosed {
		c.mu.Unlock()
		return
	}
	if c.reading || c.readers > 0 {
		// A reader is reading: it sees a close or a 421 the moment it
		// comes. (The socket cannot be asked meanwhile: a peek waits
		// for the reader's read to return.) A 421 that crosses the
		// next command on the wire is that command's answer, and its
		// transaction is replayed.
		c.mu.Unlock()
		return
	}
	idle := time.Since(c.lastActive)
	buffered := c.r.Buffered() > 0
	if !buffered && idle < idlePeekAfter {
		c.mu.Unlock()
		return
	}
	c.reading = true
	c.mu.Unlock()
	switch {
	case buffered:
		c.probeIdle(ctx)
	default:
		switch peekSocket(c.t) {
		case peekNothing:
		case peekSomething:
			c.probeIdle(ctx)
		default:
			if idle > idleProbeAfter {
				c.probeIdle(ctx)
			}
		}
	}
	c.mu.Lock()
	c.reading = false
	c.cond.Broadcast()
	c.unlock()
}

// probeIdle reads, for at most 2 ms, what the server sent on an idle
// session: a close, or an unsolicited reply (a 421 before its idle
// timeout), either of which ends the session.
func (c *Client) probeIdle(ctx context.Context) {
	// A deadline already past would fail the read before it looks at
	// the socket; a short one in the future reads what is there.
	c.setReadDeadline(ctx, 2*time.Millisecond)
	_, err := c.r.Peek(1)
	switch {
	case err == nil:
		c.setReadDeadline(ctx, time.Second)
		rep, rerr := readReplyIn(c.r, OpMAIL, c.caps.EnhancedStatusCodes, &c.texts)
		c.mu.Lock()
		if rerr != nil {
			c.failLocked(ioError(ctx, OpMAIL, rerr))
		} else {
			c.unsolicitedLocked(&rep)
		}
		c.unlock()
	case isTimeout(err):
		// Nothing waiting: the session looks alive.
		c.dl.clearRead()
	default:
		c.fail(ctx, ioError(ctx, OpMAIL, fmt.Errorf("server closed the idle session: %w", err)))
	}
}

// sanitize makes an invalid address safe to show in an error.
func sanitize(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

package testpeers

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/internal/smtpx"
)

// BufferedPipe returns the two ends of an in-memory connection that
// buffers up to size octets in each direction, as a kernel socket does:
// a Write returns once its octets are in the buffer, and waits only
// while the buffer is full. net.Pipe buffers nothing, so a client on it
// never writes from its reading goroutine (a write there waits for the
// peer to read, and a peer blocked writing a reply would deadlock it);
// on a BufferedPipe of at least 4 KiB it does, as on TCP, and inside a
// testing/synctest bubble, where TCP cannot run. Deadlines are kept
// with timers, so they follow the bubble's clock.
//
// The client end says so to package smtp (smtpx.SocketLike). A size
// too small for the replies owed makes the deadlock the client's rule
// guards against possible: keep it at 4 KiB or more.
func BufferedPipe(size int) (client, server net.Conn) {
	ab, ba := newHalf(size), newHalf(size)
	return &bufEnd{r: ba, w: ab}, &bufEnd{r: ab, w: ba}
}

// half is one direction of a BufferedPipe.
type half struct {
	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte // guarded by mu; at most size octets
	size   int
	closed bool // guarded by mu: either end closed
}

func newHalf(size int) *half {
	h := &half{size: size}
	h.cond.L = &h.mu
	return h
}

// deadline is one end's deadline for one direction: a time (zero: none)
// and the timer that wakes the waiters of h when it passes.
type deadline struct {
	at    time.Time
	timer *time.Timer
}

// set sets d to t, waking h's waiters when it passes (h.mu held).
func (d *deadline) set(h *half, t time.Time) {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.at = t
	if !t.IsZero() {
		d.timer = time.AfterFunc(time.Until(t), func() {
			h.mu.Lock()
			h.cond.Broadcast()
			h.mu.Unlock()
		})
	}
	h.cond.Broadcast()
}

func (d *deadline) passed() bool { return !d.at.IsZero() && !time.Now().Before(d.at) }

// bufEnd is one end of a BufferedPipe.
type bufEnd struct {
	r, w *half
	// rdl is guarded by r.mu, wdl by w.mu.
	rdl, wdl deadline
	// local is set by Close.
	local atomic.Bool
}

// KernelBuffered marks the end as buffering like a kernel socket.
func (e *bufEnd) KernelBuffered(smtpx.SocketLike) {}

func (e *bufEnd) Read(p []byte) (int, error) {
	h := e.r
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		switch {
		case e.local.Load():
			return 0, net.ErrClosed
		case len(h.buf) > 0:
			n := copy(p, h.buf)
			h.buf = h.buf[:copy(h.buf, h.buf[n:])]
			h.cond.Broadcast()
			return n, nil
		case h.closed:
			return 0, io.EOF
		case e.rdl.passed():
			return 0, os.ErrDeadlineExceeded
		}
		h.cond.Wait()
	}
}

func (e *bufEnd) Write(p []byte) (int, error) {
	h := e.w
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for n < len(p) {
		switch {
		case e.local.Load():
			return n, net.ErrClosed
		case h.closed:
			return n, io.ErrClosedPipe
		case e.wdl.passed():
			return n, os.ErrDeadlineExceeded
		case len(h.buf) < h.size:
			k := min(h.size-len(h.buf), len(p)-n)
			h.buf = append(h.buf, p[n:n+k]...)
			n += k
			h.cond.Broadcast()
			continue
		}
		h.cond.Wait()
	}
	return n, nil
}

// Close ends both directions: the peer reads what is buffered, then EOF.
func (e *bufEnd) Close() error {
	e.local.Store(true)
	for _, h := range []*half{e.r, e.w} {
		h.mu.Lock()
		h.closed = true
		h.cond.Broadcast()
		h.mu.Unlock()
	}
	e.r.mu.Lock()
	e.rdl.set(e.r, time.Time{})
	e.r.mu.Unlock()
	e.w.mu.Lock()
	e.wdl.set(e.w, time.Time{})
	e.w.mu.Unlock()
	return nil
}

func (e *bufEnd) SetReadDeadline(t time.Time) error {
	e.r.mu.Lock()
	defer e.r.mu.Unlock()
	e.rdl.set(e.r, t)
	return nil
}

func (e *bufEnd) SetWriteDeadline(t time.Time) error {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	e.wdl.set(e.w, t)
	return nil
}

func (e *bufEnd) SetDeadline(t time.Time) error {
	e.SetReadDeadline(t)
	return e.SetWriteDeadline(t)
}

func (e *bufEnd) LocalAddr() net.Addr  { return pipeAddr{} }
func (e *bufEnd) RemoteAddr() net.Addr { return pipeAddr{} }

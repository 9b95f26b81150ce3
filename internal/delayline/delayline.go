// Package delayline is a userspace TCP delay line for benchmarks: a
// loopback proxy that holds every chunk of bytes for a fixed one-way delay
// before forwarding it, in each direction independently. It stands in for
// kernel netem, which these machines lack.
//
// It is a delay line, not stop-and-wait: the proxy keeps reading while
// earlier chunks wait, stamps each chunk with the time it was read, and a
// writer forwards it when its time comes, so many chunks can be in the
// line at once, as on a real long path. Memory is bounded: at most
// [MaxQueued] chunks of at most [ChunkSize] octets wait in each direction;
// beyond that the proxy stops reading and TCP flow control pushes back.
//
// Go's timers fire with about a millisecond of slack on an idle process,
// too coarse for sub-millisecond delays. Each writer therefore runs on a
// locked OS thread: it sleeps with nanosleep (timer slack lowered to 1 ns
// on Linux) until shortly before the deadline, and spins only the last
// few microseconds. How early the sleep ends follows the median lateness of the
// kernel's wake-ups; chunks due within a few tens of microseconds of each
// other leave in one write. The line is precise to some tens of
// microseconds and costs about one kernel sleep per write, so it keeps
// up with tens of thousands of chunks a second.
//
// Only the last stretch of a wait (under 2 ms) is slept on the thread: a
// thread blocked in a system call holds its P until the runtime takes it
// back, which on an idle process can take up to 10 ms, and readers
// waiting for a P would be delayed that long. Longer waits start on a Go
// timer, which frees the P.
//
// The package is for benchmarks and tests on loopback; it is not public
// API.
package delayline

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"time"
)

const (
	// ChunkSize is the largest read, and so the largest chunk, the line
	// holds.
	ChunkSize = 32 << 10
	// MaxQueued is how many chunks may wait in one direction of one
	// connection.
	MaxQueued = 256
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

// Line is a running delay line: connections accepted on Addr are
// forwarded to the target with Delay added in each direction.
type Line struct {
	ln     net.Listener
	target string
	delay  time.Duration

	wg sync.WaitGroup // the accept loop and every connection's goroutines

	mu     sync.Mutex // guards the fields below
	conns  map[*proxied]struct{}
	closed bool
}

// Start listens on a free port of 127.0.0.1 (or [::1] when target is an
// IPv6 address) and forwards each accepted connection to target, holding
// bytes for oneWay in each direction: the round trip time it adds is
// 2*oneWay. A zero oneWay forwards at once.
func Start(target string, oneWay time.Duration) (*Line, error) {
	if oneWay < 0 {
		return nil, errors.New("delayline: negative delay")
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	listen := "127.0.0.1:0"
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		listen = "[::1]:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	l := &Line{ln: ln, target: target, delay: oneWay, conns: make(map[*proxied]struct{})}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr returns the "host:port" clients dial.
func (l *Line) Addr() string { return l.ln.Addr().String() }

// Delay returns the one-way delay.
func (l *Line) Delay() time.Duration { return l.delay }

// Close stops accepting, closes every proxied connection and waits for
// all of the line's goroutines. It is idempotent.
func (l *Line) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := make([]*proxied, 0, len(l.conns))
	for p := range l.conns {
		conns = append(conns, p)
	}
	l.mu.Unlock()
	err := l.ln.Close()
	for _, p := range conns {
		p.abort()
	}
	l.wg.Wait()
	return err
}

func (l *Line) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go l.serve(c)
	}
}

// serve dials the target for one accepted connection and runs both
// directions until they end.
func (l *Line) serve(client net.Conn) {
	defer l.wg.Done()
	server, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p := &proxied{a: client, b: server, quit: make(chan struct{})}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		p.abort()
		return
	}
	l.conns[p] = struct{}{}
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(4)
	up := make(chan chunk, MaxQueued)
	down := make(chan chunk, MaxQueued)
	go func() { defer wg.Done(); p.read(client, up, l.delay) }()
	go func() { defer wg.Done(); p.write(server, up) }()
	go func() { defer wg.Done(); p.read(server, down, l.delay) }()
	go func() { defer wg.Done(); p.write(client, down) }()
	wg.Wait()
	p.abort()
	l.mu.Lock()
	delete(l.conns, p)
	l.mu.Unlock()
}

// proxied is one client connection and its connection to the target.
type proxied struct {
	a, b net.Conn
	quit chan struct{} // closed by abort

	mu      sync.Mutex // guards the fields below
	aborted bool
	halves  int // directions whose end (EOF) has been forwarded
}

// abort closes both connections, which ends every goroutine of p.
func (p *proxied) abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aborted {
		return
	}
	p.aborted = true
	close(p.quit)
	p.a.Close()
	p.b.Close()
}

// halfDone records that one direction forwarded its EOF; after both,
// the connections are closed.
func (p *proxied) halfDone() {
	p.mu.Lock()
	p.halves++
	both := p.halves == 2
	p.mu.Unlock()
	if both {
		p.abort()
	}
}

// chunk is one read, due for forwarding at due. A chunk with a nil buf
// marks the end of the direction: eof for an orderly end, else an error.
type chunk struct {
	buf *[]byte
	n   int
	due time.Time
	eof bool
}

// read reads src until it ends, queueing each chunk with its due time.
// It closes out when it returns.
func (p *proxied) read(src net.Conn, out chan<- chunk, delay time.Duration) {
	defer close(out)
	for {
		bp := bufPool.Get().(*[]byte)
		n, err := src.Read(*bp)
		due := time.Now().Add(delay)
		if n > 0 {
			select {
			case out <- chunk{buf: bp, n: n, due: due}:
			case <-p.quit:
				bufPool.Put(bp)
				return
			}
		} else {
			bufPool.Put(bp)
		}
		if err != nil {
			select {
			case out <- chunk{due: due, eof: errors.Is(err, io.EOF)}:
			case <-p.quit:
			}
			return
		}
	}
}

// write forwards the chunks of in to dst, each at its due time, on a
// locked OS thread for precise timing.
func (p *proxied) write(dst net.Conn, in <-chan chunk) {
	runtime.LockOSThread()
	restore := preciseThread()
	defer func() {
		restore()
		runtime.UnlockOSThread()
	}()
	var w waiter
	var batch []chunk
	var bufs net.Buffers
	var next *chunk
	var held chunk
	failed := false
	for {
		var c chunk
		if next != nil {
			c, next = *next, nil
		} else {
			var ok bool
			if c, ok = <-in; !ok {
				return
			}
		}
		if failed {
			recycle(c)
			continue
		}
		w.until(c.due)
		batch = append(batch[:0], c)
		limit := time.Now().Add(quantum / 2)
		// Take along whatever else is due, without waiting.
	more:
		for c.buf != nil {
			select {
			case c2, ok := <-in:
				if !ok {
					break more
				}
				if c2.due.After(limit) {
					held = c2
					next = &held
					break more
				}
				batch = append(batch, c2)
				if c2.buf == nil {
					break more
				}
			default:
				break more
			}
		}
		bufs = bufs[:0]
		var end *chunk
		for i := range batch {
			if batch[i].buf == nil {
				end = &batch[i]
				break
			}
			bufs = append(bufs, (*batch[i].buf)[:batch[i].n])
		}
		if len(bufs) > 0 {
			if _, err := bufs.WriteTo(dst); err != nil {
				failed = true
				p.abort()
			}
		}
		for _, b := range batch {
			recycle(b)
		}
		if end != nil && !failed {
			if end.eof {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
					p.halfDone()
					continue
				}
			}
			p.abort()
			failed = true
		}
	}
}

func recycle(c chunk) {
	if c.buf != nil {
		bufPool.Put(c.buf)
	}
}

// waiter sleeps until a deadline with a precision of some tens of
// microseconds, at a cost of one kernel sleep per wake-up: Go's timers
// (about a millisecond late on an idle process) are too coarse for
// sub-millisecond delays, and spinning to each deadline would take a
// whole CPU from the programs being measured once chunks come every few
// tens of microseconds. The sleep is asked to end early by the median
// lateness of the kernel's wake-ups (the margin, which the waiter
// learns as it goes), so wake-ups land around the deadline; the last
// few microseconds are spun. A deadline within half a quantum is not
// slept for at all: the writer forwards the chunk at once, together
// with whatever else falls due by then.
type waiter struct {
	m    time.Duration // current margin
	init bool
}

const (
	// quantum is the writer's resolution: chunks due within half of it
	// are forwarded together, up to that much early.
	quantum = 40 * time.Microsecond
	// spinMax is the longest stretch spun rather than slept.
	spinMax = 10 * time.Microsecond

	// A wait longer than fineWait starts on a Go timer, which frees the
	// thread's P but fires up to about a millisecond late: it is asked
	// to end timerLead before the deadline, and the thread sleeps the
	// rest (holding the P, as a blocking system call does).
	fineWait  = 2 * time.Millisecond
	timerLead = 1500 * time.Microsecond

	initialMargin = 60 * time.Microsecond
	maxMargin     = 500 * time.Microsecond
	marginStep    = 2 * time.Microsecond // per sleep, up or down
)

func (w *waiter) margin() time.Duration {
	if !w.init {
		w.m, w.init = initialMargin, true
	}
	return w.m
}

// until returns about at deadline: at most half a quantum early, and
// late by the kernel's wake-up jitter. Only the last stretch (under
// fineWait) is slept on the thread; a longer wait first parks the
// goroutine on a Go timer, so the thread's P is free for other
// goroutines meanwhile.
func (w *waiter) until(deadline time.Time) {
	d := time.Until(deadline)
	if d > fineWait {
		time.Sleep(d - timerLead)
		d = time.Until(deadline)
	}
	for d > quantum/2 {
		m := w.margin()
		want := max(d-m, time.Microsecond)
		start := time.Now()
		sleep(want)
		if over := time.Since(start) - want; over > m {
			m += marginStep
		} else {
			m -= marginStep
		}
		w.m = min(max(m, 0), maxMargin)
		d = time.Until(deadline)
	}
	if d > 0 && d <= spinMax {
		for time.Now().Before(deadline) {
			// Spin: shorter than any kernel sleep.
		}
	}
}

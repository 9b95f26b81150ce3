package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// memResult is one memory measurement.
type memResult struct {
	What   string  `json:"memory"` // "idle-session" or "stream-body"
	Client string  `json:"client"`
	Sink   string  `json:"sink"`
	Bytes  float64 `json:"bytes"`       // per session, or peak heap while streaming
	Alloc  float64 `json:"alloc_bytes"` // heap only per session, or allocated while streaming
	Size   int64   `json:"body_bytes,omitempty"`
	err    error
}

// settledMem collects garbage and returns the live heap and the stack
// the goroutines use (as the collector scanned it: the used part of
// each stack, not the cached or free stack memory, which earlier
// goroutines make noisy).
func settledMem() (heap, stack uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	s := []metrics.Sample{{Name: "/gc/scan/stack:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		stack = s[0].Value.Uint64()
	}
	return ms.HeapAlloc, stack
}

// idleSessions opens n sessions of client to addr, lets them go idle,
// and returns the heap plus goroutine stacks they hold, per session
// (Bytes) and the heap alone (Alloc).
func idleSessions(ctx context.Context, client, addr string, n int) memResult {
	res := memResult{What: "idle-session", Client: client}
	h0, s0 := settledMem()
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	switch client {
	case clientCore:
		for range n {
			t, err := transport.Dial(ctx, addr)
			if err != nil {
				res.err = err
				return res
			}
			c, err := smtp.Connect(ctx, t, "localhost", &smtp.Options{InsecureAllowPlaintext: true})
			if err != nil {
				res.err = err
				return res
			}
			closers = append(closers, func() { c.Close() })
		}
	case clientSender:
		s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, LocalName: "localhost",
			MaxConns: n, MaxInFlight: 1, IdleTimeout: 10 * time.Minute})
		if err != nil {
			res.err = err
			return res
		}
		closers = append(closers, func() { s.Close() })
		// Concurrent sends make the sender dial: repeat until all n
		// sessions exist, then wait for them to be idle.
		for try := 0; s.Stats().Open < n && try < 50; try++ {
			var wg sync.WaitGroup
			var failed atomic.Value
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := &bodyReader{data: message}
					if _, err := s.Send(ctx, smtp.Envelope{From: mailFrom, To: rcpts}, body); err != nil {
						failed.Store(err)
					}
				}()
			}
			wg.Wait()
			if err, ok := failed.Load().(error); ok {
				res.err = err
				return res
			}
		}
		for deadline := time.Now().Add(5 * time.Second); s.Stats().Idle < s.Stats().Open && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if open := s.Stats().Open; open != n {
			res.err = fmt.Errorf("the sender opened %d sessions, not %d", open, n)
			return res
		}
	case clientNetSMTP:
		for range n {
			r, err := newNetSMTPRunner(ctx, addr)
			if err != nil {
				res.err = err
				return res
			}
			c := r.c // not r: the runner itself is not part of a session
			closers = append(closers, func() { c.Close() })
		}
	case clientGoSMTP:
		for range n {
			r, err := newGoSMTPRunner(ctx, addr)
			if err != nil {
				res.err = err
				return res
			}
			c := r.c // not r: the runner itself is not part of a session
			closers = append(closers, func() { c.Close() })
		}
	default:
		res.err = fmt.Errorf("no idle-session measurement for %s", client)
		return res
	}
	h1, s1 := settledMem()
	res.Alloc = (float64(h1) - float64(h0)) / float64(n)
	// Clients without goroutines of their own move the scanned stack by
	// a few octets either way: no less than zero.
	res.Bytes = res.Alloc + max(0, (float64(s1)-float64(s0))/float64(n))
	runtime.KeepAlive(closers)
	return res
}

// bodyReader reads data once; unlike a *bytes.Reader its size is not
// known in advance, like most bodies a program streams.
type bodyReader struct {
	data []byte
	off  int
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.off:])
	b.off += n
	return n, nil
}

// genBody generates a body of size octets, line after line, holding no
// more than one line.
type genBody struct {
	left int64
	line []byte
	off  int
}

func newGenBody(size int64) *genBody {
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789 ....\r\n")
	return &genBody{left: size, line: line}
}

func (g *genBody) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		chunk := g.line[g.off:]
		if int64(len(chunk)) > g.left {
			chunk = chunk[:g.left]
		}
		c := copy(p[n:], chunk)
		n += c
		g.left -= int64(c)
		g.off = (g.off + c) % len(g.line)
	}
	return n, nil
}

// heapSampler records the highest heap (live and not yet collected
// objects) seen while it runs.
type heapSampler struct {
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > h.peak.Load() {
				h.peak.Store(v)
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heapSampler) finish() uint64 {
	close(h.stop)
	<-h.done
	return h.peak.Load()
}

// streamBody sends one message of size octets with client to addr and
// returns the peak heap above what was live before (Bytes) and the
// octets allocated meanwhile (Alloc).
func streamBody(ctx context.Context, client, sink, addr string, size int64) memResult {
	res := memResult{What: "stream-body", Client: client, Sink: sink, Size: size}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	env := smtp.Envelope{From: mailFrom, To: rcpts}
	var send func() error
	var closeFn func()
	switch client {
	case clientCore:
		t, err := transport.Dial(ctx, addr)
		if err != nil {
			res.err = err
			return res
		}
		c, err := smtp.Connect(ctx, t, "localhost", &smtp.Options{InsecureAllowPlaintext: true})
		if err != nil {
			res.err = err
			return res
		}
		send = func() error { _, err := c.Send(ctx, env, newGenBody(size)); return err }
		closeFn = func() { c.Quit(ctx) }
	case clientSender:
		s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, LocalName: "localhost", MaxConns: 1})
		if err != nil {
			res.err = err
			return res
		}
		// Dial before measuring.
		if _, err := s.Send(ctx, env, &bodyReader{data: message}); err != nil {
			s.Close()
			res.err = err
			return res
		}
		send = func() error { _, err := s.Send(ctx, env, newGenBody(size)); return err }
		closeFn = func() { s.Shutdown(ctx) }
	case clientNetSMTP:
		r, err := newNetSMTPRunner(ctx, addr)
		if err != nil {
			res.err = err
			return res
		}
		send = func() error {
			return netSMTPSend(r.c, func(w io.Writer) error { _, err := io.Copy(w, newGenBody(size)); return err })
		}
		closeFn = func() { r.c.Quit() }
	default:
		res.err = fmt.Errorf("no streaming measurement for %s", client)
		return res
	}
	defer closeFn()
	h0, _ := settledMem()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	hs := startHeapSampler()
	err := send()
	peak := hs.finish()
	runtime.ReadMemStats(&m1)
	if err != nil {
		res.err = err
		return res
	}
	res.Bytes = float64(peak) - float64(h0)
	res.Alloc = float64(m1.TotalAlloc - m0.TotalAlloc)
	return res
}

package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"
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

// idleSessions opens n sessions of client to t, lets them go idle,
// and returns the heap plus goroutine stacks they hold, per session
// (Bytes) and the heap alone (Alloc): one client of n sessions where it
// has a pool (a sessioner), else n clients of one session each.
func idleSessions(ctx context.Context, name string, t target, n int) memResult {
	return idleSessionsWith(ctx, name, n, func(ctx context.Context) (client, error) {
		return spec{Client: name, Conns: n, Window: 1}.open(ctx, t)
	})
}

// idleSessionsWith is idleSessions with the clients made by open.
func idleSessionsWith(ctx context.Context, name string, n int, open func(context.Context) (client, error)) memResult {
	res := memResult{What: "idle-session", Client: name}
	h0, s0 := settledMem()
	var clients []client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for len(clients) < n {
		c, err := open(ctx)
		if err != nil {
			res.err = err
			return res
		}
		clients = append(clients, c)
		if p, ok := c.(sessioner); ok {
			if err := p.idle(ctx, n); err != nil {
				res.err = err
				return res
			}
			break
		}
	}
	h1, s1 := settledMem()
	res.Alloc = (float64(h1) - float64(h0)) / float64(n)
	// Clients without goroutines of their own move the scanned stack by
	// a few octets either way: no less than zero.
	res.Bytes = res.Alloc + max(0, (float64(s1)-float64(s0))/float64(n))
	runtime.KeepAlive(clients)
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

// streamBody sends one message of size octets with client to t (after
// one message of the benchmark's, so that the session is open) and
// returns the peak heap above what was live before (Bytes) and the
// octets allocated meanwhile (Alloc).
func streamBody(ctx context.Context, name, sink string, t target, size int64) memResult {
	return streamBodyWith(ctx, name, sink, size, func(ctx context.Context) (client, error) {
		return spec{Client: name, Conns: 1}.open(ctx, t)
	})
}

// streamBodyWith is streamBody with the client made by open.
func streamBodyWith(ctx context.Context, name, sink string, size int64, open func(context.Context) (client, error)) memResult {
	res := memResult{What: "stream-body", Client: name, Sink: sink, Size: size}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := open(ctx)
	if err != nil {
		res.err = err
		return res
	}
	defer c.Close()
	st, ok := c.(streamer)
	if !ok {
		res.err = fmt.Errorf("no streaming measurement for %s", name)
		return res
	}
	if err := st.sendBody(ctx, &bodyReader{data: message}); err != nil {
		res.err = err
		return res
	}
	h0, _ := settledMem()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	hs := startHeapSampler()
	err = st.sendBody(ctx, newGenBody(size))
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

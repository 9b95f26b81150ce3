package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A client sends the benchmark message. Every section measures clients
// through this one interface: the closed loop (throughput, saturation),
// the open loop (latency), the scale rows and the memory figures are
// drivers over it. smtpkit's own clients and the peers are clients
// alike, each registered once in clientDefs under the name -clients
// selects.
type client interface {
	// Send sends one message. It is safe for concurrent use, except by
	// a client whose closed loop has one caller (see clientDef.callers).
	Send(ctx context.Context) error
	// Close ends the client's sessions.
	Close()
}

// The optional parts of a client, which the drivers use where a client
// has them.
type (
	// callerMaker gives each closed-loop caller its own send function, so
	// that what a caller owns (its body reader) is made once, not per
	// message.
	callerMaker interface {
		newCaller() func(context.Context) error
	}
	// looper runs its own closed loop while q allows (a window of
	// transactions written ahead of their replies), in place of callers
	// calling Send; it returns once every message it started is
	// answered, and may be called again.
	looper interface {
		loop(ctx context.Context, q *quota) error
	}
	// batcher sends n messages in one go, timed from start to end
	// (smtp-source, exec'd).
	batcher interface {
		batch(ctx context.Context, n int64) (time.Duration, error)
	}
	// remote runs its loops in another process (nodemailer, in Node).
	remote interface {
		saturate(callers int, tm timing) (float64, error)
		openLoop(rate float64, dur, timeout time.Duration, seed uint64) (loadResult, error)
	}
	// sessioner opens n idle sessions in one client (the sender's
	// pool); the memory driver opens n clients of one session each
	// when a client has none.
	sessioner interface {
		idle(ctx context.Context, n int) error
	}
	// streamer sends one message with body as its content.
	streamer interface {
		sendBody(ctx context.Context, body io.Reader) error
	}
)

// spec is one configuration of a client.
type spec struct {
	Client  string // its name in clientDefs
	Conns   int    // connections (sessions); 0 for one per message
	Window  int    // transactions in flight per connection; 0 or 1: none
	Callers int    // closed-loop callers; 0 for the client's default
}

func (s spec) String() string {
	return fmt.Sprintf("%s/conns=%d/window=%d", s.Client, s.Conns, s.Window)
}

// label is the spec's name in tables and charts.
func (s spec) label() string {
	if d := findClient(s.Client); d != nil && d.label != nil {
		return d.label(s)
	}
	return s.Client
}

// callers is how many goroutines the closed loop runs.
func (s spec) callers() int {
	if s.Callers > 0 {
		return s.Callers
	}
	if d := findClient(s.Client); d != nil && d.callers != nil {
		return d.callers(s)
	}
	return 1
}

// supports reports whether the client can run against the sink.
func (s spec) supports(sink string) bool {
	d := findClient(s.Client)
	return d != nil && (d.sinks == nil || d.sinks(sink))
}

// warmMsgs is how many messages a closed-loop run's warm-up waits for
// at most: enough to fill every window twice.
func (s spec) warmMsgs() int64 {
	return int64(max(s.Conns, 1)*max(s.Window, 1)*2 + 10)
}

// open connects the spec's client to t.
func (s spec) open(ctx context.Context, t target) (client, error) {
	d := findClient(s.Client)
	if d == nil {
		return nil, fmt.Errorf("no client %q", s.Client)
	}
	return d.open(ctx, s, t)
}

// clientDef is a registered client.
type clientDef struct {
	name    string
	about   string // for -h
	open    func(ctx context.Context, s spec, t target) (client, error)
	label   func(s spec) string    // nil: the name
	callers func(s spec) int       // closed-loop callers by default; nil: 1
	sinks   func(sink string) bool // nil: every sink
}

// target is where a client connects, and what it sends.
type target struct {
	addr string      // the sink, or a delay line in front of it
	sec  string      // secTLS or secPlain
	tls  *tls.Config // trusts the sink's certificate; nil for plaintext
	ca   string      // the certificate's file, for nodemailer
	lab  *lab        // the peers' tools (smtp-source); nil in tests

	msg     []byte   // the message; the benchmark's when nil
	to      []string // its recipients; rcpts when nil
	partial bool     // Envelope.AllowPartial
}

// payload returns the message and recipients t sends.
func (t target) payload() ([]byte, []string) {
	msg, to := t.msg, t.to
	if msg == nil {
		msg = message
	}
	if to == nil {
		to = rcpts
	}
	return msg, to
}

// clientNames lists the registered clients.
func clientNames() []string {
	var out []string
	for _, d := range clientDefs {
		out = append(out, d.name)
	}
	return out
}

func findClient(name string) *clientDef {
	for i := range clientDefs {
		if clientDefs[i].name == name {
			return &clientDefs[i]
		}
	}
	return nil
}

// clientFilter is the -clients selection: a spec is kept when an entry
// is its client's name or its label, or, not itself a client's name,
// starts its label followed by a space ("smtpkit-sender c4" keeps
// "smtpkit-sender c4 w32"; "net/smtp" keeps net/smtp, not "net/smtp per
// message"). Empty keeps every spec.
type clientFilter []string

func (f clientFilter) keeps(s spec) bool {
	if len(f) == 0 {
		return true
	}
	l := s.label()
	return slices.ContainsFunc(f, func(e string) bool {
		return e == s.Client || e == l || (findClient(e) == nil && strings.HasPrefix(l, e+" "))
	})
}

// check returns an error for an entry that names no client.
func (f clientFilter) check() error {
	for _, e := range f {
		if !slices.ContainsFunc(clientNames(), func(n string) bool { return e == n || strings.HasPrefix(e, n+" ") }) {
			return fmt.Errorf("unknown client %q (clients: %s)", e, strings.Join(clientNames(), ", "))
		}
	}
	return nil
}

// quota hands out the messages a run may send and counts those done.
type quota struct {
	max     int64        // messages that may be started
	started atomic.Int64 // claimed so far
	done    atomic.Int64 // accepted by the server
	stop    atomic.Bool  // no more claims
}

func newQuota(max int64) *quota { return &quota{max: max} }

// claim takes one message to send, or reports that the run is over.
func (q *quota) claim() bool {
	if q.stop.Load() {
		return false
	}
	if q.started.Add(1) > q.max {
		q.started.Add(-1)
		return false
	}
	return true
}

// sendTimes collects the time of every Send of a closed loop, one list
// per caller (only its goroutine adds; they are read once the run is
// over).
type sendTimes struct {
	mu   sync.Mutex // guards lists
	list []*[]time.Duration
}

// caller returns a new caller's list.
func (st *sendTimes) caller() *[]time.Duration {
	l := new([]time.Duration)
	st.mu.Lock()
	st.list = append(st.list, l)
	st.mu.Unlock()
	return l
}

// p50 is the median Send time of every caller, in µs, or -1.
func (st *sendTimes) p50() float64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	var all []time.Duration
	for _, l := range st.list {
		all = append(all, *l...)
	}
	if len(all) == 0 {
		return -1
	}
	slices.Sort(all)
	return float64(all[len(all)/2]) / 1e3
}

// closedLoop sends while q allows: through the client's own loop when
// it has one (and no Send is timed), else with callers goroutines each
// sending one message after another. The first error ends the run.
func closedLoop(ctx context.Context, c client, callers int, q *quota, times *sendTimes) error {
	if l, ok := c.(looper); ok && times == nil {
		return l.loop(ctx, q)
	}
	return callersRun(q, callers, func() func() error {
		send := c.Send
		if m, ok := c.(callerMaker); ok {
			send = m.newCaller()
		}
		if times == nil {
			return func() error { return send(ctx) }
		}
		mine := times.caller()
		return func() error {
			t0 := time.Now()
			err := send(ctx)
			*mine = append(*mine, time.Since(t0))
			return err
		}
	})
}

// callersRun runs callers goroutines, each sending one message after
// another with its own function from newSend while the quota allows,
// and returns the first error (which ends the run).
func callersRun(q *quota, callers int, newSend func() func() error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send := newSend()
			for q.claim() {
				if err := send(); err != nil {
					once.Do(func() { first = err })
					q.stop.Store(true)
					return
				}
				q.done.Add(1)
			}
		}()
	}
	wg.Wait()
	return first
}

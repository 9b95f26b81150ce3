package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// lab owns the helper processes, the sinks and the delay lines.
type lab struct {
	peers *helper // hosts the sinks
	lines *helper // hosts the delay lines

	mu      sync.Mutex // guards the maps below
	sinks   map[string]string
	sinkErr map[string]error
	line    map[string]string // "target rtt" -> line address
	source  string            // smtp-source path, "" until looked up
	echo    string            // echo server address
}

func newLab() (*lab, error) {
	peers, err := startHelper()
	if err != nil {
		return nil, err
	}
	lines, err := startHelper()
	if err != nil {
		peers.close()
		return nil, err
	}
	return &lab{peers: peers, lines: lines, sinks: map[string]string{}, sinkErr: map[string]error{}, line: map[string]string{}}, nil
}

func (l *lab) close() {
	var wg sync.WaitGroup
	for _, h := range []*helper{l.lines, l.peers} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.close()
		}()
	}
	wg.Wait()
}

// sink starts the named sink once and returns its address.
func (l *lab) sink(name string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.sinks[name]; ok {
		return a, nil
	}
	if err, ok := l.sinkErr[name]; ok {
		return "", err
	}
	cmd := map[string]string{sinkGoSMTP: "gosmtp", sinkGoSMTPTLS: "gosmtp-tls", sinkSMTPSink: "smtp-sink", sinkPostfix: "postfix"}[name]
	if cmd == "" {
		return "", fmt.Errorf("unknown sink %q", name)
	}
	a, err := l.peers.call(cmd)
	if err != nil {
		l.sinkErr[name] = err
		return "", err
	}
	l.sinks[name] = a
	return a, nil
}

// sourcePath returns the path of Postfix's smtp-source.
func (l *lab) sourcePath() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.source != "" {
		return l.source, nil
	}
	p, err := l.peers.call("smtp-source")
	if err != nil {
		return "", err
	}
	l.source = p
	return p, nil
}

// via returns the address to dial for target with rtt added: target
// itself at RTT 0, else a delay line in front of it.
func (l *lab) via(target string, rtt time.Duration) (string, error) {
	if rtt <= 0 {
		return target, nil
	}
	key := target + " " + rtt.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.line[key]; ok {
		return a, nil
	}
	a, err := l.lines.call("line", target, strconv.FormatInt(int64(rtt/2), 10))
	if err != nil {
		return "", err
	}
	l.line[key] = a
	return a, nil
}

// target returns the address to dial for sink at rtt.
func (l *lab) target(sink string, rtt time.Duration) (string, error) {
	a, err := l.sink(sink)
	if err != nil {
		return "", err
	}
	return l.via(a, rtt)
}

// rttStat is the measured round trip of a delay line.
type rttStat struct {
	Nominal     time.Duration
	Median, P90 time.Duration
}

// lineRTT measures the round trip through a line of the given RTT with
// small ping-pongs to an echo server in the sinks' helper.
func (l *lab) lineRTT(ctx context.Context, rtt time.Duration, n int) (rttStat, error) {
	l.mu.Lock()
	if l.echo == "" {
		a, err := l.peers.call("echo")
		if err != nil {
			l.mu.Unlock()
			return rttStat{}, err
		}
		l.echo = a
	}
	echo := l.echo
	l.mu.Unlock()
	addr, err := l.via(echo, rtt)
	if err != nil {
		return rttStat{}, err
	}
	c, err := dial(ctx, addr)
	if err != nil {
		return rttStat{}, err
	}
	defer c.Close()
	return pingPong(c, rtt, n)
}

func pingPong(c net.Conn, rtt time.Duration, n int) (rttStat, error) {
	buf := make([]byte, 64)
	got := make([]byte, 64)
	var ds []time.Duration
	for i := range n {
		buf[0] = byte(i)
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return rttStat{}, err
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return rttStat{}, err
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return rttStat{Nominal: rtt, Median: ds[len(ds)/2], P90: ds[len(ds)*9/10]}, nil
}

// timing says how long each run measures.
type timing struct {
	Runs    int           // runs per measurement (the median is kept)
	Window  time.Duration // the measured stretch of each run
	Warm    time.Duration // warm-up before it
	MinMsgs int64         // a run measures at least this many messages...
	MaxRun  time.Duration // ...unless this much time has passed
	MaxMsgs int64         // hard bound on messages per run
}

// measurement is one line of the results: the medians of Runs runs.
type measurement struct {
	Client       string   `json:"client"`
	Sink         string   `json:"sink"`
	RTTms        float64  `json:"rtt_ms"`
	Conns        int      `json:"conns"`
	Window       int      `json:"window"`
	Msgs         int64    `json:"msgs"`
	MsgsPerS     float64  `json:"msgs_per_s"`
	AllocsPerMsg *float64 `json:"allocs_per_msg"`
	BytesPerMsg  *float64 `json:"bytes_per_msg"`

	sc    spec
	rtt   time.Duration
	rates []float64 // every run's msg/s
	// reads and writes are the client process's read and write system
	// calls per message (medians), or -1 where /proc/self/io is missing.
	reads, writes float64
	// cpu is the client process's CPU time per message, or -1.
	cpu time.Duration
	err error
}

// sample is one run.
type sample struct {
	msgs   int64 // in the measured stretch
	total  int64 // in the whole run
	rate   float64
	allocs float64 // per message; < 0 when not measured
	bytes  float64
	reads  float64 // read system calls per message; < 0 when not measured
	writes float64
	cpu    float64 // CPU time per message in ns; < 0 when not measured
	// switches is the process's context switches per message; < 0
	// when not measured.
	switches float64
}

// measure runs sc against sink at rtt tm.Runs times and keeps the
// medians.
func (l *lab) measure(ctx context.Context, sc spec, sink string, rtt time.Duration, tm timing) measurement {
	m := measurement{Client: sc.Client, Sink: sink, RTTms: float64(rtt) / float64(time.Millisecond),
		Conns: sc.Conns, Window: sc.Window, sc: sc, rtt: rtt}
	addr, err := l.target(sink, rtt)
	if err != nil {
		m.err = err
		return m
	}
	t := target{addr: addr, sec: secPlain, lab: l}
	samples, err := runSamples(ctx, sc, t, rtt, tm)
	if err != nil {
		m.err = err
		return m
	}
	rates := make([]float64, len(samples))
	for i, s := range samples {
		rates[i] = s.rate
	}
	m.rates = rates
	m.MsgsPerS = round(median(rates), 1)
	m.Msgs = int64(median(mapf(samples, func(s sample) float64 { return float64(s.msgs) })))
	if samples[0].allocs >= 0 {
		a := round(median(mapf(samples, func(s sample) float64 { return s.allocs })), 1)
		b := round(median(mapf(samples, func(s sample) float64 { return s.bytes })), 0)
		m.AllocsPerMsg, m.BytesPerMsg = &a, &b
	}
	m.reads = median(mapf(samples, func(s sample) float64 { return s.reads }))
	m.writes = median(mapf(samples, func(s sample) float64 { return s.writes }))
	m.cpu = time.Duration(median(mapf(samples, func(s sample) float64 { return s.cpu })))
	return m
}

// runOnce connects the client of s to t, warms it up, measures a
// stretch of steady sending in a closed loop, and disconnects.
// Connection set-up and the filling and draining of pipelines fall
// outside the measured stretch. times, when set, collects every Send's
// time.
func runOnce(parent context.Context, s spec, t target, tm timing, times *sendTimes) (sample, error) {
	return runOnceWith(parent, s, tm, times, func(ctx context.Context) (client, error) { return s.open(ctx, t) })
}

// runOnceWith is runOnce with the client made by connect.
func runOnceWith(parent context.Context, s spec, tm timing, times *sendTimes, connect func(context.Context) (client, error)) (sample, error) {
	ctx, cancel := context.WithTimeout(parent, tm.Warm+tm.MaxRun+60*time.Second)
	defer cancel()
	c, err := connect(ctx)
	if err != nil {
		return sample{}, fmt.Errorf("connecting: %w", err)
	}
	defer c.Close()
	q := newQuota(tm.MaxMsgs)
	errc := make(chan error, 1)
	go func() {
		err := closedLoop(ctx, c, s.callers(), q, times)
		if err != nil {
			q.stop.Store(true)
		}
		errc <- err
	}()
	finish := func() error {
		q.stop.Store(true)
		return <-errc
	}
	ended := func() bool { return q.stop.Load() || q.done.Load() >= tm.MaxMsgs }

	if err := warmUp(q, tm, s.warmMsgs(), ended); err != nil {
		finish()
		return sample{}, err
	}
	smp := stretch(q, tm, ended)
	if err := finish(); err != nil {
		return sample{}, err
	}
	if smp.msgs <= 0 {
		return sample{}, errors.New("no message completed in the measured stretch")
	}
	smp.total = q.done.Load()
	return smp, nil
}

// warmUp waits until warm messages are done, or at least one and tm.Warm
// has passed.
func warmUp(q *quota, tm timing, warm int64, ended func() bool) error {
	start := time.Now()
	for !ended() {
		d := q.done.Load()
		if d >= warm || (d >= 1 && time.Since(start) >= tm.Warm) {
			break
		}
		if time.Since(start) > tm.Warm+tm.MaxRun {
			return errors.New("no message got through during the warm-up")
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// stretch measures the messages done for tm.Window (at least
// tm.MinMsgs, at most tm.MaxRun) and what they cost the process.
func stretch(q *quota, tm timing, ended func() bool) sample {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	r0, w0, ioOK := syscallCounts()
	cpu0, cpuOK := cpuTime()
	sw0, swOK := ctxSwitches()
	c0, t0 := q.done.Load(), time.Now()
	for !ended() {
		el := time.Since(t0)
		n := q.done.Load() - c0
		if (el >= tm.Window && n >= tm.MinMsgs) || el >= tm.MaxRun {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c1, t1 := q.done.Load(), time.Now()
	r1, w1, _ := syscallCounts()
	cpu1, _ := cpuTime()
	sw1, _ := ctxSwitches()
	runtime.ReadMemStats(&m1)
	n := c1 - c0
	s := sample{msgs: n, reads: -1, writes: -1, cpu: -1, switches: -1}
	if n <= 0 {
		return s
	}
	s.rate = float64(n) / t1.Sub(t0).Seconds()
	s.allocs = float64(m1.Mallocs-m0.Mallocs) / float64(n)
	s.bytes = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	if swOK {
		s.switches = float64(sw1-sw0) / float64(n)
	}
	if cpuOK {
		s.cpu = float64(cpu1-cpu0) / float64(n)
	}
	if ioOK {
		s.reads = float64(r1-r0) / float64(n)
		s.writes = float64(w1-w0) / float64(n)
	}
	return s
}

// runSamples measures sc at t tm.Runs times: a batcher (smtp-source)
// by timed batches, sized by a first, unmeasured one; any other client
// by runOnce.
func runSamples(ctx context.Context, sc spec, t target, rtt time.Duration, tm timing) ([]sample, error) {
	c, err := sc.open(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	b, isBatch := c.(batcher)
	if !isBatch {
		c.Close()
	} else {
		defer c.Close()
	}
	var samples []sample
	var n int64
	for i := range tm.Runs {
		var s sample
		var err error
		switch {
		case !isBatch:
			s, err = runOnce(ctx, sc, t, tm, nil)
		case i == 0:
			if n, err = calibrateBatch(ctx, b, sc, rtt, tm); err == nil {
				s, err = runBatch(ctx, b, n)
			}
		default:
			s, err = runBatch(ctx, b, n)
		}
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", i+1, err)
		}
		samples = append(samples, s)
	}
	return samples, nil
}

// calibrateBatch runs a batch briefly and returns how many messages
// make a run of about tm.Window.
func calibrateBatch(ctx context.Context, b batcher, sc spec, rtt time.Duration, tm timing) (int64, error) {
	n := int64(500 * sc.Conns)
	if rtt > 0 {
		n = int64(max(2, int(tm.Warm/(4*rtt)))) * int64(sc.Conns)
	}
	s, err := runBatch(ctx, b, n)
	if err != nil {
		return 0, err
	}
	want := int64(s.rate * tm.Window.Seconds())
	return min(max(want, tm.MinMsgs, int64(2*sc.Conns)), tm.MaxMsgs), nil
}

func runBatch(ctx context.Context, b batcher, n int64) (sample, error) {
	el, err := b.batch(ctx, n)
	if err != nil {
		return sample{}, err
	}
	return sample{msgs: n, rate: float64(n) / el.Seconds(), allocs: -1, reads: -1, writes: -1, cpu: -1}, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mapf[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func round(x float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if x < 0 {
		return -float64(int64(-x*p+0.5)) / p
	}
	return float64(int64(x*p+0.5)) / p
}

// syscallCounts returns the read and write system calls this process
// has made (Linux's /proc/self/io syscr and syscw).
func syscallCounts() (reads, writes int64, ok bool) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0, false
	}
	var gotR, gotW bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscr":
			reads, gotR = n, true
		case "syscw":
			writes, gotW = n, true
		}
	}
	return reads, writes, gotR && gotW
}

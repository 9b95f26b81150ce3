package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"slices"
)

// The latency section: what a request handler calling Send feels. Sends
// arrive at a fixed rate with exponential gaps (an open loop: each on
// its own goroutine with its own ctx, whatever the earlier ones are
// doing), and the latency of each is measured from its scheduled
// arrival, so a client that falls behind is charged for it.

// latSpec is one client configuration of the latency section.
type latSpec struct {
	spec
	Curve bool // measured under open load; false: saturation only
}

// latSpecs are the clients of the latency section. smtpkit with one
// connection is measured for saturation only: it is the same-connection
// comparison for go-mail's reused client.
var latSpecs = []latSpec{
	{spec{Client: clientSender, Conns: 4, Window: 32}, true},
	{spec{Client: clientSender, Conns: 1, Window: 32}, false},
	{spec{Client: clientNetSMTPPerMsg, Window: 1}, true},
	{spec{Client: clientGoMailDial, Window: 1}, true},
	{spec{Client: clientGoMailReuse, Conns: 1, Window: 1}, true},
	{spec{Client: clientNodemailer, Conns: 4, Window: 1}, true},
	{spec{Client: clientWireChunking, Conns: 4, Window: 1}, true},
}

// Security settings of the latency section.
const (
	secTLS   = "TLS+AUTH"
	secPlain = "plaintext"
)

// latPlan is what the latency section measures.
type latPlan struct {
	RTTs      []time.Duration
	Secs      []string
	Specs     []latSpec
	TLSLoads  []float64 // fractions of saturation, over TLS
	PlainLoad []float64 // over plaintext
	Sat       timing    // the saturation runs
	Samples   int       // a load point aims at this many Sends...
	MinDur    time.Duration
	MaxDur    time.Duration // ...within these bounds
	Timeout   time.Duration // each Send's ctx
	MaxOpen   int           // arrivals beyond this many unanswered Sends fail at once
	// RepeatLoad, the load of the targets, is offered Repeats times.
	RepeatLoad float64
	Repeats    int
}

func fullLatPlan() latPlan {
	return latPlan{
		RTTs:       []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond},
		Secs:       []string{secTLS, secPlain},
		Specs:      latSpecs,
		TLSLoads:   []float64{0.1, 0.25, 0.5, 0.75, 0.9, 1.1},
		PlainLoad:  []float64{0.1, 0.5, 0.9, 1.1},
		Sat:        timing{Runs: 3, Window: 700 * time.Millisecond, Warm: 300 * time.Millisecond, MinMsgs: 5, MaxRun: 3 * time.Second, MaxMsgs: 2_000_000},
		Samples:    1500,
		MinDur:     time.Second,
		MaxDur:     2500 * time.Millisecond,
		Timeout:    5 * time.Second,
		MaxOpen:    5000,
		RepeatLoad: 0.5,
		Repeats:    3,
	}
}

func quickLatPlan() latPlan {
	p := fullLatPlan()
	p.RTTs = []time.Duration{0, 10 * time.Millisecond}
	p.TLSLoads = []float64{0.1, 0.5, 1.1}
	p.PlainLoad = []float64{0.5}
	p.Sat = timing{Runs: 1, Window: 500 * time.Millisecond, Warm: 200 * time.Millisecond, MinMsgs: 3, MaxRun: 2 * time.Second, MaxMsgs: 1_000_000}
	p.Samples, p.MinDur, p.MaxDur, p.Timeout, p.Repeats = 300, 400*time.Millisecond, time.Second, 3*time.Second, 1
	return p
}

// sinkCPU returns the CPU time the sinks' helper has used, in ns, or -1.
func (l *lab) sinkCPU() int64 {
	v, err := l.peers.call("cpu")
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// latTargetFor starts the sink of sec and returns how to reach it at rtt.
func (l *lab) latTargetFor(sec string, rtt time.Duration) (target, error) {
	if sec == secPlain {
		a, err := l.target(sinkGoSMTP, rtt)
		return target{addr: a, sec: sec}, err
	}
	v, err := l.sink(sinkGoSMTPTLS)
	if err != nil {
		return target{}, err
	}
	addr, ca, _ := strings.Cut(v, " ")
	pem, err := os.ReadFile(ca)
	if err != nil {
		return target{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return target{}, errors.New("go-smtp-tls: no certificate in " + ca)
	}
	a, err := l.via(addr, rtt)
	return target{addr: a, sec: sec, ca: ca, tls: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}}, err
}

// loadResult is one open-loop run.
type loadResult struct {
	Rate    float64         // offered, msg/s
	Lat     []time.Duration // answered Sends, sorted
	Failed  int             // errors, timeouts, and arrivals over MaxOpen
	FirstEr string
	// MaxLate is the most an arrival was started after its time: the
	// measuring process's own scheduling delay, which every latency
	// of the run may include.
	MaxLate time.Duration
}

// quantile returns the q-quantile of the Sends, counting failed ones as
// slower than any answered; ok is false when it falls on a failure.
func (r loadResult) quantile(q float64) (time.Duration, bool) {
	n := len(r.Lat) + r.Failed
	if n == 0 {
		return 0, false
	}
	i := int(math.Ceil(q*float64(n))) - 1
	i = max(i, 0)
	if i >= len(r.Lat) {
		return 0, false
	}
	return r.Lat[i], true
}

// loopSleep is the open loop's wait for the next arrival (a test makes
// it oversleep).
var loopSleep = time.Sleep

// openLoop offers rate Sends a second to c for dur, each on its own
// goroutine with its own ctx (timeout from its scheduled arrival), and
// waits for every one to end.
func openLoop(ctx context.Context, c client, rate float64, dur, timeout time.Duration, maxOpen int, seed uint64) loadResult {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	res := loadResult{Rate: rate, Lat: make([]time.Duration, 0, int(rate*dur.Seconds()*1.2)+16)}
	var mu sync.Mutex // guards res
	var wg sync.WaitGroup
	var open atomic.Int64
	fail := func(err error) {
		mu.Lock()
		res.Failed++
		if res.FirstEr == "" {
			res.FirstEr = err.Error()
		}
		mu.Unlock()
	}
	start := time.Now()
	for at := time.Duration(0); at < dur && ctx.Err() == nil; at += time.Duration(rng.ExpFloat64() / rate * 1e9) {
		if d := at - time.Since(start); d > 20*time.Microsecond {
			loopSleep(d)
		}
		due := start.Add(at)
		res.MaxLate = max(res.MaxLate, time.Since(due))
		if open.Load() >= int64(maxOpen) {
			fail(fmt.Errorf("more than %d Sends unanswered", maxOpen))
			continue
		}
		open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			sctx, cancel := context.WithDeadline(ctx, due.Add(timeout))
			err := c.Send(sctx)
			cancel()
			el := time.Since(due)
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			res.Lat = append(res.Lat, el)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(res.Lat)
	return res
}

// latPoint is one line of a latency table.
type latPoint struct {
	Client  string  `json:"client"`
	Sec     string  `json:"security"`
	RTTms   float64 `json:"rtt_ms"`
	Load    float64 `json:"load"`    // fraction of saturation
	Offered float64 `json:"offered"` // msg/s
	N       int     `json:"n"`
	Failed  int     `json:"failed"`
	P50ms   float64 `json:"p50_ms"` // -1: a failure
	P99ms   float64 `json:"p99_ms"`
	P999ms  float64 `json:"p999_ms"`
	// P99Runs lists the p99 of each run where a load was offered more
	// than once (see latPlan.Repeats).
	P99Runs []float64 `json:"p99_runs_ms,omitempty"`
	// MaxLateMs is the load generator's worst lateness (see
	// loadResult.MaxLate).
	MaxLateMs float64 `json:"generator_max_late_ms"`

	spec     latSpec
	rtt      time.Duration
	firstErr string // the first failure's error, for the progress line
	err      error  // the point could not be measured
}

// latSat is a client's saturation throughput.
type latSat struct {
	Client string    `json:"client"`
	Sec    string    `json:"security"`
	RTTms  float64   `json:"rtt_ms"`
	Rate   float64   `json:"saturation_msgs_per_s"`
	Rates  []float64 `json:"runs"`
	// CPUus is the measuring process's CPU time per message (median of
	// the runs), -1 for nodemailer, which runs in Node.
	CPUus float64 `json:"client_cpu_us_per_msg"`
	// SinkCPUus is the sinks' process's CPU time per message over whole
	// runs (connecting included), -1 for nodemailer or where unknown.
	SinkCPUus float64 `json:"sink_cpu_us_per_msg"`

	spec latSpec
	rtt  time.Duration
	err  error
}

// latReport is what the latency section produced.
type latReport struct {
	Plan    latPlan
	Sats    []latSat
	Points  []latPoint
	Skipped map[string]string // client -> why and how to install
	Took    time.Duration
}

func (r *latReport) sat(client latSpec, sec string, rtt time.Duration) (latSat, bool) {
	for _, s := range r.Sats {
		if s.spec == client && s.Sec == sec && s.rtt == rtt && s.err == nil {
			return s, true
		}
	}
	return latSat{}, false
}

func (r *latReport) point(client latSpec, sec string, rtt time.Duration, load float64) (latPoint, bool) {
	for _, p := range r.Points {
		if p.spec == client && p.Sec == sec && p.rtt == rtt && p.Load == load && p.err == nil {
			return p, true
		}
	}
	return latPoint{}, false
}

func ms(d time.Duration) float64 { return round(float64(d)/1e6, 3) }

// measureLatency runs the latency section; progress lines go to text,
// and each result to emit.
func measureLatency(ctx context.Context, l *lab, p latPlan, text func(string), emit func(any)) *latReport {
	rep := &latReport{Plan: p, Skipped: map[string]string{}}
	start := time.Now()
	defer func() { rep.Took = time.Since(start) }()
	if slices.ContainsFunc(p.Specs, func(s latSpec) bool { return s.Client == clientNodemailer }) {
		if _, err := nodemailerDir(); err != nil {
			rep.Skipped[clientNodemailer] = err.Error()
			text(fmt.Sprintf("latency: %s skipped: %v", clientNodemailer, err))
		}
	}
	seed := uint64(1)
	for _, sec := range p.Secs {
		for _, rtt := range p.RTTs {
			t, err := l.latTargetFor(sec, rtt)
			if err != nil {
				text(fmt.Sprintf("latency %s RTT %s: %v", sec, fmtRTT(rtt), err))
				rep.Sats = append(rep.Sats, latSat{Sec: sec, rtt: rtt, err: err})
				continue
			}
			for _, s := range p.Specs {
				if ctx.Err() != nil {
					return rep
				}
				if _, skipped := rep.Skipped[s.Client]; skipped {
					continue
				}
				sat, points := measureLatClient(ctx, l, p, s, t, rtt, rep.base(s, sec, rtt), &seed)
				rep.add(sat, points, text, emit)
			}
		}
	}
	return rep
}

// base is the rate the loads of s are fractions of: the control is
// offered smtpkit's rates (the same load); 0 for the client's own.
func (r *latReport) base(s latSpec, sec string, rtt time.Duration) float64 {
	if s.Client != clientWireChunking {
		return 0
	}
	for _, o := range r.Plan.Specs {
		if v, ok := r.sat(o, sec, rtt); ok && o.Client == clientSender && o.Curve {
			return v.Rate
		}
	}
	return 0
}

// add records one client's results.
func (r *latReport) add(sat latSat, points []latPoint, text func(string), emit func(any)) {
	text(satLine(sat))
	r.Sats = append(r.Sats, sat)
	if sat.err == nil {
		emit(sat)
	}
	for _, pt := range points {
		text(pointLine(pt))
		r.Points = append(r.Points, pt)
		if pt.err == nil {
			emit(pt)
		}
	}
}

// measureLatClient measures one client's saturation at t (closed loop),
// then its latency at each load (open loop): a fraction of base when
// base > 0, else of its own saturation.
func measureLatClient(ctx context.Context, l *lab, p latPlan, s latSpec, t target, rtt time.Duration, base float64, seed *uint64) (latSat, []latPoint) {
	sat := latSat{Client: s.label(), Sec: t.sec, RTTms: float64(rtt) / 1e6, spec: s, rtt: rtt}
	c, err := s.open(ctx, t)
	if err != nil {
		sat.err = err
		return sat, nil
	}
	defer c.Close()
	offer := func(rate float64, dur time.Duration, seed uint64) (loadResult, error) {
		return openLoop(ctx, c, rate, dur, p.Timeout, p.MaxOpen, seed), nil
	}
	if r, ok := c.(remote); ok {
		sat.err = remoteSaturation(r, s, p.Sat, &sat)
		offer = func(rate float64, dur time.Duration, seed uint64) (loadResult, error) {
			return r.openLoop(rate, dur, p.Timeout, seed)
		}
	} else {
		sat.err = saturation(ctx, l, s, t, p.Sat, &sat)
	}
	if sat.err != nil || !s.Curve {
		return sat, nil
	}
	if _, ok := c.(remote); !ok {
		// Warm up (pools dial) at a quarter of saturation.
		openLoop(ctx, c, sat.Rate/4, 200*time.Millisecond, p.Timeout, p.MaxOpen, 0)
	}
	if base <= 0 {
		base = sat.Rate
	}
	loads := p.TLSLoads
	if t.sec == secPlain {
		loads = p.PlainLoad
	}
	return sat, p.measureLoads(s, t.sec, rtt, base, loads, seed, offer)
}

// saturation measures s's saturation at t with tm.Runs closed-loop
// runs, each with a client of its own, and the CPU time per message of
// the client and of the sinks.
func saturation(ctx context.Context, l *lab, s latSpec, t target, tm timing, sat *latSat) error {
	var cpus, sinkCPUs []float64
	for range tm.Runs {
		sink0 := l.sinkCPU()
		smp, err := runOnce(ctx, s.spec, t, tm, nil)
		if err != nil {
			return err
		}
		sat.Rates = append(sat.Rates, round(smp.rate, 1))
		cpus = append(cpus, smp.cpu/1e3)
		if sink1 := l.sinkCPU(); sink0 >= 0 && sink1 >= 0 && smp.total > 0 {
			sinkCPUs = append(sinkCPUs, float64(sink1-sink0)/1e3/float64(smp.total))
		}
	}
	sat.Rate, sat.CPUus, sat.SinkCPUus = median(sat.Rates), round(median(cpus), 1), -1
	if len(sinkCPUs) > 0 {
		sat.SinkCPUus = round(median(sinkCPUs), 1)
	}
	return nil
}

// remoteSaturation is saturation for a client whose loops run in
// another process; its CPU time is not counted.
func remoteSaturation(r remote, s latSpec, tm timing, sat *latSat) error {
	for range tm.Runs {
		v, err := r.saturate(s.callers(), tm)
		if err != nil {
			return err
		}
		sat.Rates = append(sat.Rates, round(v, 1))
	}
	sat.Rate, sat.CPUus, sat.SinkCPUus = median(sat.Rates), -1, -1
	return nil
}

// measureLoads offers each fraction in loads of the saturation rate sat
// through offer. The load of the targets, p.RepeatLoad, is offered
// p.Repeats times and the run with the median p99 is kept (one stall of
// a shared machine should not decide a target); the others' p99 are
// listed with it.
func (p latPlan) measureLoads(s latSpec, sec string, rtt time.Duration, sat float64, loads []float64, seed *uint64,
	offer func(rate float64, dur time.Duration, seed uint64) (loadResult, error)) []latPoint {
	var points []latPoint
	for _, load := range loads {
		reps := 1
		if load == p.RepeatLoad {
			reps = max(1, p.Repeats)
		}
		var runs []latPoint
		for range reps {
			*seed++
			rate := load * sat
			res, err := offer(rate, p.pointDur(rate), *seed)
			runs = append(runs, newLatPoint(s, sec, rtt, load, res, err))
		}
		if len(runs) == 1 {
			points = append(points, runs[0])
			continue
		}
		var p99s []float64
		for _, r := range runs {
			p99s = append(p99s, r.P99ms)
		}
		slow := func(v float64) float64 {
			if v < 0 {
				return math.Inf(1)
			}
			return v
		}
		slices.SortStableFunc(runs, func(a, b latPoint) int { return cmpFloat(slow(a.P99ms), slow(b.P99ms)) })
		pt := runs[len(runs)/2]
		pt.P99Runs = p99s
		points = append(points, pt)
	}
	return points
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pointDur is how long a load point offers rate: long enough for
// p.Samples Sends, within bounds.
func (p latPlan) pointDur(rate float64) time.Duration {
	d := time.Duration(float64(p.Samples) / rate * 1e9)
	return min(max(d, p.MinDur), p.MaxDur)
}

func newLatPoint(s latSpec, sec string, rtt time.Duration, load float64, res loadResult, err error) latPoint {
	pt := latPoint{Client: s.label(), Sec: sec, RTTms: float64(rtt) / 1e6, Load: load, Offered: round(res.Rate, 1),
		N: len(res.Lat) + res.Failed, Failed: res.Failed, MaxLateMs: ms(res.MaxLate), spec: s, rtt: rtt, err: err}
	if err != nil {
		return pt
	}
	if pt.N == 0 {
		pt.err = errors.New("no Send offered")
		return pt
	}
	for _, q := range []struct {
		q   float64
		dst *float64
	}{{0.5, &pt.P50ms}, {0.99, &pt.P99ms}, {0.999, &pt.P999ms}} {
		if v, ok := res.quantile(q.q); ok {
			*q.dst = ms(v)
		} else {
			*q.dst = -1
		}
	}
	pt.firstErr = res.FirstEr
	return pt
}

func satLine(s latSat) string {
	head := fmt.Sprintf("latency %-9s %6s  %-28s saturation", s.Sec, fmtRTT(s.rtt), s.spec.label())
	if s.err != nil {
		return head + "  error: " + s.err.Error()
	}
	return fmt.Sprintf("%s %9s msg/s %v  CPU/msg: client %.1f µs, sink %.1f µs", head, fmtInt(s.Rate), s.Rates, s.CPUus, s.SinkCPUus)
}

func fmtLat(v float64) string {
	if v < 0 {
		return "fail"
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func pointLine(p latPoint) string {
	head := fmt.Sprintf("latency %-9s %6s  %-28s %4.0f%% %9s msg/s", p.Sec, fmtRTT(p.rtt), p.spec.label(), 100*p.Load, fmtInt(p.Offered))
	if p.err != nil {
		return head + "  error: " + p.err.Error()
	}
	s := fmt.Sprintf("%s  p50 %s  p99 %s  p99.9 %s ms  (n=%d, generator late by up to %s ms", head, fmtLat(p.P50ms), fmtLat(p.P99ms), fmtLat(p.P999ms), p.N, fmtLat(p.MaxLateMs))
	if p.Failed > 0 {
		s += fmt.Sprintf(", %d failed: %s", p.Failed, p.firstErr)
	}
	if len(p.P99Runs) > 1 {
		s += fmt.Sprintf("; the median p99 of runs with %v", p.P99Runs)
	}
	return s + ")"
}

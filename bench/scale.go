package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/transport"
)

// The scale section: how the sender's costs grow with the number of
// waiting callers, the message size, the recipients per message and
// the connections.

// scalePlan is what the scale section measures.
type scalePlan struct {
	Callers    []int // goroutines blocked in Send at once, on MaxConns 4
	CallerMsgs int   // a caller row sends at least this many messages in bursts
	Sizes      []int // message sizes in octets
	SizeRTTs   []time.Duration
	// SizeRuns: each size and recipients row runs the sender and the
	// wire client in turn this many times and keeps the medians: the
	// client, the sink and the delay line share two cores, and one run
	// of a row moves by tens of percent.
	SizeRuns int
	Rcpts    []int // recipients per message
	RcptRTTs []time.Duration
	Conns    []int // connections at RTT 10 ms over TLS
	Timing   timing
	// DriverRTTs are the RTTs of the drivers table (who drives the
	// connection, one transaction at a time), plaintext; DriverTiming
	// its runs, interleaved.
	DriverRTTs   []time.Duration
	DriverTiming timing
}

func fullScalePlan() scalePlan {
	return scalePlan{
		Callers:      []int{100, 10_000, 100_000},
		CallerMsgs:   20_000,
		Sizes:        []int{1 << 10, 64 << 10, 1 << 20, 10 << 20, 25 << 20},
		SizeRTTs:     []time.Duration{0, 10 * time.Millisecond},
		SizeRuns:     3,
		Rcpts:        []int{1, 10, 100, 1000},
		RcptRTTs:     []time.Duration{0, 10 * time.Millisecond},
		Conns:        []int{1, 2, 4, 8, 16},
		Timing:       timing{Runs: 1, Window: 1500 * time.Millisecond, Warm: 300 * time.Millisecond, MinMsgs: 3, MaxRun: 5 * time.Second, MaxMsgs: 2_000_000},
		DriverRTTs:   []time.Duration{0, time.Millisecond},
		DriverTiming: timing{Runs: 5, Window: time.Second, Warm: 200 * time.Millisecond, MinMsgs: 20, MaxRun: 5 * time.Second, MaxMsgs: 2_000_000},
	}
}

func quickScalePlan() scalePlan {
	return scalePlan{
		Callers:      []int{100, 10_000},
		CallerMsgs:   5_000,
		Sizes:        []int{1 << 10, 1 << 20, 25 << 20},
		SizeRTTs:     []time.Duration{0, 10 * time.Millisecond},
		SizeRuns:     1,
		Rcpts:        []int{1, 100, 1000},
		RcptRTTs:     []time.Duration{10 * time.Millisecond},
		Conns:        []int{1, 4},
		Timing:       timing{Runs: 1, Window: 500 * time.Millisecond, Warm: 200 * time.Millisecond, MinMsgs: 2, MaxRun: 3 * time.Second, MaxMsgs: 1_000_000},
		DriverRTTs:   []time.Duration{0},
		DriverTiming: timing{Runs: 3, Window: 300 * time.Millisecond, Warm: 100 * time.Millisecond, MinMsgs: 10, MaxRun: 2 * time.Second, MaxMsgs: 1_000_000},
	}
}

// callerRow is one line of the callers table.
type callerRow struct {
	Callers int `json:"callers"`
	// Memory per caller: heap plus stack memory allocated (B), or plus
	// the used part of the stacks (UsedB), for a bare goroutine parked
	// on a channel, a caller waiting in Send, and the difference.
	GoroutineB     float64 `json:"goroutine_bytes"`
	GoroutineUsedB float64 `json:"goroutine_used_bytes"`
	WaitingB       float64 `json:"waiting_bytes"`
	WaitingUsedB   float64 `json:"waiting_used_bytes"`
	BeyondB        float64 `json:"beyond_bytes"`
	BeyondUsedB    float64 `json:"beyond_used_bytes"`
	HeapB          float64 `json:"beyond_heap_bytes"` // the heap part of BeyondB
	Waiting        int     `json:"waiting_seen"`      // Stats().Waiting when measured
	PerSendUs      float64 `json:"us_per_send"`
	Msgs           int     `json:"msgs"`
	// Waits from the release of the held dials to each answer, and how
	// many places each answer came from its caller's place in the queue.
	P50WaitMs    float64 `json:"p50_wait_ms"`
	P99WaitMs    float64 `json:"p99_wait_ms"`
	P99Displaced float64 `json:"p99_rank_displacement"`
	MaxDisplaced float64 `json:"max_rank_displacement"`
	err          error
}

// sizeRow is one line of the message-size table.
type sizeRow struct {
	Size      int     `json:"size"`
	RTTms     float64 `json:"rtt_ms"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	MBPerS    float64 `json:"mb_per_s"`
	WireMsgsS float64 `json:"wire_msgs_per_s"`
	HeapB     float64 `json:"peak_heap_bytes"`
	// CPU time of the measuring process per MB (10⁶ octets) of message
	// in ms, with the sender and with the wire client; -1 where the
	// process's CPU time is not available.
	CPUmsPerMB     float64 `json:"client_cpu_ms_per_mb"`
	WireCPUmsPerMB float64 `json:"wire_cpu_ms_per_mb"`
	err            error
}

// rcptRow is one line of the recipients table.
type rcptRow struct {
	Rcpts        int     `json:"rcpts"`
	RTTms        float64 `json:"rtt_ms"`
	MsgsPerS     float64 `json:"msgs_per_s"`         // all or nothing (the default)
	PartialMsgsS float64 `json:"partial_msgs_per_s"` // Envelope.AllowPartial
	WireMsgsS    float64 `json:"wire_msgs_per_s"`
	err          error
}

// connRow is one line of the connections table.
type connRow struct {
	Conns     int     `json:"conns"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	WireMsgsS float64 `json:"wire_msgs_per_s"` // the wire client, as many connections and callers
	err       error
}

// scaleReport is what the scale section produced.
type scaleReport struct {
	Plan    scalePlan
	Callers []callerRow
	Sizes   []sizeRow
	Rcpts   []rcptRow
	Conns   []connRow
	Drivers []driverRow
	Took    time.Duration
}

func measureScale(ctx context.Context, l *lab, p scalePlan, text func(string), emit func(any)) *scaleReport {
	rep := &scaleReport{Plan: p}
	start := time.Now()
	defer func() { rep.Took = time.Since(start) }()
	plain, err := l.latTargetFor(secPlain, 0)
	if err != nil {
		text("scale: " + err.Error())
		return rep
	}
	sizes := func(t target, rtt time.Duration) bool {
		for _, size := range p.Sizes {
			if !scaleRow(ctx, &rep.Sizes, func() sizeRow { return measureSize(ctx, t.addr, size, rtt, p.Timing, p.SizeRuns) }, sizeLine, text, emit) {
				return false
			}
		}
		return true
	}
	rcpts := func(t target, rtt time.Duration) bool {
		for _, k := range p.Rcpts {
			if !scaleRow(ctx, &rep.Rcpts, func() rcptRow { return measureRcpts(ctx, t.addr, k, rtt, p.Timing, p.SizeRuns) }, rcptLine, text, emit) {
				return false
			}
		}
		return true
	}
	drivers := func(t target, rtt time.Duration) bool {
		if ctx.Err() != nil {
			return false
		}
		measureDrivers(ctx, rep, t.addr, rtt, text, emit)
		return true
	}
	if !atRTTs(l, p.SizeRTTs, text, sizes) || !atRTTs(l, p.RcptRTTs, text, rcpts) || !atRTTs(l, p.DriverRTTs, text, drivers) {
		return rep
	}
	if t, err := l.latTargetFor(secTLS, 10*time.Millisecond); err != nil {
		text("scale: " + err.Error())
	} else {
		measureConns(ctx, rep, t, text, emit)
	}
	// Last: the goroutines of 100,000 callers leave the runtime a large
	// heap of descriptors kept for reuse, which would change the garbage
	// collector's pace for the rows after them.
	for _, n := range p.Callers {
		if !scaleRow(ctx, &rep.Callers, func() callerRow { return measureCallers(ctx, plain.addr, n, p.CallerMsgs) }, callerLine, text, emit) {
			break
		}
	}
	return rep
}

// atRTTs calls f with the plaintext sink at each of rtts, until f
// reports false (then it does too).
func atRTTs(l *lab, rtts []time.Duration, text func(string), f func(t target, rtt time.Duration) bool) bool {
	for _, rtt := range rtts {
		t, err := l.latTargetFor(secPlain, rtt)
		if err != nil {
			text("scale: " + err.Error())
			continue
		}
		if !f(t, rtt) {
			return false
		}
	}
	return true
}

// scaleRow measures one row, unless ctx has ended (then it reports
// false), adds it to rows and reports it.
func scaleRow[R any](ctx context.Context, rows *[]R, measure func() R, line func(R) string, text func(string), emit func(any)) bool {
	if ctx.Err() != nil {
		return false
	}
	r := measure()
	text(line(r))
	*rows = append(*rows, r)
	emit(r)
	return true
}

func sizeLine(r sizeRow) string {
	return fmt.Sprintf("scale size %9s  RTT %6s  %8.1f msg/s  %7.1f MB/s  wire %8.1f msg/s  CPU %s ms/MB (wire %s)  heap +%s  %v", fmtBytes(float64(r.Size)), fmtRTT(time.Duration(r.RTTms*1e6)),
		r.MsgsPerS, r.MBPerS, r.WireMsgsS, orDash(r.CPUmsPerMB, r.CPUmsPerMB >= 0, 2), orDash(r.WireCPUmsPerMB, r.WireCPUmsPerMB >= 0, 2), fmtBytes(r.HeapB), errText(r.err))
}

func rcptLine(r rcptRow) string {
	return fmt.Sprintf("scale rcpts %5d  RTT %6s  %8.1f msg/s  AllowPartial %8.1f msg/s  wire %8.1f msg/s  %v", r.Rcpts, fmtRTT(time.Duration(r.RTTms*1e6)), r.MsgsPerS, r.PartialMsgsS, r.WireMsgsS, errText(r.err))
}

// measureConns fills the connections table.
func measureConns(ctx context.Context, rep *scaleReport, t target, text func(string), emit func(any)) {
	for _, c := range rep.Plan.Conns {
		if ctx.Err() != nil {
			return
		}
		r := connRow{Conns: c}
		// smtpkit, then the wire client with as many connections.
		var rates [2]float64
		for i, s := range []spec{{Client: clientSender, Conns: c, Window: 32}, {Client: clientWireChunking, Conns: c, Window: 1}} {
			smp, err := runOnce(ctx, s, t, rep.Plan.Timing, nil)
			if err != nil {
				r.err = err
				break
			}
			rates[i] = round(smp.rate, 1)
		}
		r.MsgsPerS, r.WireMsgsS = rates[0], rates[1]
		text(fmt.Sprintf("scale conns %3d  RTT 10 ms TLS+AUTH  %8.1f msg/s  wire %8.1f msg/s  %v", c, r.MsgsPerS, r.WireMsgsS, errText(r.err)))
		rep.Conns = append(rep.Conns, r)
		emit(r)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return "error: " + err.Error()
}

func callerLine(r callerRow) string {
	if r.err != nil {
		return fmt.Sprintf("scale callers %7d  error: %v", r.Callers, r.err)
	}
	return fmt.Sprintf("scale callers %7d  goroutine %s, waiting in Send %s (+%s, heap %s, used stack +%s; %d seen waiting)  %.2f µs/Send over %d  wait p50 %.1f p99 %.1f ms  rank displacement p99 %.0f max %.0f",
		r.Callers, fmtBytes(r.GoroutineB), fmtBytes(r.WaitingB), fmtBytes(r.BeyondB), fmtBytes(r.HeapB), fmtBytes(r.BeyondUsedB-r.HeapB), r.Waiting, r.PerSendUs, r.Msgs, r.P50WaitMs, r.P99WaitMs, r.P99Displaced, r.MaxDisplaced)
}

// memNow collects garbage and returns the live heap, the goroutine
// stacks in use (the used part, as the collector scans it) and the
// stack memory allocated (MemStats.StackInuse).
func memNow() (heap, stackUsed, stackAlloc float64) {
	h, st := settledMem()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(h), float64(st), float64(ms.StackInuse)
}

// measureCallers measures n callers blocked in Send on a sender with
// MaxConns 4: the memory each holds while it waits, with the sessions'
// dials held back (see waiters), then, the dials let go, how FIFO the
// sender is; then, with the sessions open, bursts of n callers at once
// until msgs have been sent: the time per Send.
func measureCallers(ctx context.Context, addr string, n, msgs int) callerRow {
	open := make(chan struct{})
	snd, err := newSender(target{addr: addr, sec: secPlain}, 4, 32, func(c *sender.Config) {
		c.Dial = func(ctx context.Context) (transport.Transport, error) {
			select {
			case <-open:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return transport.Dial(ctx, addr)
		}
		c.DialTimeout = 10 * time.Minute
	})
	if err != nil {
		return callerRow{Callers: n, err: err}
	}
	sl := newSenderClient(snd, target{})
	defer sl.Close()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	row := waiters(sctx, sl, n, func() int { return int(snd.Stats().Waiting) }, func() { close(open) })
	if row.err != nil {
		return row
	}
	row.Msgs, row.PerSendUs, row.err = bursts(sctx, sl, n, msgs)
	return row
}

// waiters measures n callers blocked in c's Send, against n bare
// goroutines parked on a channel. The callers enter one at a time, each
// once queued counts the one before, so their order in the queue is
// known; release then lets c answer them: the wait from then to each
// answer, and how many places each answer came from its caller's place.
func waiters(ctx context.Context, c client, n int, queued func() int, release func()) callerRow {
	row := callerRow{Callers: n}
	// Each caller's send function (its body reader) is made in advance:
	// it is the caller's, not the client's.
	sends := make([]func(context.Context) error, n)
	for i := range sends {
		sends[i] = callerOf(c)
	}
	bare := bareGoroutines(n, func(i int) { runtime.KeepAlive(sends[i]) })
	row.GoroutineB = (bare[0] + bare[2]) / float64(n)
	row.GoroutineUsedB = (bare[0] + bare[1]) / float64(n)

	var wg sync.WaitGroup
	h0, u0, a0 := memNow()
	var failed, out atomic.Int64
	waits := make([]time.Duration, n)
	displaced := make([]float64, n)
	var t0 time.Time // set before release
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := sends[i](ctx)
			done := out.Add(1) - 1
			waits[i] = time.Since(t0)
			displaced[i] = float64(max(done-int64(i), int64(i)-done))
			if err != nil {
				failed.Add(1)
			}
		}()
		// Wait until it is queued.
		for spin := 0; queued() <= i; spin++ {
			if spin > 1_000_000 || ctx.Err() != nil {
				release()
				wg.Wait()
				row.err = fmt.Errorf("caller %d never waited (%d queued)", i, queued())
				return row
			}
			runtime.Gosched()
		}
	}
	row.Waiting = queued()
	h1, u1, a1 := memNow()
	t0 = time.Now()
	release()
	wg.Wait()
	if f := failed.Load(); f > 0 {
		row.err = fmt.Errorf("%d of %d Sends failed", f, n)
		return row
	}
	row.WaitingB = (h1 - h0 + a1 - a0) / float64(n)
	row.WaitingUsedB = (h1 - h0 + u1 - u0) / float64(n)
	row.BeyondB = row.WaitingB - row.GoroutineB
	row.BeyondUsedB = row.WaitingUsedB - row.GoroutineUsedB
	row.HeapB = (h1 - h0 - bare[0]) / float64(n)
	slices.Sort(waits)
	slices.Sort(displaced)
	row.P50WaitMs = ms(waits[len(waits)/2])
	row.P99WaitMs = ms(waits[len(waits)*99/100])
	row.P99Displaced = displaced[len(displaced)*99/100]
	row.MaxDisplaced = displaced[len(displaced)-1]
	return row
}

// callerOf returns a send function for one caller of c.
func callerOf(c client) func(context.Context) error {
	if m, ok := c.(callerMaker); ok {
		return m.newCaller()
	}
	return c.Send
}

// bareGoroutines parks n goroutines on a channel, each running keep,
// and returns what they hold: heap, used stack and stack allocated. The
// runtime keeps the descriptors of exited goroutines for reuse: it parks
// them twice and measures the second time, so that neither this nor the
// callers measured after count new descriptors.
func bareGoroutines(n int, keep func(i int)) [3]float64 {
	var wg sync.WaitGroup
	var bare [3]float64
	for range 2 {
		gate := make(chan struct{})
		h0, u0, a0 := memNow()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				keep(i)
			}()
		}
		h1, u1, a1 := memNow()
		close(gate)
		wg.Wait()
		bare = [3]float64{h1 - h0, u1 - u0, a1 - a0}
	}
	return bare
}

// bursts starts n callers of c at once, at least three times and until
// msgs have been sent, and returns the messages and the median burst's
// time per Send in µs (one burst can meet a collection or another
// process on the machine).
func bursts(ctx context.Context, c client, n, msgs int) (int, float64, error) {
	var perSend []float64
	var failed atomic.Int64
	var wg sync.WaitGroup
	sent := 0
	for sent < msgs || len(perSend) < 3 {
		start := time.Now()
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.Send(ctx); err != nil {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		perSend = append(perSend, float64(time.Since(start))/float64(n)/1e3)
		sent += n
		if f := failed.Load(); f > 0 {
			return sent, 0, fmt.Errorf("%d Sends failed", f)
		}
		if ctx.Err() != nil {
			return sent, 0, ctx.Err()
		}
	}
	return sent, round(median(perSend), 2), nil
}

// measureSize sends messages of size octets with the sender (one
// connection, window 32) and with the wire client, at rtt; the heap the
// sender holds meanwhile, and what each costs the measuring process in
// CPU time per MB.
func measureSize(ctx context.Context, addr string, size int, rtt time.Duration, tm timing, runs int) sizeRow {
	row := sizeRow{Size: size, RTTms: float64(rtt) / 1e6}
	msg := makeMessage(size)
	t := target{addr: addr, sec: secPlain, msg: msg}
	// The wire client's window: fewer above 2 MiB, so that its
	// pre-rendered messages stay under 64 MiB.
	w := min(32, max(1, (64<<20)/size))
	// The heap is sampled in a run of its own, before the measured
	// ones: its forced collections stop the world, which costs the run
	// they fall in (more on a busy machine, where the collector spins
	// until a running goroutine takes its preemption signal), and the
	// wire client's runs have none.
	h0, _ := settledMem()
	held := heapPeak(tm.Window / 3)
	_, err := runOnce(ctx, spec{Client: clientSender, Conns: 1, Window: 32}, t, tm, nil)
	peak := held()
	if err != nil {
		row.err = err
		return row
	}
	var rates, wrates, cpus, wcpus []float64
	for range max(1, runs) {
		smp, err := runOnce(ctx, spec{Client: clientSender, Conns: 1, Window: 32}, t, tm, nil)
		if err != nil {
			row.err = err
			return row
		}
		wsmp, err := runOnce(ctx, spec{Client: clientWireChunking, Conns: 1, Window: w}, t, tm, nil)
		if err != nil {
			row.err = fmt.Errorf("wire: %w", err)
			return row
		}
		rates, wrates = append(rates, smp.rate), append(wrates, wsmp.rate)
		cpus, wcpus = append(cpus, cpuPerMB(smp, size)), append(wcpus, cpuPerMB(wsmp, size))
	}
	row.MsgsPerS = round(median(rates), 1)
	row.MBPerS = round(median(rates)*float64(size)/1e6, 1)
	row.HeapB = max(0, float64(peak)-float64(h0))
	row.CPUmsPerMB = median(cpus)
	row.WireMsgsS = round(median(wrates), 1)
	row.WireCPUmsPerMB = median(wcpus)
	return row
}

// cpuPerMB is the CPU time of smp per MB of messages of size octets,
// in ms, or -1 when not measured.
func cpuPerMB(smp sample, size int) float64 {
	if smp.cpu < 0 {
		return -1
	}
	return round(smp.cpu/1e6/(float64(size)/1e6), 3)
}

// heapPeak samples the live heap (after forced collections) every
// tick, skipping the first (it falls in a run's warm-up), until the
// returned function is called; that returns the most seen.
func heapPeak(tick time.Duration) func() uint64 {
	var peak uint64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(tick)
		defer t.Stop()
		for i := 0; i < 4; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if i > 0 {
				h, _ := settledMem()
				peak = max(peak, h)
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-sampled
		return peak
	}
}

// measureRcpts sends messages to k recipients with the sender (one
// connection, window 32) and with the wire client.
func measureRcpts(ctx context.Context, addr string, k int, rtt time.Duration, tm timing, runs int) rcptRow {
	row := rcptRow{Rcpts: k, RTTms: float64(rtt) / 1e6}
	to := make([]string, k)
	for i := range to {
		to[i] = "sink" + strconv.Itoa(i) + "@localhost"
	}
	var all, partial, wire []float64
	for range max(1, runs) {
		for _, p := range []bool{false, true} {
			t := target{addr: addr, sec: secPlain, to: to, partial: p}
			smp, err := runOnce(ctx, spec{Client: clientSender, Conns: 1, Window: 32}, t, tm, nil)
			if err != nil {
				row.err = err
				return row
			}
			if p {
				partial = append(partial, smp.rate)
			} else {
				all = append(all, smp.rate)
			}
		}
		wsmp, err := runOnce(ctx, spec{Client: clientWireChunking, Conns: 1, Window: 32}, target{addr: addr, sec: secPlain, to: to}, tm, nil)
		if err != nil {
			row.err = errors.Join(errors.New("wire"), err)
			return row
		}
		wire = append(wire, wsmp.rate)
	}
	row.MsgsPerS = round(median(all), 1)
	row.PartialMsgsS = round(median(partial), 1)
	row.WireMsgsS = round(median(wire), 1)
	return row
}

// markdown renders the scale region.
func (s *scaleReport) markdown(cmd string, started time.Time) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	begin, end := regionMarkers("scale")
	p("%s## Scale\n\n", begin)
	p("Generated by `%s` on %s (took %s), on the same shared machine; tables unedited. smtpkit's sender throughout. Run this section alone with `go run ./bench -sections scale`.\n\n", cmd, started.UTC().Format("2006-01-02 15:04 MST"), s.Took.Round(time.Second))
	if len(s.Callers) > 0 {
		p("### Callers waiting in Send (MaxConns 4, MaxInFlight 32, go-smtp sink, RTT 0, plaintext)\n\n")
		p("Memory, per caller: N goroutines parked on a channel, against N callers blocked in `Send` while the sender's dials are held back; each holds a body reader made beforehand. Live heap after GC plus the stack memory allocated (`MemStats.StackInuse`); in brackets, with the used part of the stacks instead (as the collector scans them). The callers enter one at a time, each once `Stats().Waiting` counts the one before, so their order in the queue is known; then the dials go ahead: wait is the time from then to each answer, displacement how many places an answer came from its caller's place in the queue (MaxConns × MaxInFlight = 128 are answered in batches). Time per Send: with the sessions open, bursts of N callers started at once, at least three and until at least %s messages; the median burst's time per Send is shown.\n\n", fmtInt(float64(s.Plan.CallerMsgs)))
		p("| callers | bare goroutine | caller in Send | beyond the goroutine | of which heap | µs per Send | messages | wait p50 ms | wait p99 ms | displacement p99 | displacement max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		mdRows(&b, s.Callers, func(r callerRow) (string, string, error) {
			return fmtInt(float64(r.Callers)), fmt.Sprintf("%s (%s) | %s (%s) | %s (%s) | %s | %.2f | %s | %.1f | %.1f | %s | %s",
				fmtBytes(r.GoroutineB), fmtBytes(r.GoroutineUsedB), fmtBytes(r.WaitingB), fmtBytes(r.WaitingUsedB), fmtBytes(r.BeyondB), fmtBytes(r.BeyondUsedB), fmtBytes(r.HeapB),
				r.PerSendUs, fmtInt(float64(r.Msgs)), r.P50WaitMs, r.P99WaitMs, fmtInt(r.P99Displaced), fmtInt(r.MaxDisplaced)), r.err
		})
	}
	s.sizesMD(&b)
	if len(s.Rcpts) > 0 {
		p("### Recipients per message (one connection, W=32, go-smtp sink, plaintext)\n\nRCPT commands are pipelined. The wire client writes MAIL, every RCPT and `BDAT n LAST` without waiting; smtpkit, all-or-nothing by default, sends the body's LAST chunk only once every RCPT is accepted when there is more than one recipient, and the next message's MAIL cannot precede it; with `Envelope.AllowPartial` nothing waits. Each row runs the three in turn, %d times each; the medians are shown.\n\n", s.Plan.SizeRuns)
		p("| recipients | RTT | msg/s | ms per message | AllowPartial msg/s | wire msg/s | of wire limit | AllowPartial, of wire limit |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		mdRows(&b, s.Rcpts, func(r rcptRow) (string, string, error) {
			return fmt.Sprintf("%s | %g ms", fmtInt(float64(r.Rcpts)), r.RTTms), fmt.Sprintf("%s | %.3f | %s | %s | %.0f %% | %.0f %%", fmtRateF(r.MsgsPerS), 1000/r.MsgsPerS, fmtRateF(r.PartialMsgsS),
				fmtRateF(r.WireMsgsS), pct(r.MsgsPerS, r.WireMsgsS), pct(r.PartialMsgsS, r.WireMsgsS)), r.err
		})
	}
	if len(s.Conns) > 0 {
		p("### Connections (W=32, TLS+AUTH sink, RTT 10 ms)\n\nThe wire client (the latency section's control) with as many connections and 32 callers per connection (so 32 transactions in flight on each, as smtpkit's window) shows what the sink, the line and the CPUs let through.\n\n| connections | msg/s | per connection | against connections × the first row | wire msg/s | of wire |\n|---:|---:|---:|---:|---:|---:|\n")
		var base float64
		mdRows(&b, s.Conns, func(r connRow) (string, string, error) {
			if r.err == nil && base == 0 {
				base = r.MsgsPerS / float64(r.Conns)
			}
			return strconv.Itoa(r.Conns), fmt.Sprintf("%s | %s | %.0f %% | %s | %.0f %%", fmtInt(r.MsgsPerS), fmtInt(r.MsgsPerS/float64(r.Conns)), pct(r.MsgsPerS, base*float64(r.Conns)), fmtInt(r.WireMsgsS), pct(r.MsgsPerS, r.WireMsgsS)), r.err
		})
	}
	s.driversMD(&b)
	p("%s\n\n%s", strings.TrimSpace(scaleAnalysis), end)
	return b.Bytes()
}

// sizesMD renders the message-size table.
func (s *scaleReport) sizesMD(b *bytes.Buffer) {
	if len(s.Sizes) == 0 {
		return
	}
	b.WriteString("### Message size (one connection, W=32, go-smtp sink, plaintext)\n\nThe wire limit is the wire-chunking client with the same message (window 32, fewer above 2 MiB so that its pre-rendered window stays under 64 MiB). " +
		"CPU per MB: the CPU time of the measuring process (getrusage) per 10⁶ octets of message sent, with smtpkit and with the wire client; the sink and the delay line run in helper processes and are not in it, the measuring process's closed loop of callers is. " +
		"Heap held: the most of the live heap (after a forced collection, twice during a stretch like the measured ones) above what was live before, while 65 callers sent through the sender (the message itself is allocated before, and shared), in a run of its own before the measured ones: a forced collection stops the world, and on a busy machine the collector spins until a running goroutine takes its preemption signal, which the wire client's runs would not pay. " +
		fmt.Sprintf("Each row then runs the sender and the wire client in turn, %d times each; the medians are shown.\n\n", s.Plan.SizeRuns))
	b.WriteString("| size | RTT | msg/s | MB/s | wire msg/s | wire MB/s | of wire limit | CPU ms per MB | wire CPU ms per MB | live heap held |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	mdRows(b, s.Sizes, func(r sizeRow) (string, string, error) {
		return fmt.Sprintf("%s | %g ms", fmtBytes(float64(r.Size)), r.RTTms), fmt.Sprintf("%s | %.1f | %s | %.1f | %.0f %% | %s | %s | %s", fmtRateF(r.MsgsPerS), r.MBPerS, fmtRateF(r.WireMsgsS), r.WireMsgsS*float64(r.Size)/1e6, pct(r.MsgsPerS, r.WireMsgsS),
			orDash(r.CPUmsPerMB, r.CPUmsPerMB >= 0, 2), orDash(r.WireCPUmsPerMB, r.WireCPUmsPerMB >= 0, 2), fmtBytes(r.HeapB)), r.err
	})
}

// mdRows writes a Markdown table line per row: its first cell (or
// cells) and the rest, or the first and its error; then a blank line.
func mdRows[R any](b *bytes.Buffer, rows []R, cells func(R) (first, rest string, err error)) {
	for _, r := range rows {
		first, rest, err := cells(r)
		if err != nil {
			fmt.Fprintf(b, "| %s | error: %v |\n", first, err)
			continue
		}
		fmt.Fprintf(b, "| %s | %s |\n", first, rest)
	}
	b.WriteString("\n")
}

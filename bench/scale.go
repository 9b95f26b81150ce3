package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
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
	Rcpts      []int // recipients per message
	RcptRTTs   []time.Duration
	Conns      []int // connections at RTT 10 ms over TLS
	Timing     timing
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
		Rcpts:        []int{1, 100},
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
	MsgsPerS  float64 `json:"msgs_per_s"`
	MBPerS    float64 `json:"mb_per_s"`
	WireMsgsS float64 `json:"wire_msgs_per_s"`
	HeapB     float64 `json:"peak_heap_bytes"`
	err       error
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
	for _, size := range p.Sizes {
		if ctx.Err() != nil {
			return rep
		}
		r := measureSize(ctx, plain.addr, size, p.Timing)
		text(fmt.Sprintf("scale size %9s  %8.1f msg/s  %7.1f MB/s  wire %8.1f msg/s  heap +%s  %v", fmtBytes(float64(size)), r.MsgsPerS, r.MBPerS, r.WireMsgsS, fmtBytes(r.HeapB), errText(r.err)))
		rep.Sizes = append(rep.Sizes, r)
		emit(r)
	}
	for _, rtt := range p.RcptRTTs {
		t, err := l.latTargetFor(secPlain, rtt)
		if err != nil {
			text("scale: " + err.Error())
			continue
		}
		for _, k := range p.Rcpts {
			if ctx.Err() != nil {
				return rep
			}
			r := measureRcpts(ctx, t.addr, k, rtt, p.Timing)
			text(fmt.Sprintf("scale rcpts %5d  RTT %6s  %8.1f msg/s  AllowPartial %8.1f msg/s  wire %8.1f msg/s  %v", k, fmtRTT(rtt), r.MsgsPerS, r.PartialMsgsS, r.WireMsgsS, errText(r.err)))
			rep.Rcpts = append(rep.Rcpts, r)
			emit(r)
		}
	}
	for _, rtt := range p.DriverRTTs {
		t, err := l.latTargetFor(secPlain, rtt)
		if err != nil {
			text("scale: " + err.Error())
			continue
		}
		if ctx.Err() != nil {
			return rep
		}
		measureDrivers(ctx, rep, t.addr, rtt, text, emit)
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
		if ctx.Err() != nil {
			return rep
		}
		r := measureCallers(ctx, plain.addr, n, p.CallerMsgs)
		text(callerLine(r))
		rep.Callers = append(rep.Callers, r)
		emit(r)
	}
	return rep
}

// measureConns fills the connections table.
func measureConns(ctx context.Context, rep *scaleReport, t latTarget, text func(string), emit func(any)) {
	for _, c := range rep.Plan.Conns {
		if ctx.Err() != nil {
			return
		}
		r := connRow{Conns: c}
		// smtpkit, then the wire client with as many connections.
		var rates [2]float64
		for i, s := range []latSpec{{Client: latSender, Conns: c, Window: 32}, {Client: latWire, Conns: c, Window: 1}} {
			smp, err := runOnceWith(ctx, scenario{Client: s.Client, Conns: c, Window: 32}, rep.Plan.Timing, func(ctx context.Context) (runner, error) {
				lc, err := newLatClient(ctx, s, t)
				if err != nil {
					return nil, err
				}
				return &latRunner{c: lc, callers: satCallers(s)}, nil
			})
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
// MaxConns 4. First the memory each holds while it waits: the callers
// enter one at a time (each waits until Stats counts it), so their
// order on the waiting list is known, while the sessions' dials are
// held back; then the dials go ahead, and the order of the answers
// against the order of arrival shows how FIFO the sender is. Then, with
// the sessions open, bursts of n callers at once until msgs have been
// sent: the time per Send.
func measureCallers(ctx context.Context, addr string, n, msgs int) callerRow {
	row := callerRow{Callers: n}
	spec := latSpec{Client: latSender, Conns: 4, Window: 32}
	env := smtp.Envelope{From: mailFrom, To: rcpts}

	// Each caller's body reader is made in advance: it is the caller's,
	// not the sender's.
	bodies := make([]*bytes.Reader, n)
	for i := range bodies {
		bodies[i] = bytes.NewReader(message)
	}
	// A bare goroutine, parked on a channel. The runtime keeps the
	// descriptors of exited goroutines for reuse: park n goroutines twice
	// and measure the second time, so that neither this nor the callers
	// below count new descriptors.
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
				runtime.KeepAlive(bodies[i])
			}()
		}
		h1, u1, a1 := memNow()
		close(gate)
		wg.Wait()
		bare = [3]float64{h1 - h0, u1 - u0, a1 - a0}
	}
	row.GoroutineB = (bare[0] + bare[2]) / float64(n)
	row.GoroutineUsedB = (bare[0] + bare[1]) / float64(n)

	// The same number blocked in Send, the sessions' dials held.
	open := make(chan struct{})
	sl, err := newSenderLat(spec, latTarget{addr: addr, sec: secPlain}, func(c *sender.Config) {
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
		row.err = err
		return row
	}
	defer sl.close()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	h0, u0, a0 := memNow()
	var failed atomic.Int64
	var out atomic.Int64
	waits := make([]time.Duration, n)
	displaced := make([]float64, n)
	var t0 time.Time // set before open is closed
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := sl.s.Send(sctx, env, bodies[i])
			done := out.Add(1) - 1
			waits[i] = time.Since(t0)
			displaced[i] = float64(max(done-int64(i), int64(i)-done))
			if err != nil {
				failed.Add(1)
			}
		}()
		// Wait until it is on the waiting list.
		for spin := 0; sl.s.Stats().Waiting <= i; spin++ {
			if spin > 1_000_000 || ctx.Err() != nil {
				close(open)
				wg.Wait()
				row.err = fmt.Errorf("caller %d never waited (Stats.Waiting %d)", i, sl.s.Stats().Waiting)
				return row
			}
			runtime.Gosched()
		}
	}
	row.Waiting = sl.s.Stats().Waiting
	h1, u1, a1 := memNow()
	t0 = time.Now()
	close(open)
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

	// Bursts of n callers on the open sessions, at least three: the
	// time per Send is the median burst's (one burst can meet a
	// collection or another process on the machine).
	var perSend []float64
	sent := 0
	for sent < msgs || len(perSend) < 3 {
		start := time.Now()
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := sl.s.Send(sctx, env, bytes.NewReader(message)); err != nil {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		perSend = append(perSend, float64(time.Since(start))/float64(n)/1e3)
		sent += n
		if f := failed.Load(); f > 0 {
			row.err = fmt.Errorf("%d Sends failed", f)
			return row
		}
		if ctx.Err() != nil {
			row.err = ctx.Err()
			return row
		}
	}
	row.Msgs = sent
	row.PerSendUs = round(median(perSend), 2)
	return row
}

// measureSize sends messages of size octets with the sender (one
// connection, window 32) and with the wire client, at RTT 0.
func measureSize(ctx context.Context, addr string, size int, tm timing) sizeRow {
	row := sizeRow{Size: size}
	msg := makeMessage(size)
	w := min(32, max(1, (64<<20)/size))
	// The live heap, collected three times while the sender runs, above
	// what was live before.
	h0, _ := settledMem()
	var peak uint64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(tm.Window / 3)
		defer t.Stop()
		for i := 0; i < 4; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if i > 0 { // the first tick falls in the warm-up
				h, _ := settledMem()
				peak = max(peak, h)
			}
		}
	}()
	smp, err := runOnceWith(ctx, scenario{Client: clientSender, Conns: 1, Window: 32}, tm, func(context.Context) (runner, error) {
		r, err := newSenderRunner(scenario{Client: clientSender, Conns: 1, Window: 32}, addr)
		if err != nil {
			return nil, err
		}
		r.msg, r.to = msg, rcpts
		return r, nil
	})
	close(stop)
	<-sampled
	if err != nil {
		row.err = err
		return row
	}
	row.MsgsPerS = round(smp.rate, 1)
	row.MBPerS = round(smp.rate*float64(size)/1e6, 1)
	row.HeapB = max(0, float64(peak)-float64(h0))
	wsmp, err := runOnceWith(ctx, scenario{Client: clientWireChunking, Conns: 1, Window: w}, tm, func(ctx context.Context) (runner, error) {
		return newWireRunnerFor(ctx, addr, true, w, msg, rcpts)
	})
	if err != nil {
		row.err = fmt.Errorf("wire: %w", err)
		return row
	}
	row.WireMsgsS = round(wsmp.rate, 1)
	return row
}

// measureRcpts sends messages to k recipients with the sender (one
// connection, window 32) and with the wire client.
func measureRcpts(ctx context.Context, addr string, k int, rtt time.Duration, tm timing) rcptRow {
	row := rcptRow{Rcpts: k, RTTms: float64(rtt) / 1e6}
	to := make([]string, k)
	for i := range to {
		to[i] = "sink" + strconv.Itoa(i) + "@localhost"
	}
	sc := scenario{Client: clientSender, Conns: 1, Window: 32}
	for _, partial := range []bool{false, true} {
		smp, err := runOnceWith(ctx, sc, tm, func(context.Context) (runner, error) {
			r, err := newSenderRunner(sc, addr)
			if err != nil {
				return nil, err
			}
			r.msg, r.to, r.partial = message, to, partial
			return r, nil
		})
		if err != nil {
			row.err = err
			return row
		}
		if partial {
			row.PartialMsgsS = round(smp.rate, 1)
		} else {
			row.MsgsPerS = round(smp.rate, 1)
		}
	}
	wsmp, err := runOnceWith(ctx, scenario{Client: clientWireChunking, Conns: 1, Window: 32}, tm, func(ctx context.Context) (runner, error) {
		return newWireRunnerFor(ctx, addr, true, 32, message, to)
	})
	if err != nil {
		row.err = errors.Join(errors.New("wire"), err)
		return row
	}
	row.WireMsgsS = round(wsmp.rate, 1)
	return row
}

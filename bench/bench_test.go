package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as the helper process (see helper.go).
func TestMain(m *testing.M) {
	if isHelper() {
		os.Exit(helperMain())
	}
	code := m.Run()
	shared.mu.Lock()
	if shared.lab != nil {
		shared.lab.close()
	}
	shared.mu.Unlock()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// shared is the lab every test and benchmark of the binary uses, started
// on first use and closed by TestMain.
var shared struct {
	mu  sync.Mutex
	lab *lab
	err error
}

func testLab(tb testing.TB) *lab {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.lab == nil && shared.err == nil {
		shared.lab, shared.err = newLab()
	}
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.lab
}

// sinkAddr returns the address of sink at rtt, skipping when the sink
// cannot run here.
func sinkAddr(tb testing.TB, l *lab, sink string, rtt time.Duration) string {
	tb.Helper()
	addr, err := l.target(sink, rtt)
	if err != nil {
		if strings.Contains(err.Error(), "unavailable") {
			tb.Skipf("%s: %v", sink, err)
		}
		tb.Fatal(err)
	}
	return addr
}

func testCtx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

func TestMessage(t *testing.T) {
	if len(message) != 1100 {
		t.Errorf("message is %d octets, want 1100", len(message))
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(message), "\r\n"), "\r\n") {
		if strings.ContainsAny(line, "\r\n") || strings.HasPrefix(line, ".") || len(line) > 998 {
			t.Errorf("line %d: %q", i, line)
		}
	}
	var b bytes.Buffer
	n, err := io.Copy(&b, newGenBody(1000))
	if err != nil || n != 1000 || !bytes.HasPrefix(b.Bytes(), []byte("0123")) {
		t.Errorf("genBody: %d, %v", n, err)
	}
}

// TestSmoke runs every client for a few messages against the go-smtp
// sink and smtp-sink, directly and through a delay line, and checks
// that the go-smtp sink got them all.
func TestSmoke(t *testing.T) {
	l := testLab(t)
	const n = 5
	for _, sink := range []string{sinkGoSMTP, sinkSMTPSink} {
		for _, rtt := range []time.Duration{0, 2 * time.Millisecond} {
			t.Run(fmt.Sprintf("%s/rtt=%v", sink, rtt), func(t *testing.T) {
				addr := sinkAddr(t, l, sink, rtt)
				before := gosmtpCount(t, l)
				sent := 0
				for _, sc := range fullScenarios {
					if !sc.supports(sink) {
						continue
					}
					ctx := testCtx(t, 30*time.Second)
					if sc.Client == clientSource {
						path, err := l.sourcePath()
						if err != nil {
							t.Logf("smtp-source: %v", err)
							continue
						}
						if _, err := sourceRun(ctx, path, addr, sc.Conns, n*int64(sc.Conns)); err != nil {
							t.Errorf("%v: %v", sc, err)
						}
						continue
					}
					r, err := sc.open(ctx, target{addr: addr, sec: secPlain, lab: l})
					if err != nil {
						t.Errorf("%v: connect: %v", sc, err)
						continue
					}
					// Twice, as the measurements and benchmarks do.
					for range 2 {
						q := newQuota(n)
						if err := closedLoop(ctx, r, sc.callers(), q, nil); err != nil || q.done.Load() != n {
							t.Errorf("%v: %d of %d sent: %v", sc, q.done.Load(), n, err)
						}
						sent += n
					}
					r.Close()
				}
				if sink == sinkGoSMTP {
					if got := gosmtpCount(t, l) - before; got != int64(sent) {
						t.Errorf("go-smtp sink received %d messages, want %d", got, sent)
					}
				}
			})
		}
	}
}

func gosmtpCount(t *testing.T, l *lab) int64 {
	t.Helper()
	v, err := l.peers.call("count")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMeasure runs the measurement and the report on a small scale and
// checks the JSON object, the tables, the Markdown and the SVG.
func TestMeasure(t *testing.T) {
	l := testLab(t)
	sinkAddr(t, l, sinkGoSMTP, 0)
	tm := timing{Runs: 3, Window: 30 * time.Millisecond, Warm: 10 * time.Millisecond, MinMsgs: 3, MaxRun: time.Second, MaxMsgs: 100_000}
	p := plan{Sinks: []string{sinkGoSMTP, sinkPostfix}, RTTs: []time.Duration{0, time.Millisecond}, Timing: tm,
		Scenarios: []spec{{Client: clientSender, Conns: 1, Window: 32}, {Client: clientCore, Conns: 1, Window: 32}, {Client: clientWireChunking, Conns: 1, Window: 32}, {Client: clientNetSMTP, Conns: 1, Window: 1}}}
	rep := &report{Mode: "test", Started: time.Now(), Machine: machine(), Plan: p,
		Unavail: map[string]string{sinkPostfix: "not started in this test"}}
	ctx := testCtx(t, time.Minute)
	for _, rtt := range p.RTTs {
		for _, sc := range p.Scenarios {
			m := l.measure(ctx, sc, sinkGoSMTP, rtt, tm)
			if m.err != nil {
				t.Fatalf("%v at %v: %v", sc, rtt, m.err)
			}
			if len(m.rates) != 3 || m.MsgsPerS <= 0 || m.Msgs < tm.MinMsgs || m.AllocsPerMsg == nil {
				t.Errorf("%v at %v: %+v", sc, rtt, m)
			}
			rep.Results = append(rep.Results, m)
		}
	}
	// The actor-cost target whose two clients this plan runs is
	// measured again in interleaved rounds; the others are not.
	pairs := measurePairs(ctx, l, []string{sinkGoSMTP}, p.Scenarios, 2, tm, func(string) {}, func(any) {})
	if len(pairs) != 1 || pairs[0].err != nil || pairs[0].Target != "actor cost, go-smtp sink, RTT 0, W=32" || len(pairs[0].Ratios) != 2 || pairs[0].Ratio <= 0 {
		t.Errorf("interleaved rounds: %+v", pairs)
	}
	rep.Pairs = pairs
	st, err := l.lineRTT(ctx, time.Millisecond, 10)
	if err != nil || st.Median < time.Millisecond {
		t.Errorf("line RTT %+v, %v", st, err)
	}
	rep.LineRTTs = append(rep.LineRTTs, st)
	rep.Memory = append(rep.Memory, memResult{What: "idle-session", Client: clientSender, Sink: sinkGoSMTP, Bytes: 20000, Alloc: 9000},
		memResult{What: "stream-body", Client: clientCore, Sink: sinkGoSMTP, Size: 100 << 20, Bytes: 300000, Alloc: 1000})

	js, err := json.Marshal(rep.Results[0])
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(js, &obj); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"client", "sink", "rtt_ms", "conns", "window", "msgs", "msgs_per_s", "allocs_per_msg", "bytes_per_msg"} {
		if _, ok := obj[k]; !ok {
			t.Errorf("JSON object lacks %q: %s", k, js)
		}
	}
	if len(obj) != 9 {
		t.Errorf("JSON object has extra fields: %s", js)
	}

	var text bytes.Buffer
	rep.printTables(&text)
	md := string(rep.markdown())
	for _, want := range []string{"## Cost per message", "smtpkit-sender c1 w32", "## Where the time goes", "benchmarks.svg", "### Actor cost, interleaved rounds"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if !strings.Contains(text.String(), "wire-chunking w32") {
		t.Errorf("table:\n%s", text.String())
	}
	svg, err := rep.svg()
	if err != nil {
		t.Fatal(err)
	}
	polylines := countPolylines(t, svg)
	if polylines != len(p.Scenarios) {
		t.Errorf("SVG has %d lines, want %d", polylines, len(p.Scenarios))
	}
	if testing.Verbose() {
		t.Logf("tables:\n%s", text.String())
	}
}

// countPolylines returns the lines of an SVG chart, failing t when it
// is not well-formed.
func countPolylines(t *testing.T, svg []byte) int {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	n := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			n++
		}
	}
}

func TestMemory(t *testing.T) {
	l := testLab(t)
	ctx := testCtx(t, time.Minute)
	addr := sinkAddr(t, l, sinkGoSMTP, 0)
	for _, c := range []string{clientSender, clientCore, clientNetSMTP, clientGoSMTP} {
		m := idleSessions(ctx, c, target{addr: addr, sec: secPlain}, 8)
		// Bytes includes the change in goroutine stacks, which the
		// goroutines of earlier tests make noisy: check the heap part.
		if m.err != nil || m.Alloc <= 0 {
			t.Errorf("idle session %s: %+v", c, m)
		}
		t.Logf("%s", memLine(m))
	}
	for _, c := range []string{clientCore, clientSender, clientNetSMTP} {
		m := streamBody(ctx, c, sinkGoSMTP, target{addr: addr, sec: secPlain}, 4<<20)
		if m.err != nil {
			t.Errorf("stream %s: %v", c, m.err)
		}
		t.Logf("%s", memLine(m))
	}
}

func TestHostTB(t *testing.T) {
	h := &hostTB{name: "x"}
	cleaned := 0
	_, err := h.try(func(tb testing.TB) string {
		tb.Cleanup(func() { cleaned++ })
		tb.Fatalf("boom %d", 1)
		return "unreached"
	})
	if err == nil || err.Error() != "boom 1" {
		t.Errorf("Fatalf: %v", err)
	}
	_, err = h.try(func(tb testing.TB) string { tb.Skipf("no %s", "postfix"); return "" })
	if err == nil || !strings.Contains(err.Error(), "unavailable: no postfix") {
		t.Errorf("Skipf: %v", err)
	}
	v, err := h.try(func(tb testing.TB) string {
		dir := tb.TempDir()
		if _, err := os.Stat(dir); err != nil {
			tb.Fatal(err)
		}
		return dir
	})
	if err != nil {
		t.Fatal(err)
	}
	h.runCleanups()
	if cleaned != 1 {
		t.Errorf("cleanups run: %d", cleaned)
	}
	if _, err := os.Stat(v); !os.IsNotExist(err) {
		t.Errorf("TempDir %s not removed: %v", v, err)
	}
}

func TestParseRTTs(t *testing.T) {
	got, err := parseRTTs("10, 0,1ms,2,1")
	if err != nil || fmt.Sprint(got) != "[0s 1ms 2ms 10ms]" {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := parseRTTs("x"); err == nil {
		t.Error("no error for x")
	}
}

// BenchmarkThroughput holds the comparisons of go run ./bench: every
// sink, RTT and client of a full run. Each iteration is one message;
// msgs/s is reported besides ns/op.
func BenchmarkThroughput(b *testing.B) {
	p := fullPlan()
	for _, sink := range p.Sinks {
		for _, rtt := range p.RTTs {
			for _, sc := range p.Scenarios {
				if !sc.supports(sink) {
					continue
				}
				name := fmt.Sprintf("sink=%s/rtt=%gms/client=%s/conns=%d/window=%d", sink,
					float64(rtt)/float64(time.Millisecond), strings.ReplaceAll(sc.Client, "/", "-"), sc.Conns, sc.Window)
				b.Run(name, func(b *testing.B) { benchScenario(b, sink, rtt, sc) })
			}
		}
	}
}

func benchScenario(b *testing.B, sink string, rtt time.Duration, sc spec) {
	l := testLab(b)
	addr := sinkAddr(b, l, sink, rtt)
	ctx := testCtx(b, 10*time.Minute)
	if sc.Client == clientSource {
		path, err := l.sourcePath()
		if err != nil {
			b.Skip(err)
		}
		b.ResetTimer()
		if _, err := sourceRun(ctx, path, addr, sc.Conns, int64(max(b.N, sc.Conns))); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		return
	}
	r, err := sc.open(ctx, target{addr: addr, sec: secPlain, lab: l})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	// Warm up: dial every session and fill the window once.
	if err := closedLoop(ctx, r, sc.callers(), newQuota(int64(sc.Conns*sc.Window*2+5)), nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	q := newQuota(int64(b.N))
	if err := closedLoop(ctx, r, sc.callers(), q, nil); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkIdleSession reports the memory one idle session holds (heap
// and goroutine stacks), for each client.
func BenchmarkIdleSession(b *testing.B) {
	for _, c := range []string{clientSender, clientCore, clientNetSMTP, clientGoSMTP} {
		b.Run("client="+strings.ReplaceAll(c, "/", "-"), func(b *testing.B) {
			l := testLab(b)
			addr := sinkAddr(b, l, sinkGoSMTP, 0)
			ctx := testCtx(b, 5*time.Minute)
			var total float64
			for range b.N {
				m := idleSessions(ctx, c, target{addr: addr, sec: secPlain}, 32)
				if m.err != nil {
					b.Fatal(m.err)
				}
				total += m.Bytes
			}
			b.ReportMetric(total/float64(b.N), "B/session")
		})
	}
}

// BenchmarkStreamBody streams a 100 MiB body and reports the peak heap
// above the baseline; each iteration is one body.
func BenchmarkStreamBody(b *testing.B) {
	for _, sink := range []string{sinkGoSMTP, sinkSMTPSink} {
		for _, c := range []string{clientCore, clientSender, clientNetSMTP} {
			b.Run(fmt.Sprintf("sink=%s/client=%s", sink, strings.ReplaceAll(c, "/", "-")), func(b *testing.B) {
				l := testLab(b)
				addr := sinkAddr(b, l, sink, 0)
				ctx := testCtx(b, 10*time.Minute)
				var peak float64
				b.SetBytes(100 << 20)
				for range b.N {
					m := streamBody(ctx, c, sink, target{addr: addr, sec: secPlain}, 100<<20)
					if m.err != nil {
						b.Fatal(m.err)
					}
					peak = max(peak, m.Bytes)
				}
				b.ReportMetric(peak, "peak-heap-B")
			})
		}
	}
}

// TestLatencyAndScale runs the latency and scale sections on a tiny
// scale and checks their results, Markdown and chart.
func TestLatencyAndScale(t *testing.T) {
	l := testLab(t)
	ctx := testCtx(t, 2*time.Minute)
	lp := latPlan{RTTs: []time.Duration{0}, Secs: []string{secTLS}, Specs: latSpecs,
		TLSLoads: []float64{0.5}, PlainLoad: []float64{0.5},
		Sat:     timing{Runs: 1, Window: 100 * time.Millisecond, Warm: 50 * time.Millisecond, MinMsgs: 2, MaxRun: 2 * time.Second, MaxMsgs: 100_000},
		Samples: 20, MinDur: 50 * time.Millisecond, MaxDur: 200 * time.Millisecond, Timeout: 20 * time.Second, MaxOpen: 1000, RepeatLoad: 0.5, Repeats: 2}
	var lines []string
	lat := measureLatency(ctx, l, lp, func(s string) { lines = append(lines, s) }, func(any) {})
	if why, ok := lat.Skipped[clientNodemailer]; ok {
		t.Logf("nodemailer skipped: %s", why)
	}
	for _, s := range lat.Sats {
		if s.err != nil || s.Rate <= 0 {
			t.Errorf("saturation %s %s: %v", s.Client, s.Sec, s.err)
		}
	}
	for _, p := range lat.Points {
		if p.err != nil || p.N == 0 || p.Failed > 0 || p.P50ms <= 0 || p.P99ms < p.P50ms || p.P999ms < p.P99ms {
			t.Errorf("point %+v: %v %s", p, p.err, p.firstErr)
		}
	}
	sp := scalePlan{Callers: []int{100}, CallerMsgs: 200, Sizes: []int{4 << 10}, SizeRTTs: []time.Duration{0}, Rcpts: []int{3}, RcptRTTs: []time.Duration{0}, Conns: []int{1},
		Timing:     timing{Runs: 1, Window: 100 * time.Millisecond, Warm: 50 * time.Millisecond, MinMsgs: 2, MaxRun: 2 * time.Second, MaxMsgs: 100_000},
		DriverRTTs: []time.Duration{0}, DriverTiming: timing{Runs: 1, Window: 50 * time.Millisecond, Warm: 20 * time.Millisecond, MinMsgs: 2, MaxRun: 2 * time.Second, MaxMsgs: 100_000}}
	sc := measureScale(ctx, l, sp, func(s string) { lines = append(lines, s) }, func(any) {})
	if len(sc.Callers) != 1 || sc.Callers[0].err != nil || sc.Callers[0].Waiting != 100 || sc.Callers[0].PerSendUs <= 0 {
		t.Errorf("callers: %+v", sc.Callers)
	}
	if len(sc.Sizes) != 1 || sc.Sizes[0].err != nil || sc.Sizes[0].CPUmsPerMB == 0 || sc.Sizes[0].WireCPUmsPerMB == 0 || len(sc.Rcpts) != 1 || sc.Rcpts[0].err != nil || len(sc.Conns) != 1 || sc.Conns[0].err != nil {
		t.Errorf("scale: %+v %+v %+v", sc.Sizes, sc.Rcpts, sc.Conns)
	}
	if len(sc.Drivers) != len(driverSpecs) {
		t.Errorf("drivers: %d rows, want %d", len(sc.Drivers), len(driverSpecs))
	}
	for _, r := range sc.Drivers {
		if r.err != nil || r.MsgsPerS <= 0 || r.P50us <= 0 {
			t.Errorf("driver %+v: %v", r, r.err)
		}
	}
	md := string(lat.markdown("go test", time.Now(), machine())) + string(sc.markdown("go test", time.Now()))
	for _, want := range []string{"<!-- bench:latency -->", "### Saturation", "### TLS+AUTH, RTT 0 ms", clientNetSMTPPerMsg, clientGoMailReuse, "<!-- /bench:scale -->", "### Callers waiting in Send", "### Message size", "CPU ms per MB", "### Who drives the connection", driveHandoff} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	svg, err := lat.svg()
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(struct{})); err != nil {
		t.Errorf("latency SVG is not well-formed: %v", err)
	}
	if testing.Verbose() {
		t.Logf("progress:\n%s\n%s", strings.Join(lines, "\n"), md)
	}
}

func TestRegions(t *testing.T) {
	doc := []byte("# B\n\nintro\n\n## Where the time goes\n\ntext\n")
	lat := []byte("<!-- bench:latency -->\nL1\n<!-- /bench:latency -->\n")
	doc = spliceRegion(doc, "latency", lat)
	if !bytes.Contains(doc, []byte("intro\n\n<!-- bench:latency -->\nL1\n<!-- /bench:latency -->\n\n## Where the time goes")) {
		t.Errorf("inserted:\n%s", doc)
	}
	doc = spliceRegion(doc, "latency", []byte("<!-- bench:latency -->\nL2\n<!-- /bench:latency -->\n"))
	if bytes.Contains(doc, []byte("L1")) || !bytes.Contains(doc, []byte("L2")) {
		t.Errorf("replaced:\n%s", doc)
	}
	if got := spliceRegion(doc, "scale", nil); !bytes.Equal(got, doc) {
		t.Errorf("nil region changed the doc")
	}
	if r := extractRegion(doc, "latency"); !bytes.Equal(r, []byte("<!-- bench:latency -->\nL2\n<!-- /bench:latency -->\n")) {
		t.Errorf("extracted %q", r)
	}
}

package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"math"
	"strings"
	"time"
)

// The latency and scale sections each fill a region of
// docs/benchmarks.md between two markers, so that a run of one section
// replaces its own tables and keeps the others'.

func regionMarkers(name string) (begin, end string) {
	return "<!-- bench:" + name + " -->\n", "<!-- /bench:" + name + " -->\n"
}

// extractRegion returns the region name of doc, markers included, or
// nil.
func extractRegion(doc []byte, name string) []byte {
	b, e := regionMarkers(name)
	i := bytes.Index(doc, []byte(b))
	if i < 0 {
		return nil
	}
	j := bytes.Index(doc[i:], []byte(e))
	if j < 0 {
		return nil
	}
	return doc[i : i+j+len(e)]
}

// spliceRegion puts region (markers included) in place of doc's region
// of that name, or before the section "## Where the time goes" (at the
// end when there is none).
func spliceRegion(doc []byte, name string, region []byte) []byte {
	if len(region) == 0 {
		return doc
	}
	if old := extractRegion(doc, name); old != nil {
		i := bytes.Index(doc, old)
		return slicesConcat(doc[:i], region, doc[i+len(old):])
	}
	at := bytes.Index(doc, []byte("## Where the time goes"))
	if at < 0 {
		return slicesConcat(doc, []byte("\n"), region)
	}
	return slicesConcat(doc[:at], region, []byte("\n"), doc[at:])
}

func slicesConcat(parts ...[]byte) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		b.Write(p)
	}
	return b.Bytes()
}

//go:embed analysis-latency.md
var latencyAnalysis string

//go:embed analysis-scale.md
var scaleAnalysis string

// latTarget is one target of issue 13.
type latGoal struct {
	Name, Measured, Goal, Met string
}

func metText(ok bool, why string) string {
	if ok {
		return "met"
	}
	return "MISSED: " + why
}

// goals evaluates the targets of the latency and scale sections; either
// report may be nil.
func goals(lat *latReport, sc *scaleReport) []latGoal {
	var out []latGoal
	const rtt = 10 * time.Millisecond
	pool := latSpec{latSender, 4, 32, true}
	one := latSpec{latSender, 1, 32, false}
	if lat != nil {
		g := latGoal{Name: "p99 Send latency at 50 % of saturation, TLS+AUTH, RTT 10 ms", Goal: "≤ 3 RTT + 5 ms = 35 ms"}
		if p, ok := lat.point(pool, secTLS, rtt, 0.5); ok {
			g.Measured = fmt.Sprintf("%s ms (%s, %s msg/s)", fmtLat(p.P99ms), pool.label(), fmtInt(p.Offered))
			if w, ok := lat.point(latSpec{latWire, 4, 1, true}, secTLS, rtt, 0.5); ok {
				g.Measured += fmt.Sprintf("; the wire control at the same load: %s ms", fmtLat(w.P99ms))
			}
			g.Met = metText(p.P99ms >= 0 && p.P99ms <= 35, "over 35 ms")
		} else {
			g.Measured, g.Met = "-", "not measured"
		}
		out = append(out, g)
		g = latGoal{Name: "same, against net/smtp per message at 50 % of its saturation", Goal: "≤ 1/10 of net/smtp's p99"}
		p, ok1 := lat.point(pool, secTLS, rtt, 0.5)
		n, ok2 := lat.point(latSpec{latNetSMTP, 0, 1, true}, secTLS, rtt, 0.5)
		if ok1 && ok2 && p.P99ms >= 0 && n.P99ms != 0 {
			nv := n.P99ms
			if nv < 0 {
				g.Measured = fmt.Sprintf("%s ms against net/smtp's p99: failures (%d of %d)", fmtLat(p.P99ms), n.Failed, n.N)
				g.Met = "met"
			} else {
				g.Measured = fmt.Sprintf("%s ms against %s ms (%s msg/s): 1/%.1f", fmtLat(p.P99ms), fmtLat(nv), fmtInt(n.Offered), nv/p.P99ms)
				g.Met = metText(p.P99ms*10 <= nv, fmt.Sprintf("1/%.1f", nv/p.P99ms))
			}
		} else {
			g.Measured, g.Met = "-", "not measured"
		}
		out = append(out, g)
		for _, c := range []struct {
			mine, theirs latSpec
		}{{pool, latSpec{latNodemailer, 4, 1, true}}, {one, latSpec{latGoMailReuse, 1, 1, true}}} {
			g := latGoal{Name: fmt.Sprintf("saturation, TLS+AUTH, RTT 10 ms: %s against %s", c.mine.label(), c.theirs.label()), Goal: "≥ 10×"}
			a, ok1 := lat.sat(c.mine, secTLS, rtt)
			b, ok2 := lat.sat(c.theirs, secTLS, rtt)
			if ok1 && ok2 && b.Rate > 0 {
				g.Measured = fmt.Sprintf("%s against %s msg/s: %.0f×", fmtInt(a.Rate), fmtInt(b.Rate), a.Rate/b.Rate)
				g.Met = metText(a.Rate >= 10*b.Rate, "under 10×")
			} else {
				g.Measured, g.Met = "-", "not measured"
				if why, ok := lat.Skipped[c.theirs.Client]; ok {
					g.Met = "not measured: " + why
				}
			}
			out = append(out, g)
		}
		g = latGoal{Name: "TLS+AUTH cost against plaintext, RTT 0, " + one.label() + " (saturation)", Goal: "≤ 15 %"}
		a, ok1 := lat.sat(one, secTLS, 0)
		b, ok2 := lat.sat(one, secPlain, 0)
		if ok1 && ok2 && b.Rate > 0 {
			cost := 100 * (1 - a.Rate/b.Rate)
			g.Measured = fmt.Sprintf("%s against %s msg/s: %.0f %% less", fmtInt(a.Rate), fmtInt(b.Rate), cost)
			if a.CPUus >= 0 && a.SinkCPUus >= 0 && b.CPUus > 0 && b.SinkCPUus > 0 {
				ta, tb := a.CPUus+a.SinkCPUus, b.CPUus+b.SinkCPUus
				g.Measured += fmt.Sprintf(" (CPU per message, client and sink: %.0f against %.0f µs, %+.0f %%)", ta, tb, 100*(ta/tb-1))
			}
			g.Met = metText(cost <= 15, fmt.Sprintf("by %.0f points", cost-15))
		} else {
			g.Measured, g.Met = "-", "not measured"
		}
		out = append(out, g)
	}
	if sc != nil {
		var small, big *callerRow
		for i := range sc.Callers {
			r := &sc.Callers[i]
			if r.err != nil {
				continue
			}
			if r.Callers == 100 {
				small = r
			}
			if r.Callers == 100_000 {
				big = r
			}
		}
		g := latGoal{Name: "memory per caller waiting in Send, 100,000 callers, beyond its goroutine", Goal: "≤ 1 KiB"}
		if big != nil {
			g.Measured = fmt.Sprintf("%s (heap %s; counting the used part of the stack instead of the stack allocated: %s)", fmtBytes(big.BeyondB), fmtBytes(big.HeapB), fmtBytes(big.BeyondUsedB))
			g.Met = metText(big.BeyondB <= 1024, "over 1 KiB")
		} else {
			g.Measured, g.Met = "-", "not measured"
		}
		out = append(out, g)
		g = latGoal{Name: "time per Send, 100,000 callers against 100", Goal: "at most 20 % more"}
		if big != nil && small != nil && small.PerSendUs > 0 {
			d := 100 * (big.PerSendUs/small.PerSendUs - 1)
			g.Measured = fmt.Sprintf("%.2f against %.2f µs: %+.0f %%", big.PerSendUs, small.PerSendUs, d)
			g.Met = metText(d <= 20, fmt.Sprintf("%+.0f %%", d))
		} else {
			g.Measured, g.Met = "-", "not measured"
		}
		out = append(out, g)
	}
	return out
}

// latencyMarkdown renders the latency region.
func (r *latReport) markdown(cmd string, started time.Time, machine string) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	begin, end := regionMarkers("latency")
	p("%s## Latency under load, over TLS with AUTH\n\n", begin)
	p("Generated by `%s` on %s (took %s) on %s. ", cmd, started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second), machine)
	p("Tables unedited from that run. The machine's two CPUs are shared with other virtual machines, so figures move between runs: compare within one run.\n\n")
	p("![p99 Send latency against offered load, one line per client](benchmarks-latency.svg)\n\n")
	p("- Sink: the go-smtp server with implicit TLS (RSA 2048 certificate, TLS 1.3) and AUTH PLAIN required, started in the helper process; for plaintext, the go-smtp sink of the throughput tables, without AUTH (AUTH is never sent in plaintext). Round trips from the same delay line. Every client sends the benchmark message of %s octets to one recipient; go-mail and nodemailer render their own MIME message from the same text.\n", fmtInt(float64(len(message))))
	p("- Clients: `%s` (`sender.Sender`, MaxConns 4, MaxInFlight 32; with one connection for the saturation comparisons); `%s` (dial, TLS, EHLO, AUTH, MAIL, RCPT, DATA, QUIT for every message, as `net/smtp.SendMail` does); `%s` (github.com/wneessen/go-mail v0.8.1, `DialAndSendWithContext` per message); `%s` (one go-mail client dialed once, `Send` under its mutex, a semaphore in front so that a waiting caller can give up; go-mail sends NOOP before each message, and NOOP and RSET after it); `%s` (nodemailer %s, `pool: true`, `maxConnections: 4`, `maxMessages: 100`, its default, driven from Node by bench/nodemailer/pool.js); and a control, `%s c4`, which writes each Send's pre-rendered MAIL, RCPT and `BDAT n LAST` at once on the least busy of four connections (no window, no waiting for a read to end) while a reader goroutine per connection answers: the least a client can add to the round trip. The control is offered smtpkit's rates (its *load* is a fraction of smtpkit's saturation), so that what it shows beyond one RTT is the sink, the delay line and the machine at the same load.\n",
		latSender, latNetSMTP, latGoMailDial, latGoMailReuse, latNodemailer, "10.6.1", latWire)
	p("- Saturation: closed loop, callers sending one message after another (smtpkit 2×C×W+C callers, the wire control 32×C, per-message clients 64, go-mail's reused client 4, nodemailer 4×C), median of %d runs of %v. Open loop: Sends arrive at a fraction of that rate with exponential gaps, each on its own goroutine (in Node, its own promise) with its own ctx of %v from its scheduled arrival; latency runs from the scheduled arrival to the answer, so a client that falls behind (or a timer that fires late) is charged for it. A point lasts long enough for %d Sends, between %v and %v; the load of the targets (50 %%) is offered %d times and the run with the median p99 is shown, with every run's p99. Failed Sends (errors, timeouts, more than %d unanswered) count as slower than any answered one: a percentile that falls on them reads `fail`. With fewer than 1,000 Sends, p99.9 is the slowest. *Generator late* is the most an arrival was started after its time in that run: the measuring process's own scheduling delay (timer slack, and on a shared machine, waiting for a CPU), which any latency of the run may include.\n\n",
		r.Plan.Sat.Runs, r.Plan.Sat.Window, r.Plan.Timeout, r.Plan.Samples, r.Plan.MinDur, r.Plan.MaxDur, max(1, r.Plan.Repeats), r.Plan.MaxOpen)
	p("- Run this section alone with `go run ./bench -sections latency` (about 11 minutes; with `-quick`, RTT 0 and 10 ms and three loads, about 2; `-rtt`, `-security tls` or `plain` and `-latclients` pick a part, e.g. `-rtt 0 -security tls -latclients 'smtpkit-sender c4,wire-chunking'`). nodemailer needs Node.js 20 or later and `npm ci --prefix bench/nodemailer`.\n\n")
	for c, why := range r.Skipped {
		p("**%s was not measured**: %s.\n\n", c, why)
	}

	p("### Targets\n\n")
	goalTable(&b, goals(r, nil))

	p("### Saturation\n\nmsg/s, closed loop, median of %d runs.\n\n", r.Plan.Sat.Runs)
	rttHeader(&b, []string{"client", "security"}, r.Plan.RTTs)
	for _, sec := range r.Plan.Secs {
		for _, s := range r.Plan.Specs {
			p("| %s | %s |", s.label(), sec)
			for _, rtt := range r.Plan.RTTs {
				if v, ok := r.sat(s, sec, rtt); ok {
					p(" %s |", fmtInt(v.Rate))
				} else {
					p(" - |")
				}
			}
			p("\n")
		}
	}
	p("\nCPU time per message at saturation, RTT 0 (user and system, µs): the client is the measuring process (nodemailer runs in Node and is not counted), the sink the helper process that runs the sinks, counted over whole runs (connecting included).\n\n| client | client, TLS+AUTH | client, plaintext | sink, TLS+AUTH | sink, plaintext |\n|---|---:|---:|---:|---:|\n")
	for _, s := range r.Plan.Specs {
		if s.Client == latNodemailer {
			continue
		}
		p("| %s |", s.label())
		for _, sink := range []bool{false, true} {
			for _, sec := range []string{secTLS, secPlain} {
				v, ok := r.sat(s, sec, 0)
				c := v.CPUus
				if sink {
					c = v.SinkCPUus
				}
				if ok && c >= 0 {
					p(" %.1f |", c)
				} else {
					p(" - |")
				}
			}
		}
		p("\n")
	}
	p("\n")

	for _, sec := range r.Plan.Secs {
		loads := r.Plan.TLSLoads
		if sec == secPlain {
			loads = r.Plan.PlainLoad
		}
		for _, rtt := range r.Plan.RTTs {
			p("### %s, RTT %s\n\n| client | load | offered msg/s | p50 ms | p99 ms | p99.9 ms | Sends | failed | p99 of each run | generator late ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", sec, fmtRTT(rtt))
			for _, s := range r.Plan.Specs {
				if !s.Curve {
					continue
				}
				for _, load := range loads {
					pt, ok := r.point(s, sec, rtt, load)
					if !ok {
						continue
					}
					var runs []string
					for _, v := range pt.P99Runs {
						runs = append(runs, fmtLat(v))
					}
					p("| %s | %.0f %% | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.label(), 100*load, fmtInt(pt.Offered),
						fmtLat(pt.P50ms), fmtLat(pt.P99ms), fmtLat(pt.P999ms), fmtInt(float64(pt.N)), fmtInt(float64(pt.Failed)), strings.Join(runs, ", "), fmtLat(pt.MaxLateMs))
				}
			}
			p("\n")
		}
	}
	p("%s\n", strings.TrimSpace(latencyAnalysis))
	p("\n%s", end)
	return b.Bytes()
}

// scaleMarkdown renders the scale region.
func (s *scaleReport) markdown(cmd string, started time.Time) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	begin, end := regionMarkers("scale")
	p("%s## Scale\n\n", begin)
	p("Generated by `%s` on %s (took %s), on the same shared machine; tables unedited. smtpkit's sender throughout. Run this section alone with `go run ./bench -sections scale` (about 3 minutes).\n\n", cmd, started.UTC().Format("2006-01-02 15:04 MST"), s.Took.Round(time.Second))
	if len(s.Callers) > 0 {
		p("### Targets\n\n")
		goalTable(&b, goals(nil, s))
		p("### Callers waiting in Send (MaxConns 4, MaxInFlight 32, go-smtp sink, RTT 0, plaintext)\n\n")
		p("Memory, per caller: N goroutines parked on a channel, against N callers blocked in `Send` while the sender's dials are held back; each holds a body reader made beforehand. Live heap after GC plus the stack memory allocated (`MemStats.StackInuse`); in brackets, with the used part of the stacks instead (as the collector scans them). The callers enter one at a time, each once `Stats().Waiting` counts the one before, so their order in the queue is known; then the dials go ahead: wait is the time from then to each answer, displacement how many places an answer came from its caller's place in the queue (MaxConns × MaxInFlight = 128 are answered in batches). Time per Send: with the sessions open, bursts of N callers started at once, at least three and until at least %s messages; the median burst's time per Send is shown.\n\n", fmtInt(float64(s.Plan.CallerMsgs)))
		p("| callers | bare goroutine | caller in Send | beyond the goroutine | of which heap | µs per Send | messages | wait p50 ms | wait p99 ms | displacement p99 | displacement max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range s.Callers {
			if r.err != nil {
				p("| %s | error: %v |\n", fmtInt(float64(r.Callers)), r.err)
				continue
			}
			p("| %s | %s (%s) | %s (%s) | %s (%s) | %s | %.2f | %s | %.1f | %.1f | %s | %s |\n", fmtInt(float64(r.Callers)),
				fmtBytes(r.GoroutineB), fmtBytes(r.GoroutineUsedB), fmtBytes(r.WaitingB), fmtBytes(r.WaitingUsedB), fmtBytes(r.BeyondB), fmtBytes(r.BeyondUsedB), fmtBytes(r.HeapB),
				r.PerSendUs, fmtInt(float64(r.Msgs)), r.P50WaitMs, r.P99WaitMs, fmtInt(r.P99Displaced), fmtInt(r.MaxDisplaced))
		}
		p("\n")
	}
	if len(s.Sizes) > 0 {
		p("### Message size (one connection, W=32, go-smtp sink, RTT 0, plaintext)\n\nThe wire limit is the wire-chunking client with the same message (window 32, fewer above 2 MiB so that its pre-rendered window stays under 64 MiB). Heap held: the most of the live heap (after a forced collection, twice during the measured stretch) above what was live before, while 65 callers sent through the sender (the message itself is allocated before, and shared).\n\n")
		p("| size | msg/s | MB/s | wire msg/s | wire MB/s | of wire limit | live heap held |\n|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range s.Sizes {
			if r.err != nil {
				p("| %s | error: %v |\n", fmtBytes(float64(r.Size)), r.err)
				continue
			}
			p("| %s | %s | %.1f | %s | %.1f | %.0f %% | %s |\n", fmtBytes(float64(r.Size)), fmtRateF(r.MsgsPerS), r.MBPerS, fmtRateF(r.WireMsgsS), r.WireMsgsS*float64(r.Size)/1e6, pct(r.MsgsPerS, r.WireMsgsS), fmtBytes(r.HeapB))
		}
		p("\n")
	}
	if len(s.Rcpts) > 0 {
		p("### Recipients per message (one connection, W=32, go-smtp sink, plaintext)\n\nRCPT commands are pipelined. The wire client writes MAIL, every RCPT and `BDAT n LAST` without waiting; smtpkit, all-or-nothing by default, sends the body's LAST chunk only once every RCPT is accepted when there is more than one recipient, and the next message's MAIL cannot precede it; with `Envelope.AllowPartial` nothing waits.\n\n")
		p("| recipients | RTT | msg/s | ms per message | AllowPartial msg/s | wire msg/s | of wire limit | AllowPartial, of wire limit |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range s.Rcpts {
			if r.err != nil {
				p("| %d | %g ms | error: %v |\n", r.Rcpts, r.RTTms, r.err)
				continue
			}
			p("| %s | %g ms | %s | %.3f | %s | %s | %.0f %% | %.0f %% |\n", fmtInt(float64(r.Rcpts)), r.RTTms, fmtRateF(r.MsgsPerS), 1000/r.MsgsPerS, fmtRateF(r.PartialMsgsS),
				fmtRateF(r.WireMsgsS), pct(r.MsgsPerS, r.WireMsgsS), pct(r.PartialMsgsS, r.WireMsgsS))
		}
		p("\n")
	}
	if len(s.Conns) > 0 {
		p("### Connections (W=32, TLS+AUTH sink, RTT 10 ms)\n\nThe wire client (the latency section's control) with as many connections and 32 callers per connection (so 32 transactions in flight on each, as smtpkit's window) shows what the sink, the line and the CPUs let through.\n\n| connections | msg/s | per connection | against connections × the first row | wire msg/s | of wire |\n|---:|---:|---:|---:|---:|---:|\n")
		var base float64
		for _, r := range s.Conns {
			if r.err != nil {
				p("| %d | error: %v |\n", r.Conns, r.err)
				continue
			}
			if base == 0 {
				base = r.MsgsPerS / float64(r.Conns)
			}
			p("| %d | %s | %s | %.0f %% | %s | %.0f %% |\n", r.Conns, fmtInt(r.MsgsPerS), fmtInt(r.MsgsPerS/float64(r.Conns)), pct(r.MsgsPerS, base*float64(r.Conns)), fmtInt(r.WireMsgsS), pct(r.MsgsPerS, r.WireMsgsS))
		}
		p("\n")
	}
	if len(s.Drivers) > 0 {
		p("### Who drives the connection (one connection, go-smtp sink, plaintext)\n\n")
		p("The same one connection driven five ways, with one transaction at a time unless said: by the caller's own goroutine (`smtp.Client.Send`: no other goroutine involved, the floor); by whichever of three callers holds a `sync.Mutex` (the caller drives; the one that just finished may take it again at once); handed to the longest waiting of three callers (database/sql's rule for a released connection); and by the sender's session goroutine, to which each caller hands its request. Closed loop; each row run %d times, interleaved with the others, medians shown. *Switches* are the measuring process's context switches per message (getrusage, every thread): a goroutine woken on another thread costs one or two. *Send p50* is the median time one `Send` took.\n\n", s.Plan.DriverTiming.Runs)
		p("| RTT | driver | callers | msg/s | of the caller's own | µs CPU per message | switches per message | Send p50 µs |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
		var own float64
		for _, r := range s.Drivers {
			if r.err != nil {
				p("| %s | %s | %d | error: %v |\n", fmtRTT(r.rtt), r.Drive, r.Callers, r.err)
				continue
			}
			if r.Drive == driveOwn {
				own = r.MsgsPerS
			}
			p("| %s | %s | %d | %s | %.0f %% | %.1f | %.2f | %.1f |\n", fmtRTT(r.rtt), r.Drive, r.Callers, fmtInt(r.MsgsPerS), pct(r.MsgsPerS, own), r.CPUus, r.Switches, r.P50us)
		}
		p("\n")
	}
	p("%s\n\n%s", strings.TrimSpace(scaleAnalysis), end)
	return b.Bytes()
}

func goalTable(b *bytes.Buffer, gs []latGoal) {
	fmt.Fprintf(b, "| target | measured | goal | result |\n|---|---|---|---|\n")
	for _, g := range gs {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", g.Name, g.Measured, g.Goal, g.Met)
	}
	fmt.Fprintln(b)
}

func pct(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * a / b
}

// fmtRateF formats a rate, with a decimal under 100.
func fmtRateF(v float64) string {
	if v < 100 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmtInt(v)
}

// svg renders p99 latency against offered load, one panel per RTT,
// TLS+AUTH only, one line per client, both axes logarithmic.
func (r *latReport) svg() ([]byte, error) {
	const (
		panelW, panelH = 330.0, 300.0
		left, top      = 70.0, 60.0
		gap            = 90.0
	)
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, pt := range r.Points {
		if pt.err == nil && pt.Sec == secTLS && pt.P99ms > 0 {
			xlo, xhi = math.Min(xlo, pt.Offered), math.Max(xhi, pt.Offered)
			ylo, yhi = math.Min(ylo, pt.P99ms), math.Max(yhi, pt.P99ms)
		}
	}
	if math.IsInf(xlo, 1) {
		xlo, xhi, ylo, yhi = 1, 10000, 1, 1000
	}
	xa, xb := math.Floor(math.Log10(xlo)), math.Ceil(math.Log10(xhi))
	ya, yb := math.Floor(math.Log10(ylo)), math.Ceil(math.Log10(yhi))
	xb, yb = max(xb, xa+1), max(yb, ya+1)
	d := chartData{Title: "p99 Send latency against offered load, TLS + AUTH (" + fmtInt(float64(len(message))) + "-octet messages)"}
	colors := map[string]string{}
	for i, rtt := range r.Plan.RTTs {
		p := chartPanel{Title: "RTT " + fmtRTT(rtt), X: left + float64(i)*(panelW+gap), Y: top, W: panelW, H: panelH,
			XLabel: "offered load, msg/s (log scale)", YLabel: "p99 latency, ms (log scale)"}
		xOf := func(v float64) float64 { return p.X + (math.Log10(v)-xa)/(xb-xa)*p.W }
		yOf := func(v float64) float64 { return p.Y + p.H - (math.Log10(v)-ya)/(yb-ya)*p.H }
		for e := xa; e <= xb; e++ {
			p.XTicks = append(p.XTicks, chartTick{X: xOf(math.Pow(10, e)), Label: fmtInt(math.Pow(10, e))})
		}
		for e := ya; e <= yb; e++ {
			p.YTicks = append(p.YTicks, chartTick{Y: yOf(math.Pow(10, e)), Label: trimZeros(fmt.Sprintf("%.3f", math.Pow(10, e)))})
		}
		for si, s := range r.Plan.Specs {
			if !s.Curve {
				continue
			}
			var line chartLine
			for _, load := range r.Plan.TLSLoads {
				pt, ok := r.point(s, secTLS, rtt, load)
				if !ok || pt.P99ms <= 0 {
					continue
				}
				line.add(xOf(pt.Offered), yOf(pt.P99ms))
			}
			if len(line.Dots) == 0 {
				continue
			}
			label := s.label()
			if _, ok := colors[label]; !ok {
				colors[label] = palette[si%len(palette)]
				w, dash := 1.5, ""
				if s.Client == latSender {
					w = 2.5
				}
				if s.Client == latWire {
					dash = "6 3"
				}
				d.Legend = append(d.Legend, chartLegend{Color: colors[label], Width: w, Dash: dash, Label: label + map[bool]string{true: " (control)"}[s.Client == latWire]})
			}
			line.Label, line.Color, line.Width = label, colors[label], 1.5
			if s.Client == latSender {
				line.Width = 2.5
			}
			if s.Client == latWire {
				line.Dash = "6 3"
			}
			p.Lines = append(p.Lines, line)
		}
		if len(p.Lines) == 0 {
			p.Empty = "not measured"
		}
		d.Panels = append(d.Panels, p)
	}
	d.Width = left + float64(len(d.Panels))*(panelW+gap) - gap + 30
	d.placeLegend(left, top+panelH+60)
	return d.render()
}

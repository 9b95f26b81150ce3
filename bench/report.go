package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything one run of the benchmark produced.
type report struct {
	Mode      string // "full" or "quick"
	Started   time.Time
	Took      time.Duration
	Machine   string
	Plan      plan
	LineRTTs  []rttStat
	Results   []measurement
	Memory    []memResult
	Pairs     []pairRow         // the actor-cost targets' interleaved rounds
	Unavail   map[string]string // sink -> why it did not run
	Profiling bool
}

// find returns the measurement of sc on sink at rtt, if it succeeded.
func (r *report) find(sink string, rtt time.Duration, sc spec) (measurement, bool) {
	for _, m := range r.Results {
		if m.Sink == sink && m.rtt == rtt && m.sc == sc && m.err == nil {
			return m, true
		}
	}
	return measurement{}, false
}

// fmtInt formats n with thousands separators.
func fmtInt(n float64) string {
	s := strconv.FormatInt(int64(math.Round(n)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtRate(m measurement) string {
	if m.err != nil {
		return "error"
	}
	return fmtInt(m.MsgsPerS)
}

func fmtRTT(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64) + " ms"
}

func fmtBytes(b float64) string {
	switch {
	case math.Abs(b) >= 1<<20:
		return trimZeros(strconv.FormatFloat(b/(1<<20), 'f', 2, 64)) + " MiB"
	case math.Abs(b) >= 1<<10:
		return trimZeros(strconv.FormatFloat(b/(1<<10), 'f', 1, 64)) + " KiB"
	}
	return fmtInt(b) + " B"
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// sinkTitle names a sink in headings.
func sinkTitle(sink string) string {
	switch sink {
	case sinkGoSMTP:
		return "go-smtp server"
	case sinkSMTPSink:
		return "Postfix smtp-sink"
	case sinkPostfix:
		return "Postfix smtpd"
	}
	return sink
}

// spread shows the runs' range as a percentage of the median.
func spread(m measurement) string {
	if len(m.rates) < 2 || m.MsgsPerS == 0 {
		return ""
	}
	lo, hi := slices.Min(m.rates), slices.Max(m.rates)
	return fmt.Sprintf("±%.0f%%", 100*(hi-lo)/2/m.MsgsPerS)
}

// progressLine describes one measurement as it finishes.
func progressLine(m measurement) string {
	head := fmt.Sprintf("%-9s %6s  %-36s", m.Sink, fmtRTT(m.rtt), m.sc.label())
	if m.err != nil {
		return head + "  error: " + m.err.Error()
	}
	s := fmt.Sprintf("%s %9s msg/s %5s", head, fmtInt(m.MsgsPerS), spread(m))
	if m.AllocsPerMsg != nil {
		s += fmt.Sprintf("  %6.1f allocs/msg %7s B/msg", *m.AllocsPerMsg, fmtInt(*m.BytesPerMsg))
	}
	if m.cpu >= 0 {
		s += fmt.Sprintf("  %5.1f µs CPU", float64(m.cpu)/1e3)
	}
	if m.reads >= 0 {
		s += fmt.Sprintf("  %4.2f rd %4.2f wr", m.reads, m.writes)
	}
	return s
}

// printTables writes the summary: per sink, msg/s for each client at
// each RTT, then the targets and the memory figures.
func (r *report) printTables(w io.Writer) {
	for _, sink := range r.Plan.Sinks {
		if why, ok := r.Unavail[sink]; ok {
			fmt.Fprintf(w, "\n%s: not measured (%s)\n", sinkTitle(sink), why)
			continue
		}
		fmt.Fprintf(w, "\n%s: msg/s (median of %d runs)\n", sinkTitle(sink), r.Plan.Timing.Runs)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "client\t")
		for _, rtt := range r.Plan.RTTs {
			fmt.Fprintf(tw, "RTT %s\t", fmtRTT(rtt))
		}
		fmt.Fprint(tw, "allocs/msg @0\tB/msg @0\t\n")
		for _, sc := range r.Plan.Scenarios {
			if !sc.supports(sink) {
				continue
			}
			fmt.Fprintf(tw, "%s\t", sc.label())
			var at0 *measurement
			for _, rtt := range r.Plan.RTTs {
				m, ok := r.find(sink, rtt, sc)
				switch {
				case ok:
					fmt.Fprintf(tw, "%s\t", fmtRate(m))
					if rtt == 0 {
						at0 = &m
					}
				default:
					fmt.Fprint(tw, "-\t")
				}
			}
			if at0 != nil && at0.AllocsPerMsg != nil {
				fmt.Fprintf(tw, "%.1f\t%s\t\n", *at0.AllocsPerMsg, fmtInt(*at0.BytesPerMsg))
			} else {
				fmt.Fprint(tw, "-\t-\t\n")
			}
		}
		tw.Flush()
	}
	if len(r.Memory) > 0 {
		fmt.Fprintln(w, "\nmemory")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, m := range r.Memory {
			fmt.Fprintf(tw, "%s\n", memLine(m))
		}
		tw.Flush()
	}
}

// printGoals writes the measured goals as a text table.
func printGoals(w io.Writer, gs []goal) {
	fmt.Fprintln(w, "\ntargets")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "target\tmeasured\tgoal\tresult\n")
	for _, g := range gs {
		if g.Met != "not measured" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Name, g.Measured, g.Goal, g.Met)
		}
	}
	tw.Flush()
}

func memLine(m memResult) string {
	if m.err != nil {
		return fmt.Sprintf("%s\t%s\t%s\terror: %v", m.What, m.Client, m.Sink, m.err)
	}
	switch m.What {
	case "idle-session":
		return fmt.Sprintf("idle session\t%s\t%s\t%s per session (heap %s, goroutine stack %s)", m.Client, m.Sink, fmtBytes(m.Bytes), fmtBytes(m.Alloc), fmtBytes(m.Bytes-m.Alloc))
	default:
		return fmt.Sprintf("%s body\t%s\t%s\tpeak heap +%s, %s allocated while streaming", fmtBytes(float64(m.Size)), m.Client, m.Sink, fmtBytes(m.Bytes), fmtBytes(m.Alloc))
	}
}

//go:embed analysis.md
var analysis string

// markdown renders docs/benchmarks.md.
func (r *report) markdown() []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\n")
	p("Generated by `go run ./bench%s` on %s (%s run, %s). ", map[bool]string{true: " -quick"}[r.Mode == "quick"],
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Mode, r.Took.Round(time.Second))
	p("Numbers from a shared or busy machine are noisy; re-run on a quiet one to compare.\n\n")
	p("![msg/s against round-trip time, one line per client](benchmarks.svg)\n\n")
	r.setupMD(&b)
	r.throughputMD(&b)
	r.costMD(&b)
	r.memoryMD(&b)
	p("## Where the time goes\n\n")
	p("%s\n", strings.TrimSpace(analysis))
	p("\n## How to run\n\n")
	p("```\n%s\n```\n\n", strings.TrimSpace(howToRun))
	p("`go run ./bench -h` lists every flag. Postfix (smtpd, smtp-sink, smtp-source) is needed for those sinks; a sink that cannot start is reported and skipped. `.ci/run` installs it. The nodemailer client needs Node.js 20 or later and `npm ci --prefix bench/nodemailer`; without them it is skipped, and the run says how to install them.\n")
	return b.Bytes()
}

// setupMD writes the Setup section.
func (r *report) setupMD(b *bytes.Buffer) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Setup\n\n")
	p("- Machine: %s.\n", r.Machine)
	p("- Every message is %s octets with one recipient, over plain TCP on loopback; smtpkit runs in its insecure plaintext mode (`smtp.Options{InsecureAllowPlaintext: true}`, `sender.InsecurePlaintext`). smtp-source sends a payload of 980 octets plus its own headers (about the same size).\n", fmtInt(float64(len(message))))
	p("- Sinks, started by the benchmark: the go-smtp server (`internal/testpeers.GoSMTP`, bodies discarded; PIPELINING, CHUNKING), Postfix smtp-sink (PIPELINING, no CHUNKING) and Postfix smtpd (a real MTA that writes a queue file per message and discards it). They run in a helper process, so the measuring process holds only the client: its CPU profile and its allocation counts are the client's own.\n")
	p("- Latency comes from the userspace delay line in `internal/delayline` (a second helper process), %s each way. Its real round trip, measured with 64-octet ping-pongs through it:\n\n", "half the RTT")
	if len(r.LineRTTs) > 0 {
		p("  | nominal RTT | median | p90 |\n  |---|---|---|\n")
		for _, s := range r.LineRTTs {
			p("  | %s | %.3f ms | %.3f ms |\n", fmtRTT(s.Nominal), float64(s.Median)/1e6, float64(s.P90)/1e6)
		}
		p("\n")
	}
	p("- Each figure is the median of %d runs. A run connects, warms up (%v), then measures %v of steady sending (at least %d messages); connecting and the filling and draining of pipelines are outside the measured stretch. smtp-source, exec'd, is timed from start to exit. Allocations and bytes per message are `runtime.MemStats` deltas over the measured stretch.\n",
		r.Plan.Timing.Runs, r.Plan.Timing.Warm, r.Plan.Timing.Window, r.Plan.Timing.MinMsgs)
	p("- Clients: `smtpkit-sender cC wW` is `sender.Sender` with MaxConns C and MaxInFlight W, fed by 2×C×W+C goroutines calling Send (so a window never waits for a caller to come back); `smtpkit-client Send` calls `smtp.Client.Send` in a loop; `smtpkit-client WriteTx/ReadTx wW` keeps W transactions written ahead of their replies; net/smtp and the emersion/go-smtp client reuse one connection; `smtp-source sN` is Postfix's generator with N sessions; `wire-chunking wW` writes pre-rendered MAIL/RCPT/BDAT LAST transactions, W in flight, from a writer goroutine while a reader goroutine counts replies; `wire-data` groups body, dot and the next MAIL/RCPT/DATA in one write (RFC 2920), one round trip per message. The two wire clients do nothing but the protocol: they are the ceiling a real client is measured against.\n\n")
	if r.Profiling {
		p("This run was profiled (-cpuprofile), which slows it a little.\n\n")
	}
}

// throughputMD writes the msg/s tables.
func (r *report) throughputMD(b *bytes.Buffer) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Throughput\n\nmsg/s, median of %d runs (± is half the range of the runs, relative to the median).\n\n", r.Plan.Timing.Runs)
	for _, sink := range r.Plan.Sinks {
		if why, ok := r.Unavail[sink]; ok {
			p("### %s\n\nNot measured: %s\n\n", sinkTitle(sink), why)
			continue
		}
		p("### %s\n\n", sinkTitle(sink))
		rttHeader(b, []string{"client"}, r.Plan.RTTs)
		for _, sc := range r.Plan.Scenarios {
			if !sc.supports(sink) {
				continue
			}
			p("| %s |", sc.label())
			for _, rtt := range r.Plan.RTTs {
				m, ok := r.find(sink, rtt, sc)
				if !ok {
					p(" - |")
					continue
				}
				p(" %s %s |", fmtRate(m), spread(m))
			}
			p("\n")
		}
		p("\n")
	}
	r.pairsMD(b)
}

// costMD writes the cost per message tables.
func (r *report) costMD(b *bytes.Buffer) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Cost per message\n\nIn the client's process, at RTT 0: heap allocations and bytes allocated (`runtime.MemStats`), CPU time (user and system, `getrusage`) and read and write system calls (`/proc/self/io`; they include the Go runtime's own) per message. CPU per message is less sensitive than msg/s to other load on the machine.\n\n")
	for _, sink := range r.Plan.Sinks {
		if _, ok := r.Unavail[sink]; ok {
			continue
		}
		p("### %s\n\n| client | allocs | bytes | CPU µs | reads | writes |\n|---|---:|---:|---:|---:|---:|\n", sinkTitle(sink))
		for _, sc := range r.Plan.Scenarios {
			if sc.Client == clientSource || !sc.supports(sink) {
				continue
			}
			m, ok := r.find(sink, 0, sc)
			if !ok || m.AllocsPerMsg == nil {
				continue
			}
			p("| %s | %.1f | %s | %s | %s | %s |\n", sc.label(), *m.AllocsPerMsg, fmtInt(*m.BytesPerMsg),
				orDash(float64(m.cpu)/1e3, m.cpu >= 0, 1), orDash(m.reads, m.reads >= 0, 2), orDash(m.writes, m.writes >= 0, 2))
		}
		p("\n")
	}
}

// memoryMD writes the memory table.
func (r *report) memoryMD(b *bytes.Buffer) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	if len(r.Memory) > 0 {
		p("## Memory\n\n| measurement | client | sink | result |\n|---|---|---|---|\n")
		for _, m := range r.Memory {
			cells := strings.Split(memLine(m), "\t")
			p("| %s |\n", strings.Join(cells, " | "))
		}
		p("\nAn idle session is measured over 32 sessions to the go-smtp sink: live heap after GC plus the goroutine stack in use (as the collector scans it), divided by 32; kernel socket buffers are not counted. A streamed body is generated line by line, so the heap figure is the client's own: the peak of live and not-yet-collected heap objects, sampled every millisecond, above what was live before.\n\n")
	}
}

// howToRun is the command summary of docs/benchmarks.md. The minutes
// are those of a run on the 2-CPU development machine.
const howToRun = `
go run ./bench                       # every section, about 22 min: writes docs/benchmarks.md, benchmarks.svg and benchmarks-latency.svg
go run ./bench -sections throughput  # msg/s per client, sink and RTT, and memory (about 9 min)
go run ./bench -sections latency     # open-loop Send latency against load, with the peers (about 11 min)
go run ./bench -sections scale       # callers, message size, recipients, connections, who drives a connection (about 3 min)
go run ./bench -sections latency -rtt 0 -security tls -clients 'smtpkit-sender c4,wire-chunking'      # a part of the latency section
go run ./bench -quick                # every section, shorter (about 3 min); writes no docs
go run ./bench -json                 # one JSON object per measurement on stdout
go run ./bench -quick -sections throughput -sinks go-smtp -rtt 0 -clients smtpkit-sender -cpuprofile cpu.out
go test -bench . ./bench             # the throughput comparisons as Go benchmarks
`

// machine describes the host in one line.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d CPUs (GOMAXPROCS %d)%s, %s %s/%s", cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// svg renders the throughput chart: for each sink, msg/s against RTT,
// one line per client, on a log scale (the clients span three orders
// of magnitude).
func (r *report) svg() ([]byte, error) {
	c := chart{Title: "SMTP throughput against round-trip time (" + fmtInt(float64(len(message))) + "-octet messages)",
		XLabel: "round-trip time (delay line)", YLabel: "messages per second (log scale)", PanelW: 360}
	for _, rtt := range r.Plan.RTTs {
		c.XCats = append(c.XCats, fmtRTT(rtt))
	}
	for _, sink := range r.chartSinks() {
		p := panel{Title: sinkTitle(sink)}
		for _, sc := range r.Plan.Scenarios {
			if !sc.supports(sink) {
				continue
			}
			s := series{Label: sc.label(), Width: 1.2, Dash: "2 3"}
			switch sc.Client {
			case clientSender:
				s.Width, s.Dash = 2.5, ""
			case clientCore:
				s.Width, s.Dash = 1.5, ""
			case clientWireChunking, clientWireData:
				s.Width, s.Dash = 1.5, "6 3"
			}
			for j, rtt := range r.Plan.RTTs {
				if m, ok := r.find(sink, rtt, sc); ok && m.MsgsPerS > 0 {
					s.Points = append(s.Points, chartPoint{float64(j), m.MsgsPerS})
				}
			}
			p.Series = append(p.Series, s)
		}
		if why, ok := r.Unavail[sink]; ok && len(why) < 60 {
			p.Empty = "not measured: " + why
		}
		c.Panels = append(c.Panels, p)
	}
	return c.render()
}

// chartSinks are the sinks the chart shows: those that ran, or all
// when none did.
func (r *report) chartSinks() []string {
	var sinks []string
	for _, s := range r.Plan.Sinks {
		if _, ok := r.Unavail[s]; !ok {
			sinks = append(sinks, s)
		}
	}
	if len(sinks) == 0 {
		return r.Plan.Sinks
	}
	return sinks
}

// rttHeader writes the head of a Markdown table: the columns named
// first, then one per RTT, right-aligned.
func rttHeader(b *bytes.Buffer, first []string, rtts []time.Duration) {
	b.WriteString("|")
	for _, f := range first {
		b.WriteString(" " + f + " |")
	}
	for _, rtt := range rtts {
		fmt.Fprintf(b, " RTT %s |", fmtRTT(rtt))
	}
	b.WriteString("\n|" + strings.Repeat("---|", len(first)) + strings.Repeat("---:|", len(rtts)) + "\n")
}

func orDash(v float64, ok bool, digits int) string {
	if !ok {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

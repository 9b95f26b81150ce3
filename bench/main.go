// Command bench measures how smtpkit compares with the SMTP clients in
// use today, on loopback, against sinks it starts itself, at round-trip
// times added by a userspace delay line, and writes docs/benchmarks.md
// and docs/benchmarks.svg.
//
//	go run ./bench                     # full run, every section
//	go run ./bench -quick              # a shorter run of every section; writes no docs
//	go run ./bench -sections latency   # one section: throughput, latency, scale
//	go run ./bench -json               # one JSON object per measurement on stdout
//
// The same comparisons run as Go benchmarks with go test -bench . ./bench.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// plan is what a run measures.
type plan struct {
	Sinks     []string
	RTTs      []time.Duration
	Scenarios []scenario
	Timing    timing
	Memory    bool
}

// The client configurations of a full run, in table order.
var fullScenarios = []scenario{
	{clientSender, 1, 1},
	{clientSender, 1, 32},
	{clientSender, 1, 128},
	{clientSender, 8, 32},
	{clientCore, 1, 1},
	{clientCore, 1, 32},
	{clientCore, 1, 128},
	{clientNetSMTP, 1, 1},
	{clientGoSMTP, 1, 1},
	{clientSource, 1, 1},
	{clientSource, 8, 1},
	{clientWireChunking, 1, 32},
	{clientWireChunking, 1, 128},
	{clientWireData, 1, 1},
}

// quickScenarios are those of -quick: every client, windows of 32.
var quickScenarios = []scenario{
	{clientSender, 1, 1},
	{clientSender, 1, 32},
	{clientCore, 1, 1},
	{clientCore, 1, 32},
	{clientNetSMTP, 1, 1},
	{clientGoSMTP, 1, 1},
	{clientSource, 1, 1},
	{clientWireChunking, 1, 32},
	{clientWireData, 1, 1},
}

func fullPlan() plan {
	return plan{
		Sinks:     []string{sinkGoSMTP, sinkSMTPSink, sinkPostfix},
		RTTs:      []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond},
		Scenarios: fullScenarios,
		Timing:    timing{Runs: 3, Window: time.Second, Warm: 200 * time.Millisecond, MinMsgs: 20, MaxRun: 5 * time.Second, MaxMsgs: 2_000_000},
		Memory:    true,
	}
}

func quickPlan() plan {
	return plan{
		Sinks:     []string{sinkGoSMTP, sinkSMTPSink},
		RTTs:      []time.Duration{0, 10 * time.Millisecond},
		Scenarios: quickScenarios,
		Timing:    timing{Runs: 3, Window: 500 * time.Millisecond, Warm: 100 * time.Millisecond, MinMsgs: 8, MaxRun: 2 * time.Second, MaxMsgs: 1_000_000},
		Memory:    true,
	}
}

func main() {
	if isHelper() {
		os.Exit(helperMain())
	}
	os.Exit(run())
}

func run() int {
	var (
		quick       = flag.Bool("quick", false, "a shorter run (under 2 minutes): go-smtp sink and smtp-sink, RTT 0 and 10 ms, windows of 32")
		jsonOut     = flag.Bool("json", false, "print one JSON object per throughput measurement on stdout (the tables, and the memory figures, go to stderr)")
		cpuProfile  = flag.String("cpuprofile", "", "write a CPU profile of the measuring process (the clients) to `file`")
		memProfile  = flag.String("memprofile", "", "write an allocation profile of the measuring process to `file` (records every allocation, which slows the run)")
		peerProfile = flag.String("peer-cpuprofile", "", "write a CPU profile of the helper process running the sinks to `file`")
		runs        = flag.Int("runs", 0, "runs per measurement, the median is kept (default 3)")
		window      = flag.Duration("window", 0, "measured stretch of each run (default 1s, 500ms with -quick)")
		rttList     = flag.String("rtt", "", "comma-separated round-trip times in ms (default 0,1,2,10; 0,10 with -quick)")
		sinkList    = flag.String("sinks", "", "comma-separated sinks: go-smtp, smtp-sink, postfix (default all; go-smtp,smtp-sink with -quick)")
		clientList  = flag.String("clients", "", "comma-separated clients to measure (default all): "+strings.Join(clientNames(), ", "))
		windowList  = flag.String("windows", "", "comma-separated windows: keep only the client configurations with these (1 = no window)")
		memory      = flag.Bool("memory", true, "measure memory: idle sessions and a streamed 100 MiB body")
		docsDir     = flag.String("docs", "", "`directory` for benchmarks.md and the charts (default: docs/ of the module; with -quick, none unless given)")
		noDocs      = flag.Bool("nodocs", false, "do not write the docs (implied by -quick without -docs)")
		timeout     = flag.Duration("timeout", 0, "give up after this long (default 60m, 8m with -quick)")
		latClients  = flag.String("latclients", "", "comma-separated latency clients to measure, by the start of their table label (default all): "+strings.Join(latClientNames(), ", "))
		latSecs     = flag.String("security", "", "comma-separated security settings of the latency section: tls, plain (default both)")
		sectionList = flag.String("sections", "throughput,latency,scale", "comma-separated sections to run: throughput (msg/s per client, sink and RTT; memory), latency (open-loop Send latency against load over TLS+AUTH, with net/smtp, go-mail and nodemailer), scale (callers, message size, recipients, connections, who drives a connection)")
	)
	flag.Parse()
	p, lp, sp := fullPlan(), fullLatPlan(), fullScalePlan()
	if *quick {
		p, lp, sp = quickPlan(), quickLatPlan(), quickScalePlan()
	}
	sections := map[string]bool{}
	for _, s := range splitList(*sectionList) {
		if s != "throughput" && s != "latency" && s != "scale" {
			fmt.Fprintf(os.Stderr, "bench: unknown section %q\n", s)
			return 2
		}
		sections[s] = true
	}
	if *runs > 0 {
		p.Timing.Runs = *runs
	}
	if *window > 0 {
		p.Timing.Window = *window
		p.Timing.MaxRun = max(p.Timing.MaxRun, 3**window)
	}
	p.Memory = *memory
	var err error
	if *rttList != "" {
		if p.RTTs, err = parseRTTs(*rttList); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
		lp.RTTs = p.RTTs
	}
	if *latClients != "" {
		want := splitList(*latClients)
		lp.Specs = slices.DeleteFunc(slices.Clone(lp.Specs), func(s latSpec) bool {
			return !slices.ContainsFunc(want, func(w string) bool { return strings.HasPrefix(s.label(), w) })
		})
		if len(lp.Specs) == 0 {
			fmt.Fprintf(os.Stderr, "bench: no latency client matches %q\n", *latClients)
			return 2
		}
	}
	if *latSecs != "" {
		lp.Secs = nil
		for _, f := range splitList(*latSecs) {
			switch f {
			case "tls":
				lp.Secs = append(lp.Secs, secTLS)
			case "plain":
				lp.Secs = append(lp.Secs, secPlain)
			default:
				fmt.Fprintf(os.Stderr, "bench: unknown security %q (tls, plain)\n", f)
				return 2
			}
		}
	}
	if *sinkList != "" {
		p.Sinks = splitList(*sinkList)
		for _, s := range p.Sinks {
			if s != sinkGoSMTP && s != sinkSMTPSink && s != sinkPostfix {
				fmt.Fprintf(os.Stderr, "bench: unknown sink %q\n", s)
				return 2
			}
		}
	}
	if *clientList != "" {
		want := splitList(*clientList)
		for _, c := range want {
			if !slices.Contains(clientNames(), c) {
				fmt.Fprintf(os.Stderr, "bench: unknown client %q\n", c)
				return 2
			}
		}
		p.Scenarios = slices.DeleteFunc(slices.Clone(p.Scenarios), func(sc scenario) bool { return !slices.Contains(want, sc.Client) })
		if !slices.Contains(want, clientSender) && !slices.Contains(want, clientCore) {
			p.Memory = false
		}
	}
	if *windowList != "" {
		var ws []int
		for _, f := range splitList(*windowList) {
			w, err := strconv.Atoi(f)
			if err != nil || w < 1 {
				fmt.Fprintf(os.Stderr, "bench: bad window %q\n", f)
				return 2
			}
			ws = append(ws, w)
		}
		p.Scenarios = slices.DeleteFunc(slices.Clone(p.Scenarios), func(sc scenario) bool { return !slices.Contains(ws, sc.Window) })
	}
	if *timeout <= 0 {
		*timeout = 60 * time.Minute
		if *quick {
			*timeout = 8 * time.Minute
		}
	}
	mode := "full"
	if *quick {
		mode = "quick"
	}
	docs := *docsDir
	if *quick && docs == "" {
		// A quick run never rewrites the published docs.
		*noDocs = true
	}
	if docs == "" && !*noDocs {
		root, err := moduleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: not writing the docs:", err)
			*noDocs = true
		} else {
			docs = filepath.Join(root, "docs")
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	text := io.Writer(os.Stdout)
	if *jsonOut {
		text = os.Stderr
	}
	enc := json.NewEncoder(os.Stdout)

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	if *memProfile != "" {
		runtime.MemProfileRate = 1
		defer func() {
			f, err := os.Create(*memProfile)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: memprofile:", err)
			}
		}()
	}

	rep := &report{Mode: mode, Started: time.Now(), Machine: machine(), Plan: p, Unavail: map[string]string{}, Profiling: *cpuProfile != "" || *memProfile != ""}
	fmt.Fprintf(text, "smtpkit bench (%s): %s\n", mode, rep.Machine)
	lab, err := newLab()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer lab.close()
	if *peerProfile != "" {
		if _, err := lab.peers.call("cpuprofile", *peerProfile); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}

	if !sections["throughput"] {
		p.Sinks, p.Memory = nil, false
	}
	var sinks []string
	for _, s := range p.Sinks {
		start := time.Now()
		addr, err := lab.sink(s)
		if err != nil {
			rep.Unavail[s] = err.Error()
			fmt.Fprintf(text, "sink %-9s unavailable: %v\n", s, err)
			continue
		}
		sinks = append(sinks, s)
		fmt.Fprintf(text, "sink %-9s %s (started in %v)\n", s, addr, time.Since(start).Round(time.Millisecond))
	}
	lineRTTs := slices.Clone(p.RTTs)
	if sections["latency"] {
		lineRTTs = append(lineRTTs, lp.RTTs...)
	}
	if sections["scale"] {
		lineRTTs = append(lineRTTs, 10*time.Millisecond)
	}
	slices.Sort(lineRTTs)
	for _, rtt := range slices.Compact(lineRTTs) {
		if rtt == 0 {
			continue
		}
		st, err := lab.lineRTT(ctx, rtt, 30)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: delay line %v: %v\n", rtt, err)
			return 1
		}
		rep.LineRTTs = append(rep.LineRTTs, st)
		fmt.Fprintf(text, "delay line RTT %-6s measured: median %.3f ms, p90 %.3f ms\n", fmtRTT(rtt), float64(st.Median)/1e6, float64(st.P90)/1e6)
	}

	failed := false
measure:
	for _, sink := range sinks {
		for _, rtt := range p.RTTs {
			for _, sc := range p.Scenarios {
				if !sc.supports(sink) {
					continue
				}
				if ctx.Err() != nil {
					break measure
				}
				m := lab.measure(ctx, sc, sink, rtt, p.Timing)
				rep.Results = append(rep.Results, m)
				fmt.Fprintln(text, progressLine(m))
				if m.err != nil {
					failed = true
					continue
				}
				if *jsonOut {
					enc.Encode(m)
				}
			}
		}
	}
	if p.Memory && ctx.Err() == nil {
		for _, m := range measureMemory(ctx, lab, sinks) {
			rep.Memory = append(rep.Memory, m)
			fmt.Fprintln(text, strings.ReplaceAll(memLine(m), "\t", "  "))
			if m.err != nil {
				failed = true
			}
		}
	}
	textLine := func(s string) { fmt.Fprintln(text, s) }
	emit := func(v any) {
		if *jsonOut {
			enc.Encode(v)
		}
	}
	cmdLine := "go run ./bench " + strings.Join(os.Args[1:], " ")
	var latRep *latReport
	if sections["latency"] && ctx.Err() == nil {
		latRep = measureLatency(ctx, lab, lp, textLine, emit)
		for _, s := range latRep.Sats {
			failed = failed || s.err != nil
		}
		for _, pt := range latRep.Points {
			failed = failed || pt.err != nil
		}
	}
	var scaleRep *scaleReport
	if sections["scale"] && ctx.Err() == nil {
		scaleRep = measureScale(ctx, lab, sp, textLine, emit)
	}
	rep.Took = time.Since(rep.Started)
	if ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "bench: stopped early: %v\n", context.Cause(ctx))
		failed = true
	}
	if sections["throughput"] {
		rep.printTables(text)
	}
	if latRep != nil {
		fmt.Fprintf(text, "\n%s", latRep.markdown(strings.TrimSpace(cmdLine), rep.Started, rep.Machine))
	}
	if scaleRep != nil {
		fmt.Fprintf(text, "\n%s", scaleRep.markdown(strings.TrimSpace(cmdLine), rep.Started))
	}
	fmt.Fprintf(text, "\ntook %v\n", rep.Took.Round(time.Second))

	if !*noDocs && ctx.Err() == nil {
		var r *report
		if sections["throughput"] {
			r = rep
		}
		if err := writeDocs(docs, r, latRep, scaleRep, strings.TrimSpace(cmdLine)); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Fprintf(text, "wrote the docs in %s\n", docs)
	}
	if failed {
		return 1
	}
	return 0
}

// measureMemory measures idle sessions and a streamed 100 MiB body.
func measureMemory(ctx context.Context, lab *lab, sinks []string) []memResult {
	var out []memResult
	const sessions = 32
	if slices.Contains(sinks, sinkGoSMTP) {
		addr, _ := lab.sink(sinkGoSMTP)
		for _, c := range []string{clientSender, clientCore, clientNetSMTP, clientGoSMTP} {
			m := idleSessions(ctx, c, addr, sessions)
			m.Sink = sinkGoSMTP
			out = append(out, m)
		}
	}
	const size = 100 << 20
	for _, sink := range []string{sinkGoSMTP, sinkSMTPSink} {
		if !slices.Contains(sinks, sink) {
			continue
		}
		addr, _ := lab.sink(sink)
		for _, c := range []string{clientCore, clientSender, clientNetSMTP} {
			out = append(out, streamBody(ctx, c, sink, addr, size))
		}
	}
	return out
}

// writeDocs writes benchmarks.md and the charts of the sections that
// ran (a nil report did not): a section that did not run keeps its part
// of the existing benchmarks.md.
func writeDocs(dir string, rep *report, lat *latReport, sc *scaleReport, cmd string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "benchmarks.md")
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	md := old
	if rep != nil {
		svg, err := rep.svg()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "benchmarks.svg"), svg, 0o644); err != nil {
			return err
		}
		md = rep.markdown()
	} else if len(md) == 0 {
		md = []byte("# Benchmarks\n\n")
	}
	latRegion, scaleRegion := extractRegion(old, "latency"), extractRegion(old, "scale")
	if lat != nil {
		svg, err := lat.svg()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "benchmarks-latency.svg"), svg, 0o644); err != nil {
			return err
		}
		started := time.Now().Add(-lat.Took)
		latRegion = lat.markdown(cmd, started, machine())
	}
	if sc != nil {
		scaleRegion = sc.markdown(cmd, time.Now().Add(-sc.Took))
	}
	md = spliceRegion(md, "latency", latRegion)
	md = spliceRegion(md, "scale", scaleRegion)
	return os.WriteFile(path, md, 0o644)
}

// moduleRoot finds the directory of this module's go.mod, upwards from
// the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/smtpkit/smtpkit\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run it inside the smtpkit module (no go.mod found), or pass -docs")
		}
		dir = parent
	}
}

func clientNames() []string {
	return []string{clientSender, clientCore, clientNetSMTP, clientGoSMTP, clientSource, clientWireChunking, clientWireData}
}

// latClientNames lists the latency section's client labels.
func latClientNames() []string {
	var out []string
	for _, s := range latSpecs {
		out = append(out, s.label())
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseRTTs(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range splitList(s) {
		v, err := strconv.ParseFloat(strings.TrimSuffix(f, "ms"), 64)
		if err != nil || v < 0 || v > 1000 {
			return nil, fmt.Errorf("bad RTT %q (milliseconds, 0 to 1000)", f)
		}
		out = append(out, time.Duration(v*float64(time.Millisecond)))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

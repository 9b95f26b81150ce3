package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are a run's settings, from the flags.
type options struct {
	quick      bool
	sections   []string
	plan       plan
	lat        latPlan
	scale      scalePlan
	docs       string // "" for none
	timeout    time.Duration
	cpuProfile string
	memProfile string
	peerProf   string
	cmd        string // the command line, for the docs
	text       io.Writer
	emit       func(any) // a result, as JSON with -json
}

// env is what a section runs with.
type env struct {
	options
	ctx     context.Context
	lab     *lab
	started time.Time
	machine string
}

// result is what a section produced: its tables for the terminal, its
// part of docs/benchmarks.md and its charts (nil when nothing to
// write), and its goals.
type result struct {
	section string
	tables  string
	doc     func(old []byte) ([]byte, error) // the new benchmarks.md from the old
	charts  map[string][]byte                // file name -> SVG
	goals   []goal
	failed  bool
}

// section is one part of the suite.
type section struct {
	name  string
	about string
	run   func(e *env) result
}

// sections lists the suite, in the order it runs.
var sections = []section{
	{"throughput", "msg/s per client, sink and RTT; cost per message; memory", runThroughput},
	{"latency", "open-loop Send latency against load over TLS+AUTH, with net/smtp, go-mail and nodemailer", runLatency},
	{"scale", "callers, message size, recipients, connections, who drives a connection", runScale},
}

func sectionNames() []string {
	var out []string
	for _, s := range sections {
		out = append(out, s.name)
	}
	return out
}

// run is the command: parse the flags, start the lab, run each section
// asked for, print its tables, and write the docs.
func run() int {
	o, code := parseFlags(os.Args[1:])
	if code >= 0 {
		return code
	}
	stopProfiles, err := startProfiles(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer stopProfiles()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	e := &env{options: o, ctx: ctx, started: time.Now(), machine: machine()}
	fmt.Fprintf(o.text, "smtpkit bench (%s): %s\n", o.mode(), e.machine)
	if e.lab, err = newLab(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer e.lab.close()
	if o.peerProf != "" {
		if _, err := e.lab.peers.call("cpuprofile", o.peerProf); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	var results []result
	failed := false
	for _, s := range sections {
		if slices.Contains(o.sections, s.name) && ctx.Err() == nil {
			r := s.run(e)
			results = append(results, r)
			failed = failed || r.failed
		}
	}
	return finish(e, results, failed)
}

// finish prints the tables and the goals, writes the docs, and returns
// the exit code.
func finish(e *env, results []result, failed bool) int {
	if e.ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "bench: stopped early: %v\n", context.Cause(e.ctx))
		failed = true
	}
	var gs []goal
	for _, r := range results {
		fmt.Fprint(e.text, r.tables)
		gs = append(gs, r.goals...)
	}
	printGoals(e.text, gs)
	fmt.Fprintf(e.text, "\ntook %v\n", time.Since(e.started).Round(time.Second))
	if e.docs != "" && e.ctx.Err() == nil {
		if err := writeDocs(e.docs, results); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Fprintf(e.text, "wrote the docs in %s\n", e.docs)
	}
	if failed {
		return 1
	}
	return 0
}

func (o options) mode() string {
	if o.quick {
		return "quick"
	}
	return "full"
}

// flagValues are the flags as parsed.
type flagValues struct {
	quick, jsonOut, memory, noDocs                                                     *bool
	cpuProfile, memProfile, peerProfile, rtts, sinks, clients, docs, secs, sectionList *string
	runs                                                                               *int
	window, timeout                                                                    *time.Duration
}

func defineFlags(fs *flag.FlagSet) flagValues {
	return flagValues{
		quick:       fs.Bool("quick", false, "a shorter run of every section (about 3 minutes); writes no docs unless -docs names a directory"),
		jsonOut:     fs.Bool("json", false, "print one JSON object per measurement on stdout (the tables go to stderr)"),
		cpuProfile:  fs.String("cpuprofile", "", "write a CPU profile of the measuring process (the clients) to `file`"),
		memProfile:  fs.String("memprofile", "", "write an allocation profile of the measuring process to `file` (records every allocation, which slows the run)"),
		peerProfile: fs.String("peer-cpuprofile", "", "write a CPU profile of the helper process running the sinks to `file`"),
		runs:        fs.Int("runs", 0, "runs per throughput measurement, the median is kept (default 3)"),
		window:      fs.Duration("window", 0, "measured stretch of each throughput run (default 1s, 500ms with -quick)"),
		rtts:        fs.String("rtt", "", "comma-separated round-trip times in ms of the throughput and latency sections (default 0,1,2,10 and 0,2,10; 0,10 with -quick)"),
		sinks:       fs.String("sinks", "", "comma-separated sinks of the throughput section: go-smtp, smtp-sink, postfix (default all; go-smtp,smtp-sink with -quick)"),
		clients:     fs.String("clients", "", "comma-separated clients to measure in every section, by name or by the start of their table label (e.g. 'smtpkit-sender c4'; default all): "+clientHelp()),
		memory:      fs.Bool("memory", true, "measure memory: idle sessions and a streamed 100 MiB body"),
		docs:        fs.String("docs", "", "`directory` for benchmarks.md and the charts (default: docs/ of the module, except with -quick)"),
		noDocs:      fs.Bool("nodocs", false, "do not write the docs"),
		timeout:     fs.Duration("timeout", 0, "give up after this long (default 60m, 8m with -quick)"),
		secs:        fs.String("security", "", "comma-separated security settings of the latency section: tls, plain (default both)"),
		sectionList: fs.String("sections", strings.Join(sectionNames(), ","), "comma-separated sections to run: "+sectionHelp()),
	}
}

func clientHelp() string {
	var out []string
	for _, d := range clientDefs {
		out = append(out, d.name+" ("+d.about+")")
	}
	return strings.Join(out, ", ")
}

func sectionHelp() string {
	var out []string
	for _, s := range sections {
		out = append(out, s.name+" ("+s.about+")")
	}
	return strings.Join(out, ", ")
}

// parseFlags returns the options, and an exit code >= 0 when the run
// should not go on.
func parseFlags(args []string) (options, int) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	f := defineFlags(fs)
	if err := fs.Parse(args); err != nil {
		return options{}, 2
	}
	o := options{quick: *f.quick, sections: splitList(*f.sectionList), plan: fullPlan(), lat: fullLatPlan(), scale: fullScalePlan(),
		timeout: *f.timeout, cpuProfile: *f.cpuProfile, memProfile: *f.memProfile, peerProf: *f.peerProfile,
		cmd: strings.TrimSpace("go run ./bench " + strings.Join(args, " ")), text: os.Stdout, emit: func(any) {}}
	if o.quick {
		o.plan, o.lat, o.scale = quickPlan(), quickLatPlan(), quickScalePlan()
	}
	if err := o.apply(f); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return o, 2
	}
	return o, -1
}

// apply sets what the flags change from the plans.
func (o *options) apply(f flagValues) error {
	for _, s := range o.sections {
		if !slices.Contains(sectionNames(), s) {
			return fmt.Errorf("unknown section %q", s)
		}
	}
	if *f.runs > 0 {
		o.plan.Timing.Runs = *f.runs
	}
	if *f.window > 0 {
		o.plan.Timing.Window = *f.window
		o.plan.Timing.MaxRun = max(o.plan.Timing.MaxRun, 3**f.window)
	}
	o.plan.Memory = *f.memory
	if *f.rtts != "" {
		rtts, err := parseRTTs(*f.rtts)
		if err != nil {
			return err
		}
		o.plan.RTTs, o.lat.RTTs = rtts, rtts
	}
	if err := o.applyLists(f); err != nil {
		return err
	}
	if o.timeout <= 0 {
		o.timeout = map[bool]time.Duration{false: 60 * time.Minute, true: 8 * time.Minute}[o.quick]
	}
	if *f.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		o.text, o.emit = os.Stderr, func(v any) { enc.Encode(v) }
	}
	return o.docsDir(*f.docs, *f.noDocs)
}

// applyLists applies -security, -sinks and -clients.
func (o *options) applyLists(f flagValues) error {
	if *f.secs != "" {
		o.lat.Secs = nil
		for _, s := range splitList(*f.secs) {
			sec, ok := map[string]string{"tls": secTLS, "plain": secPlain}[s]
			if !ok {
				return fmt.Errorf("unknown security %q (tls, plain)", s)
			}
			o.lat.Secs = append(o.lat.Secs, sec)
		}
	}
	if *f.sinks != "" {
		o.plan.Sinks = splitList(*f.sinks)
		for _, s := range o.plan.Sinks {
			if s != sinkGoSMTP && s != sinkSMTPSink && s != sinkPostfix {
				return fmt.Errorf("unknown sink %q", s)
			}
		}
	}
	if *f.clients == "" {
		return nil
	}
	cf := clientFilter(splitList(*f.clients))
	if err := cf.check(); err != nil {
		return err
	}
	o.plan.Scenarios = slices.DeleteFunc(slices.Clone(o.plan.Scenarios), func(s spec) bool { return !cf.keeps(s) })
	o.lat.Specs = slices.DeleteFunc(slices.Clone(o.lat.Specs), func(s latSpec) bool { return !cf.keeps(s.spec) })
	if !cf.keeps(spec{Client: clientSender}) && !cf.keeps(spec{Client: clientCore}) {
		o.plan.Memory = false
	}
	return nil
}

// docsDir decides where the docs go: the -docs directory; else, unless
// -nodocs or -quick (a quick run never rewrites the published docs),
// docs/ of the module.
func (o *options) docsDir(dir string, noDocs bool) error {
	switch {
	case noDocs:
		o.docs = ""
	case dir != "":
		o.docs = dir
	case o.quick:
		o.docs = ""
	default:
		root, err := moduleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: not writing the docs:", err)
			return nil
		}
		o.docs = filepath.Join(root, "docs")
	}
	return nil
}

// startProfiles starts the profiles the options ask for; the function
// it returns ends them.
func startProfiles(o options) (func(), error) {
	var stops []func()
	stopAll := func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return stopAll, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return stopAll, err
		}
		stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
	}
	if o.memProfile != "" {
		runtime.MemProfileRate = 1
		stops = append(stops, func() {
			f, err := os.Create(o.memProfile)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: memprofile:", err)
			}
		})
	}
	return stopAll, nil
}

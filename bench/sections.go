package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ---- the sections: each takes the run's env and returns its result

func runThroughput(e *env) result {
	p := e.plan
	rep := &report{Mode: e.mode(), Started: time.Now(), Machine: e.machine, Plan: p, Unavail: map[string]string{},
		Profiling: e.cpuProfile != "" || e.memProfile != ""}
	res := result{section: "throughput"}
	sinks := startSinks(e, rep)
	if err := measureLines(e, rep); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		res.failed = true
		return res
	}
	for _, sink := range sinks {
		for _, rtt := range p.RTTs {
			for _, sc := range p.Scenarios {
				if !sc.supports(sink) || e.ctx.Err() != nil {
					continue
				}
				m := e.lab.measure(e.ctx, sc, sink, rtt, p.Timing)
				rep.Results = append(rep.Results, m)
				fmt.Fprintln(e.text, progressLine(m))
				res.failed = res.failed || m.err != nil
				if m.err == nil {
					e.emit(m)
				}
			}
		}
	}
	if p.PairRounds > 0 && slices.Contains(p.RTTs, 0) && e.ctx.Err() == nil {
		rep.Pairs = measurePairs(e.ctx, e.lab, sinks, p.Scenarios, p.PairRounds, p.Timing, func(s string) { fmt.Fprintln(e.text, s) }, e.emit)
		for _, row := range rep.Pairs {
			res.failed = res.failed || row.err != nil
		}
	}
	if p.Memory && e.ctx.Err() == nil {
		for _, m := range measureMemory(e.ctx, e.lab, sinks) {
			rep.Memory = append(rep.Memory, m)
			fmt.Fprintln(e.text, strings.ReplaceAll(memLine(m), "\t", "  "))
			res.failed = res.failed || m.err != nil
			e.emit(m)
		}
	}
	rep.Took = time.Since(rep.Started)
	var tables bytes.Buffer
	rep.printTables(&tables)
	res.tables = tables.String()
	res.goals = sectionGoals("throughput", throughputGoals(rep))
	res.doc = func([]byte) ([]byte, error) { return rep.markdown(), nil }
	svg, err := rep.svg()
	res.charts = map[string][]byte{"benchmarks.svg": svg}
	if err != nil {
		res.doc = func([]byte) ([]byte, error) { return nil, err }
	}
	return res
}

// measureMemory measures idle sessions and a streamed 100 MiB body.
func measureMemory(ctx context.Context, lab *lab, sinks []string) []memResult {
	var out []memResult
	const sessions = 32
	if slices.Contains(sinks, sinkGoSMTP) {
		addr, _ := lab.sink(sinkGoSMTP)
		for _, c := range []string{clientSender, clientCore, clientNetSMTP, clientGoSMTP} {
			m := idleSessions(ctx, c, target{addr: addr, sec: secPlain}, sessions)
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
			out = append(out, streamBody(ctx, c, sink, target{addr: addr, sec: secPlain}, size))
		}
	}
	return out
}

// startSinks starts the throughput section's sinks and returns those
// that run.
func startSinks(e *env, rep *report) []string {
	var sinks []string
	for _, s := range e.plan.Sinks {
		start := time.Now()
		addr, err := e.lab.sink(s)
		if err != nil {
			rep.Unavail[s] = err.Error()
			fmt.Fprintf(e.text, "sink %-9s unavailable: %v\n", s, err)
			continue
		}
		sinks = append(sinks, s)
		fmt.Fprintf(e.text, "sink %-9s %s (started in %v)\n", s, addr, time.Since(start).Round(time.Millisecond))
	}
	return sinks
}

// measureLines measures the delay lines' real round trips.
func measureLines(e *env, rep *report) error {
	for _, rtt := range e.plan.RTTs {
		if rtt == 0 {
			continue
		}
		st, err := e.lab.lineRTT(e.ctx, rtt, 30)
		if err != nil {
			return fmt.Errorf("delay line %v: %w", rtt, err)
		}
		rep.LineRTTs = append(rep.LineRTTs, st)
		fmt.Fprintf(e.text, "delay line RTT %-6s measured: median %.3f ms, p90 %.3f ms\n", fmtRTT(rtt), float64(st.Median)/1e6, float64(st.P90)/1e6)
	}
	return nil
}

func runLatency(e *env) result {
	lat := measureLatency(e.ctx, e.lab, e.lat, e.line, e.emit)
	res := result{section: "latency", goals: sectionGoals("latency", latencyGoals(lat))}
	for _, s := range lat.Sats {
		res.failed = res.failed || s.err != nil
	}
	for _, pt := range lat.Points {
		res.failed = res.failed || pt.err != nil
	}
	md := lat.markdown(e.cmd, time.Now().Add(-lat.Took), e.machine)
	res.tables = "\n" + string(md)
	res.doc = func(old []byte) ([]byte, error) { return spliceRegion(orEmpty(old), "latency", md), nil }
	svg, err := lat.svg()
	res.charts = map[string][]byte{"benchmarks-latency.svg": svg}
	if err != nil {
		res.doc = func([]byte) ([]byte, error) { return nil, err }
	}
	return res
}

func runScale(e *env) result {
	sc := measureScale(e.ctx, e.lab, e.scale, e.line, e.emit)
	md := sc.markdown(e.cmd, time.Now().Add(-sc.Took))
	return result{section: "scale", tables: "\n" + string(md), goals: sectionGoals("scale", scaleGoals(sc)),
		doc: func(old []byte) ([]byte, error) { return spliceRegion(orEmpty(old), "scale", md), nil }}
}

// line prints one progress line.
func (e *env) line(s string) { fmt.Fprintln(e.text, s) }

func orEmpty(doc []byte) []byte {
	if len(doc) == 0 {
		return []byte("# Benchmarks\n\n")
	}
	return doc
}

// ---- the docs

// writeDocs writes benchmarks.md and the charts of the sections that
// ran: a section that did not run keeps its part of the existing
// benchmarks.md, and its rows of the Targets table.
func writeDocs(dir string, results []result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "benchmarks.md")
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	md := old
	var ran []string
	var gs []goal
	for _, r := range results {
		// The throughput section writes the document around the
		// regions: keep the regions of the old one.
		regions := [][2][]byte{}
		for _, name := range []string{"targets", "latency", "scale"} {
			regions = append(regions, [2][]byte{[]byte(name), extractRegion(md, name)})
		}
		if md, err = r.doc(md); err != nil {
			return err
		}
		for _, rg := range regions {
			if extractRegion(md, string(rg[0])) == nil {
				md = spliceRegion(md, string(rg[0]), rg[1])
			}
		}
		for name, svg := range r.charts {
			if err := os.WriteFile(filepath.Join(dir, name), svg, 0o644); err != nil {
				return err
			}
		}
		ran = append(ran, r.section)
		gs = append(gs, r.goals...)
	}
	md = spliceRegion(md, "targets", targetsRegion(old, ran, gs))
	return os.WriteFile(path, md, 0o644)
}

// targetsRegion renders the Targets table: the goals of the sections
// that ran, and the rows of the others as old had them.
func targetsRegion(old []byte, ran []string, gs []goal) []byte {
	var kept []goal
	for _, line := range strings.Split(string(extractRegion(old, "targets")), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 5 || cells[0] == "section" || strings.HasPrefix(cells[0], "---") || slices.Contains(ran, cells[0]) {
			continue
		}
		kept = append(kept, goal{Section: cells[0], Name: cells[1], Measured: cells[2], Goal: cells[3], Met: cells[4]})
	}
	all := append(kept, gs...)
	order := sectionNames()
	slices.SortStableFunc(all, func(a, b goal) int { return slices.Index(order, a.Section) - slices.Index(order, b.Section) })
	var b bytes.Buffer
	begin, end := regionMarkers("targets")
	b.WriteString(begin + "## Targets\n\nEvery target of the suite, from the sections' latest runs (a section run alone replaces its own rows). Figures in the prose below cite these tables by name.\n\n")
	goalTable(&b, all)
	b.WriteString(end)
	return b.Bytes()
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"
)

// The actor-cost targets compare two clients whose rates differ by a
// few percent, at RTT 0, where a run's rate moves by tens of percent
// with what else the two shared cores do: two runs one after the other
// compare two moments of the machine as much as two clients. So they are
// measured again in interleaved rounds (ours, then the reference; the
// next round the other way round), and the median of the rounds' ratios
// is what the target reads.

// pairRow is one actor-cost target measured in interleaved rounds.
type pairRow struct {
	Target string  `json:"target"`
	Sink   string  `json:"sink"`
	RTTms  float64 `json:"rtt_ms"`
	Ours   string  `json:"ours"`
	Ref    string  `json:"reference"`
	// Rates are each round's msg/s, ours and the reference's; Ratios
	// each round's ratio; Ratio their median.
	OursRates []float64 `json:"ours_msgs_per_s"`
	RefRates  []float64 `json:"reference_msgs_per_s"`
	Ratios    []float64 `json:"ratios"`
	Ratio     float64   `json:"ratio"`

	g   ratioGoal
	err error
}

// interleavedGoals are the ratio targets measured in interleaved rounds.
func interleavedGoals() []ratioGoal {
	var out []ratioGoal
	for _, g := range throughputRatios() {
		if g.interleaved {
			out = append(out, g)
		}
	}
	return out
}

// measurePairs measures each interleaved target whose sink runs and
// whose two clients the run measures.
func measurePairs(ctx context.Context, l *lab, sinks []string, scenarios []spec, rounds int, tm timing, text func(string), emit func(any)) []pairRow {
	var out []pairRow
	for _, g := range interleavedGoals() {
		if !slices.Contains(sinks, g.sink) || !slices.Contains(scenarios, g.ours) || !slices.Contains(scenarios, g.ref) || ctx.Err() != nil {
			continue
		}
		row := measurePair(ctx, l, g, rounds, tm)
		text(pairLine(row))
		if row.err == nil {
			emit(row)
		}
		out = append(out, row)
	}
	return out
}

func measurePair(ctx context.Context, l *lab, g ratioGoal, rounds int, tm timing) pairRow {
	row := pairRow{Target: g.name, Sink: g.sink, RTTms: float64(g.rtt) / float64(time.Millisecond), Ours: g.ours.label(), Ref: g.ref.label(), g: g}
	addr, err := l.target(g.sink, g.rtt)
	if err != nil {
		row.err = err
		return row
	}
	t := target{addr: addr, sec: secPlain, lab: l}
	tm.Runs = 1
	for i := range rounds {
		order := []spec{g.ours, g.ref}
		if i%2 == 1 {
			order = []spec{g.ref, g.ours}
		}
		var rate [2]float64
		for _, sc := range order {
			s, err := runOnce(ctx, sc, t, tm, nil)
			if err != nil {
				row.err = fmt.Errorf("round %d, %s: %w", i+1, sc.label(), err)
				return row
			}
			if sc == g.ours {
				rate[0] = s.rate
			} else {
				rate[1] = s.rate
			}
		}
		row.OursRates = append(row.OursRates, round(rate[0], 1))
		row.RefRates = append(row.RefRates, round(rate[1], 1))
		row.Ratios = append(row.Ratios, round(rate[0]/rate[1], 3))
	}
	row.Ratio = median(row.Ratios)
	return row
}

func pairLine(r pairRow) string {
	if r.err != nil {
		return fmt.Sprintf("interleaved  %s: error: %v", r.Target, r.err)
	}
	return fmt.Sprintf("interleaved  %s: %s against %s, median of %d rounds: %.0f %% (ratios: %s; msg/s: %s against %s)", r.Target, r.Ours, r.Ref, len(r.Ratios), 100*r.Ratio, pctList(r.Ratios), intList(r.OursRates), intList(r.RefRates))
}

func pctList(xs []float64) string {
	var b bytes.Buffer
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.0f %%", 100*x)
	}
	return b.String()
}

// pair returns the interleaved measurement of g, if one succeeded.
func (r *report) pair(g ratioGoal) (pairRow, bool) {
	for _, p := range r.Pairs {
		if p.g.name == g.name && p.err == nil && len(p.Ratios) > 0 {
			return p, true
		}
	}
	return pairRow{}, false
}

// pairsMD writes the table of the interleaved rounds.
func (r *report) pairsMD(b *bytes.Buffer) {
	if len(r.Pairs) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### Actor cost, interleaved rounds\n\n")
	p("The actor-cost targets compare rates a few percent apart at RTT 0, where one run moves by tens of percent with the machine: each is measured again in %d rounds, each round the sender and the reference one after the other (every other round the other way round), %v each after %v of warm-up; the target reads the median of the rounds' ratios. Rates in msg/s.\n\n", r.Plan.PairRounds, r.Plan.Timing.Window, r.Plan.Timing.Warm)
	p("| target | ours | reference | ours, each round | reference, each round | ratio, each round | median ratio |\n|---|---|---|---|---|---|---:|\n")
	for _, row := range r.Pairs {
		if row.err != nil {
			p("| %s | %s | %s | error: %v | | | - |\n", row.Target, row.Ours, row.Ref, row.err)
			continue
		}
		p("| %s | %s | %s | %s | %s | %s | %.0f %% |\n", row.Target, row.Ours, row.Ref, intList(row.OursRates), intList(row.RefRates), pctList(row.Ratios), 100*row.Ratio)
	}
	p("\n")
}

func intList(xs []float64) string {
	var b bytes.Buffer
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(fmtInt(x))
	}
	return b.String()
}

// Command bench measures how smtpkit compares with the SMTP clients in
// use today, on loopback, against sinks it starts itself, at round-trip
// times added by a userspace delay line, and writes docs/benchmarks.md
// and its charts.
//
//	go run ./bench                     # full run, every section; writes the docs
//	go run ./bench -quick              # a shorter run of every section; writes no docs
//	go run ./bench -sections latency   # one section: throughput, latency, scale
//	go run ./bench -clients 'smtpkit-sender c4,wire-chunking'   # some clients, in every section
//	go run ./bench -json               # one JSON object per measurement on stdout
//
// Its shape: a client (client.go) is one interface, Send and Close,
// registered once by name in clientDefs (clients.go for smtpkit's own,
// peers.go and nodemailer.go for the others, wire.go for the wire
// control); the drivers run clients: the closed loop (closedLoop,
// runOnce), the open loop (openLoop), the waiting callers (waiters) and
// the memory figures (idleSessions, streamBody). run.go reads the flags
// and runs the sections, each a function from the run's env to its
// tables, its part of the docs and its goals (goals.go), which make one
// Targets table. The prose of the docs cites those tables by name and
// types no figure (prose_test.go).
//
// The same comparisons run as Go benchmarks with go test -bench . ./bench.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// plan is what a run measures.
type plan struct {
	Sinks     []string
	RTTs      []time.Duration
	Scenarios []spec
	Timing    timing
	Memory    bool
	// PairRounds is how many interleaved rounds measure each
	// actor-cost target (see pairs.go); 0 skips them.
	PairRounds int
}

// The client configurations of a full run, in table order.
var fullScenarios = []spec{
	{Client: clientSender, Conns: 1, Window: 1},
	{Client: clientSender, Conns: 1, Window: 32},
	{Client: clientSender, Conns: 1, Window: 128},
	{Client: clientSender, Conns: 8, Window: 32},
	{Client: clientCore, Conns: 1, Window: 1},
	{Client: clientCore, Conns: 1, Window: 32},
	{Client: clientCore, Conns: 1, Window: 128},
	{Client: clientNetSMTP, Conns: 1, Window: 1},
	{Client: clientGoSMTP, Conns: 1, Window: 1},
	{Client: clientSource, Conns: 1, Window: 1},
	{Client: clientSource, Conns: 8, Window: 1},
	{Client: clientWireChunking, Conns: 1, Window: 32},
	{Client: clientWireChunking, Conns: 1, Window: 128},
	{Client: clientWireData, Conns: 1, Window: 1},
}

// quickScenarios are those of -quick: every client, one connection,
// windows of at most 32.
var quickScenarios = slices.DeleteFunc(slices.Clone(fullScenarios), func(s spec) bool { return s.Conns > 1 || s.Window > 32 })

func fullPlan() plan {
	return plan{
		Sinks:      []string{sinkGoSMTP, sinkSMTPSink, sinkPostfix},
		RTTs:       []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond},
		Scenarios:  fullScenarios,
		Timing:     timing{Runs: 3, Window: time.Second, Warm: 200 * time.Millisecond, MinMsgs: 20, MaxRun: 5 * time.Second, MaxMsgs: 2_000_000},
		Memory:     true,
		PairRounds: 7,
	}
}

func quickPlan() plan {
	return plan{
		Sinks:      []string{sinkGoSMTP, sinkSMTPSink},
		RTTs:       []time.Duration{0, 10 * time.Millisecond},
		Scenarios:  quickScenarios,
		Timing:     timing{Runs: 3, Window: 500 * time.Millisecond, Warm: 100 * time.Millisecond, MinMsgs: 8, MaxRun: 2 * time.Second, MaxMsgs: 1_000_000},
		Memory:     true,
		PairRounds: 3,
	}
}

func main() {
	if isHelper() {
		os.Exit(helperMain())
	}
	os.Exit(run())
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

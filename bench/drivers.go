package main

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// same smtp.Client is driven by the caller's own goroutine (the floor:
// no other goroutine involved), by whichever caller holds a sync.Mutex
// (the caller drives, the next to ask may barge in), by the caller it is
// handed to in order (database/sql's rule: a released connection goes to
// the longest waiting request), and by the sender's session goroutine
// (the caller hands over its request and waits for the answer), with one
// transaction in flight and with a window of 32 (the default is 16).

// The ways of driving a connection the drivers table compares.
const (
	driveOwn     = "smtp.Client, the caller's own goroutine"
	driveMutex   = "smtp.Client under a sync.Mutex (the caller drives, barging allowed)"
	driveHandoff = "smtp.Client handed to the longest waiting caller (database/sql)"
	driveSender1 = "sender, MaxInFlight 1 (the session goroutine drives)"
	driveSender  = "sender, MaxInFlight 32"
)

// driverSpec is one row configuration of the drivers table: a client
// and its callers.
type driverSpec struct {
	Drive string
	spec
}

// driverSpecs are the rows, at each RTT.
var driverSpecs = []driverSpec{
	{driveOwn, spec{Client: clientCore, Conns: 1, Window: 1, Callers: 1}},
	{driveSender1, spec{Client: clientSender, Conns: 1, Window: 1, Callers: 1}},
	{driveMutex, spec{Client: clientCoreMutex, Conns: 1, Window: 1, Callers: 3}},
	{driveHandoff, spec{Client: clientCoreHandoff, Conns: 1, Window: 1, Callers: 3}},
	{driveSender1, spec{Client: clientSender, Conns: 1, Window: 1, Callers: 3}},
	{driveSender, spec{Client: clientSender, Conns: 1, Window: 32, Callers: 3}},
}

// driverRow is one line of the drivers table.
type driverRow struct {
	Drive    string  `json:"drive"`
	Callers  int     `json:"callers"`
	RTTms    float64 `json:"rtt_ms"`
	MsgsPerS float64 `json:"msgs_per_s"`
	// CPUus is the measuring process's CPU time per message, Switches
	// its context switches per message (getrusage: voluntary and
	// involuntary, every thread), -1 where not measured.
	CPUus    float64 `json:"client_cpu_us_per_msg"`
	Switches float64 `json:"context_switches_per_msg"`
	// P50us is the median time of one Send (one caller's round trip),
	// from a closed loop of Callers callers.
	P50us float64 `json:"send_p50_us"`

	rtt time.Duration
	err error
}

// measureDrivers fills the drivers table at rtt: each row is measured
// Runs times, interleaved with the others (the machine drifts), and the
// median kept.
func measureDrivers(ctx context.Context, rep *scaleReport, addr string, rtt time.Duration, text func(string), emit func(any)) {
	tm := rep.Plan.DriverTiming
	type acc struct{ rates, cpus, sws, p50s []float64 }
	accs := make([]acc, len(driverSpecs))
	errs := make([]error, len(driverSpecs))
	for range tm.Runs {
		for i, spec := range driverSpecs {
			if ctx.Err() != nil || errs[i] != nil {
				continue
			}
			var times sendTimes
			smp, err := runOnce(ctx, spec.spec, target{addr: addr, sec: secPlain}, tm, &times)
			if err != nil {
				errs[i] = err
				continue
			}
			a := &accs[i]
			a.rates = append(a.rates, smp.rate)
			a.cpus = append(a.cpus, smp.cpu/1e3)
			if smp.switches >= 0 {
				a.sws = append(a.sws, smp.switches)
			}
			if v := times.p50(); v >= 0 {
				a.p50s = append(a.p50s, v)
			}
		}
	}
	for i, spec := range driverSpecs {
		row := driverRow{Drive: spec.Drive, Callers: spec.Callers, RTTms: float64(rtt) / 1e6, rtt: rtt, err: errs[i], CPUus: -1, Switches: -1, P50us: -1}
		a := accs[i]
		if row.err == nil && len(a.rates) > 0 {
			row.MsgsPerS = round(median(a.rates), 1)
			row.CPUus = round(median(a.cpus), 1)
			if len(a.sws) > 0 {
				row.Switches = round(median(a.sws), 2)
			}
			if len(a.p50s) > 0 {
				row.P50us = round(median(a.p50s), 1)
			}
		}
		text(driverLine(row))
		rep.Drivers = append(rep.Drivers, row)
		if row.err == nil {
			emit(row)
		}
	}
}

func driverLine(r driverRow) string {
	if r.err != nil {
		return fmt.Sprintf("scale drive RTT %-6s %d callers  %s: error: %v", fmtRTT(r.rtt), r.Callers, r.Drive, r.err)
	}
	return fmt.Sprintf("scale drive RTT %-6s %d callers  %9.1f msg/s  %6.1f µs CPU  %5.2f switches  Send p50 %7.1f µs  %s", fmtRTT(r.rtt), r.Callers, r.MsgsPerS, r.CPUus, r.Switches, r.P50us, r.Drive)
}

// driversMD writes the drivers table.
func (s *scaleReport) driversMD(b *bytes.Buffer) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
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
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// Who drives the connection, with one transaction at a time: the
// measurement behind the sender's one-owner rule (issue 13, item 4). The
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

// driverSpec is one row configuration of the drivers table.
type driverSpec struct {
	Drive   string
	Callers int
}

// driverSpecs are the rows, at each RTT.
var driverSpecs = []driverSpec{
	{driveOwn, 1},
	{driveSender1, 1},
	{driveMutex, 3},
	{driveHandoff, 3},
	{driveSender1, 3},
	{driveSender, 3},
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

// driverRunner sends with the given driver; it records each Send's time.
type driverRunner struct {
	spec driverSpec
	c    *smtp.Client   // the client the smtp.Client drivers share
	s    *sender.Sender // the sender drivers' sender
	mu   sync.Mutex     // driveMutex's lock
	tok  chan struct{}  // driveHandoff's token: holding it is driving c

	latMu sync.Mutex // guards lats
	lats  []*durations
}

func newDriverRunner(ctx context.Context, spec driverSpec, addr string) (*driverRunner, error) {
	r := &driverRunner{spec: spec, tok: make(chan struct{}, 1)}
	r.tok <- struct{}{}
	switch spec.Drive {
	case driveSender1, driveSender:
		w := 32
		if spec.Drive == driveSender1 {
			w = 1
		}
		s, err := sender.New(sender.Config{
			Addr: addr, Security: sender.InsecurePlaintext, LocalName: "localhost",
			MaxConns: 1, MaxInFlight: w, IdleTimeout: 10 * time.Minute,
		})
		if err != nil {
			return nil, err
		}
		r.s = s
		return r, nil
	}
	cr, err := newCoreRunner(ctx, scenario{Client: clientCore, Conns: 1, Window: 1}, addr)
	if err != nil {
		return nil, err
	}
	r.c = cr.c
	return r, nil
}

func (r *driverRunner) run(ctx context.Context, q *quota) error {
	return callersRun(q, r.spec.Callers, func() func() error {
		body := bytes.NewReader(message)
		env := smtp.Envelope{From: mailFrom, To: rcpts}
		lat := &durations{}
		r.latMu.Lock()
		r.lats = append(r.lats, lat)
		r.latMu.Unlock()
		return func() error {
			body.Reset(message)
			t0 := time.Now()
			var err error
			switch r.spec.Drive {
			case driveOwn:
				_, err = r.c.Send(ctx, env, body)
			case driveMutex:
				r.mu.Lock()
				_, err = r.c.Send(ctx, env, body)
				r.mu.Unlock()
			case driveHandoff:
				// A channel's waiting receivers are served in
				// order, and a send hands the token straight to
				// the first of them.
				select {
				case <-r.tok:
				case <-ctx.Done():
					return ctx.Err()
				}
				_, err = r.c.Send(ctx, env, body)
				r.tok <- struct{}{}
			default:
				_, err = r.s.Send(ctx, env, body)
			}
			lat.add(time.Since(t0))
			return err
		}
	})
}

// durations is one caller's Send times (only its goroutine adds; they
// are read once the run is over).
type durations struct{ d []time.Duration }

func (l *durations) add(d time.Duration) { l.d = append(l.d, d) }

// p50 is the median Send time of every caller, in µs, or -1.
func (r *driverRunner) p50() float64 {
	r.latMu.Lock()
	defer r.latMu.Unlock()
	var all []time.Duration
	for _, l := range r.lats {
		all = append(all, l.d...)
	}
	if len(all) == 0 {
		return -1
	}
	slices.Sort(all)
	return float64(all[len(all)/2]) / 1e3
}

func (r *driverRunner) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r.s != nil {
		r.s.Shutdown(ctx)
	} else if r.c.Quit(ctx) != nil {
		r.c.Close()
	}
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
			var dr *driverRunner
			smp, err := runOnceWith(ctx, scenario{Client: spec.Drive, Conns: 1, Window: 1}, tm, func(ctx context.Context) (runner, error) {
				r, err := newDriverRunner(ctx, spec, addr)
				dr = r
				return r, err
			})
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
			if v := dr.p50(); v >= 0 {
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

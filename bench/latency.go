package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	netsmtp "net/smtp"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mail "github.com/wneessen/go-mail"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// The latency section: what a request handler calling Send feels. Sends
// arrive at a fixed rate with exponential gaps (an open loop: each on
// its own goroutine with its own ctx, whatever the earlier ones are
// doing), and the latency of each is measured from its scheduled
// arrival, so a client that falls behind is charged for it.

// The clients of the latency section, by the names the tables use.
const (
	latSender      = "smtpkit-sender"
	latNetSMTP     = "net/smtp per message"
	latGoMailDial  = "go-mail DialAndSend"
	latGoMailReuse = "go-mail reused client"
	latNodemailer  = "nodemailer pool"
	latWire        = "wire-chunking" // the control: writes at once, no window
)

// latSpec is one client configuration of the latency section.
type latSpec struct {
	Client string
	Conns  int  // connections of a pool; 0 for one per message
	Window int  // smtpkit's MaxInFlight
	Curve  bool // measured under open load; false: saturation only
}

func (s latSpec) label() string {
	switch s.Client {
	case latSender:
		return fmt.Sprintf("%s c%d w%d", s.Client, s.Conns, s.Window)
	case latNodemailer, latWire:
		return fmt.Sprintf("%s c%d", s.Client, s.Conns)
	}
	return s.Client
}

// latSpecs are the clients of the latency section. smtpkit with one
// connection is measured for saturation only: it is the same-connection
// comparison for go-mail's reused client.
var latSpecs = []latSpec{
	{latSender, 4, 32, true},
	{latSender, 1, 32, false},
	{latNetSMTP, 0, 1, true},
	{latGoMailDial, 0, 1, true},
	{latGoMailReuse, 1, 1, true},
	{latNodemailer, 4, 1, true},
	{latWire, 4, 1, true},
}

// Security settings of the latency section.
const (
	secTLS   = "TLS+AUTH"
	secPlain = "plaintext"
)

// latPlan is what the latency section measures.
type latPlan struct {
	RTTs      []time.Duration
	Secs      []string
	Specs     []latSpec
	TLSLoads  []float64 // fractions of saturation, over TLS
	PlainLoad []float64 // over plaintext
	Sat       timing    // the saturation runs
	Samples   int       // a load point aims at this many Sends...
	MinDur    time.Duration
	MaxDur    time.Duration // ...within these bounds
	Timeout   time.Duration // each Send's ctx
	MaxOpen   int           // arrivals beyond this many unanswered Sends fail at once
	// RepeatLoad, the load of the targets, is offered Repeats times.
	RepeatLoad float64
	Repeats    int
}

func fullLatPlan() latPlan {
	return latPlan{
		RTTs:       []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond},
		Secs:       []string{secTLS, secPlain},
		Specs:      latSpecs,
		TLSLoads:   []float64{0.1, 0.25, 0.5, 0.75, 0.9, 1.1},
		PlainLoad:  []float64{0.1, 0.5, 0.9, 1.1},
		Sat:        timing{Runs: 3, Window: 700 * time.Millisecond, Warm: 300 * time.Millisecond, MinMsgs: 5, MaxRun: 3 * time.Second, MaxMsgs: 2_000_000},
		Samples:    1500,
		MinDur:     time.Second,
		MaxDur:     2500 * time.Millisecond,
		Timeout:    5 * time.Second,
		MaxOpen:    5000,
		RepeatLoad: 0.5,
		Repeats:    3,
	}
}

func quickLatPlan() latPlan {
	p := fullLatPlan()
	p.RTTs = []time.Duration{0, 10 * time.Millisecond}
	p.TLSLoads = []float64{0.1, 0.5, 1.1}
	p.PlainLoad = []float64{0.5}
	p.Sat = timing{Runs: 1, Window: 500 * time.Millisecond, Warm: 200 * time.Millisecond, MinMsgs: 3, MaxRun: 2 * time.Second, MaxMsgs: 1_000_000}
	p.Samples, p.MinDur, p.MaxDur, p.Timeout, p.Repeats = 300, 400*time.Millisecond, time.Second, 3*time.Second, 1
	return p
}

// latClient sends one benchmark message per call; it is safe for
// concurrent use.
type latClient interface {
	send(ctx context.Context) error
	close()
}

// sinkCPU returns the CPU time the sinks' helper has used, in ns, or -1.
func (l *lab) sinkCPU() int64 {
	v, err := l.peers.call("cpu")
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// latTarget is where a latency client connects.
type latTarget struct {
	addr string      // the sink, or a delay line in front of it
	sec  string      // secTLS or secPlain
	tls  *tls.Config // trusts the sink's certificate; nil for plaintext
	ca   string      // the certificate's file, for nodemailer
}

// latTargetFor starts the sink of sec and returns how to reach it at rtt.
func (l *lab) latTargetFor(sec string, rtt time.Duration) (latTarget, error) {
	if sec == secPlain {
		a, err := l.target(sinkGoSMTP, rtt)
		return latTarget{addr: a, sec: sec}, err
	}
	v, err := l.sink(sinkGoSMTPTLS)
	if err != nil {
		return latTarget{}, err
	}
	addr, ca, _ := strings.Cut(v, " ")
	pem, err := os.ReadFile(ca)
	if err != nil {
		return latTarget{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return latTarget{}, errors.New("go-smtp-tls: no certificate in " + ca)
	}
	a, err := l.via(addr, rtt)
	return latTarget{addr: a, sec: sec, ca: ca, tls: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}}, err
}

func newLatClient(ctx context.Context, s latSpec, t latTarget) (latClient, error) {
	switch s.Client {
	case latSender:
		return newSenderLat(s, t, nil)
	case latNetSMTP:
		return &netSMTPPerMsg{t: t}, nil
	case latGoMailDial, latGoMailReuse:
		return newGoMailLat(s.Client == latGoMailReuse, t)
	case latWire:
		return newWireLat(ctx, s, t)
	}
	return nil, fmt.Errorf("no Go latency client %q", s.Client)
}

// ---- smtpkit's sender

type senderLat struct{ s *sender.Sender }

// newSenderLat makes a sender for s at t; dial, when set, replaces its
// dialing (the scale section gates it).
func newSenderLat(s latSpec, t latTarget, cfg func(*sender.Config)) (*senderLat, error) {
	c := sender.Config{Addr: t.addr, LocalName: "localhost", MaxConns: s.Conns, MaxInFlight: s.Window, IdleTimeout: 10 * time.Minute}
	if t.tls != nil {
		c.Security = sender.ImplicitTLS
		c.TLSConfig = t.tls
		c.Credentials = func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: benchUser, Secret: benchPass}, nil
		}
	} else {
		c.Security = sender.InsecurePlaintext
	}
	if cfg != nil {
		cfg(&c)
	}
	snd, err := sender.New(c)
	if err != nil {
		return nil, err
	}
	return &senderLat{s: snd}, nil
}

func (c *senderLat) send(ctx context.Context) error {
	_, err := c.s.Send(ctx, smtp.Envelope{From: mailFrom, To: rcpts}, bytes.NewReader(message))
	return err
}

func (c *senderLat) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.s.Shutdown(ctx) != nil {
		c.s.Close()
	}
}

// ---- net/smtp, a new connection per message, as net/smtp.SendMail does

type netSMTPPerMsg struct{ t latTarget }

func (c *netSMTPPerMsg) send(ctx context.Context) error {
	var conn net.Conn
	var err error
	if c.t.tls != nil {
		d := tls.Dialer{Config: c.t.tls}
		conn, err = d.DialContext(ctx, "tcp", c.t.addr)
	} else {
		conn, err = dial(ctx, c.t.addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cl, err := netsmtp.NewClient(conn, "localhost")
	if err != nil {
		return err
	}
	if err := cl.Hello("localhost"); err != nil {
		return err
	}
	if c.t.tls != nil {
		if err := cl.Auth(netsmtp.PlainAuth("", benchUser, benchPass, "localhost")); err != nil {
			return err
		}
	}
	if err := netSMTPSend(cl, writeMessage); err != nil {
		return err
	}
	return cl.Quit()
}

func (c *netSMTPPerMsg) close() {}

// ---- github.com/wneessen/go-mail: DialAndSend per message, or one
// client reused (its Send serialises callers on a mutex; a semaphore
// in front lets a waiting caller give up when its ctx ends)

type goMailLat struct {
	c     *mail.Client
	reuse bool
	sem   chan struct{} // holds the reused client; owns dialed
	// dialed says whether the reused client is connected; guarded by
	// sem.
	dialed bool
}

// goMailText is the benchmark message's body, without its header
// (go-mail writes its own).
var goMailText = func() string {
	_, body, _ := strings.Cut(string(message), "\r\n\r\n")
	return body
}()

func newGoMailLat(reuse bool, t latTarget) (*goMailLat, error) {
	host, port, err := net.SplitHostPort(t.addr)
	if err != nil {
		return nil, err
	}
	var p int
	fmt.Sscan(port, &p)
	opts := []mail.Option{mail.WithPort(p), mail.WithHELO("localhost"), mail.WithTimeout(30 * time.Second)}
	if t.tls != nil {
		opts = append(opts, mail.WithSSL(), mail.WithTLSConfig(t.tls), mail.WithSMTPAuth(mail.SMTPAuthPlain),
			mail.WithUsername(benchUser), mail.WithPassword(benchPass))
	} else {
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	}
	c, err := mail.NewClient(host, opts...)
	if err != nil {
		return nil, err
	}
	g := &goMailLat{c: c, reuse: reuse, sem: make(chan struct{}, 1)}
	return g, nil
}

func goMailMsg() (*mail.Msg, error) {
	m := mail.NewMsg()
	if err := m.From(mailFrom); err != nil {
		return nil, err
	}
	if err := m.To(rcptTo); err != nil {
		return nil, err
	}
	m.Subject("smtpkit benchmark message")
	m.SetBodyString(mail.TypeTextPlain, goMailText)
	return m, nil
}

func (g *goMailLat) send(ctx context.Context) error {
	m, err := goMailMsg()
	if err != nil {
		return err
	}
	if !g.reuse {
		return g.c.DialAndSendWithContext(ctx, m)
	}
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.sem }()
	if !g.dialed {
		if err := g.c.DialWithContext(ctx); err != nil {
			return err
		}
		g.dialed = true
	}
	if err := g.c.Send(m); err != nil {
		g.c.Close()
		g.dialed = false
		return err
	}
	return nil
}

func (g *goMailLat) close() {
	if g.reuse {
		g.sem <- struct{}{}
		if g.dialed {
			g.c.Close()
		}
		<-g.sem
	}
}

// ---- closed loop (saturation) and open loop (latency at a load)

// latRunner runs a latency client as a runner: callers goroutines send
// one message after another.
type latRunner struct {
	c       latClient
	callers int
	q       *quota // of the last run
}

func (r *latRunner) run(ctx context.Context, q *quota) error {
	r.q = q
	return callersRun(q, r.callers, func() func() error {
		return func() error { return r.c.send(ctx) }
	})
}

func (r *latRunner) close() { r.c.close() }

// satCallers is how many callers measure a client's saturation: twice
// what a pool's windows hold, and for clients that dial per message,
// 64 at once.
func satCallers(s latSpec) int {
	switch s.Client {
	case latSender:
		return 2*s.Conns*s.Window + s.Conns
	case latWire:
		// One pending Send per caller: 32 in flight per connection, as
		// smtpkit's window.
		return 32 * s.Conns
	case latGoMailReuse:
		return 4
	case latNodemailer:
		return 4 * s.Conns
	}
	return 64
}

// loadResult is one open-loop run.
type loadResult struct {
	Rate    float64         // offered, msg/s
	Lat     []time.Duration // answered Sends, sorted
	Failed  int             // errors, timeouts, and arrivals over MaxOpen
	FirstEr string
	// MaxLate is the most an arrival was started after its time: the
	// measuring process's own scheduling delay, which every latency
	// of the run may include.
	MaxLate time.Duration
}

// quantile returns the q-quantile of the Sends, counting failed ones as
// slower than any answered; ok is false when it falls on a failure.
func (r loadResult) quantile(q float64) (time.Duration, bool) {
	n := len(r.Lat) + r.Failed
	if n == 0 {
		return 0, false
	}
	i := int(math.Ceil(q*float64(n))) - 1
	i = max(i, 0)
	if i >= len(r.Lat) {
		return 0, false
	}
	return r.Lat[i], true
}

// openLoop offers rate Sends a second to c for dur, each on its own
// goroutine with its own ctx (timeout from its scheduled arrival), and
// waits for every one to end.
func openLoop(ctx context.Context, c latClient, rate float64, dur, timeout time.Duration, maxOpen int, seed uint64) loadResult {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	res := loadResult{Rate: rate, Lat: make([]time.Duration, 0, int(rate*dur.Seconds()*1.2)+16)}
	var mu sync.Mutex // guards res
	var wg sync.WaitGroup
	var open atomic.Int64
	fail := func(err error) {
		mu.Lock()
		res.Failed++
		if res.FirstEr == "" {
			res.FirstEr = err.Error()
		}
		mu.Unlock()
	}
	start := time.Now()
	for at := time.Duration(0); at < dur && ctx.Err() == nil; at += time.Duration(rng.ExpFloat64() / rate * 1e9) {
		if d := at - time.Since(start); d > 20*time.Microsecond {
			time.Sleep(d)
		}
		due := start.Add(at)
		res.MaxLate = max(res.MaxLate, time.Since(due))
		if open.Load() >= int64(maxOpen) {
			fail(fmt.Errorf("more than %d Sends unanswered", maxOpen))
			continue
		}
		open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			sctx, cancel := context.WithDeadline(ctx, due.Add(timeout))
			err := c.send(sctx)
			cancel()
			el := time.Since(due)
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			res.Lat = append(res.Lat, el)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(res.Lat)
	return res
}

// latPoint is one line of a latency table.
type latPoint struct {
	Client  string  `json:"client"`
	Sec     string  `json:"security"`
	RTTms   float64 `json:"rtt_ms"`
	Load    float64 `json:"load"`    // fraction of saturation
	Offered float64 `json:"offered"` // msg/s
	N       int     `json:"n"`
	Failed  int     `json:"failed"`
	P50ms   float64 `json:"p50_ms"` // -1: a failure
	P99ms   float64 `json:"p99_ms"`
	P999ms  float64 `json:"p999_ms"`
	// P99Runs lists the p99 of each run where a load was offered more
	// than once (see latPlan.Repeats).
	P99Runs []float64 `json:"p99_runs_ms,omitempty"`
	// MaxLateMs is the load generator's worst lateness (see
	// loadResult.MaxLate).
	MaxLateMs float64 `json:"generator_max_late_ms"`

	spec     latSpec
	rtt      time.Duration
	firstErr string // the first failure's error, for the progress line
	err      error  // the point could not be measured
}

// latSat is a client's saturation throughput.
type latSat struct {
	Client string    `json:"client"`
	Sec    string    `json:"security"`
	RTTms  float64   `json:"rtt_ms"`
	Rate   float64   `json:"saturation_msgs_per_s"`
	Rates  []float64 `json:"runs"`
	// CPUus is the measuring process's CPU time per message (median of
	// the runs), -1 for nodemailer, which runs in Node.
	CPUus float64 `json:"client_cpu_us_per_msg"`
	// SinkCPUus is the sinks' process's CPU time per message over whole
	// runs (connecting included), -1 for nodemailer or where unknown.
	SinkCPUus float64 `json:"sink_cpu_us_per_msg"`

	spec latSpec
	rtt  time.Duration
	err  error
}

// latReport is what the latency section produced.
type latReport struct {
	Plan    latPlan
	Sats    []latSat
	Points  []latPoint
	Skipped map[string]string // client -> why and how to install
	Took    time.Duration
}

func (r *latReport) sat(client latSpec, sec string, rtt time.Duration) (latSat, bool) {
	for _, s := range r.Sats {
		if s.spec == client && s.Sec == sec && s.rtt == rtt && s.err == nil {
			return s, true
		}
	}
	return latSat{}, false
}

func (r *latReport) point(client latSpec, sec string, rtt time.Duration, load float64) (latPoint, bool) {
	for _, p := range r.Points {
		if p.spec == client && p.Sec == sec && p.rtt == rtt && p.Load == load && p.err == nil {
			return p, true
		}
	}
	return latPoint{}, false
}

func ms(d time.Duration) float64 { return round(float64(d)/1e6, 3) }

// measureLatency runs the latency section; progress lines go to text,
// and each result to emit.
func measureLatency(ctx context.Context, l *lab, p latPlan, text func(string), emit func(any)) *latReport {
	rep := &latReport{Plan: p, Skipped: map[string]string{}}
	start := time.Now()
	var nodeDir string
	var nodeErr error
	if slices.ContainsFunc(p.Specs, func(s latSpec) bool { return s.Client == latNodemailer }) {
		nodeDir, nodeErr = nodemailerDir()
		if nodeErr != nil {
			rep.Skipped[latNodemailer] = nodeErr.Error()
			text(fmt.Sprintf("latency: %s skipped: %v", latNodemailer, nodeErr))
		}
	}
	seed := uint64(1)
	for _, sec := range p.Secs {
		loads := p.TLSLoads
		if sec == secPlain {
			loads = p.PlainLoad
		}
		for _, rtt := range p.RTTs {
			t, err := l.latTargetFor(sec, rtt)
			if err != nil {
				text(fmt.Sprintf("latency %s RTT %s: %v", sec, fmtRTT(rtt), err))
				rep.Sats = append(rep.Sats, latSat{Sec: sec, rtt: rtt, err: err})
				continue
			}
			for _, s := range p.Specs {
				if ctx.Err() != nil {
					rep.Took = time.Since(start)
					return rep
				}
				if s.Client == latNodemailer && nodeErr != nil {
					continue
				}
				// The control is offered smtpkit's rates: the same load.
				base := 0.0
				if s.Client == latWire {
					for _, o := range p.Specs {
						if v, ok := rep.sat(o, sec, rtt); ok && o.Client == latSender && o.Curve {
							base = v.Rate
							break
						}
					}
				}
				sat, points := measureLatClient(ctx, l, p, s, t, rtt, loads, base, nodeDir, &seed)
				text(satLine(sat))
				rep.Sats = append(rep.Sats, sat)
				if sat.err == nil {
					emit(sat)
				}
				for _, pt := range points {
					text(pointLine(pt))
					rep.Points = append(rep.Points, pt)
					if pt.err == nil {
						emit(pt)
					}
				}
			}
		}
	}
	rep.Took = time.Since(start)
	return rep
}

// measureLatClient measures one client's saturation at t, then its
// latency at each load: a fraction of base when base > 0, else of its
// own saturation.
func measureLatClient(ctx context.Context, l *lab, p latPlan, s latSpec, t latTarget, rtt time.Duration, loads []float64, base float64, nodeDir string, seed *uint64) (latSat, []latPoint) {
	sat := latSat{Client: s.label(), Sec: t.sec, RTTms: float64(rtt) / 1e6, spec: s, rtt: rtt}
	var points []latPoint
	if s.Client == latNodemailer {
		np, err := startNodePool(ctx, nodeDir, s, t)
		if err != nil {
			sat.err = err
			return sat, nil
		}
		defer np.close()
		for range p.Sat.Runs {
			r, err := np.saturate(satCallers(s), p.Sat)
			if err != nil {
				sat.err = err
				return sat, nil
			}
			sat.Rates = append(sat.Rates, round(r, 1))
		}
		sat.Rate, sat.CPUus, sat.SinkCPUus = median(sat.Rates), -1, -1
		if !s.Curve {
			return sat, nil
		}
		points = p.measureLoads(s, t.sec, rtt, sat.Rate, loads, seed, func(rate float64, dur time.Duration, seed uint64) (loadResult, error) {
			return np.open(rate, dur, p.Timeout, seed)
		})
		return sat, points
	}
	sc := scenario{Client: s.label(), Conns: max(s.Conns, 1), Window: s.Window}
	var cpus, sinkCPUs []float64
	for range p.Sat.Runs {
		var lr *latRunner
		sink0 := l.sinkCPU()
		smp, err := runOnceWith(ctx, sc, p.Sat, func(ctx context.Context) (runner, error) {
			c, err := newLatClient(ctx, s, t)
			if err != nil {
				return nil, err
			}
			lr = &latRunner{c: c, callers: satCallers(s)}
			return lr, nil
		})
		if err != nil {
			sat.err = err
			return sat, nil
		}
		sat.Rates = append(sat.Rates, round(smp.rate, 1))
		cpus = append(cpus, smp.cpu/1e3)
		if sink1 := l.sinkCPU(); sink0 >= 0 && sink1 >= 0 && lr.q != nil && lr.q.done.Load() > 0 {
			sinkCPUs = append(sinkCPUs, float64(sink1-sink0)/1e3/float64(lr.q.done.Load()))
		}
	}
	sat.Rate, sat.CPUus, sat.SinkCPUus = median(sat.Rates), round(median(cpus), 1), -1
	if len(sinkCPUs) > 0 {
		sat.SinkCPUus = round(median(sinkCPUs), 1)
	}
	if !s.Curve {
		return sat, nil
	}
	c, err := newLatClient(ctx, s, t)
	if err != nil {
		sat.err = err
		return sat, nil
	}
	defer c.close()
	// Warm up (pools dial) at a quarter of saturation.
	openLoop(ctx, c, sat.Rate/4, 200*time.Millisecond, p.Timeout, p.MaxOpen, 0)
	if base <= 0 {
		base = sat.Rate
	}
	points = p.measureLoads(s, t.sec, rtt, base, loads, seed, func(rate float64, dur time.Duration, seed uint64) (loadResult, error) {
		return openLoop(ctx, c, rate, dur, p.Timeout, p.MaxOpen, seed), nil
	})
	return sat, points
}

// measureLoads offers each fraction in loads of the saturation rate sat
// through offer. The load of the targets, p.RepeatLoad, is offered
// p.Repeats times and the run with the median p99 is kept (one stall of
// a shared machine should not decide a target); the others' p99 are
// listed with it.
func (p latPlan) measureLoads(s latSpec, sec string, rtt time.Duration, sat float64, loads []float64, seed *uint64,
	offer func(rate float64, dur time.Duration, seed uint64) (loadResult, error)) []latPoint {
	var points []latPoint
	for _, load := range loads {
		reps := 1
		if load == p.RepeatLoad {
			reps = max(1, p.Repeats)
		}
		var runs []latPoint
		for range reps {
			*seed++
			rate := load * sat
			res, err := offer(rate, p.pointDur(rate), *seed)
			runs = append(runs, newLatPoint(s, sec, rtt, load, res, err))
		}
		if len(runs) == 1 {
			points = append(points, runs[0])
			continue
		}
		var p99s []float64
		for _, r := range runs {
			p99s = append(p99s, r.P99ms)
		}
		slow := func(v float64) float64 {
			if v < 0 {
				return math.Inf(1)
			}
			return v
		}
		slices.SortStableFunc(runs, func(a, b latPoint) int { return cmpFloat(slow(a.P99ms), slow(b.P99ms)) })
		pt := runs[len(runs)/2]
		pt.P99Runs = p99s
		points = append(points, pt)
	}
	return points
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pointDur is how long a load point offers rate: long enough for
// p.Samples Sends, within bounds.
func (p latPlan) pointDur(rate float64) time.Duration {
	d := time.Duration(float64(p.Samples) / rate * 1e9)
	return min(max(d, p.MinDur), p.MaxDur)
}

func newLatPoint(s latSpec, sec string, rtt time.Duration, load float64, res loadResult, err error) latPoint {
	pt := latPoint{Client: s.label(), Sec: sec, RTTms: float64(rtt) / 1e6, Load: load, Offered: round(res.Rate, 1),
		N: len(res.Lat) + res.Failed, Failed: res.Failed, MaxLateMs: ms(res.MaxLate), spec: s, rtt: rtt, err: err}
	if err != nil {
		return pt
	}
	if pt.N == 0 {
		pt.err = errors.New("no Send offered")
		return pt
	}
	for _, q := range []struct {
		q   float64
		dst *float64
	}{{0.5, &pt.P50ms}, {0.99, &pt.P99ms}, {0.999, &pt.P999ms}} {
		if v, ok := res.quantile(q.q); ok {
			*q.dst = ms(v)
		} else {
			*q.dst = -1
		}
	}
	pt.firstErr = res.FirstEr
	return pt
}

func satLine(s latSat) string {
	head := fmt.Sprintf("latency %-9s %6s  %-28s saturation", s.Sec, fmtRTT(s.rtt), s.spec.label())
	if s.err != nil {
		return head + "  error: " + s.err.Error()
	}
	return fmt.Sprintf("%s %9s msg/s %v  CPU/msg: client %.1f µs, sink %.1f µs", head, fmtInt(s.Rate), s.Rates, s.CPUus, s.SinkCPUus)
}

func fmtLat(v float64) string {
	if v < 0 {
		return "fail"
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func pointLine(p latPoint) string {
	head := fmt.Sprintf("latency %-9s %6s  %-28s %4.0f%% %9s msg/s", p.Sec, fmtRTT(p.rtt), p.spec.label(), 100*p.Load, fmtInt(p.Offered))
	if p.err != nil {
		return head + "  error: " + p.err.Error()
	}
	s := fmt.Sprintf("%s  p50 %s  p99 %s  p99.9 %s ms  (n=%d, generator late by up to %s ms", head, fmtLat(p.P50ms), fmtLat(p.P99ms), fmtLat(p.P999ms), p.N, fmtLat(p.MaxLateMs))
	if p.Failed > 0 {
		s += fmt.Sprintf(", %d failed: %s", p.Failed, p.firstErr)
	}
	if len(p.P99Runs) > 1 {
		s += fmt.Sprintf("; the median p99 of runs with %v", p.P99Runs)
	}
	return s + ")"
}

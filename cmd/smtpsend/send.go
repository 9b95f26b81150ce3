package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// source is one message to send.
type source struct {
	name string
	open func() (io.ReadCloser, error)
}

// fileSources returns the messages named on the command line, checking
// now that each can be opened, so that a typo is a usage error (exit 64)
// before anything is sent. "-" is standard input.
func fileSources(names []string, stdin io.Reader, con *console) ([]source, error) {
	srcs := make([]source, 0, len(names))
	for _, name := range names {
		if name == "-" {
			if stdin == nil {
				return nil, usagef("no standard input to read")
			}
			if isTerminal(stdin) {
				con.Errf("reading the message from the terminal; end it with Ctrl-D\n")
			}
			srcs = append(srcs, source{name: "<stdin>", open: func() (io.ReadCloser, error) { return io.NopCloser(stdin), nil }})
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			return nil, usagef("%v", err)
		}
		st, err := f.Stat()
		f.Close()
		if err != nil {
			return nil, usagef("%v", err)
		}
		if st.IsDir() {
			return nil, usagef("%s is a directory, not a message", name)
		}
		path := name
		srcs = append(srcs, source{name: name, open: func() (io.ReadCloser, error) { return os.Open(path) }})
	}
	return srcs, nil
}

// result is what became of one message.
type result struct {
	src    source
	out    *smtp.Outcome
	err    error
	status status
}

// job is one run of the sender over a list of messages.
type job struct {
	o       *options
	cfg     sender.Config
	con     *console
	srcs    []source
	connect string // how connections are made, for the exchange

	// The counters, read by the progress line while workers add to them.
	done, sent, refused, deferred, config, unknown atomic.Int64
}

// run sends every message and returns the results, in the order given.
// One message prints the SMTP exchange (from the audit events) and its
// outcome; several print one status line each as they finish, a progress
// line on a terminal, and a summary table.
func (j *job) run(ctx context.Context) []result {
	single := len(j.srcs) == 1
	var hooks []func(smtp.Event)
	if single {
		j.con.Outf("--- SMTP exchange (from the sender's audit events) ---\n")
		p := &exchangePrinter{c: j.con, connect: j.connect}
		hooks = append(hooks, p.event)
	}
	if j.o.verbose {
		h := slog.NewTextHandler(j.con.ErrWriter(), &slog.HandlerOptions{Level: slog.LevelDebug})
		hooks = append(hooks, smtp.SlogAudit(slog.New(h)))
	}
	if len(hooks) > 0 {
		j.cfg.Options.Audit = func(e smtp.Event) {
			for _, h := range hooks {
				h(e)
			}
		}
	}

	results := make([]result, len(j.srcs))
	snd, err := newSender(j.cfg)
	if err != nil {
		for i, src := range j.srcs {
			results[i] = result{src: src, err: err, status: classify(err)}
		}
		return results
	}
	defer snd.Close()

	start := time.Now()
	stopProgress := func() {}
	if !single && isTerminal(j.con.err) {
		stopProgress = j.showProgress(start)
	}

	// Send waits for a session instead of queueing: enough callers to
	// fill every session's pipeline, and no more.
	workers := min(len(j.srcs), j.cfg.MaxConns*max(j.cfg.MaxInFlight, 1))
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				results[i] = j.sendOne(ctx, snd, j.srcs[i])
				j.count(results[i].status)
				if !single {
					j.report(results[i])
				}
			}
		})
	}
	for i := range j.srcs {
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)

	// QUIT every session; after an interrupt, just close them.
	if ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, j.o.timeout)
		snd.Shutdown(sctx)
		cancel()
	}
	snd.Close()
	stopProgress()

	if !single {
		j.summary(elapsed)
	}
	return results
}

// newSender is sender.New, whose error is always the setup's: only a
// Config without Addr or with a bad Security fails there. An error that
// does not say so itself is wrapped in an *smtp.Error of Op config.
func newSender(cfg sender.Config) (*sender.Sender, error) {
	snd, err := sender.New(cfg)
	if err != nil && !smtp.IsConfig(err) {
		err = &smtp.Error{Op: smtp.OpConfig, Kind: smtp.KindInvalidInput, Message: "invalid sender configuration", Err: err}
	}
	return snd, err
}

// sendOne sends one message within -timeout of its turn.
//
// -timeout is the message's own time: it starts when a session first
// reads the message's body, so a file waiting behind others on a busy
// connection is not timed out by the wait. The wait itself is bounded
// too: by -timeout for each message that can be ahead of it on its
// connection. Connecting is bounded by -timeout (the sender's
// DialTimeout).
func (j *job) sendOne(ctx context.Context, snd *sender.Sender, src source) result {
	if err := ctx.Err(); err != nil {
		return result{src: src, err: fmt.Errorf("not sent: %w", err), status: statusDeferred}
	}
	f, err := src.open()
	if err != nil {
		// It could be opened when smtpsend started: it changed since.
		// Nothing was sent.
		return result{src: src, err: err, status: statusDeferred}
	}
	defer f.Close()
	conns := max(j.cfg.MaxConns, 1)
	ahead := (len(j.srcs) + conns - 1) / conns
	ctx, cancel := context.WithTimeout(ctx, j.o.timeout*time.Duration(ahead))
	defer cancel()
	turn := newTurnContext(ctx, j.o.timeout)
	defer turn.stop()
	var body io.Reader = &turnReader{r: f, turn: turn}
	if sk, ok := f.(io.Seeker); ok {
		// The sender rewinds a seekable body to write it again.
		body = struct {
			io.Reader
			io.Seeker
		}{body, sk}
	}
	env := smtp.Envelope{From: j.o.from, To: j.o.to}
	out, err := snd.Send(turn, env, body)
	return result{src: src, out: out, err: err, status: classify(err)}
}

// turnReader starts its message's clock at the first read.
type turnReader struct {
	r    io.Reader
	turn *turnContext
}

func (t *turnReader) Read(p []byte) (int, error) {
	t.turn.start()
	return t.r.Read(p)
}

// turnContext is a message's context: it ends with its parent, or with
// context.DeadlineExceeded d after start was first called.
type turnContext struct {
	context.Context
	d    time.Duration
	done chan struct{}
	// stopParent stops watching the parent.
	stopParent func() bool

	mu    sync.Mutex // guards the fields below
	err   error
	timer *time.Timer
}

func newTurnContext(parent context.Context, d time.Duration) *turnContext {
	t := &turnContext{Context: parent, d: d, done: make(chan struct{})}
	t.stopParent = context.AfterFunc(parent, func() { t.end(parent.Err()) })
	return t
}

func (t *turnContext) Done() <-chan struct{} { return t.done }

func (t *turnContext) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Deadline is the parent's: the turn's own deadline is not known before
// the turn comes.
func (t *turnContext) Deadline() (time.Time, bool) { return t.Context.Deadline() }

func (t *turnContext) start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil && t.err == nil {
		t.timer = time.AfterFunc(t.d, func() { t.end(context.DeadlineExceeded) })
	}
}

func (t *turnContext) end(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		close(t.done)
	}
}

func (t *turnContext) stop() {
	t.stopParent()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
	}
}

func (j *job) count(s status) {
	j.done.Add(1)
	switch s {
	case statusSent:
		j.sent.Add(1)
	case statusRefused:
		j.refused.Add(1)
	case statusDeferred:
		j.deferred.Add(1)
	case statusConfig:
		j.config.Add(1)
	default:
		j.unknown.Add(1)
	}
}

// report prints one message's status line on standard output, and the
// error, with what it means, on standard error. The line starts with the
// status so a script can pick out, say, the deferred ones.
func (j *job) report(r result) {
	if r.err == nil {
		j.con.Outf("%-8s %s: %s\n", r.status, r.src.name, outcomeSummary(r.out))
		return
	}
	j.con.Outf("%-8s %s: failed at %s: %v\n", r.status, r.src.name, step(r.err), r.err)
	j.explain(r)
}

// explain prints a failed message's error on standard error: the step,
// the error, whether a retry can help, and a hint when one applies.
func (j *job) explain(r result) {
	j.con.Errf("%s: failed at %s: %v\n", r.src.name, step(r.err), r.err)
	j.con.Errf("%s (exit %d)\n", advice(r.status), r.status.exitCode())
	if h := hint(r.err, j.o); h != "" {
		j.con.Errf("hint: %s\n", h)
	}
}

func outcomeSummary(out *smtp.Outcome) string {
	if out == nil {
		return "accepted"
	}
	if out.QueueID != "" {
		return "queued as " + out.QueueID
	}
	return out.Reply.String()
}

// printOutcome prints the outcome of a single message.
func (j *job) printOutcome(r result) {
	j.con.Outf("\n--- outcome ---\n")
	if r.err != nil {
		j.con.Outf("status:    %s (exit %d)\n", r.status, r.status.exitCode())
		j.con.Outf("failed at: %s\n", step(r.err))
		if rt := replyText(r.err); rt != "" {
			j.con.Outf("reply:     %s\n", rt)
		}
		j.explain(r)
		return
	}
	j.con.Outf("status:    %s\n", r.status)
	qid := r.out.QueueID
	if qid == "" {
		qid = "(none in the server's reply)"
	}
	j.con.Outf("queue id:  %s\n", qid)
	j.con.Outf("accepted:  %s\n", strings.Join(r.out.Accepted, ", "))
	for _, rs := range r.out.Refused {
		j.con.Outf("refused:   %s (%s)\n", rs.Address, rs.Reply)
	}
	j.con.Outf("reply:     %s\n", r.out.Reply)
}

// summary prints the table at the end of a run of several messages.
func (j *job) summary(elapsed time.Duration) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	rate := float64(j.sent.Load()) / elapsed.Seconds()
	fmt.Fprintln(tw, "messages\tsent\trefused\tdeferred\tconfig\tunknown\ttime\tmsg/s")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%s\t%.1f\n", j.done.Load(), j.sent.Load(), j.refused.Load(),
		j.deferred.Load(), j.config.Load(), j.unknown.Load(), elapsed.Round(time.Millisecond), rate)
	tw.Flush()
	j.con.Outf("\n%s", b.String())
}

// showProgress keeps a progress line on standard error up to date until
// the returned function is called, which removes it.
func (j *job) showProgress(start time.Time) (stop func()) {
	line := func() string {
		secs := max(time.Since(start).Seconds(), 1e-3)
		return fmt.Sprintf("%d/%d done: %d sent, %d refused, %d deferred, %d config, %d unknown, %.1f msg/s",
			j.done.Load(), len(j.srcs), j.sent.Load(), j.refused.Load(), j.deferred.Load(), j.config.Load(), j.unknown.Load(),
			float64(j.sent.Load())/secs)
	}
	j.con.StartProgress(line, isTerminal(j.con.out))
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				j.con.Redraw()
			case <-quit:
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		j.con.StopProgress()
	}
}

// exitCode returns the exit status for results: the worst message
// decides.
func exitCode(results []result) int {
	w := statusSent
	for _, r := range results {
		w = worst(w, r.status)
	}
	return w.exitCode()
}

package sender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"

	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// ErrOutcomeUnknown is smtp.ErrOutcomeUnknown: a message whose commit
// point was written but whose answer was lost (or whose caller stopped
// waiting after it was written). It may or may not have been delivered;
// the sender never sends it again.
var ErrOutcomeUnknown = smtp.ErrOutcomeUnknown

// ErrClosed is returned by Send after Shutdown or Close.
var ErrClosed = errors.New("sender: closed")

// Sender sends messages over a bounded set of SMTP sessions, each owned
// by one goroutine. It is safe for concurrent use; share one per server.
type Sender struct {
	cfg Config
	// reqs hands a request to a session with room for it. Unbuffered:
	// there is no queue; waiting Sends block here in FIFO order.
	reqs chan *request
	sem  *semaphore.Weighted // one unit per session goroutine
	// ctx is cancelled by Close: it interrupts every session's I/O.
	ctx    context.Context
	cancel context.CancelFunc
	// shutdown is closed by Shutdown and Close: sessions finish their
	// in-flight work and QUIT.
	shutdown     chan struct{}
	shutdownOnce sync.Once
	wg           sync.WaitGroup // every session goroutine

	mu sync.Mutex // guards the fields below
	// closed refuses new Sends.
	closed bool
	// dialFailures counts consecutive failed dials; lastDialErr is the
	// latest. At cfg.MaxDialFailures Send fails fast while one session
	// goroutine (probing) keeps trying.
	dialFailures int
	lastDialErr  error
	probing      bool
	bo           backoff.BackOff
	// dialEvent is closed (and replaced) when a dial fails, waking Sends
	// that wait for a session so they can dial again or fail fast.
	dialEvent chan struct{}

	stats counters
}

type counters struct {
	open, idle, waiting                                 atomic.Int64
	dials, dialFailures                                 atomic.Int64
	sent, failed, replayed, unknown, seen421, withdrawn atomic.Int64
}

// Stats is a snapshot of a Sender's counters.
type Stats struct {
	// Open is the number of sessions (dialing or connected); Idle those
	// with nothing in flight.
	Open, Idle int
	// Waiting is the number of Sends waiting for a session.
	Waiting int
	// Dials and DialFailures count connection attempts (each includes
	// TLS, greeting, EHLO and AUTH).
	Dials, DialFailures int64
	// Sent counts messages the server accepted; Failed those it refused
	// or that failed otherwise (including bad input); Unknown those
	// answered with ErrOutcomeUnknown.
	Sent, Failed, Unknown int64
	// Replayed counts requests written again on a new session after a
	// 421 or a lost session before their commit point.
	Replayed int64
	// Seen421 counts sessions the server closed with 421.
	Seen421 int64
	// Withdrawn counts requests whose caller's context ended before
	// they were written.
	Withdrawn int64
}

// New returns a Sender for cfg. It dials nothing until the first Send.
func New(cfg Config) (*Sender, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{
		cfg:       cfg,
		reqs:      make(chan *request),
		sem:       semaphore.NewWeighted(int64(cfg.MaxConns)),
		ctx:       ctx,
		cancel:    cancel,
		shutdown:  make(chan struct{}),
		bo:        cfg.Backoff(),
		dialEvent: make(chan struct{}),
	}
	return s, nil
}

// Request states; the request's caller and its session goroutine race
// only on the first transition out of stQueued.
const (
	stQueued    int32 = iota // not yet written; the caller may withdraw it
	stWriting                // taken by a session: may be committed
	stWithdrawn              // the caller gave up before it was written
)

type request struct {
	ctx    context.Context
	env    smtp.Envelope
	body   *replayableBody
	result chan result // buffered (1): the answer never blocks
	state  atomic.Int32

	// Owned by the session goroutine that holds the request.
	tx       *smtp.Tx
	attempts int
	lastErr  error
	answered bool
}

type result struct {
	out *smtp.Outcome
	err error
}

// replayableBody counts what was read so a request can be written again
// if nothing was read yet, or if the body is an io.Seeker.
type replayableBody struct {
	r     io.Reader
	n     int64
	start int64
	seek  io.Seeker
}

func (b *replayableBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	return n, err
}

// rewind makes the body readable from its start again.
func (b *replayableBody) rewind() bool {
	if b.n == 0 {
		return true
	}
	if b.seek == nil {
		return false
	}
	if _, err := b.seek.Seek(b.start, io.SeekStart); err != nil {
		return false
	}
	b.n = 0
	return true
}

func newRequest(ctx context.Context, env smtp.Envelope, body io.Reader) *request {
	rb := &replayableBody{r: body}
	if s, ok := body.(io.Seeker); ok {
		if off, err := s.Seek(0, io.SeekCurrent); err == nil {
			rb.seek, rb.start = s, off
		}
	}
	if env.Size <= 0 {
		switch b := body.(type) {
		case *bytes.Reader:
			env.Size = int64(b.Len())
		case *strings.Reader:
			env.Size = int64(b.Len())
		case *bytes.Buffer:
			env.Size = int64(b.Len())
		}
	}
	return &request{ctx: ctx, env: env, body: rb, result: make(chan result, 1)}
}

// Send delivers one message through one of the sender's sessions and
// returns exactly one answer. It waits for a free session (dialing one
// when fewer than MaxConns are open) until ctx ends; there is no queue.
//
// If ctx ends before the message was written, Send returns ctx.Err() and
// the message is withdrawn. If it ends after, Send returns an error
// wrapping both ctx.Err() and [ErrOutcomeUnknown]; the session finishes
// the transaction and its real outcome still reaches the audit hook.
// Other errors are [*smtp.Error] values, classified by smtp.IsTemporary
// and smtp.IsPermanent. A message is never written again after its
// commit point: after a 421 or a lost session, only requests whose
// commit point was not written (or that got the 421) are replayed on a
// new session, and only if their body is unread or an io.Seeker.
func (s *Sender) Send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error) {
	if body == nil {
		return nil, &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindInvalidInput, Message: "nil body"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := newRequest(ctx, env, body)
	if err := s.hand(ctx, req); err != nil {
		return nil, err
	}
	select {
	case r := <-req.result:
		return r.out, r.err
	case <-ctx.Done():
		select {
		case r := <-req.result:
			return r.out, r.err
		default:
		}
		if req.state.CompareAndSwap(stQueued, stWithdrawn) {
			s.stats.withdrawn.Add(1)
			return nil, ctx.Err()
		}
		return nil, &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindIO,
			Message: "the caller's context ended after the message was written",
			Err:     fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())}
	}
}

// hand gives req to a session, dialing one if there is room.
func (s *Sender) hand(ctx context.Context, req *request) error {
	s.stats.waiting.Add(1)
	defer s.stats.waiting.Add(-1)
	for {
		ev, err := s.admit()
		if err != nil {
			return err
		}
		select {
		case s.reqs <- req:
			return nil
		default:
		}
		if s.sem.TryAcquire(1) {
			s.wg.Add(1)
			s.stats.open.Add(1)
			go s.session()
		}
		select {
		case s.reqs <- req:
			return nil
		case <-ctx.Done():
			s.stats.withdrawn.Add(1)
			return ctx.Err()
		case <-ev:
		case <-s.shutdown:
			return ErrClosed
		}
	}
}

// admit refuses Sends after Shutdown, and fails them fast after
// MaxDialFailures consecutive failed dials. It returns the channel that
// signals the next failed dial.
func (s *Sender) admit() (chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.dialFailures >= s.cfg.MaxDialFailures {
		return nil, &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO,
			Message: fmt.Sprintf("%d consecutive dials failed; failing fast while a probe retries", s.dialFailures),
			Err:     s.lastDialErr}
	}
	return s.dialEvent, nil
}

// dialDelay is how long a new session waits before dialing: nothing
// after a success, the backoff after failures.
func (s *Sender) dialDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialFailures == 0 {
		return 0
	}
	d := s.bo.NextBackOff()
	if d == backoff.Stop {
		d = time.Second
	}
	return d
}

// dialFailed records a failed dial and wakes waiting Sends. It reports
// whether the caller should keep probing (it is the one prober).
func (s *Sender) dialFailed(err error) (probe bool) {
	s.stats.dialFailures.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialFailures++
	s.lastDialErr = err
	close(s.dialEvent)
	s.dialEvent = make(chan struct{})
	if s.dialFailures >= s.cfg.MaxDialFailures && !s.probing {
		s.probing = true
		return true
	}
	return false
}

func (s *Sender) dialSucceeded(wasProbe bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialFailures = 0
	s.lastDialErr = nil
	s.bo.Reset()
	if wasProbe {
		s.probing = false
	}
}

func (s *Sender) stopProbing() {
	s.mu.Lock()
	s.probing = false
	s.mu.Unlock()
}

// sleep waits d, or until the sender shuts down; it reports whether the
// full time passed.
func (s *Sender) sleep(d time.Duration, extra <-chan struct{}) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.shutdown:
	case <-s.ctx.Done():
	case <-extra:
	}
	return false
}

// connect dials, greets, upgrades and authenticates one session.
func (s *Sender) connect() (*smtp.Client, error) {
	s.stats.dials.Add(1)
	cfg := &s.cfg
	ctx, cancel := context.WithTimeout(s.ctx, cfg.DialTimeout)
	defer cancel()
	var t transport.Transport
	var err error
	switch {
	case cfg.Dial != nil:
		t, err = cfg.Dial(ctx)
	case cfg.Security == ImplicitTLS:
		t, err = transport.DialTLS(ctx, cfg.Addr, cfg.TLSConfig)
	default:
		t, err = transport.Dial(ctx, cfg.Addr)
	}
	if err != nil {
		return nil, &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: err}
	}
	opts := cfg.Options
	if opts.ServerName == "" && cfg.Addr != "" {
		opts.ServerName = cfg.Addr
	}
	var c *smtp.Client
	if cfg.Security == StartTLS {
		st, ok := t.(transport.StartTLSCapable)
		if !ok {
			t.Close()
			return nil, &smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindInvalidInput, Message: "Config.Dial returned a transport that cannot be upgraded (wrap it with transport.Upgradable)"}
		}
		tcfg := cfg.TLSConfig
		if (tcfg == nil || tcfg.ServerName == "") && cfg.Addr != "" {
			tcfg = transport.ClientTLSConfig(tcfg, cfg.Addr)
		}
		c, err = smtp.ConnectStartTLS(ctx, st, cfg.LocalName, tcfg, &opts)
	} else {
		c, err = smtp.Connect(ctx, t, cfg.LocalName, &opts)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Credentials != nil {
		cr, err := cfg.Credentials(ctx)
		if err != nil {
			c.Close()
			return nil, &smtp.Error{Op: smtp.OpAuth, Kind: smtp.KindAuth, Message: "credentials provider failed", Err: err}
		}
		if cr.Mechanism == "" {
			err = c.Login(ctx, cr.Username, cr.Secret)
		} else {
			err = c.LoginWith(ctx, cr.Mechanism, cr.Username, cr.Secret)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Shutdown stops accepting Sends (they return ErrClosed), lets the
// sessions finish their in-flight work and QUIT, and waits for them
// until ctx ends; then it closes what is left, like Close, and returns
// ctx.Err(). It is idempotent.
func (s *Sender) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}

// Close aborts at once: every session is closed without QUIT, requests
// in flight are answered (ErrOutcomeUnknown for those past their commit
// point), and Close waits for every goroutine the Sender started. It is
// idempotent.
func (s *Sender) Close() error {
	s.beginShutdown()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Sender) beginShutdown() {
	s.shutdownOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.shutdown)
	})
}

// Stats returns a snapshot of the counters.
func (s *Sender) Stats() Stats {
	return Stats{
		Open:         int(s.stats.open.Load()),
		Idle:         int(s.stats.idle.Load()),
		Waiting:      int(s.stats.waiting.Load()),
		Dials:        s.stats.dials.Load(),
		DialFailures: s.stats.dialFailures.Load(),
		Sent:         s.stats.sent.Load(),
		Failed:       s.stats.failed.Load(),
		Unknown:      s.stats.unknown.Load(),
		Replayed:     s.stats.replayed.Load(),
		Seen421:      s.stats.seen421.Load(),
		Withdrawn:    s.stats.withdrawn.Load(),
	}
}

package sender_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

func newGoSMTPSender(t *testing.T, opts testpeers.GoSMTPOptions, cfg sender.Config) (*testpeers.GoSMTPServer, *sender.Sender) {
	t.Helper()
	if opts.Mode == testpeers.Plain && cfg.Security == sender.ImplicitTLS {
		opts.Mode = testpeers.ImplicitTLS
	}
	srv := testpeers.GoSMTP(t, opts)
	cfg.Addr = srv.Addr()
	if opts.Mode != testpeers.Plain {
		cfg.Options.TLSConfig = srv.Cert().ClientConfig()
	}
	s, err := sender.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return srv, s
}

func msg(i int) string {
	return fmt.Sprintf("Subject: message %d\r\n\r\nHello %d.\r\n", i, i)
}

func TestSendOne(t *testing.T) {
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Auth: map[string]string{"u": "p"}, AuthRequired: true}, sender.Config{
		Credentials: func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "u", Secret: "p"}, nil
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(1)))
	require.NoError(t, err)
	assert.NotEmpty(t, out.QueueID)
	require.Len(t, srv.Messages(), 1)
	assert.Equal(t, "u", srv.Messages()[0].User)
	assert.Equal(t, msg(1), string(srv.Messages()[0].Data))
	require.NoError(t, s.Shutdown(ctx))
	_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(2)))
	assert.ErrorIs(t, err, sender.ErrClosed)
	assert.Zero(t, s.Stats().Open)
}

func TestManyCallersFewConns(t *testing.T) {
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{DiscardBodies: true}, sender.Config{MaxConns: 4, MaxInFlight: 8})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var ok, answers atomic.Int64
	for g := 0; g < 500; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(i)))
				answers.Add(1)
				if err == nil {
					ok.Add(1)
				} else {
					t.Errorf("send: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(2500), answers.Load())
	assert.Equal(t, int64(2500), ok.Load())
	assert.Equal(t, int64(2500), srv.Count())
	assert.LessOrEqual(t, srv.MaxSessions(), int64(4))
	st := s.Stats()
	assert.Equal(t, int64(2500), st.Sent)
	require.NoError(t, s.Shutdown(ctx))
}

func TestCancellationStorm(t *testing.T) {
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{DiscardBodies: true, Delay: func(stage string) time.Duration {
		if stage == "DATA" {
			return time.Duration(rand.IntN(3)) * time.Millisecond
		}
		return 0
	}}, sender.Config{MaxConns: 3, MaxInFlight: 4})
	var wg sync.WaitGroup
	var sent, withdrawn, unknown atomic.Int64
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(20000))*time.Microsecond)
				_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(i)))
				cancel()
				switch {
				case err == nil:
					sent.Add(1)
				case errors.Is(err, sender.ErrOutcomeUnknown):
					assert.ErrorIs(t, err, context.DeadlineExceeded)
					unknown.Add(1)
				case errors.Is(err, context.DeadlineExceeded):
					withdrawn.Add(1)
				default:
					t.Errorf("unexpected error: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("sent %d, withdrawn %d, unknown %d", sent.Load(), withdrawn.Load(), unknown.Load())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The same sender still works after the storm.
	_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(0)))
	require.NoError(t, err)
	sent.Add(1)
	require.NoError(t, s.Shutdown(ctx))
	// Everything reported sent was delivered; withdrawn ones were not.
	delivered := srv.Count()
	assert.GreaterOrEqual(t, delivered, sent.Load())
	assert.LessOrEqual(t, delivered, sent.Load()+unknown.Load())
	t.Logf("stats: %+v", s.Stats())
}

// A refused password fails fast after one login, not MaxDialFailures of
// them: repeated bad logins can lock an account.
func TestWrongPasswordFailsFast(t *testing.T) {
	_, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Auth: map[string]string{"u": "right"}, AuthRequired: true}, sender.Config{
		Credentials: func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "u", Secret: "wrong"}, nil
		},
		MaxDialFailures: 5,
		Backoff:         func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(i)))
		var se *smtp.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpAUTH, se.Op)
		assert.True(t, smtp.IsConfig(err), "a refused login is the setup's: %v", err)
		assert.NotContains(t, err.Error(), "wrong")
	}
	assert.Equal(t, int64(1), s.Stats().Dials)
}

// gatedBody is a body whose first Read closes opened (if set) and waits
// until gate is closed: a message streamed from a slow source. It is not
// a Seeker.
type gatedBody struct {
	gate   <-chan struct{}
	opened chan struct{}
	r      io.Reader
	once   bool
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if !b.once {
		b.once = true
		if b.opened != nil {
			close(b.opened)
		}
		<-b.gate
	}
	return b.r.Read(p)
}

// TestNoHeadOfLineBehindSlowBody: two sessions, both busy; a Send whose
// body is slow to read and a fast Send come. One session takes the slow
// Send and blocks reading its body; the fast Send goes to the other
// session, rather than waiting behind the slow body on the first (a
// session takes one attempt at a time, just before writing it). With a
// window of 1 both Sends wait until the sessions come free; with a window
// of 4 a session waiting for its reply may take them at once (a new
// attempt interrupts its wait), or not if that wait has lasted too long:
// either way the fast Send is answered while the slow body is still
// being read.
func TestNoHeadOfLineBehindSlowBody(t *testing.T) {
	for _, window := range []int{1, 4} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) {
			busyGate := make(chan struct{})
			var datas atomic.Int64
			srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Delay: func(stage string) time.Duration {
				if stage == "DATA" && datas.Add(1) <= 2 {
					<-busyGate // the first two messages hold their sessions
				}
				return 0
			}}, sender.Config{Security: sender.InsecurePlaintext, MaxConns: 2, MaxInFlight: window})
			env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang guard
			defer cancel()
			slowGate := make(chan struct{})
			var openGate sync.Once
			t.Cleanup(func() { openGate.Do(func() { close(slowGate) }) }) // before the sender's Close
			busy := make(chan error, 2)
			for i := range 2 {
				go func() { _, err := s.Send(ctx, env, strings.NewReader(msg(i))); busy <- err }()
				require.Eventually(t, func() bool { return datas.Load() == int64(i+1) }, 10*time.Second, time.Millisecond)
			}
			slowDone := make(chan error, 1)
			opened := make(chan struct{})
			go func() {
				_, err := s.Send(ctx, env, &gatedBody{gate: slowGate, opened: opened, r: strings.NewReader(msg(10))})
				slowDone <- err
			}()
			taken := func() bool {
				select {
				case <-opened:
					return true
				default:
					return false
				}
			}
			if window == 1 {
				require.Eventually(t, func() bool { return s.Stats().Waiting == 1 }, 10*time.Second, time.Millisecond)
			} else {
				require.Eventually(t, func() bool { return s.Stats().Waiting == 1 || taken() }, 10*time.Second, time.Millisecond)
			}
			fastDone := make(chan error, 1)
			go func() { _, err := s.Send(ctx, env, strings.NewReader(msg(11))); fastDone <- err }()
			if window == 1 {
				require.Eventually(t, func() bool { return s.Stats().Waiting == 2 }, 10*time.Second, time.Millisecond)
				assert.False(t, taken(), "a session with no room took the slow Send")
			}
			close(busyGate)
			select {
			case err := <-fastDone:
				require.NoError(t, err)
			case err := <-slowDone:
				t.Fatalf("the slow body was read before the fast Send was answered: %v", err)
			case <-ctx.Done():
				t.Fatal("the fast Send waited behind another caller's slow body")
			}
			openGate.Do(func() { close(slowGate) })
			require.NoError(t, <-slowDone)
			require.NoError(t, <-busy)
			require.NoError(t, <-busy)
			assert.EqualValues(t, 4, srv.Count())
		})
	}
}

// TestServerIdleTimeout: the server closes a session left idle for
// 200 ms (go-smtp's ReadTimeout: 421 4.4.2, then close), over implicit
// TLS and over STARTTLS. The session's reader, which reads even when
// nothing is owed, sees the 421 and the close, and the next message goes
// on a new session: delivered, no unknown outcome. (A next command that
// crosses the 421 on the wire gets it as its own answer and is written
// again on a new session: replayed, never lost.)
func TestServerIdleTimeout(t *testing.T) {
	for _, sec := range []sender.Security{sender.ImplicitTLS, sender.StartTLS} {
		t.Run(sec.String(), func(t *testing.T) {
			mode := testpeers.ImplicitTLS
			if sec == sender.StartTLS {
				mode = testpeers.StartTLS
			}
			srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Mode: mode, ReadTimeout: 200 * time.Millisecond},
				sender.Config{Security: sec, MaxConns: 1, MaxInFlight: 8})
			env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for i := range 3 {
				_, err := s.Send(ctx, env, strings.NewReader(msg(i)))
				require.NoError(t, err, "message %d", i)
				require.Eventually(t, func() bool { return srv.Sessions() == 0 }, 10*time.Second, 5*time.Millisecond, "the server's idle timeout")
			}
			st := s.Stats()
			assert.EqualValues(t, 3, srv.Count())
			assert.EqualValues(t, 3, st.Dials, "one session per message: each was closed by the server's idle timeout")
			assert.EqualValues(t, 3, st.Sent)
			assert.LessOrEqual(t, st.Replayed, int64(1), "a 421 crossing the next command is rare")
			assert.Zero(t, st.Unknown)
		})
	}
}

// heldBody is a body whose first Read tells started, then waits for
// release before it returns its data.
type heldBody struct {
	started chan<- struct{}
	release <-chan struct{}
	r       io.Reader
	once    bool
}

func (b *heldBody) Read(p []byte) (int, error) {
	if !b.once {
		b.once = true
		close(b.started)
		<-b.release
	}
	return b.r.Read(p)
}

// TestWithdrawalKeepsConnection: a caller gives up while its body is
// being read. The message is withdrawn (never committed), the session
// abandons it with RSET on a server that answers, and the next message
// goes on the same connection instead of a new one.
func TestWithdrawalKeepsConnection(t *testing.T) {
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{}, sender.Config{Security: sender.InsecurePlaintext, MaxConns: 1})
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	ctx, cancel := context.WithCancel(context.Background())
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(ctx, env, &heldBody{started: started, release: release, r: strings.NewReader(msg(1))})
		done <- err
	}()
	<-started
	cancel()
	err := <-done
	close(release) // the body reader now reports the withdrawal, not EOF
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	_, err = s.Send(ctx2, env, strings.NewReader(msg(2)))
	require.NoError(t, err)
	st := s.Stats()
	assert.EqualValues(t, 1, st.Withdrawn)
	assert.EqualValues(t, 1, st.Dials, "the connection was kept")
	assert.EqualValues(t, 1, srv.Count(), "the withdrawn message was not committed")
	assert.EqualValues(t, 1, srv.Connections())
}

// TestNewPlaintextOptionWithoutInsecureSecurityRefused: a Config that
// asks for plaintext through Options.InsecureAllowPlaintext, but not
// through Security, is refused by New as a setup error (Security is the
// one switch), for every mode but InsecurePlaintext.
func TestNewPlaintextOptionWithoutInsecureSecurityRefused(t *testing.T) {
	for _, sec := range []sender.Security{sender.ImplicitTLS, sender.StartTLS} {
		_, err := sender.New(sender.Config{Addr: "127.0.0.1:1", Security: sec, Options: smtp.Options{InsecureAllowPlaintext: true}})
		require.Error(t, err, sec.String())
		assert.True(t, smtp.IsConfig(err), "%v: %v", sec, err)
	}
	s, err := sender.New(sender.Config{Addr: "127.0.0.1:1", Security: sender.InsecurePlaintext, Options: smtp.Options{InsecureAllowPlaintext: true}})
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

// TestDocumentedCallsOnReturnedValues: the calls the README and godoc
// show, written as a user writes them, on the values the API returns,
// against a real server.
func TestDocumentedCallsOnReturnedValues(t *testing.T) {
	creds := func(context.Context) (sender.Credentials, error) {
		return sender.Credentials{Username: "user", Secret: "pass"}, nil
	}
	_, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Auth: map[string]string{"user": "pass"}}, sender.Config{Credentials: creds})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	require.NoError(t, s.Verify(ctx))
	tctx := sender.WithTag(ctx, "order-8812")
	assert.Equal(t, "order-8812", sender.Tag(tctx))
	out, err := s.Send(tctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	require.NoError(t, err)
	assert.Equal(t, 250, out.Reply.Code)
	assert.NotEmpty(t, out.Reply.Text())

	// Every Stats field is an int64.
	st := s.Stats()
	for _, n := range []int64{st.Open, st.Idle, st.Waiting, st.Dials, st.DialFailures, st.Sent, st.Failed, st.Unknown, st.Replayed, st.Seen421, st.Withdrawn} {
		assert.GreaterOrEqual(t, n, int64(0))
	}
	assert.Equal(t, int64(1), s.Stats().Sent)

	assert.Equal(t, "implicit-tls", sender.ImplicitTLS.String())
	assert.NotContains(t, sender.Credentials{Username: "user", Secret: "pass"}.String(), "pass")

	require.NoError(t, s.Shutdown(ctx))
	_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
	assert.ErrorIs(t, err, sender.ErrClosed)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "idempotent")
}

// keeperBody writes its message through WriteTo and keeps the writer,
// against the io.WriterTo contract.
type keeperBody struct {
	msg  string
	kept io.Writer
}

func (k *keeperBody) Read(p []byte) (int, error) { panic("keeperBody is read through WriteTo") }

func (k *keeperBody) WriteTo(w io.Writer) (int64, error) {
	k.kept = w
	n, err := io.WriteString(w, k.msg)
	return int64(n), err
}

// pausedBody writes the first half of its message, tells started, and
// writes the rest once resume is closed.
type pausedBody struct {
	first, rest     string
	started, resume chan struct{}
}

func (b *pausedBody) Read(p []byte) (int, error) { panic("pausedBody is read through WriteTo") }

func (b *pausedBody) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, b.first)
	if err != nil {
		return int64(n), err
	}
	close(b.started)
	<-b.resume
	m, err := io.WriteString(w, b.rest)
	return int64(n + m), err
}

// TestBodyThatKeepsItsWriterWritesNothingIntoTheNextMessage: a caller's
// body keeps the writer its WriteTo was given and writes to it while the
// next caller's message streams on the same session; the go-smtp server
// gets both messages exactly as their callers wrote them, and the late
// write fails.
func TestBodyThatKeepsItsWriterWritesNothingIntoTheNextMessage(t *testing.T) {
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{}, sender.Config{MaxConns: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	keeper := &keeperBody{msg: msg(1)}
	_, err := s.Send(ctx, env, keeper)
	require.NoError(t, err)
	require.NotNil(t, keeper.kept)

	next := &pausedBody{first: "Subject: message 2\r\n\r\n", rest: "Hello 2.\r\n", started: make(chan struct{}), resume: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(ctx, env, next)
		done <- err
	}()
	<-next.started
	n, err := io.WriteString(keeper.kept, "X-Injected: yes\r\n")
	assert.Error(t, err, "a write through a writer kept past WriteTo")
	assert.Zero(t, n)
	close(next.resume)
	require.NoError(t, <-done)
	msgs := srv.Messages()
	require.Len(t, msgs, 2)
	assert.Equal(t, msg(1), string(msgs[0].Data))
	assert.Equal(t, next.first+next.rest, string(msgs[1].Data))
}

package sender_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// holdingFinalReply starts a go-smtp server that holds the reply to the
// end of its first message's data: holding is closed once the server
// has the whole message, and the reply goes out when release is closed.
func holdingFinalReply(t *testing.T) (srv *testpeers.GoSMTPServer, holding, release chan struct{}) {
	holding, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv = testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Delay: func(stage string) time.Duration {
		if stage == "DATA" {
			once.Do(func() { close(holding) })
			<-release
		}
		return 0
	}})
	return srv, holding, release
}

// TestCallerGaveUpAfterCommitLateEventCarriesMessageIDAndTag: the caller
// gives up while the server holds its final reply (the message is
// committed: ErrOutcomeUnknown). The server then accepts it; the late
// audit event says so, and carries the message's Message-ID, read from
// its header as the body streamed, and the caller's tag (sender.WithTag),
// so the unknown outcome can be matched to it in the log.
func TestCallerGaveUpAfterCommitLateEventCarriesMessageIDAndTag(t *testing.T) {
	srv, holding, release := holdingFinalReply(t)
	var mu sync.Mutex
	var events []smtp.Event
	late := make(chan smtp.Event, 1)
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext,
		Options: smtp.Options{Audit: func(e smtp.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e.Type == smtp.EventMessage {
				late <- e
			}
		}}})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithCancel(sender.WithTag(context.Background(), "order-8812"))
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}},
			strings.NewReader(idBody("receipt-42")))
		done <- err
	}()
	<-holding // the server has the whole message and holds its reply
	cancel()
	err = <-done
	require.ErrorIs(t, err, sender.ErrOutcomeUnknown)
	close(release)
	select {
	case e := <-late:
		assert.Equal(t, "<receipt-42@test.example>", e.MessageID)
		assert.Equal(t, "order-8812", e.Tag)
		assert.Equal(t, 250, e.Code)
	case <-time.After(10 * time.Second):
		t.Fatal("no late event")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Type == smtp.EventMailAccepted || e.Type == smtp.EventRcptAccepted {
			assert.Equal(t, "order-8812", e.Tag, "%s", e.Type)
		}
	}
}

// TestServerEchoesPasswordInNextSessionsGreeting (issue 20, point 1):
// session 1 logs in with PLAIN and gets 421 at MAIL; the next sessions'
// greetings echo the password. The Sender's one redactor remembers what
// session 1 sent: neither the Send's error nor any audit event shows it.
func TestServerEchoesPasswordInNextSessionsGreeting(t *testing.T) {
	const password = "s3cret-Passw0rd-42"
	first := []fs.Step{fs.Reply("220 mx.example ESMTP\r\n"), fs.ExpectLine("EHLO localhost"),
		fs.Reply("250-mx.example\r\n250 AUTH PLAIN\r\n"), fs.ReadLine(), fs.Reply("235 2.7.0 ok\r\n"),
		fs.ReadLine(), fs.Reply("421 4.3.2 bye\r\n"), fs.Close()}
	echo := []fs.Step{fs.Reply("421 4.7.0 busy, your password was " + password + "\r\n"), fs.Close()}
	srv := fs.StartMulti(t, first, echo, echo, echo, echo)
	var mu sync.Mutex
	var events []smtp.Event
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext, MaxDialFailures: 3,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) },
		Credentials: func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Mechanism: smtp.MechPLAIN, Username: "u", Secret: password}, nil
		},
		Options: smtp.Options{Audit: func(e smtp.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}}})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(1)))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), password)
	assert.Contains(t, err.Error(), "busy", "the server's text, redacted, is still there")
	mu.Lock()
	defer mu.Unlock()
	greetings := 0
	for _, e := range events {
		assert.NotContains(t, e.Error, password, "%s", e.Type)
		if e.Type == smtp.EventGreeting && e.Code == 421 {
			greetings++
		}
	}
	assert.Positive(t, greetings, "later sessions were greeted with the echo")
}

// TestPolicyHookSeesCallersContextValues: the Policy hook runs on the
// session's writer, but sees the values of the caller's context (not its
// cancellation): here the tag, with which it can decide per request.
func TestPolicyHookSeesCallersContextValues(t *testing.T) {
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{})
	seen := make(chan string, 2)
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext,
		Options: smtp.Options{Policy: func(ctx context.Context, req smtp.PolicyRequest) error {
			seen <- sender.Tag(ctx)
			if sender.Tag(ctx) == "blocked" {
				return errors.New("this tenant may not send")
			}
			return nil
		}}})
	require.NoError(t, err)
	defer s.Close()
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	_, err = s.Send(sender.WithTag(context.Background(), "tenant-7"), env, strings.NewReader(msg(1)))
	require.NoError(t, err)
	assert.Equal(t, "tenant-7", <-seen)
	_, err = s.Send(sender.WithTag(context.Background(), "blocked"), env, strings.NewReader(msg(2)))
	assert.Equal(t, "blocked", <-seen)
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.KindPolicy, se.Kind)
	assert.True(t, smtp.IsPermanent(err))
	assert.EqualValues(t, 1, srv.Count())
}

// requestIDKey is a caller's own context key, as a tracing library has.
type requestIDKey struct{}

// TestAuditContextSeesCallersValuesEvenLate: with Options.AuditContext,
// every event of a message reaches the hook with the values of its
// caller's context (a request id a slog.Handler would log), the late
// event after the caller gave up included.
func TestAuditContextSeesCallersValuesEvenLate(t *testing.T) {
	srv, holding, release := holdingFinalReply(t)
	late := make(chan any, 1)
	var mu sync.Mutex
	var ids []any
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext,
		Options: smtp.Options{AuditContext: func(ctx context.Context, e smtp.Event) {
			switch e.Type {
			case smtp.EventMailAccepted, smtp.EventRcptAccepted:
				mu.Lock()
				ids = append(ids, ctx.Value(requestIDKey{}))
				mu.Unlock()
			case smtp.EventMessage:
				late <- ctx.Value(requestIDKey{})
			}
		}}})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), requestIDKey{}, "req-77"))
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(1)))
		done <- err
	}()
	<-holding
	cancel()
	require.ErrorIs(t, <-done, sender.ErrOutcomeUnknown)
	close(release)
	select {
	case id := <-late:
		assert.Equal(t, "req-77", id)
	case <-time.After(10 * time.Second):
		t.Fatal("no late event")
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []any{"req-77", "req-77"}, ids)
}

// TestVerifyChecksTheSetupAtStartup: Verify dials, greets, logs in and
// QUITs, sending nothing: nil with the right password, a setup error
// (IsConfig) with a wrong one, a temporary one when the server is down;
// ErrClosed after Close.
func TestVerifyChecksTheSetupAtStartup(t *testing.T) {
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Auth: map[string]string{"u": "right"}, AllowInsecureAuth: true})
	verify := func(addr, password string) (*sender.Sender, error) {
		s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, DialTimeout: 2 * time.Second,
			Credentials: func(context.Context) (sender.Credentials, error) {
				return sender.Credentials{Username: "u", Secret: password}, nil
			}})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s, s.Verify(ctx)
	}
	s, err := verify(srv.Addr(), "right")
	require.NoError(t, err)
	assert.Zero(t, srv.Count(), "nothing sent")
	s.Close()
	s, err = verify(srv.Addr(), "wrong")
	assert.True(t, smtp.IsConfig(err), "%v", err)
	s.Close()
	s, err = verify("127.0.0.1:1", "right") // nothing listens there
	assert.True(t, smtp.IsTemporary(err), "%v", err)
	s.Close()
	assert.ErrorIs(t, s.Verify(context.Background()), sender.ErrClosed)
}

// TestCallersGivingUpBeforeAndAfterTheirBodyBlameNoServer: with one
// session and a window of one, the server holds A's final reply; B, waiting for the session,
// gives up before its body was read, and then A's caller gives up after
// its commit point (ErrOutcomeUnknown). Neither is the server's failure:
// with fail-fast after one failed session and a backoff of an hour, the
// next Send goes out at once on the same session, and no dial failed.
func TestCallersGivingUpBeforeAndAfterTheirBodyBlameNoServer(t *testing.T) {
	srv, holding, release := holdingFinalReply(t)
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext, MaxConns: 1, MaxInFlight: 1,
		MaxDialFailures: 1, Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) }})
	require.NoError(t, err)
	defer s.Close()
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	ctxA, cancelA := context.WithCancel(context.Background())
	doneA := make(chan error, 1)
	go func() { _, err := s.Send(ctxA, env, strings.NewReader(idBody("A"))); doneA <- err }()
	<-holding
	ctxB, cancelB := context.WithCancel(context.Background())
	doneB := make(chan error, 1)
	go func() { _, err := s.Send(ctxB, env, strings.NewReader(idBody("B"))); doneB <- err }()
	require.Eventually(t, func() bool { return s.Stats().Waiting == 1 }, 10*time.Second, time.Millisecond)
	cancelB() // before its body: withdrawn
	assert.Equal(t, context.Canceled, <-doneB)
	cancelA() // after its commit point
	assert.ErrorIs(t, <-doneA, sender.ErrOutcomeUnknown)
	close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a hang guard
	defer cancel()
	_, err = s.Send(ctx, env, strings.NewReader(idBody("C")))
	require.NoError(t, err)
	st := s.Stats()
	assert.Zero(t, st.DialFailures)
	assert.EqualValues(t, 1, st.Dials, "the session was kept")
	n := deliveries(srv)
	assert.Zero(t, n["B"])
	assert.Equal(t, 1, n["A"], "the held message was delivered once")
	assert.Equal(t, 1, n["C"])
}

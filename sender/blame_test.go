package sender_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// Who failed? Each test here is one of the misjudgements of the blame
// issue, named by what each side did and what was on the wire.

// midBody is a body that hands over its first half, then blocks until
// its caller has given up (its Send returned), and then offers the rest,
// which the sender must refuse to take to EOF.
type midBody struct {
	first    *strings.Reader
	rest     *strings.Reader
	inside   chan struct{} // closed once the first half was read
	returned chan struct{} // closed once the caller's Send returned
	once     sync.Once
}

func (b *midBody) Read(p []byte) (int, error) {
	if b.first.Len() > 0 {
		return b.first.Read(p)
	}
	b.once.Do(func() { close(b.inside) })
	<-b.returned
	return b.rest.Read(p)
}

// TestCallerDeadlinesMidBodyDoNotFailHealthyServer (point 1): callers
// whose deadline ends in the middle of their DATA body make the session
// drop before the final dot, again and again; the server is healthy. No
// session counts as failed: with a backoff of an hour and fail-fast after
// one failure, every later Send with time to spare still goes out at
// once, and nothing of a withdrawn message was delivered.
func TestCallerDeadlinesMidBodyDoNotFailHealthyServer(t *testing.T) {
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{})
	s, err := sender.New(sender.Config{
		Security:        sender.InsecurePlaintext,
		Dial:            dialer(srv, true), // no CHUNKING: DATA
		MaxConns:        2,
		MaxDialFailures: 1,
		Backoff:         func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) },
	})
	require.NoError(t, err)
	defer s.Close()
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	big := idBody("withdrawn") + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 400)
	for i := range 6 {
		ctx, cancel := context.WithCancel(context.Background())
		b := &midBody{first: strings.NewReader(big[:len(big)/2]), rest: strings.NewReader(big[len(big)/2:]),
			inside: make(chan struct{}), returned: make(chan struct{})}
		done := make(chan error, 1)
		go func() { _, err := s.Send(ctx, env, b); done <- err }()
		select {
		case <-b.inside:
		case err := <-done:
			t.Fatalf("Send %d returned before its body was read: %v", i, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("Send %d never read its body", i)
		}
		cancel() // the caller gives up in the middle of its body
		err := <-done
		close(b.returned)
		assert.Equal(t, context.Canceled, err, "Send %d returns its own ctx.Err(), withdrawn", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang guard
	defer cancel()
	for i := range 20 {
		_, err := s.Send(ctx, env, strings.NewReader(idBody(fmt.Sprintf("good%02d", i))))
		require.NoError(t, err, "Send %d after the withdrawals", i)
	}
	st := s.Stats()
	t.Logf("6 callers gave up mid-body, then %d of 20 Sends delivered; dial failures %d", st.Sent, st.DialFailures)
	assert.Zero(t, st.DialFailures)
	assert.EqualValues(t, 6, st.Withdrawn)
	n := deliveries(srv)
	assert.Zero(t, n["withdrawn"], "a withdrawn message never reaches its final dot")
	assert.Equal(t, 20, total(n))
}

// TestServer503AfterIts421IsNotAVerdict (point 2): the server answers
// every 5th MAIL with 421 and then answers whatever was pipelined behind
// it with 503 until it closes. Those 503s are the closing session's, not
// verdicts: no message fails permanently, and each is delivered once.
func TestServer503AfterIts421IsNotAVerdict(t *testing.T) {
	for _, chunking := range []bool{true, false} {
		t.Run(map[bool]string{true: "BDAT", false: "DATA"}[chunking], func(t *testing.T) {
			m := newFakeMTA()
			m.chunking = chunking
			m.mail = func(n, _ int) string {
				if n%5 == 0 {
					return "421 4.3.2 shutting down"
				}
				return ""
			}
			m.after421 = "503 5.5.1 Bad sequence of commands"
			addr, stop := m.listen()
			defer stop()
			s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxConns: 2, MaxAttempts: 10,
				Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }})
			require.NoError(t, err)
			defer s.Close()
			errs := sendAll(t, s, ids("m", 100), 10)
			permanent := 0
			for id, err := range errs {
				if smtp.IsPermanent(err) {
					permanent++
				}
				assert.NoError(t, err, id)
			}
			conns, _ := m.stats()
			t.Logf("100 messages, 10 callers: %d permanent failures, %d connections", permanent, conns)
			assert.Zero(t, permanent)
			_, n := m.stats()
			for _, id := range ids("m", 100) {
				assert.Equal(t, 1, n[id], "%s delivered once", id)
			}
		})
	}
}

// TestServer421ThenCloseLeavesWindowReplayable (point 3): with CHUNKING
// and two connections, the server answers about one MAIL in ten with 421
// and closes at once. Every transaction written behind the 421 got no
// reply from a server that said it was closing: none is "unknown"; each
// message is delivered once, or deferred after three 421s of its own.
func TestServer421ThenCloseLeavesWindowReplayable(t *testing.T) {
	m := newFakeMTA()
	m.chunking = true
	m.mail = func(n, _ int) string {
		if (n*7)%10 == 3 { // one in ten, spread over the run
			return "421 4.3.2 closing"
		}
		return ""
	}
	addr, stop := m.listen()
	defer stop()
	s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxConns: 2,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }})
	require.NoError(t, err)
	defer s.Close()
	errs := sendAll(t, s, ids("f", 100), 20)
	_, n := m.stats()
	for id, err := range errs {
		assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown, id)
		if err != nil {
			var se *smtp.Error
			require.ErrorAs(t, err, &se, id)
			assert.Equal(t, 421, se.Code, "%s deferred only by its own 421s: %v", id, err)
			assert.Zero(t, n[id], id)
			continue
		}
		assert.Equal(t, 1, n[id], "%s delivered once", id)
	}
	st := s.Stats()
	t.Logf("100 messages, 2 connections at a time: %d delivered, %d unknown, %d failed, %d replayed", st.Sent, st.Unknown, st.Failed, st.Replayed)
	assert.Zero(t, st.Unknown)
}

// TestSilentServerGetsAHandfulAndTheFirstTimesOut (point 4): one
// connection, a window of 32, CHUNKING; after EHLO the server reads
// everything and answers nothing. A new Send every 50 ms: only those
// that come before the server has been silent for silentAfter are
// written on it; the first is answered at its own 1 s timeout, which no
// later Send extends.
func TestSilentServerGetsAHandfulAndTheFirstTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newFakeMTA()
		m.chunking = true
		m.silent = true
		opts := smtp.Options{}
		opts.Timeouts = smtp.Timeouts{Greeting: time.Second, Command: time.Second, DataInit: time.Second, DataBlock: time.Second, DataEnd: time.Second}
		s, err := sender.New(sender.Config{Dial: m.dialPipe(), Security: sender.InsecurePlaintext,
			MaxConns: 1, MaxInFlight: 32, MaxDialFailures: 100, Options: opts,
			Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) }})
		require.NoError(t, err)
		defer s.Close()
		start := time.Now()
		var first atomic.Int64
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(idBody(fmt.Sprint(i))))
				assert.Error(t, err)
				if i == 0 {
					first.Store(int64(time.Since(start)))
				}
			})
			time.Sleep(50 * time.Millisecond)
		}
		wg.Wait()
		m.mu.Lock()
		written := m.mailsOn[0]
		m.mu.Unlock()
		t.Logf("%d of 20 Sends written on the silent connection; the first answered after %v", written, time.Duration(first.Load()))
		assert.LessOrEqual(t, written, 5, "Sends written on the silent connection")
		assert.GreaterOrEqual(t, written, 1)
		assert.Equal(t, time.Second, time.Duration(first.Load()), "the first Send ends at its own timeout")
	})
}

// slowStart is a body whose first octet takes delay.
type slowStart struct {
	delay time.Duration
	r     io.Reader
	slept bool
}

func (b *slowStart) Read(p []byte) (int, error) {
	if !b.slept {
		b.slept = true
		time.Sleep(b.delay)
	}
	return b.r.Read(p)
}

// TestSlowBodyDoesNotDelayAnotherCallersReply (point 5): one connection,
// a window of 4. The server answers A's end of data 100 ms after it;
// B comes 20 ms after A with a body whose first octet takes 1 s. A is
// answered when its reply arrives, not after B's body.
func TestSlowBodyDoesNotDelayAnotherCallersReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var datas atomic.Int64
		srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Pipe: true, Delay: func(stage string) time.Duration {
			if stage == "DATA" && datas.Add(1) == 2 { // A's
				return 100 * time.Millisecond
			}
			return 0
		}})
		s, err := sender.New(sender.Config{Dial: func(ctx context.Context) (transport.Transport, error) { return srv.DialPipe(ctx) },
			Security: sender.InsecurePlaintext, MaxConns: 1, MaxInFlight: 4})
		require.NoError(t, err)
		defer s.Close()
		ctx := context.Background()
		env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
		// Dial first, so that A's clock starts with its own Send.
		_, err = s.Send(ctx, env, strings.NewReader(msg(0)))
		require.NoError(t, err)
		start := time.Now()
		aDone := make(chan time.Duration, 1)
		go func() {
			_, err := s.Send(ctx, env, strings.NewReader(msg(1)))
			assert.NoError(t, err)
			aDone <- time.Since(start)
		}()
		time.Sleep(20 * time.Millisecond)
		bDone := make(chan error, 1)
		go func() {
			_, err := s.Send(ctx, env, &slowStart{delay: time.Second, r: strings.NewReader(msg(2))})
			bDone <- err
		}()
		took := <-aDone
		t.Logf("A answered after %v (virtual time)", took)
		assert.Equal(t, 100*time.Millisecond, took, "A is answered when its reply arrives")
		require.NoError(t, <-bDone)
	})
}

// TestServerRefusedEndOfDataThenDemandsRSET (point 6): the server
// refuses a message after its final dot (451), and refuses the next
// MAIL with 503 unless RSET comes first, as Mailpit does while it shuts
// down. The client sends RSET: the next message is delivered, and only
// the refused one fails (temporarily).
func TestServerRefusedEndOfDataThenDemandsRSET(t *testing.T) {
	for _, chunking := range []bool{true, false} {
		t.Run(map[bool]string{true: "BDAT", false: "DATA"}[chunking], func(t *testing.T) {
			m := newFakeMTA()
			m.chunking = chunking
			m.strictRSET = true
			m.final = func(n int) string {
				if n%4 == 1 {
					return "451 4.3.0 try again later"
				}
				return ""
			}
			addr, stop := m.listen()
			defer stop()
			s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxConns: 1})
			require.NoError(t, err)
			defer s.Close()
			errs := sendAll(t, s, ids("r", 16), 1)
			_, n := m.stats()
			refused := 0
			for id, err := range errs {
				if err != nil {
					refused++
					assert.True(t, smtp.IsTemporary(err), "%s: %v", id, err)
					var se *smtp.Error
					require.ErrorAs(t, err, &se)
					assert.Equal(t, 451, se.Code, "%s: %v", id, err)
					continue
				}
				assert.Equal(t, 1, n[id], id)
			}
			assert.Equal(t, 4, refused)
			assert.EqualValues(t, 1, s.Stats().Dials, "one session throughout")
		})
	}
}

// firstMAIL503 answers the first MAIL of all connections with 503 (a
// session in the wrong state), and accepts every other.
func firstMAIL503(n, _ int) string {
	if n == 1 {
		return "503 5.5.1 Bad sequence of commands"
	}
	return ""
}

// TestServer503ToMailIsReplayedOnceOnAFreshSession: a server whose
// session is in the wrong state answers MAIL with 503; that is not a
// verdict on the message, which is written once more, on a new session,
// and delivered there.
func TestServer503ToMailIsReplayedOnceOnAFreshSession(t *testing.T) {
	m := newFakeMTA()
	m.mail = firstMAIL503
	addr, stop := m.listen()
	defer stop()
	s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxConns: 1})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(idBody("s1")))
	require.NoError(t, err)
	conns, n := m.stats()
	assert.Equal(t, 1, n["s1"])
	assert.Equal(t, 2, conns, "written again on a fresh session")
	assert.EqualValues(t, 1, s.Stats().Replayed)
}

// TestServer503ToMailOverAPipeWriterAnswersItselfThenEndsTheSession:
// the same over an in-memory pipe, in a synctest bubble, where the
// writer (not the reader) settles the refused transaction: its
// replies were read while the writer still held the body. A writer that
// gave the session's last answer itself and then waited for word from
// the reader, which had none to give, kept the session, and with
// MaxConns 1 the replayed Send waited its whole context (every run,
// before the fix).
func TestServer503ToMailOverAPipeWriterAnswersItselfThenEndsTheSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newFakeMTA()
		m.mail = firstMAIL503
		s, err := sender.New(sender.Config{Dial: m.dialPipe(), Security: sender.InsecurePlaintext, MaxConns: 1})
		require.NoError(t, err)
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(idBody("s1")))
		require.NoError(t, err)
		conns, n := m.stats()
		assert.Equal(t, 1, n["s1"])
		assert.Equal(t, 2, conns, "written again on a fresh session")
	})
}

// TestStartTLSToImplicitTLSPortFailsWithinDialTimeout (point 7): a
// client set for STARTTLS dials a port that speaks implicit TLS: the
// server waits for a handshake, the client for a greeting. The Send
// fails within DialTimeout, whatever its own deadline, with a setup
// error that names implicit TLS; the other way round, an implicit-TLS
// client on a plaintext port gets one that names STARTTLS. Both count as
// failed sessions.
func TestStartTLSToImplicitTLSPortFailsWithinDialTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server testpeers.TLSMode
		client sender.Security
		says   string
	}{
		{"STARTTLS client, implicit-TLS port", testpeers.ImplicitTLS, sender.StartTLS, "implicit TLS"},
		{"implicit-TLS client, plaintext port", testpeers.Plain, sender.ImplicitTLS, "STARTTLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: tc.server})
			cfg := sender.Config{Addr: srv.Addr(), Security: tc.client, DialTimeout: 300 * time.Millisecond}
			if srv.Cert() != nil {
				cfg.Options.TLSConfig = srv.Cert().ClientConfig()
			}
			s, err := sender.New(cfg)
			require.NoError(t, err)
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err = s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(msg(1)))
			// A guard, not a measurement: the old client waited the
			// caller's 10 s.
			t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			assert.Less(t, time.Since(start), 5*time.Second)
			var se *smtp.Error
			require.ErrorAs(t, err, &se, "%v", err)
			assert.Contains(t, err.Error(), tc.says)
			assert.True(t, smtp.IsConfig(err), "%v", err)
			assert.Positive(t, s.Stats().DialFailures)
		})
	}
}

// TestRefusalThen421KeepsBackoff (point 8): the server refuses each
// connection's first recipient (550) and answers the next MAIL with 421
// and closes. A refusal is no delivery: each such session failed, the
// backoff grows, and eight callers sending for ten seconds make a few
// connections, not thousands.
func TestRefusalThen421KeepsBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newFakeMTA()
		m.chunking = true
		m.rcpt = func(i int) string {
			if i == 1 {
				return "550 5.1.1 no such user"
			}
			return ""
		}
		m.mail = func(_, i int) string {
			if i == 2 {
				return "421 4.3.2 closing"
			}
			return ""
		}
		s, err := sender.New(sender.Config{Dial: m.dialPipe(), Security: sender.InsecurePlaintext, MaxConns: 2, MaxDialFailures: 1000})
		require.NoError(t, err)
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for c := range 8 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(idBody(fmt.Sprintf("c%d-%d", c, i))))
				}
			})
		}
		wg.Wait()
		conns, _ := m.stats()
		assert.LessOrEqual(t, conns, 20, "connections in 10 s")
		t.Logf("%d connections in 10 s of virtual time", conns)
	})
}

// TestLongRepliesLoseNoSession (point 9): final replies of 5,000 octets
// (several lines) while many Sends are in flight: every reply is read
// whole by the reader; no session is lost and none redialed.
func TestLongRepliesLoseNoSession(t *testing.T) {
	m := newFakeMTA()
	m.chunking = true
	m.finalPrefix = strings.Repeat("250-"+strings.Repeat("x", 490)+"\r\n", 10)
	addr, stop := m.listen()
	defer stop()
	s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxConns: 2})
	require.NoError(t, err)
	defer s.Close()
	errs := sendAll(t, s, ids("l", 2000), 16)
	for id, err := range errs {
		require.NoError(t, err, id)
	}
	st := s.Stats()
	t.Logf("2,000 messages with 5,000-octet final replies: %d dials, %d unknown", st.Dials, st.Unknown)
	assert.EqualValues(t, 2, st.Dials, "no session lost, none redialed")
	assert.Zero(t, st.Unknown)
}

// TestFailFastErrorKeepsItsCause (point 10): the fail-fast error after a
// refused password keeps the refusal's own op, kind, code and text, says
// once that the sender is failing fast and until when, wraps the cause
// and ErrFailingFast, and classifies as the cause: the setup's.
func TestFailFastErrorKeepsItsCause(t *testing.T) {
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Auth: map[string]string{"u": "right"}, AllowInsecureAuth: true})
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext,
		Credentials: func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "u", Secret: "wrong-password"}, nil
		}})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	_, cause := s.Send(ctx, env, strings.NewReader(msg(1)))
	require.Error(t, cause)
	_, err = s.Send(ctx, env, strings.NewReader(msg(2)))
	require.ErrorIs(t, err, sender.ErrFailingFast)
	var se, ce *smtp.Error
	require.ErrorAs(t, err, &se)
	require.ErrorAs(t, cause, &ce)
	assert.Equal(t, ce.Op, se.Op)
	assert.Equal(t, ce.Kind, se.Kind)
	assert.Equal(t, ce.Code, se.Code)
	assert.Equal(t, 535, se.Code)
	assert.True(t, strings.HasPrefix(se.Message, ce.Message), "%q keeps %q", se.Message, ce.Message)
	assert.Equal(t, 1, strings.Count(err.Error(), "failing fast"), "%v", err)
	assert.Equal(t, 1, strings.Count(err.Error(), ce.Message), "the cause's text once: %v", err)
	assert.NotContains(t, err.Error(), "wrong-password")
	assert.True(t, smtp.IsConfig(err), "%v", err)
	assert.True(t, errors.Is(err, sender.ErrFailingFast))
	t.Logf("fail-fast error: %v", err)
}

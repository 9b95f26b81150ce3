package sender_test

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// The reader writes in the writer's stead (conn.help): after a reply
// that makes room, the next message leaves from the goroutine that read
// the reply, and after a 354 the body does, without waking the writer.

// sendFrom runs callers goroutines that each send n messages with a
// body of kib KiB from memory, each within timeout, and requires every
// Send to succeed.
func sendFrom(t *testing.T, s *sender.Sender, callers, n, kib int, timeout time.Duration) {
	t.Helper()
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 16*kib)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for i := range n {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, bytes.NewReader(body))
				cancel()
				if !assert.NoError(t, err, "message %d", i) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestThreeCallersWindowOfOneGoSMTPOverTLSReaderWritesEachNextMessage:
// three callers keep a session with a window of one busy (BDAT, TLS);
// each final reply lets the next message go, and the reader writes it
// there and then: the writer, which used to be woken for each message,
// sleeps through nearly all of them.
func TestThreeCallersWindowOfOneGoSMTPOverTLSReaderWritesEachNextMessage(t *testing.T) {
	const callers, n = 3, 200
	srv, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS},
		sender.Config{MaxConns: 1, MaxInFlight: 1})
	sendFrom(t, s, callers, n, 1, 10*time.Second)
	assert.EqualValues(t, callers*n, srv.Count())
	wakes := sender.WriterWakes(s)
	assert.Less(t, wakes, int64(callers*n/4), "the writer was woken for most messages")
	t.Logf("%d messages, %d writer wake-ups", callers*n, wakes)
}

// TestThreeCallersWindowOfOneSMTPSinkDATAEveryCallerAnswered: the same
// against Postfix's smtp-sink, which has no CHUNKING: the reader writes
// each body when it reads its 354, and the next MAIL, RCPT and DATA
// behind it. Every Send is answered (a writer that answered the last
// attempt itself, then waited without looking at the waiting list, left
// the three callers to their deadlines), and the writer sleeps.
func TestThreeCallersWindowOfOneSMTPSinkDATAEveryCallerAnswered(t *testing.T) {
	const callers, n = 3, 300
	sink := testpeers.SMTPSink(t)
	s, err := sender.New(sender.Config{Addr: sink.Addr(), Security: sender.InsecurePlaintext, MaxConns: 1, MaxInFlight: 1})
	require.NoError(t, err)
	defer s.Close()
	sendFrom(t, s, callers, n, 1, 10*time.Second)
	wakes := sender.WriterWakes(s)
	assert.Less(t, wakes, int64(callers*n/4), "the writer was woken for most messages")
	t.Logf("%d messages, %d writer wake-ups", callers*n, wakes)
}

// TestPolicyHookRunsOnOneGoroutineWhileCallersKeepTheWindowFull: with a
// Policy hook (user code that may be slow), the reader writes nothing:
// every transaction is written, and the hook called, by the writer, so
// replies are never left unread behind a slow hook.
func TestPolicyHookRunsOnOneGoroutineWhileCallersKeepTheWindowFull(t *testing.T) {
	var mu sync.Mutex
	goroutines := map[string]int{}
	policy := func(context.Context, smtp.PolicyRequest) error {
		buf := make([]byte, 64)
		buf = buf[:runtime.Stack(buf, false)]
		id, _, _ := strings.Cut(string(buf), " [")
		mu.Lock()
		goroutines[id]++
		mu.Unlock()
		return nil
	}
	_, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Mode: testpeers.Plain},
		sender.Config{Security: sender.InsecurePlaintext, MaxConns: 1, MaxInFlight: 1, Options: smtp.Options{Policy: policy}})
	sendFrom(t, s, 3, 100, 1, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, goroutines, 1, "the Policy hook ran on: %v", goroutines)
}

// TestPipeTransportManyCallersWindowOfEightAllAnswered: on an
// in-memory pipe nothing is buffered, so the reader never writes there
// (a reader blocked writing while the server is blocked writing a reply
// would deadlock: smtp's TestReaderWritesOnKernelSocketsNeverOnPipes);
// the writer alone keeps the window full, and 24 callers with a window
// of 8 and 16 KiB bodies all get their answers.
func TestPipeTransportManyCallersWindowOfEightAllAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, s := pipeServer(t, testpeers.GoSMTPOptions{}, sender.Config{MaxConns: 1, MaxInFlight: 8})
		sendFrom(t, s, 24, 20, 16, 30*time.Second)
		assert.EqualValues(t, 24*20, srv.Count())
		s.Close()
	})
}

// TestSequentialCallerWakesTheWriterOncePerMessage: one caller sends
// one message after another. Each Send wakes the parked writer, which
// writes it; when the reply empties the window, the reader parks the
// writer again itself instead of waking it to park (which doubled the
// writer's wake-ups).
func TestSequentialCallerWakesTheWriterOncePerMessage(t *testing.T) {
	const n = 200
	_, s := newGoSMTPSender(t, testpeers.GoSMTPOptions{Mode: testpeers.Plain},
		sender.Config{Security: sender.InsecurePlaintext, MaxConns: 1})
	sendFrom(t, s, 1, n, 1, 10*time.Second)
	wakes := sender.WriterWakes(s)
	assert.LessOrEqual(t, wakes, int64(n+n/4), "writer wake-ups for %d messages", n)
	t.Logf("%d messages, %d writer wake-ups", n, wakes)
}

// TestIdleTimeoutCountsFromTheLastAnswerNotTheWritersSleep: the server
// takes 10 s to answer a message's end. The writer went to sleep when it
// had written it, and the reader parks it when the answer empties the
// window, without waking it; the session is still closed IdleTimeout
// (30 s) after that answer, not after the writer fell asleep (virtual
// time).
func TestIdleTimeoutCountsFromTheLastAnswerNotTheWritersSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slow atomic.Bool
		_, s := pipeServer(t, testpeers.GoSMTPOptions{Delay: func(stage string) time.Duration {
			if stage == "DATA" && slow.Load() {
				return 10 * time.Second
			}
			return 0
		}}, sender.Config{MaxConns: 1, IdleTimeout: 30 * time.Second})
		env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
		_, err := s.Send(context.Background(), env, strings.NewReader(msg(0)))
		require.NoError(t, err)
		slow.Store(true)
		_, err = s.Send(context.Background(), env, strings.NewReader(msg(1)))
		require.NoError(t, err)
		answered := time.Now()
		time.Sleep(25 * time.Second)
		synctest.Wait()
		assert.EqualValues(t, 1, s.Stats().Open, "idle for 25 s (35 s since the writer slept): still open")
		time.Sleep(6 * time.Second)
		synctest.Wait()
		assert.Zero(t, s.Stats().Open, "idle for %s: closed", time.Since(answered))
		s.Close()
	})
}

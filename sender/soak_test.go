package sender_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
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
	"github.com/smtpkit/smtpkit/transport"
)

// Soak tests: many messages over a few connections to real servers that
// inject faults, counting on both sides. What the server counts as
// delivered must lie between what the callers saw succeed and that plus
// the messages whose outcome is unknown, and every failure must be
// classified.

// EnvSoakMessages overrides the number of messages of each soak.
const EnvSoakMessages = "SMTPKIT_SOAK_MESSAGES"

// soakMessages is how many messages a soak sends: $SMTPKIT_SOAK_MESSAGES,
// or 20,000 (2,000 with -short).
func soakMessages(t *testing.T) int {
	t.Helper()
	if v := os.Getenv(EnvSoakMessages); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "$%s", EnvSoakMessages)
		require.Positive(t, n, "$%s", EnvSoakMessages)
		return n
	}
	if testing.Short() {
		return 2000
	}
	return 20000
}

const (
	soakConns   = 4  // MaxConns
	soakCallers = 32 // goroutines calling Send
)

// soakTally counts the answers the callers got.
type soakTally struct {
	ok, unknown, temporary, permanent, unclassified atomic.Int64

	mu      sync.Mutex // guards the fields below
	samples map[string]int
	odd     []error
}

func (c *soakTally) add(err error) {
	switch {
	case err == nil:
		c.ok.Add(1)
		return
	case errors.Is(err, sender.ErrOutcomeUnknown):
		c.unknown.Add(1)
	case smtp.IsTemporary(err):
		c.temporary.Add(1)
	case smtp.IsPermanent(err), smtp.IsConfig(err):
		c.permanent.Add(1)
	default:
		c.unclassified.Add(1)
		c.mu.Lock()
		if len(c.odd) < 10 {
			c.odd = append(c.odd, err)
		}
		c.mu.Unlock()
	}
	var se *smtp.Error
	key := "not an *smtp.Error"
	if errors.As(err, &se) {
		key = fmt.Sprintf("%s %d", se.Op, se.Code)
		if errors.Is(err, sender.ErrOutcomeUnknown) {
			key += " unknown"
		}
	}
	c.mu.Lock()
	if c.samples == nil {
		c.samples = make(map[string]int)
	}
	c.samples[key]++
	c.mu.Unlock()
}

func (c *soakTally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("ok %d, unknown %d, temporary %d, permanent %d, unclassified %d; errors by step and code: %v",
		c.ok.Load(), c.unknown.Load(), c.temporary.Load(), c.permanent.Load(), c.unclassified.Load(), c.samples)
}

// check asserts that every message got one answer and every failure was
// classified.
func (c *soakTally) check(t *testing.T, n int, st sender.Stats) {
	t.Helper()
	total := c.ok.Load() + c.unknown.Load() + c.temporary.Load() + c.permanent.Load() + c.unclassified.Load()
	assert.EqualValues(t, n, total, "one answer per message")
	assert.Zero(t, c.unclassified.Load(), "unclassified errors, e.g. %v", c.odd)
	assert.Equal(t, c.ok.Load(), st.Sent)
	assert.Equal(t, c.unknown.Load(), st.Unknown)
	assert.Equal(t, c.temporary.Load()+c.permanent.Load()+c.unclassified.Load(), st.Failed)
	assert.Zero(t, st.Withdrawn)
}

// soakBody is message i, with a unique Message-ID.
func soakBody(i int) string {
	return fmt.Sprintf("From: <soak@example.com>\r\nTo: <sink@example.com>\r\nSubject: soak %d\r\nMessage-ID: <soak-%d@example.com>\r\n\r\nMessage %d of the soak.\r\n", i, i, i)
}

// soak sends n messages from soakCallers goroutines through s. half, if
// set, is called once when half of them have been handed out.
func soak(t *testing.T, s *sender.Sender, n int, half func()) *soakTally {
	t.Helper()
	tally := &soakTally{}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range soakCallers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if i == n/2 && half != nil {
					half()
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_, err := s.Send(ctx, smtp.Envelope{From: "soak@example.com", To: []string{"sink@example.com"}}, strings.NewReader(soakBody(i)))
				cancel()
				tally.add(err)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d messages in %v (%.0f/s): %v", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), tally)
	return tally
}

func soakShutdown(t *testing.T, s *sender.Sender) sender.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	st := s.Stats()
	t.Logf("sender stats: %+v", st)
	assert.Zero(t, st.Open)
	return st
}

var sinkCounters = regexp.MustCompile(`sess=(\d+) quit=(\d+) mesg=(\d+)`)

// sinkMessages is the message count smtp-sink -c last printed: the
// final dots it received.
func sinkMessages(p *testpeers.Proc) int {
	m := sinkCounters.FindAllStringSubmatch(p.Output(), -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][3])
	return n
}

// TestSoakSMTPSink: Postfix's smtp-sink, three of them behind one
// Config.Dial that rotates between them like a DNS round robin: most
// dials reach a healthy sink; one in eight reaches a sink started with
// "-Q RCPT", which answers RCPT with 421 and disconnects (so the
// transaction is replayed); one in eight reaches a sink started with
// "-q .", which counts the message at its final dot and disconnects
// without a reply (so the outcome is unknown). smtp-sink's -Q and -q
// have no rate of their own: they act on every instance of the named
// command, so the rate is set by how often sessions start
// (MaxMessagesPerConn) and by the rotation.
func TestSoakSMTPSink(t *testing.T) {
	n := soakMessages(t)
	healthy := testpeers.SMTPSink(t, "-c")
	closing := testpeers.SMTPSink(t, "-c", "-Q", "RCPT")
	dropping := testpeers.SMTPSink(t, "-c", "-q", ".")
	var dials atomic.Int64
	s, err := sender.New(sender.Config{
		Security: sender.InsecurePlaintext,
		Dial: func(ctx context.Context) (transport.Transport, error) {
			addr := healthy.Addr()
			switch dials.Add(1) % 8 {
			case 3:
				addr = closing.Addr()
			case 7:
				addr = dropping.Addr()
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		MaxConns:           soakConns,
		MaxMessagesPerConn: 50,
		Backoff:            func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) },
	})
	require.NoError(t, err)
	defer s.Close()
	tally := soak(t, s, n, nil)
	st := soakShutdown(t, s)
	tally.check(t, n, st)

	// The sinks update their counters as sessions end; wait until they
	// are still.
	delivered := func() int { return sinkMessages(healthy) + sinkMessages(closing) + sinkMessages(dropping) }
	last := -1
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		d := delivered()
		if d == last && int64(d) >= tally.ok.Load() {
			break
		}
		last = d
	}
	got := int64(delivered())
	t.Logf("smtp-sink counted %d (healthy %d, -Q RCPT %d, -q . %d)", got, sinkMessages(healthy), sinkMessages(closing), sinkMessages(dropping))
	assert.GreaterOrEqual(t, got, tally.ok.Load(), "every success was delivered")
	assert.LessOrEqual(t, got, tally.ok.Load()+tally.unknown.Load(), "nothing delivered twice or behind the callers' backs")
	assert.Zero(t, sinkMessages(closing), "a 421 at RCPT delivers nothing")
	assert.Positive(t, st.Seen421)
	assert.Positive(t, st.Replayed)
	assert.Positive(t, tally.unknown.Load())
	assert.Zero(t, tally.permanent.Load())
}

// TestSoakMailpit: Mailpit with its chaos triggers on MAIL (Sender) and
// RCPT (Recipient): for the first half, 451 at MAIL and 550 at RCPT, 2%
// each; for the second, 421 at MAIL (Mailpit keeps the connection; the
// sender does not, and replays) and 452 at RCPT. Mailpit's API counts
// what it stored, and no Message-ID may be stored twice.
func TestSoakMailpit(t *testing.T) {
	n := soakMessages(t)
	mp := testpeers.Mailpit(t, testpeers.MailpitOptions{EnableChaos: true, ChaosTriggers: "Sender:451:2,Recipient:550:2"})
	s, err := sender.New(sender.Config{
		Addr:     mp.SMTPAddr(),
		Security: sender.InsecurePlaintext,
		MaxConns: soakConns,
		Backoff:  func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) },
	})
	require.NoError(t, err)
	defer s.Close()
	tally := soak(t, s, n, func() {
		_, err := mp.SetChaos(`{"Sender":{"ErrorCode":421,"Probability":2},"Recipient":{"ErrorCode":452,"Probability":2}}`)
		assert.NoError(t, err)
	})
	st := soakShutdown(t, s)
	tally.check(t, n, st)

	var msgs []testpeers.MailpitMessage
	last := -1
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		msgs, err = mp.Messages()
		require.NoError(t, err)
		if len(msgs) == last && int64(len(msgs)) >= tally.ok.Load() {
			break
		}
		last = len(msgs)
	}
	seen := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		assert.False(t, seen[m.MessageID], "stored twice: %s", m.MessageID)
		seen[m.MessageID] = true
	}
	got := int64(len(msgs))
	t.Logf("Mailpit stored %d", got)
	assert.GreaterOrEqual(t, got, tally.ok.Load(), "every success was delivered")
	assert.LessOrEqual(t, got, tally.ok.Load()+tally.unknown.Load(), "nothing delivered twice or behind the callers' backs")
	assert.Positive(t, tally.temporary.Load(), "451 and 452")
	assert.Positive(t, tally.permanent.Load(), "550")
	assert.Positive(t, st.Seen421)
	assert.Positive(t, st.Replayed)
}

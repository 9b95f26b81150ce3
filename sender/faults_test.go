package sender_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// Fault injection: scripted servers (internal/faultserver) that answer
// 421, drop the connection, stall, or send garbage at each step of a
// session, and a second, healthy scripted connection for the redial.
// Each scenario checks the answer Send gives and its classification,
// that a request is replayed exactly when its commit point was not
// written (or drew a 421), that no message is committed twice, and that
// Send returns within its context's deadline plus 100 ms.

// slack is how late Send may return after its context's deadline, on
// the wall clock: a hang guard, generous because CI runs these tests
// with -race on two shared cores. That Send returns exactly at its
// deadline is checked in virtual time (TestSendReturnsAtDeadline).
const slack = time.Second

const (
	faultFrom = "a@example.com"
	faultTo   = "b@example.com"
)

// serverMode is what a scripted server advertises after EHLO.
type serverMode struct {
	name                 string
	pipelining, chunking bool
}

var serverModes = []serverMode{
	{"data", false, false},
	{"data+pipelining", true, false},
	{"chunking", false, true},
	{"chunking+pipelining", true, true},
}

func (m serverMode) ehloReply() string {
	lines := []string{"250-fault.example"}
	if m.pipelining {
		lines = append(lines, "250-PIPELINING")
	}
	if m.chunking {
		lines = append(lines, "250-CHUNKING")
	}
	lines = append(lines, "250 ENHANCEDSTATUSCODES")
	return fs.Lines(lines...)
}

// faultBody is a message whose last line names id, so that its commit
// can be recognised in what a server received. With Options.ChunkSize
// 512 it takes three BDAT chunks.
func faultBody(id string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Subject: %s\r\n\r\n", id)
	for b.Len() < 1100 {
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n")
	}
	fmt.Fprintf(&b, "End %s\r\n", id)
	return b.String()
}

var bdatCmd = regexp.MustCompile(`(?m)^BDAT (\d+)( LAST)?\r\n`)

// commits counts the commit points (final dot, or BDAT ... LAST) of the
// message id in what a server received.
func commits(received []byte, id string) int {
	end := []byte("End " + id + "\r\n")
	n := bytes.Count(received, append(end, ".\r\n"...))
	// BDAT: a message is its chunks up to the LAST one (which may be
	// empty); an RSET or MAIL in between starts over.
	var msg []byte
	for i := 0; i < len(received); {
		m := bdatCmd.FindSubmatchIndex(received[i:])
		if m == nil {
			break
		}
		if bytes.Contains(received[i:i+m[0]], []byte("MAIL FROM:")) || bytes.Contains(received[i:i+m[0]], []byte("RSET\r\n")) {
			msg = msg[:0]
		}
		size, _ := strconv.Atoi(string(received[i+m[2] : i+m[3]]))
		start := i + m[1]
		stop := min(start+size, len(received))
		msg = append(msg, received[start:stop]...)
		if m[4] >= 0 && stop-start == size && bytes.HasSuffix(msg, end) {
			n++
		}
		if m[4] >= 0 {
			msg = msg[:0]
		}
		i = stop
	}
	return n
}

var (
	stepGreet  = fs.Reply("220 fault.example ESMTP ready\r\n")
	stepMail   = fs.ExpectLine("MAIL FROM:<" + faultFrom + ">")
	stepRcpt   = fs.ExpectLine("RCPT TO:<" + faultTo + ">")
	stepMailOK = fs.Reply("250 2.1.0 Ok\r\n")
	stepRcptOK = fs.Reply("250 2.1.5 Ok\r\n")
)

func ehloSteps(m serverMode) []fs.Step {
	return []fs.Step{fs.ExpectLine("EHLO localhost"), fs.Reply(m.ehloReply())}
}

// readBDAT reads BDAT chunks, answering each but the LAST, and stops
// after the LAST one (unanswered); with first, it stops after the first
// chunk, unanswered.
func readBDAT(first bool) fs.Step {
	return fs.Func(func(c net.Conn) error {
		for {
			line, err := readCRLF(c)
			if err != nil {
				return err
			}
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "BDAT" {
				return fmt.Errorf("expected BDAT, got %q", line)
			}
			n, err := strconv.Atoi(f[1])
			if err != nil {
				return fmt.Errorf("bad BDAT %q", line)
			}
			if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
				return err
			}
			last := len(f) == 3 && f[2] == "LAST"
			if last || first {
				return nil
			}
			if _, err := fmt.Fprintf(c, "250 2.0.0 %d octets received\r\n", n); err != nil {
				return err
			}
		}
	})
}

// readCRLF reads one line, byte by byte so nothing after it is consumed.
func readCRLF(c net.Conn) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(b, []byte("\r\n")) {
		if _, err := io.ReadFull(c, one); err != nil {
			return string(b), err
		}
		b = append(b, one[0])
		if len(b) > 1000 {
			return string(b), errors.New("line too long")
		}
	}
	return string(b[:len(b)-2]), nil
}

// bodySteps reads a message body up to its commit point, unanswered.
func bodySteps(m serverMode) []fs.Step {
	if m.chunking {
		return []fs.Step{readBDAT(false)}
	}
	return []fs.Step{fs.ExpectLine("DATA"), fs.Reply("354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n"), fs.ReadUntil("\r\n.\r\n")}
}

// txSteps is one healthy transaction.
func txSteps(m serverMode, queueID string) []fs.Step {
	s := []fs.Step{stepMail, stepMailOK, stepRcpt, stepRcptOK}
	s = append(s, bodySteps(m)...)
	return append(s, fs.Reply("250 2.0.0 Ok: queued as "+queueID+"\r\n"))
}

// healthy is a whole healthy session with n transactions, ending in QUIT.
func healthy(m serverMode, n int) []fs.Step {
	s := append([]fs.Step{stepGreet}, ehloSteps(m)...)
	for i := range n {
		s = append(s, txSteps(m, fmt.Sprintf("H%d", i+1))...)
	}
	return append(s, fs.ExpectLine("QUIT"), fs.Reply("221 2.0.0 Bye\r\n"), fs.Close())
}

type point int

const (
	atGreeting point = iota // instead of the greeting
	atEHLO                  // in reply to EHLO
	atMail                  // in reply to MAIL
	atRcpt                  // in reply to RCPT
	atData                  // in reply to DATA, or to the first (non-LAST) BDAT chunk
	atBody                  // in reply to the final dot or BDAT LAST
	atIdle                  // unsolicited, after a transaction, while the session is idle
)

func (p point) String() string {
	return [...]string{"greeting", "EHLO", "MAIL", "RCPT", "DATA", "body", "idle"}[p]
}

type fault int

const (
	f421      fault = iota // 421, then close
	fClose                 // orderly close, no reply
	fAbort                 // TCP reset, no reply
	fStall                 // no reply, ever
	fGarbage               // a reply that is not SMTP
	fLongLine              // a 10 MB reply line
)

func (f fault) String() string {
	return [...]string{"421", "close", "abort", "stall", "garbage", "10MB-line"}[f]
}

// longLine is a 10 MB reply line, made once.
var longLine = sync.OnceValue(func() []byte {
	line := append([]byte("250 "), bytes.Repeat([]byte("x"), 10<<20)...)
	return append(line, '\r', '\n')
})

func (f fault) steps() []fs.Step {
	switch f {
	case f421:
		return []fs.Step{fs.Reply("421 4.3.2 fault injected, closing connection\r\n"), fs.Close()}
	case fClose:
		return []fs.Step{fs.Close()}
	case fAbort:
		return []fs.Step{fs.Abort()}
	case fStall:
		return []fs.Step{fs.Stall()}
	case fGarbage:
		return []fs.Step{fs.Reply("hello? this is not SMTP\r\n")}
	case fLongLine:
		return []fs.Step{fs.Func(func(c net.Conn) error {
			_, _ = c.Write(longLine()) // the client hangs up part-way
			return nil
		})}
	}
	panic("unknown fault")
}

// faultyScript is the first connection's script: a session up to p,
// then the fault.
func faultyScript(m serverMode, p point, f fault) []fs.Step {
	var s []fs.Step
	if p > atGreeting {
		s = append(s, stepGreet)
	}
	if p > atEHLO {
		s = append(s, ehloSteps(m)...)
	} else if p == atEHLO {
		s = append(s, fs.ExpectLine("EHLO localhost"))
	}
	switch p {
	case atMail:
		s = append(s, stepMail)
	case atRcpt:
		s = append(s, stepMail, stepMailOK, stepRcpt)
	case atData:
		s = append(s, stepMail, stepMailOK, stepRcpt, stepRcptOK)
		if m.chunking {
			s = append(s, readBDAT(true))
		} else {
			s = append(s, fs.ExpectLine("DATA"))
		}
	case atBody:
		s = append(s, stepMail, stepMailOK, stepRcpt, stepRcptOK)
		s = append(s, bodySteps(m)...)
	case atIdle:
		s = append(s, txSteps(m, "I1")...)
	}
	return append(s, f.steps()...)
}

type outcome int

const (
	delivered outcome = iota // Send succeeds (after a redial or replay where needed)
	unknown                  // ErrOutcomeUnknown: committed, answer lost; never replayed
	withdrawn                // ctx.Err(): the context ended before the commit point
)

func (o outcome) String() string { return [...]string{"delivered", "unknown", "withdrawn"}[o] }

// expected is what the sender must do with a fault at p: the answer, and
// whether the request is written a second time (a replay).
func expected(m serverMode, p point, f fault) (outcome, bool) {
	// With CHUNKING and PIPELINING, MAIL, RCPT and every BDAT chunk up
	// to LAST leave in one write: from MAIL on, the commit point is
	// written before any reply is read.
	committed := p == atBody || (p >= atMail && m.chunking && m.pipelining)
	switch {
	case p == atGreeting || p == atEHLO:
		if f == fStall {
			return withdrawn, false
		}
		return delivered, false // a failed dial: the next dial works
	case p == atIdle:
		return delivered, false // the closed session is found before use
	case f == f421:
		return delivered, true // 421: nothing was processed
	case f == fStall && committed:
		return unknown, false
	case f == fStall:
		return withdrawn, false
	case committed:
		return unknown, false
	}
	return delivered, true
}

func fastBackoff() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }

func faultSender(t *testing.T, addr string, mutate func(*sender.Config)) *sender.Sender {
	t.Helper()
	cfg := sender.Config{
		Addr:     addr,
		Security: sender.InsecurePlaintext,
		MaxConns: 2,
		Backoff:  fastBackoff,
		// A hang guard only: a dial stuck on a stalled greeting ends when
		// its last waiting caller withdraws.
		DialTimeout: 10 * time.Second,
		Options:     smtp.Options{ChunkSize: 512},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := sender.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// timedSend sends the message id with a context of timeout and checks
// that Send returned within timeout plus slack.
func timedSend(t *testing.T, s *sender.Sender, id string, timeout time.Duration) (*smtp.Outcome, error) {
	t.Helper()
	return timedSendBody(t, s, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(faultBody(id)), timeout)
}

func timedSendBody(t *testing.T, s *sender.Sender, env smtp.Envelope, body io.Reader, timeout time.Duration) (*smtp.Outcome, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	out, err := s.Send(ctx, env, body)
	took := time.Since(start)
	assert.LessOrEqual(t, took, timeout+slack, "Send took %v with a %v context", took, timeout)
	return out, err
}

// classified reports whether err is classified as the issue requires:
// an *smtp.Error that is temporary or permanent, or ErrOutcomeUnknown.
func classified(err error) bool {
	c := smtp.Classify(err)
	if errors.Is(err, sender.ErrOutcomeUnknown) {
		return c == smtp.ClassOutcomeUnknown
	}
	return c != smtp.ClassNone && c != smtp.ClassOutcomeUnknown
}

// shutdown ends s (giving a session stuck on a stalled server a short
// while), then waits until srv has seen every connection close.
func shutdown(t *testing.T, s *sender.Sender, srv *fs.Server) {
	t.Helper()
	// Long enough for the QUIT exchanges the scripts expect, however
	// loaded the machine; a session that cannot QUIT is cut by Close.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
	require.NoError(t, s.Close())
	select {
	case <-srv.HungUp():
	case <-time.After(10 * time.Second):
		t.Fatal("the scripted connections were not closed")
	}
}

// parallelFaults bounds the fault scenarios that run at once, so that
// the timing bound on Send measures the sender, not a starved machine.
var parallelFaults = make(chan struct{}, 4)

func limitParallel(t *testing.T) {
	t.Parallel()
	parallelFaults <- struct{}{}
	t.Cleanup(func() { <-parallelFaults })
}

// TestFaults runs every fault at every step against servers with and
// without PIPELINING and CHUNKING.
func TestFaults(t *testing.T) {
	points := []point{atGreeting, atEHLO, atMail, atRcpt, atData, atBody}
	faults := []fault{f421, fClose, fAbort, fStall, fGarbage, fLongLine}
	for _, m := range serverModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			for _, p := range points {
				for _, f := range faults {
					t.Run(p.String()+"/"+f.String(), func(t *testing.T) {
						limitParallel(t)
						runFault(t, m, p, f)
					})
				}
			}
			for _, f := range []fault{f421, fClose, fAbort} {
				t.Run("idle/"+f.String(), func(t *testing.T) {
					limitParallel(t)
					runFault(t, m, atIdle, f)
				})
			}
		})
	}
}

func runFault(t *testing.T, m serverMode, p point, f fault) {
	want, replay := expected(m, p, f)
	srv := fs.StartMulti(t, faultyScript(m, p, f), healthy(m, 1))
	s := faultSender(t, srv.Addr(), nil)

	if p == atIdle {
		out, err := timedSend(t, s, "first", 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "I1", out.QueueID)
		// Past the core's idle probe threshold (1 s): the next
		// transaction first checks for a 421 or a close.
		time.Sleep(1200 * time.Millisecond)
	}

	timeout := 5 * time.Second
	if f == fStall {
		timeout = 300 * time.Millisecond
	}
	out, err := timedSend(t, s, "probe", timeout)
	switch want {
	case delivered:
		require.NoError(t, err)
		assert.Equal(t, "H1", out.QueueID, "delivered on the second connection")
	case unknown:
		require.Error(t, err)
		assert.ErrorIs(t, err, sender.ErrOutcomeUnknown)
		if f == fStall {
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		}
		assert.True(t, classified(err), "unclassified: %v", err)
		var se *smtp.Error
		assert.ErrorAs(t, err, &se)
	case withdrawn:
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
	}
	if want != delivered {
		// The sender recovers: another message goes through the
		// second connection (a new session), and the first is never
		// sent again.
		out, err := timedSend(t, s, "recovery", 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "H1", out.QueueID)
	}
	st := s.Stats()
	shutdown(t, s, srv)

	require.NoError(t, srv.Err())
	assert.Equal(t, 2, srv.Conns())
	// No message is committed twice: a commit the server answered with
	// 421 was not processed; any other one may have been.
	first, second := commits(srv.ReceivedOn(0), "probe"), commits(srv.ReceivedOn(1), "probe")
	switch {
	case want == delivered:
		assert.Equal(t, 1, second, "delivered once, on the second connection")
		if f != f421 {
			assert.Zero(t, first, "no commit on the faulty connection")
		}
	case want == unknown:
		assert.LessOrEqual(t, first, 1)
		assert.Zero(t, second, "a message whose commit was written is never sent again")
	default:
		assert.Zero(t, first+second, "a withdrawn message is never committed")
	}
	if p == atIdle {
		assert.Equal(t, 1, commits(srv.ReceivedOn(0), "first"))
	}
	if want != delivered {
		assert.Equal(t, 1, commits(srv.ReceivedOn(1), "recovery"))
	}

	if replay {
		assert.EqualValues(t, 1, st.Replayed, "stats: %+v", st)
	} else {
		assert.Zero(t, st.Replayed, "stats: %+v", st)
	}
	if f == f421 {
		assert.EqualValues(t, 1, st.Seen421, "stats: %+v", st)
	}
	switch want {
	case unknown:
		assert.EqualValues(t, 1, st.Unknown)
	case withdrawn:
		assert.EqualValues(t, 1, st.Withdrawn)
	}
	assert.Zero(t, st.Failed, "stats: %+v", st)
}

// TestFaultIdleSubSecond: the server closes a session (with or
// without a 421 first) while it sits idle. The session's reader reads
// while nothing is owed, so it sees the close as it comes, and the next
// message goes on a new session: delivered once. (Where the core could
// only probe before writing, a close could cross the next transaction.)
// kernelPeek: the platforms where the smtp core peeks at an idle socket.
var kernelPeek = slices.Contains([]string{"linux", "darwin", "freebsd", "netbsd", "openbsd", "dragonfly"}, runtime.GOOS)

func TestFaultIdleSubSecond(t *testing.T) {
	for _, m := range serverModes {
		for _, f := range []fault{f421, fClose} {
			t.Run(m.name+"/"+f.String(), func(t *testing.T) {
				limitParallel(t)
				srv := fs.StartMulti(t, faultyScript(m, atIdle, f), healthy(m, 1))
				s := faultSender(t, srv.Addr(), nil)
				_, err := timedSend(t, s, "first", 5*time.Second)
				require.NoError(t, err)
				time.Sleep(50 * time.Millisecond) // the server has hung up by now
				out, err := timedSend(t, s, "probe", 5*time.Second)
				st := s.Stats()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				require.NoError(t, s.Shutdown(ctx))
				srv.Close()
				require.NoError(t, srv.Err())
				first, second := commits(srv.ReceivedOn(0), "probe"), commits(srv.ReceivedOn(1), "probe")
				assert.Zero(t, first, "the server had closed")
				if f == fClose && m.chunking && m.pipelining && !kernelPeek {
					require.Error(t, err)
					assert.ErrorIs(t, err, sender.ErrOutcomeUnknown)
					assert.True(t, classified(err))
					assert.Zero(t, second, "never sent twice")
					assert.EqualValues(t, 1, st.Unknown)
					return
				}
				require.NoError(t, err, "stats %+v", st)
				assert.Equal(t, "H1", out.QueueID)
				assert.Equal(t, 1, second)
				if kernelPeek {
					// Seen before anything was written: not a replay.
					assert.Zero(t, st.Replayed)
				} else {
					// A 421 read with the last reply is seen before
					// anything is written too; a later one is not.
					assert.LessOrEqual(t, st.Replayed, int64(1))
				}
			})
		}
	}
}

// TestFaultReplayBody: a 421 after part of the body was read. A body
// that is an io.Seeker is rewound (to where it stood when Send was
// called) and replayed; one that is not is answered with the 421.
func TestFaultReplayBody(t *testing.T) {
	m := serverMode{"chunking", false, true} // chunks are answered one by one
	full := faultBody("seek")
	const skipped = "X-Skipped: read by the caller before Send\r\n"
	cases := []struct {
		name   string
		body   func() io.Reader
		replay bool
	}{
		{"bytes.Reader", func() io.Reader {
			r := bytes.NewReader([]byte(skipped + full))
			_, _ = io.CopyN(io.Discard, r, int64(len(skipped))) // partly read already
			return r
		}, true},
		{"io.MultiReader", func() io.Reader {
			return io.MultiReader(strings.NewReader(full[:700]), strings.NewReader(full[700:]))
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			limitParallel(t)
			first := append(faultyScript(m, atData, f421)[:0:0], faultyScript(m, atData, f421)...)
			srv := fs.StartMulti(t, first, healthy(m, 1))
			s := faultSender(t, srv.Addr(), nil)
			out, err := timedSendBody(t, s, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, tc.body(), 5*time.Second)
			st := s.Stats()
			if tc.replay {
				require.NoError(t, err)
				assert.Equal(t, "H1", out.QueueID)
				assert.EqualValues(t, 1, st.Replayed)
				shutdown(t, s, srv)
				// The replay starts where the body stood at Send.
				assert.Equal(t, 1, commits(srv.ReceivedOn(1), "seek"))
				assert.NotContains(t, string(srv.ReceivedOn(1)), "X-Skipped")
				assert.Equal(t, 2, srv.Conns())
			} else {
				require.Error(t, err)
				var se *smtp.Error
				require.ErrorAs(t, err, &se)
				assert.Equal(t, 421, se.Code, "the original error: %v", err)
				assert.True(t, smtp.IsTemporary(err))
				assert.Zero(t, st.Replayed)
				require.NoError(t, s.Close())
				srv.Close()
				assert.Equal(t, 1, srv.Conns(), "no redial for a body that cannot be replayed")
				assert.Zero(t, commits(srv.Received(), "seek"))
			}
		})
	}
}

// TestFaultReplayMidData: the connection drops while a large DATA body
// is being written (before the final dot): a bytes.Reader is replayed
// from its start, an io.MultiReader fails with the temporary I/O error.
func TestFaultReplayMidData(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	var big strings.Builder
	big.WriteString("Subject: big\r\n\r\n")
	for big.Len() < 8<<20 {
		big.WriteString("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n")
	}
	big.WriteString("End big\r\n")
	body := big.String()
	for _, seekable := range []bool{true, false} {
		t.Run(fmt.Sprintf("seekable=%v", seekable), func(t *testing.T) {
			limitParallel(t)
			faulty := []fs.Step{stepGreet}
			faulty = append(faulty, ehloSteps(m)...)
			faulty = append(faulty, stepMail, stepMailOK, stepRcpt, stepRcptOK,
				fs.ExpectLine("DATA"), fs.Reply("354 go ahead\r\n"), fs.ReadN(256<<10), fs.Abort())
			srv := fs.StartMulti(t, faulty, healthy(m, 1))
			s := faultSender(t, srv.Addr(), nil)
			var r io.Reader = strings.NewReader(body)
			if !seekable {
				r = io.MultiReader(strings.NewReader(body[:1000]), strings.NewReader(body[1000:]))
			}
			out, err := timedSendBody(t, s, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, r, 20*time.Second)
			if seekable {
				require.NoError(t, err)
				assert.Equal(t, "H1", out.QueueID)
				shutdown(t, s, srv)
				assert.Equal(t, 1, commits(srv.ReceivedOn(1), "big"))
			} else {
				require.Error(t, err)
				assert.True(t, smtp.IsTemporary(err), "%v", err)
				assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
				require.NoError(t, s.Close())
				srv.Close()
				assert.Equal(t, 1, srv.Conns())
			}
			assert.Zero(t, commits(srv.ReceivedOn(0), "big"))
		})
	}
}

// TestFaultPipelinedWindow: several transactions in flight on one
// session when the server answers the second MAIL with 421. The first is
// delivered; the others are replayed, in order, on the next connection.
func TestFaultPipelinedWindow(t *testing.T) {
	for _, m := range serverModes {
		t.Run(m.name, func(t *testing.T) {
			limitParallel(t)
			first := []fs.Step{stepGreet}
			first = append(first, ehloSteps(m)...)
			first = append(first, txSteps(m, "P1")...)
			first = append(first, stepMail, fs.Reply("421 4.3.2 going down\r\n"), fs.Close())
			// With CHUNKING and PIPELINING the whole window left in one
			// write: the transaction behind the 421'd one was committed,
			// but the server closed after its 421 without a word for it,
			// so it was never processed and is written again, without
			// the 421 copied onto it (it costs no attempt).
			srv := fs.StartMulti(t, first, healthy(m, 2))
			var s *sender.Sender
			var dials atomic.Int64
			s = faultSender(t, srv.Addr(), func(c *sender.Config) {
				c.MaxConns = 1
				// The first connection is made once all three wait,
				// so its first window can take them all.
				firstDial := dialWhenWaiting(&s, 3, srv.Addr())
				c.Dial = func(ctx context.Context) (transport.Transport, error) {
					if dials.Add(1) == 1 {
						return firstDial(ctx)
					}
					return transport.Dial(ctx, srv.Addr())
				}
			})
			var wg sync.WaitGroup
			errs := make([]error, 3)
			for i := range 3 {
				wg.Go(func() {
					_, errs[i] = timedSend(t, s, fmt.Sprintf("w%d", i), 5*time.Second)
				})
			}
			wg.Wait()
			for i, err := range errs {
				assert.NoError(t, err, "message %d", i)
			}
			st := s.Stats()
			shutdown(t, s, srv)
			require.NoError(t, srv.Err())
			// The first connection processed its first transaction only:
			// the 421'd one was refused whatever of it was written.
			conn0 := srv.ReceivedOn(0)
			mail := []byte("MAIL FROM:")
			if i := bytes.Index(conn0, mail); i >= 0 {
				if j := bytes.Index(conn0[i+1:], mail); j >= 0 {
					conn0 = conn0[:i+1+j]
				}
			}
			for i := range 3 {
				id := fmt.Sprintf("w%d", i)
				n := commits(conn0, id) + commits(srv.ReceivedOn(1), id)
				assert.Equal(t, 1, n, "%s delivered exactly once", id)
			}
			assert.EqualValues(t, 1, st.Seen421)
			assert.EqualValues(t, 3, st.Sent)
			assert.Zero(t, st.Unknown)
			assert.EqualValues(t, 2, st.Dials)
		})
	}
}

// dialWhenWaiting is a Config.Dial that dials addr once n Sends wait on
// *s, so that the first window takes them all.
func dialWhenWaiting(s **sender.Sender, n int, addr string) func(context.Context) (transport.Transport, error) {
	return func(ctx context.Context) (transport.Transport, error) {
		for (*s).Stats().Waiting < int64(n) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		return transport.Dial(ctx, addr)
	}
}

// firstAnsweredAlone sends one message per id on s at once, on a server
// that answers the first and stalls on the rest. It checks that the first
// is answered (delivered as queueID) while the others still wait, then
// cancels those and returns their errors.
func firstAnsweredAlone(t *testing.T, s *sender.Sender, ids []string, queueID, held string) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type answer struct {
		out *smtp.Outcome
		err error
	}
	answers := make(chan answer, len(ids))
	for _, id := range ids {
		go func() {
			out, err := s.Send(ctx, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(faultBody(id)))
			answers <- answer{out, err}
		}()
	}
	select {
	case a := <-answers:
		require.NoError(t, a.err)
		assert.Equal(t, queueID, a.out.QueueID)
	case <-time.After(30 * time.Second): // a hang guard, not a measurement
		t.Fatal(held)
	}
	select {
	case a := <-answers:
		t.Fatalf("a stalled transaction was answered: %v", a.err)
	default:
	}
	cancel()
	var errs []error
	for range len(ids) - 1 {
		errs = append(errs, (<-answers).err)
	}
	return errs
}

// TestFaultAnswerNotHeldBehindStall: of two transactions in one window,
// the first is answered as soon as its reply is in, though the server
// stalls on the second: the session does not hold an answer back while
// it waits on the network.
func TestFaultAnswerNotHeldBehindStall(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	script := []fs.Step{stepGreet}
	script = append(script, ehloSteps(m)...)
	script = append(script, stepMail, stepRcpt, readBDAT(false), stepMail, stepRcpt, readBDAT(false),
		fs.Reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as A1\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"),
		fs.Stall())
	srv := fs.Start(t, script...)
	var s *sender.Sender
	s = faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.MaxConns = 1
		c.Options.ChunkSize = 0 // one BDAT LAST per message
		c.Dial = dialWhenWaiting(&s, 2, srv.Addr())
	})
	errs := firstAnsweredAlone(t, s, []string{"n1", "n2"}, "A1", "the first transaction's answer was held back")
	assert.ErrorIs(t, errs[0], sender.ErrOutcomeUnknown)
	shutdown(t, s, srv)
}

// TestFaultAnswerNotHeldDuringWrite: DATA with PIPELINING, three
// transactions in one window. Writing the third waits for the second's
// 354, and on the way reads the first's final reply; then the server
// stalls. The first caller is answered at once (within holdFor) though
// the session is still waiting inside that write.
func TestFaultAnswerNotHeldDuringWrite(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	script := []fs.Step{stepGreet}
	script = append(script, ehloSteps(m)...)
	script = append(script, stepMail, stepRcpt, fs.ExpectLine("DATA"),
		fs.Reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"),
		fs.ReadUntil("\r\n.\r\n"), stepMail, stepRcpt, fs.ExpectLine("DATA"),
		fs.Reply("250 2.0.0 Ok: queued as A1\r\n"), fs.Stall())
	srv := fs.Start(t, script...)
	var s *sender.Sender
	s = faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.MaxConns = 1
		c.MaxInFlight = 4
		c.Dial = dialWhenWaiting(&s, 3, srv.Addr())
	})
	errs := firstAnsweredAlone(t, s, []string{"d1", "d2", "d3"}, "A1", "the first transaction's answer was held while the session waited inside a write")
	for _, err := range errs {
		require.Error(t, err)
	}
	shutdown(t, s, srv)
}

// TestFaultDeferredCommit: with two recipients (all or nothing), the
// commit waits for the RCPT replies even with CHUNKING and PIPELINING,
// so a connection lost at RCPT loses nothing committed: replayed.
func TestFaultDeferredCommit(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	env := smtp.Envelope{From: faultFrom, To: []string{faultTo, "c@example.com"}}
	faulty := []fs.Step{stepGreet}
	faulty = append(faulty, ehloSteps(m)...)
	faulty = append(faulty, stepMail, stepMailOK, stepRcpt, stepRcptOK, fs.ExpectLine("RCPT TO:<c@example.com>"), fs.Close())
	good := []fs.Step{stepGreet}
	good = append(good, ehloSteps(m)...)
	good = append(good, stepMail, stepMailOK, stepRcpt, stepRcptOK, fs.ExpectLine("RCPT TO:<c@example.com>"), stepRcptOK,
		readBDAT(false), fs.Reply("250 2.0.0 Ok: queued as H1\r\n"), fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
	srv := fs.StartMulti(t, faulty, good)
	s := faultSender(t, srv.Addr(), nil)
	out, err := timedSendBody(t, s, env, strings.NewReader(faultBody("two")), 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "H1", out.QueueID)
	assert.EqualValues(t, 1, s.Stats().Replayed)
	shutdown(t, s, srv)
	require.NoError(t, srv.Err())
	assert.Zero(t, commits(srv.ReceivedOn(0), "two"))
	assert.Equal(t, 1, commits(srv.ReceivedOn(1), "two"))
}

// TestFaultRefusalsKeepSession: 4xx and 5xx replies other than 421 go
// back to the caller, classified, and the session stays in use: the
// next transaction starts with RSET on the same connection.
func TestFaultRefusalsKeepSession(t *testing.T) {
	for _, m := range serverModes {
		t.Run(m.name, func(t *testing.T) {
			limitParallel(t)
			script := []fs.Step{stepGreet}
			script = append(script, ehloSteps(m)...)
			// 1: MAIL refused, temporarily.
			script = append(script, stepMail, fs.Reply("451 4.3.0 try again later\r\n"))
			if m.pipelining {
				// RCPT and DATA (or BDAT) were pipelined behind it.
				script = append(script, stepRcpt, fs.Reply("503 5.5.1 need MAIL\r\n"))
				if m.chunking {
					script = append(script, readBDAT(false), fs.Reply("503 5.5.1 need MAIL\r\n"))
				} else {
					script = append(script, fs.ExpectLine("DATA"), fs.Reply("503 5.5.1 need MAIL\r\n"))
				}
			}
			// 2: RCPT refused, permanently.
			script = append(script, fs.ExpectLine("RSET"), fs.Reply("250 2.0.0 Ok\r\n"),
				stepMail, stepMailOK, stepRcpt, fs.Reply("550 5.1.1 no such user\r\n"))
			if m.chunking && m.pipelining {
				script = append(script, readBDAT(false), fs.Reply("554 5.5.1 no valid recipients\r\n"))
			} else if m.pipelining {
				script = append(script, fs.ExpectLine("DATA"), fs.Reply("554 5.5.1 no valid recipients\r\n"))
			}
			// 3: the final reply refuses the message.
			script = append(script, fs.ExpectLine("RSET"), fs.Reply("250 2.0.0 Ok\r\n"),
				stepMail, stepMailOK, stepRcpt, stepRcptOK)
			script = append(script, bodySteps(m)...)
			script = append(script, fs.Reply("554 5.7.1 spam\r\n"))
			// 4: accepted, on the same connection, after RSET: some
			// servers (Mailpit while it shuts down) refuse the next MAIL
			// with 503 after a refused end of data otherwise.
			script = append(script, fs.ExpectLine("RSET"), fs.Reply("250 2.0.0 Ok\r\n"))
			script = append(script, txSteps(m, "OK4")...)
			script = append(script, fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
			srv := fs.Start(t, script...)
			s := faultSender(t, srv.Addr(), func(c *sender.Config) { c.MaxConns = 1 })

			_, err := timedSend(t, s, "r1", 5*time.Second)
			requireSMTP(t, err, 451, true)
			_, err = timedSend(t, s, "r2", 5*time.Second)
			requireSMTP(t, err, 550, false)
			_, err = timedSend(t, s, "r3", 5*time.Second)
			requireSMTP(t, err, 554, false)
			out, err := timedSend(t, s, "r4", 5*time.Second)
			require.NoError(t, err)
			assert.Equal(t, "OK4", out.QueueID)
			waitFor(t, "the session to be idle", func() bool { st := s.Stats(); return st.Idle == 1 && st.Open == 1 })
			st := s.Stats()
			shutdown(t, s, srv)
			require.NoError(t, srv.Err())
			assert.EqualValues(t, 1, st.Dials, "one session throughout")
			assert.EqualValues(t, 3, st.Failed)
			assert.EqualValues(t, 1, st.Sent)
			assert.Zero(t, st.Replayed)
		})
	}
}

func requireSMTP(t *testing.T, err error, code int, temporary bool) {
	t.Helper()
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, code, se.Code, "%v", err)
	assert.Equal(t, temporary, smtp.IsTemporary(err), "%v", err)
	assert.Equal(t, !temporary, smtp.IsPermanent(err), "%v", err)
	assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
}

// TestFaultTLS: faults over implicit TLS and STARTTLS sessions.
func TestFaultTLS(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	for _, sec := range []sender.Security{sender.ImplicitTLS, sender.StartTLS} {
		for _, f := range []fault{f421, fAbort} {
			t.Run(sec.String()+"/"+f.String(), func(t *testing.T) {
				limitParallel(t)
				serverTLS, roots := fs.SelfSignedTLS(t)
				open := func() []fs.Step {
					if sec == sender.ImplicitTLS {
						s := []fs.Step{fs.StartTLS(serverTLS), stepGreet}
						return append(s, ehloSteps(m)...)
					}
					return []fs.Step{stepGreet, fs.ExpectLine("EHLO localhost"),
						fs.Reply(fs.Lines("250-fault.example", "250 STARTTLS")),
						fs.ExpectLine("STARTTLS"), fs.Reply("220 2.0.0 go ahead\r\n"), fs.StartTLS(serverTLS),
						fs.ExpectLine("EHLO localhost"), fs.Reply(m.ehloReply())}
				}
				faulty := append(open(), stepMail, stepMailOK, stepRcpt, stepRcptOK, readBDAT(false))
				faulty = append(faulty, f.steps()...)
				good := append(open(), txSteps(m, "T1")...)
				good = append(good, fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
				srv := fs.StartMulti(t, faulty, good)
				s := faultSender(t, srv.Addr(), func(c *sender.Config) {
					c.Security = sec
					c.Options.TLSConfig = &tls.Config{RootCAs: roots}
				})
				out, err := timedSend(t, s, "tls", 5*time.Second)
				if f == f421 {
					require.NoError(t, err)
					assert.Equal(t, "T1", out.QueueID)
					assert.EqualValues(t, 1, s.Stats().Replayed)
					shutdown(t, s, srv)
					require.NoError(t, srv.Err())
					return
				}
				require.Error(t, err)
				assert.ErrorIs(t, err, sender.ErrOutcomeUnknown)
				_, err = timedSend(t, s, "after", 5*time.Second)
				require.NoError(t, err)
				shutdown(t, s, srv)
				require.NoError(t, srv.Err())
				assert.Zero(t, commits(srv.ReceivedOn(1), "tls"), "never sent twice")
			})
		}
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestCancelAfterCommitReachesAudit: the caller's context ends while the
// final reply is awaited. Send returns at once with ErrOutcomeUnknown
// (wrapping the context's error); the session still reads the real
// outcome and hands it to the audit hook.
func TestCancelAfterCommitReachesAudit(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	script := []fs.Step{stepGreet}
	script = append(script, ehloSteps(m)...)
	script = append(script, stepMail, stepMailOK, stepRcpt, stepRcptOK)
	script = append(script, bodySteps(m)...)
	script = append(script, fs.Sleep(600*time.Millisecond), fs.Reply("250 2.0.0 Ok: queued as LATE\r\n"),
		fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
	srv := fs.Start(t, script...)
	audit := make(chan smtp.Event, 64)
	s := faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.Options.Audit = func(e smtp.Event) { audit <- e }
	})
	_, err := timedSend(t, s, "late", 200*time.Millisecond)
	require.Error(t, err)
	assert.ErrorIs(t, err, sender.ErrOutcomeUnknown)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.True(t, classified(err))
	deadline := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case e := <-audit:
			if e.Type == smtp.EventMessage {
				assert.Equal(t, "LATE", e.QueueID)
				done = true
			}
		case <-deadline:
			t.Fatal("the real outcome never reached the audit hook")
		}
	}
	st := s.Stats()
	assert.EqualValues(t, 1, st.Unknown)
	assert.Zero(t, st.Sent)
	shutdown(t, s, srv)
	require.NoError(t, srv.Err())
	assert.Equal(t, 1, srv.Conns(), "the session was kept")
}

// TestCancelWhileWaitingForSession: every session is busy; a Send that
// waits for one returns its context's error on time.
func TestCancelWhileWaitingForSession(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	script := []fs.Step{stepGreet}
	script = append(script, ehloSteps(m)...)
	script = append(script, stepMail, stepMailOK, stepRcpt, stepRcptOK, fs.ExpectLine("DATA"), fs.Stall())
	srv := fs.Start(t, script...)
	s := faultSender(t, srv.Addr(), func(c *sender.Config) { c.MaxConns = 1 })
	busy := make(chan error, 1)
	go func() {
		_, err := timedSend(t, s, "busy", 3*time.Second)
		busy <- err
	}()
	waitFor(t, "the first message's DATA", func() bool { return bytes.Contains(srv.Received(), []byte("DATA\r\n")) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := timedSend(t, s, "waiting", 200*time.Millisecond)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	}()
	waitFor(t, "a waiting Send", func() bool { return s.Stats().Waiting == 1 })
	<-done
	assert.Zero(t, s.Stats().Waiting)
	err := <-busy
	assert.ErrorIs(t, err, context.DeadlineExceeded, "withdrawn before its commit point")
	assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
	st := s.Stats()
	assert.EqualValues(t, 2, st.Withdrawn)
	assert.EqualValues(t, 1, st.Dials)
	require.NoError(t, s.Close())
	srv.Close()
	assert.Zero(t, commits(srv.Received(), "busy"))
}

// TestWithdrawalOnStalledServerFreesSession: the server stalls at MAIL
// (DATA with PIPELINING: the body waits for a 354 that never comes, so
// nothing is committed) and the caller gives up. Its connection is
// interrupted after withdrawGrace rather than sitting on a dead server
// for the command timeout, so with one connection allowed the next Send
// gets a new session and is delivered.
func TestWithdrawalOnStalledServerFreesSession(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	srv := fs.StartMulti(t, faultyScript(m, atMail, fStall), healthy(m, 1))
	s := faultSender(t, srv.Addr(), func(c *sender.Config) { c.MaxConns = 1 })
	_, err := timedSend(t, s, "stalled", 200*time.Millisecond)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, sender.ErrOutcomeUnknown, "withdrawn before its commit point")
	out, err := timedSend(t, s, "next", 30*time.Second) // a hang guard, not a measurement
	require.NoError(t, err)
	assert.Equal(t, "H1", out.QueueID)
	st := s.Stats()
	assert.EqualValues(t, 2, st.Dials)
	assert.EqualValues(t, 1, st.Withdrawn)
	shutdown(t, s, srv)
	require.NoError(t, srv.Err())
	assert.Zero(t, commits(srv.ReceivedOn(0), "stalled"))
}

// TestCancelDuringRedial: after a 421 the session redials a server that
// does not greet. The caller's context ends during the redial: Send
// returns its error on time, and the redial, which nobody waits for any
// more, is abandoned at once (it is bounded by the callers' contexts).
func TestCancelDuringRedial(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	srv := fs.StartMulti(t, faultyScript(m, atMail, f421), []fs.Step{fs.Stall()})
	s := faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.MaxConns = 1
		c.DialTimeout = time.Minute
	})
	_, err := timedSend(t, s, "redial", 300*time.Millisecond)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, sender.ErrOutcomeUnknown)
	select {
	case <-srv.HungUp():
	case <-time.After(time.Second):
		t.Fatal("the redial outlived its last caller")
	}
	waitFor(t, "the session goroutine to end", func() bool { return s.Stats().Open == 0 })
	st := s.Stats()
	assert.EqualValues(t, 2, st.Dials)
	assert.Zero(t, st.DialFailures, "an abandoned dial is not the server's failure")
	assert.EqualValues(t, 1, st.Withdrawn)
	assert.EqualValues(t, 1, st.Seen421)
	require.NoError(t, s.Close())
	require.NoError(t, srv.Err())
}

// flakyDialer dials addr while up is set, or while its budget of
// dials lasts, and fails otherwise.
type flakyDialer struct {
	addr   string
	up     atomic.Bool
	budget atomic.Int64
	calls  atomic.Int64
}

var errDown = errors.New("test: server down")

func (d *flakyDialer) dial(ctx context.Context) (transport.Transport, error) {
	d.calls.Add(1)
	if !d.up.Load() && d.budget.Add(-1) < 0 {
		return nil, errDown
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// TestRedialBackoffBoundedByCaller: after a 421, redials keep failing.
// They go on with backoff while the caller waits, and stop when its
// context ends.
func TestRedialBackoffBoundedByCaller(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	srv := fs.Start(t, faultyScript(m, atMail, f421)...)
	d := &flakyDialer{addr: srv.Addr()}
	d.budget.Store(1) // down after the first connection
	s := faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.Dial = d.dial
		c.MaxConns = 1
		c.MaxDialFailures = 1000
		c.Backoff = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
	})
	_, err := timedSend(t, s, "r", 400*time.Millisecond)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	waitFor(t, "the session goroutine to end", func() bool { return s.Stats().Open == 0 })
	calls := d.calls.Load()
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, calls, d.calls.Load(), "no dial after the caller left")
	st := s.Stats()
	assert.Greater(t, st.DialFailures, int64(3), "redials went on while the caller waited")
	assert.Less(t, st.DialFailures, int64(40), "with backoff: %+v", st)
}

// TestRedialFailFast: after a 421, redials fail MaxDialFailures times in
// a row; the request waiting for its replay fails with the dial error,
// like new Sends, instead of waiting for its context.
func TestRedialFailFast(t *testing.T) {
	m := serverMode{"data", false, false}
	srv := fs.StartMulti(t, faultyScript(m, atRcpt, f421), healthy(m, 1))
	d := &flakyDialer{addr: srv.Addr()}
	d.budget.Store(1) // down after the first connection
	s := faultSender(t, srv.Addr(), func(c *sender.Config) {
		c.Dial = d.dial
		c.MaxConns = 1
		c.MaxDialFailures = 3
	})
	_, err := timedSend(t, s, "ff", 5*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, errDown)
	assert.True(t, smtp.IsTemporary(err), "%v", err)
	_, err = timedSend(t, s, "ff2", 5*time.Second)
	assert.ErrorIs(t, err, errDown, "failing fast")
	// Nobody waits: no session is left dialing in the background.
	waitFor(t, "the sessions to end", func() bool { return s.Stats().Open == 0 })
	// Once the server is back, the first Send after the backoff starts
	// one new session, and Sends work again.
	d.up.Store(true)
	waitFor(t, "Sends to work again", func() bool {
		_, err := timedSend(t, s, "back", time.Second)
		return err == nil || !errors.Is(err, errDown)
	})
	require.NoError(t, s.Close())
}

// TestFailFast: N consecutive failed dials make Sends fail at once with
// the last dial error; while Sends keep coming, one of them starts a new
// dial each time the backoff has passed (the probe), none while nobody
// sends, and when the server is back Sends work again. The dial count
// shows there is no reconnect storm.
func TestFailFast(t *testing.T) {
	peer := newPeer(t)
	d := &flakyDialer{addr: peer.Addr()}
	const step = 20 * time.Millisecond
	s, err := sender.New(sender.Config{
		Dial:            d.dial,
		Security:        sender.InsecurePlaintext,
		MaxConns:        4,
		MaxDialFailures: 3,
		Backoff:         func() backoff.BackOff { return backoff.NewConstantBackOff(step) },
	})
	require.NoError(t, err)
	defer s.Close()
	env := smtp.Envelope{From: faultFrom, To: []string{faultTo}}

	// The first Send waits while the first dials fail, then fails fast.
	_, err = timedSendBody(t, s, env, strings.NewReader(msg(0)), 5*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, errDown)
	assert.True(t, classified(err), "%v", err)
	assert.GreaterOrEqual(t, s.Stats().DialFailures, int64(3))

	// A burst of Sends fails at once, without dialing.
	start := time.Now()
	before := d.calls.Load()
	for i := range 500 {
		_, err := timedSendBody(t, s, env, strings.NewReader(msg(i)), 5*time.Second)
		require.ErrorIs(t, err, errDown)
	}
	elapsed := time.Since(start)
	probes := d.calls.Load() - before
	assert.LessOrEqual(t, probes, int64(elapsed/step)+2, "only the probe dials, with backoff: %d dials in %v", probes, elapsed)
	assert.LessOrEqual(t, s.Stats().Open, int64(1), "one probe")

	// Still down, and nobody sends: nobody dials.
	waitFor(t, "the probe to end", func() bool { return s.Stats().Open == 0 })
	quiet := d.calls.Load()
	time.Sleep(10 * step)
	assert.Equal(t, quiet, d.calls.Load(), "no dial while nobody waits")

	// Back up: the next Send after the backoff dials, and Sends succeed
	// again.
	d.up.Store(true)
	waitFor(t, "a Send to get through", func() bool {
		_, err := timedSendBody(t, s, env, strings.NewReader(msg(0)), time.Second)
		return err == nil
	})
	peer.Reset()
	ok := 0
	deadline := time.Now().Add(5 * time.Second)
	for ok < 20 && time.Now().Before(deadline) {
		if _, err := timedSendBody(t, s, env, strings.NewReader(msg(ok)), 5*time.Second); err == nil {
			ok++
		}
	}
	assert.Equal(t, 20, ok)
	assert.EqualValues(t, 20, peer.Count())
	st := s.Stats()
	assert.LessOrEqual(t, st.Dials-st.DialFailures, int64(4), "a few sessions, no storm: %+v", st)
	t.Logf("stats: %+v", st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
}

// TestFailFastClosedPort: dialing a closed port fails; after
// MaxDialFailures dials, Sends fail at once with an error wrapping the
// connection refusal.
func TestFailFastClosedPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	s, err := sender.New(sender.Config{Addr: addr, Security: sender.InsecurePlaintext, MaxDialFailures: 3, Backoff: fastBackoff})
	require.NoError(t, err)
	defer s.Close()
	env := smtp.Envelope{From: faultFrom, To: []string{faultTo}}
	_, err = timedSendBody(t, s, env, strings.NewReader(msg(0)), 5*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.True(t, smtp.IsTemporary(err))
	for i := range 100 {
		start := time.Now()
		_, err = timedSendBody(t, s, env, strings.NewReader(msg(i)), 5*time.Second)
		assert.ErrorIs(t, err, syscall.ECONNREFUSED)
		// A guard: failing fast means no wait for a dial (the dial
		// count below says how few there were), not a wall-clock bound.
		assert.Less(t, time.Since(start), time.Second, "fails fast")
	}
	st := s.Stats()
	assert.Less(t, st.Dials, int64(30), "no storm: %+v", st)
	assert.EqualValues(t, 101, st.Failed)
}

// TestShutdownFinishesInFlight: Shutdown refuses new Sends with
// ErrClosed, lets the message in flight get its answer, QUITs, and is
// idempotent; so is Close after it.
func TestShutdownFinishesInFlight(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	script := []fs.Step{stepGreet}
	script = append(script, ehloSteps(m)...)
	script = append(script, stepMail, stepMailOK, stepRcpt, stepRcptOK)
	script = append(script, bodySteps(m)...)
	script = append(script, fs.Sleep(300*time.Millisecond), fs.Reply("250 2.0.0 Ok: queued as SD1\r\n"),
		fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
	srv := fs.Start(t, script...)
	s := faultSender(t, srv.Addr(), func(c *sender.Config) { c.MaxConns = 1 })
	type answer struct {
		out *smtp.Outcome
		err error
	}
	inflight := make(chan answer, 1)
	go func() {
		out, err := timedSend(t, s, "sd", 5*time.Second)
		inflight <- answer{out, err}
	}()
	waitFor(t, "the commit", func() bool { return commits(srv.Received(), "sd") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	time.Sleep(20 * time.Millisecond)
	// With one session, busy, this Send would wait; Shutdown refuses it.
	_, err := timedSendBody(t, s, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(msg(1)), 5*time.Second)
	assert.ErrorIs(t, err, sender.ErrClosed)
	a := <-inflight
	require.NoError(t, a.err)
	assert.Equal(t, "SD1", a.out.QueueID)
	require.NoError(t, <-shut)
	<-srv.Done()
	require.NoError(t, srv.Err(), "QUIT was sent")
	require.NoError(t, s.Shutdown(ctx))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	st := s.Stats()
	assert.Zero(t, st.Open)
	assert.EqualValues(t, 1, st.Sent)
}

// TestCloseInterruptsStall: Close aborts at once a session stuck on a
// server that stopped answering; the waiting Send gets its answer (an
// I/O error before the commit point, ErrOutcomeUnknown after it).
func TestCloseInterruptsStall(t *testing.T) {
	m := serverMode{"data+pipelining", true, false}
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed=%v", committed), func(t *testing.T) {
			limitParallel(t)
			p := atData
			if committed {
				p = atBody
			}
			srv := fs.Start(t, faultyScript(m, p, fStall)...)
			s := faultSender(t, srv.Addr(), nil)
			errc := make(chan error, 1)
			go func() {
				_, err := s.Send(context.Background(), smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(faultBody("stuck")))
				errc <- err
			}()
			waitFor(t, "the stall", func() bool {
				if committed {
					return commits(srv.Received(), "stuck") == 1
				}
				return bytes.Contains(srv.Received(), []byte("DATA\r\n"))
			})
			time.Sleep(20 * time.Millisecond)
			start := time.Now()
			require.NoError(t, s.Close())
			assert.Less(t, time.Since(start), time.Second, "Close is prompt")
			var err error
			select {
			case err = <-errc:
			case <-time.After(time.Second):
				t.Fatal("Send did not return after Close")
			}
			require.Error(t, err)
			assert.True(t, classified(err), "%v", err)
			if committed {
				assert.ErrorIs(t, err, sender.ErrOutcomeUnknown)
			} else {
				assert.True(t, smtp.IsTemporary(err), "%v", err)
			}
			require.NoError(t, s.Close())
			require.NoError(t, s.Shutdown(context.Background()))
			_, err = s.Send(context.Background(), smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(msg(1)))
			assert.ErrorIs(t, err, sender.ErrClosed)
			assert.Zero(t, s.Stats().Open)
		})
	}
}

// TestRetiredSessionsWakeWaiters: with one connection allowed and each
// retired after one message (or after a short lifetime), Sends that wait
// while it retires get a new session rather than waiting out their
// contexts.
func TestRetiredSessionsWakeWaiters(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func(*sender.Config)
	}{
		{"MaxMessagesPerConn", func(c *sender.Config) { c.MaxMessagesPerConn = 1 }},
		{"MaxLifetime", func(c *sender.Config) { c.MaxLifetime = 10 * time.Millisecond; c.MaxInFlight = 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each message takes at least 3 ms, so ten outlive 10 ms.
			peer := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{DiscardBodies: true, Delay: func(stage string) time.Duration {
				if stage == "DATA" {
					return 3 * time.Millisecond
				}
				return 0
			}})
			cfg := sender.Config{Addr: peer.Addr(), Security: sender.InsecurePlaintext, MaxConns: 1}
			tc.cfg(&cfg)
			s, err := sender.New(cfg)
			require.NoError(t, err)
			defer s.Close()
			var wg sync.WaitGroup
			for i := range 10 {
				wg.Go(func() {
					_, err := timedSendBody(t, s, smtp.Envelope{From: faultFrom, To: []string{faultTo}}, strings.NewReader(msg(i)), 10*time.Second)
					assert.NoError(t, err)
				})
			}
			wg.Wait()
			assert.EqualValues(t, 10, peer.Count())
			st := s.Stats()
			assert.GreaterOrEqual(t, st.Dials, int64(2), "sessions were retired: %+v", st)
			assert.Zero(t, st.DialFailures)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			require.NoError(t, s.Shutdown(ctx))
		})
	}
}

// newPeer starts an in-process go-smtp server without TLS.
func newPeer(t *testing.T) *testpeers.GoSMTPServer {
	t.Helper()
	return testpeers.GoSMTP(t, testpeers.GoSMTPOptions{DiscardBodies: true})
}

// TestFaultStartTLSCustomDialUsesPeerAddress: STARTTLS over a custom
// Dial with no Addr and no ServerName. smtp.ConnectStartTLS then checks
// the certificate against the peer's IP address, which it finds through
// the transport's RemoteAddr: the sender's transport wrapper must pass
// it on.
func TestFaultStartTLSCustomDialUsesPeerAddress(t *testing.T) {
	m := serverMode{"chunking+pipelining", true, true}
	serverTLS, roots := fs.SelfSignedTLS(t)
	script := []fs.Step{stepGreet, fs.ExpectLine("EHLO localhost"),
		fs.Reply(fs.Lines("250-fault.example", "250 STARTTLS")),
		fs.ExpectLine("STARTTLS"), fs.Reply("220 2.0.0 go ahead\r\n"), fs.StartTLS(serverTLS),
		fs.ExpectLine("EHLO localhost"), fs.Reply(m.ehloReply())}
	script = append(script, txSteps(m, "RA1")...)
	script = append(script, fs.ExpectLine("QUIT"), fs.Reply("221 bye\r\n"), fs.Close())
	srv := fs.Start(t, script...)
	s, err := sender.New(sender.Config{
		Security: sender.StartTLS,
		MaxConns: 1, MaxDialFailures: 1,
		Backoff: fastBackoff,
		Options: smtp.Options{TLSConfig: &tls.Config{RootCAs: roots}, ChunkSize: 512},
		Dial: func(ctx context.Context) (transport.Transport, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", srv.Addr())
			if err != nil {
				return nil, err
			}
			return transport.Upgradable(c), nil
		},
	})
	require.NoError(t, err)
	defer s.Close()
	out, err := timedSend(t, s, "ra", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "RA1", out.QueueID)
}

package smtp_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
)

// What the goroutine in ReadReplies may write, from its callback (the
// sender's reader writing in its writer's stead): see readerwrite.go.

// readerVerdict starts c's reader and returns what WritesFromReader
// says for replies, asked from the ReadReplies callback (where the
// reader is registered) after the reply to a NOOP; then it quits.
func readerVerdict(t *testing.T, ctx context.Context, c *smtp.Client, replies int) bool {
	t.Helper()
	verdict := make(chan bool, 1)
	readDone := make(chan error, 1)
	go func() {
		readDone <- c.ReadReplies(ctx, func() {
			select {
			case verdict <- smtp.WritesFromReader(c, replies):
			default:
			}
		})
	}()
	// A NOOP read before the reader got in is read by Noop itself, and
	// calls back nobody: the next one is tried.
	var v bool
	for got := false; !got; {
		require.NoError(t, c.Noop(ctx))
		select {
		case v = <-verdict:
			got = true
		default:
		}
	}
	require.NoError(t, c.Quit(ctx))
	<-readDone
	return v
}

// TestReaderWritesOnKernelSocketsNeverOnPipes: on loopback TCP the
// buffers between client and go-smtp hold 4 KiB of replies, so the
// reader may write what leaves up to that owed; a write that would
// leave more (9 replies counted at 512 octets, before any BDAT reply
// has shown how long the server's are) is the writer's. On an in-memory
// pipe nothing is buffered: a reader blocked writing while the server
// is blocked writing a reply would deadlock, so it writes nothing.
func TestReaderWritesOnKernelSocketsNeverOnPipes(t *testing.T) {
	ctx := trCtx(t)
	tcp := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.Plain})
	dial := func() *smtp.Client {
		conn, err := net.Dial("tcp", tcp.Addr())
		require.NoError(t, err)
		c, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		require.NoError(t, err)
		return c
	}
	c := dial()
	assert.False(t, smtp.WritesFromReader(c, 3), "nobody is in ReadReplies")
	assert.True(t, readerVerdict(t, ctx, c, 3), "TCP, 3 replies")
	assert.False(t, readerVerdict(t, ctx, dial(), 9), "TCP, 9 replies of up to 512 octets")

	pipe := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Pipe: true})
	conn, err := pipe.DialPipe(ctx)
	require.NoError(t, err)
	pc, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	require.NoError(t, err)
	assert.False(t, readerVerdict(t, ctx, pc, 1), "pipe")
}

// TestFlushReadyWritesNoBodyBefore354AndWaitsForNone: a server that
// pipelines but has no CHUNKING answers MAIL and RCPT and holds its 354.
// FlushReady sends MAIL, RCPT and DATA and returns at once with the
// transaction still open (Flush would wait for the 354: the server
// holds it until after FlushReady has returned, so a wait would never
// end); once the reader has read the 354, FlushReady from the reader
// writes the body and its final dot, and the message is accepted.
func TestFlushReadyWritesNoBodyBefore354AndWaitsForNone(t *testing.T) {
	release := make(chan struct{})
	srv := fs.Start(t, trSteps(trHello("PIPELINING", "ENHANCEDSTATUSCODES"),
		fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.ExpectLine("RCPT TO:<b@example.com>"), fs.ExpectLine("DATA"),
		fs.Reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"),
		fs.Func(func(net.Conn) error { <-release; return nil }),
		fs.Reply("354 go ahead\r\n"),
		fs.ReadUntil("\r\n.\r\n"), fs.Reply("250 2.0.0 Ok: queued as Q1\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	conn, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	c, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	require.NoError(t, err)
	read354 := make(chan struct{})
	readDone := make(chan error, 1)
	go func() {
		readDone <- c.ReadReplies(ctx, func() {
			if !smtp.OpenWaiting(c) {
				select {
				case <-read354:
				default:
					close(read354)
				}
			}
		})
	}()
	tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	require.NoError(t, err)
	open, err := smtp.FlushReady(c, ctx, false)
	require.NoError(t, err)
	assert.True(t, open, "the body waits for the 354")
	assert.True(t, smtp.OpenWaiting(c))
	close(release)
	select {
	case <-read354:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader never read the 354")
	}
	open, err = smtp.FlushReady(c, ctx, true)
	require.NoError(t, err)
	assert.False(t, open, "the body has been written")
	waitDone(t, tx)
	out, err := smtp.TxResult(tx)
	require.NoError(t, err)
	assert.Equal(t, "Q1", out.QueueID)
	require.NoError(t, c.Quit(ctx))
	<-readDone
	require.NoError(t, srv.Err())
}

// TestServerSilentAfterALargeBDATBodyReaderTimesOut: a goroutine waits
// in ReadReplies before the transaction is written (nothing owed yet, so
// its read has no deadline); the body is larger than the write buffer,
// so most of it leaves by bufio's own writes, straight to the transport.
// The server reads it all and answers nothing. The reader's wait starts
// when the commands leave (the flush before the body arms it), and ends
// at the MAIL reply's timeout, not at its context's end a day later.
func TestServerSilentAfterALargeBDATBodyReaderTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cl, sv := testpeers.BufferedPipe(1 << 20)
		go func() {
			defer sv.Close()
			io.WriteString(sv, "220 silent.example ESMTP\r\n")
			r := bufio.NewReader(sv)
			r.ReadString('\n')
			io.WriteString(sv, "250-silent.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
			io.Copy(io.Discard, r) // reads everything, answers nothing
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
		defer cancel()
		c, err := smtp.Connect(ctx, cl, &smtp.Options{InsecureAllowPlaintext: true, Timeouts: smtp.Timeouts{Command: time.Minute, DataEnd: time.Minute}})
		require.NoError(t, err)
		defer c.Close()
		read := make(chan error, 1)
		go func() { read <- c.ReadReplies(ctx, nil) }()
		synctest.Wait() // the reader waits, nothing owed
		start := time.Now()
		body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 4096) // 320 KiB
		tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(body))
		require.NoError(t, err)
		require.NoError(t, c.Flush(ctx))
		err = <-read
		assert.ErrorIs(t, err, smtp.ErrClosed)
		assert.Less(t, time.Since(start), 2*time.Minute, "the reader waited past the reply timeouts")
		_, err = c.ReadTx(ctx, tx)
		assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
	})
}

package smtp_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// TestHalvesReaderWaitsWhileWriterWrites: one goroutine reads
// (ReadReplies) while another writes, over plaintext and TLS. The server
// sends the first transaction's MAIL reply and half of its RCPT reply,
// and holds the rest until the second transaction's MAIL arrives: the
// writer must write that while the reader is blocked mid-reply.
func TestHalvesReaderWaitsWhileWriterWrites(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "tls"}[useTLS], func(t *testing.T) {
			half := make(chan struct{})
			var steps []fs.Step
			var roots *tls.Config
			if useTLS {
				serverCfg, pool := fs.SelfSignedTLS(t)
				steps = append(steps, fs.StartTLS(serverCfg))
				roots = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
			}
			steps = append(steps, trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES")...)
			steps = append(steps, holdingServer(func(mails int, reply string) (now, later string) {
				switch {
				case mails != 1:
					return reply, ""
				case strings.HasPrefix(reply, "250 2.1.0"):
					return reply, ""
				case strings.HasPrefix(reply, "250 2.1.5"):
					return reply[:7], reply[7:]
				}
				return "", reply
			}, func(mails int) {
				if mails == 1 {
					close(half)
				}
			}))
			srv := fs.Start(t, steps...)
			ctx := trCtx(t)
			var conn net.Conn
			var err error
			if useTLS {
				conn, err = (&tls.Dialer{Config: roots}).DialContext(ctx, "tcp", srv.Addr())
			} else {
				conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", srv.Addr())
			}
			require.NoError(t, err)
			c, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: !useTLS})
			require.NoError(t, err)

			tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("Subject: 1\r\n\r\none\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.Flush(ctx))
			// The reader: replies until both transactions are done.
			readDone := make(chan error, 1)
			// The reader: every reply, until the session closes.
			go func() { readDone <- c.ReadReplies(ctx, nil) }()
			<-half
			assert.False(t, smtp.TxDone(tx1), "the first transaction's replies are held")
			tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("Subject: 2\r\n\r\ntwo\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.Flush(ctx))
			waitDone(t, tx2)
			out, err := smtp.TxResult(tx1)
			require.NoError(t, err)
			assert.Equal(t, "Q1", out.QueueID)
			require.Len(t, out.Accepted, 1)
			out, err = smtp.TxResult(tx2)
			require.NoError(t, err)
			assert.Equal(t, "Q2", out.QueueID)
			require.NoError(t, c.Quit(ctx))
			assert.ErrorIs(t, <-readDone, smtp.ErrClosed, "the reader ends with the session")
			<-srv.Done()
			require.NoError(t, srv.Err())
		})
	}
}

// waitDone waits, as a reader's caller would, until tx is done.
func waitDone(t *testing.T, tx *smtp.Tx) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !smtp.TxDone(tx) {
		if time.Now().After(deadline) {
			t.Fatal("the transaction was never done")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReadReplyUnsolicited: a reply that comes while nothing is owed was
// sent before its command; the reader ends the session on it rather than
// take it as the answer to the next command. A 421 there is the server
// closing an idle session.
func TestReadReplyUnsolicited(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		code        int
		kind        smtp.Kind
	}{
		{"early 250", "250 2.1.0 Ok\r\n", 0, smtp.KindProtocol},
		{"idle 421", "421 4.4.2 idle timeout\r\n", 421, smtp.KindRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent := make(chan struct{})
			srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
				fs.Func(func(conn net.Conn) error {
					<-sent
					_, err := io.WriteString(conn, tc.reply)
					return err
				}), fs.Stall())...)
			ctx := trCtx(t)
			close(sent)
			err := c.ReadReplies(ctx, nil)
			var se *smtp.Error
			require.ErrorAs(t, err, &se)
			assert.ErrorIs(t, err, smtp.ErrClosed)
			assert.Equal(t, smtp.StateClosed, c.State())
			require.ErrorAs(t, c.Err(), &se)
			assert.Equal(t, tc.kind, se.Kind)
			assert.Equal(t, tc.code, se.Code)
			_, err = c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
			assert.ErrorIs(t, err, smtp.ErrClosed, "nothing is written after it")
			<-srv.Done()
		})
	}
}

// TestReplyTimeoutNotExtendedByNewWork: the server stalls after the
// first transaction; transactions written behind it while the reader
// waits do not move its deadline: the first times out at its own
// DataEnd, and all of them end (committed: outcome unknown).
func TestReplyTimeoutNotExtendedByNewWork(t *testing.T) {
	srv := fs.Start(t, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.ReadUntil("BDAT 0 LAST\r\n"), fs.Stall())...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Addr())
	require.NoError(t, err)
	opts := &smtp.Options{InsecureAllowPlaintext: true}
	opts.Timeouts.Command = 300 * time.Millisecond
	opts.Timeouts.DataEnd = 300 * time.Millisecond
	c, err := smtp.Connect(ctx, conn, withName(opts, "client.example", nil))
	require.NoError(t, err)
	tx, err := c.WriteTx(ctx, trEnv, strings.NewReader(""))
	require.NoError(t, err)
	require.NoError(t, c.Flush(ctx))
	start := time.Now()
	readErr := make(chan error, 1)
	go func() { readErr <- c.ReadReplies(ctx, nil) }()
	var more []*smtp.Tx
	for range 3 {
		t2, err := c.WriteTx(ctx, trEnv, strings.NewReader(""))
		if err != nil {
			break
		}
		require.NoError(t, c.Flush(ctx))
		more = append(more, t2)
		time.Sleep(50 * time.Millisecond)
	}
	require.Error(t, <-readErr)
	// A guard, not a measurement: a deadline moved by each write would
	// take at least 450 ms.
	assert.Less(t, time.Since(start), 10*time.Second)
	_, err = smtp.TxResult(tx)
	assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
	for _, t2 := range more {
		assert.True(t, smtp.TxDone(t2))
	}
	assert.Equal(t, smtp.StateClosed, c.State())
}

// pipeServer answers each command the moment it reads it, with a write
// that blocks until the client reads the reply (net.Pipe has no buffer):
// a client that writes on without anyone reading deadlocks with it (the
// RFC 2920 §3.1 deadlock).
func pipeServer(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	io.WriteString(conn, "220 pipe.example ESMTP\r\n")
	n := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		var reply string
		switch strings.ToUpper(f[0]) {
		case "EHLO":
			reply = "250-pipe.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
		case "MAIL":
			reply = "250 2.1.0 Ok\r\n"
		case "RCPT":
			reply = "250 2.1.5 Ok\r\n"
		case "BDAT":
			size, _ := strconv.Atoi(f[1])
			if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
				return
			}
			n++
			reply = fmt.Sprintf("250 2.0.0 Ok: queued as P%d\r\n", n)
		case "QUIT":
			io.WriteString(conn, "221 2.0.0 Bye\r\n")
			return
		default:
			reply = "502 5.5.2 what\r\n"
		}
		if _, err := io.WriteString(conn, reply); err != nil {
			return
		}
	}
}

// TestManyRecipientsServerThatStopsReadingNoDeadlock: 1,000 recipients
// with AllowPartial, written whole (PIPELINING, CHUNKING), to a server
// that stops reading while a reply waits to be read. With a goroutine in
// ReadReplies every reply is read as it comes: no deadlock, no reply
// lost, and no wait for replies before the body. (Driven by one
// goroutine, the client bounds the replies it leaves owed to what a
// transport's buffers hold, maxOwedReplyBytes; net.Pipe holds nothing.)
func TestManyRecipientsServerThatStopsReadingNoDeadlock(t *testing.T) {
	var to []string
	for i := range 1000 {
		to = append(to, fmt.Sprintf("r%04d@example.com", i))
	}
	env := smtp.Envelope{From: "a@example.com", To: to, AllowPartial: true}
	synctest.Test(t, func(t *testing.T) {
		cc, sc := net.Pipe()
		go pipeServer(sc)
		ctx := context.Background()
		c, err := smtp.Connect(ctx, cc, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		require.NoError(t, err)
		readDone := make(chan error, 1)
		go func() { readDone <- c.ReadReplies(ctx, nil) }()
		tx, err := c.WriteTx(ctx, env, strings.NewReader("Subject: many\r\n\r\nhello\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Flush(ctx))
		synctest.Wait()
		require.True(t, smtp.TxDone(tx))
		out, err := smtp.TxResult(tx)
		require.NoError(t, err)
		assert.Len(t, out.Accepted, 1000)
		assert.Equal(t, "P1", out.QueueID)
		require.NoError(t, c.Quit(ctx))
		assert.ErrorIs(t, <-readDone, smtp.ErrClosed)
	})
}

// TestServerRepliesBeforeCommandsAreWritten: the server sends, in the
// same write as its EHLO reply (no gap), replies to commands the client
// has not written yet. They would be taken as the answers to the next
// MAIL and RCPT: the client ends the session instead, before it writes
// anything, whether one goroutine drives it or a reader reads.
func TestServerRepliesBeforeCommandsAreWritten(t *testing.T) {
	for _, reader := range []bool{false, true} {
		t.Run(map[bool]string{false: "one goroutine", true: "reader goroutine"}[reader], func(t *testing.T) {
			early := "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as FAKE\r\n"
			srv, c, conn := trConnect(t, nil, trSteps(fs.Reply(trGreeting), fs.ExpectLine("EHLO client.example"),
				fs.Reply(trCaps("PIPELINING", "CHUNKING")+early), fs.Stall())...)
			ctx := trCtx(t)
			readDone := make(chan error, 1)
			if reader {
				go func() { readDone <- c.ReadReplies(ctx, nil) }()
				require.ErrorIs(t, <-readDone, smtp.ErrClosed)
			}
			_, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
			require.ErrorIs(t, err, smtp.ErrClosed)
			assert.Contains(t, err.Error(), "before its command was written")
			assert.Equal(t, []string{trEHLO}, conn.Writes(), "nothing written after the early replies")
			c.Close()
			<-srv.Done()
		})
	}
}

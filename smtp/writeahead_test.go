package smtp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// TestWriteAheadBound is the RFC 2920 deadlock: a server that answers
// each BDAT chunk as it reads it, and stops reading while its replies
// wait unread, blocks a client that streams a body without reading
// replies as soon as both directions' socket buffers are full. The
// client bounds the replies one transaction lets the server owe, so the
// body goes through. The buffers are made small so the deadlock, without
// the bound, comes within a few hundred kilobytes.
func TestWriteAheadBound(t *testing.T) {
	const bodySize = 1 << 20
	chunkReply := strings.Repeat("250-"+strings.Repeat("x", 500)+"\r\n", 3) + "250 2.0.0 chunk received\r\n"
	srv := fs.Start(t, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.Func(func(c net.Conn) error {
			tcp := c.(interface{ NetConn() net.Conn }).NetConn().(*net.TCPConn)
			tcp.SetReadBuffer(16 << 10)
			_ = setWriteBuffer(tcp, 16<<10)
			r := bufio.NewReaderSize(c, 1024)
			var got int64
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return fmt.Errorf("after %d body octets: %w", got, err)
				}
				line = strings.TrimSuffix(line, "\r\n")
				f := strings.Fields(line)
				switch {
				case strings.HasPrefix(line, "MAIL FROM:"), strings.HasPrefix(line, "RCPT TO:"):
					_, err = io.WriteString(c, "250 2.1.0 Ok\r\n")
				case len(f) >= 2 && f[0] == "BDAT":
					n, perr := strconv.ParseInt(f[1], 10, 64)
					if perr != nil {
						return perr
					}
					if _, err := io.CopyN(io.Discard, r, n); err != nil {
						return err
					}
					got += n
					if len(f) == 3 && f[2] == "LAST" {
						_, err = fmt.Fprintf(c, "250 2.0.0 Ok: %d octets, queued as WA1\r\n", got)
					} else {
						_, err = io.WriteString(c, chunkReply)
					}
				case line == "QUIT":
					_, err = io.WriteString(c, "221 2.0.0 bye\r\n")
					return err
				default:
					return fmt.Errorf("unexpected %q", line)
				}
				if err != nil {
					return err
				}
			}
		}))...)
	// A hang guard, not a measurement: without the bound the transfer
	// blocks until this ends.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.Addr())
	require.NoError(t, err)
	tcp := conn.(*net.TCPConn)
	require.NoError(t, tcp.SetReadBuffer(16<<10))
	require.NoError(t, setWriteBuffer(tcp, 16<<10))
	c, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true, ChunkSize: 512})
	require.NoError(t, err)
	body := strings.Repeat(strings.Repeat("y", 78)+"\r\n", bodySize/80)
	out, err := c.Send(ctx, trEnv, strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, "WA1", out.QueueID)
	assert.Contains(t, out.Reply.Text(), strconv.Itoa(len(body))+" octets")
	require.NoError(t, c.Quit(ctx))
	c.Close()
	<-srv.Done()
	require.NoError(t, srv.Err())
}

// setWriteBuffer sets a socket's send buffer. Go's in-process network
// under wasm (wasip1, js) has a receive queue per direction and no send
// buffer: there, the receive buffers alone hold what is in flight, and
// setting a send buffer is not supported.
func setWriteBuffer(c *net.TCPConn, n int) error {
	err := c.SetWriteBuffer(n)
	if runtime.GOARCH == "wasm" && errors.Is(err, syscall.ENOTSUP) {
		return nil
	}
	return err
}

// TestWriteAheadManyRecipients: once the server has shown that it answers
// with short replies, a transaction with many recipients and
// AllowPartial is written whole without waiting for any of its replies,
// so the next one follows in the same round trip. The server holds every
// reply of the second transaction until the third one's MAIL arrives: a
// client that waits for a reply before it writes on never gets one.
func TestWriteAheadManyRecipients(t *testing.T) {
	const rcpts = 40
	srv := fs.Start(t, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		holdingServer(func(mails int, reply string) (now, later string) {
			if mails == 2 {
				return "", reply
			}
			return reply, ""
		}, nil))...)
	// A hang guard: a client that waits for the held replies ends here.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Addr())
	require.NoError(t, err)
	c, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	require.NoError(t, err)
	var to []string
	for i := range rcpts {
		to = append(to, fmt.Sprintf("r%d@example.com", i))
	}
	env := smtp.Envelope{From: "a@example.com", To: to, AllowPartial: true}
	out, err := c.Send(ctx, env, strings.NewReader("Subject: 1\r\n\r\nfirst\r\n"))
	require.NoError(t, err)
	assert.Equal(t, "Q1", out.QueueID)
	tx2, err := c.WriteTx(ctx, env, strings.NewReader("Subject: 2\r\n\r\nsecond\r\n"))
	require.NoError(t, err)
	tx3, err := c.WriteTx(ctx, env, strings.NewReader("Subject: 3\r\n\r\nthird\r\n"))
	require.NoError(t, err)
	for i, tx := range []*smtp.Tx{tx2, tx3} {
		out, err := c.ReadTx(ctx, tx)
		require.NoError(t, err, "transaction %d", i+2)
		assert.Equal(t, fmt.Sprintf("Q%d", i+2), out.QueueID)
		assert.Len(t, out.Accepted, rcpts)
	}
	require.NoError(t, c.Quit(ctx))
	c.Close()
	<-srv.Done()
	require.NoError(t, srv.Err())
}

// holdingServer is the transaction loop of a CHUNKING server (MAIL, RCPT,
// BDAT n LAST, QUIT) that may hold replies back: split says, for each
// reply of the mails-th transaction, what to send now and what to hold
// until the next transaction's MAIL arrives. last, if set, is called
// once a transaction's last chunk has been read.
func holdingServer(split func(mails int, reply string) (now, later string), last func(mails int)) fs.Step {
	return fs.Func(func(c net.Conn) error {
		r := bufio.NewReader(c)
		var held []string
		mails := 0
		send := func(reply string) error {
			now, later := split(mails, reply)
			if later != "" {
				held = append(held, later)
			}
			_, err := io.WriteString(c, now)
			return err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			line = strings.TrimSuffix(line, "\r\n")
			f := strings.Fields(line)
			switch {
			case strings.HasPrefix(line, "MAIL FROM:"):
				mails++
				if _, err := io.WriteString(c, strings.Join(held, "")); err != nil {
					return err
				}
				held = nil
				err = send("250 2.1.0 Ok\r\n")
			case strings.HasPrefix(line, "RCPT TO:"):
				err = send("250 2.1.5 Ok\r\n")
			case len(f) == 3 && f[0] == "BDAT" && f[2] == "LAST":
				n, perr := strconv.ParseInt(f[1], 10, 64)
				if perr != nil {
					return perr
				}
				if _, err := io.CopyN(io.Discard, r, n); err != nil {
					return err
				}
				err = send(fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", mails))
				if last != nil {
					last(mails)
				}
			case line == "QUIT":
				_, err = io.WriteString(c, "221 2.0.0 bye\r\n")
				return err
			default:
				return fmt.Errorf("unexpected %q", line)
			}
			if err != nil {
				return err
			}
		}
	})
}

package smtp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// TestReadTxInterrupt: Interrupt ends ReadTx's wait for the server with
// ErrInterrupted and leaves the session usable, even when the read it
// ends has half a reply line in hand (over TLS, half a record may be
// too). The server sends the first transaction's MAIL reply and half of
// its RCPT reply, and holds the rest until the second transaction's MAIL
// arrives: the client must write that while the first is in flight.
func TestReadTxInterrupt(t *testing.T) {
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
			// The first transaction's MAIL reply goes out, then half
			// of its RCPT reply; the rest waits for the next MAIL.
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
			c, err := smtp.Connect(ctx, conn, "client.example", &smtp.Options{InsecureAllowPlaintext: !useTLS})
			require.NoError(t, err)

			tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("Subject: 1\r\n\r\none\r\n"))
			require.NoError(t, err)
			go func() {
				<-half
				c.Interrupt() // from another goroutine, as the sender does
			}()
			_, err = c.ReadTx(ctx, tx1)
			require.ErrorIs(t, err, smtp.ErrInterrupted)
			var se *smtp.Error
			assert.False(t, errors.As(err, &se), "an interruption is not a failure")
			assert.False(t, tx1.Done())
			assert.Equal(t, smtp.StateTransaction, c.State())

			tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("Subject: 2\r\n\r\ntwo\r\n"))
			require.NoError(t, err)
			out, err := c.ReadTx(ctx, tx1)
			require.NoError(t, err)
			assert.Equal(t, "Q1", out.QueueID)
			require.Len(t, out.Accepted, 1)
			out, err = c.ReadTx(ctx, tx2)
			require.NoError(t, err)
			assert.Equal(t, "Q2", out.QueueID)
			require.NoError(t, c.Quit(ctx))
			<-srv.Done()
			require.NoError(t, srv.Err())
		})
	}
}

// TestInterruptBeforeWait: an Interrupt that comes while no ReadTx waits
// is kept for the next one, which returns ErrInterrupted at once; the one
// after that waits as usual. An Interrupt never breaks a write.
func TestInterruptBeforeWait(t *testing.T) {
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.ReadUntil("BDAT 0 LAST\r\n"),
		fs.Reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as B1\r\n"), trQuit)...)
	ctx := trCtx(t)
	c.Interrupt()
	tx, err := c.WriteTx(ctx, trEnv, strings.NewReader(""))
	require.NoError(t, err)
	_, err = c.ReadTx(ctx, tx)
	require.ErrorIs(t, err, smtp.ErrInterrupted)
	out, err := c.ReadTx(ctx, tx)
	require.NoError(t, err)
	assert.Equal(t, "B1", out.QueueID)
	require.NoError(t, c.Quit(ctx))
	<-srv.Done()
	require.NoError(t, srv.Err())
}

// TestInterruptKeepsTimeouts: an Interrupt does not extend the server's
// time: a step whose timeout passes is still a timeout, and one that
// Interrupt ended waits its full time again on the next ReadTx.
func TestInterruptKeepsTimeouts(t *testing.T) {
	srv := fs.Start(t, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.ReadUntil("BDAT 0 LAST\r\n"), fs.Stall())...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Addr())
	require.NoError(t, err)
	opts := &smtp.Options{InsecureAllowPlaintext: true}
	opts.Timeouts.Command = 200 * time.Millisecond
	opts.Timeouts.DataEnd = 200 * time.Millisecond
	c, err := smtp.Connect(ctx, conn, "client.example", opts)
	require.NoError(t, err)
	tx, err := c.WriteTx(ctx, trEnv, strings.NewReader(""))
	require.NoError(t, err)
	c.Interrupt()
	_, err = c.ReadTx(ctx, tx)
	require.ErrorIs(t, err, smtp.ErrInterrupted)
	_, err = c.ReadTx(ctx, tx)
	var se *smtp.Error
	require.ErrorAs(t, err, &se, "the stalled server times out")
	assert.Equal(t, smtp.KindIO, se.Kind)
	assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
	assert.Equal(t, smtp.StateClosed, c.State())
}

package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/transport"
)

// peekPair returns a client transport made by make and the server's end
// of the connection.
func peekPair(t *testing.T, tlsServer bool, dial func(ctx context.Context, addr string) (transport.Transport, error)) (transport.Transport, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var cert *selfsigned.Cert
	if tlsServer {
		cert, err = selfsigned.New("peek", selfsigned.ECDSA, time.Hour)
		require.NoError(t, err)
	}
	type res struct {
		tr  transport.Transport
		err error
	}
	dialed := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tr, err := dial(ctx, ln.Addr().String())
		dialed <- res{tr, err}
	}()
	srv := <-accepted
	require.NotNil(t, srv)
	if tlsServer {
		ts := tls.Server(srv, &tls.Config{Certificates: []tls.Certificate{cert.TLS}})
		require.NoError(t, ts.Handshake())
		srv = ts
	}
	r := <-dialed
	require.NoError(t, r.err)
	t.Cleanup(func() { r.tr.Close(); srv.Close() })
	return r.tr, srv
}

func trustAll() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }

// peekSocket tells an idle connection from one with bytes or a close
// waiting, through the module's plaintext and TLS transports, without
// consuming anything; a transport it cannot look into is unknown.
func TestPeekSocket(t *testing.T) {
	if !peekSupported {
		t.Skip("no non-blocking peek on this platform")
	}
	for _, tc := range []struct {
		name string
		tls  bool
		dial func(ctx context.Context, addr string) (transport.Transport, error)
	}{
		{"plain", false, func(ctx context.Context, addr string) (transport.Transport, error) { return transport.Dial(ctx, addr) }},
		{"implicit TLS", true, func(ctx context.Context, addr string) (transport.Transport, error) {
			return transport.DialTLS(ctx, addr, trustAll())
		}},
		{"net.Conn", false, func(ctx context.Context, addr string) (transport.Transport, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, closeIt := range []bool{false, true} {
				cl, srv := peekPair(t, tc.tls, tc.dial)
				assert.Equal(t, peekNothing, peekSocket(cl), "idle")
				if closeIt {
					srv.Close()
				} else {
					_, err := io.WriteString(srv, "421 bye\r\n")
					require.NoError(t, err)
				}
				require.Eventually(t, func() bool { return peekSocket(cl) == peekSomething }, 10*time.Second, time.Millisecond)
				assert.Equal(t, peekSomething, peekSocket(cl), "a second look sees the same")
				cl.SetDeadline(time.Now().Add(10 * time.Second))
				b, err := io.ReadAll(io.LimitReader(cl, 9))
				if closeIt {
					assert.Empty(t, b)
				} else {
					require.NoError(t, err)
					assert.Equal(t, "421 bye\r\n", string(b), "nothing was consumed")
				}
			}
		})
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.Equal(t, peekUnknown, peekSocket(a))
}

// A real server whose idle timeout is under a second (go-smtp's
// ReadTimeout, which answers 421 4.4.2 and closes): the client sees the
// 421 and the close before it writes the next transaction, through
// STARTTLS, so nothing of that transaction leaves and its error says the
// session is closed, which a sender takes to mean "write it again on a
// new session".
func TestIdleTimeoutSeenBeforeWriting(t *testing.T) {
	if !peekSupported {
		t.Skip("no non-blocking peek on this platform: sessions idle under 1 s are not probed")
	}
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.StartTLS, ReadTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := transport.Dial(ctx, srv.Addr())
	require.NoError(t, err)
	c, err := ConnectStartTLS(ctx, tr, &Options{LocalName: "client.example", TLSConfig: srv.Cert().ClientConfig()})
	require.NoError(t, err)
	defer c.Close()
	require.True(t, c.Capabilities().Chunking && c.Capabilities().Pipelining)
	env := Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	_, err = c.Send(ctx, env, strings.NewReader("Subject: one\r\n\r\none\r\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return srv.Sessions() == 0 }, 10*time.Second, 5*time.Millisecond, "the server's idle timeout")

	tx, err := c.WriteTx(ctx, env, strings.NewReader("Subject: two\r\n\r\ntwo\r\n"))
	require.Error(t, err)
	assert.Nil(t, tx)
	assert.ErrorIs(t, err, ErrClosed, "nothing of it was written")
	assert.True(t, IsTemporary(err))
	var cause *Error
	require.True(t, errors.As(c.Err(), &cause), "%v", c.Err())
	assert.Equal(t, 421, cause.Code)
	assert.Equal(t, "4.4.2", cause.Enhanced)
	assert.EqualValues(t, 1, srv.Count())
}

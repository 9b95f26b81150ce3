package demoserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const body = "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n.leading dot\r\nbye\r\n"

func start(t *testing.T, opts demoserver.Options) *demoserver.Server {
	t.Helper()
	srv, err := demoserver.Start(opts)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, srv.Close()) })
	return srv
}

// connect opens one session to srv, logged in as demo/secret.
func connect(t *testing.T, srv *demoserver.Server, opts *smtp.Options) *smtp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := transport.DialTLS(ctx, srv.Addr(), srv.ClientTLSConfig())
	require.NoError(t, err)
	c, err := smtp.Connect(ctx, tr, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSendRecords(t *testing.T) {
	srv := start(t, demoserver.Options{Users: map[string]string{"demo": "secret"}})
	c := connect(t, srv, nil)
	ctx := context.Background()

	caps := c.Capabilities()
	assert.Equal(t, []string{"PLAIN"}, caps.Auth)
	assert.True(t, c.IsTLS())

	// MAIL before AUTH is refused.
	_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.net"}}, strings.NewReader(body))
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 530, se.Code)

	require.NoError(t, c.Login(ctx, "demo", "secret"))
	out, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.net", "c@example.org"}}, strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, "DEMO0001", out.QueueID)
	assert.Equal(t, []string{"b@example.net", "c@example.org"}, out.Accepted)
	require.NoError(t, c.Quit(ctx))

	msgs := srv.Messages()
	require.Len(t, msgs, 1)
	m := msgs[0]
	assert.Equal(t, "DEMO0001", m.QueueID)
	assert.Equal(t, "demo", m.User)
	assert.Equal(t, "a@example.com", m.From)
	assert.Equal(t, []string{"b@example.net", "c@example.org"}, m.To)
	assert.Equal(t, body, string(m.Data))
	assert.False(t, m.Dropped)

	// Messages returns a copy.
	msgs[0].Data[0] = 'X'
	assert.Equal(t, body, string(srv.Messages()[0].Data))
}

func TestWrongPassword(t *testing.T) {
	srv := start(t, demoserver.Options{Users: map[string]string{"demo": "secret"}})
	c := connect(t, srv, nil)
	err := c.Login(context.Background(), "demo", "wrong")
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.KindAuth, se.Kind)
	assert.Equal(t, 535, se.Code)
	assert.True(t, smtp.IsConfig(err))
}

func TestNoUsersNoAuth(t *testing.T) {
	srv := start(t, demoserver.Options{})
	c := connect(t, srv, nil)
	assert.Empty(t, c.Capabilities().Auth)
	_, err := c.Send(context.Background(), smtp.Envelope{From: "a@example.com", To: []string{"b@example.net"}}, strings.NewReader(body))
	require.NoError(t, err)
	require.Len(t, srv.Messages(), 1)
	assert.Equal(t, "", srv.Messages()[0].User)
}

func TestMagicRecipients(t *testing.T) {
	srv := start(t, demoserver.Options{})
	ctx := context.Background()

	t.Run("reject", func(t *testing.T) {
		c := connect(t, srv, nil)
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"Reject@example.net"}}, strings.NewReader(body))
		var se *smtp.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		assert.Equal(t, 550, se.Code)
		assert.Equal(t, "5.1.1", se.Enhanced)
		assert.True(t, smtp.IsPermanent(err))
	})
	t.Run("defer", func(t *testing.T) {
		c := connect(t, srv, nil)
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"defer@example.net"}}, strings.NewReader(body))
		var se *smtp.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		assert.Equal(t, 451, se.Code)
		assert.True(t, smtp.IsTemporary(err))
	})
	t.Run("drop", func(t *testing.T) {
		c := connect(t, srv, nil)
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"drop@example.net"}}, strings.NewReader(body))
		require.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.False(t, smtp.IsTemporary(err))
		assert.False(t, smtp.IsPermanent(err))
	})
	msgs := srv.Messages()
	require.Len(t, msgs, 1, "only the dropped message was received")
	assert.True(t, msgs[0].Dropped)
	assert.Equal(t, []string{"drop@example.net"}, msgs[0].To)
}

func TestCertificate(t *testing.T) {
	srv := start(t, demoserver.Options{})
	block, _ := pem.Decode(srv.CertPEM())
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		assert.NoError(t, cert.VerifyHostname(name), name)
	}
	assert.Error(t, cert.VerifyHostname("mail.example.com"))

	// A client with only the system roots refuses the certificate.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = transport.DialTLS(ctx, srv.Addr(), nil)
	require.Error(t, err)
	var verr *tls.CertificateVerificationError
	assert.ErrorAs(t, err, &verr)

	// Only TLS is spoken: a plaintext client gets no greeting it can read.
	conn, err := net.DialTimeout("tcp", srv.Addr(), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(300*time.Millisecond)))
	buf := make([]byte, 16)
	n, _ := conn.Read(buf)
	assert.NotContains(t, string(buf[:n]), "220")
}

func TestSenderConcurrent(t *testing.T) {
	srv := start(t, demoserver.Options{Users: map[string]string{"demo": "secret"}})
	snd, err := sender.New(sender.Config{
		Addr:     srv.Addr(),
		Options:  smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		MaxConns: 3,
		Credentials: func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
	})
	require.NoError(t, err)
	defer snd.Close()

	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := snd.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.net"}}, strings.NewReader(body))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, snd.Shutdown(ctx))

	msgs := srv.Messages()
	require.Len(t, msgs, n)
	seen := map[string]bool{}
	for _, m := range msgs {
		assert.False(t, seen[m.QueueID], "queue ids are unique")
		seen[m.QueueID] = true
	}
}

func TestCloseWithOpenSessions(t *testing.T) {
	srv, err := demoserver.Start(demoserver.Options{})
	require.NoError(t, err)
	// Sessions that are idle, mid-handshake and never spoke.
	c := connect(t, srv, nil)
	raw, err := net.DialTimeout("tcp", srv.Addr(), 5*time.Second)
	require.NoError(t, err)
	defer raw.Close()

	done := make(chan error, 1)
	go func() { done <- srv.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	require.NoError(t, srv.Close(), "Close is idempotent")

	err = c.Noop(context.Background())
	assert.Error(t, err, "the session was closed by the server")

	_, err = net.DialTimeout("tcp", srv.Addr(), time.Second)
	assert.Error(t, err, "nothing listens after Close")
}

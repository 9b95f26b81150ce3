package smtp_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connectGoSMTP starts a go-smtp server with opts and connects a client
// over implicit TLS (or plaintext with the insecure option for Plain).
func connectGoSMTP(t *testing.T, opts testpeers.GoSMTPOptions, copts *smtp.Options) (*testpeers.GoSMTPServer, *smtp.Client) {
	t.Helper()
	ctx := testCtx(t)
	srv := testpeers.GoSMTP(t, opts)
	if copts == nil {
		copts = &smtp.Options{}
	}
	var c *smtp.Client
	var err error
	switch opts.Mode {
	case testpeers.ImplicitTLS:
		tr, derr := transport.DialTLS(ctx, srv.Addr(), srv.Cert().ClientConfig())
		require.NoError(t, derr)
		c, err = smtp.Connect(ctx, tr, withName(copts, "client.example", nil))
	case testpeers.StartTLS:
		tr, derr := transport.Dial(ctx, srv.Addr())
		require.NoError(t, derr)
		c, err = smtp.ConnectStartTLS(ctx, tr, withName(copts, "client.example", srv.Cert().ClientConfig()))
	default:
		tr, derr := transport.Dial(ctx, srv.Addr())
		require.NoError(t, derr)
		copts.InsecureAllowPlaintext = true
		c, err = smtp.Connect(ctx, tr, withName(copts, "client.example", nil))
	}
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func TestGoSMTPSendImplicitTLS(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, EnableSMTPUTF8: true}, nil)
	ctx := testCtx(t)
	require.True(t, c.Capabilities().Chunking)
	body := "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
	out, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, 250, out.Reply.Code)
	assert.NotEmpty(t, out.QueueID)
	assert.Equal(t, []string{"b@example.com"}, out.Accepted)
	msgs := srv.Messages()
	require.Len(t, msgs, 1)
	assert.Equal(t, body, string(msgs[0].Data))
	assert.Equal(t, msgs[0].QueueID, out.QueueID)
	assert.Equal(t, int64(len(body)), msgs[0].Opts.Size)
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, smtp.StateClosed, c.State())
}

func TestGoSMTPStartTLSAndUTF8(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.StartTLS, EnableSMTPUTF8: true}, nil)
	ctx := testCtx(t)
	assert.True(t, c.IsTLS())
	assert.False(t, c.Capabilities().StartTLS, "capabilities after TLS must come from the second EHLO")
	_, err := c.Send(ctx, smtp.Envelope{From: "δοκιμή@παράδειγμα.δοκιμή", To: []string{"用户@例子.广告"}, EightBitMIME: true}, strings.NewReader("Subject: ü\r\n\r\nÜber\r\n"))
	require.NoError(t, err)
	msgs := srv.Messages()
	require.Len(t, msgs, 1)
	assert.True(t, msgs[0].Opts.UTF8)
	assert.Equal(t, gosmtp.Body8BitMIME, msgs[0].Opts.Body)
	require.NoError(t, c.Quit(ctx))
}

// ORCPT carries an ASCII address as rfc822 in xtext, and an
// internationalized one as RFC 6533's utf-8 type, which the rfc822 type
// cannot carry; the go-smtp server decodes both back to the address.
func TestGoSMTPOriginalRecipientUTF8(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.StartTLS, EnableSMTPUTF8: true, EnableDSN: true}, nil)
	ctx := testCtx(t)
	to := []string{"用户+tag@例子.广告", "b+x=y@example.com"}
	_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: to, DSN: &smtp.DSN{OriginalRecipient: true}}, strings.NewReader("Subject: hi\r\n\r\nhi\r\n"))
	require.NoError(t, err)
	msgs := srv.Messages()
	require.Len(t, msgs, 1)
	require.Len(t, msgs[0].RcptOpts, 2)
	assert.Equal(t, gosmtp.DSNAddressTypeUTF8, msgs[0].RcptOpts[0].OriginalRecipientType)
	assert.Equal(t, to[0], msgs[0].RcptOpts[0].OriginalRecipient)
	assert.Equal(t, gosmtp.DSNAddressTypeRFC822, msgs[0].RcptOpts[1].OriginalRecipientType)
	assert.Equal(t, to[1], msgs[0].RcptOpts[1].OriginalRecipient)
	require.NoError(t, c.Quit(ctx))
}

func TestGoSMTPRecipients(t *testing.T) {
	reject := func(to string) error {
		if strings.HasPrefix(to, "bad") {
			return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	for _, pipelined := range []bool{true} {
		_ = pipelined
		srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, RejectRcpt: reject}, nil)
		ctx := testCtx(t)
		// All-or-nothing: one refusal stops the message for everyone.
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"ok1@example.com", "bad1@example.com", "ok2@example.com", "bad2@example.com"}}, strings.NewReader("x\r\n"))
		var se *smtp.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		assert.Equal(t, 550, se.Code)
		assert.Equal(t, "5.1.1", se.Enhanced)
		assert.Equal(t, "bad1@example.com", se.Recipient)
		require.Len(t, se.Refused, 2)
		assert.Equal(t, "bad2@example.com", se.Refused[1].Address)
		assert.True(t, smtp.IsPermanent(err))
		assert.Contains(t, err.Error(), "bad2@example.com")
		assert.Zero(t, srv.Count())
		// The session stays usable.
		assert.Equal(t, smtp.StateReady, c.State())
		// Partial delivery.
		out, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"ok1@example.com", "bad1@example.com"}, AllowPartial: true}, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		assert.Equal(t, []string{"ok1@example.com"}, out.Accepted)
		require.Len(t, out.Refused, 1)
		assert.Equal(t, 550, out.Refused[0].Reply.Code)
		require.Len(t, srv.Messages(), 1)
		assert.Equal(t, []string{"ok1@example.com"}, srv.Messages()[0].To)
		// A single refused recipient.
		_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"bad@example.com"}}, strings.NewReader("x\r\n"))
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		// And a good one after all that.
		_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"ok@example.com", "ok2@example.com"}}, strings.NewReader("y\r\n"))
		require.NoError(t, err)
		assert.Equal(t, int64(2), srv.Count())
		require.NoError(t, c.Quit(ctx))
	}
}

func TestGoSMTPPipelinedWindow(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, DiscardBodies: true}, nil)
	ctx := testCtx(t)
	var txs []*smtp.Tx
	for i := 0; i < 50; i++ {
		tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, bytes.NewReader(bytes.Repeat([]byte("line of text\r\n"), 100)))
		require.NoError(t, err)
		txs = append(txs, tx)
	}
	// WriteTx may leave its bytes buffered: Flush sends them, and then
	// every commit point has left.
	require.NoError(t, c.Flush(ctx))
	for _, tx := range txs {
		assert.True(t, tx.Committed())
	}
	assert.Equal(t, smtp.StateTransaction, c.State())
	assert.ErrorContains(t, c.Noop(ctx), "pending")
	for _, tx := range txs {
		_, err := c.ReadTx(ctx, tx)
		require.NoError(t, err)
	}
	assert.Equal(t, smtp.StateReady, c.State())
	assert.Equal(t, int64(50), srv.Count())
	require.NoError(t, c.Quit(ctx))
}

func TestGoSMTPBareLF(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS}, nil)
	ctx := testCtx(t)
	_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("a\r\nb\n.\nc\r\n"))
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.KindInvalidInput, se.Kind)
	assert.Equal(t, smtp.OpBody, se.Op)
	assert.True(t, smtp.IsPermanent(err))
	assert.Zero(t, srv.Count())
	// With CHUNKING the transaction is reset and the session stays up.
	require.Equal(t, smtp.StateReady, c.State())
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("ok\r\n"))
	require.NoError(t, err)
	assert.Equal(t, int64(1), srv.Count())
	assert.False(t, errors.Is(err, smtp.ErrOutcomeUnknown))
}

// A window of all-or-nothing transactions with several recipients: each
// one's body waits for its RCPT replies, which the next WriteTx reads.
// (go-smtp always offers CHUNKING; the DATA variant runs against
// smtp-sink and the transcript tests.)
func TestGoSMTPPipelinedMultiRcpt(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS}, nil)
	ctx := testCtx(t)
	var txs []*smtp.Tx
	for i := 0; i < 5; i++ {
		tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "c@example.com"}}, strings.NewReader(strings.Repeat("x", i+1)+"\r\n"))
		require.NoError(t, err)
		txs = append(txs, tx)
	}
	for i, tx := range txs {
		_, err := c.ReadTx(ctx, tx)
		require.NoError(t, err, "tx %d", i)
	}
	msgs := srv.Messages()
	require.Len(t, msgs, 5)
	for i, m := range msgs {
		assert.Equal(t, "a@example.com", m.From)
		assert.Equal(t, []string{"b@example.com", "c@example.com"}, m.To)
		assert.Equal(t, strings.Repeat("x", i+1)+"\r\n", string(m.Data))
	}
	require.NoError(t, c.Quit(ctx))
}

// A call made with a context that has already ended fails without
// touching the session, which stays usable.
func TestCancelledContextLeavesSessionUsable(t *testing.T) {
	srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS}, nil)
	ctx := testCtx(t)
	done, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, c.Noop(done), context.Canceled)
	assert.ErrorIs(t, c.Reset(done), context.Canceled)
	_, err := c.Send(done, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, c.Noop(ctx))
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assert.Equal(t, int64(1), srv.Count())
}

func TestCancelledContextLogin(t *testing.T) {
	_, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, Auth: map[string]string{"u": "p"}}, nil)
	done, cancel := context.WithCancel(testCtx(t))
	cancel()
	assert.ErrorIs(t, c.Login(done, "u", "p"), context.Canceled)
	require.NoError(t, c.Login(testCtx(t), "u", "p"))
}

// ReadTx with an ended context still settles a written transaction: a
// committed one whose reply cannot be read is ErrOutcomeUnknown, never a
// bare context error that would invite a resend.
func TestReadTxEndedContextSettles(t *testing.T) {
	_, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS}, nil)
	ctx := testCtx(t)
	tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.Flush(ctx))
	require.True(t, tx.Committed())
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.ReadTx(done, tx)
	assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
	assert.True(t, smtp.TxDone(tx))
	assert.False(t, smtp.TxReplayable(tx))
}

// SIZE is declared from a body of known length, but not when line
// endings are normalised: the body may grow, and SIZE must not
// understate it.
func TestSizeNotDeclaredWhenNormalising(t *testing.T) {
	for _, normalise := range []bool{false, true} {
		srv, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS}, &smtp.Options{NormalizeLineEndings: normalise})
		body := "a\r\nb\r\n"
		if normalise {
			body = "a\nb\n"
		}
		_, err := c.Send(testCtx(t), smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader(body))
		require.NoError(t, err)
		m := srv.Messages()
		require.Len(t, m, 1)
		assert.Equal(t, "a\r\nb\r\n", string(m[0].Data))
		if normalise {
			assert.Zero(t, m[0].Opts.Size, "no SIZE when the body may grow")
		} else {
			assert.Equal(t, int64(len(body)), m[0].Opts.Size)
		}
	}
}

// The SES form of queue id needs an id-shaped token: a two-word "OK x"
// reply from another server is not one.
func TestQueueIDSESShape(t *testing.T) {
	assert.Equal(t, "0100018b1c2d3e4f-5a6b7c8d-000000", smtp.ParseQueueID("Ok 0100018b1c2d3e4f-5a6b7c8d-000000"))
	assert.Empty(t, smtp.ParseQueueID("OK done"))
	assert.Empty(t, smtp.ParseQueueID("OK accepted"))
}

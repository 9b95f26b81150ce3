package smtp_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// classes returns how many of the answers hold for err, so a test can
// check that exactly one does.
func classes(err error) (n int, names []string) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"permanent", smtp.IsPermanent(err)},
		{"temporary", smtp.IsTemporary(err)},
		{"config", smtp.IsConfig(err)},
		{"outcome unknown", errors.Is(err, smtp.ErrOutcomeUnknown)},
		{"canceled", smtp.Classify(err) == smtp.ClassCanceled},
	} {
		if c.ok {
			n++
			names = append(names, c.name)
		}
	}
	return n, names
}

// TestClassifyEveryError: each error the library builds (the Op, Kind
// and code of each place that makes one, and the causes that change a
// class) is in exactly one class, the one docs/errors.md gives.
func TestClassifyEveryError(t *testing.T) {
	rej := func(op smtp.Op, code int) *smtp.Error {
		return &smtp.Error{Op: op, Kind: smtp.KindRejected, Code: code, Message: "server text"}
	}
	ioErr := func(op smtp.Op, cause error) *smtp.Error {
		return &smtp.Error{Op: op, Kind: smtp.KindIO, Err: cause}
	}
	input := func(op smtp.Op) *smtp.Error {
		return &smtp.Error{Op: op, Kind: smtp.KindInvalidInput, Message: "bad"}
	}
	proto := func(op smtp.Op) *smtp.Error {
		return &smtp.Error{Op: op, Kind: smtp.KindProtocol, Message: "malformed"}
	}
	auth := func(code int) *smtp.Error {
		return &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: code, Message: "PLAIN refused"}
	}
	unknown := func(cause error) *smtp.Error {
		return &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindIO, Message: "reply to the committed message lost", Err: fmt.Errorf("%w: %w", smtp.ErrOutcomeUnknown, cause)}
	}
	certUnknown := &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}
	certName := &tls.CertificateVerificationError{Err: x509.HostnameError{Host: "mx.example"}}
	certExpired := &tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}
	notTLS := tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}
	timeout := fmt.Errorf("%w (read tcp: i/o timeout)", context.DeadlineExceeded)
	sessionLost := func(cause *smtp.Error) *smtp.Error {
		return &smtp.Error{Op: cause.Op, Kind: smtp.KindIO, Message: "session lost before the message was committed", Err: cause}
	}
	// failFast is the sender's error while it fails fast: the last
	// session's error, its Op, Kind and code copied onto a wrapper.
	failFast := func(cause *smtp.Error) *smtp.Error {
		return &smtp.Error{Op: cause.Op, Kind: cause.Kind, Code: cause.Code, Message: "failing fast", Err: cause}
	}
	errFailingFast := errors.New("sender: failing fast")

	P, T, C, U, X := smtp.ClassPermanent, smtp.ClassTemporary, smtp.ClassConfig, smtp.ClassOutcomeUnknown, smtp.ClassCanceled
	for _, tc := range []struct {
		name string
		err  error
		want smtp.Class
	}{
		// dial
		{"dial refused", ioErr(smtp.OpDial, &net.OpError{Op: "dial", Err: errors.New("connection refused")}), T},
		{"dial timeout", ioErr(smtp.OpDial, timeout), T},
		{"dial: certificate unknown authority", ioErr(smtp.OpDial, fmt.Errorf("transport: tls handshake: %w", certUnknown)), C},
		{"dial: certificate for another name", ioErr(smtp.OpDial, certName), C},
		{"dial: certificate expired", ioErr(smtp.OpDial, certExpired), C},
		{"dial: bare x509 error from VerifyConnection", ioErr(smtp.OpDial, x509.HostnameError{Host: "x"}), C},
		{"dial: implicit TLS to a STARTTLS port", ioErr(smtp.OpDial, notTLS), C},
		// greeting
		{"greeting 421", rej(smtp.OpGreeting, 421), T},
		{"greeting 554", rej(smtp.OpGreeting, 554), C},
		{"greeting io", ioErr(smtp.OpGreeting, eofErr()), T},
		{"greeting malformed", proto(smtp.OpGreeting), T},
		{"greeting: transport not TLS", input(smtp.OpGreeting), C},
		// EHLO
		{"EHLO 550", rej(smtp.OpEHLO, 550), C},
		{"EHLO 421", rej(smtp.OpEHLO, 421), T},
		{"EHLO bad local name", input(smtp.OpEHLO), C},
		{"EHLO malformed", proto(smtp.OpEHLO), T},
		// STARTTLS
		{"STARTTLS not offered", &smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindProtocol, Message: "server does not offer STARTTLS", Err: smtp.ErrStartTLSNotOffered}, C},
		{"STARTTLS 454", rej(smtp.OpSTARTTLS, 454), T},
		{"STARTTLS 502", rej(smtp.OpSTARTTLS, 502), C},
		{"STARTTLS response injection", proto(smtp.OpSTARTTLS), T},
		{"STARTTLS handshake: untrusted", ioErr(smtp.OpSTARTTLS, certUnknown), C},
		{"STARTTLS handshake: reset", ioErr(smtp.OpSTARTTLS, errors.New("connection reset by peer")), T},
		{"STARTTLS: transport cannot be upgraded", input(smtp.OpSTARTTLS), C},
		// AUTH
		{"AUTH 535", auth(535), C},
		{"AUTH 534", auth(534), C},
		{"AUTH 454", auth(454), T},
		{"AUTH no AUTH offered", auth(0), C},
		{"AUTH SCRAM server not proven (235)", auth(235), C},
		{"AUTH SCRAM e= then 501", auth(501), C},
		{"AUTH credentials provider failed", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Message: "credentials provider failed", Err: errors.New("token endpoint down")}, C},
		{"AUTH credentials cannot be encoded", input(smtp.OpAUTH), C},
		{"AUTH malformed challenge, cancelled with 501", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindProtocol, Code: 501, Message: "challenge is not base64; exchange cancelled"}, T},
		{"AUTH 250 instead of 235", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindProtocol, Code: 250}, T},
		{"AUTH io", ioErr(smtp.OpAUTH, eofErr()), T},
		// MAIL
		{"MAIL 550", rej(smtp.OpMAIL, 550), P},
		{"MAIL 552", rej(smtp.OpMAIL, 552), P},
		{"MAIL 451", rej(smtp.OpMAIL, 451), T},
		{"MAIL 530 authentication required", rej(smtp.OpMAIL, 530), C},
		{"MAIL 538 encryption required", rej(smtp.OpMAIL, 538), C},
		{"MAIL bad sender", input(smtp.OpMAIL), P},
		{"MAIL size policy", &smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindPolicy}, P},
		{"MAIL idle session closed", ioErr(smtp.OpMAIL, errors.New("server closed the idle session: EOF")), T},
		{"MAIL unsolicited reply", proto(smtp.OpMAIL), T},
		// RCPT
		{"RCPT 550", rej(smtp.OpRCPT, 550), P},
		{"RCPT 452", rej(smtp.OpRCPT, 452), T},
		{"RCPT 530", rej(smtp.OpRCPT, 530), C},
		{"RCPT none", input(smtp.OpRCPT), P},
		// DATA, BDAT, body
		{"DATA 554", rej(smtp.OpDATA, 554), P},
		{"DATA 451", rej(smtp.OpDATA, 451), T},
		{"DATA 250 where 354 was due", rej(smtp.OpDATA, 250), T},
		{"DATA io before commit", ioErr(smtp.OpDATA, eofErr()), T},
		{"DATA io after commit", unknown(eofErr()), U},
		{"DATA 354 to a refused envelope", proto(smtp.OpDATA), T},
		{"BDAT 552", rej(smtp.OpBDAT, 552), P},
		{"BDAT io after commit", unknown(errors.New("reset")), U},
		{"body bare LF", input(smtp.OpBody), P},
		{"body too large", &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindPolicy}, P},
		{"body: session dropped for another's body", &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindIO, Message: "session dropped"}, T},
		// other steps
		{"RSET 500", rej(smtp.OpRSET, 500), P},
		{"NOOP io", ioErr(smtp.OpNOOP, eofErr()), T},
		{"QUIT 421", rej(smtp.OpQUIT, 421), T},
		{"send policy veto", &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindPolicy, Err: errors.New("quota")}, P},
		{"send: tx of another client", input(smtp.OpSend), P},
		{"send: caller's ctx ended after the commit", &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindIO, Err: fmt.Errorf("%w: %w", smtp.ErrOutcomeUnknown, context.Canceled)}, U},
		{"closed session", ioErr(smtp.OpNOOP, smtp.ErrClosed), T},
		{"ctx ended before the call", &smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindIO, Message: "context ended before the call", Err: context.Canceled}, T},
		{"ctx deadline during a step", ioErr(smtp.OpRCPT, timeout), T},
		{"config", &smtp.Error{Op: smtp.OpConfig, Kind: smtp.KindInvalidInput, Message: "Config needs Addr or Dial"}, C},
		// chains
		{"session lost: 421 of another", sessionLost(rej(smtp.OpMAIL, 421)), T},
		{"session lost: io", sessionLost(ioErr(smtp.OpDATA, eofErr())), T},
		{"fail fast after 535", failFast(auth(535)), C},
		{"fail fast after a refused dial", failFast(ioErr(smtp.OpDial, errors.New("refused"))), T},
		{"fail fast after an untrusted certificate", failFast(ioErr(smtp.OpDial, certUnknown)), C},
		{"fail fast, a wrapper with a different kind", &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: auth(535)}, C},
		{"fail fast by sentinel", fmt.Errorf("%w: %w", errFailingFast, auth(535)), C},
		{"fail fast by sentinel, STARTTLS stripped", fmt.Errorf("%w: %w", errFailingFast, &smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindProtocol, Err: smtp.ErrStartTLSNotOffered}), C},
		{"wrapped 550", fmt.Errorf("sending: %w", rej(smtp.OpRCPT, 550)), P},
		{"joined: unknown wins", errors.Join(rej(smtp.OpRCPT, 550), unknown(eofErr())), U},
		// not *smtp.Error
		{"caller's ctx canceled", context.Canceled, X},
		{"caller's ctx deadline", context.DeadlineExceeded, X},
		{"caller's ctx, wrapped", fmt.Errorf("not sent: %w", context.DeadlineExceeded), X},
		{"bare certificate error", certUnknown, C},
		{"a closed sender", errors.New("sender: closed"), T},
		{"another error", os.ErrPermission, T},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, smtp.Classify(tc.err), "%v", tc.err)
			n, names := classes(tc.err)
			assert.Equal(t, 1, n, "in exactly one class, not %v", names)
		})
	}
	assert.Equal(t, smtp.ClassNone, smtp.Classify(nil))
	n, _ := classes(nil)
	assert.Zero(t, n, "nil is in no class")
}

// eofErr is a transport's end of stream.
func eofErr() error { return fmt.Errorf("read: %w", io.ErrUnexpectedEOF) }

func TestClassString(t *testing.T) {
	for c, s := range map[smtp.Class]string{
		smtp.ClassNone: "none", smtp.ClassPermanent: "permanent", smtp.ClassTemporary: "temporary",
		smtp.ClassConfig: "config", smtp.ClassOutcomeUnknown: "outcome unknown", smtp.ClassCanceled: "canceled",
		smtp.Class(42): "class(42)",
	} {
		assert.Equal(t, s, c.String())
	}
}

// TestClassifyStartTLSNotOffered: a server that does not offer STARTTLS
// where it is required gives an error that is the setup's, and that
// names the attack a service may want to alert on.
func TestClassifyStartTLSNotOffered(t *testing.T) {
	srv := fs.Start(t, trHello("PIPELINING")...)
	tr, err := transport.Dial(trCtx(t), srv.Addr())
	require.NoError(t, err)
	c, err := smtp.ConnectStartTLS(trCtx(t), tr, &smtp.Options{LocalName: "client.example"})
	assert.Nil(t, c)
	require.ErrorIs(t, err, smtp.ErrStartTLSNotOffered)
	assert.True(t, smtp.IsConfig(err), "%v", err)
	se := trErr(t, err, smtp.OpSTARTTLS, smtp.KindProtocol)
	assert.Contains(t, se.Message, "does not offer STARTTLS")
	assert.Equal(t, trEHLO, trEnd(t, srv, nil), "nothing after EHLO")
}

// TestClassifyCertificate: a real handshake with a certificate the
// client does not trust, or trusts for another name, is the setup's.
func TestClassifyCertificate(t *testing.T) {
	srvTLS, roots := fs.SelfSignedTLS(t)
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"untrusted", &tls.Config{ServerName: "localhost"}},
		{"another name", &tls.Config{RootCAs: roots, ServerName: "mx.example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fs.Start(t, trSteps(trHello("STARTTLS"), fs.ExpectLine("STARTTLS"), fs.Reply("220 2.0.0 go ahead\r\n"), fs.StartTLS(srvTLS.Clone()))...)
			tr, err := transport.Dial(trCtx(t), srv.Addr())
			require.NoError(t, err)
			_, err = smtp.ConnectStartTLS(trCtx(t), tr, &smtp.Options{LocalName: "client.example", TLSConfig: tc.cfg})
			require.ErrorAs(t, err, new(*tls.CertificateVerificationError))
			assert.True(t, smtp.IsConfig(err), "%v", err)
			assert.False(t, smtp.IsTemporary(err))
			<-srv.HungUp()
		})
	}

	// Implicit TLS to a server that speaks plaintext first: the TLS mode
	// does not match the port.
	srv := fs.Start(t, fs.Reply(trGreeting), fs.ReadUntil("\n"), fs.Close())
	_, err := transport.DialTLS(trCtx(t), srv.Addr(), &tls.Config{RootCAs: roots})
	require.Error(t, err)
	dialErr := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: err} // as the sender reports it
	assert.True(t, smtp.IsConfig(dialErr), "%v", dialErr)
	<-srv.HungUp()
}

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// demoPeer starts the in-process server with one account and writes its
// certificate to a file for -ca-file.
func demoPeer(t *testing.T, user, pass string) (srv *demoserver.Server, caFile string) {
	t.Helper()
	srv, err := demoserver.Start(demoserver.Options{Users: map[string]string{user: pass}})
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	return srv, writeFile(t, "ca.pem", string(srv.CertPEM()))
}

// TestVerifyExitCodes: -verify checks the setup and sends nothing; it
// exits 0 when the setup works, 78 when it must change, 75 when the
// server cannot be reached now.
func TestVerifyExitCodes(t *testing.T) {
	srv, ca := demoPeer(t, "alice", "right-password-1")

	t.Run("works", func(t *testing.T) {
		o := runCLI(t, runOpts{env: map[string]string{passwordEnv: "right-password-1"}},
			"-verify", "-server", srv.Addr(), "-ca-file", ca, "-user", "alice")
		assert.Equal(t, exitOK, o.code, o.all())
		wantInOrder(t, o.stdout, "TLS from the first byte", "EHLO", "AUTH PLAIN", "-> 235", "QUIT", "-> 221", "status:    verified")
		assert.Empty(t, srv.Messages(), "nothing was sent")
	})
	t.Run("wrong password", func(t *testing.T) {
		o := runCLI(t, runOpts{env: map[string]string{passwordEnv: "wrong-password-2"}},
			"-verify", "-server", srv.Addr(), "-ca-file", ca, "-user", "alice")
		assert.Equal(t, exitConfig, o.code, o.all())
		assert.Contains(t, o.stdout, "status:    config (exit 78)")
		assert.Contains(t, o.stdout, "failed at: logging in (AUTH)")
		assert.Contains(t, o.stdout, "reply:     535 5.7.8\n", "the codes, not the library's words around the server's")
		assert.Contains(t, o.stderr, "setup failure")
	})
	t.Run("certificate not trusted", func(t *testing.T) {
		o := runCLI(t, runOpts{}, "-verify", "-server", srv.Addr())
		assert.Equal(t, exitConfig, o.code, o.all())
		assert.Contains(t, o.stderr, "hint: the server's certificate is not trusted")
		assert.NotContains(t, o.stdout, "reply:", "the server said nothing")
	})
	t.Run("implicit TLS to a plaintext server", func(t *testing.T) {
		fsrv := faultserver.Start(t, faultserver.Reply("220 fault.example ESMTP\r\n"), faultserver.ReadUntil("\n"), faultserver.Close())
		o := runCLI(t, runOpts{}, "-verify", "-server", fsrv.Addr(), "-tls", "implicit")
		assert.Equal(t, exitConfig, o.code, o.all())
		assert.Contains(t, o.stderr, "-tls starttls")
		<-fsrv.Done()
	})
	t.Run("STARTTLS not offered", func(t *testing.T) {
		fsrv := faultserver.Start(t,
			faultserver.Reply("220 fault.example ESMTP\r\n"),
			faultserver.ExpectLine("EHLO localhost"),
			faultserver.Reply("250-fault.example\r\n250 PIPELINING\r\n"),
		)
		o := runCLI(t, runOpts{}, "-verify", "-server", fsrv.Addr(), "-tls", "starttls")
		assert.Equal(t, exitConfig, o.code, o.all())
		assert.Contains(t, o.stderr, "hint: the server did not offer STARTTLS")
		<-fsrv.HungUp()
	})
	t.Run("server down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())
		o := runCLI(t, runOpts{}, "-verify", "-server", addr, "-ca-file", ca)
		assert.Equal(t, exitTempFail, o.code, o.all())
		assert.Contains(t, o.stdout, "failed at: connecting")
	})
	t.Run("usage", func(t *testing.T) {
		o := runCLI(t, runOpts{}, "-verify")
		assert.Equal(t, exitUsage, o.code)
		assert.Contains(t, o.stderr, "-verify needs -server")
		o = runCLI(t, runOpts{}, "-verify", "-server", srv.Addr(), writeFile(t, "m.eml", eml("x", "y")))
		assert.Equal(t, exitUsage, o.code)
		assert.Contains(t, o.stderr, "takes no message files")
	})
}

// TestClassifyConfig: the setup's errors map to 78, and rank between an
// unknown outcome and a temporary failure.
func TestClassifyConfig(t *testing.T) {
	for _, err := range []error{
		&smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535, Enhanced: "5.7.8"},
		&smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Message: "server offers no AUTH"},
		&smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindProtocol, Err: smtp.ErrStartTLSNotOffered},
		&smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}},
		// The sender's fail-fast error after a refused login: its cause decides.
		&smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535, Message: "failing fast", Err: &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535}},
	} {
		assert.Equal(t, statusConfig, classify(err), "%v", err)
	}
	assert.Equal(t, exitConfig, statusConfig.exitCode())
	assert.Equal(t, exitUnknown, exitCode([]result{{status: statusConfig}, {status: statusUnknown}}))
	assert.Equal(t, exitConfig, exitCode([]result{{status: statusDeferred}, {status: statusConfig}, {status: statusRefused}}))
}

// TestReplyLineIsServerText: the outcome's "reply:" line carries what the
// server said and never a sentence of the library's, such as the
// sender's fail-fast explanation, whose code is copied from its cause.
func TestReplyLineIsServerText(t *testing.T) {
	cause := &smtp.Error{Op: smtp.OpGreeting, Kind: smtp.KindRejected, Code: 554, Message: "no service for you"}
	failFast := &smtp.Error{Op: smtp.OpGreeting, Kind: smtp.KindRejected, Code: 554,
		Message: "the server cannot be reached, refused the login, or turned every message away; failing fast", Err: cause}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{failFast, "554 no service for you"},
		{fmt.Errorf("wrapped: %w", failFast), "554 no service for you"},
		{&smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 550, Enhanced: "5.1.1", Message: "No such user"}, "550 5.1.1 No such user"},
		{&smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535, Enhanced: "5.7.8", Message: "PLAIN refused: bad"}, "535 5.7.8"},
		{&smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindIO, Err: errors.New("EOF")}, ""},
		{context.Canceled, ""},
	} {
		assert.Equal(t, tc.want, replyText(tc.err), "%v", tc.err)
	}
}

// TestVerifyPostfix: -verify against Postfix over STARTTLS with
// SCRAM-SHA-256: the right password passes, a wrong one is the setup's.
func TestVerifyPostfix(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{})
	args := []string{"-verify", "-server", p.StartTLSAddr(), "-tls", "starttls", "-ca-file", p.Cert().CertFile, "-user", testpeers.PostfixUser}
	o := runCLI(t, runOpts{env: map[string]string{passwordEnv: testpeers.PostfixPass}}, args...)
	assert.Equal(t, exitOK, o.code, o.all())
	wantInOrder(t, o.stdout, "STARTTLS", "AUTH", "-> 235", "QUIT", "status:    verified")

	o = runCLI(t, runOpts{env: map[string]string{passwordEnv: testpeers.PostfixPass + "-wrong"}}, args...)
	assert.Equal(t, exitConfig, o.code, o.all())
	assert.Regexp(t, `reply:     535 5\.7\.8\n`, o.stdout)
	assert.Contains(t, o.stderr, "hint: check -user and the password")
}

// TestVerifyMailpit: -verify against Mailpit, which requires STARTTLS
// and AUTH.
func TestVerifyMailpit(t *testing.T) {
	t.Parallel()
	const pass = "verify-pass-7c2a"
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.StartTLS, RequireSTARTTLS: true, Auth: map[string]string{"vera": pass}})
	args := []string{"-verify", "-server", m.SMTPAddr(), "-tls", "starttls", "-ca-file", m.Cert().CertFile, "-user", "vera"}
	o := runCLI(t, runOpts{env: map[string]string{passwordEnv: pass}}, args...)
	assert.Equal(t, exitOK, o.code, o.all())
	assert.Contains(t, o.stdout, "status:    verified")
	o = runCLI(t, runOpts{env: map[string]string{passwordEnv: "not-" + pass}}, args...)
	assert.Equal(t, exitConfig, o.code, o.all())
	msgs, err := m.Messages()
	require.NoError(t, err)
	assert.Empty(t, msgs, "-verify sends nothing")
}

// TestNewSenderIsConfig: a Config that sender.New refuses is the setup's.
func TestNewSenderIsConfig(t *testing.T) {
	_, err := newSender(sender.Config{})
	require.Error(t, err)
	assert.Equal(t, statusConfig, classify(err), "%v", err)
	snd, err := newSender(sender.Config{Addr: "127.0.0.1:1"})
	require.NoError(t, err)
	snd.Close()
}

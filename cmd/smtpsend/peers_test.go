package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
)

// TestMailpitImplicitTLS sends an .eml file to Mailpit over implicit TLS
// with AUTH, trusting the test certificate through -ca-file, and checks
// what arrived, byte for byte, through Mailpit's API.
func TestMailpitImplicitTLS(t *testing.T) {
	t.Parallel()
	const pass = "mailpit-pass-4e1f"
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.ImplicitTLS, Auth: map[string]string{"alice": pass}})
	msg := eml("Mailpit implicit", "Hello over implicit TLS.\n.a dotted line")
	file := writeFile(t, "m.eml", msg)

	o := runCLI(t, runOpts{env: map[string]string{passwordEnv: pass}},
		"-server", m.SMTPAddr(), "-tls", "implicit", "-ca-file", m.Cert().CertFile,
		"-user", "alice", "-from", "alice@example.com", "-to", "bob@localhost", file)
	require.Equal(t, exitOK, o.code, o.all())
	wantInOrder(t, o.stdout, "AUTH PLAIN", "-> 235", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@localhost>", "(the message, by ", "-> 250", "status:    sent")
	assert.NotContains(t, o.all(), pass)

	msgs, err := m.WaitMessages(1, 10*time.Second)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, "Mailpit implicit", msgs[0].Subject)
	assert.Equal(t, "alice", msgs[0].Username)
	raw, err := m.Raw(msgs[0].ID)
	require.NoError(t, err)
	assert.True(t, bytes.HasSuffix(raw, []byte(crlf(msg))), "LF line endings arrive as CRLF, the dotted line intact:\n%q", raw)
}

// TestMailpitSTARTTLSStdin reads the message from standard input and
// upgrades with STARTTLS, which Mailpit requires.
func TestMailpitSTARTTLSStdin(t *testing.T) {
	t.Parallel()
	const pass = "pw-from-a-file"
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.StartTLS, RequireSTARTTLS: true, Auth: map[string]string{"carol": pass}})
	pwFile := writeFile(t, "password", pass+"\n")
	msg := eml("Mailpit STARTTLS", "From standard input.")

	o := runCLI(t, runOpts{stdin: strings.NewReader(msg)},
		"-server", m.SMTPAddr(), "-tls", "starttls", "-ca-file", m.Cert().CertFile,
		"-user", "carol", "-password-file", pwFile, "-auth", "login",
		"-from", "carol@example.com", "-to", "dave@localhost", "-to", "erin@localhost")
	require.Equal(t, exitOK, o.code, o.all())
	wantInOrder(t, o.stdout, "STARTTLS", "-> 220, then TLS 1.3", "EHLO", "AUTH LOGIN", "-> 235", "accepted:  dave@localhost, erin@localhost")
	assert.NotContains(t, o.all(), pass)

	msgs, err := m.WaitMessages(1, 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "Mailpit STARTTLS", msgs[0].Subject)
	assert.Equal(t, "carol", msgs[0].Username)
	assert.ElementsMatch(t, []string{"bob@localhost"}, msgs[0].To, "the To header")
	assert.ElementsMatch(t, []string{"dave@localhost", "erin@localhost"}, msgs[0].Bcc, "envelope recipients not in the headers")
}

// TestMailpitBadCertificate: without -ca-file the self-signed certificate
// is not trusted; the error names the step, and says what to do.
func TestMailpitBadCertificate(t *testing.T) {
	t.Parallel()
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.ImplicitTLS})
	o := runCLI(t, runOpts{}, "-server", m.SMTPAddr(), "-from", "a@example.com", "-to", "b@localhost", writeFile(t, "m.eml", eml("x", "y")))
	assert.Equal(t, exitConfig, o.code, "an untrusted certificate is the setup's to fix")
	assert.Contains(t, o.stderr, "failed at connecting")
	assert.Contains(t, o.stderr, "hint: the server's certificate is not trusted; for a self-signed test server pass its PEM certificate with -ca-file")
	msgs, err := m.Messages()
	require.NoError(t, err)
	assert.Empty(t, msgs)
}

// TestPostfix sends to a private Postfix over implicit TLS and over
// STARTTLS with SCRAM-SHA-256, and reads what Postfix delivered.
func TestPostfix(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{Deliver: true, ForbidBareNewline: true})
	env := map[string]string{passwordEnv: testpeers.PostfixPass}
	first := eml("Postfix implicit", "first")
	second := eml("Postfix starttls", "second")

	o := runCLI(t, runOpts{env: env},
		"-server", p.ImplicitTLSAddr(), "-tls", "implicit", "-ca-file", p.Cert().CertFile,
		"-user", testpeers.PostfixUser, "-from", "alice@example.com", "-to", "bob@localhost",
		writeFile(t, "1.eml", first))
	require.Equal(t, exitOK, o.code, o.all())
	assert.Regexp(t, `queue id:  [0-9A-Za-z]+\n`, o.stdout, "Postfix's queue id is parsed")

	o = runCLI(t, runOpts{env: env},
		"-server", p.StartTLSAddr(), "-tls", "starttls", "-ca-file", p.Cert().CertFile,
		"-user", testpeers.PostfixUser, "-auth", "SCRAM-SHA-256", "-from", "alice@example.com", "-to", "bob@localhost",
		writeFile(t, "2.eml", second))
	require.Equal(t, exitOK, o.code, o.all())
	wantInOrder(t, o.stdout, "STARTTLS", "AUTH SCRAM-SHA-256", "-> 235")
	assert.NotContains(t, o.all(), testpeers.PostfixPass)

	got, err := p.WaitDelivered(2, 20*time.Second)
	require.NoError(t, err)
	joined := string(bytes.Join(got, []byte("\n")))
	// Postfix stores LF line endings: what was sent, with the bare LFs
	// of the file converted to CRLF on the wire (Postfix forbids bare LF
	// here, so a bare one would have been refused).
	assert.Contains(t, joined, first)
	assert.Contains(t, joined, second)
}

// TestExitCodesGoSMTP checks exit codes 65 and 75 against a go-smtp
// server refusing the recipient with 550 and 451.
func TestExitCodesGoSMTP(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{
		Mode: testpeers.ImplicitTLS,
		RejectRcpt: func(to string) error {
			switch {
			case strings.HasPrefix(to, "gone@"):
				return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
			case strings.HasPrefix(to, "busy@"):
				return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy, try later"}
			}
			return nil
		},
	})
	file := writeFile(t, "m.eml", eml("codes", "body"))
	for _, tc := range []struct {
		to, status string
		code       int
		reply      string
		advice     string
	}{
		{"ok@localhost", "sent", exitOK, "", ""},
		{"gone@localhost", "refused", exitRefused, "550 5.1.1 No such user", "permanent failure: sending the same message again will fail the same way"},
		{"busy@localhost", "deferred", exitTempFail, "451 4.2.1 Mailbox busy, try later", "temporary failure: the message was not accepted; retrying later may succeed"},
	} {
		t.Run(tc.status, func(t *testing.T) {
			o := runCLI(t, runOpts{}, "-server", srv.Addr(), "-ca-file", srv.Cert().CertFile,
				"-ehlo", "client.example.org", "-from", "alice@example.com", "-to", tc.to, file)
			assert.Equal(t, tc.code, o.code)
			assert.Contains(t, o.stdout, "status:    "+tc.status)
			if tc.code == exitOK {
				assert.Empty(t, o.stderr)
				return
			}
			assert.Contains(t, o.stdout, "failed at: RCPT TO")
			assert.Contains(t, o.stdout, "reply:     "+tc.reply)
			assert.Contains(t, o.stderr, "failed at RCPT TO: smtp: RCPT <"+tc.to+">")
			assert.Contains(t, o.stderr, tc.advice)
			assert.Contains(t, o.stderr, fmt.Sprintf("(exit %d)", tc.code))
		})
	}
	require.Equal(t, int64(1), srv.Count())
	assert.Equal(t, "client.example.org", srv.Messages()[0].Hostname, "-ehlo")
}

// TestTimeout: -timeout bounds a message, connecting included. A server
// that stalls before its EHLO reply leaves the message unsent: 75.
func TestTimeout(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{
		Mode: testpeers.Plain,
		Delay: func(stage string) time.Duration {
			if stage == "EHLO" {
				return 2 * time.Second
			}
			return 0
		},
	})
	start := time.Now()
	o := runCLI(t, runOpts{}, "-server", srv.Addr(), "-tls", "plaintext", "-timeout", "300ms",
		"-from", "alice@example.com", "-to", "bob@localhost", writeFile(t, "m.eml", eml("slow", "x")))
	assert.Less(t, time.Since(start), 1900*time.Millisecond, "smtpsend gave up before the server answered")
	assert.Equal(t, exitTempFail, o.code)
	assert.Contains(t, o.stderr, "temporary failure")
	assert.Equal(t, int64(0), srv.Count())
}

// TestExitCodeUnknown: a server that closes the connection after the
// final dot, without a reply, leaves the outcome unknown: exit 76. It runs
// in plaintext on loopback, which smtpsend allows with a warning.
func TestExitCodeUnknown(t *testing.T) {
	t.Parallel()
	srv := faultserver.Start(t,
		faultserver.Reply("220 fault.example ESMTP\r\n"),
		faultserver.ExpectLine("EHLO localhost"),
		faultserver.Reply("250-fault.example\r\n250 8BITMIME\r\n"),
		faultserver.ExpectLine("MAIL FROM:<alice@example.com>"),
		faultserver.Reply("250 OK\r\n"),
		faultserver.ExpectLine("RCPT TO:<bob@localhost>"),
		faultserver.Reply("250 OK\r\n"),
		faultserver.ExpectLine("DATA"),
		faultserver.Reply("354 go ahead\r\n"),
		faultserver.ReadUntil("\r\n.\r\n"),
		faultserver.Close(),
	)
	o := runCLI(t, runOpts{}, "-server", srv.Addr(), "-tls", "plaintext",
		"-from", "alice@example.com", "-to", "bob@localhost", writeFile(t, "m.eml", eml("dropped", "x")))
	assert.Equal(t, exitUnknown, o.code)
	assert.Contains(t, o.stderr, "warning: -tls plaintext: the message crosses the network unencrypted")
	assert.Contains(t, o.stdout, "status:    unknown (exit 76)")
	assert.Contains(t, o.stdout, "failed at: sending the message (DATA)")
	assert.Contains(t, o.stderr, "outcome unknown: the message was sent but the server's answer was lost")
	assert.Contains(t, o.stderr, "do not resend it blindly")
	<-srv.Done()
	require.NoError(t, srv.Err())
	assert.Equal(t, 1, srv.Conns(), "the message was not sent again")
	assert.Contains(t, string(srv.Received()), "Subject: dropped\r\n")
}

// TestSeveralMessages sends many files over a few connections at once,
// with results that differ per message: the worst decides the exit code,
// each message has its status line, and the summary adds up.
func TestSeveralMessages(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{
		Mode: testpeers.Plain,
		RejectData: func(m *testpeers.Message) error {
			switch {
			case bytes.Contains(m.Data, []byte("Subject: refuse")):
				return &gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 6, 0}, Message: "Content refused"}
			case bytes.Contains(m.Data, []byte("Subject: later")):
				return &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 3, 1}, Message: "Out of space"}
			}
			return nil
		},
		// Slow enough that the messages overlap on the connections.
		Delay: func(stage string) time.Duration {
			if stage == "DATA" {
				return 20 * time.Millisecond
			}
			return 0
		},
	})
	dir := t.TempDir()
	var files []string
	const n = 24
	for i := range n {
		name := filepath.Join(dir, fmt.Sprintf("m%02d.eml", i))
		files = append(files, name)
		content := eml(fmt.Sprintf("ok %d", i), "body")
		require.NoError(t, writeFileAt(name, content))
	}
	args := []string{"-server", srv.Addr(), "-tls", "plaintext", "-conns", "3", "-from", "alice@example.com", "-to", "bob@localhost"}

	o := runCLI(t, runOpts{}, append(args, files...)...)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Equal(t, int64(n), srv.Count())
	assert.LessOrEqual(t, srv.MaxSessions(), int64(3), "-conns bounds the connections")
	assert.Greater(t, srv.MaxSessions(), int64(1), "several connections were used")
	assert.Len(t, regexp.MustCompile(`(?m)^sent +\S+m\d\d\.eml: queued as GS[0-9A-F]{8}$`).FindAllString(o.stdout, -1), n)
	assert.Regexp(t, fmt.Sprintf(`messages +sent +refused +deferred +config +unknown +time +msg/s\n%d +%d +0 +0 +0 +0 +\S+ +[0-9.]+\n`, n, n), o.stdout)
	assert.NotContains(t, o.stderr, "\r", "no progress line when stderr is not a terminal")
	// Every message arrived whole.
	seen := map[string]bool{}
	for _, m := range srv.Messages() {
		seen[string(m.Data)] = true
	}
	for i := range n {
		assert.True(t, seen[crlf(eml(fmt.Sprintf("ok %d", i), "body"))], "message %d", i)
	}

	// Mixed results: 65 and 75 give 75.
	refuse := filepath.Join(dir, "refuse.eml")
	later := filepath.Join(dir, "later.eml")
	require.NoError(t, writeFileAt(refuse, eml("refuse", "x")))
	require.NoError(t, writeFileAt(later, eml("later", "x")))
	o = runCLI(t, runOpts{}, append(args, files[0], refuse, later, files[1])...)
	assert.Equal(t, exitTempFail, o.code)
	assert.Regexp(t, `(?m)^refused +\S+refuse\.eml: failed at sending the message \(BDAT\): .*554 5\.6\.0`, o.stdout)
	assert.Regexp(t, `(?m)^deferred +\S+later\.eml: failed at sending the message \(BDAT\): .*452 4\.3\.1`, o.stdout)
	assert.Regexp(t, `\n4 +2 +1 +1 +0 `, o.stdout)
	assert.Contains(t, o.stderr, "refuse.eml: failed at sending the message (BDAT)")
	assert.Contains(t, o.stderr, "(exit 65)")
	assert.Contains(t, o.stderr, "(exit 75)")

	// Only the permanent failure: 65.
	o = runCLI(t, runOpts{}, append(args, files[0], refuse)...)
	assert.Equal(t, exitRefused, o.code)
}

// TestProgress pretends standard error is a terminal: a progress line is
// drawn and removed at the end.
func TestProgress(t *testing.T) {
	saved := isTerminal
	isTerminal = func(any) bool { return true }
	defer func() { isTerminal = saved }()

	a := writeFile(t, "a.eml", eml("a", "a"))
	b := writeFile(t, "b.eml", eml("b", "b"))
	o := runCLI(t, runOpts{}, a, b)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Contains(t, o.stderr, "/2 done: ")
	assert.True(t, strings.HasSuffix(o.stderr, "\r\x1b[K"), "the progress line is cleared at the end: %q", o.stderr)

	// One message: no progress line.
	o = runCLI(t, runOpts{}, a)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Empty(t, o.stderr)
}

// TestOAuthTokenFile logs in with XOAUTH2 and OAUTHBEARER, the token read
// from a file; a wrong token is a permanent failure at AUTH.
func TestOAuthTokenFile(t *testing.T) {
	t.Parallel()
	const token = "ya29.token-for-tests"
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, Tokens: map[string]string{"me@example.com": token}})
	tokFile := writeFile(t, "token", token+"\n")
	badFile := writeFile(t, "bad", "expired\n")
	file := writeFile(t, "m.eml", eml("oauth", "x"))
	base := []string{"-server", srv.Addr(), "-ca-file", srv.Cert().CertFile, "-user", "me@example.com", "-from", "me@example.com", "-to", "you@localhost"}

	o := runCLI(t, runOpts{}, append(base, "-oauth-token-file", tokFile, file)...)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Contains(t, o.stdout, "AUTH XOAUTH2")

	o = runCLI(t, runOpts{}, append(base, "-auth", "oauthbearer", "-oauth-token-file", tokFile, file)...)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Contains(t, o.stdout, "AUTH OAUTHBEARER")

	o = runCLI(t, runOpts{}, append(base, "-oauth-token-file", badFile, file)...)
	assert.Equal(t, exitConfig, o.code)
	assert.Contains(t, o.stderr, "failed at logging in (AUTH)")
	assert.Contains(t, o.stderr, "hint: check -user and the password (or token)")
	assert.NotContains(t, o.all(), token)
	assert.NotContains(t, o.all(), "expired")
	assert.Equal(t, int64(2), srv.Count())
}

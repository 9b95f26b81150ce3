package smtp_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
	"github.com/smtpkit/smtpkit/transport/transporttest"
)

// Servers that echo what the client sent during AUTH. Whatever they
// send, no error (its whole chain, formatted every way), no audit event
// and no line that SlogAudit writes, as JSON or as text, carries the
// secret in any form: authSecrets scans them all.

const (
	echoUser     = "alice@example.com"
	echoPassword = "Echo-Pass-w0rd-7f3a"
	echoToken    = "ya29.Echo-T0ken_abcdefghijklmnop"
	echoCRAMChal = "<1896.697170952@postoffice.example>"
)

// echoSlog adds to sec's audit hook the output of SlogAudit with a JSON
// and a text handler, which sec scans when the test ends.
func echoSlog(t *testing.T, sec *authSecrets, opts *smtp.Options) {
	var mu sync.Mutex
	var js, txt bytes.Buffer
	jh := smtp.SlogAudit(slog.New(slog.NewJSONHandler(&js, &slog.HandlerOptions{Level: slog.LevelDebug})))
	th := smtp.SlogAudit(slog.New(slog.NewTextHandler(&txt, &slog.HandlerOptions{Level: slog.LevelDebug})))
	hook := opts.Audit
	opts.Audit = func(e smtp.Event) {
		hook(e)
		mu.Lock()
		defer mu.Unlock()
		jh(e)
		th(e)
	}
	// Cleanups run last first: this one before sec's check.
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		sec.mu.Lock()
		defer sec.mu.Unlock()
		require.Contains(t, js.String(), `"msg":"smtp ehlo"`)
		require.Contains(t, txt.String(), `msg="smtp ehlo"`)
		sec.texts = append(sec.texts, js.String(), txt.String())
	})
}

// echoConnect connects a client, whose audit events and slog output sec
// scans, to a scripted server offering every mechanism.
func echoConnect(t *testing.T, sec *authSecrets, script ...fs.Step) (*fs.Server, *smtp.Client) {
	t.Helper()
	opts := sec.options(smtp.Options{})
	echoSlog(t, sec, opts)
	return authScriptOffering(t, "SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER", sec, opts, script...)
}

// echoPrologue is what the server says before the client's line that
// carries the secret (or the proof), for each mechanism.
func echoPrologue(mech string) []fs.Step {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	switch mech {
	case smtp.MechLOGIN:
		return []fs.Step{fs.ReadLine(), fs.Reply("334 " + b64("Username:") + "\r\n"), fs.ReadLine(), fs.Reply("334 " + b64("Password:") + "\r\n")}
	case smtp.MechCRAMMD5:
		return []fs.Step{fs.ReadLine(), fs.Reply("334 " + b64(echoCRAMChal) + "\r\n")}
	case smtp.MechSCRAMSHA256:
		return []fs.Step{fs.Func(scramServerFirst)}
	}
	return nil
}

// echoForms registers with sec what mech sends that is secret besides the
// password or token: the CRAM-MD5 digest, and the SCRAM proof (read
// from what the server received).
func echoForms(sec *authSecrets, mech string, srv *fs.Server) {
	switch mech {
	case smtp.MechCRAMMD5:
		mac := hmac.New(md5.New, []byte(echoPassword))
		mac.Write([]byte(echoCRAMChal))
		digest := hex.EncodeToString(mac.Sum(nil))
		sec.mu.Lock()
		sec.forms[digest] = "a CRAM-MD5 digest"
		sec.mu.Unlock()
		sec.addForms("a CRAM-MD5 response", echoUser+" "+digest)
	case smtp.MechSCRAMSHA256:
		for _, line := range strings.Split(string(srv.Received()), "\r\n") {
			final, err := base64.StdEncoding.DecodeString(line)
			if _, proof, ok := strings.Cut(string(final), ",p="); err == nil && ok {
				sec.mu.Lock()
				sec.forms[proof] = "a SCRAM proof"
				sec.forms[line] = "a SCRAM client-final message"
				sec.mu.Unlock()
			}
		}
	}
}

func echoSecret(mech string) string {
	if mech == smtp.MechXOAUTH2 || mech == smtp.MechOAUTHBEARER {
		return echoToken
	}
	return echoPassword
}

func TestAuthEchoRedacted(t *testing.T) {
	variants := []struct {
		name string
		echo fs.Step
		kind smtp.Kind
	}{
		{"535", fs.Echo("535 5.7.8 Authentication failed: {line} {decoded}\r\n"), smtp.KindAuth},
		{"535-multiline", fs.Echo("535-5.7.8 {line}\r\n535-5.7.8 {decoded}\r\n535 5.7.8 {line}{decoded}\r\n"), smtp.KindAuth},
		{"garbage", fs.Echo("{line} {decoded}\r\n"), smtp.KindProtocol},
		{"garbage-digits", fs.Echo("5x5 {decoded} {line}\r\n"), smtp.KindProtocol},
		{"250", fs.Echo("250 2.0.0 {line} {decoded}\r\n"), smtp.KindProtocol},
		{"454", fs.Echo("454 4.7.0 {decoded}\r\n"), smtp.KindAuth},
	}
	mechs := []string{smtp.MechPLAIN, smtp.MechLOGIN, smtp.MechCRAMMD5, smtp.MechSCRAMSHA256, smtp.MechXOAUTH2, smtp.MechOAUTHBEARER}
	for _, mech := range mechs {
		for _, v := range variants {
			t.Run(mech+"/"+v.name, func(t *testing.T) {
				t.Parallel()
				sec := newAuthSecrets(t)
				sec.password(echoUser, echoPassword)
				sec.token(echoUser, echoToken, "127.0.0.1", 0)
				script := append(echoPrologue(mech), v.echo)
				srv, c := echoConnect(t, sec, script...)
				err := sec.err(c.LoginWith(testCtx(t), mech, echoUser, echoSecret(mech)))
				<-srv.Done()
				echoForms(sec, mech, srv)
				sec.addLines(srv)
				se := authRequire(t, err, v.kind)
				if !strings.HasPrefix(v.name, "garbage") {
					// A garbage line is quoted cut short, maybe before the
					// secret.
					assert.Contains(t, err.Error(), "[redacted]", "the echo reached the error")
				}
				assert.NotContains(t, se.Message+err.Error(), "\x00", "made printable")
				sec.client(c)
				c.Close()
				sec.client(c)
			})
		}
	}
}

// addLines registers the base64 lines the client sent that carry a
// secret, as the server received them, as forbidden forms.
func (s *authSecrets) addLines(srv *fs.Server) {
	for _, line := range strings.Split(string(srv.Received()), "\r\n") {
		word := line[strings.LastIndexByte(line, ' ')+1:]
		raw, err := base64.StdEncoding.DecodeString(word)
		if err != nil || !(bytes.Contains(raw, []byte(echoPassword)) || bytes.Contains(raw, []byte(echoToken))) {
			continue
		}
		s.mu.Lock()
		s.forms[word] = "an AUTH line that carries a secret"
		s.mu.Unlock()
	}
}

// TestAuthEchoTokenError: a token server's error report (a JSON
// challenge) whose status echoes the token does not carry it into the
// error. Echoed as it is, the token is recognised in the base64
// challenge itself, which the client then cancels; escaped so that its
// base64 form cannot be recognised, it is redacted from the decoded
// fields.
func TestAuthEchoTokenError(t *testing.T) {
	var esc strings.Builder
	for _, c := range echoToken {
		fmt.Fprintf(&esc, `\u%04x`, c)
	}
	for _, v := range []struct {
		name, json string
		check      func(t *testing.T, err error)
	}{
		{"escaped", `{"status":"` + esc.String() + `","schemes":"bearer","scope":"` + esc.String() + `"}`, func(t *testing.T, err error) {
			auth535(t, err)
			assert.Contains(t, err.Error(), `status="[redacted]"`)
		}},
		{"plain", `{"status":"` + echoToken + `","schemes":"bearer","scope":"https://mail.google.com/"}`, func(t *testing.T, err error) {
			se := authRequire(t, err, smtp.KindProtocol)
			assert.Equal(t, 535, se.Code)
			assert.Contains(t, se.Message, "challenge echoes what the client sent (redacted); exchange cancelled")
		}},
	} {
		for _, mech := range []string{smtp.MechXOAUTH2, smtp.MechOAUTHBEARER} {
			t.Run(mech+"/"+v.name, func(t *testing.T) {
				t.Parallel()
				sec := newAuthSecrets(t)
				sec.token(echoUser, echoToken, "127.0.0.1", 0)
				srv, c := echoConnect(t, sec,
					fs.ReadLine(), fs.Reply("334 "+base64.StdEncoding.EncodeToString([]byte(v.json))+"\r\n"),
					fs.Echo("535 5.7.8 {line}\r\n"))
				err := sec.err(c.LoginWith(testCtx(t), mech, echoUser, echoToken))
				<-srv.Done()
				sec.addLines(srv)
				v.check(t, err)
				assert.Equal(t, smtp.StateReady, c.State())
			})
		}
	}
}

// TestAuthEchoLater: after a successful login, a server that quotes the
// AUTH line in a later reply (a MAIL refusal, an unsolicited 421 on an
// idle session) does not get it into errors either.
func TestAuthEchoLater(t *testing.T) {
	authLine := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+echoUser+"\x00"+echoPassword))
	for _, v := range []struct {
		name   string
		script []fs.Step
	}{
		{"MAIL", []fs.Step{fs.ExpectLine(authLine), fs.Reply("235 2.7.0 ok\r\n"),
			fs.ReadLine(), fs.Reply("550 5.7.1 you sent " + authLine + " with \x00" + echoPassword + "\x1b[2K\r\n")}},
		{"idle-421", []fs.Step{fs.ExpectLine(authLine), fs.Reply("235 2.7.0 ok\r\n421 4.4.2 " + authLine + " " + echoPassword + "\r\n")}},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			sec := newAuthSecrets(t)
			sec.password(echoUser, echoPassword)
			sec.addForms("the AUTH line", authLine)
			_, c := echoConnect(t, sec, v.script...)
			ctx := testCtx(t)
			require.NoError(t, sec.err(c.LoginWith(ctx, smtp.MechPLAIN, echoUser, echoPassword)))
			// The session must sit idle for idlePeekAfter (1 ms) before
			// the client looks for an unsolicited reply.
			time.Sleep(3 * time.Millisecond)
			_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
			sec.err(err)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "[redacted]")
			assert.NotContains(t, err.Error(), "\x1b")
			sec.client(c)
		})
	}
}

// TestServerTextPrintable: control characters a server sends (ESC, BEL,
// a CR in the middle of a line, C1 controls, bidirectional overrides)
// reach neither errors nor events nor the outcome as they are: they are
// escaped, so printing them cannot rewrite a terminal's line.
func TestServerTextPrintable(t *testing.T) {
	const spoof = "no\r\x1b[2K\r sent m.eml: queued as 4Xk9Qz\a\u009b2J\u202e"
	sec := newAuthSecrets(t)
	sec.password(echoUser, echoPassword)
	_, c := echoConnect(t, sec,
		fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 2.1.0 ok\x1b]0;title\a\r\n"),
		fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 2.1.5 ok\r\n"),
		fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"), fs.ReadUntil("\r\n.\r\n"),
		fs.Reply("250 2.0.0 Ok: queued as Q1\x1b[2K\r\n"),
		fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("550 5.7.1 "+spoof+"\r\n"),
	)
	ctx := testCtx(t)
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	o, err := c.Send(ctx, env, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assert.Equal(t, `Q1\x1b[2K`, o.QueueID)
	assert.Equal(t, `Ok: queued as Q1\x1b[2K`, o.Reply.Text())
	_, err = c.Send(ctx, env, strings.NewReader("x\r\n"))
	se := trErr(t, err, smtp.OpMAIL, smtp.KindRejected)
	assert.Equal(t, `no\r\x1b[2K\r sent m.eml: queued as 4Xk9Qz\a\u009b2J\u202e`, se.Message)
	sec.mu.Lock()
	defer sec.mu.Unlock()
	for _, text := range append(sec.texts, err.Error()) {
		for _, r := range text {
			if r < 0x20 && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == 0x202e {
				t.Errorf("control character %U in %q", r, text)
			}
		}
	}
}

// plainLine is the AUTH PLAIN line for echoUser and pass.
func plainLine(pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+echoUser+"\x00"+pass))
}

// chainLogin runs a first session of a chain sharing red: a PLAIN login
// with pass that the server accepts, then a 421 at MAIL, as in issue 20.
func chainLogin(t *testing.T, sec *authSecrets, red *smtp.Redactor, pass string) {
	t.Helper()
	opts := sec.options(smtp.Options{Redactor: red})
	echoSlog(t, sec, opts)
	_, c := authScriptOffering(t, "PLAIN", sec, opts,
		fs.ExpectLine(plainLine(pass)), fs.Reply("235 2.7.0 ok\r\n"),
		fs.ReadLine(), fs.Reply("421 4.7.0 closing\r\n"))
	ctx := testCtx(t)
	require.NoError(t, sec.err(c.LoginWith(ctx, smtp.MechPLAIN, echoUser, pass)))
	_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
	require.Error(t, sec.err(err))
}

// chainWired reports whether a Client made with Options.Redactor
// filters with it from its greeting on.
func chainWired(t *testing.T) bool {
	red := new(smtp.Redactor)
	srv := fs.Start(t, fs.Reply("220 mx.example\r\n"), fs.ExpectLine("EHLO client.example"), fs.Reply("250 mx.example\r\n"))
	tr, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	c, err := smtp.Connect(testCtx(t), tr, &smtp.Options{LocalName: "client.example", Redactor: red, InsecureAllowPlaintext: true})
	require.NoError(t, err)
	defer c.Close()
	return smtp.SharesRedactor(c, red)
}

// TestRedactorChain: the password one session of a chain sent comes back
// in a later session's greeting or EHLO reply, before that session's
// AUTH (issue 20, point 1): the Redactor the chain shares removes it.
func TestRedactorChain(t *testing.T) {
	require.True(t, chainWired(t), "newClient hands Options.Redactor to the session and reads the greeting through it")
	for _, v := range []struct {
		name   string
		script []fs.Step
		op     smtp.Op
	}{
		{"greeting", []fs.Step{fs.Reply("421 4.7.0 mx.example busy " + echoPassword + "\x1b[2K\r\n")}, smtp.OpGreeting},
		{"ehlo", []fs.Step{fs.Reply("220 mx.example " + echoPassword + "\r\n"), fs.ReadLine(),
			fs.Reply("554-5.7.1 no " + echoPassword + "\r\n554 5.7.1 " + plainLine(echoPassword) + "\r\n")}, smtp.OpEHLO},
	} {
		t.Run(v.name, func(t *testing.T) {
			sec := newAuthSecrets(t)
			sec.password(echoUser, echoPassword)
			sec.addForms("the AUTH line", plainLine(echoPassword))
			red := new(smtp.Redactor)
			chainLogin(t, sec, red, echoPassword)

			opts := sec.options(smtp.Options{Redactor: red, InsecureAllowPlaintext: true})
			srv := fs.Start(t, v.script...)
			tr, err := net.Dial("tcp", srv.Addr())
			require.NoError(t, err)
			c, err := smtp.Connect(testCtx(t), tr, withName(opts, "client.example", nil))
			if c != nil {
				c.Close()
			}
			sec.err(err)
			var se *smtp.Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, v.op, se.Op)
			assert.NotContains(t, err.Error(), "\x1b")
			assert.Contains(t, err.Error(), "[redacted]")
		})
	}
}

// TestControlCharPasswordEcho: a password with control characters,
// echoed raw, as escapes the server wrote itself, or half and half,
// leaves no fragment in the escaped text (issue 20, point 3).
func TestControlCharPasswordEcho(t *testing.T) {
	const pass = "k9\tQz7\bR2\rm"
	esc := `k9\tQz7\bR2\rm`
	for name, echo := range map[string]string{
		"raw":     pass,
		"escaped": esc,
		"mixed":   "k9\tQz7" + `\bR2\rm`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sec := newAuthSecrets(t)
			sec.password(echoUser, pass)
			sec.mu.Lock()
			sec.forms[esc] = "the password, escaped"
			for i := 0; i+8 <= len(esc); i++ {
				sec.forms[esc[i:i+8]] = "8 characters of the password, escaped"
			}
			sec.mu.Unlock()
			srv, c := echoConnect(t, sec, fs.ExpectLine(plainLine(pass)), fs.Reply("535 5.7.8 bad password "+echo+"\r\n"))
			err := sec.err(c.LoginWith(testCtx(t), smtp.MechPLAIN, echoUser, pass))
			<-srv.Done()
			auth535(t, err)
			assert.Contains(t, err.Error(), "bad password [redacted]")
		})
	}
}

// TestShortPasswordsKeepQueueID: the passwords "queued" and "2.0.0 Ok"
// neither reveal themselves by where a marker lands nor hide the codes
// and the queue id (issue 20, point 4).
func TestShortPasswordsKeepQueueID(t *testing.T) {
	for _, v := range []struct{ pass, text string }{
		{"queued", "Ok: queued as 4XyZ12ab"},
		{"2.0.0 Ok", "[redacted]: queued as 4XyZ12ab"},
	} {
		t.Run(v.pass, func(t *testing.T) {
			t.Parallel()
			sec := newAuthSecrets(t)
			sec.mu.Lock()
			sec.forms["$never$"] = "nothing" // the password is ordinary text here
			sec.mu.Unlock()
			_, c := echoConnect(t, sec,
				fs.ExpectLine(plainLine(v.pass)), fs.Reply("235 2.7.0 ok\r\n"),
				fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 2.1.0 ok\r\n"),
				fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 2.1.5 ok\r\n"),
				fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"), fs.ReadUntil("\r\n.\r\n"),
				fs.Reply("250 2.0.0 Ok: queued as 4XyZ12ab\r\n"))
			ctx := testCtx(t)
			require.NoError(t, c.LoginWith(ctx, smtp.MechPLAIN, echoUser, v.pass))
			o, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("x\r\n"))
			require.NoError(t, err)
			assert.Equal(t, "4XyZ12ab", o.QueueID)
			assert.Equal(t, 250, o.Reply.Code)
			assert.Equal(t, "2.0.0", o.Reply.Enhanced)
			assert.Equal(t, v.text, o.Reply.Text())
		})
	}
}

// TestStartTLSCertNamesRedacted: a certificate whose names hold ESC and
// CR, and the password a session of the chain sent earlier, fails
// verification at STARTTLS; the error (and the event of the aborted
// session) is printable and redacted, and errors.As still finds the
// certificate error (issue 20, point 2). The errors it wraps, crypto/tls
// and crypto/x509's own, keep their text as it is.
func TestStartTLSCertNamesRedacted(t *testing.T) {
	sec := newAuthSecrets(t)
	sec.password(echoUser, echoPassword)
	red := new(smtp.Redactor)
	chainLogin(t, sec, red, echoPassword)

	cert, pool := transporttest.NamedCert(t, "mx\x1b[2K\r.example", echoPassword+".example", "bell\a.example")
	srv := fs.Start(t, fs.Reply("220 mx.example\r\n"), fs.ExpectLine("EHLO client.example"),
		fs.Reply("250-mx.example\r\n250 STARTTLS\r\n"), fs.ExpectLine("STARTTLS"), fs.Reply("220 go\r\n"),
		fs.StartTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	var events []string
	opts := &smtp.Options{Redactor: red, Audit: func(e smtp.Event) { events = append(events, fmt.Sprintf("%+v", e)) }}
	tr, err := transport.Dial(testCtx(t), srv.Addr())
	require.NoError(t, err)
	_, err = smtp.ConnectStartTLS(testCtx(t), tr, withName(opts, "client.example", &tls.Config{RootCAs: pool, ServerName: "localhost"}))
	require.Error(t, err)
	<-srv.Done()
	for _, text := range append(events, err.Error(), fmt.Sprintf("%+v", err)) {
		assert.NotContains(t, text, "\x1b")
		assert.NotContains(t, text, "\r")
		assert.NotContains(t, text, "\a")
		assert.NotContains(t, text, echoPassword)
	}
	assert.Contains(t, err.Error(), `mx\x1b[2K\r.example, [redacted].example, bell\a.example`)
	var cve *tls.CertificateVerificationError
	assert.ErrorAs(t, err, &cve)
	var he x509.HostnameError
	assert.ErrorAs(t, err, &he)
}

// TestDialTLSErrorRedacted: with implicit TLS the handshake happens in
// transport.DialTLS, before any session: Redactor.WrapError filters its
// error with what the chain knows, and errors.As still sees through it.
func TestDialTLSErrorRedacted(t *testing.T) {
	sec := newAuthSecrets(t)
	sec.password(echoUser, echoPassword)
	red := new(smtp.Redactor)
	chainLogin(t, sec, red, echoPassword)

	cert, pool := transporttest.NamedCert(t, "mx\x1b[2K\r.example", echoPassword+".example")
	srv := fs.Start(t, fs.StartTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	_, err := transport.DialTLS(testCtx(t), srv.Addr(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	require.Error(t, err)
	<-srv.Done()
	err = red.WrapError(err)
	assert.NotContains(t, err.Error(), echoPassword)
	assert.NotContains(t, err.Error(), "\x1b")
	assert.Contains(t, err.Error(), `mx\x1b[2K\r.example, [redacted].example`)
	var he x509.HostnameError
	assert.ErrorAs(t, err, &he)
	assert.Nil(t, red.WrapError(nil))
}

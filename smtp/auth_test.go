package smtp_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/sasl"
	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// End-to-end tests of the AUTH driver (smtp/auth.go) against real
// servers: Postfix smtpd with Cyrus SASL (SCRAM-SHA-256, PLAIN, LOGIN,
// CRAM-MD5), Mailpit (PLAIN, LOGIN) and the in-process go-smtp server
// (XOAUTH2 and OAUTHBEARER with a server-side token check), plus scripted
// servers for what no real server does on demand (a SCRAM server that
// cannot prove itself, a garbled challenge). The mechanisms' published
// test vectors are in internal/sasl. Every test collects its errors and
// audit events in an authSecrets, which fails the test if any of them
// carries a secret in any form. Helpers are prefixed "auth".

// authSecrets collects every error and audit event of a test and, when
// the test ends, checks that none of them carries a secret: a password
// or token as given, base64-encoded (as LOGIN sends it), or inside the
// base64 initial responses of PLAIN, XOAUTH2 and OAUTHBEARER.
type authSecrets struct {
	t       *testing.T
	mu      sync.Mutex        // guards the fields below
	forms   map[string]string // secret form -> what it is
	texts   []string          // collected error and event texts
	nEvents int
}

func newAuthSecrets(t *testing.T) *authSecrets {
	s := &authSecrets{t: t, forms: map[string]string{}}
	t.Cleanup(s.check)
	return s
}

func (s *authSecrets) addForms(what string, raw ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range raw {
		for _, f := range []string{base64.StdEncoding.EncodeToString([]byte(r)), base64.RawStdEncoding.EncodeToString([]byte(r))} {
			s.forms[f] = "base64 of " + what
		}
	}
}

// password registers a password (right or wrong) of user.
func (s *authSecrets) password(user, pass string) {
	s.mu.Lock()
	s.forms[pass] = "a password"
	s.mu.Unlock()
	s.addForms("a password", pass, "\x00"+user+"\x00"+pass)
}

// token registers an OAuth token (right or wrong) of user, presented to
// host:port.
func (s *authSecrets) token(user, token, host string, port int) {
	s.mu.Lock()
	s.forms[token] = "a token"
	s.mu.Unlock()
	s.addForms("a token", token,
		"user="+user+"\x01auth=Bearer "+token+"\x01\x01",
		"n,a="+user+",\x01host="+host+"\x01port="+strconv.Itoa(port)+"\x01auth=Bearer "+token+"\x01\x01")
}

// options returns o with an Audit hook that collects every event.
func (s *authSecrets) options(o smtp.Options) *smtp.Options {
	o.Audit = s.hook
	return &o
}

func (s *authSecrets) hook(e smtp.Event) {
	s.mu.Lock()
	s.texts = append(s.texts, fmt.Sprintf("%+v", e), e.Error)
	s.nEvents++
	s.mu.Unlock()
}

// err collects err (and every error it wraps) and returns it.
func (s *authSecrets) err(err error) error {
	if err == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var walk func(e error)
	walk = func(e error) {
		for e != nil {
			s.texts = append(s.texts, e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
			if j, ok := e.(interface{ Unwrap() []error }); ok {
				for _, e := range j.Unwrap() {
					walk(e)
				}
				return
			}
			e = errors.Unwrap(e)
		}
	}
	walk(err)
	return err
}

// client collects the error that closed c, if any.
func (s *authSecrets) client(c *smtp.Client) {
	if c != nil {
		s.err(c.Err())
	}
}

func (s *authSecrets) check() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.forms) == 0 {
		s.t.Error("authSecrets: no secret registered")
	}
	if s.nEvents == 0 {
		s.t.Error("authSecrets: no audit event collected")
	}
	for _, text := range s.texts {
		for form, what := range s.forms {
			if strings.Contains(text, form) {
				s.t.Errorf("an error or audit event carries %s: %q", what, text)
			}
		}
	}
}

// authEvents returns the auth events among the collected ones.
func authEvents(a *peerAudit) []smtp.Event { return a.Of(smtp.EventAuth) }

// authRequire checks that err is an *smtp.Error of Op AUTH and kind.
func authRequire(t *testing.T, err error, kind smtp.Kind) *smtp.Error {
	t.Helper()
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.OpAUTH, se.Op, "%v", err)
	assert.Equal(t, kind, se.Kind, "%v", err)
	return se
}

// auth535 checks a refusal of credentials: 535 5.7.8, permanent.
func auth535(t *testing.T, err error) *smtp.Error {
	t.Helper()
	se := authRequire(t, err, smtp.KindAuth)
	assert.Equal(t, 535, se.Code, "%v", err)
	assert.Equal(t, "5.7.8", se.Enhanced, "%v", err)
	assert.True(t, smtp.IsConfig(err))
	assert.False(t, smtp.IsTemporary(err))
	return se
}

// authLines splits a transcript into lines, without their CRLF.
func authLines(s string) []string {
	return strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n")
}

// --- Postfix + Cyrus SASL --------------------------------------------

func TestAuthPostfix(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{})
	const wrongPass = "wrong-Pass-93"

	// relay sends a message to another domain, which Postfix accepts only
	// from an authenticated client, and returns its queue id.
	relay := func(t *testing.T, ctx context.Context, c *smtp.Client, sec *authSecrets) string {
		t.Helper()
		out, err := c.Send(ctx, smtp.Envelope{From: "sender@example.com", To: []string{"rcpt@example.org"}}, strings.NewReader("Subject: relayed\r\n\r\nbody\r\n"))
		require.NoError(t, sec.err(err))
		require.NotEmpty(t, out.QueueID)
		return out.QueueID
	}
	// saslMethod waits for the line Postfix logs when transaction qid
	// gets its first recipient, and returns the SASL mechanism it names.
	saslMethod := func(t *testing.T, qid string) string {
		t.Helper()
		var method string
		assert.Eventually(t, func() bool {
			for _, l := range strings.Split(p.Log(), "\n") {
				if _, rest, ok := strings.Cut(l, " "+qid+": client=localhost[127.0.0.1], sasl_method="); ok {
					method, _, _ = strings.Cut(rest, ",")
					return true
				}
			}
			return false
		}, 30*time.Second, 20*time.Millisecond, "Postfix did not log %s", qid)
		return method
	}

	t.Run("Login chooses SCRAM-SHA-256", func(t *testing.T) {
		ctx := testCtx(t)
		sec := newAuthSecrets(t)
		sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
		audit := &peerAudit{}
		opts := sec.options(smtp.Options{})
		opts.Audit = func(e smtp.Event) { sec.hook(e); audit.hook(e) }
		c, w, err := peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), opts)
		require.NoError(t, sec.err(err))
		defer sec.client(c)
		require.Contains(t, c.Capabilities().Auth, smtp.MechSCRAMSHA256)

		require.NoError(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)))
		ev := authEvents(audit)
		require.Len(t, ev, 1)
		assert.Equal(t, smtp.MechSCRAMSHA256, ev[0].Mechanism)
		assert.Equal(t, 235, ev[0].Code)
		assert.Empty(t, ev[0].Error)
		// Client-first with initial response, client-final, then the empty
		// answer to the server-final message (its v= verified).
		wire := w.String()[len(w.BeforeTLS()):]
		lines := authLines(wire)
		require.Len(t, lines, 4, "%q", wire)
		assert.Equal(t, peerEHLO, lines[0]+"\r\n")
		assert.True(t, strings.HasPrefix(lines[1], "AUTH SCRAM-SHA-256 biwsbj10ZXN0dXNlcixy"), lines[1]) // "n,,n=testuser,r"
		assert.NotEmpty(t, lines[2])
		assert.Equal(t, "", lines[3])

		// Authenticated: relaying is allowed, and Postfix says how.
		qid := relay(t, ctx, c, sec)
		assert.Equal(t, "SCRAM-SHA-256", saslMethod(t, qid))

		// AUTH succeeds once per session: the client refuses a second
		// one before writing anything.
		n := w.Len()
		for _, err := range []error{c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass), c.LoginWith(ctx, smtp.MechPLAIN, testpeers.PostfixUser, testpeers.PostfixPass)} {
			se := authRequire(t, sec.err(err), smtp.KindInvalidInput)
			assert.Contains(t, se.Message, "already authenticated")
		}
		assert.Equal(t, n, w.Len(), "nothing written")
		require.NoError(t, sec.err(c.Quit(ctx)))
	})

	// Each mechanism chosen explicitly, on the implicit-TLS port.
	for _, mech := range []string{smtp.MechSCRAMSHA256, smtp.MechPLAIN, smtp.MechLOGIN, smtp.MechCRAMMD5} {
		t.Run("LoginWith "+mech, func(t *testing.T) {
			ctx := testCtx(t)
			sec := newAuthSecrets(t)
			sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
			c, w, err := peerDialTLS(t, ctx, p.ImplicitTLSAddr(), p.Cert().ClientConfig(), sec.options(smtp.Options{}))
			require.NoError(t, sec.err(err))
			defer sec.client(c)
			n := w.Len()
			require.NoError(t, sec.err(c.LoginWith(ctx, mech, testpeers.PostfixUser, testpeers.PostfixPass)))
			lines := authLines(w.String()[n:])
			switch mech {
			case smtp.MechPLAIN:
				// One line: the initial response.
				assert.Equal(t, []string{"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00testuser\x00testpass"))}, lines)
			case smtp.MechLOGIN:
				// No initial response; user name and password answer two
				// prompts.
				assert.Equal(t, []string{"AUTH LOGIN", base64.StdEncoding.EncodeToString([]byte("testuser")), base64.StdEncoding.EncodeToString([]byte("testpass"))}, lines)
			case smtp.MechCRAMMD5:
				require.Len(t, lines, 2)
				assert.Equal(t, "AUTH CRAM-MD5", lines[0])
			}
			qid := relay(t, ctx, c, sec)
			assert.Equal(t, mech, saslMethod(t, qid))
			require.NoError(t, sec.err(c.Quit(ctx)))
		})
	}

	// A wrong password is refused with 535 5.7.8; the session stays
	// usable, and a retry with the right password succeeds (AUTH is
	// refused again only after a success).
	for _, mech := range []string{smtp.MechSCRAMSHA256, smtp.MechPLAIN, smtp.MechLOGIN, smtp.MechCRAMMD5} {
		t.Run("wrong password "+mech, func(t *testing.T) {
			ctx := testCtx(t)
			sec := newAuthSecrets(t)
			sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
			sec.password(testpeers.PostfixUser, wrongPass)
			audit := &peerAudit{}
			opts := sec.options(smtp.Options{})
			opts.Audit = func(e smtp.Event) { sec.hook(e); audit.hook(e) }
			c, _, err := peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), opts)
			require.NoError(t, sec.err(err))
			defer sec.client(c)

			err = sec.err(c.LoginWith(ctx, mech, testpeers.PostfixUser, wrongPass))
			se := auth535(t, err)
			assert.Contains(t, se.Message, mech)
			ev := authEvents(audit)
			require.Len(t, ev, 1)
			assert.Equal(t, mech, ev[0].Mechanism)
			assert.Equal(t, 535, ev[0].Code)
			assert.Equal(t, "5.7.8", ev[0].Enhanced)
			assert.Equal(t, smtp.KindAuth, ev[0].Kind)
			assert.NotEmpty(t, ev[0].Error)
			assert.Equal(t, smtp.StateReady, c.State())

			require.NoError(t, sec.err(c.Noop(ctx)))
			require.NoError(t, sec.err(c.LoginWith(ctx, mech, testpeers.PostfixUser, testpeers.PostfixPass)))
			relay(t, ctx, c, sec)
			require.NoError(t, sec.err(c.Quit(ctx)))
		})
	}

	// Postfix offers SCRAM-SHA-1, which this package does not implement:
	// a caller mistake, caught before any byte is written.
	t.Run("a mechanism offered but not supported", func(t *testing.T) {
		ctx := testCtx(t)
		sec := newAuthSecrets(t)
		sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
		c, w, err := peerDialTLS(t, ctx, p.ImplicitTLSAddr(), p.Cert().ClientConfig(), sec.options(smtp.Options{}))
		require.NoError(t, sec.err(err))
		defer sec.client(c)
		caps := c.Capabilities()
		require.True(t, caps.HasAuth("SCRAM-SHA-1"))
		n := w.Len()
		se := authRequire(t, sec.err(c.LoginWith(ctx, "scram-sha-1", testpeers.PostfixUser, testpeers.PostfixPass)), smtp.KindInvalidInput)
		assert.Contains(t, se.Error(), "unsupported mechanism")
		assert.Equal(t, n, w.Len(), "nothing written")
		require.NoError(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)))
		require.NoError(t, sec.err(c.Quit(ctx)))
	})

	// Before STARTTLS on the STARTTLS port (smtpd_tls_auth_only) Postfix
	// offers no AUTH: reached in plaintext with the insecure option,
	// Login fails naming what was offered, and nothing is sent.
	t.Run("no AUTH before STARTTLS", func(t *testing.T) {
		ctx := testCtx(t)
		sec := newAuthSecrets(t)
		sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
		c, w, err := peerDialPlain(t, ctx, p.StartTLSAddr(), sec.options(smtp.Options{InsecureAllowPlaintext: true}))
		require.NoError(t, sec.err(err))
		defer sec.client(c)
		require.False(t, c.IsTLS())
		require.True(t, c.Capabilities().StartTLS)
		require.Empty(t, c.Capabilities().Auth)

		se := authRequire(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)), smtp.KindAuth)
		assert.Contains(t, se.Message, "offers no AUTH before STARTTLS")
		assert.True(t, smtp.IsConfig(se))
		se = authRequire(t, sec.err(c.LoginWith(ctx, smtp.MechPLAIN, testpeers.PostfixUser, testpeers.PostfixPass)), smtp.KindAuth)
		assert.Contains(t, se.Message, "does not offer PLAIN")
		assert.Equal(t, peerEHLO, w.String(), "only EHLO was sent")
		require.NoError(t, sec.err(c.Quit(ctx)))
	})

	// The port that offers AUTH without TLS: the client sends credentials
	// in clear only because the insecure option says so.
	t.Run("plaintext AUTH with the insecure option", func(t *testing.T) {
		ctx := testCtx(t)
		sec := newAuthSecrets(t)
		sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
		c, _, err := peerDialPlain(t, ctx, p.PlainAuthAddr(), sec.options(smtp.Options{InsecureAllowPlaintext: true}))
		require.NoError(t, sec.err(err))
		defer sec.client(c)
		require.False(t, c.IsTLS())
		require.NoError(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)))
		qid := relay(t, ctx, c, sec)
		assert.Equal(t, "SCRAM-SHA-256", saslMethod(t, qid))
		require.NoError(t, sec.err(c.Quit(ctx)))
	})
}

// With broken_sasl_auth_clients, Postfix also advertises the obsolete
// "AUTH=PLAIN LOGIN ..." line of pre-RFC 4954 Outlook: the mechanisms are
// read from both lines, once each, and Login still works.
func TestAuthPostfixOldAuthForm(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{MainCF: []string{"broken_sasl_auth_clients = yes"}})
	// The port that offers AUTH in plaintext shows the EHLO reply raw.
	code, ehlo := postfixRaw(t, p.PlainAuthAddr(), "EHLO client.example\r\n")
	require.Equal(t, 250, code)
	mechs := strings.Join(testpeers.PostfixMechanisms, " ")
	require.Contains(t, strings.Split(ehlo, "\n"), "AUTH "+mechs)
	require.Contains(t, strings.Split(ehlo, "\n"), "AUTH="+mechs)

	ctx := testCtx(t)
	sec := newAuthSecrets(t)
	sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
	audit := &peerAudit{}
	opts := sec.options(smtp.Options{})
	opts.Audit = func(e smtp.Event) { sec.hook(e); audit.hook(e) }
	c, _, err := peerDialTLS(t, ctx, p.ImplicitTLSAddr(), p.Cert().ClientConfig(), opts)
	require.NoError(t, sec.err(err))
	defer sec.client(c)
	caps := c.Capabilities()
	assert.ElementsMatch(t, testpeers.PostfixMechanisms, caps.Auth)
	assert.True(t, caps.Has("AUTH"))
	require.NoError(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)))
	ev := authEvents(audit)
	require.Len(t, ev, 1)
	assert.Equal(t, smtp.MechSCRAMSHA256, ev[0].Mechanism)
	require.NoError(t, sec.err(c.Quit(ctx)))
}

// --- Mailpit -----------------------------------------------------------

func TestAuthMailpit(t *testing.T) {
	t.Parallel()
	const (
		user, pass, wrong = "mpuser", "mp-Secret-1", "mp-Wrong-2"
		longUser          = "longuser"
	)
	// A password so long that PLAIN's initial response does not fit on a
	// 512-octet AUTH command line (RFC 4954 §4).
	longPass := strings.Repeat("Long-Pass-", 60)
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.StartTLS, Auth: map[string]string{user: pass, longUser: longPass}, EnableChaos: true})

	connect := func(t *testing.T, sec *authSecrets, audit *peerAudit) (context.Context, *smtp.Client, *peerWire) {
		t.Helper()
		ctx := testCtx(t)
		opts := sec.options(smtp.Options{})
		opts.Audit = func(e smtp.Event) { sec.hook(e); audit.hook(e) }
		c, w, err := peerDialStartTLS(t, ctx, m.SMTPAddr(), m.Cert().ClientConfig(), opts)
		require.NoError(t, sec.err(err))
		t.Cleanup(func() { sec.client(c) })
		require.ElementsMatch(t, []string{"PLAIN", "LOGIN"}, c.Capabilities().Auth)
		return ctx, c, w
	}
	// send delivers a message and returns the user Mailpit recorded.
	send := func(t *testing.T, ctx context.Context, c *smtp.Client, sec *authSecrets, subject string) string {
		t.Helper()
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader("To: b@example.org\r\nSubject: "+subject+"\r\n\r\nx\r\n"))
		require.NoError(t, sec.err(err))
		var got string
		require.Eventually(t, func() bool {
			msgs, err := m.Messages()
			if err != nil {
				return false
			}
			for _, msg := range msgs {
				if msg.Subject == subject {
					got = msg.Username
					return true
				}
			}
			return false
		}, 30*time.Second, 20*time.Millisecond)
		return got
	}

	t.Run("Login chooses PLAIN", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password(user, pass)
		audit := &peerAudit{}
		ctx, c, _ := connect(t, sec, audit)
		require.NoError(t, sec.err(c.Login(ctx, user, pass)))
		ev := authEvents(audit)
		require.Len(t, ev, 1)
		assert.Equal(t, smtp.MechPLAIN, ev[0].Mechanism)
		assert.Equal(t, user, send(t, ctx, c, sec, "auth-login"))
		require.NoError(t, sec.err(c.Quit(ctx)))
	})
	for _, mech := range []string{smtp.MechPLAIN, smtp.MechLOGIN} {
		t.Run("wrong then right "+mech, func(t *testing.T) {
			sec := newAuthSecrets(t)
			sec.password(user, pass)
			sec.password(user, wrong)
			audit := &peerAudit{}
			ctx, c, _ := connect(t, sec, audit)
			se := authRequire(t, sec.err(c.LoginWith(ctx, mech, user, wrong)), smtp.KindAuth)
			assert.Equal(t, 535, se.Code, "%v", se)
			assert.True(t, smtp.IsConfig(se))
			assert.Equal(t, smtp.StateReady, c.State())
			require.NoError(t, sec.err(c.Noop(ctx)))
			require.NoError(t, sec.err(c.LoginWith(ctx, mech, user, pass)))
			ev := authEvents(audit)
			require.Len(t, ev, 2)
			assert.Equal(t, 535, ev[0].Code)
			assert.Equal(t, 235, ev[1].Code)
			assert.Equal(t, user, send(t, ctx, c, sec, "auth-"+mech))
			require.NoError(t, sec.err(c.Quit(ctx)))
		})
	}
	// A temporary refusal (Mailpit's chaos: 454 to every AUTH) is an
	// auth error that is temporary, not permanent; the session goes on.
	t.Run("temporary failure", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password(user, pass)
		audit := &peerAudit{}
		ctx, c, _ := connect(t, sec, audit)
		_, err := m.SetChaos(`{"Authentication":{"ErrorCode":454,"Probability":100}}`)
		require.NoError(t, err)
		t.Cleanup(func() { _, err := m.SetChaos(`{}`); assert.NoError(t, err) })
		for _, mech := range []string{smtp.MechPLAIN, smtp.MechLOGIN} {
			err := sec.err(c.LoginWith(ctx, mech, user, pass))
			se := authRequire(t, err, smtp.KindAuth)
			assert.Equal(t, 454, se.Code, "%v", err)
			assert.True(t, smtp.IsTemporary(err))
			assert.False(t, smtp.IsPermanent(err))
			require.NoError(t, sec.err(c.Noop(ctx)))
		}
		_, err = m.SetChaos(`{}`)
		require.NoError(t, err)
		require.NoError(t, sec.err(c.Login(ctx, user, pass)))
		require.NoError(t, sec.err(c.Quit(ctx)))
	})

	// RFC 4954 §4: an initial response that would make the AUTH line
	// longer than 512 octets is not sent on it; the client waits for the
	// server's empty 334 and sends it then.
	t.Run("initial response too long for the command line", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password(longUser, longPass)
		audit := &peerAudit{}
		ctx, c, w := connect(t, sec, audit)
		n := w.Len()
		require.NoError(t, sec.err(c.LoginWith(ctx, smtp.MechPLAIN, longUser, longPass)))
		lines := authLines(w.String()[n:])
		require.Len(t, lines, 2)
		assert.Equal(t, "AUTH PLAIN", lines[0])
		assert.Equal(t, base64.StdEncoding.EncodeToString([]byte("\x00"+longUser+"\x00"+longPass)), lines[1])
		assert.Equal(t, longUser, send(t, ctx, c, sec, "auth-long"))
		require.NoError(t, sec.err(c.Quit(ctx)))
	})
}

// --- go-smtp: OAuth tokens ---------------------------------------------

func TestAuthGoSMTPOAuth(t *testing.T) {
	t.Parallel()
	const (
		user      = "alice@example.com"
		token     = "ya29.a0Right-Token_0123456789"
		wrongTok  = "ya29.a0Wrong-Token_9876543210"
		longUser  = "bob@example.com"
		longToken = "eyJ0eXAiOiJKV1Qi"
	)
	// Microsoft 365 access tokens run to a few kilobytes.
	bigToken := longToken + strings.Repeat("Xy0-_.", 300)
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{
		Mode:          testpeers.ImplicitTLS,
		Tokens:        map[string]string{user: token, longUser: bigToken},
		AuthRequired:  true,
		MaxLineLength: 12288, // RFC 4954 §4: what AUTH exchanges may need
	})
	for _, mech := range []string{smtp.MechXOAUTH2, smtp.MechOAUTHBEARER} {
		t.Run(mech, func(t *testing.T) {
			ctx := testCtx(t)
			sec := newAuthSecrets(t)
			sec.token(user, token, srv.Host(), srv.Port())
			sec.token(user, wrongTok, srv.Host(), srv.Port())
			audit := &peerAudit{}
			opts := sec.options(smtp.Options{})
			opts.Audit = func(e smtp.Event) { sec.hook(e); audit.hook(e) }
			c, w, err := peerDialTLS(t, ctx, srv.Addr(), srv.Cert().ClientConfig(), opts)
			require.NoError(t, sec.err(err))
			defer sec.client(c)
			require.ElementsMatch(t, []string{"XOAUTH2", "OAUTHBEARER"}, c.Capabilities().Auth)

			// Login is for passwords: it never picks a token mechanism.
			se := authRequire(t, sec.err(c.Login(ctx, user, token)), smtp.KindAuth)
			assert.Contains(t, se.Message, "no password mechanism")

			// A rejected token: the server's JSON error challenge is
			// answered as the mechanism's specification asks, and the
			// server ends the exchange with 535 5.7.8.
			n := w.Len()
			err = sec.err(c.LoginWith(ctx, mech, user, wrongTok))
			se = auth535(t, err)
			assert.Contains(t, se.Message, mech+" refused")
			var te *sasl.TokenError
			require.ErrorAs(t, err, &te)
			assert.Equal(t, sasl.TokenError{Status: "401", Schemes: "bearer", Scope: "https://mail.google.com/"}, *te)
			lines := authLines(w.String()[n:])
			require.Len(t, lines, 2)
			assert.True(t, strings.HasPrefix(lines[0], "AUTH "+mech+" "), lines[0])
			// The initial response as the specifications (and authSecrets)
			// have it.
			ir, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "AUTH "+mech+" "))
			require.NoError(t, err)
			if mech == smtp.MechXOAUTH2 {
				assert.Equal(t, "user="+user+"\x01auth=Bearer "+wrongTok+"\x01\x01", string(ir))
				assert.Equal(t, "", lines[1], "XOAUTH2 answers the error challenge with an empty line")
			} else {
				assert.Equal(t, fmt.Sprintf("n,a=%s,\x01host=%s\x01port=%d\x01auth=Bearer %s\x01\x01", user, srv.Host(), srv.Port(), wrongTok), string(ir))
				assert.Equal(t, "AQ==", lines[1], "OAUTHBEARER answers the error challenge with ^A")
			}

			// The session is still usable, and a retry with the right token
			// succeeds.
			require.NoError(t, sec.err(c.Noop(ctx)))
			_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader("x\r\n"))
			var mailErr *smtp.Error
			require.ErrorAs(t, sec.err(err), &mailErr)
			assert.Equal(t, smtp.OpMAIL, mailErr.Op, "not authenticated yet: %v", err)
			require.NoError(t, sec.err(c.LoginWith(ctx, mech, user, token)))
			ev := authEvents(audit)
			require.Len(t, ev, 2)
			for _, e := range ev {
				assert.Equal(t, mech, e.Mechanism)
			}
			assert.Equal(t, []int{535, 235}, []int{ev[0].Code, ev[1].Code})

			marker := "Subject: " + mech + "\r\n\r\nx\r\n"
			_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader(marker))
			require.NoError(t, sec.err(err))
			found := false
			for _, m := range srv.Messages() {
				if string(m.Data) == marker {
					found = true
					assert.Equal(t, user, m.User)
				}
			}
			assert.True(t, found)

			// Once authenticated, never again on this session.
			n = w.Len()
			authRequire(t, sec.err(c.LoginWith(ctx, mech, user, token)), smtp.KindInvalidInput)
			assert.Equal(t, n, w.Len())
			require.NoError(t, sec.err(c.Quit(ctx)))
		})
	}

	// A token too long for a 512-octet AUTH line goes after an empty 334.
	for _, mech := range []string{smtp.MechXOAUTH2, smtp.MechOAUTHBEARER} {
		t.Run(mech+" long token", func(t *testing.T) {
			ctx := testCtx(t)
			sec := newAuthSecrets(t)
			sec.token(longUser, bigToken, srv.Host(), srv.Port())
			c, w, err := peerDialTLS(t, ctx, srv.Addr(), srv.Cert().ClientConfig(), sec.options(smtp.Options{}))
			require.NoError(t, sec.err(err))
			defer sec.client(c)
			n := w.Len()
			require.NoError(t, sec.err(c.LoginWith(ctx, mech, longUser, bigToken)))
			lines := authLines(w.String()[n:])
			require.Len(t, lines, 2)
			assert.Equal(t, "AUTH "+mech, lines[0])
			ir, err := base64.StdEncoding.DecodeString(lines[1])
			require.NoError(t, err)
			assert.Contains(t, string(ir), "auth=Bearer "+bigToken+"\x01\x01")
			_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader("x\r\n"))
			require.NoError(t, sec.err(err))
			require.NoError(t, sec.err(c.Quit(ctx)))
		})
	}
}

// --- the client's own checks ---------------------------------------------

// Credentials are validated before any byte is written; a mechanism the
// server does not offer, or this package does not know, is refused
// likewise. The session stays usable.
func TestAuthInputValidation(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS,
		Auth: map[string]string{"user": "Pass-word-1"}, Tokens: map[string]string{"user": "tok-en-1"}})
	ctx := testCtx(t)
	sec := newAuthSecrets(t)
	sec.password("user", "Pass-word-1")
	sec.token("user", "tok-en-1", srv.Host(), srv.Port())
	for _, s := range []string{"bad pass", "bad\r\ntoken", "tok en"} {
		sec.password("user", s)
	}
	c, w, err := peerDialTLS(t, ctx, srv.Addr(), srv.Cert().ClientConfig(), sec.options(smtp.Options{}))
	require.NoError(t, sec.err(err))
	defer sec.client(c)
	require.ElementsMatch(t, []string{"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"}, c.Capabilities().Auth)

	cases := []struct {
		name             string
		login            func() error
		kind             smtp.Kind
		contains         string
		wrapsInvalidCred bool
	}{
		{"Login with an empty password", func() error { return c.Login(ctx, "user", "") }, smtp.KindInvalidInput, "password is empty", true},
		{"Login with an empty user", func() error { return c.Login(ctx, "", "bad pass") }, smtp.KindInvalidInput, "username is empty", true},
		{"PLAIN with NUL in the user", func() error { return c.LoginWith(ctx, smtp.MechPLAIN, "us\x00er", "bad pass") }, smtp.KindInvalidInput, "username contains NUL", true},
		{"LOGIN with NUL in the password", func() error { return c.LoginWith(ctx, smtp.MechLOGIN, "user", "bad\x00pass") }, smtp.KindInvalidInput, "password contains NUL", true},
		{"XOAUTH2 with an empty token", func() error { return c.LoginWith(ctx, smtp.MechXOAUTH2, "user", "") }, smtp.KindInvalidInput, "token is empty", true},
		{"XOAUTH2 with a space in the token", func() error { return c.LoginWith(ctx, smtp.MechXOAUTH2, "user", "tok en") }, smtp.KindInvalidInput, "token contains a space", true},
		{"OAUTHBEARER with CRLF in the token", func() error { return c.LoginWith(ctx, smtp.MechOAUTHBEARER, "user", "bad\r\ntoken") }, smtp.KindInvalidInput, "token contains CR or LF", true},
		{"OAUTHBEARER with ^A in the user", func() error { return c.LoginWith(ctx, smtp.MechOAUTHBEARER, "us\x01er", "tok-en-1") }, smtp.KindInvalidInput, "username contains", true},
		{"a mechanism not offered", func() error { return c.LoginWith(ctx, smtp.MechSCRAMSHA256, "user", "bad pass") }, smtp.KindAuth, "does not offer SCRAM-SHA-256", false},
		{"a mechanism with CRLF in its name", func() error { return c.LoginWith(ctx, "PLAIN\r\nRSET", "user", "bad pass") }, smtp.KindInvalidInput, `invalid SASL mechanism name "PLAIN\r\nRSET"`, false},
		{"an empty mechanism name", func() error { return c.LoginWith(ctx, "", "user", "bad pass") }, smtp.KindInvalidInput, "invalid SASL mechanism name", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := w.Len()
			err := sec.err(tc.login())
			se := authRequire(t, err, tc.kind)
			assert.Contains(t, se.Error(), tc.contains)
			assert.Equal(t, tc.wrapsInvalidCred, errors.Is(err, sasl.ErrInvalidCredentials))
			assert.True(t, smtp.IsConfig(err))
			assert.Equal(t, n, w.Len(), "nothing written")
			assert.Equal(t, smtp.StateReady, c.State())
		})
	}
	require.NoError(t, sec.err(c.LoginWith(ctx, smtp.MechPLAIN, "user", "Pass-word-1")))
	require.NoError(t, sec.err(c.Quit(ctx)))
}

// A plaintext session exists only with the insecure option: without it,
// Connect refuses a transport that is not TLS before reading or writing
// anything, so AUTH can never reach the wire in clear. With it, AUTH on a
// server that offers it in plaintext works.
func TestAuthPlaintextSession(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{AllowInsecureAuth: true, Auth: map[string]string{"user": "Pass-word-2"}})
	ctx := testCtx(t)
	sec := newAuthSecrets(t)
	sec.password("user", "Pass-word-2")

	c, w, err := peerDialPlain(t, ctx, srv.Addr(), sec.options(smtp.Options{}))
	sec.err(err)
	assert.Nil(t, c)
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.KindInvalidInput, se.Kind)
	assert.Contains(t, se.Message, "InsecureAllowPlaintext")
	assert.Zero(t, w.Len(), "nothing written")

	c, w, err = peerDialPlain(t, ctx, srv.Addr(), sec.options(smtp.Options{InsecureAllowPlaintext: true}))
	require.NoError(t, sec.err(err))
	defer sec.client(c)
	require.False(t, c.IsTLS())
	n := w.Len()
	require.NoError(t, sec.err(c.Login(ctx, "user", "Pass-word-2")))
	assert.True(t, strings.HasPrefix(w.String()[n:], "AUTH PLAIN "))
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader("x\r\n"))
	require.NoError(t, sec.err(err))
	require.Len(t, srv.Messages(), 1)
	assert.Equal(t, "user", srv.Messages()[0].User)
	require.NoError(t, sec.err(c.Quit(ctx)))
}

// smtp-sink advertises AUTH PLAIN LOGIN and answers any AUTH with
// "250 2.0.0 Ok", not 235: the client must not consider itself
// authenticated, and says the server broke the protocol.
func TestAuthSinkAnswers250(t *testing.T) {
	t.Parallel()
	sink := testpeers.SMTPSink(t)
	ctx := testCtx(t)
	sec := newAuthSecrets(t)
	sec.password("user", "Sink-pass-5")
	c, w, err := peerDialPlain(t, ctx, sink.Addr(), sec.options(smtp.Options{InsecureAllowPlaintext: true}))
	require.NoError(t, sec.err(err))
	defer sec.client(c)
	require.ElementsMatch(t, []string{"PLAIN", "LOGIN"}, c.Capabilities().Auth)
	for _, mech := range []string{smtp.MechPLAIN, smtp.MechLOGIN} {
		err := sec.err(c.LoginWith(ctx, mech, "user", "Sink-pass-5"))
		se := authRequire(t, err, smtp.KindProtocol)
		assert.Equal(t, 250, se.Code)
		assert.Contains(t, se.Message, "not 235")
		assert.Equal(t, smtp.StateReady, c.State())
	}
	// Not authenticated, so AUTH may be tried again (it is refused again).
	authRequire(t, sec.err(c.Login(ctx, "user", "Sink-pass-5")), smtp.KindProtocol)
	assert.Equal(t, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00user\x00Sink-pass-5")), authLines(w.String())[1])
	require.NoError(t, sec.err(c.Quit(ctx)))
}

// --- scripted servers: what no real server does on demand ---------------

// A context cancelled while the server sits on an AUTH exchange ends it
// at once: the session is closed (where the exchange stands is unknown),
// the error wraps context.Canceled, and nothing carries the secret.
func TestAuthScriptCancelled(t *testing.T) {
	sec := newAuthSecrets(t)
	sec.password("user", "Pass-word-6")
	got := make(chan struct{})
	srv, c := authScript(t, sec, fs.ReadLine(), fs.Reply("334 \r\n"), fs.Func(func(conn net.Conn) error {
		// LOGIN: the user name arrives, then the server stalls.
		_, err := readCRLFLine(conn)
		close(got)
		return err
	}), fs.Stall())
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		select {
		case <-got:
		case <-ctx.Done():
		}
		cancel()
	}()
	err := sec.err(c.LoginWith(ctx, smtp.MechLOGIN, "user", "Pass-word-6"))
	se := authRequire(t, err, smtp.KindIO)
	assert.ErrorIs(t, err, context.Canceled)
	assert.True(t, smtp.IsTemporary(se))
	assert.Equal(t, smtp.StateClosed, c.State())
	sec.client(c)
	// Later calls report the closed session, not a fresh attempt.
	authRequire(t, sec.err(c.LoginWith(testCtx(t), smtp.MechLOGIN, "user", "Pass-word-6")), smtp.KindIO)
	c.Close()
	<-srv.HungUp()
}

// authScript connects a client to a scripted server over implicit TLS.
func authScript(t *testing.T, sec *authSecrets, script ...fs.Step) (*fs.Server, *smtp.Client) {
	t.Helper()
	return authScriptOffering(t, "SCRAM-SHA-256 PLAIN LOGIN", sec, sec.options(smtp.Options{}), script...)
}

// authScriptOffering is authScript with a server that offers mechs, and
// a client with opts.
func authScriptOffering(t *testing.T, mechs string, sec *authSecrets, opts *smtp.Options, script ...fs.Step) (*fs.Server, *smtp.Client) {
	t.Helper()
	serverTLS, roots := fs.SelfSignedTLS(t)
	steps := append([]fs.Step{fs.StartTLS(serverTLS), fs.Reply("220 mx.example ESMTP\r\n"), fs.ExpectLine("EHLO client.example"),
		fs.Reply(fs.Lines("250-mx.example", "250-ENHANCEDSTATUSCODES", "250 AUTH "+mechs))}, script...)
	srv := fs.Start(t, steps...)
	ctx := testCtx(t)
	tr, err := transport.DialTLS(ctx, srv.Addr(), &tls.Config{RootCAs: roots})
	require.NoError(t, err)
	c, err := smtp.Connect(ctx, tr, withName(opts, "client.example", nil))
	require.NoError(t, sec.err(err))
	t.Cleanup(func() { c.Close() })
	return srv, c
}

// scramServerFirst answers the client-first message with a server-first
// message that extends the client's nonce.
func scramServerFirst(conn net.Conn) error {
	line, err := readCRLFLine(conn)
	if err != nil {
		return err
	}
	b64, ok := strings.CutPrefix(line, "AUTH SCRAM-SHA-256 ")
	if !ok {
		return fmt.Errorf("want AUTH SCRAM-SHA-256, got %q", line)
	}
	first, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return err
	}
	_, nonce, ok := strings.Cut(string(first), ",r=")
	if !ok {
		return fmt.Errorf("no nonce in %q", first)
	}
	serverFirst := "r=" + nonce + "srv,s=" + base64.StdEncoding.EncodeToString([]byte("salt")) + ",i=4096"
	_, err = conn.Write([]byte("334 " + base64.StdEncoding.EncodeToString([]byte(serverFirst)) + "\r\n"))
	return err
}

// readCRLFLine reads one line byte by byte (so nothing after it is
// consumed from the connection).
func readCRLFLine(conn net.Conn) (string, error) {
	var b bytes.Buffer
	one := make([]byte, 1)
	for {
		if _, err := conn.Read(one); err != nil {
			return b.String(), err
		}
		b.WriteByte(one[0])
		if bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
			return strings.TrimSuffix(b.String(), "\r\n"), nil
		}
	}
}

func TestAuthScriptSCRAMServerNotProven(t *testing.T) {
	// The server-final message carries a signature that does not match:
	// the server does not know the user's keys, so it may be an impostor.
	// The client must drop the session, not cancel the exchange and go
	// on using it.
	t.Run("wrong server signature", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password("user", "Pass-word-3")
		srv, c := authScript(t, sec, fs.Func(scramServerFirst), fs.ReadLine(),
			fs.Reply("334 "+base64.StdEncoding.EncodeToString([]byte("v="+base64.StdEncoding.EncodeToString(make([]byte, 32))))+"\r\n"))
		err := sec.err(c.LoginWith(testCtx(t), smtp.MechSCRAMSHA256, "user", "Pass-word-3"))
		se := authRequire(t, err, smtp.KindAuth)
		assert.ErrorIs(t, err, sasl.ErrServerVerification)
		assert.Contains(t, se.Message, "session dropped")
		assert.Equal(t, smtp.StateClosed, c.State())
		sec.client(c)
		c.Close()
		<-srv.HungUp()
		require.NoError(t, srv.Err())
		assert.NotContains(t, string(srv.Received()), "\r\n*\r\n", "no cancellation: the session is dropped")
	})
	// 235 without the server-final message: the server never proved
	// itself either.
	t.Run("success without server-final", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password("user", "Pass-word-3")
		srv, c := authScript(t, sec, fs.Func(scramServerFirst), fs.ReadLine(), fs.Reply("235 2.7.0 ok\r\n"))
		err := sec.err(c.LoginWith(testCtx(t), smtp.MechSCRAMSHA256, "user", "Pass-word-3"))
		se := authRequire(t, err, smtp.KindAuth)
		assert.ErrorIs(t, err, sasl.ErrServerVerification)
		assert.Contains(t, se.Message, "session dropped")
		assert.Equal(t, smtp.StateClosed, c.State())
		sec.client(c)
		c.Close()
		<-srv.HungUp()
		require.NoError(t, srv.Err())
	})
	// e= in the server-final message is the server refusing the
	// credentials: an auth failure, and the session stays usable.
	t.Run("server error", func(t *testing.T) {
		sec := newAuthSecrets(t)
		sec.password("user", "Pass-word-3")
		srv, c := authScript(t, sec, fs.Func(scramServerFirst), fs.ReadLine(),
			fs.Reply("334 "+base64.StdEncoding.EncodeToString([]byte("e=invalid-proof"))+"\r\n"),
			fs.ExpectLine("*"), fs.Reply("501 5.7.0 cancelled\r\n"),
			fs.ExpectLine("NOOP"), fs.Reply("250 2.0.0 ok\r\n"))
		ctx := testCtx(t)
		err := sec.err(c.LoginWith(ctx, smtp.MechSCRAMSHA256, "user", "Pass-word-3"))
		se := authRequire(t, err, smtp.KindAuth)
		var scramErr *sasl.SCRAMError
		require.ErrorAs(t, err, &scramErr)
		assert.Equal(t, "invalid-proof", scramErr.Value)
		assert.Equal(t, 501, se.Code)
		assert.True(t, smtp.IsConfig(err))
		require.NoError(t, sec.err(c.Noop(ctx)))
		c.Close()
		<-srv.HungUp()
		require.NoError(t, srv.Err())
	})
}

// A challenge that is not base64 is cancelled with "*" (RFC 4954 §4);
// the server's 501 ends the exchange and the session stays usable.
func TestAuthScriptBadChallenge(t *testing.T) {
	sec := newAuthSecrets(t)
	sec.password("user", "Pass-word-4")
	srv, c := authScript(t, sec,
		fs.ReadLine(), fs.Reply("334 this is not base64!\r\n"),
		fs.ExpectLine("*"), fs.Reply("501 5.7.0 cancelled\r\n"),
		fs.ExpectLine("NOOP"), fs.Reply("250 2.0.0 ok\r\n"))
	ctx := testCtx(t)
	err := sec.err(c.LoginWith(ctx, smtp.MechPLAIN, "user", "Pass-word-4"))
	se := authRequire(t, err, smtp.KindProtocol)
	assert.Contains(t, se.Message, "not base64")
	assert.Equal(t, 501, se.Code)
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, sec.err(c.Noop(ctx)))
	c.Close()
	<-srv.HungUp()
	require.NoError(t, srv.Err())
}

// A server that hangs up instead of answering the "*": the error says
// why the exchange was cancelled and that the session then broke.
func TestAuthScriptCancelThenHangUp(t *testing.T) {
	sec := newAuthSecrets(t)
	sec.password("user", "Pass-word-7")
	srv, c := authScript(t, sec, fs.ReadLine(), fs.Reply("334 not base64!\r\n"), fs.ExpectLine("*"), fs.Close())
	err := sec.err(c.LoginWith(testCtx(t), smtp.MechPLAIN, "user", "Pass-word-7"))
	se := authRequire(t, err, smtp.KindProtocol)
	assert.Contains(t, se.Message, "not base64")
	var cause *smtp.Error
	require.ErrorAs(t, se.Err, &cause, "the transport error is wrapped")
	assert.Equal(t, smtp.KindIO, cause.Kind)
	assert.Equal(t, smtp.StateClosed, c.State())
	sec.client(c)
	<-srv.HungUp()
	require.NoError(t, srv.Err())
}

package testpeers

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tlsFor returns a client config that verifies c for host.
func tlsFor(c *Cert, host string) *tls.Config {
	conf := c.ClientConfig()
	conf.ServerName = host
	return conf
}

// rawClient is a hand-driven SMTP client for exchanges net/smtp cannot do.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	tp *textproto.Conn
}

func dialRaw(t testing.TB, addr string, tlsConf *tls.Config) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if tlsConf != nil {
		c = tls.Client(c, tlsConf)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := &rawClient{t: t, c: c, tp: textproto.NewConn(c)}
	t.Cleanup(func() { _ = r.c.Close() })
	r.reply(220)
	return r
}

// cmd sends line and returns the reply.
func (r *rawClient) cmd(line string) (int, string) {
	r.t.Helper()
	if err := r.tp.PrintfLine("%s", line); err != nil {
		r.t.Fatalf("send %q: %v", line, err)
	}
	return r.read(line)
}

// read reads a reply (to what), sending nothing.
func (r *rawClient) read(what string) (int, string) {
	r.t.Helper()
	code, msg, err := r.tp.ReadResponse(0)
	if err != nil && code == 0 {
		r.t.Fatalf("reply to %q: %v", what, err)
	}
	return code, msg
}

// reply reads a reply and fails unless it has code want.
func (r *rawClient) reply(want int) string {
	r.t.Helper()
	code, msg := r.read("")
	if code != want {
		r.t.Fatalf("got %d %s, want %d", code, msg, want)
	}
	return msg
}

// expect sends line and fails unless the reply has code want.
func (r *rawClient) expect(line string, want int) string {
	r.t.Helper()
	code, msg := r.cmd(line)
	if code != want {
		r.t.Fatalf("%q: got %d %s, want %d", line, code, msg, want)
	}
	return msg
}

// startTLS upgrades the connection.
func (r *rawClient) startTLS(conf *tls.Config) {
	r.t.Helper()
	r.expect("STARTTLS", 220)
	tc := tls.Client(r.c, conf)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.c = tc
	r.tp = textproto.NewConn(tc)
}

// writeRaw writes bytes as they are.
func (r *rawClient) writeRaw(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// sendMail runs a whole net/smtp transaction on c.
func sendMail(t testing.TB, c *smtp.Client, from string, to []string, msg string) {
	t.Helper()
	if err := c.Mail(from); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatalf("DATA write: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
}

func dialSMTP(t testing.TB, addr string, tlsConf *tls.Config) *smtp.Client {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tlsConf)
	} else {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	host, _, _ := net.SplitHostPort(addr)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		_ = conn.Close()
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

const testMsg = "From: a@example.com\r\nTo: b@example.org\r\nSubject: testpeers\r\n\r\nline one\r\n.leading dot\r\n"

func TestCert(t *testing.T) {
	c := NewCert(t)
	block, err := x509.ParseCertificate(c.Server.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := block.Verify(x509.VerifyOptions{DNSName: host, Roots: c.Pool}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	for _, f := range []string{c.CertFile, c.KeyFile} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", f, st.Mode().Perm())
		}
		if dir, ok := blockedAncestor(filepath.Dir(f)); !ok {
			t.Errorf("%s: %s is not searchable by others", f, dir)
		}
	}
	// A second caller gets its own files with the same key.
	c2 := NewCert(t)
	if c2.CertFile == c.CertFile || !bytes.Equal(c2.CertPEM, c.CertPEM) {
		t.Errorf("second NewCert: files %s vs %s, same PEM %v", c2.CertFile, c.CertFile, bytes.Equal(c2.CertPEM, c.CertPEM))
	}
}

func TestGoSMTPModes(t *testing.T) {
	for _, mode := range []TLSMode{Plain, StartTLS, ImplicitTLS} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			s := GoSMTP(t, GoSMTPOptions{
				Mode:              mode,
				Auth:              map[string]string{"alice": "secret"},
				AllowInsecureAuth: mode == Plain,
				AuthRequired:      true,
				EnableSMTPUTF8:    true,
			})
			var conf *tls.Config
			if mode == ImplicitTLS {
				conf = tlsFor(s.Cert(), "127.0.0.1")
			}
			c := dialSMTP(t, s.Addr(), conf)
			if mode == StartTLS {
				if ok, _ := c.Extension("STARTTLS"); !ok {
					t.Fatal("no STARTTLS advertised")
				}
				if err := c.StartTLS(tlsFor(s.Cert(), "127.0.0.1")); err != nil {
					t.Fatal(err)
				}
			}
			for _, ext := range []string{"PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE", "SMTPUTF8"} {
				if ok, _ := c.Extension(ext); !ok {
					t.Errorf("%s not advertised", ext)
				}
			}
			if err := c.Mail("a@example.com"); err == nil || !strings.Contains(err.Error(), "502") {
				t.Fatalf("MAIL before AUTH with AuthRequired: %v, want 502", err)
			}
			if err := c.Auth(smtp.PlainAuth("", "alice", "secret", "127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			sendMail(t, c, "a@example.com", []string{"b@example.org", "c@example.net"}, testMsg)
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			if !s.WaitCount(1, 5*time.Second) {
				t.Fatal("message not counted")
			}
			msgs := s.Messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages", len(msgs))
			}
			m := msgs[0]
			want := testMsg // net/smtp stuffs ".leading", go-smtp unstuffs it
			if string(m.Data) != want {
				t.Errorf("data %q, want %q", m.Data, want)
			}
			if m.From != "a@example.com" || strings.Join(m.To, ",") != "b@example.org,c@example.net" || m.User != "alice" {
				t.Errorf("envelope %q -> %q as %q", m.From, m.To, m.User)
			}
			if m.TLS != (mode != Plain) || m.Hostname != "client.test" || m.Size != int64(len(want)) {
				t.Errorf("TLS %v hostname %q size %d", m.TLS, m.Hostname, m.Size)
			}
			if m.Opts.Body != gosmtp.Body8BitMIME {
				t.Errorf("BODY = %q, want 8BITMIME (net/smtp sends it)", m.Opts.Body)
			}
			if !strings.HasPrefix(m.QueueID, "GS") {
				t.Errorf("queue id %q", m.QueueID)
			}
		})
	}
}

func TestGoSMTPRawExchange(t *testing.T) {
	s := GoSMTP(t, GoSMTPOptions{
		EnableDSN:       true,
		EnableSMTPUTF8:  true,
		MaxMessageBytes: 1000,
		RejectRcpt: func(to string) error {
			if to == "nobody@example.org" {
				return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
			}
			return nil
		},
	})
	r := dialRaw(t, s.Addr(), nil)
	ehlo := r.expect("EHLO client.test", 250)
	for _, ext := range []string{"DSN", "SIZE 1000", "SMTPUTF8", "CHUNKING"} {
		if !strings.Contains(ehlo, ext) {
			t.Errorf("EHLO lacks %s:\n%s", ext, ehlo)
		}
	}
	r.expect("MAIL FROM:<a@example.com> SIZE=50 RET=HDRS ENVID=e1 SMTPUTF8", 250)
	if code, msg := r.cmd("RCPT TO:<nobody@example.org>"); code != 550 || !strings.Contains(msg, "5.1.1") {
		t.Errorf("RCPT nobody: %d %s", code, msg)
	}
	r.expect("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE", 250)
	r.expect("DATA", 354)
	r.writeRaw([]byte("Subject: x\r\n\r\n..dot\r\n.\r\n"))
	msg := r.reply(250)
	if !strings.HasPrefix(msg, "2.0.0 OK: queued as GS") {
		t.Errorf("end-of-data reply %q", msg)
	}

	// BDAT in two chunks.
	r.expect("MAIL FROM:<a@example.com>", 250)
	r.expect("RCPT TO:<b@example.org>", 250)
	r.writeRaw([]byte("BDAT 5\r\nHello"))
	r.reply(250)
	r.writeRaw([]byte("BDAT 7 LAST\r\n world\n"))
	if msg := r.reply(250); !strings.Contains(msg, "queued as") {
		t.Errorf("BDAT LAST reply %q", msg)
	}
	// Too big for SIZE.
	if code, _ := r.cmd("MAIL FROM:<a@example.com> SIZE=5000"); code != 552 {
		t.Errorf("SIZE=5000: %d, want 552", code)
	}
	r.expect("QUIT", 221)

	msgs := s.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if string(m.Data) != "Subject: x\r\n\r\n.dot\r\n" {
		t.Errorf("unstuffed data %q", m.Data)
	}
	if m.Opts.Size != 50 || m.Opts.Return != gosmtp.DSNReturnHeaders || m.Opts.EnvelopeID != "e1" || !m.Opts.UTF8 {
		t.Errorf("MAIL options %+v", m.Opts)
	}
	if len(m.To) != 1 || len(m.RcptOpts) != 1 || len(m.RcptOpts[0].Notify) != 2 {
		t.Errorf("RCPT %q %+v", m.To, m.RcptOpts)
	}
	if got := string(msgs[1].Data); got != "Hello world\n" {
		t.Errorf("BDAT data %q", got)
	}
	if msgs[0].QueueID == msgs[1].QueueID {
		t.Errorf("same queue id %s", msgs[0].QueueID)
	}
}

func TestGoSMTPOAuth(t *testing.T) {
	s := GoSMTP(t, GoSMTPOptions{
		Mode:   StartTLS,
		Tokens: map[string]string{"bob@example.com": "good-token"},
	})
	conf := tlsFor(s.Cert(), "localhost")
	login := func(t *testing.T) *rawClient {
		r := dialRaw(t, s.Addr(), nil)
		if ehlo := r.expect("EHLO client.test", 250); strings.Contains(ehlo, "AUTH") {
			t.Errorf("AUTH offered before TLS:\n%s", ehlo)
		}
		r.startTLS(conf)
		if ehlo := r.expect("EHLO client.test", 250); !strings.Contains(ehlo, "AUTH XOAUTH2 OAUTHBEARER") {
			t.Errorf("EHLO after TLS:\n%s", ehlo)
		}
		return r
	}
	xoauth := func(user, token string) string {
		return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
	}
	oauthbearer := func(user, token string) string {
		return b64("n,a=" + user + ",\x01host=localhost\x01port=25\x01auth=Bearer " + token + "\x01\x01")
	}

	t.Run("xoauth2-ok", func(t *testing.T) {
		r := login(t)
		r.expect("AUTH XOAUTH2 "+xoauth("bob@example.com", "good-token"), 235)
		r.expect("MAIL FROM:<bob@example.com>", 250)
	})
	t.Run("xoauth2-no-initial-response", func(t *testing.T) {
		r := login(t)
		if msg := r.expect("AUTH XOAUTH2", 334); msg != "" {
			t.Errorf("challenge %q, want empty", msg)
		}
		r.expect(xoauth("bob@example.com", "good-token"), 235)
	})
	t.Run("xoauth2-bad-token", func(t *testing.T) {
		r := login(t)
		msg := r.expect("AUTH XOAUTH2 "+xoauth("bob@example.com", "stale"), 334)
		js, err := base64.StdEncoding.DecodeString(msg)
		if err != nil || string(js) != OAuthError {
			t.Errorf("challenge %q (%v), want %s", js, err, OAuthError)
		}
		if msg := r.expect("", 535); !strings.HasPrefix(msg, "5.7.8") {
			t.Errorf("final reply %q", msg)
		}
		// The session goes on, unauthenticated.
		r.expect("AUTH XOAUTH2 "+xoauth("bob@example.com", "good-token"), 235)
	})
	t.Run("oauthbearer-ok", func(t *testing.T) {
		r := login(t)
		r.expect("AUTH OAUTHBEARER "+oauthbearer("bob@example.com", "good-token"), 235)
	})
	t.Run("oauthbearer-bad-token", func(t *testing.T) {
		r := login(t)
		msg := r.expect("AUTH OAUTHBEARER "+oauthbearer("eve@example.com", "good-token"), 334)
		if js, _ := base64.StdEncoding.DecodeString(msg); string(js) != OAuthError {
			t.Errorf("challenge %q", js)
		}
		if msg := r.expect(b64("\x01"), 535); !strings.HasPrefix(msg, "5.7.8") {
			t.Errorf("final reply %q", msg)
		}
	})
	t.Run("xoauth2-garbage", func(t *testing.T) {
		r := login(t)
		if code, _ := r.cmd("AUTH XOAUTH2 " + b64("nonsense")); code != 501 {
			t.Errorf("garbage: %d, want 501", code)
		}
	})
}

func TestGoSMTPSessionsAndDiscard(t *testing.T) {
	s := GoSMTP(t, GoSMTPOptions{DiscardBodies: true, Mode: ImplicitTLS})
	conf := tlsFor(s.Cert(), "127.0.0.1")
	var clients []*smtp.Client
	for range 3 {
		clients = append(clients, dialSMTP(t, s.Addr(), conf))
	}
	if got := s.Sessions(); got != 3 {
		t.Errorf("Sessions = %d, want 3", got)
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for range 5 {
				sendMail(t, c, "a@example.com", []string{"b@example.org"}, testMsg)
			}
			_ = c.Quit()
		})
	}
	wg.Wait()
	if !s.WaitCount(15, 5*time.Second) {
		t.Fatalf("Count = %d, want 15", s.Count())
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("DiscardBodies kept %d messages", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Sessions() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.Sessions() != 0 || s.MaxSessions() != 3 || s.Connections() != 3 {
		t.Errorf("Sessions %d MaxSessions %d Connections %d, want 0 3 3", s.Sessions(), s.MaxSessions(), s.Connections())
	}
	// Close with a connection still open: it must be cut, not waited for.
	_ = dialRaw(t, s.Addr(), conf)
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on an open connection")
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("still accepting after Close")
	}
}

func TestGoSMTPIPv6(t *testing.T) {
	s := GoSMTP(t, GoSMTPOptions{IPv6: true, Mode: StartTLS})
	c := dialSMTP(t, s.Addr(), nil)
	if err := c.StartTLS(tlsFor(s.Cert(), "::1")); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"b@example.org"}, testMsg)
	if s.Count() != 1 || s.Host() != "::1" {
		t.Errorf("count %d host %s", s.Count(), s.Host())
	}
}

func TestUnavailable(t *testing.T) {
	for _, required := range []string{"", "1"} {
		t.Setenv(EnvRequirePeers, required)
		ft := &fakeTB{TB: t}
		if p := Require(ft, "no-such-peer-program-xyz"); p != "" {
			t.Fatalf("Require found %q", p)
		}
		if required == "1" && (ft.fatal == "" || ft.skip != "") {
			t.Errorf("required: fatal %q skip %q", ft.fatal, ft.skip)
		}
		if required == "" && (ft.skip == "" || ft.fatal != "") {
			t.Errorf("optional: fatal %q skip %q", ft.fatal, ft.skip)
		}
	}
	t.Setenv(EnvMailpit, "/nonexistent/mailpit")
	ft := &fakeTB{TB: t}
	Require(ft, ProgMailpit)
	if !strings.Contains(ft.skip+ft.fatal, "go install github.com/axllent/mailpit@"+MailpitVersion) {
		t.Errorf("no install hint in %q", ft.skip+ft.fatal)
	}
}

// fakeTB records Skipf and Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	skip, fatal string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Skipf(format string, a ...any)  { f.skip = fmt.Sprintf(format, a...) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.fatal = fmt.Sprintf(format, a...) }

func TestPostfix(t *testing.T) {
	t.Parallel()
	p := Postfix(t, PostfixOptions{})
	conf := tlsFor(p.Cert(), "127.0.0.1")

	// STARTTLS port: no AUTH before TLS, relay needs AUTH.
	c := dialSMTP(t, p.StartTLSAddr(), nil)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH offered before STARTTLS")
	}
	for _, ext := range []string{"PIPELINING", "SIZE", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("%s not advertised", ext)
		}
	}
	if err := c.StartTLS(conf); err != nil {
		t.Fatal(err)
	}
	ok, mechs := c.Extension("AUTH")
	if !ok || mechs != strings.Join(PostfixMechanisms, " ") {
		t.Errorf("AUTH after TLS: %v %q", ok, mechs)
	}
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.org"); err == nil || !strings.Contains(err.Error(), "554") {
		t.Errorf("relay without AUTH: %v, want 554", err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"postmaster@localhost"}, testMsg)
	if err := c.Auth(smtp.PlainAuth("", PostfixUser, PostfixPass, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"b@example.org"}, testMsg)
	_ = c.Quit()

	// Implicit TLS port, AUTH PLAIN, and Postfix's queue-id reply.
	r := dialRaw(t, p.ImplicitTLSAddr(), conf)
	if ehlo := r.expect("EHLO client.test", 250); !strings.Contains(ehlo, "AUTH PLAIN") {
		t.Errorf("implicit TLS EHLO:\n%s", ehlo)
	}
	r.expect("AUTH PLAIN "+b64("\x00"+PostfixUser+"\x00"+PostfixPass), 235)
	r.expect("MAIL FROM:<a@example.com>", 250)
	r.expect("RCPT TO:<b@example.org>", 250)
	r.expect("DATA", 354)
	r.writeRaw([]byte(testMsg + ".\r\n"))
	if msg := r.reply(250); !strings.HasPrefix(msg, "2.0.0 Ok: queued as ") {
		t.Errorf("end-of-data reply %q", msg)
	}
	r.expect("QUIT", 221)

	// Plaintext AUTH port (net/smtp allows PLAIN in clear to 127.0.0.1).
	// (net/smtp quits after a failed AUTH.)
	if err := dialSMTP(t, p.PlainAuthAddr(), nil).Auth(smtp.PlainAuth("", PostfixUser, "wrong", "127.0.0.1")); err == nil {
		t.Error("wrong password accepted")
	}
	c = dialSMTP(t, p.PlainAuthAddr(), nil)
	if err := c.Auth(smtp.PlainAuth("", PostfixUser, PostfixPass, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()

	if _, err := p.Delivered(); err == nil {
		t.Error("Delivered works without Deliver")
	}
	checkPostfixStops(t, p)
}

func TestPostfixDeliver(t *testing.T) {
	t.Parallel()
	p := Postfix(t, PostfixOptions{Deliver: true, ForbidBareNewline: true, MessageSizeLimit: 100000})
	c := dialSMTP(t, p.StartTLSAddr(), nil)
	if ok, size := c.Extension("SIZE"); !ok || size != "100000" {
		t.Errorf("SIZE %q", size)
	}
	if err := c.StartTLS(tlsFor(p.Cert(), "localhost")); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", PostfixUser, PostfixPass, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"b@example.org", "c@localhost"}, testMsg)
	_ = c.Quit()
	msgs, err := p.WaitDelivered(2, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lf := strings.ReplaceAll(testMsg, "\r\n", "\n")
	for _, m := range msgs {
		if !bytes.HasSuffix(m, []byte(lf)) || !bytes.HasPrefix(m, []byte("Return-Path: <a@example.com>\n")) {
			t.Errorf("delivered:\n%s", m)
		}
	}

	// A bare LF is refused.
	r := dialRaw(t, p.StartTLSAddr(), nil)
	r.expect("EHLO client.test", 250)
	r.expect("MAIL FROM:<a@example.com>", 250)
	r.expect("RCPT TO:<x@localhost>", 250)
	r.expect("DATA", 354)
	r.writeRaw([]byte("Subject: bare\r\n\r\nbare\nLF\r\n.\r\n"))
	if code, msg := r.read("end of data"); code != 550 || !strings.HasPrefix(msg, "5.5.2") {
		t.Errorf("bare LF: %d %s, want 550 5.5.2", code, msg)
	}
	checkPostfixStops(t, p)
}

// checkPostfixStops stops p and checks that nothing of it is left.
func checkPostfixStops(t *testing.T, p *PostfixServer) {
	t.Helper()
	master := p.masterPID()
	if master == 0 {
		t.Fatal("no master running")
	}
	start := time.Now()
	if err := p.Stop(); err != nil {
		t.Error(err)
	}
	t.Logf("Postfix stopped in %v", time.Since(start))
	if pids := instancePIDs(p.ConfigDir()); len(pids) > 0 {
		t.Errorf("processes %v left", pids)
	}
	if pidAlive(master) {
		t.Errorf("master %d still alive", master)
	}
	if p.watchdog.ProcessState == nil {
		t.Error("watchdog not reaped")
	}
}

func TestSMTPSink(t *testing.T) {
	t.Parallel()
	s := SMTPSink(t, "-c")
	c := dialSMTP(t, s.Addr(), nil)
	sendMail(t, c, "a@example.com", []string{"b@example.org"}, testMsg)
	_ = c.Quit()

	q := SMTPSink(t, "-Q", "RCPT")
	c = dialSMTP(t, q.Addr(), nil)
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.org"); err == nil || !strings.Contains(err.Error(), "421") {
		t.Errorf("RCPT with -Q RCPT: %v, want 421", err)
	}
	if err := s.Stop(); err != nil {
		t.Error(err)
	}
	if exited, _ := s.Exited(); !exited {
		t.Error("smtp-sink not reaped")
	}
	if p := SMTPSourcePath(t); !filepath.IsAbs(p) {
		t.Errorf("smtp-source path %q", p)
	}
}

func TestMailpit(t *testing.T) {
	t.Parallel()
	m := Mailpit(t, MailpitOptions{Mode: StartTLS, Auth: map[string]string{"mp": "mppass"}})
	c := dialSMTP(t, m.SMTPAddr(), nil)
	if err := c.StartTLS(tlsFor(m.Cert(), "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", "mp", "mppass", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"b@example.org", "hidden@example.net"}, testMsg)
	_ = c.Quit()
	bad := dialSMTP(t, m.SMTPAddr(), nil)
	if err := bad.StartTLS(tlsFor(m.Cert(), "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := bad.Auth(smtp.PlainAuth("", "mp", "bad", "127.0.0.1")); err == nil {
		t.Error("wrong password accepted")
	}
	msgs, err := m.WaitMessages(1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := msgs[0]
	if got.From != "a@example.com" || strings.Join(got.To, ",") != "b@example.org" || got.Subject != "testpeers" || got.Username != "mp" {
		t.Errorf("summary %+v", got)
	}
	if strings.Join(got.Bcc, ",") != "hidden@example.net" {
		t.Errorf("Bcc %q", got.Bcc)
	}
	raw, err := m.Raw(got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(raw, []byte(testMsg)) {
		t.Errorf("raw:\n%q", raw)
	}
	if err := m.DeleteAll(); err != nil {
		t.Fatal(err)
	}
	if msgs, err := m.Messages(); err != nil || len(msgs) != 0 {
		t.Errorf("after DeleteAll: %d, %v", len(msgs), err)
	}
}

func TestMailpitImplicitTLSChaos(t *testing.T) {
	t.Parallel()
	m := Mailpit(t, MailpitOptions{Mode: ImplicitTLS, AcceptAnyAuth: true, EnableChaos: true})
	conf := tlsFor(m.Cert(), "localhost")
	c := dialSMTP(t, m.SMTPAddr(), conf)
	if err := c.Auth(smtp.PlainAuth("", "anyone", "anything", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	sendMail(t, c, "a@example.com", []string{"b@example.org"}, testMsg)
	if _, err := m.WaitMessages(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetChaos(`{"Recipient":{"ErrorCode":451,"Probability":100}}`); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.org"); err == nil || !strings.Contains(err.Error(), "451") {
		t.Errorf("RCPT under chaos: %v, want 451", err)
	}
	_ = c.Quit()
	if err := m.Stop(); err != nil {
		t.Error(err)
	}
}

const watchdogChildEnv = "TESTPEERS_WATCHDOG_CHILD"

// TestWatchdogChild is run by TestPostfixWatchdog in a child process, which
// is then killed before it can clean up.
func TestWatchdogChild(t *testing.T) {
	if os.Getenv(watchdogChildEnv) != "1" {
		t.Skip("helper process for TestPostfixWatchdog")
	}
	p := Postfix(t, PostfixOptions{})
	fmt.Printf("\nCONFDIR=%s\n", p.ConfigDir())
	time.Sleep(2 * time.Minute)
}

func TestPostfixWatchdog(t *testing.T) {
	t.Parallel()
	Require(t, ProgPostfix)
	if os.Getuid() != 0 {
		Unavailable(t, "Postfix needs root")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchdogChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), watchdogChildEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var confDir string
	var seen strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		if d, ok := strings.CutPrefix(sc.Text(), "CONFDIR="); ok {
			confDir = d
			break
		}
	}
	if confDir == "" {
		t.Fatalf("child did not start Postfix:\n%s", seen.String())
	}
	if pids := instancePIDs(confDir); len(pids) == 0 {
		t.Fatal("no instance processes while the child runs")
	}
	// Die without cleanups, as on a test timeout or a crash.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	base := filepath.Dir(confDir)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := instancePIDs(confDir)
		_, statErr := os.Stat(base)
		if len(pids) == 0 && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the test process died: processes %v, directory %v", pids, statErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestGoSMTPHooks(t *testing.T) {
	entered := make(chan struct{}, 1)
	var slow atomic.Bool
	s := GoSMTP(t, GoSMTPOptions{
		RejectSession: func(hostname string) error {
			if hostname == "bad.test" {
				return &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "go away"}
			}
			return nil
		},
		RejectData: func(m *Message) error {
			if bytes.Contains(m.Data, []byte("spam")) {
				return &gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 7, 1}, Message: "spam"}
			}
			return nil
		},
		Delay: func(stage string) time.Duration {
			if stage == "DATA" && slow.Load() {
				entered <- struct{}{}
				return time.Hour
			}
			return 0
		},
	})
	r := dialRaw(t, s.Addr(), nil)
	if code, _ := r.cmd("EHLO bad.test"); code != 421 {
		t.Errorf("RejectSession: %d, want 421", code)
	}
	r.expect("EHLO good.test", 250)
	r.expect("MAIL FROM:<a@example.com>", 250)
	r.expect("RCPT TO:<b@example.org>", 250)
	r.expect("DATA", 354)
	r.writeRaw([]byte("Subject: spam\r\n\r\nx\r\n.\r\n"))
	if code, msg := r.read("spam"); code != 554 || !strings.HasPrefix(msg, "5.7.1") {
		t.Errorf("RejectData: %d %s", code, msg)
	}
	if s.Count() != 0 {
		t.Errorf("rejected message counted")
	}
	slow.Store(true)
	r.expect("MAIL FROM:<a@example.com>", 250)
	r.expect("RCPT TO:<b@example.org>", 250)
	r.expect("DATA", 354)
	r.writeRaw([]byte("Subject: slow\r\n\r\nx\r\n.\r\n"))
	<-entered
	// Close interrupts the hour-long delay and the open session.
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
}

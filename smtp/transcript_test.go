package smtp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
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
)

// Transcript tests: a faultserver script plays the server, and each test
// checks the exact bytes the client sent (Server.Received), including
// that nothing was sent where nothing may be. Helpers are prefixed "tr"
// to keep clear of the other test files of this package.

const (
	trGreeting = "220 mx.example ESMTP ready\r\n"
	trEHLO     = "EHLO client.example\r\n"
	trMail     = "MAIL FROM:<a@example.com>\r\n"
	trRcpt     = "RCPT TO:<b@example.com>\r\n"
)

// trEnv is the plain envelope most tests send.
var trEnv = smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}

// trCaps builds the 250 reply to EHLO advertising caps.
func trCaps(caps ...string) string {
	lines := append([]string{"mx.example greets client.example"}, caps...)
	for i := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		lines[i] = "250" + sep + lines[i]
	}
	return fs.Lines(lines...)
}

// trHello is the start of a script: greeting, EHLO, capabilities.
func trHello(caps ...string) []fs.Step {
	return []fs.Step{fs.Reply(trGreeting), fs.ExpectLine("EHLO client.example"), fs.Reply(trCaps(caps...))}
}

// trQuit is the end of a script: QUIT and its 221.
var trQuit = []fs.Step{fs.ExpectLine("QUIT"), fs.Reply("221 2.0.0 bye\r\n")}

// trSteps flattens Steps and []Steps into one script.
func trSteps(parts ...any) []fs.Step {
	var out []fs.Step
	for _, p := range parts {
		switch p := p.(type) {
		case fs.Step:
			out = append(out, p)
		case []fs.Step:
			out = append(out, p...)
		default:
			panic("trSteps: not a step")
		}
	}
	return out
}

// trCtx bounds a test; a broken test fails instead of hanging.
func trCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// trConn is a transport that records each Write call, so a test can
// assert what left in one write (one segment's worth for pipelining).
type trConn struct {
	transport.Transport
	mu     sync.Mutex // guards writes
	writes []string
}

func (c *trConn) Write(p []byte) (int, error) {
	n, err := c.Transport.Write(p)
	c.mu.Lock()
	c.writes = append(c.writes, string(p[:n]))
	c.mu.Unlock()
	return n, err
}

// Writes returns the writes so far, in order.
func (c *trConn) Writes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.writes...)
}

// trAudit collects audit events.
type trAudit struct {
	mu     sync.Mutex // guards events
	events []smtp.Event
}

func (a *trAudit) hook(e smtp.Event) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
}

func (a *trAudit) Events() []smtp.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]smtp.Event(nil), a.events...)
}

func (a *trAudit) Types() []smtp.EventType {
	var out []smtp.EventType
	for _, e := range a.Events() {
		out = append(out, e.Type)
	}
	return out
}

// trDial starts a server running script and dials it in plaintext, the
// connection wrapped in a trConn.
func trDial(t *testing.T, script []fs.Step) (*fs.Server, *trConn) {
	t.Helper()
	srv := fs.Start(t, script...)
	tr, err := transport.Dial(trCtx(t), srv.Addr())
	require.NoError(t, err)
	return srv, &trConn{Transport: tr}
}

// trConnect starts a server running script and connects a plaintext
// client to it (Options.InsecureAllowPlaintext is set on a copy of
// opts). The client is closed when the test ends.
func trConnect(t *testing.T, opts *smtp.Options, script ...fs.Step) (*fs.Server, *smtp.Client, *trConn) {
	t.Helper()
	srv, conn := trDial(t, script)
	var o smtp.Options
	if opts != nil {
		o = *opts
	}
	o.InsecureAllowPlaintext = true
	c, err := smtp.Connect(trCtx(t), conn, withName(&o, "client.example", nil))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return srv, c, conn
}

// trWait waits for ch or fails the test.
func trWait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// trEnd closes the client (if any), waits until the server has seen the
// connection close, requires that its script ran without error, and
// returns everything the client sent.
func trEnd(t *testing.T, srv *fs.Server, c *smtp.Client) string {
	t.Helper()
	if c != nil {
		c.Close()
	}
	trWait(t, srv.HungUp(), "the server to see the connection close")
	require.NoError(t, srv.Err())
	return string(srv.Received())
}

// trErr requires err to be an *smtp.Error of the given op and kind.
func trErr(t *testing.T, err error, op smtp.Op, kind smtp.Kind) *smtp.Error {
	t.Helper()
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, op, se.Op, "Op of %v", err)
	assert.Equal(t, kind, se.Kind, "Kind of %v", err)
	assert.True(t, strings.HasPrefix(err.Error(), "smtp: "), err.Error())
	return se
}

// --- 1. Replies ---------------------------------------------------------

func TestTranscriptGreetingReplies(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	lines := func(n int) string {
		var b strings.Builder
		for i := 0; i < n-1; i++ {
			b.WriteString("220-line\r\n")
		}
		b.WriteString("220 last\r\n")
		return b.String()
	}
	tests := []struct {
		name     string
		greeting string
		hangUp   bool // the server closes after the greeting
		lines    []string
		kind     smtp.Kind // 0: Connect succeeds
		cause    error
	}{
		{name: "single", greeting: "220 mx ready\r\n", lines: []string{"mx ready"}},
		{name: "bare code", greeting: "220\r\n", lines: []string{""}},
		{name: "multi-line", greeting: "220-mx.example\r\n220-second\r\n220 third\r\n", lines: []string{"mx.example", "second", "third"}},
		{name: "LF endings", greeting: "220-a\n220 b\n", lines: []string{"a", "b"}},
		{name: "line of 998", greeting: "220 " + long(994) + "\r\n", lines: []string{long(994)}},
		{name: "128 lines", greeting: lines(128)},
		{name: "line of 999", greeting: "220 " + long(995) + "\r\n", kind: smtp.KindProtocol},
		{name: "129 lines", greeting: lines(129), kind: smtp.KindProtocol},
		{name: "mixed codes", greeting: "220-a\r\n250 b\r\n", kind: smtp.KindProtocol},
		{name: "non-digit code", greeting: "2x0 ready\r\n", kind: smtp.KindProtocol},
		{name: "bad separator", greeting: "220/ready\r\n", kind: smtp.KindProtocol},
		{name: "short line", greeting: "22\r\n", kind: smtp.KindProtocol},
		{name: "code out of range", greeting: "120 wait\r\n", kind: smtp.KindProtocol},
		{name: "EOF mid-reply", greeting: "220-first\r\n", hangUp: true, kind: smtp.KindIO, cause: io.ErrUnexpectedEOF},
		{name: "EOF mid-line", greeting: "220 fir", hangUp: true, kind: smtp.KindIO, cause: io.ErrUnexpectedEOF},
		{name: "EOF before greeting", greeting: "", hangUp: true, kind: smtp.KindIO, cause: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := []fs.Step{fs.Reply(tt.greeting)}
			if tt.hangUp {
				script = append(script, fs.Close())
			} else if tt.kind == 0 {
				script = trSteps(script, fs.ExpectLine("EHLO client.example"), fs.Reply(trCaps()), trQuit)
			}
			srv, conn := trDial(t, script)
			c, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
			if tt.kind != 0 {
				se := trErr(t, err, smtp.OpGreeting, tt.kind)
				if tt.cause != nil {
					assert.ErrorIs(t, err, tt.cause)
				}
				assert.Nil(t, c)
				assert.Empty(t, trEnd(t, srv, nil), "nothing may be sent after a bad greeting")
				assert.Zero(t, se.Code)
				return
			}
			require.NoError(t, err)
			g := c.Greeting()
			assert.Equal(t, 220, g.Code)
			if tt.lines != nil {
				assert.Equal(t, tt.lines, g.Lines)
			}
			require.NoError(t, c.Quit(trCtx(t)))
			assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c))
		})
	}
}

// A 10 MB reply line is refused as a protocol error after a bounded read,
// without waiting for the rest.
func TestTranscriptHugeReplyLine(t *testing.T) {
	// Written in pieces by a Func step, so a failed step's description
	// does not carry 10 MB into the test log.
	written := 0
	srv, conn := trDial(t, []fs.Step{fs.Func(func(c net.Conn) error {
		piece := []byte(strings.Repeat("x", 64<<10))
		if _, err := io.WriteString(c, "220 "); err != nil {
			return nil
		}
		for written < 10<<20 {
			n, err := c.Write(piece)
			written += n
			if err != nil {
				return nil // the client hung up, as it should
			}
		}
		_, _ = io.WriteString(c, "\r\n")
		return nil
	})})
	_, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	trErr(t, err, smtp.OpGreeting, smtp.KindProtocol)
	assert.Empty(t, trEnd(t, srv, nil))
}

// Replies after EHLO: enhanced status codes are parsed only when the
// server advertised ENHANCEDSTATUSCODES; multi-line replies are joined.
func TestTranscriptEnhancedStatusCodes(t *testing.T) {
	for _, esc := range []bool{true, false} {
		t.Run(map[bool]string{true: "advertised", false: "not advertised"}[esc], func(t *testing.T) {
			var caps []string
			if esc {
				caps = append(caps, "ENHANCEDSTATUSCODES")
			}
			srv, c, _ := trConnect(t, nil, trSteps(trHello(caps...),
				fs.ExpectLine("NOOP"), fs.Reply("250-2.0.0 first\r\n250 2.0.0 second\r\n"),
				fs.ExpectLine("NOOP"), fs.Reply("550-5.7.1 go\r\n550 5.7.1 away\r\n"),
				fs.ExpectLine("RSET"), fs.Reply("451 4.3.0 try later\r\n"),
				trQuit)...)
			ctx := trCtx(t)
			require.NoError(t, c.Noop(ctx))
			err := c.Noop(ctx)
			se := trErr(t, err, smtp.OpNOOP, smtp.KindRejected)
			assert.Equal(t, 550, se.Code)
			assert.True(t, smtp.IsPermanent(err))
			if esc {
				assert.Equal(t, "5.7.1", se.Enhanced)
				assert.Equal(t, "go away", se.Message)
				assert.Equal(t, "smtp: NOOP: rejected: 550 5.7.1: go away", err.Error())
			} else {
				assert.Empty(t, se.Enhanced)
				assert.Equal(t, "5.7.1 go 5.7.1 away", se.Message)
			}
			err = c.Reset(ctx)
			se = trErr(t, err, smtp.OpRSET, smtp.KindRejected)
			assert.Equal(t, 451, se.Code)
			assert.True(t, smtp.IsTemporary(err))
			assert.Equal(t, smtp.StateReady, c.State(), "a refusal leaves the session usable")
			require.NoError(t, c.Quit(ctx))
			assert.Equal(t, trEHLO+"NOOP\r\nNOOP\r\nRSET\r\nQUIT\r\n", trEnd(t, srv, c))
		})
	}
}

// A malformed reply in mid-session breaks the session.
func TestTranscriptMalformedReplyClosesSession(t *testing.T) {
	srv, c, _ := trConnect(t, nil, trSteps(trHello(), fs.ExpectLine("NOOP"), fs.Reply("250-a\r\n251 b\r\n"))...)
	err := c.Noop(trCtx(t))
	trErr(t, err, smtp.OpNOOP, smtp.KindProtocol)
	assert.Equal(t, smtp.StateClosed, c.State())
	assert.ErrorIs(t, c.Noop(trCtx(t)), smtp.ErrClosed)
	assert.Equal(t, trEHLO+"NOOP\r\n", trEnd(t, srv, c))
}

// --- 2. Capabilities ----------------------------------------------------

func TestTranscriptCapabilities(t *testing.T) {
	srv, c, _ := trConnect(t, nil, trSteps(trHello(
		"pipelining", "Chunking", "SIZE 10240000", "8bitmime", "SMTPUTF8",
		"EnhancedStatusCodes", "STARTTLS", "DSN", "AUTH PLAIN LOGIN", "AUTH=XOAUTH2", "X-EXTRA one two"), trQuit)...)
	caps := c.Capabilities()
	assert.True(t, caps.Pipelining)
	assert.True(t, caps.Chunking)
	assert.True(t, caps.Size)
	assert.Equal(t, int64(10240000), caps.MaxSize)
	assert.True(t, caps.EightBitMIME)
	assert.True(t, caps.SMTPUTF8)
	assert.True(t, caps.EnhancedStatusCodes)
	assert.True(t, caps.StartTLS)
	assert.True(t, caps.DSN)
	assert.Equal(t, []string{"PLAIN", "LOGIN", "XOAUTH2"}, caps.Auth)
	assert.True(t, caps.Has("x-extra"))
	assert.Equal(t, "one two", caps.Extensions["X-EXTRA"])
	assert.False(t, c.IsTLS())
	require.NoError(t, c.Quit(trCtx(t)))
	assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c))
}

// --- 3. Connect and ConnectStartTLS -------------------------------------

func TestTranscriptGreetingRefused(t *testing.T) {
	for _, tt := range []struct {
		greeting string
		code     int
		temp     bool
	}{
		{"421 4.3.2 mx.example busy, try later\r\n", 421, true},
		{"554 5.7.1 no SMTP service here\r\n", 554, false},
		{"554-5.7.1 go away\r\n554 5.7.1 really\r\n", 554, false},
	} {
		t.Run(tt.greeting[:3], func(t *testing.T) {
			srv, conn := trDial(t, []fs.Step{fs.Reply(tt.greeting)})
			audit := &trAudit{}
			c, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true, Audit: audit.hook})
			assert.Nil(t, c)
			se := trErr(t, err, smtp.OpGreeting, smtp.KindRejected)
			assert.Equal(t, tt.code, se.Code)
			assert.Empty(t, se.Enhanced, "no enhanced codes before EHLO")
			assert.Equal(t, tt.temp, smtp.IsTemporary(err))
			assert.Equal(t, !tt.temp, smtp.IsConfig(err), "a refused greeting is the setup's")
			assert.Equal(t, []smtp.EventType{smtp.EventConnect, smtp.EventGreeting, smtp.EventSessionAborted}, audit.Types())
			assert.Empty(t, trEnd(t, srv, nil), "nothing, not even QUIT, after a refused greeting")
		})
	}
}

func TestTranscriptHELOFallback(t *testing.T) {
	for _, code := range []string{"500", "502"} {
		t.Run(code, func(t *testing.T) {
			srv, c, conn := trConnect(t, nil, trSteps(
				fs.Reply(trGreeting),
				fs.ExpectLine("EHLO client.example"), fs.Reply(code+" 5.5.1 what?\r\n"),
				fs.ExpectLine("HELO client.example"), fs.Reply("250 mx.example\r\n"),
				// Without PIPELINING: one command at a time.
				fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 ok\r\n"),
				fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 ok\r\n"),
				fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"),
				fs.Expect("hi\r\n.\r\n"), fs.Reply("250 ok\r\n"),
				trQuit)...)
			ctx := trCtx(t)
			caps := c.Capabilities()
			assert.False(t, caps.Pipelining)
			assert.False(t, caps.Chunking)
			assert.Empty(t, caps.Extensions)
			_, err := c.Send(ctx, trEnv, strings.NewReader("hi"))
			require.NoError(t, err)
			require.NoError(t, c.Quit(ctx))
			assert.Equal(t, trEHLO+"HELO client.example\r\n"+trMail+trRcpt+"DATA\r\nhi\r\n.\r\nQUIT\r\n", trEnd(t, srv, c))
			assert.Equal(t, []string{trEHLO, "HELO client.example\r\n", trMail, trRcpt, "DATA\r\n", "hi\r\n.\r\n", "QUIT\r\n"}, conn.Writes())
		})
	}
}

func TestTranscriptEHLORefused(t *testing.T) {
	t.Run("EHLO 554", func(t *testing.T) {
		srv, conn := trDial(t, trSteps(fs.Reply(trGreeting), fs.ExpectLine("EHLO client.example"), fs.Reply("554 5.7.1 not you\r\n")))
		_, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		se := trErr(t, err, smtp.OpEHLO, smtp.KindRejected)
		assert.Equal(t, 554, se.Code)
		assert.Equal(t, trEHLO, trEnd(t, srv, nil))
	})
	t.Run("HELO 501", func(t *testing.T) {
		srv, conn := trDial(t, trSteps(fs.Reply(trGreeting),
			fs.ExpectLine("EHLO client.example"), fs.Reply("502 no\r\n"),
			fs.ExpectLine("HELO client.example"), fs.Reply("501 bad name\r\n")))
		_, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		se := trErr(t, err, smtp.OpEHLO, smtp.KindRejected)
		assert.Equal(t, 501, se.Code)
		assert.Equal(t, trEHLO+"HELO client.example\r\n", trEnd(t, srv, nil))
	})
	t.Run("EHLO 421", func(t *testing.T) {
		srv, conn := trDial(t, trSteps(fs.Reply(trGreeting), fs.ExpectLine("EHLO client.example"), fs.Reply("421 4.4.5 too busy\r\n")))
		_, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		se := trErr(t, err, smtp.OpEHLO, smtp.KindRejected)
		assert.Equal(t, 421, se.Code)
		assert.True(t, smtp.IsTemporary(err))
		assert.Equal(t, trEHLO, trEnd(t, srv, nil))
	})
}

// TestTranscriptConnectEmptyLocalNameGreetsAsLocalhost: a caller that
// leaves Options.LocalName empty (or passes nil Options) gets the
// server's EHLO as "localhost", as a sender.Sender does.
func TestTranscriptConnectEmptyLocalNameGreetsAsLocalhost(t *testing.T) {
	for _, opts := range []*smtp.Options{{InsecureAllowPlaintext: true}, {LocalName: "", InsecureAllowPlaintext: true}} {
		srv, conn := trDial(t, trSteps(fs.Reply(trGreeting), fs.ExpectLine("EHLO localhost"), fs.Reply("250 mx.example\r\n")))
		c, err := smtp.Connect(trCtx(t), conn, opts)
		require.NoError(t, err)
		c.Close()
		assert.Equal(t, "EHLO localhost\r\n", trEnd(t, srv, nil))
	}
}

func TestTranscriptConnectRefusesBeforeAnyByte(t *testing.T) {
	t.Run("plaintext without the insecure option", func(t *testing.T) {
		srv, conn := trDial(t, []fs.Step{fs.Reply(trGreeting)})
		c, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: "client.example"})
		assert.Nil(t, c)
		trErr(t, err, smtp.OpGreeting, smtp.KindInvalidInput)
		assert.True(t, smtp.IsConfig(err))
		assert.Empty(t, trEnd(t, srv, nil))
	})
	for _, name := range []string{"bad name", "evil\r\nMAIL FROM:<x@y>", "nul\x00", "<x>", "ünï"} {
		t.Run("EHLO name "+strings.ToValidUTF8(name, "?"), func(t *testing.T) {
			srv, conn := trDial(t, []fs.Step{fs.Reply(trGreeting)})
			c, err := smtp.Connect(trCtx(t), conn, &smtp.Options{LocalName: name, InsecureAllowPlaintext: true})
			assert.Nil(t, c)
			trErr(t, err, smtp.OpEHLO, smtp.KindInvalidInput)
			assert.Empty(t, trEnd(t, srv, nil))
		})
	}
	t.Run("STARTTLS with a bad EHLO name", func(t *testing.T) {
		srv := fs.Start(t, fs.Reply(trGreeting))
		tr, err := transport.Dial(trCtx(t), srv.Addr())
		require.NoError(t, err)
		c, err := smtp.ConnectStartTLS(trCtx(t), tr, &smtp.Options{LocalName: "a b"})
		assert.Nil(t, c)
		trErr(t, err, smtp.OpEHLO, smtp.KindInvalidInput)
		assert.Empty(t, trEnd(t, srv, nil))
	})
}

func TestTranscriptImplicitTLS(t *testing.T) {
	serverCfg, roots := fs.SelfSignedTLS(t)
	srv := fs.Start(t, trSteps(fs.StartTLS(serverCfg), trHello("PIPELINING"), trQuit)...)
	ctx := trCtx(t)
	tr, err := transport.DialTLS(ctx, srv.Addr(), &tls.Config{RootCAs: roots})
	require.NoError(t, err)
	// No insecure option needed: the transport is TLS.
	c, err := smtp.Connect(ctx, tr, &smtp.Options{LocalName: "client.example"})
	require.NoError(t, err)
	assert.True(t, c.IsTLS())
	assert.True(t, c.Capabilities().Pipelining)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c))
}

func TestTranscriptStartTLS(t *testing.T) {
	serverCfg, roots := fs.SelfSignedTLS(t)
	srv := fs.Start(t, trSteps(
		trHello("PIPELINING", "CHUNKING", "STARTTLS", "AUTH PLAIN LOGIN", "SIZE 1000"),
		fs.ExpectLine("STARTTLS"), fs.Reply("220 2.0.0 go ahead\r\n"),
		fs.StartTLS(serverCfg),
		fs.ExpectLine("EHLO client.example"), fs.Reply(trCaps("8BITMIME", "AUTH SCRAM-SHA-256")),
		trQuit)...)
	ctx := trCtx(t)
	tr, err := transport.Dial(ctx, srv.Addr())
	require.NoError(t, err)
	audit := &trAudit{}
	c, err := smtp.ConnectStartTLS(ctx, tr, &smtp.Options{LocalName: "client.example", TLSConfig: &tls.Config{RootCAs: roots}, Audit: audit.hook})
	require.NoError(t, err)
	assert.True(t, c.IsTLS())
	caps := c.Capabilities()
	assert.True(t, caps.EightBitMIME)
	assert.False(t, caps.Pipelining, "capabilities from before TLS are forgotten")
	assert.False(t, caps.Chunking)
	assert.False(t, caps.StartTLS)
	assert.False(t, caps.Size)
	assert.False(t, caps.HasAuth("PLAIN"))
	assert.Equal(t, []string{"SCRAM-SHA-256"}, caps.Auth)
	g := c.Greeting()
	assert.Equal(t, 250, g.Code, "after STARTTLS the greeting is the EHLO reply over TLS, not the plaintext 220 anyone on the path could write")
	assert.NotContains(t, g.Text(), "ESMTP")
	assert.Equal(t, []smtp.EventType{smtp.EventConnect, smtp.EventGreeting, smtp.EventEHLO, smtp.EventTLS, smtp.EventEHLO}, audit.Types())
	assert.True(t, strings.HasPrefix(audit.Events()[3].TLSVersion, "TLS 1."), audit.Events()[3].TLSVersion)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+"STARTTLS\r\n"+trEHLO+"QUIT\r\n", trEnd(t, srv, c))
}

func TestTranscriptStartTLSFailures(t *testing.T) {
	tests := []struct {
		name   string
		script []fs.Step
		kind   smtp.Kind
		code   int
		sent   string
	}{
		{
			name:   "not offered",
			script: trHello("PIPELINING", "AUTH PLAIN"),
			kind:   smtp.KindProtocol,
			sent:   trEHLO,
		},
		{
			name:   "refused",
			script: trSteps(trHello("STARTTLS"), fs.ExpectLine("STARTTLS"), fs.Reply("454 4.7.0 TLS not available\r\n")),
			kind:   smtp.KindRejected,
			code:   454,
			sent:   trEHLO + "STARTTLS\r\n",
		},
		{
			name:   "injected reply after 220",
			script: trSteps(trHello("STARTTLS"), fs.ExpectLine("STARTTLS"), fs.Reply("220 go\r\n250 injected\r\n")),
			kind:   smtp.KindProtocol,
			sent:   trEHLO + "STARTTLS\r\n",
		},
		{
			name:   "connection closed instead of 220",
			script: trSteps(trHello("STARTTLS"), fs.ExpectLine("STARTTLS"), fs.Close()),
			kind:   smtp.KindIO,
			sent:   trEHLO + "STARTTLS\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, roots := fs.SelfSignedTLS(t)
			srv := fs.Start(t, tt.script...)
			tr, err := transport.Dial(trCtx(t), srv.Addr())
			require.NoError(t, err)
			audit := &trAudit{}
			c, err := smtp.ConnectStartTLS(trCtx(t), tr, &smtp.Options{LocalName: "client.example", TLSConfig: &tls.Config{RootCAs: roots}, Audit: audit.hook})
			assert.Nil(t, c)
			se := trErr(t, err, smtp.OpSTARTTLS, tt.kind)
			assert.Equal(t, tt.code, se.Code)
			events := audit.Events()
			require.NotEmpty(t, events)
			assert.Equal(t, smtp.EventSessionAborted, events[len(events)-1].Type)
			assert.Equal(t, tt.kind, events[len(events)-1].Kind)
			assert.NotContains(t, audit.Types(), smtp.EventTLS)
			// Nothing after: no QUIT, no AUTH, no MAIL, no TLS hello.
			assert.Equal(t, tt.sent, trEnd(t, srv, nil))
		})
	}
}

// A certificate that does not verify ends the session: no fallback.
func TestTranscriptStartTLSBadCertificate(t *testing.T) {
	serverCfg, _ := fs.SelfSignedTLS(t)
	srv := fs.Start(t, trSteps(trHello("STARTTLS"), fs.ExpectLine("STARTTLS"), fs.Reply("220 go\r\n"), fs.StartTLS(serverCfg))...)
	ctx := trCtx(t)
	tr, err := transport.Dial(ctx, srv.Addr())
	require.NoError(t, err)
	c, err := smtp.ConnectStartTLS(ctx, tr, &smtp.Options{LocalName: "client.example"}) // system roots
	assert.Nil(t, c)
	se := trErr(t, err, smtp.OpSTARTTLS, smtp.KindIO)
	var cve *tls.CertificateVerificationError
	assert.True(t, errors.As(se, &cve), "%v", err)
	trWait(t, srv.HungUp(), "hang-up")
	assert.Equal(t, trEHLO+"STARTTLS\r\n", string(srv.Received()))
}

// withName returns a copy of o (nil: the zero Options) with LocalName
// set and, when cfg is not nil, TLSConfig.
func withName(o *smtp.Options, local string, cfg *tls.Config) *smtp.Options {
	var c smtp.Options
	if o != nil {
		c = *o
	}
	c.LocalName = local
	if cfg != nil {
		c.TLSConfig = cfg
	}
	return &c
}

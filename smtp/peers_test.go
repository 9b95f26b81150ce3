package smtp_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// Tests against real peers started by internal/testpeers: the in-process
// go-smtp server, Postfix smtpd (STARTTLS and implicit TLS, Cyrus SASL),
// Postfix smtp-sink and Mailpit. What the client wrote is recorded by a
// wrapping transport (peerWire), so a test can prove which commands were
// really used (BDAT or DATA, pipelined or not) and that nothing was sent
// where nothing may be. Helpers are prefixed "peer" to keep clear of the
// other test files of this package.

const peerEHLO = "EHLO client.example\r\n"

// peerWire records what a client wrote, one entry per Write call: the
// bytes on the wire before TLS, the plaintext handed to TLS after it.
type peerWire struct {
	mu     sync.Mutex // guards the fields below
	writes []string
	tlsAt  int // len(writes) when TLS started, -1 if it did not
}

func newPeerWire() *peerWire { return &peerWire{tlsAt: -1} }

func (w *peerWire) add(p []byte) {
	w.mu.Lock()
	w.writes = append(w.writes, string(p))
	w.mu.Unlock()
}

func (w *peerWire) markTLS() {
	w.mu.Lock()
	w.tlsAt = len(w.writes)
	w.mu.Unlock()
}

// Writes returns the writes so far, in order.
func (w *peerWire) Writes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

// String returns everything written so far.
func (w *peerWire) String() string { return strings.Join(w.Writes(), "") }

// Len returns the number of octets written so far.
func (w *peerWire) Len() int { return len(w.String()) }

// BeforeTLS returns what was written in plaintext, before any TLS.
func (w *peerWire) BeforeTLS() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tlsAt < 0 {
		return strings.Join(w.writes, "")
	}
	return strings.Join(w.writes[:w.tlsAt], "")
}

// peerConn is a plaintext transport that records the client's writes
// and keeps recording, in plaintext, through a STARTTLS upgrade.
type peerConn struct {
	transport.StartTLSCapable
	w *peerWire
}

func (c *peerConn) Write(p []byte) (int, error) {
	n, err := c.StartTLSCapable.Write(p)
	c.w.add(p[:n])
	return n, err
}

// RemoteAddr lets the client learn the peer's address, as it would from
// the unwrapped transport.
func (c *peerConn) RemoteAddr() net.Addr {
	if ra, ok := c.StartTLSCapable.(interface{ RemoteAddr() net.Addr }); ok {
		return ra.RemoteAddr()
	}
	return nil
}

func (c *peerConn) UpgradeTLS(ctx context.Context, cfg *tls.Config) (transport.Transport, error) {
	tt, err := c.StartTLSCapable.UpgradeTLS(ctx, cfg)
	if err != nil {
		return nil, err
	}
	tc, ok := tt.(*tls.Conn)
	if !ok {
		tt.Close()
		return nil, fmt.Errorf("peerConn: upgraded transport is a %T, not a *tls.Conn", tt)
	}
	c.w.markTLS()
	return &peerTLSConn{Conn: tc, w: c.w}, nil
}

// peerTLSConn is a TLS transport that records the plaintext the client
// writes; it keeps ConnectionState, so the client sees it as TLS.
type peerTLSConn struct {
	*tls.Conn
	w *peerWire
}

func (c *peerTLSConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.add(p[:n])
	return n, err
}

// peerDialPlain dials addr in plaintext and starts a session with
// smtp.Connect (which needs opts.InsecureAllowPlaintext to proceed).
func peerDialPlain(t *testing.T, ctx context.Context, addr string, opts *smtp.Options) (*smtp.Client, *peerWire, error) {
	t.Helper()
	tr, err := transport.Dial(ctx, addr)
	require.NoError(t, err)
	w := newPeerWire()
	c, err := smtp.Connect(ctx, &peerConn{StartTLSCapable: tr, w: w}, withName(opts, "client.example", nil))
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, w, err
}

// peerDialStartTLS dials addr in plaintext and starts a session with
// smtp.ConnectStartTLS.
func peerDialStartTLS(t *testing.T, ctx context.Context, addr string, cfg *tls.Config, opts *smtp.Options) (*smtp.Client, *peerWire, error) {
	t.Helper()
	tr, err := transport.Dial(ctx, addr)
	require.NoError(t, err)
	w := newPeerWire()
	c, err := smtp.ConnectStartTLS(ctx, &peerConn{StartTLSCapable: tr, w: w}, withName(opts, "client.example", cfg))
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, w, err
}

// peerDialTLS dials addr with implicit TLS and starts a session with
// smtp.Connect.
func peerDialTLS(t *testing.T, ctx context.Context, addr string, cfg *tls.Config, opts *smtp.Options) (*smtp.Client, *peerWire, error) {
	t.Helper()
	tr, err := transport.DialTLS(ctx, addr, cfg)
	require.NoError(t, err)
	tc, ok := tr.(*tls.Conn)
	require.True(t, ok, "DialTLS returned a %T", tr)
	w := newPeerWire()
	w.markTLS()
	c, err := smtp.Connect(ctx, &peerTLSConn{Conn: tc, w: w}, withName(opts, "client.example", nil))
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, w, err
}

// peerAudit collects audit events.
type peerAudit struct {
	mu     sync.Mutex // guards events
	events []smtp.Event
}

func (a *peerAudit) hook(e smtp.Event) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
}

// Of returns the events of type typ, in order.
func (a *peerAudit) Of(typ smtp.EventType) []smtp.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []smtp.Event
	for _, e := range a.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// peerCtx bounds a test that moves a lot of data.
func peerCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// peerStuff is what DATA must carry for body: every line starting with
// "." gets another, a missing final CRLF is added, and ".\r\n" ends it.
func peerStuff(body string) string {
	if body != "" && !strings.HasSuffix(body, "\r\n") {
		body += "\r\n"
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(body, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.String()
}

// peerSameBytes compares two possibly huge byte strings and, when they
// differ, reports their lengths and the first difference only.
func peerSameBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	excerpt := func(b []byte) string {
		lo, hi := max(0, i-40), min(len(b), i+40)
		return strconv.Quote(string(b[lo:hi]))
	}
	t.Errorf("%s: %d octets, want %d; first difference at %d:\n got %s\nwant %s", what, len(got), len(want), i, excerpt(got), excerpt(want))
}

var peerBDATRe = regexp.MustCompile(`BDAT (\d+)( LAST)?\r\n`)

// peerBDATs lists the BDAT commands of a wire transcript; each one's
// chunk is skipped by its declared size, so body content cannot pass for
// a command.
func peerBDATs(t *testing.T, wire string) []string {
	t.Helper()
	var cmds []string
	for {
		loc := peerBDATRe.FindStringSubmatchIndex(wire)
		if loc == nil {
			return cmds
		}
		n, err := strconv.Atoi(wire[loc[2]:loc[3]])
		require.NoError(t, err)
		cmds = append(cmds, wire[loc[0]:loc[1]-2])
		require.GreaterOrEqual(t, len(wire)-loc[1], n, "BDAT chunk shorter than declared")
		wire = wire[loc[1]+n:]
	}
}

// --- go-smtp ---------------------------------------------------------

// The in-process go-smtp server offers CHUNKING, PIPELINING, 8BITMIME and
// SMTPUTF8: the client must send BDAT chunks (never DATA), with
// BODY=8BITMIME and SMTPUTF8 on MAIL, and the server must receive the body
// byte for byte.
func TestPeerGoSMTPChunking(t *testing.T) {
	t.Parallel()
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, EnableSMTPUTF8: true})
	ctx := testCtx(t)
	audit := &peerAudit{}
	c, w, err := peerDialTLS(t, ctx, srv.Addr(), srv.Cert().ClientConfig(), &smtp.Options{ChunkSize: 1024, Audit: audit.hook})
	require.NoError(t, err)
	caps := c.Capabilities()
	require.True(t, caps.Chunking && caps.Pipelining && caps.EightBitMIME && caps.SMTPUTF8, "%+v", caps)

	var body strings.Builder
	body.WriteString("From: δοκιμή@παράδειγμα.δοκιμή\r\nTo: 用户@例子.广告\r\nSubject: Grüße\r\n\r\n")
	for i := 0; body.Len() < 5000; i++ {
		fmt.Fprintf(&body, ".%d Über straße ✓ line with a leading dot\r\n", i)
	}
	env := smtp.Envelope{From: "δοκιμή@παράδειγμα.δοκιμή", To: []string{"用户@例子.广告"}, EightBitMIME: true}
	out, err := c.Send(ctx, env, strings.NewReader(body.String()))
	require.NoError(t, err)
	// An empty message is "BDAT 0 LAST"; a body without a final CRLF
	// gets one.
	n0 := w.Len()
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader(""))
	require.NoError(t, err)
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader("no final CRLF"))
	require.NoError(t, err)
	assert.Equal(t, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 0 LAST\r\n"+
		"MAIL FROM:<a@example.com> SIZE=13\r\nRCPT TO:<b@example.org>\r\nBDAT 15 LAST\r\nno final CRLF\r\n", w.String()[n0:])
	require.NoError(t, c.Quit(ctx))

	msgs := srv.Messages()
	require.Len(t, msgs, 3)
	assert.Empty(t, msgs[1].Data)
	assert.Equal(t, "no final CRLF\r\n", string(msgs[2].Data))
	m := msgs[0]
	peerSameBytes(t, []byte(body.String()), m.Data, "message at go-smtp")
	assert.Equal(t, env.From, m.From)
	assert.Equal(t, env.To, m.To)
	assert.True(t, m.Opts.UTF8, "SMTPUTF8 on MAIL")
	assert.Equal(t, gosmtp.Body8BitMIME, m.Opts.Body)
	assert.Equal(t, m.QueueID, out.QueueID)
	assert.NotEmpty(t, out.QueueID)

	// BDAT, in ChunkSize chunks, and no DATA (the body is not dot-stuffed).
	wire := w.String()[:n0]
	bdats := peerBDATs(t, wire)
	n := body.Len()
	var want []string
	for ; n > 1024; n -= 1024 {
		want = append(want, "BDAT 1024")
	}
	want = append(want, fmt.Sprintf("BDAT %d LAST", n))
	assert.Equal(t, want, bdats)
	assert.NotContains(t, wire, "DATA\r\n")
	assert.Contains(t, wire, fmt.Sprintf("MAIL FROM:<%s> SIZE=%d BODY=8BITMIME SMTPUTF8\r\n", env.From, body.Len()))
	ev := audit.Of(smtp.EventMessage)
	require.Len(t, ev, 3)
	assert.Equal(t, out.QueueID, ev[0].QueueID)
}

// --- Postfix smtpd ---------------------------------------------------

// postfixQueueRe matches the queue-id line smtpd logs when a transaction
// gets its first recipient.
var postfixQueueRe = regexp.MustCompile(`postfix/smtpd\[(\d+)\]: ([0-9A-Za-z]+): client=`)

// postfixSession returns the smtpd log lines of the session that carried
// queue id qid, from its "connect from" to its "disconnect from", or nil
// while the session has not ended.
func postfixSession(log, qid string) []string {
	lines := strings.Split(log, "\n")
	at, pid := -1, ""
	for i, l := range lines {
		if m := postfixQueueRe.FindStringSubmatch(l); m != nil && m[2] == qid {
			at, pid = i, "postfix/smtpd["+m[1]+"]: "
			break
		}
	}
	if at < 0 {
		return nil
	}
	start := at
	for j := at; j >= 0; j-- {
		if strings.Contains(lines[j], pid+"connect from ") {
			start = j
			break
		}
	}
	var out []string
	for j := start; j < len(lines); j++ {
		if !strings.Contains(lines[j], pid) {
			continue
		}
		out = append(out, lines[j])
		if j > at && strings.Contains(lines[j], pid+"disconnect from ") {
			return out
		}
	}
	return nil
}

// postfixWaitSession waits until Postfix has logged the whole session
// that carried qid, and returns its lines.
func postfixWaitSession(t *testing.T, p *testpeers.PostfixServer, qid string) []string {
	t.Helper()
	var lines []string
	ok := assert.Eventually(t, func() bool {
		lines = postfixSession(p.Log(), qid)
		return lines != nil
	}, 30*time.Second, 20*time.Millisecond, "Postfix did not log the session of %s", qid)
	if !ok {
		t.Logf("maillog:\n%s", p.Log())
	}
	return lines
}

// postfixWaitDelivered waits until a message containing marker has been
// delivered, and returns it.
func postfixWaitDelivered(t *testing.T, p *testpeers.PostfixServer, marker string) []byte {
	t.Helper()
	var found []byte
	ok := assert.Eventually(t, func() bool {
		msgs, err := p.Delivered()
		if err != nil {
			return false
		}
		for _, m := range msgs {
			if bytes.Contains(m, []byte(marker)) {
				found = m
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "Postfix did not deliver %q", marker)
	if !ok {
		t.Logf("maillog:\n%s", p.Log())
	}
	return found
}

// lf is what Postfix stores for a CRLF body in a maildir.
func lf(s string) string { return strings.ReplaceAll(s, "\r\n", "\n") }

// Postfix smtpd, on its STARTTLS port and on its implicit-TLS port: AUTH
// as testuser, BDAT (proved by the client's own bytes and by Postfix's
// command counters), 8BITMIME, an SMTPUTF8 address, the queue id parsed
// from "queued as X" and found in Postfix's log, and a refused relay
// recipient.
func TestPostfixPeer(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{Deliver: true})
	dial := map[string]func(t *testing.T, ctx context.Context, opts *smtp.Options) (*smtp.Client, *peerWire, error){
		"starttls": func(t *testing.T, ctx context.Context, opts *smtp.Options) (*smtp.Client, *peerWire, error) {
			return peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), opts)
		},
		"implicit-tls": func(t *testing.T, ctx context.Context, opts *smtp.Options) (*smtp.Client, *peerWire, error) {
			return peerDialTLS(t, ctx, p.ImplicitTLSAddr(), p.Cert().ClientConfig(), opts)
		},
	}
	for _, port := range []string{"starttls", "implicit-tls"} {
		t.Run(port, func(t *testing.T) {
			ctx := testCtx(t)
			audit := &peerAudit{}
			sec := newAuthSecrets(t)
			sec.password(testpeers.PostfixUser, testpeers.PostfixPass)
			c, w, err := dial[port](t, ctx, &smtp.Options{ChunkSize: 4096, Audit: func(e smtp.Event) { audit.hook(e); sec.hook(e) }})
			require.NoError(t, err)
			defer sec.client(c)
			require.True(t, c.IsTLS())
			caps := c.Capabilities()
			for name, ok := range map[string]bool{"CHUNKING": caps.Chunking, "PIPELINING": caps.Pipelining, "8BITMIME": caps.EightBitMIME,
				"SMTPUTF8": caps.SMTPUTF8, "ENHANCEDSTATUSCODES": caps.EnhancedStatusCodes, "DSN": caps.DSN} {
				assert.True(t, ok, "%s not advertised over TLS", name)
			}
			assert.False(t, caps.StartTLS, "STARTTLS offered over TLS")
			assert.ElementsMatch(t, testpeers.PostfixMechanisms, caps.Auth)

			require.NoError(t, sec.err(c.Login(ctx, testpeers.PostfixUser, testpeers.PostfixPass)))
			authEv := audit.Of(smtp.EventAuth)
			require.Len(t, authEv, 1)
			assert.Equal(t, smtp.MechSCRAMSHA256, authEv[0].Mechanism)
			assert.Equal(t, 235, authEv[0].Code)
			assert.Equal(t, "2.7.0", authEv[0].Enhanced, "from Postfix's 235 2.7.0")

			// An ASCII message relayed to another domain (AUTH allows it),
			// bigger than ChunkSize so that it takes several chunks.
			marker1 := "<ascii." + port + "@client.example>"
			var ascii strings.Builder
			fmt.Fprintf(&ascii, "From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: peer %s\r\nMessage-ID: %s\r\n\r\n", port, marker1)
			for i := 0; ascii.Len() < 10000; i++ {
				fmt.Fprintf(&ascii, ".line %d, with a leading dot that BDAT must not stuff\r\n..and two\r\n", i)
			}
			out1, err := c.Send(ctx, smtp.Envelope{From: "sender@example.com", To: []string{"rcpt@example.org"}}, strings.NewReader(ascii.String()))
			require.NoError(t, err)

			// An 8-bit message between SMTPUTF8 addresses.
			marker2 := "<utf8." + port + "@client.example>"
			utf := "From: δοκιμή@example.com\r\nTo: 用户@localhost\r\nSubject: Grüße\r\nMessage-ID: " + marker2 +
				"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÜber straße ✓ 日本語\r\n"
			// ORCPT in RFC 6533's utf-8 form: Postfix accepts it.
			env2 := smtp.Envelope{From: "δοκιμή@example.com", To: []string{"用户@localhost"}, EightBitMIME: true,
				DSN: &smtp.DSN{OriginalRecipient: true, Notify: []string{"FAILURE"}}}
			out2, err := c.Send(ctx, env2, strings.NewReader(utf))
			require.NoError(t, err)
			require.NoError(t, c.Quit(ctx))

			// The queue id is parsed from Postfix's own final reply.
			for _, out := range []*smtp.Outcome{out1, out2} {
				require.NotEmpty(t, out.QueueID)
				assert.Equal(t, 250, out.Reply.Code)
				assert.Equal(t, "2.0.0", out.Reply.Enhanced)
				// "Ok: queued as X" after DATA, "Ok: N bytes queued as X" after BDAT.
				assert.Regexp(t, `^Ok: (\d+ bytes )?queued as `+out.QueueID+`$`, out.Reply.Text())
			}
			assert.NotEqual(t, out1.QueueID, out2.QueueID)

			// What the client wrote: BDAT only, 8BITMIME and SMTPUTF8 on MAIL.
			wire := w.String()
			bdats := peerBDATs(t, wire)
			assert.NotContains(t, wire, "DATA\r\n")
			assert.Contains(t, wire, "BDAT "+strconv.Itoa(len(utf))+" LAST\r\n"+utf)
			assert.Contains(t, wire, fmt.Sprintf("MAIL FROM:<δοκιμή@example.com> SIZE=%d BODY=8BITMIME SMTPUTF8\r\n", len(utf)))
			assert.Contains(t, wire, "RCPT TO:<用户@localhost> NOTIFY=FAILURE ORCPT=utf-8;用户@localhost\r\n")
			require.Greater(t, len(bdats), 3, "a 10 kB body in 4 kB chunks")

			// What Postfix logged: the same queue ids, the SASL mechanism, and
			// its command counters, which count the BDAT commands it read.
			session := postfixWaitSession(t, p, out2.QueueID)
			text := strings.Join(session, "\n")
			for _, qid := range []string{out1.QueueID, out2.QueueID} {
				assert.Contains(t, text, qid+": client=localhost[127.0.0.1], sasl_method=SCRAM-SHA-256, sasl_username="+testpeers.PostfixUser)
			}
			want := fmt.Sprintf(" auth=1 mail=2 rcpt=2 bdat=%d quit=1 ", len(bdats))
			if port == "starttls" {
				want = " ehlo=2 starttls=1" + want
			} else {
				want = " ehlo=1" + want
			}
			assert.Contains(t, session[len(session)-1], want, "Postfix's command counters")

			// What Postfix delivered: the bodies byte for byte (LF endings in
			// the maildir), after the trace headers it prepends.
			got1 := postfixWaitDelivered(t, p, marker1)
			assert.True(t, strings.HasSuffix(string(got1), "\n"+lf(ascii.String())), "delivered ASCII message")
			got2 := postfixWaitDelivered(t, p, marker2)
			assert.True(t, strings.HasSuffix(string(got2), "\n"+lf(utf)), "delivered 8-bit message:\n%s", got2)
			assert.Contains(t, string(got2), "Delivered-To: 用户@localhost\n")
			assert.Contains(t, string(got2), "Return-Path: <δοκιμή@example.com>\n")
		})
	}

	// A window of pipelined transactions, Postfix being the strictest
	// peer for pipelining and BDAT: single recipients (BDAT ... LAST
	// written at once) and pairs (body chunks held back until both RCPT
	// replies are in), one pair with a refused recipient, all written
	// before any outcome is read.
	t.Run("window", func(t *testing.T) {
		ctx := testCtx(t)
		c, w, err := peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), nil)
		require.NoError(t, err)
		type sent struct {
			tx     *smtp.Tx
			marker string
			bad    bool
		}
		var txs []sent
		for i := 0; i < 8; i++ {
			marker := fmt.Sprintf("<window-%d@client.example>", i)
			to := []string{fmt.Sprintf("w%d@localhost", i)}
			bad := i == 5
			switch {
			case bad:
				to = append(to, "someone@example.org") // relay denied
			case i%2 == 1:
				to = append(to, fmt.Sprintf("w%d-bis@localhost", i))
			}
			body := "Message-ID: " + marker + "\r\nSubject: window\r\n\r\n.dot\r\n" + strings.Repeat("x", i*100) + "\r\n"
			tx, err := c.WriteTx(ctx, smtp.Envelope{From: "sender@example.com", To: to}, strings.NewReader(body))
			require.NoError(t, err)
			txs = append(txs, sent{tx, marker, bad})
		}
		assert.Equal(t, smtp.StateTransaction, c.State())
		for i, s := range txs {
			out, err := c.ReadTx(ctx, s.tx)
			if s.bad {
				var se *smtp.Error
				require.ErrorAs(t, err, &se, "tx %d", i)
				assert.Equal(t, smtp.OpRCPT, se.Op)
				assert.Equal(t, 554, se.Code)
				continue
			}
			require.NoError(t, err, "tx %d", i)
			assert.NotEmpty(t, out.QueueID)
		}
		assert.Equal(t, smtp.StateReady, c.State())
		require.NoError(t, c.Quit(ctx))
		assert.NotContains(t, w.String(), "DATA\r\n")
		for _, s := range txs {
			if !s.bad {
				postfixWaitDelivered(t, p, s.marker)
			}
		}
	})

	// Without AUTH, only @localhost is local: another domain is relaying,
	// which Postfix refuses with 554 5.7.1, at RCPT.
	t.Run("relay-denied", func(t *testing.T) {
		ctx := testCtx(t)
		audit := &peerAudit{}
		c, _, err := peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), &smtp.Options{Audit: audit.hook})
		require.NoError(t, err)
		_, err = c.Send(ctx, smtp.Envelope{From: "sender@example.com", To: []string{"someone@example.org"}}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
		var se *smtp.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		assert.Equal(t, smtp.KindRejected, se.Kind)
		assert.Equal(t, 554, se.Code)
		assert.Equal(t, "5.7.1", se.Enhanced)
		assert.Equal(t, "someone@example.org", se.Recipient)
		assert.Contains(t, se.Message, "Relay access denied")
		assert.True(t, smtp.IsPermanent(err))
		assert.False(t, smtp.IsTemporary(err))
		refused := audit.Of(smtp.EventRcptRefused)
		require.Len(t, refused, 1)
		assert.Equal(t, 554, refused[0].Code)

		// All or nothing: with one local and one refused recipient,
		// nothing is sent to either, and the session stays usable.
		_, err = c.Send(ctx, smtp.Envelope{From: "sender@example.com", To: []string{"postmaster@localhost", "someone@example.org"}}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
		require.ErrorAs(t, err, &se)
		assert.Equal(t, smtp.OpRCPT, se.Op)
		assert.Equal(t, "someone@example.org", se.Recipient)
		require.Len(t, se.Refused, 1)
		assert.Equal(t, smtp.StateReady, c.State())

		marker := "<after-refusal@client.example>"
		out, err := c.Send(ctx, smtp.Envelope{From: "sender@example.com", To: []string{"postmaster@localhost"}}, strings.NewReader("Message-ID: "+marker+"\r\nSubject: local\r\n\r\nlocal\r\n"))
		require.NoError(t, err)
		assert.NotEmpty(t, out.QueueID)
		require.NoError(t, c.Quit(ctx))
		postfixWaitDelivered(t, p, marker)
	})
}

// postfixRaw is a minimal raw SMTP exchange, for what our client cannot
// produce or does not show: it sends exactly the bytes given, and
// returns the last reply's code and text (its lines joined by "\n").
func postfixRaw(t *testing.T, addr string, steps ...string) (code int, text string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	r := bufio.NewReader(conn)
	read := func() (int, string) {
		var lines []string
		for {
			line, err := r.ReadString('\n')
			require.NoError(t, err)
			lines = append(lines, strings.TrimSpace(line[min(4, len(line)):]))
			if len(line) >= 4 && line[3] == '-' {
				continue
			}
			code, err := strconv.Atoi(line[:3])
			require.NoError(t, err)
			return code, strings.Join(lines, "\n")
		}
	}
	code, text = read()
	for _, s := range steps {
		_, err := conn.Write([]byte(s))
		require.NoError(t, err)
		code, text = read()
	}
	return code, text
}

// With smtpd_forbid_bare_newline = reject (and CHUNKING withdrawn, so
// that the body goes through DATA, where bare LF smuggling happens), a
// bare LF earns 550 5.5.2. Our client, normalising a body full of bare
// line ends and lines starting with ".", is accepted and delivers
// exactly the normalised text.
func TestPostfixForbidBareNewline(t *testing.T) {
	t.Parallel()
	p := testpeers.Postfix(t, testpeers.PostfixOptions{Deliver: true, ForbidBareNewline: true,
		MainCF: []string{"smtpd_discard_ehlo_keywords = chunking"}})

	// Negative control: the peer really refuses a bare LF.
	code, text := postfixRaw(t, p.StartTLSAddr(), "EHLO client.example\r\n", "MAIL FROM:<a@example.com>\r\n",
		"RCPT TO:<x@localhost>\r\n", "DATA\r\n", "Subject: bare\r\n\r\nbare\nLF\r\n.\r\n")
	require.Equal(t, 550, code, text)
	require.True(t, strings.HasPrefix(text, "5.5.2"), text)

	ctx := testCtx(t)
	c, w, err := peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), &smtp.Options{NormalizeLineEndings: true})
	require.NoError(t, err)
	require.False(t, c.Capabilities().Chunking, "CHUNKING must be withdrawn for this test")
	marker := "<bare-lf@client.example>"
	body := "Message-ID: " + marker + "\nSubject: bare line ends\n\n.one dot\n..two dots\r\nbare CR\rend\n.\n...\nlast"
	want := "Message-ID: " + marker + "\r\nSubject: bare line ends\r\n\r\n.one dot\r\n..two dots\r\nbare CR\r\nend\r\n.\r\n...\r\nlast\r\n"
	out, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"x@localhost"}}, strings.NewReader(body))
	require.NoError(t, err)
	assert.NotEmpty(t, out.QueueID)
	require.NoError(t, c.Quit(ctx))

	wire := w.String()
	assert.Contains(t, wire, "DATA\r\n"+peerStuff(want))
	assert.NotRegexp(t, `[^\r]\n`, wire, "a bare LF on the wire")
	assert.NotRegexp(t, `\r[^\n]`, wire, "a bare CR on the wire")
	got := postfixWaitDelivered(t, p, marker)
	assert.True(t, strings.HasSuffix(string(got), "\n"+lf(want)), "delivered:\n%s", got)

	// A pipelined window over DATA, with all-or-nothing pairs of
	// recipients (DATA waits for both RCPT replies) and one refused
	// relay recipient: each body leaves with the next transaction's
	// commands.
	c, w, err = peerDialStartTLS(t, ctx, p.StartTLSAddr(), p.Cert().ClientConfig(), nil)
	require.NoError(t, err)
	var txs []*smtp.Tx
	for i := 0; i < 6; i++ {
		to := []string{fmt.Sprintf("d%d@localhost", i)}
		if i%2 == 1 {
			to = append(to, fmt.Sprintf("d%d-bis@localhost", i))
		}
		if i == 3 {
			to[1] = "someone@example.org"
		}
		tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: to}, strings.NewReader(fmt.Sprintf("Message-ID: <data-window-%d@client.example>\r\n\r\n.%d\r\n", i, i)))
		require.NoError(t, err)
		txs = append(txs, tx)
	}
	for i, tx := range txs {
		_, err := c.ReadTx(ctx, tx)
		if i == 3 {
			var se *smtp.Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, smtp.OpRCPT, se.Op)
			assert.Equal(t, "someone@example.org", se.Recipient)
			continue
		}
		require.NoError(t, err, "tx %d", i)
	}
	require.NoError(t, c.Quit(ctx))
	assert.NotContains(t, w.String(), "BDAT")
	assert.Equal(t, 5, strings.Count(w.String(), "DATA\r\n"), "no DATA for the refused pair")
	for i := range txs {
		if i != 3 {
			postfixWaitDelivered(t, p, fmt.Sprintf("<data-window-%d@client.example>", i))
		}
	}
}

// --- Mailpit ---------------------------------------------------------

// mailpitStrip removes the fields (folded lines included) that Mailpit
// prepends to what it received: Return-Path and Received always, Bcc for
// envelope recipients that are in no header field, and Message-ID when
// the message has none. The messages of these tests have a To and a
// Message-ID field and start with a field of their own, so that only
// Mailpit's are removed.
func mailpitStrip(raw []byte) []byte {
	return testpeers.StripFields(raw, "Return-Path", "Received", "Bcc", "Message-ID")
}

// mailpitBySubject waits for the message with subject and returns its
// raw bytes with Mailpit's own fields removed.
func mailpitBySubject(t *testing.T, m *testpeers.MailpitServer, subject string) []byte {
	t.Helper()
	var id string
	require.Eventually(t, func() bool {
		msgs, err := m.Messages()
		if err != nil {
			return false
		}
		for _, msg := range msgs {
			if msg.Subject == subject {
				id = msg.ID
				return true
			}
		}
		return false
	}, 60*time.Second, 20*time.Millisecond, "no message %q in Mailpit", subject)
	raw, err := m.Raw(id)
	require.NoError(t, err)
	return mailpitStrip(raw)
}

// Mailpit offers neither PIPELINING nor CHUNKING: DATA with dot-stuffing,
// one command at a time, checked byte for byte through Mailpit's API.
func TestMailpitDATA(t *testing.T) {
	t.Parallel()
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{Mode: testpeers.StartTLS})
	ctx := peerCtx(t, 3*time.Minute)
	c, w, err := peerDialStartTLS(t, ctx, m.SMTPAddr(), m.Cert().ClientConfig(), nil)
	require.NoError(t, err)
	caps := c.Capabilities()
	require.False(t, caps.Pipelining || caps.Chunking, "Mailpit: %+v", caps)
	require.True(t, caps.EightBitMIME)

	// Each message starts with a field of its own, and has To and
	// Message-ID, so that Mailpit adds only Return-Path and Received.
	head := func(subject string) string {
		return "X-Peer-Case: " + subject + "\r\nSubject: " + subject + "\r\nTo: b@example.org\r\nMessage-ID: <" + subject + "@client.example>\r\n"
	}
	var big strings.Builder
	big.WriteString(head("big") + "\r\n")
	for i := 0; big.Len() < 20<<20; i++ {
		if i%50 == 0 {
			big.WriteString(".")
		}
		fmt.Fprintf(&big, "line %08d abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n", i)
	}
	cases := []struct {
		name, subject, body, want string
		eightBit                  bool
	}{
		{name: "dots", subject: "dots",
			body: head("dots") + "\r\n.\r\n..\r\n...\r\n.leading\r\n..double\r\n. space\r\nend\r\n"},
		{name: "no final CRLF", subject: "no-final-crlf",
			body: head("no-final-crlf") + "\r\nfirst\r\nlast line", want: head("no-final-crlf") + "\r\nfirst\r\nlast line\r\n"},
		{name: "a final dot without CRLF", subject: "final-dot",
			body: head("final-dot") + "\r\n.", want: head("final-dot") + "\r\n.\r\n"},
		{name: "empty body", subject: "empty-body", body: head("empty-body") + "\r\n"},
		{name: "8-bit", subject: "eight-bit", eightBit: true,
			body: head("eight-bit") + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, Ünïcödé ✓ 日本語\r\n.¡dot!\r\n"},
		{name: "20 MiB", subject: "big", body: big.String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "" {
				tc.want = tc.body
			}
			before, nw := w.Len(), len(w.Writes())
			env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}, EightBitMIME: tc.eightBit}
			out, err := c.Send(ctx, env, strings.NewReader(tc.body))
			require.NoError(t, err)
			assert.Equal(t, 250, out.Reply.Code)
			wire := w.String()[before:]
			mail := fmt.Sprintf("MAIL FROM:<a@example.com> SIZE=%d", len(tc.body))
			if tc.eightBit {
				mail += " BODY=8BITMIME"
			}
			// One command per write: nothing is pipelined.
			writes := w.Writes()[nw:]
			require.Greater(t, len(writes), 3)
			assert.Equal(t, []string{mail + "\r\n", "RCPT TO:<b@example.org>\r\n", "DATA\r\n"}, writes[:3])
			peerSameBytes(t, []byte(mail+"\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"+peerStuff(tc.want)), []byte(wire), "the client's bytes")
			peerSameBytes(t, []byte(tc.want), mailpitBySubject(t, m, tc.subject), "the message at Mailpit")
		})
	}
	assert.NotContains(t, w.String(), "BDAT")

	// A message of zero octets: DATA, then the final dot at once. Mailpit
	// stores nothing but its own fields.
	t.Run("empty message", func(t *testing.T) {
		require.NoError(t, m.DeleteAll())
		before := w.Len()
		_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.org"}}, strings.NewReader(""))
		require.NoError(t, err)
		assert.Equal(t, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\n", w.String()[before:])
		msgs, err := m.WaitMessages(1, 30*time.Second)
		require.NoError(t, err)
		raw, err := m.Raw(msgs[0].ID)
		require.NoError(t, err)
		assert.Empty(t, string(mailpitStrip(raw)), "raw: %q", raw)
	})
	require.NoError(t, c.Quit(ctx))
}

// --- Postfix smtp-sink -----------------------------------------------

// smtp-sink offers no STARTTLS: ConnectStartTLS must fail without a
// plaintext fallback, having written nothing but its EHLO.
func TestSinkNoSTARTTLS(t *testing.T) {
	t.Parallel()
	sink := testpeers.SMTPSink(t)
	ctx := testCtx(t)
	audit := &peerAudit{}
	c, w, err := peerDialStartTLS(t, ctx, sink.Addr(), nil, &smtp.Options{Audit: audit.hook})
	require.Error(t, err)
	assert.Nil(t, c)
	var se *smtp.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, smtp.OpSTARTTLS, se.Op)
	assert.Equal(t, smtp.KindProtocol, se.Kind)
	assert.Contains(t, se.Message, "does not offer STARTTLS")
	// Only EHLO: no STARTTLS, no MAIL, no AUTH, not even QUIT.
	assert.Equal(t, []string{peerEHLO}, w.Writes())
	assert.Equal(t, peerEHLO, w.BeforeTLS())
	assert.Len(t, audit.Of(smtp.EventSessionAborted), 1)
	assert.Empty(t, audit.Of(smtp.EventTLS))
}

// smtp-sink offers PIPELINING without CHUNKING: a window of ten DATA
// transactions is written before any outcome is read, each body leaving
// in the same write as the next transaction's commands.
func TestSinkPipelinedDATA(t *testing.T) {
	t.Parallel()
	sink := testpeers.SMTPSink(t)
	ctx := testCtx(t)
	c, w, err := peerDialPlain(t, ctx, sink.Addr(), &smtp.Options{InsecureAllowPlaintext: true})
	require.NoError(t, err)
	caps := c.Capabilities()
	require.True(t, caps.Pipelining)
	require.False(t, caps.Chunking)
	require.False(t, caps.StartTLS)
	require.False(t, caps.Size)

	const n = 10
	bodies := make([]string, n)
	txs := make([]*smtp.Tx, n)
	for i := range txs {
		bodies[i] = fmt.Sprintf("Subject: %d\r\n\r\n.dot line %d\r\nbody %d\r\n", i, i, i)
		tx, err := c.WriteTx(ctx, smtp.Envelope{From: "a@example.com", To: []string{fmt.Sprintf("r%d@example.org", i)}}, strings.NewReader(bodies[i]))
		require.NoError(t, err)
		txs[i] = tx
	}
	assert.Equal(t, smtp.StateTransaction, c.State())
	require.NoError(t, c.Flush(ctx))
	for i, tx := range txs[:n-1] {
		assert.True(t, tx.Committed(), "tx %d: its final dot left with tx %d's commands", i, i+1)
	}
	for i, tx := range txs {
		out, err := c.ReadTx(ctx, tx)
		require.NoError(t, err, "tx %d", i)
		assert.Equal(t, 250, out.Reply.Code)
		assert.Equal(t, []string{fmt.Sprintf("r%d@example.org", i)}, out.Accepted)
	}
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, c.Quit(ctx))

	// Each body, dot-stuffed, shares a write with the next MAIL, RCPT and
	// DATA: one round trip per message.
	writes := w.Writes()
	for i := 0; i < n-1; i++ {
		// smtp-sink does not advertise SIZE: no SIZE= parameter.
		next := fmt.Sprintf("MAIL FROM:<a@example.com>\r\nRCPT TO:<r%d@example.org>\r\nDATA\r\n", i+1)
		found := false
		for _, wr := range writes {
			if strings.HasSuffix(wr, peerStuff(bodies[i])+next) {
				found = true
			}
		}
		assert.True(t, found, "body %d and the commands of tx %d in one write", i, i+1)
	}
	assert.NotContains(t, w.String(), "BDAT")
}

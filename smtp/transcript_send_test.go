package smtp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// --- 4. Send ------------------------------------------------------------

// trOpaque hides a reader's Len, so the client cannot learn the size.
type trOpaque struct{ io.Reader }

// trBDAT is a final chunk carrying body.
func trBDAT(body string) string {
	return "BDAT " + strconv.Itoa(len(body)) + " LAST\r\n" + body
}

// trBadEnvelope is a case of TestTranscriptSendValidation.
type trBadEnvelope struct {
	name    string
	env     smtp.Envelope
	body    io.Reader // nil: a good small body
	nilBody bool
	op      smtp.Op
	kind    smtp.Kind // 0: KindInvalidInput
}

// Every bad envelope is refused before a byte of it is written.
func TestTranscriptSendValidation(t *testing.T) {
	errVeto := errors.New("not today")
	local65 := strings.Repeat("l", 65) + "@example.com"
	addr255 := strings.Repeat("l", 64) + "@" + strings.Repeat("d", 190)
	tests := []trBadEnvelope{
		{name: "no recipients", env: smtp.Envelope{From: "a@example.com"}, op: smtp.OpRCPT},
		{name: "empty recipient", env: smtp.Envelope{From: "a@example.com", To: []string{""}}, op: smtp.OpRCPT},
		{name: "nil body", env: trEnv, nilBody: true, op: smtp.OpBody},
		{name: "local part of 65", env: smtp.Envelope{From: local65, To: []string{"b@example.com"}}, op: smtp.OpMAIL},
		{name: "address of 255", env: smtp.Envelope{From: "a@example.com", To: []string{addr255}}, op: smtp.OpRCPT},
		{name: "sender without @", env: smtp.Envelope{From: "alice", To: []string{"b@example.com"}}, op: smtp.OpMAIL},
		{name: "non-ASCII sender without SMTPUTF8", env: smtp.Envelope{From: "δ@example.com", To: []string{"b@example.com"}}, op: smtp.OpMAIL},
		{name: "non-ASCII recipient without SMTPUTF8", env: smtp.Envelope{From: "a@example.com", To: []string{"b@exämple.com"}}, op: smtp.OpMAIL},
		{name: "invalid UTF-8", env: smtp.Envelope{From: "a\xff@example.com", To: []string{"b@example.com"}}, op: smtp.OpMAIL},
		{name: "SMTPUTF8 not offered", env: smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, SMTPUTF8: true}, op: smtp.OpMAIL},
		{name: "8BITMIME not offered", env: smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, EightBitMIME: true}, op: smtp.OpMAIL},
		{name: "DSN not offered", env: smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, DSN: &smtp.DSN{Return: "FULL"}}, op: smtp.OpMAIL},
		{name: "over the server's SIZE", env: trEnv, body: strings.NewReader(strings.Repeat("x", 1001)), op: smtp.OpMAIL, kind: smtp.KindPolicy},
		{name: "over the server's SIZE, declared", env: smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, Size: 5000}, body: trOpaque{strings.NewReader("x")}, op: smtp.OpMAIL, kind: smtp.KindPolicy},
		{name: "policy veto", env: smtp.Envelope{From: "veto@example.com", To: []string{"b@example.com"}}, op: smtp.OpSend, kind: smtp.KindPolicy},
		{name: "policy veto, size unknown", env: smtp.Envelope{From: "veto@example.com", To: []string{"c@example.com"}}, body: trOpaque{strings.NewReader("x")}, op: smtp.OpSend, kind: smtp.KindPolicy},
		{name: "command injection", env: smtp.Envelope{From: "a@example.com>\r\nRCPT TO:<evil@example.com", To: []string{"b@example.com"}}, op: smtp.OpMAIL},
	}
	for _, c := range []struct{ name, char string }{
		{"CR", "\r"}, {"LF", "\n"}, {"CRLF", "\r\n"}, {"NUL", "\x00"}, {"<", "<"}, {">", ">"}, {"space", " "}, {"tab", "\t"}, {"DEL", "\x7f"},
	} {
		tests = append(tests,
			trBadEnvelope{name: c.name + " in sender", env: smtp.Envelope{From: "a" + c.char + "x@example.com", To: []string{"b@example.com"}}, op: smtp.OpMAIL},
			trBadEnvelope{name: c.name + " in recipient", env: smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "c" + c.char + "x@example.com"}}, op: smtp.OpRCPT},
		)
	}
	audit := &trAudit{}
	var policyCalls []smtp.PolicyRequest
	opts := &smtp.Options{
		Audit: audit.hook,
		Policy: func(ctx context.Context, req smtp.PolicyRequest) error {
			policyCalls = append(policyCalls, req)
			if req.From == "veto@example.com" {
				return errVeto
			}
			return nil
		},
	}
	srv, c, _ := trConnect(t, opts, trSteps(trHello("PIPELINING", "CHUNKING", "SIZE 1000", "ENHANCEDSTATUSCODES"), trQuit)...)
	ctx := trCtx(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body
			if body == nil && !tt.nilBody {
				body = strings.NewReader("hello\r\n")
			}
			out, err := c.Send(ctx, tt.env, body)
			assert.Nil(t, out)
			kind := tt.kind
			if kind == 0 {
				kind = smtp.KindInvalidInput
			}
			se := trErr(t, err, tt.op, kind)
			assert.Zero(t, se.Code)
			assert.True(t, smtp.IsPermanent(err))
			assert.False(t, smtp.IsTemporary(err))
			assert.NotContains(t, err.Error(), "\r")
			assert.NotContains(t, err.Error(), "\n")
			if tt.op == smtp.OpRCPT && len(tt.env.To) > 0 && tt.env.To[len(tt.env.To)-1] != "" {
				assert.NotEmpty(t, se.Recipient)
			}
			if tt.kind == smtp.KindPolicy && tt.op == smtp.OpSend {
				assert.ErrorIs(t, err, errVeto)
			}
			// WriteTx refuses the same way.
			tx, err := c.WriteTx(ctx, tt.env, body)
			assert.Nil(t, tx)
			trErr(t, err, tt.op, kind)
			assert.Equal(t, smtp.StateReady, c.State())
		})
	}
	// The policy saw what passed validation, with the size when known
	// and 0 when not (as Envelope.Size). Only the envelopes that passed
	// every check reached the policy (from Send, then WriteTx).
	want := smtp.PolicyRequest{From: "veto@example.com", To: []string{"b@example.com"}, Size: 7}
	unknown := smtp.PolicyRequest{From: "veto@example.com", To: []string{"c@example.com"}, Size: 0}
	assert.Equal(t, []smtp.PolicyRequest{want, want, unknown, unknown}, policyCalls)
	assert.NotContains(t, audit.Types(), smtp.EventMailAccepted)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c), "nothing of a refused envelope may be written")
}

// The longest addresses pass, and go on the wire as given.
func TestTranscriptAddressLimits(t *testing.T) {
	local64 := strings.Repeat("l", 64)
	addr254 := local64 + "@" + strings.Repeat("d", 189)
	require.Len(t, addr254, 254)
	mail := "MAIL FROM:<" + local64 + "@example.com>\r\n"
	rcpt := "RCPT TO:<" + addr254 + ">\r\n"
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
		fs.Expect(mail+rcpt+trBDAT("x\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
		fs.Expect("MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n"+trBDAT("bounce\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	_, err := c.Send(ctx, smtp.Envelope{From: local64 + "@example.com", To: []string{addr254}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	// The null reverse-path for a bounce.
	_, err = c.Send(ctx, smtp.Envelope{From: "", To: []string{"postmaster"}}, strings.NewReader("bounce\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+mail+rcpt+trBDAT("x\r\n")+"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n"+trBDAT("bounce\r\n")+"QUIT\r\n", trEnd(t, srv, c))
}

// With PIPELINING and CHUNKING a single-recipient message is one write:
// MAIL, RCPT, BDAT LAST and the body.
func TestTranscriptSendPipeliningChunking(t *testing.T) {
	body := "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
	tx := "MAIL FROM:<a@example.com> SIZE=" + strconv.Itoa(len(body)) + "\r\n" + trRcpt + trBDAT(body)
	audit := &trAudit{}
	srv, c, conn := trConnect(t, &smtp.Options{Audit: audit.hook}, trSteps(trHello("PIPELINING", "CHUNKING", "SIZE 10000", "ENHANCEDSTATUSCODES"),
		fs.Expect(tx), fs.Reply("250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.0.0 Ok: queued as 4Xk9Qz1234\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	out, err := c.Send(ctx, trEnv, strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, 250, out.Reply.Code)
	assert.Equal(t, "2.0.0", out.Reply.Enhanced)
	assert.Equal(t, "4Xk9Qz1234", out.QueueID)
	assert.Equal(t, []string{"b@example.com"}, out.Accepted)
	assert.Empty(t, out.Refused)
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+tx+"QUIT\r\n", trEnd(t, srv, c))
	assert.Equal(t, []string{trEHLO, tx, "QUIT\r\n"}, conn.Writes(), "the transaction leaves in one write")
	assert.Equal(t, []smtp.EventType{
		smtp.EventConnect, smtp.EventGreeting, smtp.EventEHLO,
		smtp.EventMailAccepted, smtp.EventRcptAccepted, smtp.EventMessage, smtp.EventQuit,
	}, audit.Types())
}

// With PIPELINING alone MAIL, RCPT and DATA go together; the body follows
// the 354.
func TestTranscriptSendPipeliningData(t *testing.T) {
	srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"),
		fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go ahead\r\n"),
		fs.Expect("hello\r\n.\r\n"), fs.Reply("250 OK id=1abcDE-000123-Fg\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	out, err := c.Send(ctx, trEnv, strings.NewReader("hello\r\n"))
	require.NoError(t, err)
	assert.Equal(t, "1abcDE-000123-Fg", out.QueueID)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+trMail+trRcpt+"DATA\r\nhello\r\n.\r\nQUIT\r\n", trEnd(t, srv, c))
	assert.Equal(t, []string{trEHLO, trMail + trRcpt + "DATA\r\n", "hello\r\n.\r\n", "QUIT\r\n"}, conn.Writes())
}

// Without PIPELINING every command waits for the reply to the one before.
func TestTranscriptSendNoPipelining(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			var caps []string
			var tail []fs.Step
			var wantWrites []string
			if chunking {
				caps = append(caps, "CHUNKING")
				tail = []fs.Step{fs.Expect(trBDAT("hi\r\n")), fs.Reply("250 Ok 0100018b1c2d-000000\r\n")}
				wantWrites = []string{trBDAT("hi\r\n")}
			} else {
				tail = []fs.Step{fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"), fs.Expect("hi\r\n.\r\n"), fs.Reply("250 Ok 0100018b1c2d-000000\r\n")}
				wantWrites = []string{"DATA\r\n", "hi\r\n.\r\n"}
			}
			srv, c, conn := trConnect(t, nil, trSteps(trHello(caps...),
				fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 ok\r\n"),
				fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 ok\r\n"),
				fs.ExpectLine("RCPT TO:<c@example.com>"), fs.Reply("250 ok\r\n"),
				tail, trQuit)...)
			ctx := trCtx(t)
			out, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "c@example.com"}}, strings.NewReader("hi\r\n"))
			require.NoError(t, err)
			assert.Equal(t, "0100018b1c2d-000000", out.QueueID)
			assert.Equal(t, []string{"b@example.com", "c@example.com"}, out.Accepted)
			require.NoError(t, c.Quit(ctx))
			trEnd(t, srv, c)
			want := append([]string{trEHLO, trMail, trRcpt, "RCPT TO:<c@example.com>\r\n"}, wantWrites...)
			assert.Equal(t, append(want, "QUIT\r\n"), conn.Writes())
		})
	}
}

// Dot-stuffing and the end of the body, on the wire, for DATA and BDAT.
func TestTranscriptBodyEncoding(t *testing.T) {
	tests := []struct {
		name, body, data, bdat string
	}{
		{"empty", "", ".\r\n", ""},
		{"no final CRLF", "a", "a\r\n.\r\n", "a\r\n"},
		{"final CRLF", "a\r\n", "a\r\n.\r\n", "a\r\n"},
		{"blank last line", "a\r\n\r\n", "a\r\n\r\n.\r\n", "a\r\n\r\n"},
		{"leading dots", ".a\r\n..b\r\n.\r\n", "..a\r\n...b\r\n..\r\n.\r\n", ".a\r\n..b\r\n.\r\n"},
		{"lone dot line inside", "a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n", "a\r\n.\r\nb\r\n"},
		{"dot not at line start", "a.b\r\nc.\r\n", "a.b\r\nc.\r\n.\r\n", "a.b\r\nc.\r\n"},
		{"only a dot", ".", "..\r\n.\r\n", ".\r\n"},
	}
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			caps := []string{"PIPELINING"}
			script := trHello()
			want := trEHLO
			for _, tt := range tests {
				if chunking {
					w := trMail + trRcpt + trBDAT(tt.bdat)
					script = append(script, fs.Expect(w), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"))
					want += w
				} else {
					script = append(script,
						fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"),
						fs.Expect(tt.data), fs.Reply("250 ok\r\n"))
					want += trMail + trRcpt + "DATA\r\n" + tt.data
				}
			}
			if chunking {
				caps = append(caps, "CHUNKING")
			}
			script[2] = fs.Reply(trCaps(caps...))
			srv, c, _ := trConnect(t, nil, trSteps(script, trQuit)...)
			ctx := trCtx(t)
			for _, tt := range tests {
				// An opaque reader: no SIZE, and the body streams.
				_, err := c.Send(ctx, trEnv, trOpaque{strings.NewReader(tt.body)})
				require.NoError(t, err, tt.name)
			}
			require.NoError(t, c.Quit(ctx))
			got := trEnd(t, srv, c)
			assert.Equal(t, want+"QUIT\r\n", got)
			if !chunking {
				// Exactly one end-of-data per message.
				assert.Equal(t, len(tests), strings.Count("\r\n"+got, "\r\n.\r\n"))
			}
		})
	}
}

// ESMTP parameters on MAIL and RCPT.
func TestTranscriptESMTPParameters(t *testing.T) {
	dsnEnv := smtp.Envelope{
		From: "a@example.com", To: []string{"b+tag@example.com"},
		EightBitMIME: true, SMTPUTF8: true,
		DSN: &smtp.DSN{Return: "hdrs", EnvID: "a+b=c d", Notify: []string{"success", "Failure"}, OriginalRecipient: true},
	}
	w1 := "MAIL FROM:<a@example.com> SIZE=3 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=a+2Bb+3Dc+20d\r\n" +
		"RCPT TO:<b+tag@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Btag@example.com\r\nDATA\r\n"
	w2 := "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SIZE=3 SMTPUTF8\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
	w3 := "MAIL FROM:<a@example.com> SIZE=1234\r\n" + trRcpt + "DATA\r\n"
	w4 := trMail + trRcpt + "DATA\r\n"
	w5 := "MAIL FROM:<a@example.com> RET=FULL\r\nRCPT TO:<b@example.com> NOTIFY=NEVER\r\nDATA\r\n"
	ok := func(w string) []fs.Step {
		return []fs.Step{fs.Expect(w), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"), fs.Expect("x\r\n.\r\n"), fs.Reply("250 ok\r\n")}
	}
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "SIZE 10000", "8BITMIME", "SMTPUTF8", "DSN"),
		ok(w1), ok(w2), ok(w3), ok(w4), ok(w5), trQuit)...)
	ctx := trCtx(t)
	_, err := c.Send(ctx, dsnEnv, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	// A non-ASCII address asks for SMTPUTF8 by itself.
	_, err = c.Send(ctx, smtp.Envelope{From: "δοκιμή@παράδειγμα.δοκιμή", To: []string{"b@example.com"}}, bytes.NewReader([]byte("x\r\n")))
	require.NoError(t, err)
	// A size the reader cannot tell comes from the envelope...
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, Size: 1234}, trOpaque{strings.NewReader("x\r\n")})
	require.NoError(t, err)
	// ... or is left out.
	_, err = c.Send(ctx, trEnv, trOpaque{strings.NewReader("x\r\n")})
	require.NoError(t, err)
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, DSN: &smtp.DSN{Return: "FULL", Notify: []string{"NEVER"}}}, trOpaque{strings.NewReader("x\r\n")})
	require.NoError(t, err)
	// Bad DSN values are refused before any byte.
	for _, d := range []*smtp.DSN{{Return: "ALL"}, {Notify: []string{"NEVER", "SUCCESS"}}, {Notify: []string{"SOMETIMES"}}, {EnvID: strings.Repeat("e", 101)}} {
		_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, DSN: d}, strings.NewReader("x\r\n"))
		trErr(t, err, smtp.OpMAIL, smtp.KindInvalidInput)
	}
	require.NoError(t, c.Quit(ctx))
	data := "x\r\n.\r\n"
	assert.Equal(t, trEHLO+w1+data+w2+data+w3+data+w4+data+w5+data+"QUIT\r\n", trEnd(t, srv, c))
}

// No SIZE= for a server that did not advertise SIZE.
func TestTranscriptNoSizeParameterWithoutSIZE(t *testing.T) {
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
		fs.Expect(trMail+trRcpt+trBDAT("x\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"), trQuit)...)
	ctx := trCtx(t)
	_, err := c.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}, Size: 99}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+trMail+trRcpt+trBDAT("x\r\n")+"QUIT\r\n", trEnd(t, srv, c))
}

// --- 5. Body safety -----------------------------------------------------

// A bare CR or LF is refused: with BDAT the transaction is reset and the
// session goes on; with DATA the session is dropped before any of it.
func TestTranscriptBareLineEnds(t *testing.T) {
	for _, body := range []string{"a\r\nb\n.\nc\r\n", "a\rb\r\n", "a\r\nb\r"} {
		t.Run(fmt.Sprintf("BDAT %q", body), func(t *testing.T) {
			srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
				fs.Expect(trMail+trRcpt+"RSET\r\n"), fs.Reply("250 ok\r\n250 ok\r\n250 reset\r\n"),
				fs.Expect(trMail+trRcpt+trBDAT("ok\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
				trQuit)...)
			ctx := trCtx(t)
			_, err := c.Send(ctx, trEnv, strings.NewReader(body))
			trErr(t, err, smtp.OpBody, smtp.KindInvalidInput)
			assert.True(t, smtp.IsPermanent(err))
			assert.Equal(t, smtp.StateReady, c.State())
			_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.Quit(ctx))
			assert.Equal(t, trEHLO+trMail+trRcpt+"RSET\r\n"+trMail+trRcpt+trBDAT("ok\r\n")+"QUIT\r\n", trEnd(t, srv, c))
		})
		t.Run(fmt.Sprintf("DATA %q", body), func(t *testing.T) {
			srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"),
				fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"), fs.Stall())...)
			ctx := trCtx(t)
			_, err := c.Send(ctx, trEnv, strings.NewReader(body))
			trErr(t, err, smtp.OpBody, smtp.KindInvalidInput)
			assert.Equal(t, smtp.StateClosed, c.State())
			assert.ErrorIs(t, c.Noop(ctx), smtp.ErrClosed)
			assert.Equal(t, trEHLO+trMail+trRcpt+"DATA\r\n", trEnd(t, srv, c))
		})
	}
}

func TestTranscriptNormalizeLineEndings(t *testing.T) {
	srv, c, _ := trConnect(t, &smtp.Options{NormalizeLineEndings: true}, trSteps(trHello("PIPELINING"),
		fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"),
		fs.Expect("a\r\n..\r\nb\r\nc\r\n\r\nd\r\n.\r\n"), fs.Reply("250 ok\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	_, err := c.Send(ctx, trEnv, strings.NewReader("a\n.\nb\rc\r\n\nd"))
	require.NoError(t, err)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+trMail+trRcpt+"DATA\r\na\r\n..\r\nb\r\nc\r\n\r\nd\r\n.\r\nQUIT\r\n", trEnd(t, srv, c))
}

// trFailingReader returns its data, then err.
type trFailingReader struct {
	data []byte
	err  error
}

func (r *trFailingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// A body that goes bad after its first chunk has left: with BDAT the
// transaction is abandoned by RSET after the last good chunk (the bad
// chunk never leaves) and the session stays usable; with DATA the
// connection is dropped before the final dot.
func TestTranscriptBodyFailsMidStream(t *testing.T) {
	const chunk = 512
	// 16 lines of 62 octets and CRLF: exactly 1024 octets, two chunks.
	good := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 16)
	errBoom := errors.New("disk on fire")
	long := strings.Repeat("y", 999) + "\r\n"
	tests := []struct {
		name   string
		body   func() io.Reader
		opts   smtp.Options
		kind   smtp.Kind
		target error
		// more is what the BDAT stream carries after the two good
		// chunks: a line is known to be too long only at its 999th
		// octet, so its first 512 octets are a good chunk.
		more string
		// allowed is the longest prefix of the body that may be sent.
		allowed string
	}{
		{name: "reader error", body: func() io.Reader { return &trFailingReader{data: []byte(good), err: errBoom} }, kind: smtp.KindInvalidInput, target: errBoom, allowed: good},
		{name: "bare LF", body: func() io.Reader { return trOpaque{strings.NewReader(good + "bad\nline\r\n")} }, kind: smtp.KindInvalidInput, allowed: good + "bad"},
		{name: "bare CR", body: func() io.Reader { return trOpaque{strings.NewReader(good + "bad\rline\r\n")} }, kind: smtp.KindInvalidInput, allowed: good + "bad"},
		{name: "line over 998", body: func() io.Reader { return trOpaque{strings.NewReader(good + long)} }, kind: smtp.KindInvalidInput, more: "BDAT 512\r\n" + long[:512], allowed: good + long[:998]},
		{name: "MaxMessageSize", body: func() io.Reader { return trOpaque{strings.NewReader(good + good)} }, opts: smtp.Options{MaxMessageSize: 1500}, kind: smtp.KindPolicy, allowed: good + good[:1500-len(good)]},
	}
	for _, tt := range tests {
		t.Run("BDAT "+tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.ChunkSize = chunk
			first := trMail + trRcpt + "BDAT 512\r\n" + good[:chunk] + "BDAT 512\r\n" + good[chunk:] + tt.more + "RSET\r\n"
			replies := "250 ok\r\n250 ok\r\n250 chunk\r\n250 chunk\r\n250 reset\r\n"
			if tt.more != "" {
				replies = "250 chunk\r\n" + replies
			}
			srv, c, _ := trConnect(t, &opts, trSteps(trHello("PIPELINING", "CHUNKING"),
				fs.Expect(first), fs.Reply(replies),
				fs.Expect(trMail+trRcpt+trBDAT("ok\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
				trQuit)...)
			ctx := trCtx(t)
			_, err := c.Send(ctx, trEnv, tt.body())
			trErr(t, err, smtp.OpBody, tt.kind)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			}
			assert.NotErrorIs(t, err, smtp.ErrOutcomeUnknown)
			assert.Equal(t, smtp.StateReady, c.State())
			_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.Quit(ctx))
			assert.Equal(t, trEHLO+first+trMail+trRcpt+trBDAT("ok\r\n")+"QUIT\r\n", trEnd(t, srv, c))
		})
		t.Run("DATA "+tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.ChunkSize = chunk
			srv, c, _ := trConnect(t, &opts, trSteps(trHello("PIPELINING"),
				fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"), fs.Stall())...)
			ctx := trCtx(t)
			tx, err := c.WriteTx(ctx, trEnv, tt.body())
			require.NoError(t, err)
			_, err = c.ReadTx(ctx, tx)
			trErr(t, err, smtp.OpBody, tt.kind)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			}
			assert.False(t, tx.Committed())
			assert.False(t, smtp.TxReplayable(tx), "a bad body fails again on any session")
			assert.Equal(t, smtp.StateClosed, c.State())
			got := trEnd(t, srv, c)
			assert.True(t, strings.HasPrefix(got, trEHLO+trMail+trRcpt+"DATA\r\n"), got)
			assert.NotContains(t, got, "\r\n.\r\n", "the final dot must never be written")
			assert.True(t, strings.HasPrefix(tt.allowed, got[len(trEHLO+trMail+trRcpt+"DATA\r\n"):]), "only good octets left")
		})
	}
}

// --- 6. Recipients ------------------------------------------------------

var trTwo = smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "c@example.com"}}

const trRcpt2 = "RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"

// All or nothing with several recipients: the commit waits for the RCPT
// replies. WriteTx writes the envelope only; the body (BDAT) or DATA
// leaves after the replies are read.
func TestTranscriptAllOrNothingWaitsForReplies(t *testing.T) {
	t.Run("BDAT", func(t *testing.T) {
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
			fs.Expect(trMail+trRcpt2), fs.Reply("250 ok\r\n250 ok\r\n251 will forward\r\n"),
			fs.Expect(trBDAT("body\r\n")), fs.Reply("250 ok: queued as Q1\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trTwo, strings.NewReader("body\r\n"))
		require.NoError(t, err)
		assert.Equal(t, []string{trEHLO}, conn.Writes(), "the envelope waits in the buffer")
		assert.False(t, tx.Committed())
		assert.False(t, smtp.TxDone(tx))
		out, err := c.ReadTx(ctx, tx)
		require.NoError(t, err)
		assert.True(t, tx.Committed())
		assert.True(t, smtp.TxDone(tx))
		assert.Equal(t, []string{"b@example.com", "c@example.com"}, out.Accepted, "251 is an acceptance")
		assert.Equal(t, "Q1", out.QueueID)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
		assert.Equal(t, []string{trEHLO, trMail + trRcpt2, trBDAT("body\r\n"), "QUIT\r\n"}, conn.Writes())
	})
	t.Run("DATA", func(t *testing.T) {
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(trMail+trRcpt2), fs.Reply("250 ok\r\n250 ok\r\n252 cannot verify\r\n"),
			fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"),
			fs.Expect("body\r\n.\r\n"), fs.Reply("250 ok: queued as Q1\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trTwo, strings.NewReader("body\r\n"))
		require.NoError(t, err)
		out, err := c.ReadTx(ctx, tx)
		require.NoError(t, err)
		assert.Equal(t, []string{"b@example.com", "c@example.com"}, out.Accepted)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
		assert.Equal(t, []string{trEHLO, trMail + trRcpt2, "DATA\r\n", "body\r\n.\r\n", "QUIT\r\n"}, conn.Writes())
	})
}

// One refusal among several recipients: RSET, nothing delivered, and the
// error lists every refusal with its reply.
func TestTranscriptRecipientRefused(t *testing.T) {
	env := smtp.Envelope{From: "a@example.com", To: []string{"ok1@example.com", "bad1@example.com", "ok2@example.com", "bad2@example.com"}}
	rcpts := "RCPT TO:<ok1@example.com>\r\nRCPT TO:<bad1@example.com>\r\nRCPT TO:<ok2@example.com>\r\nRCPT TO:<bad2@example.com>\r\n"
	replies := "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n452 4.2.2 mailbox full\r\n"
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			caps := []string{"PIPELINING", "ENHANCEDSTATUSCODES"}
			if chunking {
				caps = append(caps, "CHUNKING")
			}
			audit := &trAudit{}
			srv, c, _ := trConnect(t, &smtp.Options{Audit: audit.hook}, trSteps(trHello(caps...),
				fs.Expect(trMail+rcpts), fs.Reply(replies),
				fs.ExpectLine("RSET"), fs.Reply("250 2.0.0 reset\r\n"),
				fs.ExpectLine("NOOP"), fs.Reply("250 2.0.0 ok\r\n"),
				trQuit)...)
			ctx := trCtx(t)
			out, err := c.Send(ctx, env, strings.NewReader("body\r\n"))
			assert.Nil(t, out)
			se := trErr(t, err, smtp.OpRCPT, smtp.KindRejected)
			assert.Equal(t, "bad1@example.com", se.Recipient)
			assert.Equal(t, 550, se.Code)
			assert.Equal(t, "5.1.1", se.Enhanced)
			require.Len(t, se.Refused, 2)
			assert.Equal(t, "bad1@example.com", se.Refused[0].Address)
			assert.Equal(t, 550, se.Refused[0].Reply.Code)
			assert.Equal(t, "bad2@example.com", se.Refused[1].Address)
			assert.Equal(t, 452, se.Refused[1].Reply.Code)
			assert.Equal(t, "4.2.2", se.Refused[1].Reply.Enhanced)
			assert.Equal(t, "mailbox full", se.Refused[1].Reply.Text())
			msg := err.Error()
			assert.Contains(t, msg, "2 of 4 recipients refused")
			assert.Contains(t, msg, "<bad2@example.com> 452 4.2.2 mailbox full")
			assert.Equal(t, smtp.StateReady, c.State())
			require.NoError(t, c.Noop(ctx), "the session stays usable")
			require.NoError(t, c.Quit(ctx))
			assert.Equal(t, trEHLO+trMail+rcpts+"RSET\r\nNOOP\r\nQUIT\r\n", trEnd(t, srv, c))
			var refused, accepted []string
			for _, e := range audit.Events() {
				switch e.Type {
				case smtp.EventRcptRefused:
					refused = append(refused, e.Recipient)
				case smtp.EventRcptAccepted:
					accepted = append(accepted, e.Recipient)
				}
			}
			assert.Equal(t, []string{"bad1@example.com", "bad2@example.com"}, refused, "every RCPT reply is reported")
			assert.Equal(t, []string{"ok1@example.com", "ok2@example.com"}, accepted)
			assert.Contains(t, audit.Types(), smtp.EventReset)
			assert.Contains(t, audit.Types(), smtp.EventMessageFailed)
			assert.NotContains(t, audit.Types(), smtp.EventMessage)
		})
	}
}

// AllowPartial delivers to the accepted recipients, without waiting for
// the RCPT replies, and reports the refused ones in the Outcome.
func TestTranscriptAllowPartial(t *testing.T) {
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "bad@example.com"}, AllowPartial: true}
	rcpts := "RCPT TO:<b@example.com>\r\nRCPT TO:<bad@example.com>\r\n"
	t.Run("DATA", func(t *testing.T) {
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(trMail+rcpts+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n550 no such user\r\n354 go\r\n"),
			fs.Expect("x\r\n.\r\n"), fs.Reply("250 ok\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		out, err := c.Send(ctx, env, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		assert.Equal(t, []string{"b@example.com"}, out.Accepted)
		require.Len(t, out.Refused, 1)
		assert.Equal(t, "bad@example.com", out.Refused[0].Address)
		assert.Equal(t, 550, out.Refused[0].Reply.Code)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
		assert.Equal(t, []string{trEHLO, trMail + rcpts + "DATA\r\n", "x\r\n.\r\n", "QUIT\r\n"}, conn.Writes())
	})
	t.Run("BDAT", func(t *testing.T) {
		w := trMail + rcpts + trBDAT("x\r\n")
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
			fs.Expect(w), fs.Reply("250 ok\r\n550 no such user\r\n250 ok\r\n250 ok\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		out, err := c.Send(ctx, env, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		assert.Equal(t, []string{"bad@example.com"}, out.Accepted)
		require.Len(t, out.Refused, 1)
		assert.Equal(t, "b@example.com", out.Refused[0].Address)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
		assert.Equal(t, []string{trEHLO, w, "QUIT\r\n"}, conn.Writes())
	})
	t.Run("all refused", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(trMail+rcpts+"DATA\r\n"), fs.Reply("250 ok\r\n550 no\r\n550 no\r\n554 no valid recipients\r\n"),
			// The next transaction starts clean.
			fs.Expect("RSET\r\n"+trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
			fs.Expect("y\r\n.\r\n"), fs.Reply("250 ok\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		_, err := c.Send(ctx, env, strings.NewReader("x\r\n"))
		se := trErr(t, err, smtp.OpRCPT, smtp.KindRejected)
		assert.Contains(t, err.Error(), "every recipient was refused")
		assert.Len(t, se.Refused, 2)
		_, err = c.Send(ctx, trEnv, strings.NewReader("y\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Quit(ctx))
		assert.Equal(t, trEHLO+trMail+rcpts+"DATA\r\nRSET\r\n"+trMail+trRcpt+"DATA\r\ny\r\n.\r\nQUIT\r\n", trEnd(t, srv, c))
	})
}

// A single refused recipient, pipelined with everything else: the error
// is the RCPT refusal, not the DATA or BDAT refusal that follows it.
func TestTranscriptSingleRecipientRefused(t *testing.T) {
	t.Run("DATA", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"),
			fs.Expect("RSET\r\n"+trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
			fs.Expect("ok\r\n.\r\n"), fs.Reply("250 ok\r\n"), trQuit)...)
		ctx := trCtx(t)
		_, err := c.Send(ctx, trEnv, strings.NewReader("x\r\n"))
		se := trErr(t, err, smtp.OpRCPT, smtp.KindRejected)
		assert.Equal(t, 550, se.Code)
		assert.Equal(t, "b@example.com", se.Recipient)
		_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
	})
	t.Run("BDAT", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
			fs.Expect(trMail+trRcpt+trBDAT("x\r\n")), fs.Reply("250 ok\r\n550 5.1.1 unknown\r\n503 5.5.1 no valid recipients\r\n"),
			fs.Expect("RSET\r\n"+trMail+trRcpt+trBDAT("ok\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		_, err := c.Send(ctx, trEnv, strings.NewReader("x\r\n"))
		se := trErr(t, err, smtp.OpRCPT, smtp.KindRejected)
		assert.Equal(t, 550, se.Code)
		_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
	})
}

// TestTranscriptServerAnswersMAILWith503ThenQueuesTheBDATBodyIsADelivery:
// a server that still held an earlier transaction open (its refused
// BDAT LAST left it so) answers the next pipelined MAIL with "503 nested
// MAIL command", then takes that message's RCPT and body into the open
// transaction and queues it. The final 250 is the server taking the
// message: Send reports the delivery (a refusal would be false, and a
// replay would deliver it twice), and the next transaction starts with
// RSET.
func TestTranscriptServerAnswersMAILWith503ThenQueuesTheBDATBodyIsADelivery(t *testing.T) {
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
		fs.Expect(trMail+trRcpt+trBDAT("x\r\n")), fs.Reply("503 5.5.1 Error: nested MAIL command\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 4XQ1\r\n"),
		fs.Expect("RSET\r\n"+trMail+trRcpt+trBDAT("ok\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	out, err := c.Send(ctx, trEnv, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assert.Equal(t, "4XQ1", out.QueueID)
	_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.Quit(ctx))
	trEnd(t, srv, c)
}

// TestTranscriptServerRefusesMAILTakesTheBodyAndHangsUpOutcomeUnknown:
// MAIL refused (451, or 503 nested MAIL), the recipient accepted, BDAT
// LAST written with them, and the server closes before its final reply.
// It may have queued the message into a transaction it still held open,
// so the outcome is unknown: not the MAIL refusal (a temporary error
// invites a retry, which would deliver it twice) and not replayable.
func TestTranscriptServerRefusesMAILTakesTheBodyAndHangsUpOutcomeUnknown(t *testing.T) {
	for _, mail := range []string{"451 4.3.0 try later", "503 5.5.1 Error: nested MAIL command"} {
		t.Run(mail[:3], func(t *testing.T) {
			srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
				fs.Expect(trMail+trRcpt+trBDAT("x\r\n")), fs.Reply(mail+"\r\n250 2.1.5 Ok\r\n"), fs.Close())...)
			ctx := trCtx(t)
			tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
			require.NoError(t, err)
			_, err = c.ReadTx(ctx, tx)
			assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
			assert.False(t, smtp.TxReplayable(tx))
			trEnd(t, srv, c)
		})
	}
}

// Refusals at the other steps: MAIL, DATA, the final reply, a BDAT chunk.
func TestTranscriptRefusals(t *testing.T) {
	tests := []struct {
		name   string
		caps   []string
		script []fs.Step
		op     smtp.Op
		code   int
		next   string // what the next transaction starts with
	}{
		{
			name:   "MAIL refused, pipelined",
			caps:   []string{"PIPELINING"},
			script: []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("552 5.3.4 too big\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n")},
			op:     smtp.OpMAIL, code: 552, next: "RSET\r\n",
		},
		{
			name:   "MAIL refused, one at a time",
			script: []fs.Step{fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("451 4.3.0 later\r\n")},
			op:     smtp.OpMAIL, code: 451, next: "RSET\r\n",
		},
		{
			name:   "DATA refused",
			caps:   []string{"PIPELINING"},
			script: []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n")},
			op:     smtp.OpDATA, code: 451, next: "RSET\r\n",
		},
		{
			name:   "final reply refused (DATA)",
			caps:   []string{"PIPELINING"},
			script: []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"), fs.Expect("x\r\n.\r\n"), fs.Reply("554 5.7.1 spam\r\n")},
			// Some servers (Mailpit while it shuts down) refuse the
			// next MAIL with 503 unless RSET comes first.
			op: smtp.OpDATA, code: 554, next: "RSET\r\n",
		},
		{
			name:   "final reply refused (BDAT)",
			caps:   []string{"PIPELINING", "CHUNKING"},
			script: []fs.Step{fs.Expect(trMail + trRcpt + trBDAT("x\r\n")), fs.Reply("250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n")},
			op:     smtp.OpBDAT, code: 554, next: "RSET\r\n",
		},
		{
			name: "non-final chunk refused",
			caps: []string{"CHUNKING"},
			script: []fs.Step{
				fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 ok\r\n"),
				fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 ok\r\n"),
				fs.Expect("BDAT 512\r\n" + strings.Repeat("z", 510) + "\r\n"), fs.Reply("552 5.3.4 no room\r\n"),
				fs.ExpectLine("RSET"), fs.Reply("250 ok\r\n"),
			},
			op: smtp.OpBDAT, code: 552,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := "x\r\n"
			if tt.name == "non-final chunk refused" {
				body = strings.Repeat("z", 510) + "\r\n" + strings.Repeat("z", 600) + "\r\n"
			}
			mode := "DATA\r\n"
			if len(tt.caps) > 0 && tt.caps[len(tt.caps)-1] == "CHUNKING" {
				mode = trBDAT("ok\r\n")
			}
			next := tt.next + trMail + trRcpt + mode
			var after []fs.Step
			if slicesContains(tt.caps, "PIPELINING") {
				replies := "250 ok\r\n250 ok\r\n"
				if tt.next != "" {
					replies = "250 ok\r\n" + replies
				}
				if mode == "DATA\r\n" {
					after = []fs.Step{fs.Expect(next), fs.Reply(replies + "354 go\r\n"), fs.Expect("ok\r\n.\r\n"), fs.Reply("250 ok\r\n")}
				} else {
					after = []fs.Step{fs.Expect(next), fs.Reply(replies + "250 ok\r\n")}
				}
			} else {
				if tt.next != "" {
					after = append(after, fs.ExpectLine("RSET"), fs.Reply("250 ok\r\n"))
				}
				after = append(after, fs.ExpectLine("MAIL FROM:<a@example.com>"), fs.Reply("250 ok\r\n"), fs.ExpectLine("RCPT TO:<b@example.com>"), fs.Reply("250 ok\r\n"))
				if mode == "DATA\r\n" {
					after = append(after, fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"), fs.Expect("ok\r\n.\r\n"), fs.Reply("250 ok\r\n"))
				} else {
					after = append(after, fs.Expect(mode), fs.Reply("250 ok\r\n"))
				}
			}
			srv, c, conn := trConnect(t, &smtp.Options{ChunkSize: 512}, trSteps(trHello(append(tt.caps, "ENHANCEDSTATUSCODES")...), tt.script, after, trQuit)...)
			ctx := trCtx(t)
			_, err := c.Send(ctx, trEnv, trOpaque{strings.NewReader(body)})
			se := trErr(t, err, tt.op, smtp.KindRejected)
			assert.Equal(t, tt.code, se.Code)
			assert.Equal(t, tt.code < 500, smtp.IsTemporary(err))
			assert.Equal(t, tt.code >= 500, smtp.IsPermanent(err))
			assert.NotEmpty(t, se.Enhanced)
			assert.Equal(t, smtp.StateReady, c.State())
			_, err = c.Send(ctx, trEnv, strings.NewReader("ok\r\n"))
			require.NoError(t, err)
			require.NoError(t, c.Quit(ctx))
			trEnd(t, srv, c)
			if !slicesContains(tt.caps, "PIPELINING") {
				// One command at a time, RSET included.
				for _, w := range conn.Writes() {
					if !strings.HasPrefix(w, "BDAT ") && !strings.HasSuffix(w, "\r\n.\r\n") {
						assert.Equal(t, 1, strings.Count(w, "\r\n"), "several commands in one write without PIPELINING: %q", w)
					}
				}
			}
		})
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A 421 at any step ends the session: the error carries it, and the
// session is closed without QUIT.
func TestTranscriptSend421(t *testing.T) {
	tests := []struct {
		name    string
		caps    []string
		script  []fs.Step
		op      smtp.Op
		unknown bool
	}{
		{"MAIL", []string{"PIPELINING"}, []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("421 4.3.2 bye\r\n")}, smtp.OpMAIL, false},
		{"RCPT", []string{"PIPELINING"}, []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("250 ok\r\n421 4.3.2 bye\r\n")}, smtp.OpRCPT, false},
		{"DATA", []string{"PIPELINING"}, []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n421 4.3.2 bye\r\n")}, smtp.OpDATA, false},
		{"final", []string{"PIPELINING"}, []fs.Step{fs.Expect(trMail + trRcpt + "DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"), fs.Expect("x\r\n.\r\n"), fs.Reply("421 4.3.2 bye\r\n")}, smtp.OpDATA, false},
		{"BDAT", []string{"PIPELINING", "CHUNKING"}, []fs.Step{fs.Expect(trMail + trRcpt + trBDAT("x\r\n")), fs.Reply("250 ok\r\n250 ok\r\n421 4.3.2 bye\r\n")}, smtp.OpBDAT, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, c, _ := trConnect(t, nil, trSteps(trHello(append(tt.caps, "ENHANCEDSTATUSCODES")...), tt.script, fs.Close())...)
			ctx := trCtx(t)
			tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
			require.NoError(t, err)
			_, err = c.ReadTx(ctx, tx)
			se := trErr(t, err, tt.op, smtp.KindRejected)
			assert.Equal(t, 421, se.Code)
			assert.Equal(t, "4.3.2", se.Enhanced)
			assert.True(t, smtp.IsTemporary(err))
			assert.True(t, smtp.TxReplayable(tx), "the server processes nothing after a 421")
			assert.Equal(t, smtp.StateClosed, c.State())
			assert.ErrorIs(t, c.Quit(ctx), smtp.ErrClosed)
			assert.NotContains(t, trEnd(t, srv, c), "QUIT")
		})
	}
}

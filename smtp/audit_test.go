package smtp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/smtp"
)

// auditEvents are events with addresses in every place one can be.
var auditEvents = []smtp.Event{
	{Type: smtp.EventMailAccepted, Session: 7, Op: smtp.OpMAIL, Code: 250, From: "alice@example.com", MessageID: "<m1@example.com>", Tag: "order-8812"},
	{Type: smtp.EventRcptAccepted, Session: 7, Op: smtp.OpRCPT, Code: 250, Recipient: "Bob@Example.NET", MessageID: "<m1@example.com>", Tag: "order-8812"},
	{Type: smtp.EventRcptRefused, Session: 7, Op: smtp.OpRCPT, Code: 550, Enhanced: "5.1.1", Recipient: "carol@example.net", MessageID: "<m1@example.com>", Tag: "order-8812"},
	{Type: smtp.EventMessageFailed, Session: 7, Op: smtp.OpRCPT, Code: 550, Kind: smtp.KindRejected, MessageID: "<m1@example.com>", Tag: "order-8812",
		Error: "smtp: RCPT <carol@example.net>: rejected: 550 5.1.1: <carol@example.net>: Recipient address rejected (refused: <carol@example.net> 550; <dave@example.net> 550;)"},
	{Type: smtp.EventMessage, Session: 7, Op: smtp.OpDATA, Code: 250, QueueID: "Q1", MessageID: "<m1@example.com>", Tag: "order-8812"},
}

// logJSON runs events through hook into JSON lines at Debug.
func logJSON(t *testing.T, mk func(*slog.Logger) func(smtp.Event)) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	hook := mk(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	for _, e := range auditEvents {
		hook(e)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	require.Len(t, out, len(auditEvents))
	return out
}

func TestSlogAuditCorrelation(t *testing.T) {
	lines := logJSON(t, smtp.SlogAudit)
	for _, m := range lines {
		assert.Equal(t, "<m1@example.com>", m["message_id"], "%v", m)
		assert.Equal(t, "order-8812", m["tag"], "%v", m)
		assert.EqualValues(t, 7, m["session"])
	}
	// The default keeps addresses, at Debug for MAIL and accepted RCPT.
	assert.Equal(t, "DEBUG", lines[0]["level"])
	assert.Equal(t, "alice@example.com", lines[0]["from"])
	assert.Equal(t, "Bob@Example.NET", lines[1]["rcpt"])
	assert.Equal(t, "carol@example.net", lines[2]["rcpt"])
	assert.Contains(t, lines[3]["error"], "<dave@example.net>")
	assert.Equal(t, "INFO", lines[4]["level"])
	assert.Equal(t, "Q1", lines[4]["queue_id"])
}

func TestSlogAuditAddresses(t *testing.T) {
	addrs := []string{"alice@example.com", "Bob@Example.NET", "carol@example.net", "dave@example.net"}
	all := func(lines []map[string]any) string {
		b, err := json.Marshal(lines)
		require.NoError(t, err)
		return string(b)
	}

	t.Run("drop", func(t *testing.T) {
		lines := logJSON(t, func(l *slog.Logger) func(smtp.Event) {
			return smtp.SlogAuditWith(l, smtp.SlogAuditOptions{Addresses: smtp.AddressesDrop})
		})
		out := all(lines)
		for _, a := range addrs {
			assert.NotContains(t, out, a)
		}
		for _, m := range lines {
			assert.NotContains(t, m, "from")
			assert.NotContains(t, m, "rcpt")
		}
		assert.Equal(t, "smtp: RCPT <[address]>: rejected: 550 5.1.1: <[address]>: Recipient address rejected (refused: <[address]> 550; <[address]> 550;)", lines[3]["error"])
		assert.Equal(t, "<m1@example.com>", lines[3]["message_id"], "the Message-ID is kept: it names the message, not a person")
	})

	t.Run("hash", func(t *testing.T) {
		opts := smtp.SlogAuditOptions{Addresses: smtp.AddressesHash, HashKey: []byte("k1")}
		lines := logJSON(t, func(l *slog.Logger) func(smtp.Event) { return smtp.SlogAuditWith(l, opts) })
		out := all(lines)
		for _, a := range addrs {
			assert.NotContains(t, out, a)
		}
		carol := opts.HashAddress("carol@example.net")
		assert.Regexp(t, `^h:[0-9a-f]{16}$`, carol)
		assert.Equal(t, opts.HashAddress("alice@example.com"), lines[0]["from"])
		assert.Equal(t, carol, lines[2]["rcpt"], "one address, one hash: its lines can be found together")
		assert.Contains(t, lines[3]["error"], "<"+carol+">")
		assert.Contains(t, lines[3]["error"], "<"+opts.HashAddress("dave@example.net")+">")

		other := smtp.SlogAuditOptions{Addresses: smtp.AddressesHash, HashKey: []byte("k2")}
		assert.NotEqual(t, carol, other.HashAddress("carol@example.net"), "the key changes the hash")
		unkeyed := smtp.SlogAuditOptions{Addresses: smtp.AddressesHash}
		assert.Equal(t, unkeyed.HashAddress("x@y"), unkeyed.HashAddress("x@y"))
		assert.NotEqual(t, unkeyed.HashAddress("x@y"), opts.HashAddress("x@y"))
	})
}

// ctxKey is a context key of the test's own.
type ctxKey struct{}

// ctxHandler records the value of ctxKey in each record's context.
type ctxHandler struct {
	slog.Handler
	seen *[]any
}

func (h ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	*h.seen = append(*h.seen, ctx.Value(ctxKey{}))
	return h.Handler.Handle(ctx, r)
}

// TestSlogAuditContext: the hook logs with the context it is given, so
// a handler that reads a request's values from it finds them.
func TestSlogAuditContext(t *testing.T) {
	var buf bytes.Buffer
	var seen []any
	l := slog.New(ctxHandler{Handler: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), seen: &seen})
	hook := smtp.SlogAuditContext(l, smtp.SlogAuditOptions{})
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "req-1"))
	cancel()
	hook(context.WithoutCancel(ctx), auditEvents[4])
	hook(nil, auditEvents[4]) //nolint:staticcheck // a nil context is logged with context.Background
	smtp.SlogAudit(l)(auditEvents[4])
	assert.Equal(t, []any{"req-1", nil, nil}, seen)
	assert.Contains(t, buf.String(), `message_id=<m1@example.com> tag=order-8812`)
}

package smtp

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strings"
)

// EventType says what an audit [Event] records.
type EventType string

// The audit events a session emits.
const (
	EventConnect        EventType = "connect"         // Connect began on a transport
	EventGreeting       EventType = "greeting"        // the server's greeting was read
	EventEHLO           EventType = "ehlo"            // EHLO (or HELO) was answered
	EventTLS            EventType = "tls"             // STARTTLS upgraded the session
	EventAuth           EventType = "auth"            // AUTH finished, well or not
	EventMailAccepted   EventType = "mail"            // MAIL FROM was accepted
	EventRcptAccepted   EventType = "rcpt-accepted"   // a RCPT TO was accepted
	EventRcptRefused    EventType = "rcpt-refused"    // a RCPT TO was refused
	EventMessage        EventType = "message"         // the final reply accepted the message
	EventMessageFailed  EventType = "message-failed"  // the transaction failed
	EventReset          EventType = "reset"           // RSET was answered
	EventQuit           EventType = "quit"            // QUIT was answered
	EventSessionAborted EventType = "session-aborted" // the session broke and was closed
)

// Event is one audit record. It carries codes, steps, addresses and
// mechanism names; never a credential, a token or message content. The
// fields that come from the server (QueueID, Extensions, the reply text
// in Error) are made printable, and anything the client sent during AUTH
// is redacted from them, as for [Reply.Lines].
//
// MessageID and Tag correlate the events of one transaction with the
// request that made it: an outcome that a caller got as
// [ErrOutcomeUnknown] can be settled from the late event that carries
// the same Message-ID or tag.
type Event struct {
	// Type says what happened.
	Type EventType
	// Session identifies the session (Client) in this process, from 1,
	// so events of concurrent sessions can be told apart.
	Session uint64
	// Op is the protocol step.
	Op Op
	// Code and Enhanced are the server's reply codes, when there was one.
	Code     int
	Enhanced string
	// Recipient is the address, for RCPT events.
	Recipient string
	// From is the reverse-path, for MAIL events.
	From string
	// Mechanism is the SASL mechanism, for auth events.
	Mechanism string
	// QueueID is the server's queue id, for message events.
	QueueID string
	// MessageID is the value of the message's Message-ID header, angle
	// brackets included, as far as it was read when the event was made
	// (see [MessageIDScanner]); "" for events outside a transaction, and
	// for a message without one.
	MessageID string
	// Tag is a value the caller attached to the transaction's context
	// (the sender fills it from sender.WithTag), "" when none.
	Tag string
	// TLSVersion is the negotiated version, for TLS events ("TLS 1.3").
	TLSVersion string
	// Extensions lists the extension keywords the server advertised, for
	// EHLO events ("PIPELINING", "CHUNKING", "AUTH", ...).
	Extensions []string
	// Kind classifies the error of a failed step or an aborted session.
	Kind Kind
	// Error is the failed step's error text (an [*Error] message, which
	// never carries secrets).
	Error string
}

// AddressMode says what [SlogAuditWith] logs of an email address.
type AddressMode int

// The address modes.
const (
	// AddressesKeep logs addresses as they are: the reverse-path of MAIL
	// and accepted recipients at Debug, refused recipients at Warn, and
	// the addresses in error texts. It is the zero value, and what
	// [SlogAudit] does.
	AddressesKeep AddressMode = iota
	// AddressesDrop logs no address: the from and rcpt attributes are
	// left out, and every word with an "@" in an error text is replaced
	// by "[address]".
	AddressesDrop
	// AddressesHash logs, in place of each address, "h:" and the first
	// 16 hex digits of its HMAC-SHA-256 under [SlogAuditOptions.HashKey]
	// (SHA-256 when there is no key), so the lines of one address can
	// still be found together (hash the address you look for the same
	// way: [SlogAuditOptions.HashAddress]) without the log holding it.
	// Without a key, anyone can test a guessed address against the log.
	AddressesHash
)

// SlogAuditOptions configures [SlogAuditWith]. The zero value logs as
// [SlogAudit] does.
type SlogAuditOptions struct {
	// Addresses says what is logged of email addresses; the zero value
	// keeps them.
	Addresses AddressMode
	// HashKey keys the hash of AddressesHash. Keep it secret and the
	// same across restarts (lines logged under another key do not
	// match).
	HashKey []byte
}

// HashAddress returns what [AddressesHash] logs for addr under o.
func (o SlogAuditOptions) HashAddress(addr string) string {
	var sum []byte
	if len(o.HashKey) > 0 {
		m := hmac.New(sha256.New, o.HashKey)
		m.Write([]byte(addr))
		sum = m.Sum(nil)
	} else {
		h := sha256.Sum256([]byte(addr))
		sum = h[:]
	}
	return "h:" + hex.EncodeToString(sum[:8])
}

// address returns what o logs for addr, or "" to leave it out.
func (o SlogAuditOptions) address(addr string) string {
	switch o.Addresses {
	case AddressesDrop:
		return ""
	case AddressesHash:
		if addr == "" {
			return ""
		}
		return o.HashAddress(addr)
	}
	return addr
}

// scrub replaces the addresses in text (each word with an "@") as o
// says.
func (o SlogAuditOptions) scrub(text string) string {
	if o.Addresses == AddressesKeep || !strings.Contains(text, "@") {
		return text
	}
	var b strings.Builder
	for len(text) > 0 {
		i := strings.IndexFunc(text, isWordRune)
		if i < 0 {
			b.WriteString(text)
			break
		}
		b.WriteString(text[:i])
		text = text[i:]
		j := strings.IndexFunc(text, func(r rune) bool { return !isWordRune(r) })
		if j < 0 {
			j = len(text)
		}
		w := text[:j]
		text = text[j:]
		switch {
		case !strings.Contains(w, "@"):
			b.WriteString(w)
		case o.Addresses == AddressesHash:
			b.WriteString(o.HashAddress(w))
		default:
			b.WriteString("[address]")
		}
	}
	return b.String()
}

// isWordRune reports whether r can be part of an address as it appears
// in a reply or an error text.
func isWordRune(r rune) bool {
	switch r {
	case ' ', '\t', '<', '>', '(', ')', ',', ';', ':', '"', '\'', '[', ']', '=':
		return false
	}
	return true
}

// SlogAudit returns an [Options.Audit] hook that logs each event to l:
// failures and aborted sessions at Warn, the rest at Debug... except
// accepted messages, which are logged at Info. Addresses are logged
// (see [AddressesKeep]); [SlogAuditWith] can drop or hash them. The
// hook logs with context.Background(); [SlogAuditContext] logs with the
// context of the call that made the event. Like every audit hook, it may
// be called from several goroutines at once (a sender's sessions).
func SlogAudit(l *slog.Logger) func(Event) {
	return SlogAuditWith(l, SlogAuditOptions{})
}

// SlogAuditWith is [SlogAudit] with options: with
// SlogAuditOptions{Addresses: AddressesDrop}, no address reaches the
// log.
func SlogAuditWith(l *slog.Logger, o SlogAuditOptions) func(Event) {
	h := SlogAuditContext(l, o)
	return func(e Event) { h(context.Background(), e) }
}

// SlogAuditContext returns the hook of [SlogAuditWith] in the form that
// takes a context: it logs with ctx, so a slog.Handler that reads values
// from the context (a trace id, a request id) finds those of the call
// that made the event. Give it the caller's context, or a
// context.WithoutCancel of it when the event may come after the call
// returned (the late reply of an unknown outcome).
func SlogAuditContext(l *slog.Logger, o SlogAuditOptions) func(context.Context, Event) {
	return func(ctx context.Context, e Event) {
		if ctx == nil {
			ctx = context.Background()
		}
		level := slog.LevelDebug
		switch e.Type {
		case EventMessage:
			level = slog.LevelInfo
		case EventSessionAborted, EventMessageFailed, EventRcptRefused:
			level = slog.LevelWarn
		case EventAuth:
			if e.Error != "" {
				level = slog.LevelWarn
			}
		}
		if !l.Enabled(ctx, level) {
			return
		}
		attrs := make([]slog.Attr, 0, 10)
		attrs = append(attrs, slog.String("op", string(e.Op)))
		if e.Code != 0 {
			attrs = append(attrs, slog.Int("code", e.Code))
		}
		if e.Enhanced != "" {
			attrs = append(attrs, slog.String("enhanced", e.Enhanced))
		}
		if a := o.address(e.From); a != "" {
			attrs = append(attrs, slog.String("from", a))
		}
		if a := o.address(e.Recipient); a != "" {
			attrs = append(attrs, slog.String("rcpt", a))
		}
		if e.Mechanism != "" {
			attrs = append(attrs, slog.String("mechanism", e.Mechanism))
		}
		if e.QueueID != "" {
			attrs = append(attrs, slog.String("queue_id", e.QueueID))
		}
		if e.MessageID != "" {
			attrs = append(attrs, slog.String("message_id", e.MessageID))
		}
		if e.Tag != "" {
			attrs = append(attrs, slog.String("tag", e.Tag))
		}
		if e.TLSVersion != "" {
			attrs = append(attrs, slog.String("tls", e.TLSVersion))
		}
		if len(e.Extensions) > 0 {
			attrs = append(attrs, slog.String("extensions", strings.Join(e.Extensions, " ")))
		}
		if e.Kind != 0 {
			attrs = append(attrs, slog.String("kind", e.Kind.String()))
		}
		if e.Error != "" {
			attrs = append(attrs, slog.String("error", o.scrub(e.Error)))
		}
		attrs = append(attrs, slog.Uint64("session", e.Session))
		l.LogAttrs(ctx, level, "smtp "+string(e.Type), attrs...)
	}
}

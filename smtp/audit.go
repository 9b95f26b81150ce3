package smtp

import (
	"context"
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

// SlogAudit returns an [Options.Audit] hook that logs each event to l:
// failures and aborted sessions at Warn, the rest at Debug... except
// accepted messages, which are logged at Info.
func SlogAudit(l *slog.Logger) func(Event) {
	return func(e Event) {
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
		ctx := context.Background()
		if !l.Enabled(ctx, level) {
			return
		}
		attrs := make([]slog.Attr, 0, 8)
		attrs = append(attrs, slog.String("op", string(e.Op)))
		if e.Code != 0 {
			attrs = append(attrs, slog.Int("code", e.Code))
		}
		if e.Enhanced != "" {
			attrs = append(attrs, slog.String("enhanced", e.Enhanced))
		}
		if e.From != "" {
			attrs = append(attrs, slog.String("from", e.From))
		}
		if e.Recipient != "" {
			attrs = append(attrs, slog.String("rcpt", e.Recipient))
		}
		if e.Mechanism != "" {
			attrs = append(attrs, slog.String("mechanism", e.Mechanism))
		}
		if e.QueueID != "" {
			attrs = append(attrs, slog.String("queue_id", e.QueueID))
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
			attrs = append(attrs, slog.String("error", e.Error))
		}
		attrs = append(attrs, slog.Uint64("session", e.Session))
		l.LogAttrs(ctx, level, "smtp "+string(e.Type), attrs...)
	}
}

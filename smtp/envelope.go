package smtp

import (
	"strconv"
	"strings"
)

// Envelope is the SMTP envelope of one message: its reverse-path,
// recipients and ESMTP parameters.
type Envelope struct {
	// From is the reverse-path; "" is the null reverse-path "<>" (for
	// bounces and auto-replies).
	From string
	// To lists the recipients; at least one is required.
	To []string
	// AllowPartial delivers to the accepted recipients when others are
	// refused, and reports the refused in [Outcome.Refused]. When false
	// (the default) one refused recipient stops the message for all, and
	// the error lists every refusal.
	AllowPartial bool
	// SMTPUTF8 asks for RFC 6531 SMTPUTF8 (needed for non-ASCII
	// headers). It is set automatically when an address is non-ASCII.
	SMTPUTF8 bool
	// EightBitMIME sends BODY=8BITMIME (RFC 6152) for 8-bit bodies.
	EightBitMIME bool
	// Size is the message size for SIZE= (RFC 1870) when the body's own
	// size cannot be learnt (it can for *bytes.Reader, *strings.Reader
	// and *bytes.Buffer); 0 means unknown.
	Size int64
	// DSN asks for delivery status notifications (RFC 3461).
	DSN *DSN
}

// DSN holds the RFC 3461 parameters of an envelope.
type DSN struct {
	// Return is "FULL" or "HDRS" (RET=); empty leaves it to the server.
	Return string
	// EnvID is an envelope identifier echoed in notifications (ENVID=).
	EnvID string
	// Notify is "NEVER" or any of "SUCCESS", "FAILURE", "DELAY"
	// (NOTIFY= on every RCPT); empty leaves it to the server.
	Notify []string
	// OriginalRecipient sends ORCPT=rfc822;ADDRESS on every RCPT.
	OriginalRecipient bool
}

// xtext encodes s as RFC 3461 xtext.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteString(strings.ToUpper(strconv.FormatUint(uint64(c>>4), 16) + strconv.FormatUint(uint64(c&15), 16)))
	}
	return b.String()
}

// Outcome is the result of a delivered transaction.
type Outcome struct {
	// Reply is the server's final reply.
	Reply Reply
	// QueueID is the server's id for the message, parsed from the final
	// reply when it has a known form (Postfix, Exim, Sendmail, Microsoft
	// 365, Gmail, Amazon SES, go-smtp); empty otherwise.
	QueueID string
	// Accepted lists the recipients the server accepted.
	Accepted []string
	// Refused lists the recipients the server refused, with its replies
	// (only with [Envelope.AllowPartial]).
	Refused []RecipientStatus
}

// QueueID extracts the queue id from a final reply's text. It knows:
//
//	Postfix    "2.0.0 Ok: queued as 4Xk9Qz1234"
//	Exim       "OK id=1abcDE-000123-Fg"
//	Sendmail   "2.0.0 x8GFvAb1234567 Message accepted for delivery"
//	MS 365     "2.6.0 <msgid> [InternalId=...] Queued mail for delivery"
//	Gmail      "2.0.0 OK  1700000000 x12-20020a...- gsmtp"
//	Amazon SES "Ok 0100018...-000000"
//
// and returns "" for anything else.
func QueueID(text string) string {
	fields := strings.Fields(text)
	if len(fields) > 0 && validEnhanced(fields[0]) {
		fields = fields[1:]
	}
	lower := strings.ToLower(text)
	if i := strings.Index(lower, "queued as "); i >= 0 {
		return firstWord(text[i+len("queued as "):])
	}
	if i := strings.Index(lower, "id="); i >= 0 && (i == 0 || text[i-1] == ' ') {
		return firstWord(text[i+3:])
	}
	if strings.HasSuffix(lower, "queued mail for delivery") && len(fields) > 0 && strings.HasPrefix(fields[0], "<") {
		return fields[0]
	}
	if strings.HasSuffix(lower, " gsmtp") && len(fields) >= 3 && strings.EqualFold(fields[0], "ok") {
		return fields[len(fields)-2]
	}
	if strings.Contains(lower, "message accepted for delivery") && len(fields) > 0 && !strings.EqualFold(fields[0], "message") {
		return fields[0]
	}
	if len(fields) == 2 && strings.EqualFold(fields[0], "ok") {
		return fields[1]
	}
	return ""
}

func firstWord(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimRight(s, ".,;)")
}

package smtp

import (
	"strconv"
	"strings"
	"unicode/utf8"
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
	// Tag is any text of the caller's (an order number, a request id),
	// carried on every audit event of the transaction ([Event.Tag]) so a
	// late event, the real outcome of a Send that returned
	// ErrOutcomeUnknown, can be matched to its request. It is never sent
	// to the server. The sender fills it from the caller's context
	// (sender.WithTag) when it is empty.
	Tag string
}

// DSN holds the RFC 3461 parameters of an envelope.
type DSN struct {
	// Return is "FULL" or "HDRS" (RET=); empty leaves it to the server.
	Return string
	// EnvID is an envelope identifier echoed in notifications (ENVID=).
	// It is sent xtext-encoded, and RFC 3461 limits what is sent to 100
	// characters: "+", "=" and characters outside "!" to "~" take three.
	EnvID string
	// Notify is "NEVER" or any of "SUCCESS", "FAILURE", "DELAY"
	// (NOTIFY= on every RCPT); empty leaves it to the server.
	Notify []string
	// OriginalRecipient sends ORCPT on every RCPT: rfc822;ADDRESS in
	// xtext for an ASCII address, and RFC 6533's utf-8;ADDRESS in the
	// utf-8-addr-unitext form for an internationalized one (the
	// transaction then uses SMTPUTF8).
	OriginalRecipient bool
}

// appendORCPT appends the ORCPT value for rcpt: the rfc822 type in
// xtext (RFC 3461) for an ASCII address; for a non-ASCII one, which the
// rfc822 type cannot carry, RFC 6533's utf-8 type in the
// utf-8-addr-unitext form: UTF-8 as is, and the ASCII characters xtext
// would escape, and "\\", as \x{HH}.
func appendORCPT(b []byte, rcpt string) []byte {
	ascii := true
	for i := 0; i < len(rcpt); i++ {
		if rcpt[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		b = append(b, "rfc822;"...)
		return append(b, xtext(rcpt)...)
	}
	const hex = "0123456789ABCDEF"
	b = append(b, "utf-8;"...)
	for _, r := range rcpt {
		switch {
		case r >= utf8.RuneSelf:
			b = utf8.AppendRune(b, r)
		case r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\':
			b = append(b, byte(r))
		default:
			b = append(b, '\\', 'x', '{', hex[r>>4], hex[r&15], '}')
		}
	}
	return b
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

// xtextLen returns the length of xtext(s) without building it: RFC 3461
// limits ENVID to 100 characters of xtext, which is what goes on the
// wire, and each octet xtext escapes takes three.
func xtextLen(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < '!' || c > '~' || c == '+' || c == '=' {
			n += 2
		}
	}
	return n
}

// Outcome is the result of a delivered transaction.
type Outcome struct {
	// Reply is the server's final reply.
	Reply Reply
	// QueueID is the server's id for the message, parsed from the final
	// reply when it has one of these forms; empty otherwise:
	//
	//	Postfix    "2.0.0 Ok: queued as 4Xk9Qz1234" (any "queued as ID")
	//	Exim       "OK id=1abcDE-000123-Fg" (any "id=ID")
	//	Sendmail   "2.0.0 x8GFvAb1234567 Message accepted for delivery"
	//	MS 365     "2.6.0 <msgid> [InternalId=...] Queued mail for delivery"
	//	Gmail      "2.0.0 OK  1700000000 x12-20020a... - gsmtp"
	//	Amazon SES "Ok 0100018...-000000"
	QueueID string
	// Accepted lists the recipients the server accepted.
	Accepted []string
	// Refused lists the recipients the server refused, with its replies
	// (only with [Envelope.AllowPartial]).
	Refused []RecipientStatus
}

// parseQueueID extracts the queue id from a final reply's text, in the
// forms Outcome.QueueID lists, and returns "" for anything else. It does
// not allocate.
func parseQueueID(text string) string {
	// The first fields and how many there are. Keywords are matched
	// ASCII-case-insensitively in text itself: lower-casing a copy would
	// move the offsets of any non-ASCII text before them (U+023A grows
	// by one octet when lower-cased).
	var buf [5]string
	fields, n := firstFields(buf[:0], text)
	if len(fields) > 0 && validEnhanced(fields[0]) {
		fields, n = fields[1:], n-1
	}
	if i := indexFold(text, "queued as "); i >= 0 {
		return firstWord(text[i+len("queued as "):])
	}
	if i := indexFold(text, "id="); i >= 0 && (i == 0 || text[i-1] == ' ') {
		return firstWord(text[i+3:])
	}
	if hasSuffixFold(text, "queued mail for delivery") && len(fields) > 0 && strings.HasPrefix(fields[0], "<") {
		return fields[0]
	}
	if hasSuffixFold(text, " gsmtp") && n >= 4 && strings.EqualFold(fields[0], "ok") {
		// "OK  <timestamp> <id> - gsmtp": the id is the third field,
		// not the "-" before "gsmtp".
		return fields[2]
	}
	if indexFold(text, "message accepted for delivery") >= 0 && len(fields) > 0 && !strings.EqualFold(fields[0], "message") {
		return fields[0]
	}
	if n == 2 && strings.EqualFold(fields[0], "ok") && sesID(fields[1]) {
		// Amazon SES: "Ok 0100018c...-...-000000".
		return fields[1]
	}
	return ""
}

// firstFields appends to dst the first cap(dst) fields of s, separated
// by ASCII white space, and returns them with the number of fields in s.
func firstFields(dst []string, s string) ([]string, int) {
	n := 0
	for i := 0; i < len(s); {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		j := i
		for j < len(s) && !isSpace(s[j]) {
			j++
		}
		if len(dst) < cap(dst) {
			dst = append(dst, s[i:j])
		}
		n++
		i = j
	}
	return dst, n
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// lowerASCII lower-cases an ASCII letter and leaves any other octet.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// indexFold returns the offset in s of the first match of sub, which is
// lower-case ASCII, ignoring ASCII case; or -1.
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if hasPrefixFold(s[i:], sub) {
			return i
		}
	}
	return -1
}

// hasPrefixFold reports whether s begins with prefix, which is lower-case
// ASCII, ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for k := 0; k < len(prefix); k++ {
		if lowerASCII(s[k]) != prefix[k] {
			return false
		}
	}
	return true
}

// hasSuffixFold reports whether s ends with suffix, which is lower-case
// ASCII, ignoring ASCII case.
func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && hasPrefixFold(s[len(s)-len(suffix):], suffix)
}

// firstWord returns the first word of s, ended by ASCII white space (a
// bare CR included), without trailing punctuation.
func firstWord(s string) string {
	var buf [1]string
	if w, _ := firstFields(buf[:0], s); len(w) > 0 {
		return strings.TrimRight(w[0], ".,;)")
	}
	return ""
}

// sesID reports whether s looks like an Amazon SES message id: hex
// digits and dashes, with at least one dash, ending in "-000000".
func sesID(s string) bool {
	if len(s) < 12 || !strings.Contains(s, "-") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-') {
			return false
		}
	}
	return true
}

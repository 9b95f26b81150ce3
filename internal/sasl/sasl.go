package sasl

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Mechanism is one client-side SASL exchange; a value is used for one
// exchange only.
type Mechanism interface {
	// Name is the IANA mechanism name, e.g. "SCRAM-SHA-256".
	Name() string
	// Start returns the initial response. ok=false means the mechanism has
	// none (LOGIN, CRAM-MD5); ok=true with an empty ir means an empty
	// initial response (sent as "=").
	Start() (ir []byte, ok bool, err error)
	// Next answers one server challenge (already base64-decoded).
	Next(challenge []byte) ([]byte, error)
	// Complete is called when the server said 235. It returns an error if
	// the exchange is not finished from the client's point of view (e.g.
	// SCRAM: server signature not yet verified, so a server that skips the
	// final message must not be trusted).
	Complete() error
}

// ErrInvalidCredentials is wrapped by the errors that constructors return
// for input a mechanism cannot carry: an empty user name or secret, a NUL
// byte, or a character that the mechanism's wire format forbids in that
// field. The error text names the field but never contains its value.
var ErrInvalidCredentials = errors.New("sasl: invalid credentials")

// ErrProtocol is wrapped by the errors that Next and Complete return when
// the server's messages do not fit the mechanism: a malformed or unexpected
// challenge, or success reported before the exchange was finished.
var ErrProtocol = errors.New("sasl: protocol violation by server")

// ErrServerVerification is wrapped by the errors that SCRAM-SHA-256 returns
// when the server fails to prove that it knows the user's stored key: its
// signature does not match, or it reported success without sending one.
// Such a server may be an impostor, so the session must not be used.
var ErrServerVerification = errors.New("sasl: server authentication failed")

// mechError is the error type of this package. Its text never contains a
// secret because no secret is ever passed to it.
type mechError struct {
	mech string // the mechanism name, e.g. "PLAIN"
	msg  string // what went wrong, naming fields but not their values
	kind error  // the sentinel it wraps, or nil for misuse by the caller
}

func (e *mechError) Error() string { return "sasl: " + e.mech + ": " + e.msg }

func (e *mechError) Unwrap() error { return e.kind }

// invalidf reports a constructor argument that the mechanism cannot send.
func invalidf(mech, format string, args ...any) error {
	return &mechError{mech: mech, msg: fmt.Sprintf(format, args...), kind: ErrInvalidCredentials}
}

// protocolf reports a server message that the mechanism cannot accept.
func protocolf(mech, format string, args ...any) error {
	return &mechError{mech: mech, msg: fmt.Sprintf(format, args...), kind: ErrProtocol}
}

// misusef reports a call made in the wrong state, a bug in the driver.
func misusef(mech, format string, args ...any) error {
	return &mechError{mech: mech, msg: fmt.Sprintf(format, args...)}
}

// rule is a set of byte classes that a field must not contain. NUL is
// always forbidden.
type rule uint8

const (
	noCtrlA   rule = 1 << iota // the 0x01 separator of XOAUTH2 and OAUTHBEARER
	noCRLF                     // CR and LF
	noCtl                      // every ASCII control character, 0x00-0x1F and 0x7F
	noSpace                    // the ASCII space
	asciiOnly                  // bytes 0x80 and above
	utf8Only                   // byte sequences that are not valid UTF-8
)

// checkField returns an error wrapping ErrInvalidCredentials if value is
// empty (when required) or contains a byte class that r forbids. The error
// names field but never quotes value.
func checkField(mech, field, value string, required bool, r rule) error {
	if value == "" {
		if required {
			return invalidf(mech, "%s is empty", field)
		}
		return nil
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case c == 0:
			return invalidf(mech, "%s contains NUL", field)
		case c == 0x01 && r&(noCtrlA|noCtl) != 0:
			return invalidf(mech, "%s contains ^A (0x01)", field)
		case (c == '\r' || c == '\n') && r&(noCRLF|noCtl) != 0:
			return invalidf(mech, "%s contains CR or LF", field)
		case (c < 0x20 || c == 0x7f) && r&noCtl != 0:
			return invalidf(mech, "%s contains an ASCII control character", field)
		case c == ' ' && r&noSpace != 0:
			return invalidf(mech, "%s contains a space", field)
		case c >= 0x80 && r&asciiOnly != 0:
			return invalidf(mech, "%s contains a non-ASCII character", field)
		}
	}
	if r&utf8Only != 0 && !utf8.ValidString(value) {
		return invalidf(mech, "%s is not valid UTF-8", field)
	}
	return nil
}

// saslnameReplacer escapes a user name for the saslname production shared
// by SCRAM (RFC 5802, section 5.1) and the GS2 header of OAUTHBEARER
// (RFC 5801, section 4): "=" becomes "=3D" and "," becomes "=2C".
var saslnameReplacer = strings.NewReplacer("=", "=3D", ",", "=2C")

// escapeSASLName returns s escaped as a saslname.
func escapeSASLName(s string) string { return saslnameReplacer.Replace(s) }

// display renders a non-secret value such as a user name for String and
// GoString. Plain tokens are shown as they are; anything that could confuse
// a log reader (spaces, quotes, control or non-ASCII characters) is quoted.
func display(s string) string {
	if s == "" {
		return `""`
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == ',' || c == '(' || c == ')' {
			return strconv.Quote(s)
		}
	}
	return s
}

// describer is implemented by every mechanism: String and GoString render
// it without secrets.
type describer interface {
	String() string
	GoString() string
}

// formatMechanism implements fmt.Formatter for the mechanisms. Every verb
// prints String (quoted for %q) and %#v prints GoString, so no verb or flag
// reaches the unexported fields that hold secrets.
func formatMechanism(f fmt.State, verb rune, d describer) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, d.GoString())
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(d.String()))
	default:
		_, _ = io.WriteString(f, d.String())
	}
}

// preference lists the password mechanisms from strongest to weakest.
var preference = [...]string{"SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"}

// Strongest returns the strongest password mechanism that both the server
// (offered, the mechanism names from its EHLO AUTH line, compared without
// regard to case) and this package support, or "" if there is none.
//
// The order is SCRAM-SHA-256, PLAIN, LOGIN, CRAM-MD5. SCRAM-SHA-256 comes
// first because the server never receives the password and must prove that
// it knows the user's stored key. PLAIN and LOGIN hand the password to the
// server, which is acceptable inside TLS (the driver must not use them
// without it); PLAIN is preferred because it is standardised and costs one
// round trip. CRAM-MD5 comes last although it hides the password on the
// wire: it forces the server to store the password in plaintext (or an
// equivalent), it relies on MD5, and over TLS it adds nothing, so it is
// chosen only when nothing better is offered. The token mechanisms (XOAUTH2,
// OAUTHBEARER) are never returned because they need a token, not a password.
func Strongest(offered []string) string {
	for _, want := range preference {
		for _, name := range offered {
			if strings.EqualFold(strings.TrimSpace(name), want) {
				return want
			}
		}
	}
	return ""
}

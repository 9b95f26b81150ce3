package sasl

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/smtpkit/smtpkit/internal/servertext"
)

// maxTokenErrorJSON bounds the size of a token mechanism's error challenge
// that is parsed as JSON. Real ones are a few hundred bytes; a larger one is
// recorded as an error with empty fields.
const maxTokenErrorJSON = 8 << 10

// TokenError is the error a server reports, as a JSON challenge, when it
// rejects an OAuth token in XOAUTH2 or OAUTHBEARER (RFC 7628, section
// 3.2.2). Its fields are copied from the JSON object's "status", "schemes"
// and "scope" members; members that are missing or not strings are left
// empty, as are all fields if the challenge is not a JSON object. The
// token the client sent, and any fragment of it, is replaced by
// "[redacted]" in every field, and characters that are not printable are
// escaped.
type TokenError struct {
	// Status is the error status, e.g. "invalid_token" (RFC 7628) or an
	// HTTP status code such as "401" (Google's XOAUTH2).
	Status string
	// Schemes lists the authentication schemes the server accepts, e.g.
	// "Bearer".
	Schemes string
	// Scope is the OAuth scope a token needs, e.g.
	// "https://mail.google.com/".
	Scope string
}

// Error describes the server's complaint, quoting its fields.
func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString("sasl: server rejected the OAuth token")
	sep := ": "
	for _, f := range [...]struct{ k, v string }{{"status", e.Status}, {"schemes", e.Schemes}, {"scope", e.Scope}} {
		if f.v != "" {
			b.WriteString(sep + f.k + "=" + strconv.Quote(f.v))
			sep = " "
		}
	}
	return b.String()
}

// parseTokenError decodes a server's JSON error challenge. It never fails:
// whatever cannot be decoded is left empty. The fields are passed through
// red, which knows the token the client sent, so that a server that echoes
// it (or any fragment of it, however the JSON escapes it) does not get it
// into an error; they are made printable too.
func parseTokenError(challenge []byte, red *servertext.Redactor) *TokenError {
	te := &TokenError{}
	if len(challenge) > maxTokenErrorJSON {
		return te
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(challenge, &members) != nil {
		return te
	}
	str := func(name string) string {
		var s string
		if raw, ok := members[name]; ok && json.Unmarshal(raw, &s) == nil {
			return s
		}
		return ""
	}
	te.Status = red.CleanString(str("status"))
	te.Schemes = red.CleanString(str("schemes"))
	te.Scope = red.CleanString(str("scope"))
	return te
}

// ServerError returns the error the server reported about the token in an
// XOAUTH2 or OAUTHBEARER exchange run by m, or nil if it reported none (or m
// is another kind of mechanism). Any challenge in these mechanisms is an
// error report; if it was not a readable JSON object, the returned
// TokenError's fields are empty. The result is a copy.
func ServerError(m Mechanism) *TokenError {
	var te *TokenError
	switch m := m.(type) {
	case *xoauth2Mech:
		te = m.tok.serverErr
	case *oauthBearerMech:
		te = m.tok.serverErr
	}
	if te == nil {
		return nil
	}
	c := *te
	return &c
}

// token exchange states.
const (
	tokenNew     = iota // Start not yet called
	tokenSent           // initial response sent
	tokenErrored        // the server sent an error challenge, which was answered
)

// tokenExchange is the state machine shared by XOAUTH2 and OAUTHBEARER:
// one initial response, then at most one challenge, which is always an
// error report that must be answered with a fixed dummy response.
type tokenExchange struct {
	state     int
	serverErr *TokenError
	red       servertext.Redactor // knows the token once Start has sent it
}

func (t *tokenExchange) start(mech, token string) error {
	if t.state != tokenNew {
		return misusef(mech, "Start called twice")
	}
	t.state = tokenSent
	t.red.AddSecret([]byte(token))
	return nil
}

func (t *tokenExchange) next(mech string, challenge, dummy []byte) ([]byte, error) {
	switch t.state {
	case tokenNew:
		return nil, misusef(mech, "Next called before Start")
	case tokenSent:
		t.state = tokenErrored
		t.serverErr = parseTokenError(challenge, &t.red)
		return dummy, nil
	default:
		return nil, protocolf(mech, "unexpected server challenge after the error report")
	}
}

func (t *tokenExchange) complete(mech string) error {
	switch t.state {
	case tokenNew:
		return misusef(mech, "Complete called before Start")
	case tokenErrored:
		return protocolf(mech, "server reported success after rejecting the token")
	}
	return nil
}

// tokenRule is what the token itself may contain: RFC 6750's b64token is
// printable ASCII without spaces, and anything else would break the
// key-value framing.
const tokenRule = noCtl | noSpace | asciiOnly

// xoauth2Mech is Google's and Microsoft's XOAUTH2 mechanism.
type xoauth2Mech struct {
	user  string
	token string // cleared once the initial response is built
	tok   tokenExchange
}

// XOAuth2 returns an XOAUTH2 mechanism that presents the OAuth 2.0 access
// token for user. The initial response is
// "user=USER ^A auth=Bearer TOKEN ^A ^A" (without the spaces), as described
// at https://developers.google.com/gmail/imap/xoauth2-protocol.
//
// If the server rejects the token it sends a JSON error as a challenge;
// Next records it (see [ServerError]) and returns the empty response the
// server expects before it sends its final failure reply. The user name
// must be valid UTF-8 without control characters; the token must be
// printable ASCII without spaces.
func XOAuth2(user, token string) (Mechanism, error) {
	const name = "XOAUTH2"
	if err := checkField(name, "username", user, true, noCtl|utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "token", token, true, tokenRule); err != nil {
		return nil, err
	}
	return &xoauth2Mech{user: user, token: token}, nil
}

// Name returns "XOAUTH2".
func (m *xoauth2Mech) Name() string { return "XOAUTH2" }

// Start returns the XOAUTH2 initial response.
func (m *xoauth2Mech) Start() ([]byte, bool, error) {
	if err := m.tok.start(m.Name(), m.token); err != nil {
		return nil, false, err
	}
	ir := []byte("user=" + m.user + "\x01auth=Bearer " + m.token + "\x01\x01")
	m.token = ""
	return ir, true, nil
}

// Next records the server's JSON error and returns an empty response.
func (m *xoauth2Mech) Next(challenge []byte) ([]byte, error) {
	return m.tok.next(m.Name(), challenge, []byte{})
}

// Complete fails if the server accepted after reporting an error.
func (m *xoauth2Mech) Complete() error { return m.tok.complete(m.Name()) }

// String describes the mechanism without its token.
func (m *xoauth2Mech) String() string { return "sasl.XOAUTH2(user=" + display(m.user) + ")" }

// GoString describes the mechanism without its token.
func (m *xoauth2Mech) GoString() string {
	return fmt.Sprintf("&sasl.xoauth2Mech{user:%q, token:<redacted>, state:%d}", m.user, m.tok.state)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *xoauth2Mech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

// oauthBearerMech is the OAUTHBEARER mechanism of RFC 7628.
type oauthBearerMech struct {
	user  string
	host  string
	port  int
	token string // cleared once the initial response is built
	tok   tokenExchange
}

// OAuthBearer returns an OAUTHBEARER mechanism (RFC 7628) that presents the
// OAuth 2.0 access token for user to the server host:port. The initial
// response is "n,a=USER,^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A"; the
// host and port pairs are left out when host is empty or port is 0, and the
// a= authorization identity is left out when user is empty (RFC 7628 makes
// it optional: the token identifies the user). In the user name "=" and ","
// are escaped as "=3D" and "=2C".
//
// If the server rejects the token it sends a JSON error as a challenge;
// Next records it (see [ServerError]) and returns the single 0x01 byte that
// RFC 7628 requires before the server sends its final failure reply. The
// user name must be valid UTF-8 without control characters; the host and
// the token must be printable ASCII without spaces (pass an
// internationalised host name in its A-label form); the port must be in
// [0, 65535].
func OAuthBearer(user, host string, port int, token string) (Mechanism, error) {
	const name = "OAUTHBEARER"
	if err := checkField(name, "username", user, false, noCtl|utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "host", host, false, noCtl|noSpace|asciiOnly); err != nil {
		return nil, err
	}
	if port < 0 || port > 65535 {
		return nil, invalidf(name, "port %d is out of range", port)
	}
	if err := checkField(name, "token", token, true, tokenRule); err != nil {
		return nil, err
	}
	return &oauthBearerMech{user: user, host: host, port: port, token: token}, nil
}

// Name returns "OAUTHBEARER".
func (m *oauthBearerMech) Name() string { return "OAUTHBEARER" }

// Start returns the OAUTHBEARER initial response.
func (m *oauthBearerMech) Start() ([]byte, bool, error) {
	if err := m.tok.start(m.Name(), m.token); err != nil {
		return nil, false, err
	}
	var b strings.Builder
	b.WriteString("n,")
	if m.user != "" {
		b.WriteString("a=" + escapeSASLName(m.user))
	}
	b.WriteString(",\x01")
	if m.host != "" {
		b.WriteString("host=" + m.host + "\x01")
	}
	if m.port != 0 {
		b.WriteString("port=" + strconv.Itoa(m.port) + "\x01")
	}
	b.WriteString("auth=Bearer " + m.token + "\x01\x01")
	m.token = ""
	return []byte(b.String()), true, nil
}

// Next records the server's JSON error and returns the 0x01 byte that
// RFC 7628 requires in reply.
func (m *oauthBearerMech) Next(challenge []byte) ([]byte, error) {
	return m.tok.next(m.Name(), challenge, []byte{0x01})
}

// Complete fails if the server accepted after reporting an error.
func (m *oauthBearerMech) Complete() error { return m.tok.complete(m.Name()) }

// String describes the mechanism without its token.
func (m *oauthBearerMech) String() string {
	s := "sasl.OAUTHBEARER(user=" + display(m.user)
	if m.host != "" {
		s += ",host=" + display(m.host)
	}
	if m.port != 0 {
		s += ",port=" + strconv.Itoa(m.port)
	}
	return s + ")"
}

// GoString describes the mechanism without its token.
func (m *oauthBearerMech) GoString() string {
	return fmt.Sprintf("&sasl.oauthBearerMech{user:%q, host:%q, port:%d, token:<redacted>, state:%d}",
		m.user, m.host, m.port, m.tok.state)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *oauthBearerMech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

package sasl

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/hex"
	"fmt"
)

// cramMD5Mech is the CRAM-MD5 mechanism of RFC 2195.
type cramMD5Mech struct {
	user     string
	pass     string // cleared once the response is computed
	started  bool
	answered bool
}

// CramMD5 returns a CRAM-MD5 mechanism (RFC 2195) for user and pass.
//
// The response to the server's challenge is the user name, a space and the
// lower-case hex HMAC-MD5 of the challenge keyed with the password. The
// password does not cross the wire, but the server must keep it in
// plaintext (or an equivalent) and MD5 is obsolete; use CRAM-MD5 only when
// the server offers nothing better (see [Strongest]). Neither field may
// contain NUL, and the user name must be valid UTF-8 without control
// characters.
func CramMD5(user, pass string) (Mechanism, error) {
	const name = "CRAM-MD5"
	if err := checkField(name, "username", user, true, noCtl|utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "password", pass, true, 0); err != nil {
		return nil, err
	}
	return &cramMD5Mech{user: user, pass: pass}, nil
}

// Name returns "CRAM-MD5".
func (m *cramMD5Mech) Name() string { return "CRAM-MD5" }

// Start reports that CRAM-MD5 has no initial response.
func (m *cramMD5Mech) Start() ([]byte, bool, error) {
	if m.started {
		return nil, false, misusef(m.Name(), "Start called twice")
	}
	m.started = true
	return nil, false, nil
}

// Next answers the server's challenge.
func (m *cramMD5Mech) Next(challenge []byte) ([]byte, error) {
	switch {
	case !m.started:
		return nil, misusef(m.Name(), "Next called before Start")
	case m.answered:
		return nil, protocolf(m.Name(), "unexpected second server challenge")
	case len(challenge) == 0:
		return nil, protocolf(m.Name(), "server challenge is empty")
	}
	m.answered = true
	mac := hmac.New(md5.New, []byte(m.pass))
	m.pass = ""
	mac.Write(challenge)
	sum := mac.Sum(nil)
	resp := make([]byte, 0, len(m.user)+1+hex.EncodedLen(len(sum)))
	resp = append(resp, m.user...)
	resp = append(resp, ' ')
	resp = hex.AppendEncode(resp, sum)
	return resp, nil
}

// Complete fails unless the challenge was answered.
func (m *cramMD5Mech) Complete() error {
	switch {
	case !m.started:
		return misusef(m.Name(), "Complete called before Start")
	case !m.answered:
		return protocolf(m.Name(), "server reported success before sending a challenge")
	}
	return nil
}

// String describes the mechanism without its password.
func (m *cramMD5Mech) String() string { return "sasl.CRAM-MD5(user=" + display(m.user) + ")" }

// GoString describes the mechanism without its password.
func (m *cramMD5Mech) GoString() string {
	return fmt.Sprintf("&sasl.cramMD5Mech{user:%q, pass:<redacted>}", m.user)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *cramMD5Mech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

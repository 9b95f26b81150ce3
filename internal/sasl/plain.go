package sasl

import "fmt"

// plainMech is the PLAIN mechanism of RFC 4616.
type plainMech struct {
	authzid string
	user    string
	pass    string // cleared once the initial response is built
	started bool
}

// Plain returns a PLAIN mechanism (RFC 4616) that authenticates as user with
// password pass and, if authzid is not empty, asks to act as authzid.
//
// The exchange is a single initial response, authzid NUL user NUL pass, so
// the server receives the password itself: use PLAIN only inside TLS. The
// user name and authzid must be valid UTF-8 and none of the fields may
// contain NUL. The password is otherwise sent as given, byte for byte,
// without SASLprep, which is what servers that compare stored passwords
// expect.
func Plain(authzid, user, pass string) (Mechanism, error) {
	const name = "PLAIN"
	if err := checkField(name, "authorization identity", authzid, false, utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "username", user, true, utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "password", pass, true, 0); err != nil {
		return nil, err
	}
	return &plainMech{authzid: authzid, user: user, pass: pass}, nil
}

// Name returns "PLAIN".
func (m *plainMech) Name() string { return "PLAIN" }

// Start returns the whole PLAIN message as the initial response.
func (m *plainMech) Start() ([]byte, bool, error) {
	if m.started {
		return nil, false, misusef(m.Name(), "Start called twice")
	}
	m.started = true
	ir := make([]byte, 0, len(m.authzid)+len(m.user)+len(m.pass)+2)
	ir = append(ir, m.authzid...)
	ir = append(ir, 0)
	ir = append(ir, m.user...)
	ir = append(ir, 0)
	ir = append(ir, m.pass...)
	m.pass = ""
	return ir, true, nil
}

// Next fails: PLAIN has no challenges after the initial response.
func (m *plainMech) Next([]byte) ([]byte, error) {
	if !m.started {
		return nil, misusef(m.Name(), "Next called before Start")
	}
	return nil, protocolf(m.Name(), "unexpected server challenge after the initial response")
}

// Complete reports whether the initial response was produced.
func (m *plainMech) Complete() error {
	if !m.started {
		return misusef(m.Name(), "Complete called before Start")
	}
	return nil
}

// String describes the mechanism without its password.
func (m *plainMech) String() string {
	if m.authzid != "" {
		return "sasl.PLAIN(authzid=" + display(m.authzid) + ",user=" + display(m.user) + ")"
	}
	return "sasl.PLAIN(user=" + display(m.user) + ")"
}

// GoString describes the mechanism without its password.
func (m *plainMech) GoString() string {
	return fmt.Sprintf("&sasl.plainMech{authzid:%q, user:%q, pass:<redacted>}", m.authzid, m.user)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *plainMech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

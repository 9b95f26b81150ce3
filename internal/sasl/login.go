package sasl

import "fmt"

// loginMech is the LOGIN mechanism (draft-murchison-sasl-login).
type loginMech struct {
	user  string
	pass  string // cleared once sent
	state int    // one of the login* constants
}

const (
	loginNew      = iota // Start not yet called
	loginStarted         // waiting for the user name prompt
	loginSentUser        // waiting for the password prompt
	loginSentPass        // both answers sent
)

// Login returns a LOGIN mechanism that answers the server's first prompt
// with user and its second with pass.
//
// LOGIN has no initial response. The prompts' text ("Username:" and
// "Password:" by convention) varies between servers and is ignored: the
// answers are given by position, and a third prompt is an error. Like PLAIN,
// LOGIN hands the password to the server, so use it only inside TLS. Neither
// field may contain NUL, and the user name must be valid UTF-8.
func Login(user, pass string) (Mechanism, error) {
	const name = "LOGIN"
	if err := checkField(name, "username", user, true, utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(name, "password", pass, true, 0); err != nil {
		return nil, err
	}
	return &loginMech{user: user, pass: pass}, nil
}

// Name returns "LOGIN".
func (m *loginMech) Name() string { return "LOGIN" }

// Start reports that LOGIN has no initial response.
func (m *loginMech) Start() ([]byte, bool, error) {
	if m.state != loginNew {
		return nil, false, misusef(m.Name(), "Start called twice")
	}
	m.state = loginStarted
	return nil, false, nil
}

// Next answers the first prompt with the user name and the second with the
// password.
func (m *loginMech) Next([]byte) ([]byte, error) {
	switch m.state {
	case loginNew:
		return nil, misusef(m.Name(), "Next called before Start")
	case loginStarted:
		m.state = loginSentUser
		return []byte(m.user), nil
	case loginSentUser:
		m.state = loginSentPass
		resp := []byte(m.pass)
		m.pass = ""
		return resp, nil
	default:
		return nil, protocolf(m.Name(), "unexpected third server challenge")
	}
}

// Complete fails unless both the user name and the password were sent.
func (m *loginMech) Complete() error {
	switch m.state {
	case loginNew:
		return misusef(m.Name(), "Complete called before Start")
	case loginSentPass:
		return nil
	default:
		return protocolf(m.Name(), "server reported success before the password was sent")
	}
}

// String describes the mechanism without its password.
func (m *loginMech) String() string { return "sasl.LOGIN(user=" + display(m.user) + ")" }

// GoString describes the mechanism without its password.
func (m *loginMech) GoString() string {
	return fmt.Sprintf("&sasl.loginMech{user:%q, pass:<redacted>, state:%d}", m.user, m.state)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *loginMech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

package sasl

import (
	"encoding/base64"
	"testing"
)

// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
const (
	rfc7677User        = "user"
	rfc7677Password    = "pencil"
	rfc7677ClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfc7677ClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfc7677ServerNonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfc7677ServerFirst = "r=" + rfc7677ServerNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfc7677ClientFinal = "c=biws,r=" + rfc7677ServerNonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfc7677ServerSig   = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	rfc7677ServerFinal = "v=" + rfc7677ServerSig
)

func fixedNonce(n string) func() (string, error) {
	return func() (string, error) { return n, nil }
}

// newRFC7677 returns the RFC 7677 example's mechanism after Start.
func newRFC7677(t *testing.T) *scramMech {
	t.Helper()
	m, err := newScramSHA256(rfc7677User, rfc7677Password, fixedNonce(rfc7677ClientNonce))
	must(t, err)
	ir, ok := start(t, m)
	equal(t, "initial response present", ok, true)
	equal(t, "client-first", string(ir), rfc7677ClientFirst)
	return m
}

// newRFC7677AfterFirst returns the RFC 7677 example's mechanism after it
// answered the server-first message.
func newRFC7677AfterFirst(t *testing.T) *scramMech {
	t.Helper()
	m := newRFC7677(t)
	final, err := m.Next([]byte(rfc7677ServerFirst))
	must(t, err)
	equal(t, "client-final", string(final), rfc7677ClientFinal)
	return m
}

func TestScramSHA256RFC7677(t *testing.T) {
	m := newRFC7677(t)
	equal(t, "Name", m.Name(), "SCRAM-SHA-256")
	errorIs(t, "Complete before the server-first message", m.Complete(), ErrProtocol)

	final, err := m.Next([]byte(rfc7677ServerFirst))
	must(t, err)
	equal(t, "client-final", string(final), rfc7677ClientFinal)
	equal(t, "expected server signature", base64.StdEncoding.EncodeToString(m.serverSignature), rfc7677ServerSig)

	resp, err := m.Next([]byte(rfc7677ServerFinal))
	must(t, err)
	if resp == nil || len(resp) != 0 {
		t.Errorf("response to the server-final message = %q, want an empty non-nil slice", resp)
	}
	must(t, m.Complete())

	_, err = m.Next([]byte(rfc7677ServerFinal))
	errorIs(t, "challenge after the server-final message", err, ErrProtocol)
	must(t, m.Complete())
}

func TestPlainRFC4616(t *testing.T) {
	// The two examples of RFC 4616, section 4.
	for _, tc := range []struct{ authzid, user, pass, want string }{
		{"", "tim", "tanstaaftanstaaf", "\x00tim\x00tanstaaftanstaaf"},
		{"Ursel", "Kurt", "xipj3plmq", "Ursel\x00Kurt\x00xipj3plmq"},
	} {
		m, err := Plain(tc.authzid, tc.user, tc.pass)
		must(t, err)
		equal(t, "Name", m.Name(), "PLAIN")
		ir, ok := start(t, m)
		equal(t, "initial response present", ok, true)
		equal(t, "initial response", string(ir), tc.want)
		must(t, m.Complete())
	}
}

func TestOAuthBearerRFC7628(t *testing.T) {
	// RFC 7628, section 4.1.
	const token = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
	m, err := OAuthBearer("user@example.com", "server.example.com", 143, token)
	must(t, err)
	equal(t, "Name", m.Name(), "OAUTHBEARER")
	ir, ok := start(t, m)
	equal(t, "initial response present", ok, true)
	equal(t, "initial response", string(ir), "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"+
		"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01")
	// The RFC prints the initial response in base64.
	equal(t, "base64 initial response", base64.StdEncoding.EncodeToString(ir),
		"bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9"+
			"MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB")
	must(t, m.Complete())
	if te := ServerError(m); te != nil {
		t.Errorf("ServerError = %v, want nil", te)
	}
}

func TestXOAuth2GoogleExample(t *testing.T) {
	// The example in Google's XOAUTH2 protocol documentation.
	m, err := XOAuth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
	must(t, err)
	equal(t, "Name", m.Name(), "XOAUTH2")
	ir, ok := start(t, m)
	equal(t, "initial response present", ok, true)
	equal(t, "initial response", string(ir),
		"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01")
	equal(t, "base64 initial response", base64.StdEncoding.EncodeToString(ir),
		"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==")
	must(t, m.Complete())
	if te := ServerError(m); te != nil {
		t.Errorf("ServerError = %v, want nil", te)
	}
}

func TestCramMD5RFC2195(t *testing.T) {
	// RFC 2195, section 2.
	m, err := CramMD5("tim", "tanstaaftanstaaf")
	must(t, err)
	equal(t, "Name", m.Name(), "CRAM-MD5")
	ir, ok := start(t, m)
	equal(t, "initial response present", ok, false)
	if ir != nil {
		t.Errorf("initial response = %q, want nil", ir)
	}
	errorIs(t, "Complete before the challenge", m.Complete(), ErrProtocol)

	challenge, err := base64.StdEncoding.DecodeString("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+")
	must(t, err)
	equal(t, "challenge", string(challenge), "<1896.697170952@postoffice.reston.mci.net>")
	resp, err := m.Next(challenge)
	must(t, err)
	equal(t, "response", string(resp), "tim b913a602c7eda7a495b4e6e7334d3890")
	equal(t, "base64 response", base64.StdEncoding.EncodeToString(resp), "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
	must(t, m.Complete())

	_, err = m.Next(challenge)
	errorIs(t, "second challenge", err, ErrProtocol)
}

package sasl

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

const (
	testPassword = "Sup3r-S3cret-Passw0rd-9f8e7d"
	testToken    = "ya29.S3cretT0ken-abcdefghijklmnopqrstuvwxyz"
)

// leakRecorder collects every string an application might log: error
// texts and mechanisms formatted with each verb.
type leakRecorder struct {
	texts []string
}

func (r *leakRecorder) err(err error) {
	if err != nil {
		r.texts = append(r.texts, err.Error(), fmt.Sprintf("%v %+v %#v %s %q", err, err, err, err, err))
	}
}

func (r *leakRecorder) value(v any) {
	r.texts = append(r.texts, fmt.Sprintf("%v|%+v|%#v|%s|%q|%x|%X|%d|%T", v, v, v, v, v, v, v, v, v))
	if s, ok := v.(fmt.Stringer); ok {
		r.texts = append(r.texts, s.String())
	}
	if g, ok := v.(fmt.GoStringer); ok {
		r.texts = append(r.texts, g.GoString())
	}
}

// forbidden returns the secret and the base64 forms it could appear in.
func forbidden(secrets ...string) []string {
	var out []string
	for _, s := range secrets {
		out = append(out, s)
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			out = append(out, enc.EncodeToString([]byte(s)))
		}
	}
	return out
}

// exercise runs m through a scripted exchange, recording every error and
// formatting the mechanism after every step. Each script ends with calls
// that are out of order, so every failure path is visited.
func (r *leakRecorder) exercise(t *testing.T, mk func() (Mechanism, error), challenges ...string) {
	t.Helper()
	m, err := mk()
	if err != nil {
		t.Fatalf("constructor: %v", err)
	}
	r.value(m)
	r.err(m.Complete())
	_, err = m.Next([]byte("premature"))
	r.err(err)
	_, _, err = m.Start()
	r.err(err)
	r.value(m)
	r.err(m.Complete())
	for _, c := range challenges {
		_, err := m.Next([]byte(c))
		r.err(err)
		r.value(m)
	}
	r.err(m.Complete())
	_, _, err = m.Start()
	r.err(err)
	_, err = m.Next([]byte("extra"))
	r.err(err)
	r.err(m.Complete())
	r.value(m)
	if te := ServerError(m); te != nil {
		r.err(te)
		r.value(te)
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	var r leakRecorder

	// Every constructor failure, with the secret present in the arguments.
	for _, mk := range []func() (Mechanism, error){
		func() (Mechanism, error) { return Plain("", "", testPassword) },
		func() (Mechanism, error) { return Plain("", "u\x00", testPassword) },
		func() (Mechanism, error) { return Plain("\x00", "u", testPassword) },
		func() (Mechanism, error) { return Plain("", "\xff", testPassword) },
		func() (Mechanism, error) { return Plain("", "u", testPassword+"\x00") },
		func() (Mechanism, error) { return Login("", testPassword) },
		func() (Mechanism, error) { return Login("u", "\x00"+testPassword) },
		func() (Mechanism, error) { return ScramSHA256("", testPassword) },
		func() (Mechanism, error) { return ScramSHA256("u\n", testPassword) },
		func() (Mechanism, error) { return ScramSHA256("u", testPassword+"\r\n") },
		func() (Mechanism, error) { return ScramSHA256("u", testPassword+"\x7f") },
		func() (Mechanism, error) { return ScramSHA256("u", testPassword+"\xff") },
		func() (Mechanism, error) { return XOAuth2("", testToken) },
		func() (Mechanism, error) { return XOAuth2("u\x01", testToken) },
		func() (Mechanism, error) { return XOAuth2("u", testToken+"\x01") },
		func() (Mechanism, error) { return XOAuth2("u", "Bearer "+testToken) },
		func() (Mechanism, error) { return XOAuth2("u", testToken+"\u00e9") },
		func() (Mechanism, error) { return OAuthBearer("u\x00", "h", 1, testToken) },
		func() (Mechanism, error) { return OAuthBearer("u", "h\x01", 1, testToken) },
		func() (Mechanism, error) { return OAuthBearer("u", "h", 70000, testToken) },
		func() (Mechanism, error) { return OAuthBearer("u", "h", 1, testToken+"\n") },
		func() (Mechanism, error) { return CramMD5("", testPassword) },
		func() (Mechanism, error) { return CramMD5("u\r", testPassword) },
		func() (Mechanism, error) { return CramMD5("u", testPassword+"\x00") },
	} {
		m, err := mk()
		if err == nil {
			t.Fatalf("constructor accepted bad input: %v", m)
		}
		r.err(err)
	}
	constructorErrors := len(r.texts)

	plain := func() (Mechanism, error) { return Plain("admin", "alice", testPassword) }
	login := func() (Mechanism, error) { return Login("alice", testPassword) }
	cram := func() (Mechanism, error) { return CramMD5("alice", testPassword) }
	xo := func() (Mechanism, error) { return XOAuth2("alice@example.com", testToken) }
	ob := func() (Mechanism, error) { return OAuthBearer("alice@example.com", "mx.example.com", 587, testToken) }
	scram := func() (Mechanism, error) {
		return newScramSHA256("alice", testPassword, fixedNonce(rfc7677ClientNonce))
	}
	scramRandom := func() (Mechanism, error) { return ScramSHA256("alice", testPassword) }
	const salt = ",s=W22ZaJ0SNY7soEsUEjb6gQ=="
	tokenJSON := `{"status":"invalid_token","scope":"mail","schemes":"Bearer"}`

	r.exercise(t, plain)
	r.exercise(t, plain, "")
	r.exercise(t, login, "Username:", "Password:", "Again:")
	r.exercise(t, login, "Username:")
	r.exercise(t, cram, "<1896.697170952@postoffice.reston.mci.net>")
	r.exercise(t, cram, "")
	r.exercise(t, xo, tokenJSON, tokenJSON)
	r.exercise(t, xo, "garbage")
	r.exercise(t, xo)
	r.exercise(t, ob, tokenJSON, tokenJSON)
	r.exercise(t, ob, "")
	r.exercise(t, ob)
	r.exercise(t, scram, rfc7677ServerFirst, rfc7677ServerFinal)
	r.exercise(t, scram, rfc7677ServerFirst, "v=AAAA")
	r.exercise(t, scram, rfc7677ServerFirst, "e=invalid-proof")
	r.exercise(t, scram, rfc7677ServerFirst, "garbage")
	r.exercise(t, scram, rfc7677ServerFirst)
	r.exercise(t, scram, "r="+rfc7677ServerNonce+salt+",i=1")
	r.exercise(t, scram, "r="+rfc7677ServerNonce+salt+",i=10000000")
	r.exercise(t, scram, "r=other"+salt+",i=4096")
	r.exercise(t, scram, "m=x,"+rfc7677ServerFirst)
	r.exercise(t, scram, "\x00\xff garbage")
	r.exercise(t, scramRandom, rfc7677ServerFirst)

	// Servers that echo what the client sent: the token, the initial
	// response (raw and base64) and fragments of them in the error JSON,
	// escaped every way JSON allows; the password and the proof in a
	// SCRAM server error.
	bad := forbidden(testPassword, testToken)
	for _, mk := range []func() (Mechanism, error){xo, ob} {
		m, err := mk()
		if err != nil {
			t.Fatal(err)
		}
		ir, _, err := m.Start()
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, forbidden(string(ir))...)
		var esc strings.Builder
		for _, c := range testToken {
			fmt.Fprintf(&esc, `\u%04x`, c)
		}
		status, _ := json.Marshal(string(ir) + " " + base64.StdEncoding.EncodeToString(ir))
		echo := `{"status":` + string(status) + `,"schemes":"` + esc.String() + `","scope":"` + testToken[3:20] + `"}`
		_, err = m.Next([]byte(echo))
		r.err(err)
		r.value(m)
		te := ServerError(m)
		r.err(te)
		r.value(te)
		if !strings.Contains(te.Status, "[redacted]") || !strings.Contains(te.Schemes, "[redacted]") {
			t.Errorf("%v: the echo did not reach the error: %+v", m, te)
		}
	}
	m, _ := scram()
	if _, _, err := m.Start(); err != nil {
		t.Fatal(err)
	}
	final, err := m.Next([]byte(rfc7677ServerFirst))
	if err != nil {
		t.Fatal(err)
	}
	_, proof, _ := strings.Cut(string(final), ",p=")
	bad = append(bad, forbidden(proof)...)
	_, err = m.Next([]byte("e=" + testPassword + " " + proof + " " + base64.StdEncoding.EncodeToString([]byte(testPassword))))
	r.err(err)
	r.value(m)
	if err == nil || !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("the SCRAM echo did not reach the error: %v", err)
	}

	if len(r.texts) < constructorErrors+100 {
		t.Fatalf("only %d strings recorded; the exercise is not doing its job", len(r.texts))
	}
	for _, text := range r.texts {
		for _, f := range bad {
			if strings.Contains(text, f) {
				t.Errorf("secret (or its base64 form %q) leaked in %q", f, text)
			}
		}
	}
}

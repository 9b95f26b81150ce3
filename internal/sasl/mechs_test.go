package sasl

import (
	"strings"
	"testing"
)

func TestLogin(t *testing.T) {
	// The prompts vary between servers (and some send nothing); LOGIN
	// answers by position.
	for _, prompts := range [][2]string{
		{"Username:", "Password:"},
		{"User Name\x00", "Password\x00"},
		{"", ""},
		{"Password:", "Username:"},
	} {
		m, err := Login("alice", "wonderland")
		must(t, err)
		equal(t, "Name", m.Name(), "LOGIN")
		if _, err := m.Next([]byte("Username:")); err == nil {
			t.Error("Next before Start succeeded")
		}
		ir, ok := start(t, m)
		equal(t, "initial response present", ok, false)
		if ir != nil {
			t.Errorf("initial response = %q, want nil", ir)
		}
		errorIs(t, "Complete before the prompts", m.Complete(), ErrProtocol)
		resp, err := m.Next([]byte(prompts[0]))
		must(t, err)
		equal(t, "first answer", string(resp), "alice")
		errorIs(t, "Complete before the password", m.Complete(), ErrProtocol)
		resp, err = m.Next([]byte(prompts[1]))
		must(t, err)
		equal(t, "second answer", string(resp), "wonderland")
		must(t, m.Complete())
		_, err = m.Next([]byte("Again:"))
		errorIs(t, "third prompt", err, ErrProtocol)
		if _, _, err := m.Start(); err == nil {
			t.Error("second Start succeeded")
		}
	}
}

func TestPlainMisuse(t *testing.T) {
	m, err := Plain("", "alice", "wonderland")
	must(t, err)
	if m.Complete() == nil {
		t.Error("Complete before Start succeeded")
	}
	if _, err := m.Next(nil); err == nil {
		t.Error("Next before Start succeeded")
	}
	start(t, m)
	if _, _, err := m.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	_, err = m.Next([]byte{})
	errorIs(t, "challenge after the initial response", err, ErrProtocol)
}

func TestCramMD5Misuse(t *testing.T) {
	m, err := CramMD5("tim", "tanstaaftanstaaf")
	must(t, err)
	if _, err := m.Next([]byte("<1@x>")); err == nil {
		t.Error("Next before Start succeeded")
	}
	if m.Complete() == nil {
		t.Error("Complete before Start succeeded")
	}
	start(t, m)
	if _, _, err := m.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	_, err = m.Next(nil)
	errorIs(t, "empty challenge", err, ErrProtocol)
}

func TestTokenMechanismErrorChallenge(t *testing.T) {
	googleJSON := `{"status":"401","schemes":"bearer mac","scope":"https://mail.google.com/"}`
	rfcJSON := `{"status":"invalid_token","scope":"example_scope",` +
		`"openid-configuration":"https://example.com/.well-known/openid-configuration"}`
	newXO := func() (Mechanism, error) { return XOAuth2("someuser@example.com", "ya29.token") }
	newOB := func() (Mechanism, error) {
		return OAuthBearer("user@example.com", "server.example.com", 143, "2YotnFZFEjr1zCsicMWpAA")
	}
	for _, tc := range []struct {
		name      string
		mech      func() (Mechanism, error)
		challenge string
		dummy     string
		want      TokenError
	}{
		{"XOAUTH2 Google", newXO, googleJSON, "", TokenError{"401", "bearer mac", "https://mail.google.com/"}},
		{"OAUTHBEARER RFC 7628", newOB, rfcJSON, "\x01", TokenError{Status: "invalid_token", Scope: "example_scope"}},
		{"not JSON", newXO, "not json", "", TokenError{}},
		{"empty challenge", newOB, "", "\x01", TokenError{}},
		{"JSON array", newOB, `["invalid_token"]`, "\x01", TokenError{}},
		{"non-string members", newXO, `{"status":401,"scope":["a"],"schemes":"Bearer"}`, "", TokenError{Schemes: "Bearer"}},
		{"too large", newOB, `{"status":"invalid_token","pad":"` + strings.Repeat("x", maxTokenErrorJSON) + `"}`, "\x01", TokenError{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.mech()
			must(t, err)
			if ServerError(m) != nil {
				t.Error("ServerError before the exchange is not nil")
			}
			start(t, m)
			resp, err := m.Next([]byte(tc.challenge))
			must(t, err)
			if resp == nil {
				t.Error("dummy response is nil, want a non-nil slice")
			}
			equal(t, "dummy response", string(resp), tc.dummy)
			te := ServerError(m)
			if te == nil {
				t.Fatal("ServerError = nil after an error challenge")
			}
			equal(t, "TokenError", *te, tc.want)
			te.Status = "changed"
			equal(t, "Status after changing a copy", ServerError(m).Status, tc.want.Status)

			errorIs(t, "Complete after an error challenge", m.Complete(), ErrProtocol)
			_, err = m.Next([]byte(tc.challenge))
			errorIs(t, "second challenge", err, ErrProtocol)
		})
	}
}

func TestTokenMechanismMisuse(t *testing.T) {
	for _, mk := range []func() (Mechanism, error){
		func() (Mechanism, error) { return XOAuth2("u", "t") },
		func() (Mechanism, error) { return OAuthBearer("u", "", 0, "t") },
	} {
		m, err := mk()
		must(t, err)
		if _, err := m.Next(nil); err == nil {
			t.Errorf("%v: Next before Start succeeded", m)
		}
		if m.Complete() == nil {
			t.Errorf("%v: Complete before Start succeeded", m)
		}
		start(t, m)
		if _, _, err := m.Start(); err == nil {
			t.Errorf("%v: second Start succeeded", m)
		}
	}
}

func TestTokenErrorText(t *testing.T) {
	equal(t, "empty", (&TokenError{}).Error(), "sasl: server rejected the OAuth token")
	equal(t, "full", (&TokenError{"invalid_token", "Bearer", "mail\r\nx"}).Error(),
		`sasl: server rejected the OAuth token: status="invalid_token" schemes="Bearer" scope="mail\r\nx"`)
}

func TestServerErrorOtherMechanisms(t *testing.T) {
	if ServerError(nil) != nil {
		t.Error("ServerError(nil) != nil")
	}
	m, err := Plain("", "a", "b")
	must(t, err)
	if ServerError(m) != nil {
		t.Error("ServerError(PLAIN) != nil")
	}
}

func TestOAuthBearerOptionalParts(t *testing.T) {
	for _, tc := range []struct {
		user, host string
		port       int
		want       string
	}{
		{"", "", 0, "n,,\x01auth=Bearer tok\x01\x01"},
		{"u", "", 0, "n,a=u,\x01auth=Bearer tok\x01\x01"},
		{"u", "mx.example", 0, "n,a=u,\x01host=mx.example\x01auth=Bearer tok\x01\x01"},
		{"u", "", 587, "n,a=u,\x01port=587\x01auth=Bearer tok\x01\x01"},
		{"a,b=c", "h", 25, "n,a=a=2Cb=3Dc,\x01host=h\x01port=25\x01auth=Bearer tok\x01\x01"},
	} {
		m, err := OAuthBearer(tc.user, tc.host, tc.port, "tok")
		must(t, err)
		ir, ok := start(t, m)
		equal(t, "initial response present", ok, true)
		equal(t, "initial response", string(ir), tc.want)
	}
}

func TestConstructorValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func() (Mechanism, error)
		want string
	}{
		{"PLAIN empty user", func() (Mechanism, error) { return Plain("", "", "p") }, "sasl: PLAIN: username is empty"},
		{"PLAIN empty password", func() (Mechanism, error) { return Plain("", "u", "") }, "sasl: PLAIN: password is empty"},
		{"PLAIN NUL user", func() (Mechanism, error) { return Plain("", "u\x00", "p") }, "sasl: PLAIN: username contains NUL"},
		{"PLAIN NUL password", func() (Mechanism, error) { return Plain("", "u", "p\x00q") }, "sasl: PLAIN: password contains NUL"},
		{"PLAIN NUL authzid", func() (Mechanism, error) { return Plain("\x00", "u", "p") }, "sasl: PLAIN: authorization identity contains NUL"},
		{"PLAIN bad UTF-8 user", func() (Mechanism, error) { return Plain("", "\xff", "p") }, "sasl: PLAIN: username is not valid UTF-8"},
		{"LOGIN empty user", func() (Mechanism, error) { return Login("", "p") }, "sasl: LOGIN: username is empty"},
		{"LOGIN empty password", func() (Mechanism, error) { return Login("u", "") }, "sasl: LOGIN: password is empty"},
		{"LOGIN NUL password", func() (Mechanism, error) { return Login("u", "\x00") }, "sasl: LOGIN: password contains NUL"},
		{"SCRAM empty user", func() (Mechanism, error) { return ScramSHA256("", "p") }, "sasl: SCRAM-SHA-256: username is empty"},
		{"SCRAM empty password", func() (Mechanism, error) { return ScramSHA256("u", "") }, "sasl: SCRAM-SHA-256: password is empty"},
		{"SCRAM NUL user", func() (Mechanism, error) { return ScramSHA256("\x00", "p") }, "sasl: SCRAM-SHA-256: username contains NUL"},
		{"SCRAM LF password", func() (Mechanism, error) { return ScramSHA256("u", "p\n") }, "sasl: SCRAM-SHA-256: password contains CR or LF"},
		{"SCRAM tab user", func() (Mechanism, error) { return ScramSHA256("u\t", "p") }, "sasl: SCRAM-SHA-256: username contains an ASCII control character"},
		{"SCRAM bad UTF-8 password", func() (Mechanism, error) { return ScramSHA256("u", "\xc3") }, "sasl: SCRAM-SHA-256: password is not valid UTF-8"},
		{"XOAUTH2 empty user", func() (Mechanism, error) { return XOAuth2("", "t") }, "sasl: XOAUTH2: username is empty"},
		{"XOAUTH2 empty token", func() (Mechanism, error) { return XOAuth2("u", "") }, "sasl: XOAUTH2: token is empty"},
		{"XOAUTH2 ^A user", func() (Mechanism, error) { return XOAuth2("u\x01auth=x", "t") }, "sasl: XOAUTH2: username contains ^A (0x01)"},
		{"XOAUTH2 ^A token", func() (Mechanism, error) { return XOAuth2("u", "t\x01") }, "sasl: XOAUTH2: token contains ^A (0x01)"},
		{"XOAUTH2 CR token", func() (Mechanism, error) { return XOAuth2("u", "t\r") }, "sasl: XOAUTH2: token contains CR or LF"},
		{"XOAUTH2 space token", func() (Mechanism, error) { return XOAuth2("u", "Bearer t") }, "sasl: XOAUTH2: token contains a space"},
		{"XOAUTH2 non-ASCII token", func() (Mechanism, error) { return XOAuth2("u", "t\u00e9") }, "sasl: XOAUTH2: token contains a non-ASCII character"},
		{"OAUTHBEARER empty token", func() (Mechanism, error) { return OAuthBearer("u", "h", 1, "") }, "sasl: OAUTHBEARER: token is empty"},
		{"OAUTHBEARER ^A user", func() (Mechanism, error) { return OAuthBearer("\x01", "h", 1, "t") }, "sasl: OAUTHBEARER: username contains ^A (0x01)"},
		{"OAUTHBEARER NUL token", func() (Mechanism, error) { return OAuthBearer("u", "h", 1, "\x00") }, "sasl: OAUTHBEARER: token contains NUL"},
		{"OAUTHBEARER ^A host", func() (Mechanism, error) { return OAuthBearer("u", "h\x01port=1", 1, "t") }, "sasl: OAUTHBEARER: host contains ^A (0x01)"},
		{"OAUTHBEARER LF host", func() (Mechanism, error) { return OAuthBearer("u", "h\n", 1, "t") }, "sasl: OAUTHBEARER: host contains CR or LF"},
		{"OAUTHBEARER U-label host", func() (Mechanism, error) { return OAuthBearer("u", "b\u00fccher.example", 1, "t") }, "sasl: OAUTHBEARER: host contains a non-ASCII character"},
		{"OAUTHBEARER negative port", func() (Mechanism, error) { return OAuthBearer("u", "h", -1, "t") }, "sasl: OAUTHBEARER: port -1 is out of range"},
		{"OAUTHBEARER port too big", func() (Mechanism, error) { return OAuthBearer("u", "h", 65536, "t") }, "sasl: OAUTHBEARER: port 65536 is out of range"},
		{"CRAM-MD5 empty user", func() (Mechanism, error) { return CramMD5("", "p") }, "sasl: CRAM-MD5: username is empty"},
		{"CRAM-MD5 empty password", func() (Mechanism, error) { return CramMD5("u", "") }, "sasl: CRAM-MD5: password is empty"},
		{"CRAM-MD5 LF user", func() (Mechanism, error) { return CramMD5("u\n", "p") }, "sasl: CRAM-MD5: username contains CR or LF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.make()
			if m != nil {
				t.Errorf("mechanism = %v, want nil", m)
			}
			errorIs(t, "constructor", err, ErrInvalidCredentials)
			if err != nil {
				equal(t, "error text", err.Error(), tc.want)
			}
		})
	}
}

func TestConstructorsAccept(t *testing.T) {
	// Characters that are harmless inside base64 are accepted where the
	// mechanism's format allows them.
	for name, mk := range map[string]func() (Mechanism, error){
		"PLAIN CR LF password":    func() (Mechanism, error) { return Plain("", "u", "p\r\nq") },
		"PLAIN Latin-1 password":  func() (Mechanism, error) { return Plain("", "u", "p\xe9") },
		"LOGIN control password":  func() (Mechanism, error) { return Login("u", "p\x01") },
		"SCRAM comma user":        func() (Mechanism, error) { return ScramSHA256("a,b=c", "p,=q") },
		"OAUTHBEARER empty user":  func() (Mechanism, error) { return OAuthBearer("", "", 0, "t") },
		"OAUTHBEARER max port":    func() (Mechanism, error) { return OAuthBearer("u", "h", 65535, "t") },
		"XOAUTH2 base64url token": func() (Mechanism, error) { return XOAuth2("u", "eyJ0.eXAi_-~+/==") },
	} {
		if _, err := mk(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestStrongest(t *testing.T) {
	for _, tc := range []struct {
		offered []string
		want    string
	}{
		{nil, ""},
		{[]string{"GSSAPI", "XOAUTH2", "OAUTHBEARER"}, ""},
		{[]string{"CRAM-MD5"}, "CRAM-MD5"},
		{[]string{"CRAM-MD5", "LOGIN"}, "LOGIN"},
		{[]string{"login", "plain", "cram-md5"}, "PLAIN"},
		{[]string{"PLAIN", "LOGIN", "scram-sha-256", "CRAM-MD5"}, "SCRAM-SHA-256"},
		{[]string{"SCRAM-SHA-1", "SCRAM-SHA-256-PLUS", "LOGIN"}, "LOGIN"},
		{[]string{" Plain "}, "PLAIN"},
	} {
		equal(t, strings.Join(tc.offered, " "), Strongest(tc.offered), tc.want)
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		make func() (Mechanism, error)
		want string
	}{
		{func() (Mechanism, error) { return Plain("", "alice", "pw") }, "sasl.PLAIN(user=alice)"},
		{func() (Mechanism, error) { return Plain("bob", "alice", "pw") }, "sasl.PLAIN(authzid=bob,user=alice)"},
		{func() (Mechanism, error) { return Plain("", "al ice", "pw") }, `sasl.PLAIN(user="al ice")`},
		{func() (Mechanism, error) { return Login("alice", "pw") }, "sasl.LOGIN(user=alice)"},
		{func() (Mechanism, error) { return ScramSHA256("alice", "pw") }, "sasl.SCRAM-SHA-256(user=alice)"},
		{func() (Mechanism, error) { return XOAuth2("a@example.com", "t") }, "sasl.XOAUTH2(user=a@example.com)"},
		{func() (Mechanism, error) { return OAuthBearer("a", "h", 25, "t") }, "sasl.OAUTHBEARER(user=a,host=h,port=25)"},
		{func() (Mechanism, error) { return OAuthBearer("", "", 0, "t") }, `sasl.OAUTHBEARER(user="")`},
		{func() (Mechanism, error) { return CramMD5("tim", "pw") }, "sasl.CRAM-MD5(user=tim)"},
	} {
		m, err := tc.make()
		must(t, err)
		if s, ok := m.(interface{ String() string }); !ok {
			t.Errorf("%T has no String method", m)
		} else {
			equal(t, "String", s.String(), tc.want)
		}
	}
}

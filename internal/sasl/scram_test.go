package sasl

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestParseServerFirst(t *testing.T) {
	const cn = rfc7677ClientNonce
	const sn = rfc7677ServerNonce
	const salt = "s=W22ZaJ0SNY7soEsUEjb6gQ=="
	ok := []struct {
		name, msg string
		iter      int
	}{
		{"RFC 7677", rfc7677ServerFirst, 4096},
		{"one extra nonce character", "r=" + cn + "x," + salt + ",i=4096", 4096},
		{"largest count", "r=" + sn + "," + salt + ",i=600000", 600000},
		{"unknown extension", rfc7677ServerFirst + ",x=whatever", 4096},
		{"two unknown extensions", rfc7677ServerFirst + ",x=1,Y=2", 4096},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			nonce, s, iter, err := parseServerFirst([]byte(tc.msg), cn)
			must(t, err)
			if !strings.HasPrefix(nonce, cn) || len(nonce) <= len(cn) {
				t.Errorf("nonce %q does not extend %q", nonce, cn)
			}
			if len(s) == 0 {
				t.Error("empty salt")
			}
			equal(t, "iteration count", iter, tc.iter)
		})
	}

	bad := []struct{ name, msg, want string }{
		{"empty", "", "server-first message is empty"},
		{"garbage", "hello world", "missing the r= attribute"},
		{"NUL", "r=" + sn + "\x00," + salt + ",i=4096", "contains NUL"},
		{"too long", "r=" + cn + strings.Repeat("x", maxServerMessage) + "," + salt + ",i=4096", "longer than"},
		{"mandatory extension first", "m=ext," + rfc7677ServerFirst, "mandatory extension m="},
		{"mandatory extension last", rfc7677ServerFirst + ",m=ext", "mandatory extension m="},
		{"malformed extension", rfc7677ServerFirst + ",xyz", "malformed attribute"},
		{"empty extension", rfc7677ServerFirst + ",x=", "empty value"},
		{"count twice", rfc7677ServerFirst + ",i=1", "repeats or misplaces the attribute i="},
		{"nonce twice", rfc7677ServerFirst + ",r=" + sn, "repeats or misplaces the attribute r="},
		{"salt twice", rfc7677ServerFirst + "," + salt, "repeats or misplaces the attribute s="},
		{"server-final attribute", rfc7677ServerFirst + ",v=AAAA", "repeats or misplaces the attribute v="},
		{"extension twice", rfc7677ServerFirst + ",x=1,x=2", "extension x= twice"},
		{"missing salt and count", "r=" + sn, "missing the s= attribute"},
		{"missing count", "r=" + sn + "," + salt, "missing the i= attribute"},
		{"wrong order", salt + ",r=" + sn + ",i=4096", "missing the r= attribute"},
		{"count before salt", "r=" + sn + ",i=4096," + salt, "missing the s= attribute"},
		{"empty nonce", "r=," + salt + ",i=4096", "server nonce is empty"},
		{"nonce with a space", "r=" + cn + " x," + salt + ",i=4096", "not printable"},
		{"nonce not extending", "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j," + salt + ",i=4096", "does not extend"},
		{"nonce equal to client nonce", "r=" + cn + "," + salt + ",i=4096", "does not extend"},
		{"nonce a prefix of client nonce", "r=" + cn[:5] + "," + salt + ",i=4096", "does not extend"},
		{"nonce with client nonce inside", "r=x" + cn + "," + salt + ",i=4096", "does not extend"},
		{"bad base64 salt", "r=" + sn + ",s=!!!!,i=4096", "salt is not valid base64"},
		{"salt with line break", "r=" + sn + ",s=W22ZaJ0S\r\nNY7soEsUEjb6gQ==,i=4096", "salt is not valid base64"},
		{"truncated salt", "r=" + sn + ",s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096", "salt is not valid base64"},
		{"empty salt", "r=" + sn + ",s=,i=4096", "salt is empty"},
		{"count 1", "r=" + sn + "," + salt + ",i=1", "iteration count 1 is below the minimum of 4096"},
		{"count 4095", "r=" + sn + "," + salt + ",i=4095", "iteration count 4095 is below the minimum of 4096"},
		{"count 600001", "r=" + sn + "," + salt + ",i=600001", "iteration count 600001 exceeds the maximum of 600000"},
		{"count 10000000", "r=" + sn + "," + salt + ",i=10000000", "exceeds the maximum of 600000"},
		{"huge count", "r=" + sn + "," + salt + ",i=99999999999999999999999999", "exceeds the maximum of 600000"},
		{"count 0", "r=" + sn + "," + salt + ",i=0", "leading zero"},
		{"leading zero", "r=" + sn + "," + salt + ",i=04096", "leading zero"},
		{"signed count", "r=" + sn + "," + salt + ",i=+4096", "not a decimal number"},
		{"negative count", "r=" + sn + "," + salt + ",i=-4096", "not a decimal number"},
		{"hex count", "r=" + sn + "," + salt + ",i=0x1000", "not a decimal number"},
		{"empty count", "r=" + sn + "," + salt + ",i=", "iteration count is empty"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := parseServerFirst([]byte(tc.msg), cn)
			errorIs(t, "parseServerFirst", err, ErrProtocol)
			if err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestParseServerFinal(t *testing.T) {
	wantSig, _ := base64.StdEncoding.DecodeString(rfc7677ServerSig)
	for _, msg := range []string{rfc7677ServerFinal, rfc7677ServerFinal + ",x=ext"} {
		sig, err := parseServerFinal([]byte(msg))
		must(t, err)
		equal(t, "signature", string(sig), string(wantSig))
	}

	for _, tc := range []struct{ msg, value string }{
		{"e=invalid-proof", "invalid-proof"},
		{"e=unknown-user,x=ext", "unknown-user"},
		{"e=", ""},
	} {
		_, err := parseServerFinal([]byte(tc.msg))
		var se *SCRAMError
		if !errors.As(err, &se) {
			t.Errorf("parseServerFinal(%q) = %v, want a *SCRAMError", tc.msg, err)
			continue
		}
		equal(t, "server error value", se.Value, tc.value)
	}

	for _, tc := range []struct{ name, msg, want string }{
		{"empty", "", "empty"},
		{"garbage", "garbage", "neither v= nor e="},
		{"other attribute", "r=abc", "neither v= nor e="},
		{"empty signature", "v=", "server signature is empty"},
		{"bad base64", "v=!!!", "not valid base64"},
		{"NUL", "v=abc\x00", "contains NUL"},
		{"mandatory extension", rfc7677ServerFinal + ",m=x", "mandatory extension m="},
		{"malformed extension", rfc7677ServerFinal + ",", "malformed attribute"},
		{"signature twice", rfc7677ServerFinal + ",v=AAAA", "repeats or misplaces the attribute v="},
		{"extension twice", rfc7677ServerFinal + ",x=1,x=2", "extension x= twice"},
		{"too long", rfc7677ServerFinal + ",x=" + strings.Repeat("a", maxServerMessage), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServerFinal([]byte(tc.msg))
			errorIs(t, "parseServerFinal", err, ErrProtocol)
			if err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestScramBadServerSignature(t *testing.T) {
	m := newRFC7677AfterFirst(t)
	sig, _ := base64.StdEncoding.DecodeString(rfc7677ServerSig)
	sig[0] ^= 1
	_, err := m.Next([]byte("v=" + base64.StdEncoding.EncodeToString(sig)))
	errorIs(t, "tampered signature", err, ErrServerVerification)
	if err := m.Complete(); err == nil {
		t.Error("Complete succeeded after a bad server signature")
	}
	// The exchange stays failed: a correct signature afterwards is refused.
	if _, err := m.Next([]byte(rfc7677ServerFinal)); err == nil {
		t.Error("Next accepted a signature after the exchange failed")
	}
	if err := m.Complete(); err == nil {
		t.Error("Complete succeeded after the exchange failed")
	}
}

func TestScramShortServerSignature(t *testing.T) {
	m := newRFC7677AfterFirst(t)
	_, err := m.Next([]byte("v=" + rfc7677ServerSig[:20]))
	errorIs(t, "short signature", err, ErrServerVerification)
}

func TestScramMissingServerFinal(t *testing.T) {
	m := newRFC7677AfterFirst(t)
	err := m.Complete()
	errorIs(t, "Complete without v=", err, ErrServerVerification)
	if err != nil && !strings.Contains(err.Error(), "not authenticated") {
		t.Errorf("error %q does not say the server is not authenticated", err)
	}
}

func TestScramServerErrorValue(t *testing.T) {
	m := newRFC7677AfterFirst(t)
	_, err := m.Next([]byte("e=invalid-proof"))
	var se *SCRAMError
	if !errors.As(err, &se) {
		t.Fatalf("Next(e=invalid-proof) = %v, want a *SCRAMError", err)
	}
	equal(t, "server error value", se.Value, "invalid-proof")
	equal(t, "error text", err.Error(), `sasl: SCRAM-SHA-256: server error "invalid-proof"`)
	if m.Complete() == nil {
		t.Error("Complete succeeded after e=")
	}
}

func TestScramBadServerFirst(t *testing.T) {
	for _, tc := range []struct{ name, msg, want string }{
		{"garbage", "\xff\xfe garbage", "missing the r= attribute"},
		{"count 1", "r=" + rfc7677ServerNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", "below the minimum"},
		{"count 10000000", "r=" + rfc7677ServerNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000000", "exceeds the maximum"},
		{"nonce not extending", "r=somebodyelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"},
		{"server error instead of server-first", "e=other-error", "missing the r= attribute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newRFC7677(t)
			resp, err := m.Next([]byte(tc.msg))
			if resp != nil {
				t.Errorf("response = %q, want none", resp)
			}
			errorIs(t, "Next", err, ErrProtocol)
			if err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if m.Complete() == nil {
				t.Error("Complete succeeded after a bad server-first message")
			}
			if _, err := m.Next([]byte(rfc7677ServerFirst)); err == nil {
				t.Error("Next accepted a server-first message after the exchange failed")
			}
		})
	}
}

func TestScramMisuse(t *testing.T) {
	m, err := newScramSHA256("user", "pencil", fixedNonce(rfc7677ClientNonce))
	must(t, err)
	if _, err := m.Next([]byte(rfc7677ServerFirst)); err == nil {
		t.Error("Next before Start succeeded")
	}
	if m.Complete() == nil {
		t.Error("Complete before Start succeeded")
	}
	start(t, m)
	if _, _, err := m.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestScramNonceSource(t *testing.T) {
	failing := func() (string, error) { return "", errors.New("no entropy") }
	m, err := newScramSHA256("user", "pencil", failing)
	must(t, err)
	if _, _, err := m.Start(); err == nil || !strings.Contains(err.Error(), "no entropy") {
		t.Errorf("Start with a failing nonce source = %v", err)
	}

	for _, n := range []string{"", "has,comma", "has space", "caf\u00e9"} {
		m, err := newScramSHA256("user", "pencil", fixedNonce(n))
		must(t, err)
		if _, _, err := m.Start(); err == nil {
			t.Errorf("Start accepted the client nonce %q", n)
		}
	}
}

func TestScramRandomNonce(t *testing.T) {
	seen := map[string]bool{}
	for range 4 {
		m, err := ScramSHA256("user", "pencil")
		must(t, err)
		ir, ok := start(t, m)
		equal(t, "initial response present", ok, true)
		first := string(ir)
		nonce, found := strings.CutPrefix(first, "n,,n=user,r=")
		if !found {
			t.Fatalf("client-first = %q", first)
		}
		equal(t, "nonce length", len(nonce), base64.StdEncoding.EncodedLen(clientNonceBytes))
		if !isPrintable(nonce) {
			t.Errorf("nonce %q has a character RFC 5802 forbids", nonce)
		}
		if seen[nonce] {
			t.Errorf("nonce %q repeated", nonce)
		}
		seen[nonce] = true
	}
}

func TestScramUsernameEscaping(t *testing.T) {
	m, err := newScramSHA256("a=b,c", "pencil", fixedNonce("nonce"))
	must(t, err)
	ir, _ := start(t, m)
	equal(t, "client-first", string(ir), "n,,n=a=3Db=2Cc,r=nonce")
}

func TestScramNonASCIIPassword(t *testing.T) {
	// Non-ASCII passwords are sent as UTF-8 without SASLprep, so the
	// exchange must simply work with a server using the same bytes.
	m, err := newScramSHA256("jürgen", "pässwörd", fixedNonce(rfc7677ClientNonce))
	must(t, err)
	ir, _ := start(t, m)
	equal(t, "client-first", string(ir), "n,,n=jürgen,r="+rfc7677ClientNonce)
	final, err := m.Next([]byte(rfc7677ServerFirst))
	must(t, err)
	if strings.Contains(string(final), "p=dHzbZapWIk4jUhN") {
		t.Error("a different password produced the RFC's proof")
	}
}

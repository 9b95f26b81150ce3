package servertext

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const password = "Sup3r-S3cret-Passw0rd-9f8e7d"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"250 ok":                       "250 ok",
		"no\r\x1b[2K\r sent m.eml":     `no\r\x1b[2K\r sent m.eml`,
		"bell\a tab\t nul\x00 del\x7f": `bell\a tab\t nul\x00 del\x7f`,
		"caf\xc3\xa9 \xff":             `café \xff`,
		"csi \u009b2J":                 `csi \u009b2J`,
		"rtl \u202eexe.txt":            `rtl \u202eexe.txt`,
		"back\\slash":                  `back\slash`,
		"truncated \xe2\x82":           `truncated \xe2\x82`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
	var r *Redactor
	if got := r.CleanLines("a\nb\tc\rd"); got != "a\nb\tc\\rd" {
		t.Errorf("CleanLines = %q", got)
	}
}

// forms returns the forms of a secret a server could echo.
func forms(secret string) []string {
	out := []string{secret}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		out = append(out, enc.EncodeToString([]byte(secret)))
		out = append(out, enc.EncodeToString([]byte("\x00alice\x00"+secret)))
		out = append(out, enc.EncodeToString([]byte("xx"+secret+"yy")))
	}
	return out
}

func TestRedactor(t *testing.T) {
	var r Redactor
	r.AddSecret([]byte(password))
	line := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + password))
	r.AddSent([]byte(line), 7, 7+len(password))
	if got := r.CleanString("535 " + line); got != "535 AGFsa"+Marker {
		t.Errorf("an echo of the line keeps what is not secret only: %q", got)
	}
	for _, f := range forms(password) {
		mid := len(f) / 2
		frag := f[mid-MinFragment/2 : mid+MinFragment/2]
		for _, text := range []string{f, "535 5.7.8 failed: " + f + " (bye)", "\x1b" + f[:mid+MinFragment] + "\r", f[mid-6 : mid+6]} {
			got := r.CleanString(text)
			if strings.Contains(got, frag) {
				t.Errorf("Clean(%q) = %q keeps a fragment", text, got)
			}
			if !strings.Contains(got, Marker) {
				t.Errorf("Clean(%q) = %q has no marker", text, got)
			}
		}
	}
	if got := r.CleanString("535 5.7.8 Authentication failed for alice"); got != "535 5.7.8 Authentication failed for alice" {
		t.Errorf("unrelated text changed: %q", got)
	}
	var short Redactor
	short.AddSecret([]byte("hunt3r"))
	if got := short.CleanString("pw hunt3r!"); got != "pw hunt3r!" {
		t.Errorf("a secret under MinFragment is not looked for in free text: %q", got)
	}
	if !short.Matches("hunt3r") || short.Matches("hunt3") || short.Matches("xhunt3r") {
		t.Error("Matches recognises the whole short secret, and only it")
	}
	short.AddSecret([]byte("abc"))
	if short.Matches("abc") {
		t.Error("a secret under MinSecret is not registered")
	}
}

// TestShortSecretLeavesTextAlone: the passwords of issue 20, which the
// redaction used to reveal by where its marker landed.
func TestShortSecretLeavesTextAlone(t *testing.T) {
	var r Redactor
	r.AddSecret([]byte("queued"))
	const reply = "Ok: queued as 4XyZ12ab"
	if got := r.CleanString(reply); got != reply {
		t.Errorf("CleanString(%q) = %q", reply, got)
	}
	if !r.Matches("queued") || r.Matches("4XyZ12ab") {
		t.Error("Matches")
	}
}

// TestEscapingCannotRebuild: a secret with control characters, echoed
// raw, as escapes written out by the server, or half and half, leaves no
// fragment in the escaped text either.
func TestEscapingCannotRebuild(t *testing.T) {
	const secret = "k9\tQz7\bR2\rm"
	esc := Printable(secret) // k9\tQz7\bR2\rm in 15 characters
	var r Redactor
	r.AddSecret([]byte(secret))
	for _, text := range []string{
		"535 " + secret + " bad",
		"535 " + esc + " bad",
		"535 k9\tQz7" + esc[len(`k9\tQz7`):] + " bad",
		"535 " + esc[:9] + "\bR2\rm bad",
	} {
		for _, lines := range []bool{false, true} {
			got := r.Clean([]byte(text))
			if lines {
				got = r.CleanLines(text)
			}
			for _, form := range []string{secret, esc, strings.ReplaceAll(esc, `\t`, "\t")} {
				for i := 0; i+MinFragment <= len(form); i++ {
					if strings.Contains(got, form[i:i+MinFragment]) {
						t.Errorf("Clean(%q, lines=%v) = %q keeps %q", text, lines, got, form[i:i+MinFragment])
					}
				}
			}
			if !strings.HasPrefix(got, "535 ") || !strings.HasSuffix(got, " bad") || !strings.Contains(got, Marker) {
				t.Errorf("Clean(%q, lines=%v) = %q", text, lines, got)
			}
		}
	}
}

// TestRedactorShared: sessions register and clean at once (go test -race
// checks the locking); a secret one registers is removed from what any
// cleans afterwards.
func TestRedactorShared(t *testing.T) {
	var r Redactor
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				secret := fmt.Sprintf("session-%d-secret-%d", g, i)
				r.AddSecret([]byte(secret))
				if got := r.CleanString("535 " + secret); strings.Contains(got, "secret-") {
					t.Errorf("%q kept in %q", secret, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := r.CleanString("250 session-0-secret-0"); got != "250 session-0-secret-0" && !strings.Contains(got, Marker) {
		t.Errorf("CleanString = %q", got)
	}
}

// numbered returns the i-th of a series of secrets that share no
// fragment.
func numbered(i int) string {
	h := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
	return base64.RawURLEncoding.EncodeToString(h[:12])
}

// TestRedactorBounds: the oldest secrets are forgotten past MaxSecrets or
// MaxWindows; registering a secret again keeps it.
func TestRedactorBounds(t *testing.T) {
	var r Redactor
	const password = "the-password-of-the-account"
	r.AddSecret([]byte(password))
	for i := range MaxSecrets + 10 {
		r.AddSecret([]byte(numbered(i)))
		if i%100 == 0 {
			r.AddSecret([]byte(password)) // each login
		}
		if i == 100 {
			r.AddSecret([]byte(password))
		}
	}
	r.mu.Lock()
	n, w := len(r.entries), r.windows
	r.mu.Unlock()
	if n > MaxSecrets || w > MaxWindows {
		t.Fatalf("%d secrets and %d windows held", n, w)
	}
	if text := "x " + numbered(0) + " x"; r.CleanString(text) != text {
		t.Errorf("the oldest secret is remembered: %q", r.CleanString(text))
	}
	if got := r.CleanString("x " + numbered(MaxSecrets+9) + " x"); got != "x "+Marker+" x" {
		t.Errorf("the newest secret is forgotten: %q", got)
	}
	if got := r.CleanString("x " + password + " x"); got != "x "+Marker+" x" {
		t.Errorf("the password, registered at each login, is forgotten: %q", got)
	}

	var big Redactor
	big.AddSecret([]byte(password))
	token := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 2000) // 72 000 octets
	big.AddSecret([]byte(token))
	big.mu.Lock()
	n = len(big.entries)
	big.mu.Unlock()
	if n != 1 {
		t.Errorf("%d entries after a secret larger than MaxWindows, want it alone", n)
	}
	if got := big.CleanString(token[1000:1020]); strings.Contains(got, "abcdefgh") {
		t.Errorf("the newest secret is kept whole: %q", got)
	}
}

// TestCleanIsLinear: the work per octet is bounded; measured by
// allocations, which must stay in proportion to the text.
func TestCleanIsLinear(t *testing.T) {
	var r Redactor
	r.AddSecret([]byte(strings.Repeat("tok3n-", 400)))
	text := []byte(strings.Repeat("\x1b[2K tok3n-tok3n abc ", 6000))
	allocs := testing.AllocsPerRun(3, func() { r.Clean(text) })
	if allocs > 40 {
		t.Errorf("%v allocations for %d octets", allocs, len(text))
	}
}

func FuzzClean(f *testing.F) {
	f.Add([]byte(password), []byte("535 "+password), true)
	f.Add([]byte("tok"), []byte("\x1b[2K\r\u202e"), false)
	f.Fuzz(func(t *testing.T, secret, text []byte, lines bool) {
		var r Redactor
		r.AddSecret(secret)
		var got string
		if lines {
			got = r.CleanLines(string(text))
		} else {
			got = r.Clean(text)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8: %q", got)
		}
		for _, c := range got {
			if !unicode.IsPrint(c) && !(lines && (c == '\n' || c == '\t')) {
				t.Fatalf("unprintable %U in %q", c, got)
			}
		}
		if len(secret) >= MinFragment && len(secret) < 64 && strings.Contains(got, string(secret)) {
			t.Fatalf("secret kept in %q", got)
		}
		if len(got) > 4*len(text)+len(Marker)*len(text) {
			t.Fatalf("output of %d octets for %d", len(got), len(text))
		}
	})
}

// FuzzRedactor: secrets and replies together. The reply is built from
// the fuzzer's text with the secrets put into it raw, escaped as the
// client escapes, or half of each; whatever it is, no fragment of
// MinFragment octets of a secret of MinFragment octets or more survives
// in the output, raw or escaped (a fragment that the output holds only
// across a marker is not a survivor: the marker's own characters make
// it).
func FuzzRedactor(f *testing.F) {
	f.Add([]byte("k9\tQz7\bR2\rm"), []byte("Sup3r-S3cret"), []byte("535 \x00 bad"), uint8(0), uint8(1))
	f.Add([]byte("queued"), []byte("2.0.0 Ok"), []byte("250 2.0.0 Ok: queued as 4XyZ12ab"), uint8(6), uint8(9))
	f.Add([]byte("pa\x1bss\u202eword"), []byte("tok\xffen-1234"), []byte("\r\n"), uint8(2), uint8(14))
	f.Fuzz(func(t *testing.T, s1, s2, text []byte, how, at uint8) {
		var r Redactor
		secrets := [][]byte{s1, s2}
		for _, s := range secrets {
			r.AddSecret(s)
		}
		reply := append([]byte(nil), text...)
		for k, s := range secrets {
			var form []byte
			switch (how >> (2 * k)) & 3 {
			case 0:
				form = append([]byte(nil), s...)
			case 1:
				form = []byte(Printable(string(s)))
			case 2:
				half := len(s) / 2
				form = append(append([]byte(nil), s[:half]...), Printable(string(s[half:]))...)
			case 3:
				form = []byte((*Redactor)(nil).CleanLines(string(s)))
			}
			pos := min(int(at)*(k+1), len(reply))
			reply = append(reply[:pos:pos], append(form[:len(form):len(form)], reply[pos:]...)...)
		}
		for _, lines := range []bool{false, true} {
			var got string
			if lines {
				got = r.CleanLines(string(reply))
			} else {
				got = r.Clean(reply)
			}
			pieces := strings.Split(got, Marker)
			for _, s := range secrets {
				if len(s) < MinFragment {
					continue
				}
				for _, form := range []string{string(s), Printable(string(s)), (*Redactor)(nil).CleanLines(string(s))} {
					for i := 0; i+MinFragment <= len(form); i++ {
						w := form[i : i+MinFragment]
						for _, p := range pieces {
							if strings.Contains(p, w) {
								t.Fatalf("secret %q: fragment %q survives in %q (from %q, lines=%v)", s, w, got, reply, lines)
							}
						}
					}
				}
			}
		}
	})
}

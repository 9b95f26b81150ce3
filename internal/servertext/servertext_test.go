package servertext

import (
	"encoding/base64"
	"strings"
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
	if got := short.CleanString("pw hunt3r!"); got != "pw "+Marker+"!" {
		t.Errorf("a short secret: %q", got)
	}
	short.AddSecret([]byte("abc"))
	if got := short.CleanString("abc"); got != "abc" {
		t.Errorf("a secret under MinSecret is not redacted: %q", got)
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

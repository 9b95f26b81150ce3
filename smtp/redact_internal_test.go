package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/smtpkit/smtpkit/internal/servertext"
)

// SharesRedactor reports whether c filters with r: a Client made with
// Options.Redactor set does from its greeting on, once newClient hands
// the Redactor to the session's interner. For the tests of smtp_test.
func SharesRedactor(c *Client, r *Redactor) bool { return c.texts.red == r }

func readWith(t *testing.T, in *interner, raw string, enhanced bool) Reply {
	t.Helper()
	rep, err := readReplyIn(bufio.NewReader(strings.NewReader(raw)), OpDATA, enhanced, in)
	if err != nil {
		t.Fatalf("readReplyIn(%q): %v", raw, err)
	}
	return rep
}

// TestReplyParsedBeforeRedaction: the code, the enhanced code and the
// queue id come from the reply as received; only the text for people is
// redacted, and a secret shorter than servertext.MinFragment is not
// looked for in it (issue 20: the passwords "queued" and "2.0.0 Ok").
func TestReplyParsedBeforeRedaction(t *testing.T) {
	const postfix = "250 2.0.0 Ok: queued as 4XyZ12ab\r\n"
	for _, tc := range []struct {
		secret, raw string
		enhanced    bool
		enh, text   string
		qid         string
	}{
		{"queued", postfix, true, "2.0.0", "Ok: queued as 4XyZ12ab", "4XyZ12ab"},
		{"queued", postfix, false, "", "2.0.0 Ok: queued as 4XyZ12ab", "4XyZ12ab"},
		{"2.0.0 Ok", postfix, true, "2.0.0", "[redacted]: queued as 4XyZ12ab", "4XyZ12ab"},
		{"2.0.0 Ok", postfix, false, "", "[redacted]: queued as 4XyZ12ab", "4XyZ12ab"},
		{"Ok: queued as", postfix, true, "2.0.0", "[redacted] 4XyZ12ab", "4XyZ12ab"},
		{"Ok: queued as", "250-2.0.0 first\r\n250 2.0.0 Ok: queued as 4XyZ12ab\r\n", true, "2.0.0", "first [redacted] 4XyZ12ab", "4XyZ12ab"},
		{"secret-4XyZ12ab", "250 2.0.0 Ok: queued as secret-4XyZ12ab\r\n", true, "2.0.0", "Ok: queued as [redacted]", servertext.Marker},
		{"Q1x9", "250 2.0.0 Ok: queued as Q1x9\r\n", true, "2.0.0", "Ok: queued as Q1x9", servertext.Marker},
		{"OK id=1abcDE", "250 OK id=1abcDE-000123-Fg\r\n", true, "", "[redacted]-000123-Fg", "1abcDE-000123-Fg"},
	} {
		var in interner
		in.addSecret([]byte(tc.secret))
		rep := readWith(t, &in, tc.raw, tc.enhanced)
		if rep.Code != 250 || rep.Enhanced != tc.enh || rep.Text() != tc.text {
			t.Errorf("secret %q, %q: got %d %q %q, want 250 %q %q", tc.secret, tc.raw, rep.Code, rep.Enhanced, rep.Text(), tc.enh, tc.text)
		}
		if got := in.outcomeQueueID(&rep); got != tc.qid {
			t.Errorf("secret %q, %q: queue id %q, want %q", tc.secret, tc.raw, got, tc.qid)
		}
		if len(tc.secret) >= servertext.MinFragment && strings.Contains(rep.String(), tc.secret) {
			t.Errorf("secret %q kept in %q", tc.secret, rep.String())
		}
	}
}

// TestInternerSharedRedactor: a text one session interned before another
// session registered a secret it holds is cleaned again.
func TestInternerSharedRedactor(t *testing.T) {
	red := new(Redactor)
	var a, b interner
	a.share(red)
	b.share(red)
	const raw = "250 2.1.5 tok-abcdefgh-1234 ok\r\n"
	if rep := readWith(t, &a, raw, true); rep.Text() != "tok-abcdefgh-1234 ok" {
		t.Fatalf("before: %q", rep.Text())
	}
	b.addSecret([]byte("tok-abcdefgh-1234"))
	if rep := readWith(t, &a, raw, true); rep.Text() != "[redacted] ok" {
		t.Errorf("after another session registered the secret: %q", rep.Text())
	}
	if got := red.Clean("x tok-abcdefgh-1234"); got != "x [redacted]" {
		t.Errorf("Redactor.Clean = %q", got)
	}
}

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestReadErrorCleaned: a transport error read with a reply (a TLS
// handshake that runs at the first read and fails on a certificate
// whose names the server chose) reaches the caller printable and
// redacted, and still unwraps to the cause.
func TestReadErrorCleaned(t *testing.T) {
	cause := errors.New("x509: certificate is valid for mx\x1b[2K\r.example, s3cret-passw0rd.example, not localhost")
	var in interner
	in.share(new(Redactor))
	in.red.AddSecret("s3cret-passw0rd")
	for _, in := range []*interner{nil, &in} {
		_, err := readReplyIn(bufio.NewReader(errReader{cause}), OpGreeting, false, in)
		if !errors.Is(err, cause) {
			t.Fatalf("%v does not unwrap to the cause", err)
		}
		if msg := err.Error(); strings.ContainsAny(msg, "\x1b\r") || in != nil && strings.Contains(msg, "s3cret") {
			t.Errorf("error text %q", msg)
		}
	}
	_, err := readReplyIn(bufio.NewReader(errReader{io.ErrUnexpectedEOF}), OpGreeting, false, &in)
	if err != io.ErrUnexpectedEOF {
		t.Errorf("a clean error is returned as it is: %#v", err)
	}
}

// FuzzReplyRedacted: a secret and a reply that holds it (raw, escaped as
// the client escapes, at a place the fuzzer picks, maybe astride the
// enhanced code): no fragment of servertext.MinFragment octets of the
// secret survives in the reply's text, raw or escaped, nor in the queue
// id, unless a marker's own characters make it.
func FuzzReplyRedacted(f *testing.F) {
	f.Add([]byte("2.0.0 Ok"), []byte("2.0.0 Ok: queued as 4XyZ12ab"), uint8(0), true)
	f.Add([]byte("k9\tQz7\bR2\rm"), []byte("5.7.8 bad "), uint8(10), false)
	f.Add([]byte("queued as 4XyZ12ab"), []byte("Ok: "), uint8(4), true)
	f.Fuzz(func(t *testing.T, secret, text []byte, at uint8, escaped bool) {
		if len(secret) < servertext.MinFragment || bytes.ContainsAny(secret, "\r\n") && !escaped {
			return
		}
		form := secret
		if escaped {
			form = []byte(servertext.Printable(string(secret)))
		}
		pos := min(int(at), len(text))
		body := append(append(append([]byte(nil), text[:pos]...), form...), text[pos:]...)
		if bytes.ContainsAny(body, "\r\n") || len(body) > MaxReplyLineLength-4 {
			return
		}
		var in interner
		in.addSecret(secret)
		rep, err := readReplyIn(bufio.NewReader(bytes.NewReader(append(append([]byte("250 "), body...), "\r\n"...))), OpDATA, true, &in)
		if err != nil {
			t.Fatal(err)
		}
		shown, code := rep.Text(), 0
		if rep.Enhanced != "" {
			// The code and its space are a parsed value, kept as
			// received: a secret made of them alone is not redacted.
			shown, code = rep.Enhanced+" "+shown, len(rep.Enhanced)+1
		}
		// The text and the queue id are checked apart: joined by any
		// separator, the separator could complete a secret that holds it.
		out := append(strings.Split(shown, servertext.Marker), strings.Split(in.outcomeQueueID(&rep), servertext.Marker)...)
		for _, f := range []string{string(secret), servertext.Printable(string(secret))} {
			for i := 0; i+servertext.MinFragment <= len(f); i++ {
				w := f[i : i+servertext.MinFragment]
				for k, piece := range out {
					// In the first piece, a fragment that starts in
					// the code has fewer than MinFragment of its
					// characters in the text: it is not a leak.
					from := 0
					if k == 0 {
						from = code
					}
					if strings.Contains(piece[min(from, len(piece)):], w) {
						t.Fatalf("fragment %q of %q survives in %q", w, secret, out)
					}
				}
			}
		}
	})
}

// TestReplyTextKeptAsSent: without an enhanced code, the text is the
// line after the separator, leading spaces included, as before.
func TestReplyTextKeptAsSent(t *testing.T) {
	for raw, want := range map[string]string{
		"250  two spaces\r\n":    " two spaces",
		"250 2.0.0\r\n":          "",
		"250 2.0.0  two\r\n":     " two",
		"250 2.0.0x not one\r\n": "2.0.0x not one",
		"250 4.0.0 other\r\n":    "4.0.0 other",
	} {
		if rep := readWith(t, nil, raw, true); rep.Text() != want {
			t.Errorf("%q: text %q, want %q", raw, rep.Text(), want)
		}
	}
}

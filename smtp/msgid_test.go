package smtp_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/smtpkit/smtpkit/smtp"
)

// scanIn feeds msg to a new scanner in pieces of size n and returns it.
func scanIn(msg string, n int) *smtp.MessageIDScanner {
	var s smtp.MessageIDScanner
	for len(msg) > 0 {
		k := min(n, len(msg))
		w, err := s.Write([]byte(msg[:k]))
		if w != k || err != nil {
			panic("Write must take everything")
		}
		msg = msg[k:]
	}
	return &s
}

func TestMessageIDScanner(t *testing.T) {
	long := strings.Repeat("x", 2000)
	for _, tc := range []struct {
		name, msg, want string
		done            bool
	}{
		{"plain", "From: a@example.com\r\nMessage-ID: <m1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n", "<m1@example.com>", true},
		{"first field", "Message-ID: <first@x>\r\n\r\n", "<first@x>", true},
		{"case", "message-id: <lower@x>\r\nMESSAGE-ID: <upper@x>\r\n\r\n", "<lower@x>", true},
		{"mixed case", "Subject: s\r\nMeSsAgE-Id:<m@x>\r\n\r\n", "<m@x>", true},
		{"folded", "Message-ID:\r\n <folded@example.com>\r\nSubject: s\r\n\r\n", "<folded@example.com>", true},
		{"folded inside", "Message-ID: <a\r\n\tb@x>\r\n\r\n", "<a\tb@x>", true},
		{"space before colon", "Message-ID  : <obs@x>\r\n\r\n", "<obs@x>", true},
		{"comment", "Message-ID: (generated) <c@x> (by us)\r\n\r\n", "<c@x>", true},
		{"LF only", "From: a\nMessage-ID: <lf@x>\n\nbody\n", "<lf@x>", true},
		{"not in the body", "From: a\r\n\r\nMessage-ID: <body@x>\r\n", "", true},
		{"none", "From: a\r\nSubject: b\r\n\r\n", "", true},
		{"no blank line", "From: a\r\nMessage-ID: <eof@x>", "<eof@x>", false},
		{"no blank line, complete", "Message-ID: <eof@x>\r\nTo: b\r\n", "<eof@x>", true},
		{"similar names", "Message-IDs: <no@x>\r\nX-Message-ID: <no@x>\r\nMessage-I: <no@x>\r\nResent-Message-ID: <no@x>\r\n\r\n", "", true},
		{"continuation of another field", "Subject: a\r\n Message-ID: <no@x>\r\n\r\n", "", true},
		{"line without colon", "garbage line\r\n Message-ID: <no@x>\r\nMessage-ID: <yes@x>\r\n\r\n", "<yes@x>", true},
		{"space inside the name", "Message ID: <no@x>\r\n\r\n", "", true},
		{"malformed value", "Message-ID: not-an-id\r\n\r\n", "not-an-id", true},
		{"unclosed", "Message-ID: <open@x\r\n\r\n", "<open@x", true},
		{"empty", "", "", false},
		{"overlong", "Message-ID: <" + long + ">\r\n\r\n", "<" + long[:smtp.MaxMessageIDLength-2], true},
		{"CR ignored", "Message-ID: <c\rr@x>\r\n\r\n", "<cr@x>", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []int{1, 2, 3, 7, 64, len(tc.msg) + 1} {
				s := scanIn(tc.msg, n)
				assert.Equal(t, tc.want, s.MessageID(), "pieces of %d", n)
				assert.Equal(t, tc.done, s.Done(), "pieces of %d", n)
			}
		})
	}
}

// TestMessageIDScannerEarly: the ID is available, and the scanner done,
// as soon as the field is complete, before the rest of the header.
func TestMessageIDScannerEarly(t *testing.T) {
	var s smtp.MessageIDScanner
	s.Write([]byte("From: a\r\nMessage-ID: <early"))
	assert.False(t, s.Done())
	assert.Equal(t, "<early", s.MessageID(), "as far as it was read")
	s.Write([]byte("@x>\r\n"))
	assert.False(t, s.Done(), "a folded line may follow")
	s.Write([]byte("S"))
	assert.True(t, s.Done())
	assert.Equal(t, "<early@x>", s.MessageID())
	s.Write([]byte("ubject: later\r\nMessage-ID: <other@x>\r\n\r\n"))
	assert.Equal(t, "<early@x>", s.MessageID())

	s.Reset()
	assert.False(t, s.Done())
	assert.Empty(t, s.MessageID())
	s.Write([]byte("Message-ID: <second@x>\r\n\r\n"))
	assert.Equal(t, "<second@x>", s.MessageID())
}

// TestMessageIDScannerBounded: a long header without the field, or a
// huge body, costs no memory; the scanner stops looking at the body.
func TestMessageIDScannerBounded(t *testing.T) {
	var s smtp.MessageIDScanner
	line := []byte("X-Filler: " + strings.Repeat("y", 1000) + "\r\n")
	allocs := testing.AllocsPerRun(100, func() { s.Write(line) })
	assert.Zero(t, allocs)
	s.Write([]byte("Message-ID: <" + strings.Repeat("z", 5000) + ">\r\n"))
	assert.LessOrEqual(t, len(s.MessageID()), smtp.MaxMessageIDLength)
	assert.Greater(t, len(s.MessageID()), smtp.MaxMessageIDLength-4, "kept up to the bound")
	s.Write([]byte("\r\n"))
	assert.True(t, s.Done())
	body := bytes.Repeat([]byte("body\r\n"), 1000)
	allocs = testing.AllocsPerRun(100, func() { s.Write(body) })
	assert.Zero(t, allocs)
}

// refMessageID is the scanner's rule written the plain way, over the
// whole message at once: the reference for FuzzMessageIDScanner.
func refMessageID(msg []byte) (id string, done bool) {
	msg = bytes.ReplaceAll(msg, []byte("\r"), nil)
	lines := bytes.Split(msg, []byte("\n"))
	complete := len(lines) - 1 // the last piece has no LF
	var value []byte
	found := false
	for i, line := range lines {
		atEnd := i == complete
		if found {
			if !atEnd && len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
				value = append(value, line...)
				continue
			}
			if atEnd && (len(line) == 0 || line[0] == ' ' || line[0] == '\t') {
				value = append(value, line...)
				return extract(value), false
			}
			return extract(value), true
		}
		if len(line) == 0 {
			return "", !atEnd
		}
		colon := bytes.IndexByte(line, ':')
		if line[0] == ' ' || line[0] == '\t' || colon < 0 {
			continue
		}
		name := bytes.TrimRight(line[:colon], " \t")
		if !asciiEqualFold(name, "message-id") {
			continue
		}
		if atEnd {
			return extract(line[colon+1:]), false
		}
		found = true
		value = append(value, line[colon+1:]...)
	}
	return "", false
}

func extract(v []byte) string {
	if len(v) > smtp.MaxMessageIDLength {
		v = v[:smtp.MaxMessageIDLength]
	}
	v = bytes.Trim(v, " \t")
	if i := bytes.IndexByte(v, '<'); i >= 0 {
		if j := bytes.IndexByte(v[i:], '>'); j >= 0 {
			return string(v[i : i+j+1])
		}
	}
	return string(v)
}

// asciiEqualFold is strings.EqualFold for ASCII only, as field names are.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// FuzzMessageIDScanner feeds a message in pieces whose sizes come from
// the input, and checks the scanner against the reference.
func FuzzMessageIDScanner(f *testing.F) {
	for _, seed := range []string{
		"From: a\r\nMessage-ID: <m@x>\r\n\r\nbody",
		"Message-ID:\r\n <folded@x>\r\n\tmore\r\nTo: b\r\n\r\n",
		"message-id : (c) <a@b> \nx: y\n\n",
		"X: y\r\n Message-ID: <no@x>\r\n\r\n",
		"Message-ID: <eof@x>",
		"\r\n\r\n",
		"Message-I\r\nD: <x>\r\n",
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, msg []byte, piece uint8) {
		want, wantDone := refMessageID(msg)
		n := int(piece)%17 + 1
		var s smtp.MessageIDScanner
		for rest := msg; len(rest) > 0; {
			k := min(n, len(rest))
			s.Write(rest[:k])
			rest = rest[k:]
			n = n*7%23 + 1 // pieces of varying size
		}
		if got := s.MessageID(); got != want || s.Done() != wantDone {
			t.Fatalf("%q: got %q (done %v), want %q (done %v)", msg, got, s.Done(), want, wantDone)
		}
	})
}

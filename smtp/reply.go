package smtp

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/smtpkit/smtpkit/internal/servertext"
)

// Limits on what a server may send in one reply. A reply beyond them is
// a protocol error; memory stays bounded whatever the server sends.
const (
	// MaxReplyLineLength is the longest reply line accepted, without its
	// CRLF (RFC 5321 allows 512; real servers exceed it, so the limit is
	// the RFC 5322 line length).
	MaxReplyLineLength = 998
	// MaxReplyLines is the most lines one multi-line reply may have.
	MaxReplyLines = 128
)

// Reply is one server reply, possibly multi-line.
type Reply struct {
	// Code is the three-digit reply code.
	Code int
	// Enhanced is the RFC 3463 status code of the first line ("2.0.0"),
	// when the session has ENHANCEDSTATUSCODES and the server sent one.
	Enhanced string
	// Lines holds the text of each line after the code and separator,
	// with the enhanced code removed when it was parsed. The text is made
	// printable (control characters, invalid UTF-8 and other characters
	// that are not printable are escaped as in a Go string literal: ESC
	// becomes \x1b) and, once the session has authenticated, what it sent
	// during AUTH is replaced by "[redacted]".
	Lines []string
}

// Text returns the reply's lines joined by a space.
func (r *Reply) Text() string {
	switch len(r.Lines) {
	case 0:
		return ""
	case 1:
		return r.Lines[0]
	}
	return strings.Join(r.Lines, " ")
}

// String returns the reply as "CODE [ENHANCED ]TEXT".
func (r Reply) String() string {
	s := itoa3(r.Code)
	if r.Enhanced != "" {
		s += " " + r.Enhanced
	}
	if t := r.Text(); t != "" {
		s += " " + t
	}
	return s
}

func itoa3(c int) string {
	if c < 0 || c > 999 {
		return "???"
	}
	return string([]byte{byte('0' + c/100), byte('0' + c/10%10), byte('0' + c%10)})
}

// errLineTooLong is returned by readLine for a line over the limit.
var errLineTooLong = errors.New("reply line too long")

// readLine reads one CRLF- (or LF-) terminated line without its end,
// refusing lines over MaxReplyLineLength. The returned slice is only
// valid until the next read.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull || (err == nil && len(line) > MaxReplyLineLength+2) {
		return nil, errLineTooLong
	}
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > MaxReplyLineLength {
		return nil, errLineTooLong
	}
	return line, nil
}

// readReply reads one reply. Transport errors are returned as they are;
// malformed replies as a KindProtocol *Error for op. When enhanced is
// true, an RFC 3463 code at the start of the first line is parsed out.
func readReply(r *bufio.Reader, op Op, enhanced bool) (Reply, error) {
	return readReplyIn(r, op, enhanced, nil)
}

// interner turns the text of reply lines into strings. It is the one
// place where a session's server text becomes a string: every text is
// made printable, and the secrets the session sent during AUTH are
// removed from it (see [servertext.Redactor]), before it can reach a
// Reply, an error, an event or a log line.
//
// It also keeps the texts of short reply lines a server repeats ("2.0.0
// Ok", "2.1.5 Recipient ok"), so reading them again allocates nothing. It
// holds at most internMax entries and starts afresh when full, so unique
// texts (queue ids) cannot grow it. The zero value is ready; a nil
// *interner interns nothing and only makes text printable.
type interner struct {
	m   map[string]string
	red servertext.Redactor // what the session sent during AUTH
}

const (
	internMax    = 64
	internMaxLen = 48
)

func (in *interner) str(b []byte) string {
	if in == nil || len(b) > internMaxLen {
		return in.clean(b)
	}
	if s, ok := in.m[string(b)]; ok {
		return s
	}
	if in.m == nil {
		in.m = make(map[string]string, internMax)
	} else if len(in.m) >= internMax {
		clear(in.m)
	}
	s := in.clean(b)
	if s == string(b) {
		in.m[s] = s
	} else {
		in.m[string(b)] = s
	}
	return s
}

// clean returns b made printable and without the session's AUTH secrets.
func (in *interner) clean(b []byte) string {
	var red *servertext.Redactor
	if in != nil {
		red = &in.red
	}
	if !red.NeedsCleaning(b) {
		return string(b)
	}
	return red.Clean(b)
}

// cleanString is clean for server text that is already a string (a SASL
// mechanism's error report).
func (in *interner) cleanString(s string) string {
	if in == nil {
		return servertext.Printable(s)
	}
	return in.red.CleanString(s)
}

// quote returns a malformed line for an error message: cleaned, cut to
// n octets, in double quotes.
func (in *interner) quote(b []byte, n int) string {
	s := in.clean(b)
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		// Never cut a redaction marker in two.
		if i := strings.LastIndexByte(s[:cut], '['); i >= 0 && strings.HasPrefix(s[i:], servertext.Marker) {
			cut = max(cut, i+len(servertext.Marker))
		}
		s = s[:cut] + "..."
	}
	return `"` + s + `"`
}

// addSecret registers a secret the session is about to send during AUTH
// (see [servertext.Redactor.AddSecret]), and addSent a line carrying one.
// Both forget the interned texts, which were cleaned without it.
func (in *interner) addSecret(secret []byte) {
	in.red.AddSecret(secret)
	clear(in.m)
}

func (in *interner) addSent(line string, from, to int) {
	in.red.AddSent([]byte(line), from, to)
	clear(in.m)
}

// readReplyIn is readReply with the line texts taken from in.
func readReplyIn(r *bufio.Reader, op Op, enhanced bool, in *interner) (Reply, error) {
	var rep Reply
	for n := 0; ; n++ {
		if n == MaxReplyLines {
			return rep, protoError(op, "reply has more than %d lines", MaxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			if err == errLineTooLong {
				return rep, protoError(op, "reply line longer than %d octets", MaxReplyLineLength)
			}
			if n > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return rep, err
		}
		code, last, text, perr := parseReplyLine(line, in)
		if perr != "" {
			return rep, protoError(op, "%s: %s", perr, in.quote(line, 64))
		}
		if n == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return rep, protoError(op, "reply mixes codes %d and %d", rep.Code, code)
		}
		if n == 0 && enhanced {
			rep.Enhanced, text = splitEnhanced(code, text)
		} else if n > 0 && rep.Enhanced != "" {
			// Continuation lines repeat the enhanced code; drop it.
			if e, rest := splitEnhanced(code, text); e == rep.Enhanced {
				text = rest
			}
		}
		rep.Lines = append(rep.Lines, text)
		if last {
			return rep, nil
		}
	}
}

// parseReplyLine splits "NNN-text", "NNN text" or "NNN". The problem is
// returned as a string so the caller can wrap it without allocating on
// the good path.
func parseReplyLine(line []byte, in *interner) (code int, last bool, text string, problem string) {
	if len(line) < 3 {
		return 0, false, "", "short reply line"
	}
	for i := 0; i < 3; i++ {
		c := line[i]
		if c < '0' || c > '9' {
			return 0, false, "", "non-digit reply code"
		}
		code = code*10 + int(c-'0')
	}
	if line[0] < '2' || line[0] > '5' {
		return 0, false, "", "reply code out of range"
	}
	if len(line) == 3 {
		return code, true, "", ""
	}
	switch line[3] {
	case ' ':
		last = true
	case '-':
	default:
		return 0, false, "", "bad separator after reply code"
	}
	return code, last, in.str(line[4:]), ""
}

// splitEnhanced removes a leading RFC 3463 "class.subject.detail" code
// from text when its class matches the reply code's first digit.
func splitEnhanced(code int, text string) (enh, rest string) {
	i := strings.IndexByte(text, ' ')
	word := text
	if i >= 0 {
		word = text[:i]
	}
	if !validEnhanced(word) || int(word[0]-'0') != code/100 {
		return "", text
	}
	if i < 0 {
		return word, ""
	}
	return word, text[i+1:]
}

// validEnhanced reports whether s is class.subject.detail with class in
// 2, 4, 5, subject 1-3 digits and detail 1-3 digits (RFC 3463).
func validEnhanced(s string) bool {
	if len(s) < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.' {
		return false
	}
	parts := 0
	digits := 0
	for i := 2; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
			if digits > 3 {
				return false
			}
		case c == '.':
			if digits == 0 || parts == 1 {
				return false
			}
			parts++
			digits = 0
		default:
			return false
		}
	}
	return parts == 1 && digits > 0
}

package smtp

import (
	"bufio"
	"bytes"
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
	// becomes \x1b), and every secret the session, or any session sharing
	// its [Redactor], sent during AUTH is replaced by "[redacted]". The
	// code, the enhanced code and the queue id are parsed from the reply
	// as it was received, before that.
	Lines []string

	// qid is the queue id parsed from the reply as received, when
	// redaction changed its text (hasQID); see interner.outcomeQueueID.
	qid    string
	hasQID bool
}

// Text returns the reply's lines joined by a space.
func (r Reply) Text() string {
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

// Redactor remembers the secrets that a chain of sessions sent during
// AUTH (passwords, tokens, SCRAM proofs, CRAM-MD5 digests and the base64
// lines that carried them), from the moment each was about to be sent,
// and removes them from every server text the sessions sharing it read
// afterwards: every reply from the greeting on (so a greeting or an EHLO
// reply before AUTH, in a later session, is filtered too), malformed
// lines quoted in errors, and certificate errors. Share one through
// [Options.Redactor] among the sessions of one account (the sender
// package does, one per Sender). The zero value is ready to use; a
// Redactor is safe for concurrent use and must not be copied after first
// use.
//
// It keeps the most recently registered secrets, and forgets the oldest
// beyond [servertext.MaxSecrets] secrets or [servertext.MaxWindows]
// fragments (about 2.5 MB, unless the most recent secret alone is
// larger); registering a secret again (each login with
// the same password) keeps it. See docs/security.md for what it finds.
type Redactor struct {
	r servertext.Redactor
}

// AddSecret registers a secret, for a caller that holds one the sessions
// do not send themselves (a secret of fewer than 8 octets is only
// recognised as a whole parsed value, see docs/security.md).
func (r *Redactor) AddSecret(secret string) { r.r.AddSecret([]byte(secret)) }

// Clean returns s with every registered secret replaced by "[redacted]"
// and every character that is not printable escaped as in a Go string
// literal. A nil *Redactor escapes only.
func (r *Redactor) Clean(s string) string { return r.base().CleanString(s) }

// CleanLines is Clean for text meant for a terminal: it keeps LF and
// horizontal tab.
func (r *Redactor) CleanLines(s string) string { return r.base().CleanLines(s) }

// WrapError returns err with its text cleaned as Clean cleans it, for
// an error that may carry server text and did not come from a Client
// sharing r: a [transport.DialTLS] error, whose certificate names the
// server chose. [errors.Is] and [errors.As] see through it to err's
// chain (a [*tls.CertificateVerificationError], an
// [x509.HostnameError]...). It returns err itself when its text needs no
// cleaning, and nil for nil.
func (r *Redactor) WrapError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := r.Clean(msg)
	if clean == msg {
		return err
	}
	return &cleanError{msg: clean, err: err}
}

func (r *Redactor) base() *servertext.Redactor {
	if r == nil {
		return nil
	}
	return &r.r
}

// cleanError is an error whose text was cleaned; it unwraps to the
// original.
type cleanError struct {
	msg string
	err error
}

func (e *cleanError) Error() string { return e.msg }
func (e *cleanError) Unwrap() error { return e.err }

// interner turns the text of reply lines into strings. It is the one
// place where a session's server text becomes a string: every text is
// made printable, and the secrets registered with the session's
// Redactor are removed from it (see [servertext.Redactor]), before it
// can reach a Reply, an error, an event or a log line.
//
// It also keeps the texts of short reply lines a server repeats ("2.0.0
// Ok", "2.1.5 Recipient ok"), so reading them again allocates nothing. It
// holds at most internMax entries and starts afresh when full, so unique
// texts (queue ids) cannot grow it, and whenever the Redactor learns a
// secret (another session's, when it is shared). The zero value is
// ready; a nil *interner interns nothing and only makes text printable.
type interner struct {
	m     map[string]string
	codes map[string]string // enhanced status codes, as received
	gen   uint64            // the Redactor's generation when m was filled
	// red is the Redactor the session shares (Options.Redactor, see
	// share), or its own, made when it registers its first secret.
	red *Redactor
}

const (
	internMax    = 64
	internMaxLen = 48
)

// share makes the session use r, the Redactor its chain shares, for
// every text it reads from then on. A nil r leaves the session with its
// own.
func (in *interner) share(r *Redactor) {
	if r != nil && in.red != r {
		in.red = r
		clear(in.m)
	}
}

func (in *interner) redactor() *servertext.Redactor {
	if in == nil {
		return nil
	}
	return in.red.base()
}

func (in *interner) str(b []byte) string {
	if in == nil || len(b) > internMaxLen {
		return in.clean(b)
	}
	if g := in.redactor().Generation(); g != in.gen {
		clear(in.m)
		in.gen = g
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

// raw interns a token already checked to be printable ASCII that is not
// a secret's (an enhanced status code), without cleaning it.
func (in *interner) raw(b []byte) string {
	if in == nil {
		return string(b)
	}
	if s, ok := in.codes[string(b)]; ok {
		return s
	}
	if in.codes == nil {
		in.codes = make(map[string]string, 8)
	} else if len(in.codes) >= internMax {
		clear(in.codes)
	}
	s := string(b)
	in.codes[s] = s
	return s
}

// clean returns b made printable and without the registered secrets.
func (in *interner) clean(b []byte) string {
	red := in.redactor()
	if !red.NeedsCleaning(b) {
		return string(b)
	}
	return red.Clean(b)
}

// cleanString is clean for server text that is already a string (a SASL
// mechanism's error report).
func (in *interner) cleanString(s string) string {
	return in.redactor().CleanString(s)
}

// cleanErr returns err with its text cleaned (see [Redactor.WrapError]):
// a transport error may quote the server (a certificate's names, when
// the TLS handshake runs at the first read).
func (in *interner) cleanErr(err error) error {
	if in == nil {
		return (*Redactor)(nil).WrapError(err)
	}
	return in.red.WrapError(err)
}

// outcomeQueueID returns the queue id of a final reply (see [QueueID]),
// for [Outcome.QueueID]: parsed from the text as the server sent it, so
// that a redaction in the text cannot hide it; made printable, and
// replaced by the marker when it holds a registered secret (a whole one,
// however short: a parsed value is not free text).
func (in *interner) outcomeQueueID(rep *Reply) string {
	if rep.hasQID {
		return rep.qid
	}
	id := parseQueueID(rep.Text())
	if id != "" && in.redactor().Matches(id) {
		return servertext.Marker
	}
	return id
}

// queueID returns the queue id in the text of a reply line as received
// (see outcomeQueueID): made printable, or the marker when it holds a
// registered secret.
func (in *interner) queueID(raw []byte) string {
	id := parseQueueID(string(raw))
	if id == "" {
		return ""
	}
	red := in.redactor()
	if red.Matches(id) {
		return servertext.Marker
	}
	clean := servertext.Printable(id)
	if clean != id && red.Matches(clean) {
		return servertext.Marker
	}
	return clean
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
// (see [servertext.Redactor.AddSecret]), and addSent a line carrying one,
// with the shared Redactor, or the session's own when it shares none.
// The interned texts, cleaned without it, are forgotten at the next read.
func (in *interner) addSecret(secret []byte) {
	if in.red == nil {
		in.red = new(Redactor)
	}
	in.red.r.AddSecret(secret)
}

func (in *interner) addSent(line string, from, to int) {
	if in.red == nil {
		in.red = new(Redactor)
	}
	in.red.r.AddSent([]byte(line), from, to)
}

// readReplyIn is readReply with the line texts taken from in.
//
// The code, the enhanced code and the queue id are parsed from the line
// as received; only the text for people is cleaned (see interner). A
// fragment of a secret that straddles the enhanced code is still found:
// the text is cleaned whole, and the code, which is never a secret's
// (digits and dots), is kept as received.
func readReplyIn(r *bufio.Reader, op Op, enhanced bool, in *interner) (Reply, error) {
	var rep Reply
	// ids holds, for each redacted line, the queue id it holds as
	// received; nil while no line is redacted.
	var ids []lineID
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
			return rep, in.cleanErr(err)
		}
		code, last, raw, perr := parseReplyLine(line)
		if perr != "" {
			return rep, protoError(op, "%s: %s", perr, in.quote(line, 64))
		}
		if n == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return rep, protoError(op, "reply mixes codes %d and %d", rep.Code, code)
		}
		skip := 0 // the enhanced code and its space, to leave out of the text
		if n == 0 && enhanced {
			if k := enhancedLen(code, raw); k > 0 {
				rep.Enhanced = in.raw(raw[:k])
				skip = k
			}
		} else if n > 0 && rep.Enhanced != "" {
			// Continuation lines repeat the enhanced code; drop it.
			if k := enhancedLen(code, raw); k > 0 && string(raw[:k]) == rep.Enhanced {
				skip = k
			}
		}
		if skip > 0 && skip < len(raw) {
			skip++ // the space after the code (enhancedLen stops at it)
		}
		text := in.str(raw)
		switch {
		case skip == 0:
		case len(text) >= skip && text[:skip] == string(raw[:skip]):
			text = text[skip:]
		default:
			// Cleaning changed the code's part: a fragment of a secret
			// straddles it. The code stays as received.
			text = in.redactor().CleanFrom(raw, skip)
		}
		if text != string(raw[skip:]) && strings.Contains(text, servertext.Marker) && !bytes.Contains(raw, []byte(servertext.Marker)) {
			// Redacted: the queue id, if any, is taken from the line as
			// received, now, while it is at hand.
			ids = append(ids, lineID{n, in.queueID(raw[skip:])})
		}
		rep.Lines = append(rep.Lines, text)
		if last {
			if ids != nil {
				rep.qid, rep.hasQID = firstQueueID(rep.Lines, ids), true
			}
			return rep, nil
		}
	}
}

// lineID is the queue id a redacted line holds as received.
type lineID struct {
	line int
	id   string
}

// firstQueueID returns the first queue id of the lines of a reply: of a
// redacted line, the one it held as received (ids); of another, the one
// in its text.
func firstQueueID(lines []string, ids []lineID) string {
	for i, line := range lines {
		id := ""
		if len(ids) > 0 && ids[0].line == i {
			id, ids = ids[0].id, ids[1:]
		} else {
			id = parseQueueID(line)
		}
		if id != "" {
			return id
		}
	}
	return ""
}

// parseReplyLine splits "NNN-text", "NNN text" or "NNN". The problem is
// returned as a string so the caller can wrap it without allocating on
// the good path.
func parseReplyLine(line []byte) (code int, last bool, text []byte, problem string) {
	if len(line) < 3 {
		return 0, false, nil, "short reply line"
	}
	for i := 0; i < 3; i++ {
		c := line[i]
		if c < '0' || c > '9' {
			return 0, false, nil, "non-digit reply code"
		}
		code = code*10 + int(c-'0')
	}
	if line[0] < '2' || line[0] > '5' {
		return 0, false, nil, "reply code out of range"
	}
	if len(line) == 3 {
		return code, true, nil, ""
	}
	switch line[3] {
	case ' ':
		last = true
	case '-':
	default:
		return 0, false, nil, "bad separator after reply code"
	}
	return code, last, line[4:], ""
}

// enhancedLen returns the length of the RFC 3463 "class.subject.detail"
// code at the start of text when its class matches the reply code's
// first digit, or 0.
func enhancedLen(code int, text []byte) int {
	i := bytes.IndexByte(text, ' ')
	if i < 0 {
		i = len(text)
	}
	if !validEnhanced(text[:i]) || int(text[0]-'0') != code/100 {
		return 0
	}
	return i
}

// validEnhanced reports whether s is class.subject.detail with class in
// 2, 4, 5, subject 1-3 digits and detail 1-3 digits (RFC 3463).
func validEnhanced[T string | []byte](s T) bool {
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

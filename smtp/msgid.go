package smtp

import (
	"bytes"
)

// MaxMessageIDLength bounds what a [MessageIDScanner] keeps of a
// Message-ID header's value, folding white space included: the line
// length limit of RFC 5322 §2.1.1.
const MaxMessageIDLength = 998

// MessageIDScanner finds the value of the Message-ID header (RFC 5322
// §3.6.4) in a message as the message streams through it, in pieces of
// any size: give it each piece with Write, and ask MessageID at any time.
// It reads only the header section: it is done at the first empty line,
// or as soon as the Message-ID field, folded lines included, is
// complete; whatever comes after is not looked at. The field name is
// matched without regard to ASCII case, and white space is allowed
// between the name and its colon (RFC 5322 §4.5). When a message has
// several Message-ID fields, the first counts. CR octets are ignored and
// a bare LF ends a line, so a body with either line ending works.
//
// It keeps at most [MaxMessageIDLength] octets, takes time linear in
// what it is given, and never fails. The zero value is ready to use; a
// MessageIDScanner is not safe for concurrent use.
type MessageIDScanner struct {
	state msgidState
	// idx is how many octets of the field name matched "message-id";
	// match is false once one did not.
	idx   int
	match bool
	// capturing is set while the field being read is the Message-ID.
	capturing bool
	value     []byte // the field's value so far, unfolded, CR removed
	done      bool
	id        string // the result, once done
}

type msgidState uint8

const (
	msgidLineStart msgidState = iota // at the start of a line
	msgidName                        // in a field name
	msgidNameWSP                     // between a field name and its colon
	msgidSkip                        // in a line that does not matter
	msgidValue                       // in the Message-ID's value
)

const msgidField = "message-id"

// Write scans p. It always returns len(p), nil.
func (s *MessageIDScanner) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !s.done {
		if s.state == msgidSkip {
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				return n, nil
			}
			p = p[i+1:]
			s.state = msgidLineStart
			continue
		}
		c := p[0]
		p = p[1:]
		if c == '\r' {
			continue
		}
		s.step(c)
	}
	return n, nil
}

// step moves the scanner over one octet other than CR.
func (s *MessageIDScanner) step(c byte) {
	switch s.state {
	case msgidLineStart:
		switch {
		case c == '\n':
			// The empty line: the header section ends.
			s.finish()
		case c == ' ' || c == '\t':
			if s.capturing {
				s.state = msgidValue
				s.add(c)
			} else {
				s.state = msgidSkip
			}
		case s.capturing:
			// A new field: the Message-ID is complete.
			s.finish()
		default:
			s.state, s.idx, s.match = msgidName, 0, true
			s.name(c)
		}
	case msgidName:
		switch c {
		case ':':
			s.colon()
		case ' ', '\t':
			s.state = msgidNameWSP
		case '\n':
			s.state = msgidLineStart // a line without a colon: no field
		default:
			s.name(c)
		}
	case msgidNameWSP:
		switch c {
		case ':':
			s.colon()
		case ' ', '\t':
		case '\n':
			s.state = msgidLineStart
		default:
			s.state = msgidSkip
		}
	case msgidValue:
		if c == '\n' {
			s.state = msgidLineStart
			return
		}
		s.add(c)
	}
}

// name matches one more octet of a field name.
func (s *MessageIDScanner) name(c byte) {
	if 'A' <= c && c <= 'Z' {
		c += 'a' - 'A'
	}
	if s.match && s.idx < len(msgidField) && c == msgidField[s.idx] {
		s.idx++
	} else {
		s.match = false
	}
}

// colon ends a field name.
func (s *MessageIDScanner) colon() {
	if s.match && s.idx == len(msgidField) {
		s.capturing = true
		s.state = msgidValue
		return
	}
	s.state = msgidSkip
}

func (s *MessageIDScanner) add(c byte) {
	if len(s.value) < MaxMessageIDLength {
		s.value = append(s.value, c)
	}
}

// finish ends the scan.
func (s *MessageIDScanner) finish() {
	s.done = true
	s.id = s.current()
	s.value = s.value[:0]
}

// current is the Message-ID as far as it was read.
func (s *MessageIDScanner) current() string {
	if !s.capturing {
		return ""
	}
	return extractMessageID(s.value)
}

// extractMessageID returns the msg-id in v ("<left@right>", from the
// first "<" to the next ">"), or v without its surrounding white space
// when there is none: comments and folding are left out, a malformed
// value is kept as it is.
func extractMessageID(v []byte) string {
	v = bytes.Trim(v, " \t")
	if i := bytes.IndexByte(v, '<'); i >= 0 {
		if j := bytes.IndexByte(v[i:], '>'); j >= 0 {
			return string(v[i : i+j+1])
		}
	}
	return string(v)
}

// MessageID returns the Message-ID header's value (angle brackets
// included, for a well-formed one), or "" if none was found. Before
// [MessageIDScanner.Done], it is what has been read so far: "" when the
// field has not come yet, and possibly a part of it.
func (s *MessageIDScanner) MessageID() string {
	if s.done {
		return s.id
	}
	return s.current()
}

// Done reports whether the scanner has seen all it needs: the end of the
// header section, or the whole Message-ID field. Writes after that are
// ignored.
func (s *MessageIDScanner) Done() bool { return s.done }

// Reset makes the scanner ready for another message, keeping its
// buffer.
func (s *MessageIDScanner) Reset() {
	v := s.value[:0]
	*s = MessageIDScanner{value: v}
}

// skip makes the scanner done before it has seen anything: it looks for
// nothing (a session with no audit hook has no use for the Message-ID).
func (s *MessageIDScanner) skip() { s.done = true }

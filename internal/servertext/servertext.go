// Package servertext makes text that came from an SMTP server safe to put
// into an error, an audit event, a log line or onto a terminal. It is the
// one step every such text passes through, in the smtp package, in the SASL
// mechanisms and in smtpsend:
//
//   - a [Redactor] removes what the client sent during AUTH that is
//     secret: the password or token, and the lines and proofs that carry
//     them, as sent (base64) and raw, and any fragment of
//     [MinFragment] octets or more of either, wherever a server echoes
//     them;
//   - every character that is not printable (control characters such as
//     ESC, BEL and CR, invalid UTF-8, Unicode format characters such as
//     bidirectional overrides) is escaped as in a Go string literal, so
//     that the text cannot move a terminal's cursor or erase what was
//     printed before it.
//
// The work is linear in the length of the text: each position is looked
// up in a hash set, once per window length in use (usually one). A
// Redactor keeps the fragments mixed with a random key, not as text, so a
// secret does not sit in memory in the clear for the session's life.
package servertext

import (
	"encoding/base64"
	"math/rand/v2"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MinFragment is the length of the shortest fragment of a secret that is
// removed wherever it appears: every run of MinFragment octets of a secret
// (raw, or base64 in any alignment and either alphabet) is. A whole secret
// shorter than MinFragment is removed too, down to MinSecret octets.
const MinFragment = 8

// MinSecret is the length of the shortest secret a Redactor removes where
// it appears raw; shorter ones would blot out ordinary words.
const MinSecret = 4

// Marker replaces each redacted run of text.
const Marker = "[redacted]"

// Redactor removes registered secrets from server text. The zero value
// removes nothing and is ready to use; a nil *Redactor escapes only. A
// Redactor is not safe for concurrent use: it belongs to one session.
type Redactor struct {
	seed uint64 // random, drawn at the first registration
	lens []int  // window lengths in use, ascending; MinFragment and shorter whole secrets
	// table is an open-addressing hash set of the keyed hashes of every
	// registered window (0 marks a free slot); n is how many it holds.
	table []uint64
	n     int
}

// Empty reports whether nothing is registered.
func (r *Redactor) Empty() bool { return r == nil || r.n == 0 }

// AddSecret registers a secret the client sends (a password, a token, a
// proof): its raw form and its base64 encodings in each of the three
// alignments it can have inside a longer base64 text.
func (r *Redactor) AddSecret(secret []byte) {
	if len(secret) < MinSecret {
		return
	}
	r.add(secret)
	for off := range 3 {
		if off >= len(secret) {
			break
		}
		rest := secret[off:]
		// Only whole groups of three octets encode independently of
		// what follows.
		rest = rest[:len(rest)/3*3]
		if len(rest) == 0 {
			continue
		}
		r.add([]byte(base64.StdEncoding.EncodeToString(rest)))
	}
}

// AddSent registers a line the client sent as it went on the wire: the
// base64 encoding of a message whose octets [from, to) are secret. Every
// run of MinFragment characters of the line that is at least half made of
// characters encoding secret octets is registered, so that an echo of the
// line, or of a fragment of it, loses what encodes the secret; the runs
// that encode only what is not secret (a user name, a fixed keyword such
// as "auth=Bearer") are not, as they could match ordinary server text.
func (r *Redactor) AddSent(line []byte, from, to int) {
	if to-from < MinSecret || len(line) < MinFragment {
		return
	}
	// Character k of base64 carries bits 6k to 6k+5, of octets 6k/8 to
	// (6k+5)/8.
	first, last := from*8/6, min((to*8+5)/6, len(line))
	for i := 0; i+MinFragment <= len(line); i++ {
		overlap := min(i+MinFragment, last) - max(i, first)
		if overlap*2 >= MinFragment {
			r.addWindow(line[i : i+MinFragment])
		}
	}
}

func (r *Redactor) add(s []byte) {
	w := min(len(s), MinFragment)
	for i := 0; i+w <= len(s); i++ {
		r.addWindow(s[i : i+w])
	}
}

func (r *Redactor) addWindow(window []byte) {
	if r.seed == 0 {
		r.seed = rand.Uint64() | 1
	}
	if w := len(window); !slices.Contains(r.lens, w) {
		r.lens = append(r.lens, w)
		slices.Sort(r.lens)
	}
	if 2*(r.n+1) > len(r.table) {
		old := r.table
		size := 64
		for size < 4*(r.n+1) {
			size *= 2
		}
		r.table = make([]uint64, size) // a power of two, at most half full
		r.n = 0
		for _, h := range old {
			if h != 0 {
				r.insert(h)
			}
		}
	}
	r.insert(r.sum(window))
}

func (r *Redactor) insert(h uint64) {
	mask := uint64(len(r.table) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch r.table[i] {
		case h:
			return
		case 0:
			r.table[i] = h
			r.n++
			return
		}
	}
}

func (r *Redactor) has(h uint64) bool {
	mask := uint64(len(r.table) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch r.table[i] {
		case h:
			return true
		case 0:
			return false
		}
	}
}

// sum is the keyed hash of a window of at most 8 octets, with the
// URL-safe base64 alphabet folded onto the standard one: the octets and
// the length packed into 64 bits, mixed with the seed (the splitmix64
// finaliser). It is never 0.
func (r *Redactor) sum(window []byte) uint64 {
	var v uint64
	for _, c := range window {
		v = v<<8 | uint64(fold(c))
	}
	v ^= uint64(len(window)) << 59
	v ^= r.seed
	v = (v ^ v>>30) * 0xbf58476d1ce4e5b9
	v = (v ^ v>>27) * 0x94d049bb133111eb
	v ^= v >> 31
	if v == 0 {
		v = 1
	}
	return v
}

func fold(c byte) byte {
	switch c {
	case '-':
		return '+'
	case '_':
		return '/'
	}
	return c
}

// spans returns the ranges of text to remove, in order and disjoint.
func (r *Redactor) spans(text []byte) [][2]int {
	if r.Empty() || len(text) < r.lens[0] {
		return nil
	}
	var out [][2]int
	for i := range text {
		end := 0
		for _, w := range r.lens {
			if i+w <= len(text) && r.has(r.sum(text[i:i+w])) {
				end = i + w
			}
		}
		if end == 0 {
			continue
		}
		if n := len(out); n > 0 && i <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], end)
		} else {
			out = append(out, [2]int{i, end})
		}
	}
	return out
}

// Clean returns text with the registered secrets removed and everything
// that is not printable escaped. A nil or empty Redactor escapes only.
func (r *Redactor) Clean(text []byte) string {
	return r.clean(text, false)
}

// CleanString is Clean for a string.
func (r *Redactor) CleanString(s string) string {
	if r.Empty() && printableASCII(s) {
		return s
	}
	return r.clean([]byte(s), false)
}

// CleanLines is CleanString for text meant for a terminal, that may hold
// several lines: it keeps LF and horizontal tab and escapes the rest.
func (r *Redactor) CleanLines(s string) string {
	clean := true
	for i := 0; i < len(s) && clean; i++ {
		c := s[i]
		clean = c >= 0x20 && c < 0x7f || c == '\n' || c == '\t'
	}
	if clean && r.Empty() {
		return s
	}
	return r.clean([]byte(s), true)
}

// Printable returns s with everything that is not printable escaped.
func Printable(s string) string { return (*Redactor)(nil).CleanString(s) }

// NeedsCleaning reports whether Clean would change text.
func (r *Redactor) NeedsCleaning(text []byte) bool {
	if !r.Empty() {
		return true
	}
	for _, c := range text {
		if c < 0x20 || c >= 0x7f {
			return true
		}
	}
	return false
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

func (r *Redactor) clean(text []byte, lines bool) string {
	spans := r.spans(text)
	var b strings.Builder
	b.Grow(cleanLen(text, lines) + len(spans)*len(Marker))
	for i := 0; i < len(text); {
		if len(spans) > 0 && i >= spans[0][0] {
			b.WriteString(Marker)
			i = spans[0][1]
			spans = spans[1:]
			continue
		}
		// A character never straddles the start of a redacted span: its
		// octets before the span are escaped one by one.
		limit := len(text)
		if len(spans) > 0 {
			limit = spans[0][0]
		}
		c := text[i]
		if c >= 0x20 && c < 0x7f || lines && (c == '\n' || c == '\t') {
			b.WriteByte(c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			escapeByte(&b, c)
			i++
			continue
		}
		ru, size := utf8.DecodeRune(text[i:limit])
		switch {
		case ru == utf8.RuneError && size <= 1:
			escapeByte(&b, c)
			i++
			continue
		case unicode.IsPrint(ru):
			b.Write(text[i : i+size])
		case ru <= 0xffff:
			b.WriteString(`\u`)
			writeHex(&b, uint32(ru), 4)
		default:
			b.WriteString(`\U`)
			writeHex(&b, uint32(ru), 8)
		}
		i += size
	}
	return b.String()
}

// cleanLen returns the length of text escaped (without redaction), so
// that clean allocates its result once.
func cleanLen(text []byte, lines bool) int {
	n := 0
	for i := 0; i < len(text); {
		c := text[i]
		switch {
		case c >= 0x20 && c < 0x7f || lines && (c == '\n' || c == '\t'):
			n++
			i++
		case c < utf8.RuneSelf:
			n += 4 // \xHH, or shorter: \r
			i++
		default:
			ru, size := utf8.DecodeRune(text[i:])
			switch {
			case ru == utf8.RuneError && size <= 1:
				n += 4
				size = 1
			case unicode.IsPrint(ru):
				n += size
			default:
				n += 10 // \uHHHH or \UHHHHHHHH
			}
			i += size
		}
	}
	return n
}

func escapeByte(b *strings.Builder, c byte) {
	switch c {
	case '\a':
		b.WriteString(`\a`)
	case '\b':
		b.WriteString(`\b`)
	case '\f':
		b.WriteString(`\f`)
	case '\n':
		b.WriteString(`\n`)
	case '\r':
		b.WriteString(`\r`)
	case '\t':
		b.WriteString(`\t`)
	case '\v':
		b.WriteString(`\v`)
	default:
		b.WriteString(`\x`)
		writeHex(b, uint32(c), 2)
	}
}

func writeHex(b *strings.Builder, v uint32, digits int) {
	const hex = "0123456789abcdef"
	for k := digits - 1; k >= 0; k-- {
		b.WriteByte(hex[v>>(4*k)&15])
	}
}

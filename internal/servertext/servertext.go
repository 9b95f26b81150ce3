// Package servertext makes text that came from an SMTP server safe to put
// into an error, an audit event, a log line or onto a terminal. It is the
// one step every such text passes through, in the smtp package, in the SASL
// mechanisms, in the transports' certificate errors and in smtpsend:
//
//   - a [Redactor] removes what the client sent during AUTH that is
//     secret: the password or token, and the lines and proofs that carry
//     them, as sent (base64) and raw, and any fragment of [MinFragment]
//     octets or more of either, wherever a server echoes them; it looks
//     for them twice, in the octets received and in the escaped text, so
//     that escaping cannot rebuild a secret a server sent in pieces, some
//     raw and some already written as escapes;
//   - every character that is not printable (control characters such as
//     ESC, BEL and CR, invalid UTF-8, Unicode format characters such as
//     bidirectional overrides) is escaped as in a Go string literal, so
//     that the text cannot move a terminal's cursor or erase what was
//     printed before it.
//
// The work is linear in the length of the text: each position is looked
// up in a hash set, once in the octets received and once in the escaped
// text. A Redactor keeps the fragments mixed with a random key, not as
// text, so a secret does not sit in memory in the clear.
package servertext

import (
	"encoding/base64"
	"hash/maphash"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
)

// MinFragment is the length of the shortest run of text a Redactor
// removes: every run of MinFragment octets of a registered secret (raw,
// escaped, or base64 in any alignment and either alphabet) is removed
// wherever it appears in free text. A secret shorter than MinFragment is
// never looked for in free text, in any form: it would match ordinary
// words ("queued", "Ok"), and the place of the marker would then tell
// what the secret is. [Redactor.Matches] still recognises it as the
// whole of a parsed value (a queue id).
const MinFragment = 8

// MinSecret is the length of the shortest secret a Redactor registers at
// all; [Redactor.Matches] recognises a parsed value equal to a secret of
// MinSecret to MinFragment-1 octets. AUTH lines that carry a secret of
// MinSecret octets or more are registered by [Redactor.AddSent].
const MinSecret = 4

// Marker replaces each redacted run of text.
const Marker = "[redacted]"

// Bounds on what a Redactor remembers. It keeps the secrets most recently
// registered (registering a secret again makes it the most recent) and
// forgets the oldest once it holds more than MaxSecrets of them, or more
// than MaxWindows fragments in all; the most recent one is always kept
// whole. A fragment takes 8 octets, and the hash set at most 32 more, so
// a Redactor holds at most about 2.5 MB (a password takes about 100
// fragments, a 2 KB OAuth token about 11 000), unless its most recent
// secret alone is larger.
const (
	MaxSecrets = 256
	MaxWindows = 1 << 16
)

// Redactor removes registered secrets from server text. The zero value
// removes nothing and is ready to use; a nil *Redactor escapes only. A
// Redactor is safe for concurrent use: many sessions may register
// secrets and clean text with one at the same time. Cleaning takes no
// lock; registering builds a new hash set and publishes it, so a text
// being cleaned meanwhile is cleaned with the set as it was when the
// cleaning began. A Redactor must not be copied after first use.
type Redactor struct {
	mu      sync.Mutex // guards the fields below; held only to register
	seed    uint64     // random, drawn at the first registration
	entries []entry    // registered secrets, the least recently registered first
	windows int        // the fragments of all entries
	gen     uint64     // counts the sets published

	cur atomic.Pointer[set] // the set in force; nil until a registration
}

// entry is one registered secret: the keyed hashes of its fragments.
type entry struct {
	key    uint64   // identifies the secret, to find it registered again
	hashes []uint64 // its MinFragment-octet fragments, every form
	whole  uint64   // the secret itself when shorter than MinFragment, or 0
}

// set is an immutable hash set of fragments, published by a Redactor.
type set struct {
	seed  uint64
	gen   uint64
	table []uint64 // open addressing, a power of two, at most half full; 0 is free
	whole []uint64 // the short secrets, for Matches
}

// Empty reports whether nothing is registered.
func (r *Redactor) Empty() bool { return r.load() == nil }

// Generation returns a number that changes whenever what the Redactor
// removes changes (0 while nothing is registered), so that a cache of
// cleaned texts knows when to start afresh.
func (r *Redactor) Generation() uint64 {
	if s := r.load(); s != nil {
		return s.gen
	}
	return 0
}

func (r *Redactor) load() *set {
	if r == nil {
		return nil
	}
	s := r.cur.Load()
	if s == nil || len(s.table) == 0 && len(s.whole) == 0 {
		return nil
	}
	return s
}

var keySeed = maphash.MakeSeed()

// AddSecret registers a secret the client sends (a password, a token, a
// proof): when it has MinFragment octets or more, its raw form, the two
// forms escaping gives it (see [Redactor.Clean] and [Redactor.CleanLines])
// and its base64 encodings in each of the three alignments it can have
// inside a longer base64 text; when shorter, down to MinSecret octets,
// only the whole secret, for [Redactor.Matches].
func (r *Redactor) AddSecret(secret []byte) {
	if len(secret) < MinSecret {
		return
	}
	r.register('s', secret, 0, 0, func(e *entry, sum func([]byte) uint64) {
		if len(secret) < MinFragment {
			e.whole = sum(secret)
			return
		}
		e.hashes = appendWindows(e.hashes, secret, sum)
		for _, lines := range []bool{false, true} {
			if esc := (*Redactor)(nil).clean(secret, lines); esc != string(secret) {
				e.hashes = appendWindows(e.hashes, []byte(esc), sum)
			}
		}
		for off := range 3 {
			if off >= len(secret) {
				break
			}
			rest := secret[off:]
			// Only whole groups of three octets encode independently of
			// what follows.
			rest = rest[:len(rest)/3*3]
			e.hashes = appendWindows(e.hashes, []byte(base64.StdEncoding.EncodeToString(rest)), sum)
		}
	})
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
	r.register('l', line, from, to, func(e *entry, sum func([]byte) uint64) {
		// Character k of base64 carries bits 6k to 6k+5, of octets 6k/8
		// to (6k+5)/8.
		first, last := from*8/6, min((to*8+5)/6, len(line))
		for i := 0; i+MinFragment <= len(line); i++ {
			overlap := min(i+MinFragment, last) - max(i, first)
			if overlap*2 >= MinFragment {
				e.hashes = append(e.hashes, sum(line[i:i+MinFragment]))
			}
		}
	})
}

func appendWindows(dst []uint64, s []byte, sum func([]byte) uint64) []uint64 {
	for i := 0; i+MinFragment <= len(s); i++ {
		dst = append(dst, sum(s[i:i+MinFragment]))
	}
	return dst
}

// register adds the entry fill makes, unless the same secret is
// registered already, in which case it becomes the most recent; then it
// forgets the oldest entries beyond the bounds and publishes the new set.
func (r *Redactor) register(kind byte, b []byte, from, to int, fill func(*entry, func([]byte) uint64)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seed == 0 {
		r.seed = rand.Uint64() | 1
	}
	var h maphash.Hash
	h.SetSeed(keySeed)
	h.WriteByte(kind)
	h.Write(b)
	key := h.Sum64() ^ uint64(from)<<32 ^ uint64(to) ^ r.seed
	for i, e := range r.entries {
		if e.key == key {
			copy(r.entries[i:], r.entries[i+1:])
			r.entries[len(r.entries)-1] = e
			return
		}
	}
	seed := r.seed
	e := entry{key: key}
	fill(&e, func(w []byte) uint64 { return sum(seed, w) })
	if len(e.hashes) == 0 && e.whole == 0 {
		return
	}
	r.entries = append(r.entries, e)
	r.windows += len(e.hashes)
	drop := 0
	for len(r.entries)-drop > 1 && (len(r.entries)-drop > MaxSecrets || r.windows > MaxWindows) {
		r.windows -= len(r.entries[drop].hashes)
		drop++
	}
	if drop > 0 {
		n := copy(r.entries, r.entries[drop:])
		clear(r.entries[n:])
		r.entries = r.entries[:n]
	}
	r.gen++
	next := &set{seed: seed, gen: r.gen}
	old := r.cur.Load()
	if drop == 0 && old != nil && 2*(old.count()+len(e.hashes)) <= len(old.table) {
		// Room in the set in force: a copy of it, plus the new entry.
		next.table = append([]uint64(nil), old.table...)
		next.whole = old.whole
		if e.whole != 0 {
			next.whole = append(append([]uint64(nil), old.whole...), e.whole)
		}
		for _, h := range e.hashes {
			next.insert(h)
		}
	} else {
		size := 64
		for size < 2*r.windows {
			size *= 2
		}
		next.table = make([]uint64, size)
		for _, e := range r.entries {
			for _, h := range e.hashes {
				next.insert(h)
			}
			if e.whole != 0 {
				next.whole = append(next.whole, e.whole)
			}
		}
	}
	r.cur.Store(next)
}

// count returns how many slots of the table are taken.
func (s *set) count() int {
	n := 0
	for _, h := range s.table {
		if h != 0 {
			n++
		}
	}
	return n
}

func (s *set) insert(h uint64) {
	mask := uint64(len(s.table) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.table[i] {
		case h:
			return
		case 0:
			s.table[i] = h
			return
		}
	}
}

func (s *set) has(h uint64) bool {
	if len(s.table) == 0 {
		return false
	}
	mask := uint64(len(s.table) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.table[i] {
		case h:
			return true
		case 0:
			return false
		}
	}
}

// sum is the keyed hash of a window of at most 8 octets, with the
// URL-safe base64 alphabet folded onto the standard one: the octets and
// the length packed into 64 bits, mixed with the seed.
func sum(seed uint64, window []byte) uint64 {
	var v uint64
	for _, c := range window {
		v = v<<8 | uint64(fold(c))
	}
	return mix(v, len(window), seed)
}

// mix finishes sum: the length and the seed, then the splitmix64
// finaliser, a bijection. It is never 0.
func mix(v uint64, n int, seed uint64) uint64 {
	v ^= uint64(n) << 59 // a packed window of 8 octets fills v: n is then 8
	v ^= seed
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
func spans[T string | []byte](s *set, text T) [][2]int {
	if s == nil || len(s.table) == 0 || len(text) < MinFragment {
		return nil
	}
	var out [][2]int
	var v uint64
	for i := 0; i < len(text); i++ {
		v = v<<8 | uint64(fold(text[i]))
		if i < MinFragment-1 || !s.has(mix(v, MinFragment, s.seed)) {
			continue
		}
		start, end := i+1-MinFragment, i+1
		if n := len(out); n > 0 && start <= out[n-1][1] {
			out[n-1][1] = end
		} else {
			out = append(out, [2]int{start, end})
		}
	}
	return out
}

// Matches reports whether a value parsed from server text (a queue id)
// holds a registered secret: a fragment of MinFragment octets, or the
// whole of a shorter secret. Such a value is not one to keep.
func (r *Redactor) Matches(value string) bool {
	s := r.load()
	if s == nil {
		return false
	}
	if len(value) < MinFragment {
		if len(value) < MinSecret {
			return false
		}
		h := sum(s.seed, []byte(value))
		for _, w := range s.whole {
			if w == h {
				return true
			}
		}
		return false
	}
	return len(spans(s, value)) > 0
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

// CleanFrom returns what Clean(text) makes of text[from:]: the secrets
// are looked for in the whole of text, so that a fragment that straddles
// from is found, and what is before from is left out of the result (a
// parsed value, such as an enhanced status code, that the caller keeps
// as it was received).
func (r *Redactor) CleanFrom(text []byte, from int) string {
	s := r.load()
	var sp [][2]int
	for _, span := range spans(s, text) {
		if span[1] <= from {
			continue
		}
		sp = append(sp, [2]int{max(span[0], from) - from, span[1] - from})
	}
	return finish(s, escape(text[from:], false, sp))
}

func (r *Redactor) clean(text []byte, lines bool) string {
	s := r.load()
	sp := spans(s, text)
	out := escape(text, lines, sp)
	if len(sp) == 0 && len(out) == len(text) {
		// Nothing was escaped or removed: the escaped text is the text,
		// already searched.
		return out
	}
	return finish(s, out)
}

// finish looks for the secrets of s again in out, the escaped text.
func finish(s *set, out string) string {
	if s == nil {
		return out
	}
	// The second look, in the escaped text: a server may have sent some
	// of a secret's control characters raw and written others as escapes
	// ("\t" in two characters), which the first look cannot see.
	sp := spans(s, out)
	if len(sp) == 0 {
		return out
	}
	var b strings.Builder
	b.Grow(len(out))
	at, prev := 0, -1 // prev: where the last redaction ended
	for _, span := range sp {
		// A fragment found in the escaped text may begin or end inside
		// a character kept raw (a printable non-ASCII rune): the whole
		// character goes, so that no lone octet of it is left.
		start, end := span[0], span[1]
		for start > 0 && !utf8.RuneStart(out[start]) {
			start--
		}
		for end < len(out) && !utf8.RuneStart(out[end]) {
			end++
		}
		if start <= prev {
			at, prev = max(at, end), max(at, end)
			continue
		}
		b.WriteString(out[at:start])
		b.WriteString(Marker)
		at, prev = end, end
	}
	b.WriteString(out[at:])
	return b.String()
}

// escape returns text with the spans replaced by Marker and the rest
// made printable.
func escape(text []byte, lines bool, spans [][2]int) string {
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

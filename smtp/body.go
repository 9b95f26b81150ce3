package smtp

import (
	"bytes"
	"strconv"
)

// maxLineLength is the longest body line allowed by default, without its
// CRLF (RFC 5322 §2.1.1).
const maxLineLength = 998

// bodyEncoder turns a message body, given in pieces of any size, into
// its wire form: lines checked for bare CR and LF (or normalised to
// CRLF), line length and total size checked, and, for DATA, dot-stuffed.
// It holds no buffer of its own: memory is whatever the caller passes.
type bodyEncoder struct {
	dotStuff  bool  // DATA: double a leading "."
	normalize bool  // turn bare CR and bare LF into CRLF
	maxLine   int   // longest line, without CRLF; < 0 means no limit
	maxSize   int64 // most message octets; 0 means no limit

	n         int64 // message octets so far (after normalisation, before stuffing)
	lineLen   int   // octets in the current line
	pendingCR bool  // the last octet seen was a CR whose LF has not come yet
	problem   string
	sizeErr   bool // the problem is the size limit
}

func newBodyEncoder(dotStuff, normalize bool, maxLine int, maxSize int64) bodyEncoder {
	if maxLine == 0 {
		maxLine = maxLineLength
	}
	return bodyEncoder{dotStuff: dotStuff, normalize: normalize, maxLine: maxLine, maxSize: maxSize}
}

// The problems a body can have. Their wording is part of the errors
// callers see (Error.Message for OpBody).
const (
	problemBareCR  = "body contains a bare CR (not followed by LF); set Options.NormalizeLineEndings to convert"
	problemBareLF  = "body contains a bare LF (not preceded by CR); set Options.NormalizeLineEndings to convert"
	problemFinalCR = "body ends with a bare CR; set Options.NormalizeLineEndings to convert"
)

// fail records the first problem and reports false.
func (e *bodyEncoder) fail(p string) bool {
	if e.problem == "" {
		e.problem = p
	}
	return false
}

// failLine records a line over the limit and reports false.
func (e *bodyEncoder) failLine() bool {
	return e.fail("body has a line longer than " + strconv.Itoa(e.maxLine) + " octets")
}

// checkSize records a message over the size limit and reports whether
// the message is within it.
func (e *bodyEncoder) checkSize() bool {
	if e.maxSize > 0 && e.n > e.maxSize {
		e.sizeErr = true
		return e.fail("message larger than the limit of " + strconv.FormatInt(e.maxSize, 10) + " octets")
	}
	return true
}

// fits reports whether run more octets fit on the current line.
func (e *bodyEncoder) fits(run int) bool {
	return e.maxLine <= 0 || e.lineLen+run <= e.maxLine
}

// endLine appends CRLF and starts a new line.
func (e *bodyEncoder) endLine(dst []byte) []byte {
	e.n += 2
	e.lineLen = 0
	return append(dst, '\r', '\n')
}

// resumeCR settles a CR held back at the end of the previous piece now
// that the octet after it, c, is known. It reports how many octets of
// the piece it consumed (1 for the CR's LF), or ok=false for a bare CR
// without normalisation.
func (e *bodyEncoder) resumeCR(dst []byte, c byte) (_ []byte, used int, ok bool) {
	e.pendingCR = false
	if c == '\n' {
		return e.endLine(dst), 1, true
	}
	if !e.normalize {
		return dst, 0, e.fail(problemBareCR)
	}
	// c starts the next line: it is not consumed.
	return e.endLine(dst), 0, true
}

// lineScan looks at p from the current position of a line: run is the
// number of octets before the first CR or LF (all of p if none), and
// lf the index of the first LF (-1 if none), which the caller may know
// already (lf >= -1) or not (lf < -1). It costs at most two IndexByte
// scans, each stopping at the octet it looks for.
func lineScan(p []byte, lf int) (run, _ int) {
	if lf < -1 {
		lf = bytes.IndexByte(p, '\n')
	}
	line := p
	if lf >= 0 {
		line = p[:lf]
	}
	if run = bytes.IndexByte(line, '\r'); run < 0 {
		run = len(line)
	}
	return run, lf
}

// goodLines measures the lines at the start of p, the first of which
// continues the current line: n is the length of the longest prefix of
// p made of whole good lines (each ending in CRLF, within the line
// limit), stopping before a line that starts with "." when
// dot-stuffing, and lf is the index of p's first LF (-1 if none). If a
// CR in p[:n] is not before an LF, ok is false: the caller looks at
// those lines one by one. It does not change the encoder.
//
// Each line is found by its LF alone, and the CRs of p[:n] are counted
// once at the end (one vectorised pass) rather than looked for line by
// line. After a line of length l, the lines that follow are first
// guessed to be as long (a base64 attachment is lines of one length):
// a guessed line is one whose last two octets are CR LF, and a streak
// of them is proved by counting its LFs; if one held another LF, the
// streak's lines are found one by one instead.
func (e *bodyEncoder) goodLines(p []byte) (n, lf int, ok bool) {
	cut := len(p) > scanBlock
	if cut {
		p = p[:scanBlock]
	}
	lf = bytes.IndexByte(p, '\n')
	if cut && lf < 0 {
		lf = -2 // not in the block: not known
	}
	next, lineLen, lines, guessFrom := lf, e.lineLen, 0, 0
	for next > 0 && p[n+next-1] == '\r' {
		if e.maxLine > 0 && lineLen+next-1 > e.maxLine {
			break
		}
		whole := lineLen == 0 // the line is all in p, as long as next+1
		n += next + 1
		lines++
		lineLen = 0
		if e.runEnds(p, n) {
			break
		}
		if whole && n >= guessFrom {
			l, start, k, end := next+1, n, 0, false
			for n+l <= len(p) && p[n+l-1] == '\n' && p[n+l-2] == '\r' {
				n += l
				k++
				if end = e.runEnds(p, n); end {
					break
				}
			}
			if k > 0 && bytes.Count(p[start:n], lfOctet) != k {
				guessFrom, n, end = n, start, false
			} else {
				lines += k
			}
			if end {
				break
			}
		}
		next = bytes.IndexByte(p[n:], '\n')
	}
	if lines > 0 && bytes.Count(p[:n], crOctet) != lines {
		return n, lf, false
	}
	return n, lf, true
}

// runEnds reports whether a run of good lines must end at p[n]: at the
// end of p, or before a "." to double.
func (e *bodyEncoder) runEnds(p []byte, n int) bool {
	return n == len(p) || e.dotStuff && p[n] == '.'
}

// scanBlock is the most goodLines looks at in one call: its three
// passes over a block (the guessed line ends, then the counts of LF and
// CR) find the block in the core's first-level cache after the first,
// which is bound by memory bandwidth for a large body. Measured with
// BenchmarkBodySize (10 MiB, BDAT, *bytes.Reader), three rounds
// interleaved: 8 KiB came first in each, 5-10 % less CPU per MB than an
// unbounded scan of a 1 MiB piece. A variable so that tests can cut
// lines at block ends.
var scanBlock = 8 << 10

var crOctet, lfOctet = []byte{'\r'}, []byte{'\n'}

// encode appends the wire form of p to dst. On a bad body it returns
// ok=false; the problem is in e.problem and dst holds only good output:
// octets that break a line rule are never appended. The size limit is
// checked once p is encoded (so a piece that crosses it is appended),
// after the line rules: for a body with several problems, the one
// reported depends on where the pieces are cut.
//
// Runs of good lines are measured by goodLines and appended at once:
// for lines of one length (base64) the cost per octet is that of a copy
// and two vectorised counts; other lines cost an IndexByte each. Lines
// that need a change (a bare CR or LF) or break a rule go through the
// exact path below, which looks for each line's first CR and LF.
func (e *bodyEncoder) encode(dst, p []byte) (_ []byte, ok bool) {
	if e.problem != "" {
		return dst, false
	}
	i := 0
	if e.pendingCR && len(p) > 0 {
		if dst, i, ok = e.resumeCR(dst, p[0]); !ok {
			return dst, false
		}
	}
	seg := i // p[seg:i] is checked output not yet appended to dst
	// Lines before slow hide a bare CR: they are looked at one by one.
	slow := i
	for i < len(p) {
		if e.lineLen == 0 && e.dotStuff && p[i] == '.' {
			dst = append(dst, p[seg:i]...)
			dst = append(dst, '.')
			seg = i
		}
		lf := -2 // not known yet
		if i >= slow {
			n, first, ok := e.goodLines(p[i:])
			if ok && n > 0 {
				// Good lines stay in the segment.
				e.n += int64(n)
				e.lineLen = 0
				i += n
				continue
			}
			if !ok {
				slow = i + n
			}
			lf = first
		}
		run, lf := lineScan(p[i:], lf)
		if !e.fits(run) {
			return append(dst, p[seg:i]...), e.failLine()
		}
		e.lineLen += run
		e.n += int64(run)
		i += run
		switch {
		case i == len(p):
			// The line goes on in the next piece.
		case lf == run+1:
			// CRLF: the line is good; it stays in the segment.
			i += 2
			e.n += 2
			e.lineLen = 0
		case lf == run:
			// A bare LF.
			dst = append(dst, p[seg:i]...)
			if !e.normalize {
				return dst, e.fail(problemBareLF)
			}
			dst = e.endLine(dst)
			i++
			seg = i
		case i+1 == len(p):
			// A CR ends the piece: hold it until the next octet is seen.
			dst = append(dst, p[seg:i]...)
			e.pendingCR = true
			i++
			seg = i
		default:
			// A bare CR.
			dst = append(dst, p[seg:i]...)
			if !e.normalize {
				return dst, e.fail(problemBareCR)
			}
			dst = e.endLine(dst)
			i++
			seg = i
		}
	}
	dst = append(dst, p[seg:]...)
	return dst, e.checkSize()
}

// verbatim is the copy-free half of encode, for a caller that can write
// p itself (a body already in memory, as *bytes.Reader or
// *strings.Reader hold it): it returns k, the length of the longest
// prefix of p that is its own wire form, and moves the encoder past it
// as encode(nil, p[:k]) would. The caller writes p[:k] as it is, then,
// if k < len(p), hands the rest to encodeLine (or encode), which deals
// with the octets that need a change (a "." to double, a line end to
// normalise, a CR held for the next piece) or that break a rule.
//
// verbatim never accepts an octet that breaks a rule, the size limit
// included: what it accepts may be written before the rest of the body
// is seen. It returns 0 on a failed encoder.
func (e *bodyEncoder) verbatim(p []byte) int {
	if e.problem != "" || e.pendingCR {
		return 0
	}
	i, slow := 0, 0
	for i < len(p) {
		if e.lineLen == 0 && e.dotStuff && p[i] == '.' {
			break
		}
		lf := -2
		if i >= slow {
			n, first, ok := e.goodLines(p[i:])
			if ok && n > 0 && (e.maxSize <= 0 || e.n+int64(n) <= e.maxSize) {
				e.n += int64(n)
				e.lineLen = 0
				i += n
				continue
			}
			// A bare CR or the size limit is among these lines.
			slow = i + n
			lf = first
		}
		run, lf := lineScan(p[i:], lf)
		if !e.fits(run) {
			break
		}
		take, whole := run, lf == run+1
		if whole {
			take += 2
		}
		if e.maxSize > 0 && e.n+int64(take) > e.maxSize {
			break
		}
		e.n += int64(take)
		i += take
		if whole {
			e.lineLen = 0
			continue
		}
		e.lineLen += run
		if i < len(p) {
			// A CR or LF that encode must see.
			break
		}
	}
	return i
}

// encodeLine is encode for the part of p up to and including its first
// LF (all of p if it has none): the step that takes a caller of verbatim
// past what verbatim refused, to the start of a line where verbatim may
// go on. It returns how many octets of p it consumed. The size limit is
// checked at the end of that part rather than at the end of p.
func (e *bodyEncoder) encodeLine(dst, p []byte) (_ []byte, used int, ok bool) {
	used = len(p)
	if lf := bytes.IndexByte(p, '\n'); lf >= 0 {
		used = lf + 1
	}
	dst, ok = e.encode(dst, p[:used])
	return dst, used, ok
}

// finish appends the end of the body: a CRLF if the last line has none
// (and the body is not empty), and for DATA the final ".\r\n".
func (e *bodyEncoder) finish(dst []byte) (_ []byte, ok bool) {
	if e.problem != "" {
		return dst, false
	}
	if e.pendingCR {
		if !e.normalize {
			return dst, e.fail(problemFinalCR)
		}
		e.pendingCR = false
		dst = e.endLine(dst)
	}
	if e.lineLen > 0 {
		dst = e.endLine(dst)
	}
	if !e.checkSize() {
		return dst, false
	}
	if e.dotStuff {
		dst = append(dst, '.', '\r', '\n')
	}
	return dst, true
}

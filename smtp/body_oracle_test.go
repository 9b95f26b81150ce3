package smtp

import "strconv"

// oldBodyEncoder is the body encoder as it was before issue 21, kept
// unchanged (renamed) as the oracle the differential tests and
// FuzzBodyEncoderOracle compare bodyEncoder with: it looks at every
// octet, so its semantics are easy to read. Only the tests use it.
// It turns a message body, given in pieces of any size, into
// its wire form: lines checked for bare CR and LF (or normalised to
// CRLF), line length and total size checked, and, for DATA, dot-stuffed.
// It holds no buffer of its own: memory is whatever the caller passes.
type oldBodyEncoder struct {
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

func newOldBodyEncoder(dotStuff, normalize bool, maxLine int, maxSize int64) oldBodyEncoder {
	if maxLine == 0 {
		maxLine = maxLineLength
	}
	return oldBodyEncoder{dotStuff: dotStuff, normalize: normalize, maxLine: maxLine, maxSize: maxSize}
}

// fail records the first problem and reports false.
func (e *oldBodyEncoder) fail(p string) bool {
	if e.problem == "" {
		e.problem = p
	}
	return false
}

// endLine appends CRLF and starts a new line.
func (e *oldBodyEncoder) endLine(dst []byte) []byte {
	e.n += 2
	e.lineLen = 0
	return append(dst, '\r', '\n')
}

// encode appends the wire form of p to dst. On a bad body it returns
// ok=false; the problem is in e.problem and dst holds only good output.
func (e *oldBodyEncoder) encode(dst, p []byte) (_ []byte, ok bool) {
	if e.problem != "" {
		return dst, false
	}
	for i := 0; i < len(p); {
		c := p[i]
		if e.pendingCR {
			e.pendingCR = false
			if c == '\n' {
				dst = e.endLine(dst)
				i++
				continue
			}
			if !e.normalize {
				return dst, e.fail("body contains a bare CR (not followed by LF); set Options.NormalizeLineEndings to convert")
			}
			dst = e.endLine(dst)
			// c starts the next line: fall through without consuming it.
		}
		switch c {
		case '\r':
			e.pendingCR = true
			i++
			continue
		case '\n':
			if !e.normalize {
				return dst, e.fail("body contains a bare LF (not preceded by CR); set Options.NormalizeLineEndings to convert")
			}
			dst = e.endLine(dst)
			i++
			continue
		}
		if e.lineLen == 0 && c == '.' && e.dotStuff {
			dst = append(dst, '.')
		}
		// Copy the run of ordinary octets up to the next CR or LF.
		j := i
		for j < len(p) && p[j] != '\r' && p[j] != '\n' {
			j++
		}
		run := j - i
		e.lineLen += run
		e.n += int64(run)
		if e.maxLine > 0 && e.lineLen > e.maxLine {
			return dst, e.fail("body has a line longer than " + strconv.Itoa(e.maxLine) + " octets")
		}
		dst = append(dst, p[i:j]...)
		i = j
	}
	if e.maxSize > 0 && e.n > e.maxSize {
		e.sizeErr = true
		return dst, e.fail("message larger than the limit of " + strconv.FormatInt(e.maxSize, 10) + " octets")
	}
	return dst, true
}

// finish appends the end of the body: a CRLF if the last line has none
// (and the body is not empty), and for DATA the final ".\r\n".
func (e *oldBodyEncoder) finish(dst []byte) (_ []byte, ok bool) {
	if e.problem != "" {
		return dst, false
	}
	if e.pendingCR {
		if !e.normalize {
			return dst, e.fail("body ends with a bare CR; set Options.NormalizeLineEndings to convert")
		}
		e.pendingCR = false
		dst = e.endLine(dst)
	}
	if e.lineLen > 0 {
		dst = e.endLine(dst)
	}
	if e.maxSize > 0 && e.n > e.maxSize {
		e.sizeErr = true
		return dst, e.fail("message larger than the limit of " + strconv.FormatInt(e.maxSize, 10) + " octets")
	}
	if e.dotStuff {
		dst = append(dst, '.', '\r', '\n')
	}
	return dst, true
}

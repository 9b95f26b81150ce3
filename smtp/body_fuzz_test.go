package smtp

import (
	"bytes"
	"testing"
)

// bodyCase is one encoder configuration the differential tests run.
type bodyCase struct {
	dotStuff, normalize bool
	maxLine             int   // as newBodyEncoder takes it: 0 default, < 0 none
	maxSize             int64 // 0 none
}

// cutPieces cuts data into pieces as the fuzz target's split bytes say,
// taken in turn: 0 cuts just after the next CR (between a CR and what
// follows it, the LF of a CRLF most often), 1 just before the next "."
// (a "." at the start of a piece), anything else a piece of split%9
// octets (10 gives pieces of 1 octet). No split bytes: one piece.
func cutPieces(data, split []byte) [][]byte {
	if len(split) == 0 {
		return [][]byte{data}
	}
	var pieces [][]byte
	for k := 0; len(data) > 0; k++ {
		n := 0
		switch s := split[k%len(split)]; s {
		case 0:
			n = bytes.IndexByte(data, '\r') + 1
		case 1:
			n = bytes.IndexByte(data[1:], '.') + 1
		default:
			n = int(s % 9)
		}
		if n <= 0 || n > len(data) {
			n = len(data)
		}
		pieces = append(pieces, data[:n])
		data = data[n:]
	}
	return pieces
}

// bodyTokens are the parts linesBody builds bodies from: lines of a few
// lengths, so that runs of lines of one length (which the encoder
// guesses) are common, and the octets that break such runs.
var bodyTokens = []string{"abcd\r\n", "ab\r\n", "\r\n", ".", "\r", "\n", "x", "abcdefghij\r\n"}

// linesBody turns fuzz data into a body of bodyTokens, one per octet.
func linesBody(data []byte) []byte {
	var b []byte
	for _, c := range data {
		b = append(b, bodyTokens[int(c)%len(bodyTokens)]...)
	}
	return b
}

// oracleRun encodes the pieces with oldBodyEncoder and finishes it.
func oracleRun(bc bodyCase, pieces [][]byte) (out []byte, ok bool, problem string) {
	e := newOldBodyEncoder(bc.dotStuff, bc.normalize, bc.maxLine, bc.maxSize)
	for _, p := range pieces {
		if out, ok = e.encode(out, p); !ok {
			return out, false, e.problem
		}
	}
	out, ok = e.finish(out)
	return out, ok, e.problem
}

// diffEncode runs bodyEncoder and oldBodyEncoder side by side over the
// pieces and fails at the first call where their output, verdict,
// problem or state differ.
func diffEncode(t *testing.T, bc bodyCase, pieces [][]byte) {
	t.Helper()
	e := newBodyEncoder(bc.dotStuff, bc.normalize, bc.maxLine, bc.maxSize)
	o := newOldBodyEncoder(bc.dotStuff, bc.normalize, bc.maxLine, bc.maxSize)
	var got, want []byte
	for k, p := range pieces {
		var gotOK, wantOK bool
		got, gotOK = e.encode(got, p)
		want, wantOK = o.encode(want, p)
		if gotOK != wantOK || e.problem != o.problem || e.sizeErr != o.sizeErr || !bytes.Equal(got, want) {
			t.Fatalf("%+v piece %d of %q: encode gave ok=%v %q\n%q\nthe oracle ok=%v %q\n%q",
				bc, k, pieces, gotOK, e.problem, got, wantOK, o.problem, want)
		}
		if !gotOK {
			return
		}
		if e.n != o.n || e.lineLen != o.lineLen || e.pendingCR != o.pendingCR {
			t.Fatalf("%+v piece %d of %q: state n=%d line=%d cr=%v, the oracle's n=%d line=%d cr=%v",
				bc, k, pieces, e.n, e.lineLen, e.pendingCR, o.n, o.lineLen, o.pendingCR)
		}
	}
	var gotOK, wantOK bool
	got, gotOK = e.finish(got)
	want, wantOK = o.finish(want)
	if gotOK != wantOK || e.problem != o.problem || e.sizeErr != o.sizeErr || !bytes.Equal(got, want) {
		t.Fatalf("%+v finish after %q: ok=%v %q\n%q\nthe oracle ok=%v %q\n%q",
			bc, pieces, gotOK, e.problem, got, wantOK, o.problem, want)
	}
}

// directRun encodes the pieces as a copy-free caller would: verbatim
// octets "written" from the piece itself, the rest through encodeLine.
// It checks that verbatim never lets the message past the size limit,
// since what it accepts may be on the wire before the body fails.
func directRun(t *testing.T, bc bodyCase, pieces [][]byte) (out []byte, ok bool, e bodyEncoder) {
	t.Helper()
	e = newBodyEncoder(bc.dotStuff, bc.normalize, bc.maxLine, bc.maxSize)
	for _, p := range pieces {
		for len(p) > 0 {
			k := e.verbatim(p)
			if bc.maxSize > 0 && e.n > bc.maxSize {
				t.Fatalf("%+v: verbatim took the message to %d octets, over %d", bc, e.n, bc.maxSize)
			}
			out = append(out, p[:k]...)
			p = p[k:]
			if len(p) == 0 {
				break
			}
			var used int
			if out, used, ok = e.encodeLine(out, p); !ok {
				return out, false, e
			}
			if used == 0 {
				t.Fatalf("%+v: encodeLine used nothing of %q", bc, p)
			}
			p = p[used:]
		}
	}
	out, ok = e.finish(out)
	return out, ok, e
}

// diffDirect compares directRun with the oracle. Without a size limit
// every problem is found in body order, so output and problem must be
// the same however the pieces are cut; with one, the verdict must be
// the same, and a failure may name the size where the oracle, checking
// the size only at the end of a piece, names a later line problem.
func diffDirect(t *testing.T, bc bodyCase, pieces [][]byte) {
	t.Helper()
	want, wantOK, wantProblem := oracleRun(bc, pieces)
	got, gotOK, e := directRun(t, bc, pieces)
	if gotOK != wantOK {
		t.Fatalf("%+v %q: verbatim+encodeLine ok=%v %q, the oracle ok=%v %q", bc, pieces, gotOK, e.problem, wantOK, wantProblem)
	}
	if gotOK || bc.maxSize == 0 {
		if !bytes.Equal(got, want) || e.problem != wantProblem {
			t.Fatalf("%+v %q: verbatim+encodeLine gave %q %q, the oracle %q %q", bc, pieces, got, e.problem, want, wantProblem)
		}
		return
	}
	if e.problem != wantProblem && !e.sizeErr {
		t.Fatalf("%+v %q: verbatim+encodeLine failed with %q, the oracle with %q", bc, pieces, e.problem, wantProblem)
	}
	// What was written before the failure is good wire form: a prefix
	// of the body's output with no size limit.
	unlimited := bc
	unlimited.maxSize = 0
	full, _, _ := oracleRun(unlimited, pieces)
	if !bytes.HasPrefix(full, got) {
		t.Fatalf("%+v %q: wrote %q before failing, not a prefix of %q", bc, pieces, got, full)
	}
}

// withScanBlock sets scanBlock to n until the returned function is
// called. Tests that use it do not run in parallel.
func withScanBlock(n int) (restore func()) {
	old := scanBlock
	scanBlock = n
	return func() { scanBlock = old }
}

// FuzzBodyEncoderOracle compares bodyEncoder with oldBodyEncoder, the
// octet-at-a-time encoder it replaced, on random bodies cut at random
// piece boundaries (pieces of one octet, cuts between CR and LF, "." at
// the start of a piece), in every mode: DATA or BDAT, normalising or
// not, with small line and size limits or none. Each input is also
// turned into a body of whole lines (linesBody). It also runs the
// copy-free path (verbatim, encodeLine) against the oracle.
//
//	go test -run='^$' -fuzz='^FuzzBodyEncoderOracle$' -fuzztime=60s ./smtp
func FuzzBodyEncoderOracle(f *testing.F) {
	for _, s := range []string{
		"", "a\r\n", ".\r\n..\r\n", "a\r\n.\r\nb", "a\n.\nb", "a\r.\rb\r", "\r\r\n\n\r", "x\r",
		"Subject: x\r\n\r\n.body\r\nline two is longer than ten\r\n", "12345678\r\n", "123456789\r\n.",
	} {
		f.Add([]byte(s), []byte{}, uint8(0), uint8(0), uint8(0))
		f.Add([]byte(s), []byte{0, 1, 2}, uint8(1), uint8(10), uint8(0))
		f.Add([]byte(s), []byte{3, 0}, uint8(2), uint8(0), uint8(12))
		f.Add([]byte(s), []byte{1, 0, 9}, uint8(3), uint8(5), uint8(20))
	}
	f.Fuzz(func(t *testing.T, data, split []byte, mode, maxLine, maxSize uint8) {
		if len(data) > 1<<16 || len(split) > 1<<10 {
			return
		}
		bc := bodyCase{dotStuff: mode&1 != 0, normalize: mode&2 != 0, maxSize: int64(maxSize)}
		if b := int(mode >> 2); b != 0 {
			defer withScanBlock(b)() // goodLines cuts lines at its block's end
		}
		switch {
		case maxLine == 0:
		case maxLine == 255:
			bc.maxLine = -1
		default:
			bc.maxLine = int(maxLine % 40)
		}
		lines := linesBody(data)
		for _, pieces := range [][][]byte{
			{data}, cutPieces(data, split), cutPieces(data, []byte{10}),
			{lines}, cutPieces(lines, split),
		} {
			diffEncode(t, bc, pieces)
			diffDirect(t, bc, pieces)
		}
	})
}

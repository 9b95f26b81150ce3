package smtp

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// benchBody is a body of about size octets in one of three shapes:
// "base64", a base64 attachment's lines of 76 octets and CRLF; "text",
// lines of 0 to 78 octets that change length from one line to the next;
// "lf", base64 lines that end in a bare LF, which only the normalising
// encoder accepts. Every 50th line starts with a ".", which DATA
// doubles.
func benchBody(size int, shape string) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	b := make([]byte, 0, size+80)
	for line := 0; len(b) < size; line++ {
		n := 76
		if shape == "text" {
			n = line * 37 % 79
		}
		for i := range n {
			c := alphabet[(line*7+i)%len(alphabet)]
			if i == 0 && line%50 == 49 {
				c = '.'
			}
			b = append(b, c)
		}
		if shape != "lf" {
			b = append(b, '\r')
		}
		b = append(b, '\n')
	}
	return b
}

// pieceEncoder is what BenchmarkBodyEncoder drives: bodyEncoder, or
// oldBodyEncoder for the figures from before issue 21 in the same run.
type pieceEncoder interface {
	encode(dst, p []byte) ([]byte, bool)
	finish(dst []byte) ([]byte, bool)
}

// BenchmarkBodyEncoder measures the encoder as the session drives it: the
// body read in pieces of a quarter chunk, encoded into a chunk buffer
// that is emptied once it holds a chunk; base64 lines (see benchBody)
// unless the mode says "text" or "lf". "copy" is the floor: the same
// pieces appended with no encoder; "old-" runs oldBodyEncoder, the
// octet-at-a-time encoder bodyEncoder replaced, as a baseline measured
// on the same machine at the same time; "verbatim-" drives the copy-free
// path (verbatim, encodeLine) and copies only what encodeLine writes, as
// a caller that writes a body held in memory straight from it would.
// Run it with
//
//	go test -run '^$' -bench BodyEncoder -benchmem ./smtp
func BenchmarkBodyEncoder(b *testing.B) {
	const cs = defaultChunkSize
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		for _, mode := range []string{
			"copy", "bdat", "old-bdat", "data", "old-data",
			"bdat-text", "old-bdat-text", "normalize-lf", "old-normalize-lf",
			"verbatim-bdat", "verbatim-data",
		} {
			kind, old := strings.CutPrefix(mode, "old-")
			dotStuff, normalize := kind == "data" || kind == "verbatim-data", kind == "normalize-lf"
			direct := strings.HasPrefix(kind, "verbatim-")
			shape := "base64"
			switch kind {
			case "bdat-text":
				shape = "text"
			case "normalize-lf":
				shape = "lf"
			}
			body := benchBody(size, shape)
			b.Run(strconv.Itoa(size>>10)+"KiB/"+mode, func(b *testing.B) {
				dst := make([]byte, 0, 2*cs)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				var ne bodyEncoder
				var oe oldBodyEncoder
				var e pieceEncoder = &ne
				if old {
					e = &oe
				}
				for b.Loop() {
					ne = newBodyEncoder(dotStuff, normalize, 0, 0)
					oe = newOldBodyEncoder(dotStuff, normalize, 0, 0)
					out := dst[:0]
					for p := body; len(p) > 0; {
						piece := p[:min(len(p), cs/4)]
						p = p[len(piece):]
						switch {
						case kind == "copy":
							out = append(out, piece...)
						case direct:
							// The caller writes verbatim octets from the
							// piece itself: only the rest is copied.
							for q := piece; len(q) > 0; {
								k := ne.verbatim(q)
								q = q[k:]
								if len(q) == 0 {
									break
								}
								var used int
								var ok bool
								if out, used, ok = ne.encodeLine(out, q); !ok {
									b.Fatal("the bench body failed")
								}
								q = q[used:]
							}
						default:
							var ok bool
							if out, ok = e.encode(out, piece); !ok {
								b.Fatal("the bench body failed")
							}
						}
						if len(out) >= cs {
							out = out[:0]
						}
					}
					if kind != "copy" {
						if _, ok := e.finish(out); !ok {
							b.Fatal("the bench body failed")
						}
					}
				}
			})
		}
	}
}

func TestBenchBody(t *testing.T) {
	body := benchBody(4096, "base64")
	e := newBodyEncoder(true, false, 0, 0)
	out, ok := e.encode(nil, body)
	if !ok {
		t.Fatal(e.problem)
	}
	if got, want := len(out)-len(body), bytes.Count(body, []byte("\r\n."))+btoi(body[0] == '.'); got != want {
		t.Fatalf("DATA added %d octets to the bench body, want %d (one per leading dot)", got, want)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// cutsOf returns every way to cut a body of n octets into one, two or
// three pieces, and into pieces of one octet.
func cutsOf(n int) [][]int {
	all := [][]int{nil}
	for a := 0; a <= n; a++ {
		all = append(all, []int{a})
		for b := a; b <= n; b++ {
			all = append(all, []int{a, b})
		}
	}
	var bytewise []int
	for i := 1; i < n; i++ {
		bytewise = append(bytewise, i)
	}
	return append(all, bytewise)
}

// piecesAt cuts s at the given offsets.
func piecesAt(s string, cuts []int) [][]byte {
	var pieces [][]byte
	prev := 0
	for _, c := range cuts {
		pieces = append(pieces, []byte(s[prev:c]))
		prev = c
	}
	return append(pieces, []byte(s[prev:]))
}

// TestBodyEncoderBoundaries runs each mode (DATA's dot-stuffing,
// normalisation, the line limit, the size limit) over bodies cut at
// every one or two points and into single octets: a CRLF split between
// pieces, a "." starting a piece, a line that reaches the limit in the
// second piece. Both encode and the copy-free path (verbatim,
// encodeLine) must give the expected wire form, or fail with the
// expected problem having appended nothing but good output (a prefix of
// good, which is what octet-by-octet pieces give); both must agree with
// the old encoder piece by piece.
func TestBodyEncoderBoundaries(t *testing.T) {
	data, bdat, norm, dataNorm := bodyCase{dotStuff: true}, bodyCase{}, bodyCase{normalize: true}, bodyCase{dotStuff: true, normalize: true}
	line4, line4Data, line4Norm := bodyCase{maxLine: 4}, bodyCase{dotStuff: true, maxLine: 4}, bodyCase{normalize: true, maxLine: 4}
	size10, size10Data, size10Norm := bodyCase{maxSize: 10}, bodyCase{dotStuff: true, maxSize: 10}, bodyCase{normalize: true, maxSize: 10}
	tests := []struct {
		name    string
		bc      bodyCase
		in      string
		want    string // the wire form, when problem is ""
		problem string // a part of the problem
		good    string // the output before the problem, octet by octet (not for the size)
	}{
		{name: "dot line", bc: data, in: ".\r\n", want: "..\r\n.\r\n"},
		{name: "dots after CRLF", bc: data, in: "a\r\n.b\r\n.\r\n", want: "a\r\n..b\r\n..\r\n.\r\n"},
		{name: "dot at the end", bc: data, in: "a\r\n.", want: "a\r\n..\r\n.\r\n"},
		{name: "dots", bc: data, in: "..\r\n...", want: "...\r\n....\r\n.\r\n"},
		{name: "inner dots", bc: data, in: "a.\r\nb.c\r\n", want: "a.\r\nb.c\r\n.\r\n"},
		{name: "dot among equal lines", bc: data, in: "abcd\r\nabcd\r\n.bcd\r\nabcd\r\n", want: "abcd\r\nabcd\r\n..bcd\r\nabcd\r\n.\r\n"},
		{name: "empty line then dot", bc: data, in: "\r\n\r\n.\r\n", want: "\r\n\r\n..\r\n.\r\n"},
		{name: "no stuffing for BDAT", bc: bdat, in: ".a\r\n.\r\n", want: ".a\r\n.\r\n"},
		{name: "equal lines", bc: bdat, in: "abcd\r\nabcd\r\nabcd\r\nab", want: "abcd\r\nabcd\r\nabcd\r\nab\r\n"},

		{name: "normalise LF", bc: norm, in: "a\nb", want: "a\r\nb\r\n"},
		{name: "normalise CR", bc: norm, in: "a\rb", want: "a\r\nb\r\n"},
		{name: "normalise CR CRLF", bc: norm, in: "a\r\r\nb", want: "a\r\n\r\nb\r\n"},
		{name: "normalise LF CR", bc: norm, in: "a\n\rb", want: "a\r\n\r\nb\r\n"},
		{name: "normalise final CR", bc: norm, in: "a\r", want: "a\r\n"},
		{name: "normalise dots", bc: dataNorm, in: "\n.\r.\r\n", want: "\r\n..\r\n..\r\n.\r\n"},
		{name: "normalise LF among equal lines", bc: norm, in: "abcd\r\nab\nd\r\nabcd\r\n", want: "abcd\r\nab\r\nd\r\nabcd\r\n"},
		{name: "normalise CR among equal lines", bc: norm, in: "abcd\r\nab\rd\r\nabcd\r\n", want: "abcd\r\nab\r\nd\r\nabcd\r\n"},

		{name: "bare LF among equal lines", bc: bdat, in: "abcd\r\nab\nd\r\n", problem: "bare LF", good: "abcd\r\nab"},
		{name: "bare CR among equal lines", bc: bdat, in: "abcd\r\nab\rd\r\n", problem: "bare CR", good: "abcd\r\nab"},
		{name: "two lines where one was guessed", bc: bdat, in: "abcd\r\nab\r\n\n\r\n", problem: "bare LF", good: "abcd\r\nab\r\n"},
		{name: "final bare CR", bc: data, in: "a\r", problem: "ends with a bare CR", good: "a"},
		{name: "CR CRLF", bc: data, in: "a\r\r\n", problem: "bare CR", good: "a"},
		{name: "LF first", bc: data, in: "\n", problem: "bare LF", good: ""},
		{name: "LF dot LF", bc: data, in: "a\n.\nb", problem: "bare LF", good: "a"},

		{name: "lines at the limit", bc: line4, in: "abcd\r\nabcd\r\n", want: "abcd\r\nabcd\r\n"},
		{name: "line over the limit", bc: line4, in: "abcd\r\nabcde\r\n", problem: "longer than 4", good: "abcd\r\nabcd"},
		{name: "last line at the limit", bc: line4, in: "abcd", want: "abcd\r\n"},
		{name: "last line over the limit", bc: line4, in: "abcde", problem: "longer than 4", good: "abcd"},
		{name: "normalised lines at the limit", bc: line4Norm, in: "abcd\rabcd\nabcd", want: "abcd\r\nabcd\r\nabcd\r\n"},
		{name: "stuffed dot not counted", bc: line4Data, in: ".abc\r\n", want: "..abc\r\n.\r\n"},
		{name: "dot line over the limit", bc: line4Data, in: "ab\r\n.abcd\r\n", problem: "longer than 4", good: "ab\r\n..abc"},

		{name: "exactly the size", bc: size10, in: "12345678\r\n", want: "12345678\r\n"},
		{name: "the final CRLF reaches the size", bc: size10, in: "12345678", want: "12345678\r\n"},
		{name: "the final CRLF passes the size", bc: size10, in: "123456789", problem: "larger than the limit of 10"},
		{name: "over the size", bc: size10, in: "12345678\r\n1", problem: "larger than the limit of 10"},
		{name: "stuffing not counted", bc: size10Data, in: ".2345678\r\n", want: "..2345678\r\n.\r\n"},
		{name: "normalised to the size", bc: size10Norm, in: "12345678\n", want: "12345678\r\n"},
		{name: "normalised past the size", bc: size10Norm, in: "123456789\n", problem: "larger than the limit of 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bc := tt.bc
			sizeProblem := strings.Contains(tt.problem, "larger than")
			check := func(how string, pieces [][]byte, out []byte, ok bool, e *bodyEncoder) {
				t.Helper()
				if tt.problem == "" {
					if !ok || string(out) != tt.want {
						t.Fatalf("%s %q: ok=%v %q, output %q; want %q", how, pieces, ok, e.problem, out, tt.want)
					}
					return
				}
				if ok || !strings.Contains(e.problem, tt.problem) || e.sizeErr != sizeProblem {
					t.Fatalf("%s %q: ok=%v %q (size %v), want the problem %q", how, pieces, ok, e.problem, e.sizeErr, tt.problem)
				}
				if !sizeProblem && !strings.HasPrefix(tt.good, string(out)) {
					t.Fatalf("%s %q: output %q before the problem, not a prefix of %q", how, pieces, out, tt.good)
				}
			}
			for _, cuts := range cutsOf(len(tt.in)) {
				pieces := piecesAt(tt.in, cuts)
				e := newBodyEncoder(bc.dotStuff, bc.normalize, bc.maxLine, bc.maxSize)
				var out []byte
				ok := true
				for _, p := range pieces {
					if out, ok = e.encode(out, p); !ok {
						break
					}
				}
				if ok {
					out, ok = e.finish(out)
				}
				check("encode", pieces, out, ok, &e)
				if !ok && !sizeProblem && len(pieces) == len(tt.in) && string(out) != tt.good {
					t.Fatalf("octet by octet: output %q before the problem, want %q", out, tt.good)
				}
				out, ok, e = directRun(t, bc, pieces)
				check("verbatim+encodeLine", pieces, out, ok, &e)
				diffEncode(t, bc, pieces)
			}
		})
	}
}

// TestVerbatimTakesGoodBodies: on a body that needs no change, verbatim
// accepts every piece whole, so a caller copies nothing; with DATA it
// stops exactly at each line that starts with ".".
func TestVerbatimTakesGoodBodies(t *testing.T) {
	for _, shape := range []string{"base64", "text"} {
		body := benchBody(200<<10, shape)
		e := newBodyEncoder(false, false, 0, 0)
		for p := body; len(p) > 0; {
			piece := p[:min(len(p), 16<<10)]
			p = p[len(piece):]
			if k := e.verbatim(piece); k != len(piece) {
				t.Fatalf("%s: verbatim took %d of a good piece of %d", shape, k, len(piece))
			}
		}
		if e.n != int64(len(body)) {
			t.Fatalf("%s: verbatim counted %d octets of %d", shape, e.n, len(body))
		}

		e = newBodyEncoder(true, false, 0, 0)
		var stops []int
		for off := 0; off < len(body); {
			off += e.verbatim(body[off:])
			if off == len(body) {
				break
			}
			stops = append(stops, off)
			_, used, ok := e.encodeLine(nil, body[off:])
			if !ok {
				t.Fatal(e.problem)
			}
			off += used
		}
		var dots []int
		for i := range body {
			if body[i] == '.' && (i == 0 || body[i-1] == '\n') {
				dots = append(dots, i)
			}
		}
		if len(dots) == 0 || !slices.Equal(stops, dots) {
			t.Fatalf("%s: DATA verbatim stopped at %v, the lines starting with a dot are at %v", shape, stops, dots)
		}
	}
}

package smtp

import (
	"bytes"
	"strconv"
	"testing"
)

// benchBody is a body of about size octets in the shape of a base64
// attachment: lines of 76 octets and CRLF. Every 50th line starts with a
// ".", which DATA doubles. With lf, lines end in a bare LF instead, which
// only the normalising encoder accepts.
func benchBody(size int, lf bool) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	b := make([]byte, 0, size+80)
	for line := 0; len(b) < size; line++ {
		for i := range 76 {
			c := alphabet[(line*7+i)%len(alphabet)]
			if i == 0 && line%50 == 49 {
				c = '.'
			}
			b = append(b, c)
		}
		if !lf {
			b = append(b, '\r')
		}
		b = append(b, '\n')
	}
	return b
}

// BenchmarkBodyEncoder measures the encoder as the session drives it: the
// body read in pieces of a quarter chunk, encoded into a chunk buffer
// that is emptied once it holds a chunk. "copy" is the floor: the same
// pieces appended with no encoder. Run it with
//
//	go test -run '^$' -bench BodyEncoder -benchmem ./smtp
func BenchmarkBodyEncoder(b *testing.B) {
	const cs = DefaultChunkSize
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		for _, mode := range []string{"copy", "bdat", "data", "normalize-lf"} {
			body := benchBody(size, mode == "normalize-lf")
			b.Run(strconv.Itoa(size>>10)+"KiB/"+mode, func(b *testing.B) {
				dst := make([]byte, 0, 2*cs)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					e := newBodyEncoder(mode == "data", mode == "normalize-lf", 0, 0)
					out := dst[:0]
					for p := body; len(p) > 0; {
						piece := p[:min(len(p), cs/4)]
						p = p[len(piece):]
						if mode == "copy" {
							out = append(out, piece...)
						} else {
							var ok bool
							if out, ok = e.encode(out, piece); !ok {
								b.Fatal(e.problem)
							}
						}
						if len(out) >= cs {
							out = out[:0]
						}
					}
					if mode != "copy" {
						if _, ok := e.finish(out); !ok {
							b.Fatal(e.problem)
						}
					}
				}
			})
		}
	}
}

func TestBenchBody(t *testing.T) {
	body := benchBody(4096, false)
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

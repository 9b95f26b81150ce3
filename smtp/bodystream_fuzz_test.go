package smtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recording is what recordServer saw of one session's transaction.
type recording struct {
	payload []byte // BDAT chunk data in order, or the DATA stream with its final dot
	chunks  []int  // the size of each BDAT chunk
	last    bool   // BDAT ... LAST, or the final dot, arrived
	reset   bool   // RSET arrived after the body started
}

// recordServer is a server on loopback that records each session's
// body (see recording) and sends it on the returned channel when the
// session ends. It offers CHUNKING when chunking is set, always
// PIPELINING, and answers everything else with 250.
func recordServer(tb testing.TB, chunking bool) (string, <-chan recording) {
	tb.Helper()
	out := make(chan recording, 16)
	return serveLoopback(tb, func(conn net.Conn) { out <- recordSession(conn, chunking) }), out
}

func recordSession(conn net.Conn, chunking bool) (rec recording) {
	r := bufio.NewReader(conn)
	say := func(s string) bool { _, err := io.WriteString(conn, s); return err == nil }
	say("220 rec ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return rec
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			return rec
		}
		switch strings.ToUpper(f[0]) {
		case "EHLO":
			ext := "250-rec\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
			if chunking {
				ext = "250-rec\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
			}
			say(ext)
		case "BDAT":
			n, _ := strconv.Atoi(f[1])
			p := make([]byte, n)
			if _, err := io.ReadFull(r, p); err != nil {
				return rec
			}
			rec.payload = append(rec.payload, p...)
			rec.chunks = append(rec.chunks, n)
			rec.last = len(f) > 2
			say("250 2.0.0 chunk\r\n")
		case "DATA":
			say("354 go on\r\n")
			for {
				l, err := r.ReadString('\n')
				rec.payload = append(rec.payload, l...)
				if err != nil {
					return rec
				}
				if l == ".\r\n" && (len(rec.payload) == 3 || bytes.HasSuffix(rec.payload[:len(rec.payload)-3], []byte("\r\n"))) {
					rec.last = true
					break
				}
			}
			say("250 2.0.0 queued\r\n")
		case "RSET":
			rec.reset = len(rec.payload) > 0 || len(rec.chunks) > 0
			say("250 2.0.0 reset\r\n")
		case "QUIT":
			say("221 2.0.0 bye\r\n")
			return rec
		default:
			say("250 2.0.0 ok\r\n")
		}
	}
}

// pieceReader returns its pieces one Read at a time (Read only).
type pieceReader struct{ pieces [][]byte }

func (p *pieceReader) Read(b []byte) (int, error) {
	for len(p.pieces) > 0 && len(p.pieces[0]) == 0 {
		p.pieces = p.pieces[1:]
	}
	if len(p.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.pieces[0])
	p.pieces[0] = p.pieces[0][n:]
	return n, nil
}

// pieceWriterTo writes its pieces one Write at a time (io.WriterTo).
type pieceWriterTo struct{ pieces [][]byte }

func (p *pieceWriterTo) Read([]byte) (int, error) { panic("Read on a WriterTo body") }

func (p *pieceWriterTo) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, q := range p.pieces {
		k, err := w.Write(q)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// bodyReaders are the roads a body can take to the stream: copy-free
// (io.WriterTo, whole or in pieces, a string), and read into the
// session's buffer (whole reads, cut pieces, one octet at a time).
var bodyReaders = []struct {
	name string
	make func(data, split []byte) io.Reader
}{
	{"*bytes.Reader", func(d, _ []byte) io.Reader { return bytes.NewReader(d) }},
	{"*strings.Reader", func(d, _ []byte) io.Reader { return strings.NewReader(string(d)) }},
	{"io.WriterTo in pieces", func(d, s []byte) io.Reader { return &pieceWriterTo{cutPieces(d, s)} }},
	{"io.Reader in pieces", func(d, s []byte) io.Reader { return &pieceReader{cutPieces(d, s)} }},
	{"io.Reader 1 octet a time", func(d, _ []byte) io.Reader { return &pieceReader{cutPieces(d, []byte{10})} }},
}

// checkBodyStream sends data as a body to a recording server, with the
// encoder settings of bc (dotStuff is the server's lack of CHUNKING)
// and chunk size cs, through reader kind k, and compares what the
// server got with the oracle: the oracle's encoding exactly for a good
// body; for a bad one, an OpBody error, no commit point, and nothing on
// the wire that the oracle would not have written before the problem.
func checkBodyStream(t *testing.T, addr string, got <-chan recording, bc bodyCase, cs, k int, data, split []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialLoopback(t, ctx, addr, Options{ChunkSize: cs,
		NormalizeLineEndings: bc.normalize, MaxLineLength: bc.maxLine, MaxMessageSize: bc.maxSize})
	body := bodyReaders[k].make(data, split)
	_, serr := c.Send(ctx, Envelope{From: "a@example.com", To: []string{"b@example.com"}}, body)
	c.Quit(ctx)
	c.Close()
	rec := <-got

	want, ok, problem := oracleRun(bc, [][]byte{data})
	where := func() string {
		return bodyReaders[k].name + " chunk " + strconv.Itoa(cs) + " " + strconv.Quote(string(data))
	}
	if ok {
		if serr != nil {
			t.Fatalf("%s: %+v: Send: %v (the oracle takes the body)", where(), bc, serr)
		}
		if !rec.last || !bytes.Equal(rec.payload, want) {
			t.Fatalf("%s: %+v: the server got (last=%v)\n%q\nthe oracle's encoding\n%q", where(), bc, rec.last, rec.payload, want)
		}
		for i, n := range rec.chunks[:max(0, len(rec.chunks)-1)] {
			if n == 0 || n > 3*cs+8 && n > directChunkSize {
				t.Fatalf("%s: chunk %d of %d octets: %v", where(), i, n, rec.chunks)
			}
		}
		return
	}
	var e *Error
	switch {
	case !errors.As(serr, &e):
		t.Fatalf("%s: %+v: Send gave %v for a body the oracle refuses (%s)", where(), bc, serr, problem)
	case e.Op == OpMAIL && e.Kind == KindPolicy && bc.maxSize > 0:
		// Refused by its known size before anything was sent.
		if len(rec.payload) > 0 {
			t.Fatalf("%s: refused by size, yet the server got %q", where(), rec.payload)
		}
		return
	case e.Op != OpBody:
		t.Fatalf("%s: %+v: Send gave %v, not an OpBody error (%s)", where(), bc, serr, problem)
	}
	if rec.last {
		t.Fatalf("%s: %+v: a refused body (%s) was committed: %q", where(), bc, problem, rec.payload)
	}
	// What reached the wire is a faithful prefix of the body (of its
	// encoding under lenient rules: no limits, line ends normalised)
	// that breaks no rule itself: the octets before a problem may be
	// written (the start of a line that turns out too long, the text
	// before a bare LF), the octet that breaks the rule never is.
	lenient := bodyCase{dotStuff: bc.dotStuff, normalize: true, maxLine: -1}
	all, _, _ := oracleRun(lenient, [][]byte{data})
	if !bytes.HasPrefix(all, rec.payload) {
		t.Fatalf("%s: %+v: the wire got\n%q\nwhich is not a prefix of the body's encoding\n%q", where(), bc, rec.payload, all)
	}
	if p := ruleBroken(rec.payload, bc); p != "" {
		t.Fatalf("%s: %+v: the wire got %s (the body's problem: %s)\n%q", where(), bc, p, problem, rec.payload)
	}
}

// ruleBroken says which rule of bc the octets on the wire break, or "".
func ruleBroken(wire []byte, bc bodyCase) string {
	if !bc.dotStuff && bc.maxSize > 0 && int64(len(wire)) > bc.maxSize {
		return "more octets than the size limit"
	}
	maxLine := bc.maxLine
	if maxLine == 0 {
		maxLine = maxLineLength
	}
	for len(wire) > 0 {
		line := wire
		end := bytes.Index(wire, []byte("\r\n"))
		if end >= 0 {
			line = wire[:end]
			wire = wire[end+2:]
		} else {
			wire = nil
		}
		if bytes.ContainsAny(line, "\r\n") {
			return "a bare CR or LF"
		}
		n := len(line)
		if bc.dotStuff && bytes.HasPrefix(line, []byte("..")) {
			n-- // the doubled dot is the wire's, not the line's
		}
		if maxLine > 0 && n > maxLine {
			return "a line over the limit"
		}
	}
	return ""
}

// TestBodyStreamChunkBoundaries: bodies whose special octets (a bare
// CR or LF, a "." to double, a long line, the size limit) fall at, just
// before and just after a chunk boundary, through every road to the
// stream (a *bytes.Reader, a *strings.Reader, an io.WriterTo in pieces,
// an io.Reader in pieces and one octet at a time): the server gets
// exactly the oracle's encoding, or, for a body the oracle refuses, no
// commit point and nothing past the problem.
func TestBodyStreamChunkBoundaries(t *testing.T) {
	const cs = 512
	line := strings.Repeat("x", 62) + "\r\n" // 64 octets
	clean := strings.Repeat(line, 2*cs/64)   // two chunks of whole lines
	var bodies []string
	for _, at := range []int{cs - 2, cs - 1, cs, cs + 1, 2*cs - 1, 2 * cs} {
		for _, ins := range []string{"\n", "\r", ".", "\r\n.", ".\r\n", strings.Repeat("y", 1000)} {
			bodies = append(bodies, clean[:at]+ins+clean[at:])
		}
	}
	bodies = append(bodies, clean, clean[:cs], clean[:cs-1], clean+"tail without CRLF", "", "\r\n", ".")
	for _, chunking := range []bool{true, false} {
		addr, got := recordServer(t, chunking)
		// goodLines looks at the body a block at a time: with blocks of
		// 100 octets lines are cut at block ends too.
		for _, block := range []int{scanBlock, 100} {
			restore := withScanBlock(block)
			for _, normalize := range []bool{false, true} {
				for _, maxSize := range []int64{0, cs, cs + 40} {
					bc := bodyCase{dotStuff: !chunking, normalize: normalize, maxSize: maxSize}
					for k := range bodyReaders {
						for _, b := range bodies {
							checkBodyStream(t, addr, got, bc, cs, k, []byte(b), []byte{3, 0, 7, 1})
						}
					}
				}
			}
			restore()
		}
	}
}

// FuzzBodyStream: the body path end to end (encoder, stream, chunking,
// every road a body takes) against the oracle, through a server that
// records what it gets.
func FuzzBodyStream(f *testing.F) {
	for _, s := range []string{
		"", "a\r\n", ".\r\n..\r\n", "a\r\n.\r\nb", "a\n.\nb", "a\r.\rb\r", "\r\r\n\n\r", "x\r",
		"Subject: x\r\n\r\n.body\r\nline two is longer than ten\r\n",
	} {
		f.Add([]byte(s), []byte{}, uint8(0), uint8(0), uint8(0), uint8(0))
		f.Add([]byte(s), []byte{0, 1, 2}, uint8(1), uint8(10), uint8(0), uint8(3))
		f.Add([]byte(s), []byte{3, 0}, uint8(2), uint8(0), uint8(12), uint8(4))
	}
	addrs, gots := [2]string{}, [2]<-chan recording{}
	addrs[0], gots[0] = recordServer(f, false)
	addrs[1], gots[1] = recordServer(f, true)
	f.Fuzz(func(t *testing.T, data, split []byte, mode, maxLine, maxSize, kind uint8) {
		if len(data) > 1<<14 || len(split) > 1<<10 {
			return
		}
		chunking := mode&1 != 0
		bc := bodyCase{dotStuff: !chunking, normalize: mode&2 != 0}
		if maxSize != 0 {
			bc.maxSize = int64(maxSize) * 8
		}
		switch {
		case maxLine == 0:
		case maxLine == 255:
			bc.maxLine = -1
		default:
			bc.maxLine = int(maxLine%40) + 1
		}
		if mode&4 != 0 {
			data = linesBody(data)
		}
		cs := 512 + int(mode>>3)*97
		k := int(kind) % len(bodyReaders)
		if b := int(kind) / len(bodyReaders); b != 0 {
			defer withScanBlock(b * 7)() // goodLines cuts lines at its block's end
		}
		i := 0
		if chunking {
			i = 1
		}
		checkBodyStream(t, addrs[i], gots[i], bc, cs, k, data, split)
	})
}

// TestClientSendingSmallBodiesFromMemoryMakesNoReadBuffer: a client
// that sends 1 KiB bodies held as *bytes.Reader to a sink that accepts
// every chunk never makes a read buffer of its ChunkSize, nor an encode
// buffer three times it: what an idle pool would hold for each session
// (the "live heap held" of docs/benchmarks.md). A plain io.Reader body
// then makes the read buffer once.
func TestClientSendingSmallBodiesFromMemoryMakesNoReadBuffer(t *testing.T) {
	const cs = 300 << 10 // a read size no other test uses: a new pool
	ctx := context.Background()
	c := dialLoopback(t, ctx, chunkSink(t, true), Options{ChunkSize: cs})
	defer c.Quit(ctx)
	env := Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	msg := bodyOf(1 << 10)
	allocated := func(send func() io.Reader) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 20 {
			if _, err := c.Send(ctx, env, send()); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	if got := allocated(func() io.Reader { return bytes.NewReader(msg) }); got >= cs {
		t.Errorf("20 bodies of 1 KiB from memory allocated %d octets: a read or encode buffer of ChunkSize (%d) was made", got, cs)
	}
	if got := allocated(func() io.Reader { return onlyReader{bytes.NewReader(msg)} }); got < cs {
		t.Errorf("20 bodies of 1 KiB read through io.Reader allocated %d octets: no read buffer of ChunkSize (%d)?", got, cs)
	}
}

// keeperBody writes its message through WriteTo and keeps the writer,
// against the io.WriterTo contract.
type keeperBody struct {
	msg  string
	kept io.Writer
}

func (k *keeperBody) Read([]byte) (int, error) { panic("keeperBody is read through WriteTo") }

func (k *keeperBody) WriteTo(w io.Writer) (int64, error) {
	k.kept = w
	n, err := io.WriteString(w, k.msg)
	return int64(n), err
}

// midwayBody writes first, then calls between, then writes rest.
type midwayBody struct {
	first, rest string
	between     func()
}

func (b *midwayBody) Read([]byte) (int, error) { panic("midwayBody is read through WriteTo") }

func (b *midwayBody) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, b.first)
	if err != nil {
		return int64(n), err
	}
	b.between()
	m, err := io.WriteString(w, b.rest)
	return int64(n + m), err
}

// TestBodyThatKeepsItsWriterWritesNothingIntoTheClientsNextMessage: a
// caller's body keeps the writer its WriteTo was given and writes to it
// while the client's next message streams; the server records both
// messages exactly as written (one session's bodies), and the late writes (Write, WriteString,
// ReadFrom) fail.
func TestBodyThatKeepsItsWriterWritesNothingIntoTheClientsNextMessage(t *testing.T) {
	for _, chunking := range []bool{true, false} {
		addr, got := recordServer(t, chunking)
		ctx := context.Background()
		c := dialLoopback(t, ctx, addr, Options{})
		env := Envelope{From: "a@example.com", To: []string{"b@example.com"}}
		keeper := &keeperBody{msg: "Subject: one\r\n\r\nfirst\r\n"}
		if _, err := c.Send(ctx, env, keeper); err != nil {
			t.Fatal(err)
		}
		next := &midwayBody{first: "Subject: two\r\n\r\n", rest: "second\r\n", between: func() {
			const injected = "X-Injected: yes\r\n"
			if n, err := keeper.kept.Write([]byte(injected)); err == nil || n != 0 {
				t.Errorf("chunking %v: Write through a kept writer: %d, %v", chunking, n, err)
			}
			if n, err := io.WriteString(keeper.kept, injected); err == nil || n != 0 {
				t.Errorf("chunking %v: WriteString through a kept writer: %d, %v", chunking, n, err)
			}
			if n, err := keeper.kept.(io.ReaderFrom).ReadFrom(strings.NewReader(injected)); err == nil || n != 0 {
				t.Errorf("chunking %v: ReadFrom through a kept writer: %d, %v", chunking, n, err)
			}
		}}
		if _, err := c.Send(ctx, env, next); err != nil {
			t.Fatal(err)
		}
		c.Quit(ctx)
		want := keeper.msg + next.first + next.rest
		if !chunking {
			want = keeper.msg + ".\r\n" + next.first + next.rest + ".\r\n"
		}
		if rec := <-got; string(rec.payload) != want {
			t.Errorf("chunking %v: the server recorded %q, want %q", chunking, rec.payload, want)
		}
	}
}

package smtp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// chunkSink is the cheapest server a body can be sent to: on loopback
// TCP, it answers EHLO with CHUNKING and PIPELINING, every other
// command with 250, and discards BDAT chunks and DATA bodies as fast
// as it can read them. Against it a benchmark measures the client's
// cost per octet, not a server's.
func chunkSink(tb testing.TB, chunking bool) string {
	return serveLoopback(tb, func(conn net.Conn) { serveChunkSink(conn, chunking) })
}

// serveLoopback serves each connection to a new loopback listener with
// serve, until the test ends; it returns the listener's address.
func serveLoopback(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				serve(conn)
			}()
		}
	}()
	return l.Addr().String()
}

// dialLoopback connects a client to the loopback server at addr, in
// plaintext, with opts (LocalName and InsecureAllowPlaintext set here).
func dialLoopback(tb testing.TB, ctx context.Context, addr string, opts Options) *Client {
	tb.Helper()
	tr, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	opts.LocalName, opts.InsecureAllowPlaintext = "client.example", true
	c, err := Connect(ctx, tr, &opts)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func serveChunkSink(conn net.Conn, chunking bool) {
	r := bufio.NewReaderSize(conn, 256<<10)
	w := bufio.NewWriter(conn)
	reply := func(s string) bool {
		w.WriteString(s)
		if r.Buffered() > 0 {
			return true // more commands are in: answer them together
		}
		return w.Flush() == nil
	}
	reply("220 sink\r\n")
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(string(bytes.TrimSpace(line)))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			if chunking {
				reply("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n")
			} else {
				reply("250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
			}
		case strings.HasPrefix(cmd, "BDAT "):
			f := strings.Fields(cmd)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			if _, err := r.Discard(int(n)); err != nil {
				return
			}
			reply("250 2.0.0 ok\r\n")
		case cmd == "DATA":
			reply("354 go on\r\n")
			for {
				l, err := r.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					return
				}
				if string(l) == ".\r\n" {
					break
				}
			}
			reply("250 2.0.0 ok\r\n")
		case cmd == "QUIT":
			reply("221 bye\r\n")
			w.Flush()
			return
		default:
			reply("250 ok\r\n")
		}
	}
}

// bodyOf makes a message of about size octets: headers, then base64-like
// lines of 76 characters, as an attachment is.
func bodyOf(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\n\r\n")
	line := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0", 1)[:76] + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// onlyReader hides every method of r but Read.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// BenchmarkBodySize measures the client's cost per octet of a big body
// on one connection to chunkSink, with 4 transactions written ahead:
// over BDAT and over DATA, for a body held as a *bytes.Reader (which
// the client may write from without copying) and as a plain io.Reader,
// against the wire limit: the same octets written by conn.Write.
//
//	go test -run='^$' -bench=BodySize -benchtime=2s ./smtp
func BenchmarkBodySize(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 10 << 20} {
		msg := bodyOf(size)
		name := fmt.Sprintf("%dKiB", size>>10)
		b.Run(name+"/wire", func(b *testing.B) {
			conn, err := net.Dial("tcp", chunkSink(b, true))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			br.ReadString('\n')
			hdr := []byte("BDAT " + strconv.Itoa(len(msg)) + " LAST\r\n")
			b.SetBytes(int64(len(msg)))
			cpu0 := processCPU()
			b.ResetTimer()
			for range b.N {
				conn.Write(hdr)
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := br.ReadString('\n'); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCPUPerMB(b, cpu0, len(msg))
		})
		for _, chunking := range []bool{true, false} {
			for _, kind := range []string{"bytes.Reader", "io.Reader"} {
				verb := "BDAT"
				if !chunking {
					verb = "DATA"
				}
				b.Run(name+"/"+verb+"/"+kind, func(b *testing.B) {
					ctx := context.Background()
					c := dialLoopback(b, ctx, chunkSink(b, chunking), Options{ChunkSize: benchChunk})
					defer c.Quit(ctx)
					env := Envelope{From: "a@example.com", To: []string{"b@example.com"}}
					const window = 4
					var txs []*Tx
					b.SetBytes(int64(len(msg)))
					b.ReportAllocs()
					cpu0 := processCPU()
					b.ResetTimer()
					for i := range b.N {
						var body io.Reader = bytes.NewReader(msg)
						if kind == "io.Reader" {
							body = onlyReader{body}
						}
						tx, err := c.WriteTx(ctx, env, body)
						if err != nil {
							b.Fatal(err)
						}
						txs = append(txs, tx)
						if len(txs) == window || i == b.N-1 {
							for _, tx := range txs {
								if _, err := c.ReadTx(ctx, tx); err != nil {
									b.Fatal(err)
								}
							}
							txs = txs[:0]
						}
					}
					b.StopTimer()
					reportCPUPerMB(b, cpu0, len(msg))
				})
			}
		}
	}
}

var benchChunk = func() int { n, _ := strconv.Atoi(os.Getenv("SMTPKIT_BENCH_CHUNK")); return n }()

// reportCPUPerMB reports the CPU time the whole process (client and
// sink) spent per MB of body since cpu0: steadier than MB/s on a
// shared machine, and what tells chunk sizes apart.
func reportCPUPerMB(b *testing.B, cpu0 time.Duration, size int) {
	if cpu0 == 0 {
		return
	}
	mb := float64(b.N) * float64(size) / 1e6
	b.ReportMetric(float64(processCPU()-cpu0)/1e3/mb, "cpu-µs/MB")
}

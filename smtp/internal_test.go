package smtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Unit tests of the unexported parsers and encoders. The transcript tests
// (transcript_test.go) drive the same code through a real socket.

func TestReadReplyInternal(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	manyLines := func(n int) string {
		var b strings.Builder
		for i := 0; i < n-1; i++ {
			b.WriteString("250-line\r\n")
		}
		b.WriteString("250 end\r\n")
		return b.String()
	}
	tests := []struct {
		name     string
		in       string
		enhanced bool
		code     int
		enh      string
		lines    []string
		kind     Kind  // 0: no *Error expected
		err      error // a transport-level error expected instead
	}{
		{name: "single", in: "250 ok\r\n", code: 250, lines: []string{"ok"}},
		{name: "bare code", in: "250\r\n", code: 250, lines: []string{""}},
		{name: "code and space", in: "250 \r\n", code: 250, lines: []string{""}},
		{name: "LF only", in: "250 ok\n", code: 250, lines: []string{"ok"}},
		{name: "multi", in: "250-a\r\n250-b\r\n250 c\r\n", code: 250, lines: []string{"a", "b", "c"}},
		{name: "enhanced", in: "550 5.1.1 no such user\r\n", enhanced: true, code: 550, enh: "5.1.1", lines: []string{"no such user"}},
		{name: "enhanced alone", in: "250 2.0.0\r\n", enhanced: true, code: 250, enh: "2.0.0", lines: []string{""}},
		{name: "enhanced off", in: "550 5.1.1 no such user\r\n", code: 550, lines: []string{"5.1.1 no such user"}},
		{name: "enhanced class mismatch", in: "550 4.1.1 odd\r\n", enhanced: true, code: 550, lines: []string{"4.1.1 odd"}},
		{name: "enhanced not a code", in: "250 2.0 x\r\n", enhanced: true, code: 250, lines: []string{"2.0 x"}},
		{name: "enhanced multi", in: "550-5.7.1 first\r\n550 5.7.1 second\r\n", enhanced: true, code: 550, enh: "5.7.1", lines: []string{"first", "second"}},
		{name: "line of 998", in: "250 " + long(994) + "\r\n", code: 250, lines: []string{long(994)}},
		{name: "line of 999", in: "250 " + long(995) + "\r\n", kind: KindProtocol},
		{name: "line of 5000", in: "250 " + long(5000) + "\r\n", kind: KindProtocol},
		{name: "128 lines", in: manyLines(128), code: 250},
		{name: "129 lines", in: manyLines(129), kind: KindProtocol},
		{name: "mixed codes", in: "250-a\r\n251 b\r\n", kind: KindProtocol},
		{name: "non-digit", in: "25x ok\r\n", kind: KindProtocol},
		{name: "bad separator", in: "250_ok\r\n", kind: KindProtocol},
		{name: "short", in: "25\r\n", kind: KindProtocol},
		{name: "code 199", in: "199 x\r\n", kind: KindProtocol},
		{name: "code 600", in: "600 x\r\n", kind: KindProtocol},
		{name: "empty stream", in: "", err: io.EOF},
		{name: "EOF mid-line", in: "250 o", err: io.ErrUnexpectedEOF},
		{name: "EOF mid-reply", in: "250-a\r\n", err: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := readReply(bufio.NewReaderSize(strings.NewReader(tt.in), 4096), OpMAIL, tt.enhanced)
			switch {
			case tt.kind != 0:
				var se *Error
				require.ErrorAs(t, err, &se)
				assert.Equal(t, tt.kind, se.Kind)
				assert.Equal(t, OpMAIL, se.Op)
			case tt.err != nil:
				require.ErrorIs(t, err, tt.err)
			default:
				require.NoError(t, err)
				assert.Equal(t, tt.code, rep.Code)
				assert.Equal(t, tt.enh, rep.Enhanced)
				if tt.lines != nil {
					assert.Equal(t, tt.lines, rep.Lines)
				}
			}
		})
	}
}

// A reply line far larger than the reader's buffer is refused after at
// most one buffer's worth: memory stays bounded.
func TestReadReplyHugeLineBounded(t *testing.T) {
	r := &countingReader{r: io.MultiReader(strings.NewReader("250 "), infiniteX{})}
	_, err := readReply(bufio.NewReaderSize(r, 4096), OpDATA, false)
	var se *Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, KindProtocol, se.Kind)
	assert.LessOrEqual(t, r.n, int64(8192))
}

type infiniteX struct{}

func (infiniteX) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestReplyString(t *testing.T) {
	assert.Equal(t, "250 2.0.0 a b", Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"a", "b"}}.String())
	assert.Equal(t, "221", Reply{Code: 221}.String())
	assert.Equal(t, "??? x", Reply{Code: 1000, Lines: []string{"x"}}.String())
}

func TestValidEnhanced(t *testing.T) {
	for s, want := range map[string]bool{
		"2.0.0": true, "5.1.10": true, "4.999.999": true, "5.7.1": true,
		"3.0.0": false, "2.0": false, "2..0": false, "2.0.": false, "2.1000.0": false,
		"2.0.0.0": false, "x.0.0": false, "2-0-0": false, "": false, "2.a.0": false,
	} {
		assert.Equal(t, want, validEnhanced(s), s)
	}
}

func TestParseEHLO(t *testing.T) {
	t.Run("all", func(t *testing.T) {
		c := parseEHLO([]string{
			"mx.example greets client.example",
			"PIPELINING",
			"chunking",
			"Size 35882577",
			"8BITMIME",
			"smtputf8",
			"ENHANCEDSTATUSCODES",
			"StartTLS",
			"DSN",
			"AUTH PLAIN login",
			"AUTH=LOGIN CRAM-MD5",
			"X-VENDOR a b ",
			"",
		})
		assert.True(t, c.Pipelining)
		assert.True(t, c.Chunking)
		assert.True(t, c.Size)
		assert.Equal(t, int64(35882577), c.MaxSize)
		assert.True(t, c.EightBitMIME)
		assert.True(t, c.SMTPUTF8)
		assert.True(t, c.EnhancedStatusCodes)
		assert.True(t, c.StartTLS)
		assert.True(t, c.DSN)
		assert.Equal(t, []string{"PLAIN", "LOGIN", "CRAM-MD5"}, c.Auth)
		assert.True(t, c.HasAuth("plain"))
		assert.True(t, c.HasAuth("cram-md5"))
		assert.False(t, c.HasAuth("XOAUTH2"))
		assert.True(t, c.Has("x-vendor"))
		assert.Equal(t, "a b", c.Extensions["X-VENDOR"])
		assert.False(t, c.Has("BINARYMIME"))
	})
	t.Run("greeting line names no extension", func(t *testing.T) {
		c := parseEHLO([]string{"PIPELINING"})
		assert.False(t, c.Pipelining)
		assert.Empty(t, c.Extensions)
	})
	t.Run("old AUTH= form alone", func(t *testing.T) {
		c := parseEHLO([]string{"mx", "auth=plain"})
		assert.Equal(t, []string{"PLAIN"}, c.Auth)
	})
	t.Run("SIZE without limit", func(t *testing.T) {
		c := parseEHLO([]string{"mx", "SIZE"})
		assert.True(t, c.Size)
		assert.Zero(t, c.MaxSize)
		c = parseEHLO([]string{"mx", "SIZE 0"})
		assert.True(t, c.Size)
		assert.Zero(t, c.MaxSize)
		c = parseEHLO([]string{"mx", "SIZE -5"})
		assert.Zero(t, c.MaxSize)
		c = parseEHLO([]string{"mx", "SIZE lots"})
		assert.Zero(t, c.MaxSize)
	})
	t.Run("nothing", func(t *testing.T) {
		c := parseEHLO([]string{"mx"})
		assert.Equal(t, Capabilities{Extensions: map[string]string{}}, c)
	})
}

func TestQueueID(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"postfix", "2.0.0 Ok: queued as 4Xk9Qz1234", "4Xk9Qz1234"},
		{"postfix without enhanced", "Ok: queued as 4Xk9Qz1234", "4Xk9Qz1234"},
		{"go-smtp", "OK: queued as 17", "17"},
		{"exim", "OK id=1abcDE-000123-Fg", "1abcDE-000123-Fg"},
		{"sendmail", "2.0.0 x8GFvAb1234567 Message accepted for delivery", "x8GFvAb1234567"},
		{"sendmail without enhanced", "x8GFvAb1234567 Message accepted for delivery", "x8GFvAb1234567"},
		{"ms365", "2.6.0 <CAF1234@mail.example.com> [InternalId=123456789, Hostname=AM0PR.prod.outlook.com] 1234 bytes in 0.1, 1.2 KB/sec Queued mail for delivery", "<CAF1234@mail.example.com>"},
		{"ms365 short", "2.6.0 <m@x> [InternalId=42] Queued mail for delivery", "<m@x>"},
		{"gmail", "2.0.0 OK  1589461543 y11sm10453547pfo.104 - gsmtp", "y11sm10453547pfo.104"},
		{"gmail without enhanced", "OK  1589461543 y11sm10453547pfo.104 - gsmtp", "y11sm10453547pfo.104"},
		{"gmail squashed", "2.0.0 OK  1700000000 x12-20020a17090a1234- gsmtp", "x12-20020a17090a1234-"},
		{"ses", "Ok 0100018b1c2d3e4f-12345678-abcd-ef01-2345-6789abcdef01-000000", "0100018b1c2d3e4f-12345678-abcd-ef01-2345-6789abcdef01-000000"},
		{"uppercase keywords", "2.0.0 OK: QUEUED AS ABC", "ABC"},
		{"non-ASCII before the keyword", "\u023a\u023a queued as X1", "X1"},
		{"dotted I before the keyword", "İİİİ queued as X2", "X2"},
		{"nothing", "2.0.0 Ok", ""},
		{"empty", "", ""},
		{"plain words", "Message accepted for delivery", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, parseQueueID(tt.text))
			assert.Zero(t, testing.AllocsPerRun(10, func() { parseQueueID(tt.text) }))
		})
	}
}

// A final reply with text that grows when lower-cased (U+023A) once made
// QueueID slice past the end of the text: a server could crash the
// client.
func TestQueueIDNoPanic(t *testing.T) {
	for _, text := range []string{
		"\u023aqueued as ",
		strings.Repeat("\u023a", 20) + "x id=",
		"İİİİİİİİİİİqueued as ",
		strings.Repeat("\u023a", 30) + " Queued mail for delivery",
		"queued as",
		"id=",
		" gsmtp",
		"ok gsmtp",
	} {
		assert.NotPanics(t, func() { parseQueueID(text) }, "%q", text)
	}
}

func TestPendingQueueKeepsItsArray(t *testing.T) {
	c := &Client{}
	c.setStateLocked(StateReady)
	tx := &Tx{}
	push := func(tx *Tx, k replyKind, idx int) { c.pushLocked(tx, k, idx, nil, "", 0) }
	// A window that grows the queue, then drains it, many times: the
	// queue reuses its array instead of wearing its capacity away.
	for range 3 {
		for range 10 {
			push(tx, kMail, 0)
		}
		for len(c.pending) > 0 {
			c.pending[0] = pending{}
			c.pending = c.pending[1:]
		}
	}
	allocs := testing.AllocsPerRun(100, func() {
		for range 3 {
			push(tx, kMail, 0)
			push(tx, kRcpt, 0)
			push(tx, kFinal, 0)
			for range 3 {
				c.pending = c.pending[1:]
			}
		}
	})
	assert.Zero(t, allocs)
	// A queue that grows while not empty keeps its order.
	c = &Client{}
	c.setStateLocked(StateReady)
	for i := range 5 {
		push(tx, kRcpt, i)
	}
	c.pending = c.pending[2:]
	for i := 5; i < 40; i++ {
		push(tx, kRcpt, i)
	}
	for i, p := range c.pending {
		assert.Equal(t, i+2, p.idx)
	}
}

func TestXtext(t *testing.T) {
	assert.Equal(t, "a+2Bb+3Dc+20d", xtext("a+b=c d"))
	assert.Equal(t, "user@example.com", xtext("user@example.com"))
	assert.Equal(t, "+C3+BC+0D+7F", xtext("ü\r\x7f"))
	assert.Equal(t, "", xtext(""))
	orcpt := func(s string) string { return string(appendORCPT(nil, s)) }
	assert.Equal(t, "rfc822;b+2Btag@example.com", orcpt("b+tag@example.com"))
	assert.Equal(t, `utf-8;用户\x{2B}t\x{3D}g\x{5C}@例子.广告`, orcpt(`用户+t=g\@例子.广告`))
	assert.Equal(t, `utf-8;ü\x{20}\x{7F}`, orcpt("ü \x7f"))
}

func TestValidateAddress(t *testing.T) {
	local64 := strings.Repeat("l", 64)
	tests := []struct {
		addr    string
		utf8    bool
		problem bool
	}{
		{addr: "a@example.com"},
		{addr: "postmaster"},
		{addr: "PostMaster"},
		{addr: "\"quoted\"@example.com"},
		{addr: "δοκιμή@παράδειγμα.δοκιμή", utf8: true},
		{addr: local64 + "@example.com"},
		{addr: local64 + "@" + strings.Repeat("d", 254-65)},
		{addr: "", problem: true},
		{addr: "nobody", problem: true},
		{addr: "@example.com", problem: true},
		{addr: "a@", problem: true},
		{addr: "a@example.com\r\nRCPT TO:<x@y>", problem: true},
		{addr: "a\r@example.com", problem: true},
		{addr: "a\n@example.com", problem: true},
		{addr: "a\x00@example.com", problem: true},
		{addr: "a<@example.com", problem: true},
		{addr: "a>@example.com", problem: true},
		{addr: "a b@example.com", problem: true},
		{addr: "a\tb@example.com", problem: true},
		{addr: "a\x01@example.com", problem: true},
		{addr: "a\x7f@example.com", problem: true},
		{addr: "a\xff@example.com", problem: true},
		{addr: local64 + "l@example.com", problem: true},
		{addr: local64 + "@" + strings.Repeat("d", 254-64), problem: true},
	}
	for _, tt := range tests {
		u, p := validateAddress(tt.addr)
		if tt.problem {
			assert.NotEmpty(t, p, "%q", tt.addr)
			continue
		}
		assert.Empty(t, p, "%q", tt.addr)
		assert.Equal(t, tt.utf8, u, "%q", tt.addr)
	}
}

func TestValidateHostname(t *testing.T) {
	for _, ok := range []string{"client.example", "[127.0.0.1]", "[IPv6:::1]", "localhost"} {
		assert.Empty(t, validateHostname(ok), ok)
	}
	for _, bad := range []string{"", "a b", "a\r\nMAIL", "a\x00", "a<b", "a>b", "héllo", strings.Repeat("h", 256), "a\tb"} {
		assert.NotEmpty(t, validateHostname(bad), "%q", bad)
	}
}

// encodeAll runs the encoder over the pieces and finishes it.
func encodeAll(e *bodyEncoder, pieces ...[]byte) ([]byte, bool) {
	var out []byte
	for _, p := range pieces {
		var ok bool
		if out, ok = e.encode(out, p); !ok {
			return out, false
		}
	}
	return e.finish(out)
}

func TestBodyEncoder(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		dotStuff  bool
		normalize bool
		want      string // "" with ok false
		problem   string
	}{
		{name: "empty data", in: "", dotStuff: true, want: ".\r\n"},
		{name: "empty bdat", in: "", want: ""},
		{name: "no final CRLF", in: "a", dotStuff: true, want: "a\r\n.\r\n"},
		{name: "final CRLF", in: "a\r\n", dotStuff: true, want: "a\r\n.\r\n"},
		{name: "empty last line kept", in: "a\r\n\r\n", dotStuff: true, want: "a\r\n\r\n.\r\n"},
		{name: "stuffing", in: ".a\r\n..b\r\n.\r\nc.\r\n", dotStuff: true, want: "..a\r\n...b\r\n..\r\nc.\r\n.\r\n"},
		{name: "smuggled end", in: "a\r\n.\r\nMAIL FROM:<x@y>\r\n", dotStuff: true, want: "a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"},
		{name: "no stuffing for bdat", in: ".a\r\n.", want: ".a\r\n.\r\n"},
		{name: "bare LF", in: "a\nb\r\n", dotStuff: true, problem: "bare LF"},
		{name: "bare CR", in: "a\rb\r\n", dotStuff: true, problem: "bare CR"},
		{name: "final bare CR", in: "a\r", dotStuff: true, problem: "bare CR"},
		{name: "LF dot LF", in: "a\n.\nb", dotStuff: true, problem: "bare LF"},
		{name: "normalize LF", in: "a\n.\nb", dotStuff: true, normalize: true, want: "a\r\n..\r\nb\r\n.\r\n"},
		{name: "normalize CR", in: "a\r.\rb\r", dotStuff: true, normalize: true, want: "a\r\n..\r\nb\r\n.\r\n"},
		{name: "normalize CR CR LF", in: "a\r\r\nb", normalize: true, want: "a\r\n\r\nb\r\n"},
		{name: "normalize LF CR", in: "a\n\rb", normalize: true, want: "a\r\n\r\nb\r\n"},
		{name: "line 998", in: strings.Repeat("x", 998) + "\r\n", want: strings.Repeat("x", 998) + "\r\n"},
		{name: "line 999", in: strings.Repeat("x", 999) + "\r\n", problem: "longer than 998"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBodyEncoder(tt.dotStuff, tt.normalize, 0, 0)
			out, ok := encodeAll(&e, []byte(tt.in))
			if tt.problem != "" {
				assert.False(t, ok)
				assert.Contains(t, e.problem, tt.problem)
				return
			}
			require.True(t, ok, e.problem)
			assert.Equal(t, tt.want, string(out))
			// Byte by byte gives the same.
			e = newBodyEncoder(tt.dotStuff, tt.normalize, 0, 0)
			var pieces [][]byte
			for i := range len(tt.in) {
				pieces = append(pieces, []byte{tt.in[i]})
			}
			out, ok = encodeAll(&e, pieces...)
			require.True(t, ok)
			assert.Equal(t, tt.want, string(out))
		})
	}
}

func TestBodyEncoderLimits(t *testing.T) {
	e := newBodyEncoder(true, false, -1, 0)
	_, ok := encodeAll(&e, []byte(strings.Repeat("x", 5000)))
	assert.True(t, ok, "a negative MaxLineLength means no limit")

	e = newBodyEncoder(false, false, 10, 0)
	_, ok = encodeAll(&e, []byte("0123456789\r\n"))
	assert.True(t, ok)
	e = newBodyEncoder(false, false, 10, 0)
	_, ok = encodeAll(&e, []byte("01234"), []byte("567890\r\n"))
	assert.False(t, ok, "a line over the limit across pieces")

	e = newBodyEncoder(false, false, 0, 10)
	_, ok = encodeAll(&e, []byte("12345678\r\n"))
	assert.True(t, ok, "exactly the size limit")
	e = newBodyEncoder(false, false, 0, 10)
	_, ok = encodeAll(&e, []byte("123456789"))
	assert.False(t, ok, "the CRLF added at the end counts")
	assert.True(t, e.sizeErr)
	e = newBodyEncoder(false, false, 0, 10)
	_, ok = e.encode(nil, []byte("12345678901"))
	assert.False(t, ok)
	assert.True(t, e.sizeErr)
}

// errBadWrite marks writes the fake transport refuses.
var errBadWrite = errors.New("write refused")

// slowDeadlineConn is a transport whose SetDeadline, for a deadline in
// the past (the one a cancelled context sets), takes a while: it lets a
// test see whether anything still sets deadlines after a call returned.
type slowDeadlineConn struct {
	pastSet atomic.Int32
	inPast  atomic.Bool
}

func (c *slowDeadlineConn) Read(p []byte) (int, error)  { return 0, io.EOF }
func (c *slowDeadlineConn) Write(p []byte) (int, error) { return 0, errBadWrite }
func (c *slowDeadlineConn) Close() error                { return nil }
func (c *slowDeadlineConn) SetDeadline(d time.Time) error {
	if !d.IsZero() && d.Before(time.Unix(2, 0)) {
		c.inPast.Store(true)
		time.Sleep(20 * time.Millisecond)
		c.pastSet.Add(1)
		c.inPast.Store(false)
	}
	return nil
}

// The function returned by watch must not return while the context's
// AfterFunc is still setting its past deadline: that deadline would
// otherwise land on the next call's I/O and fail it for no reason.
func TestWatchStopWaitsForAfterFunc(t *testing.T) {
	tr := &slowDeadlineConn{}
	c, err := newClient(tr, &Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	require.NoError(t, err)
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		c.watch(ctx)
		before := tr.pastSet.Load()
		cancel()
		// Arming another context disarms this one, waiting for its
		// AfterFunc if it has started.
		c.watch(context.Background())
		assert.False(t, tr.inPast.Load(), "the AfterFunc is still running after the watch was replaced")
		assert.Equal(t, before+1, tr.pastSet.Load())
	}
	// The same context is armed once for many calls.
	ctx, cancel := context.WithCancel(context.Background())
	before := tr.pastSet.Load()
	for range 3 {
		c.watch(ctx)
	}
	cancel()
	c.wwatch.unwatch()
	assert.Equal(t, before+1, tr.pastSet.Load())
	assert.Nil(t, c.wwatch.stop)
}

// ioError wraps the context's error when the transport deadline, which
// was the context's deadline, expired; even when the read's timeout
// fires before the context's own timer has marked it done.
func TestIOErrorDeadline(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	timeout := &timeoutError{}
	e := ioError(ctx, OpMAIL, timeout)
	assert.ErrorIs(t, e, context.DeadlineExceeded)
	assert.Equal(t, KindIO, e.Kind)

	// A context whose deadline is in the past but whose Err is still nil
	// (its timer has not fired yet) is modelled by stillRunningCtx.
	e = ioError(stillRunningCtx{ctx}, OpMAIL, timeout)
	assert.ErrorIs(t, e, context.DeadlineExceeded)

	// A timeout with a context far from its deadline is the transport's.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	e = ioError(ctx2, OpMAIL, timeout)
	assert.NotErrorIs(t, e, context.DeadlineExceeded)
	assert.ErrorIs(t, e, timeout)
	// An *Error passes through.
	in := &Error{Op: OpRCPT, Kind: KindProtocol}
	assert.Same(t, in, ioError(ctx2, OpMAIL, in))
}

type timeoutError struct{}

func (*timeoutError) Error() string { return "i/o timeout" }
func (*timeoutError) Timeout() bool { return true }

type stillRunningCtx struct{ context.Context }

func (stillRunningCtx) Err() error { return nil }

func TestSanitize(t *testing.T) {
	assert.Equal(t, `a\r\nb`, sanitize("a\r\nb"))
	assert.Equal(t, strings.Repeat("x", 64)+"...", sanitize(strings.Repeat("x", 100)))
	assert.Equal(t, `\x00`, sanitize("\x00"))
}

// Repeated short reply texts are shared; the interner stays bounded.
func TestInterner(t *testing.T) {
	var in interner
	a := in.str([]byte("2.0.0 Ok"))
	b := in.str([]byte("2.0.0 Ok"))
	assert.Equal(t, "2.0.0 Ok", b)
	assert.Equal(t, unsafe.StringData(a), unsafe.StringData(b), "the second read reuses the first string")
	for i := range 1000 {
		in.str([]byte(fmt.Sprintf("2.0.0 Ok: queued as %d", i)))
	}
	assert.LessOrEqual(t, len(in.m), internMax)
	long := strings.Repeat("x", internMaxLen+1)
	assert.Equal(t, long, in.str([]byte(long)))
	assert.NotContains(t, in.m, long)
	var none *interner
	assert.Equal(t, "abc", none.str([]byte("abc")))
	allocs := testing.AllocsPerRun(100, func() { in.str([]byte("2.1.5 Ok")) })
	assert.Zero(t, allocs)
}

package smtp

import (
	"bufio"
	"bytes"
	"context"
	"maps"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/faultserver"
)

// worstEHLO returns the costliest EHLO reply the limits allow:
// MaxReplyLines lines of MaxReplyLineLength octets, each a "250-AUTH"
// line listing as many distinct short mechanism names as fit (about
// 247 per line, 31 000 in all).
func worstEHLO() []byte {
	var b bytes.Buffer
	b.WriteString("250-mx.example.com greets you\r\n")
	n := 0
	for i := 1; i < MaxReplyLines; i++ {
		sep := byte('-')
		if i == MaxReplyLines-1 {
			sep = ' '
		}
		line := []byte("250")
		line = append(line, sep)
		line = append(line, "AUTH"...)
		for {
			name := strconv.FormatInt(int64(36*36+n), 36) // 3 characters, all distinct
			if len(line)+1+len(name) > MaxReplyLineLength {
				break
			}
			line = append(line, ' ')
			line = append(line, strings.ToUpper(name)...)
			n++
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// parseWorstEHLO reads the worst reply and parses it as a session does.
func parseWorstEHLO(tb testing.TB, raw []byte) Capabilities {
	var texts interner
	rep, err := readReplyIn(bufio.NewReaderSize(bytes.NewReader(raw), 4096), OpEHLO, false, &texts)
	if err != nil {
		tb.Fatal(err)
	}
	return parseEHLO(rep.Lines)
}

// BenchmarkEHLOWorst measures the CPU and memory of reading and parsing
// the worst EHLO reply the limits allow (see worstEHLO).
func BenchmarkEHLOWorst(b *testing.B) {
	raw := worstEHLO()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		parseWorstEHLO(b, raw)
	}
}

// allocatedBy returns the octets f allocates.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// checkCapsBounded fails unless c holds no more than parseEHLO's limits.
func checkCapsBounded(t testing.TB, c *Capabilities) {
	t.Helper()
	if n := len(c.Auth); n > len(knownMechs)+maxOtherMechs {
		t.Fatalf("%d AUTH mechanisms kept", n)
	}
	if n := len(c.Extensions); n > maxExtensions+16 {
		t.Fatalf("%d keywords kept", n)
	}
	for kw, p := range c.Extensions {
		if len(p) > maxExtensionParams {
			t.Fatalf("%d octets of parameters kept for %q", len(p), kw)
		}
	}
}

// TestEHLOWorstIsLinear: the worst EHLO reply the limits allow is read
// and parsed with memory in proportion to its size (the work is
// measured by BenchmarkEHLOWorst), and what is kept is bounded. Before
// the parser was made linear it allocated 41 MiB for this 126 KB reply
// and took 43 s of CPU.
func TestEHLOWorstIsLinear(t *testing.T) {
	raw := worstEHLO()
	var c Capabilities
	got := allocatedBy(func() { c = parseWorstEHLO(t, raw) })
	// The reply's lines are kept as strings (one copy of the input) and
	// the parser keeps bounded parts of them.
	if limit := uint64(3 * len(raw)); got > limit {
		t.Errorf("reading and parsing %d octets allocated %d octets, more than %d", len(raw), got, limit)
	}
	checkCapsBounded(t, &c)
	if !c.HasAuth("100") || c.HasAuth("ZZZ") {
		t.Errorf("the first names offered are kept, the rest dropped: %q", c.Auth)
	}
	// The parser alone allocates a bounded amount, whatever the size.
	var texts interner
	rep, err := readReplyIn(bufio.NewReader(bytes.NewReader(raw)), OpEHLO, false, &texts)
	if err != nil {
		t.Fatal(err)
	}
	if got := allocatedBy(func() { parseEHLO(rep.Lines) }); got > 64<<10 {
		t.Errorf("parseEHLO allocated %d octets for the worst reply", got)
	}
}

// TestEHLOKeepsKnownMechanisms: mechanisms the client implements are
// kept however many unknown ones come first, and known keywords however
// many unknown ones come first.
func TestEHLOKeepsKnownMechanisms(t *testing.T) {
	lines := []string{"mx"}
	for i := range 200 {
		lines = append(lines, "AUTH X-"+strconv.Itoa(i)+" Y-"+strconv.Itoa(i), "X-KW-"+strconv.Itoa(i)+" p")
	}
	lines = append(lines, "AUTH plain SCRAM-SHA-256", "AUTH=LOGIN", "PIPELINING", "SIZE 1000")
	c := parseEHLO(lines)
	checkCapsBounded(t, &c)
	for _, m := range []string{MechPLAIN, MechSCRAMSHA256, MechLOGIN} {
		if !c.HasAuth(m) {
			t.Errorf("%s dropped from %q", m, c.Auth)
		}
	}
	if !c.Pipelining || c.MaxSize != 1000 || !c.Has("PIPELINING") || !c.Has("SIZE") {
		t.Errorf("known keywords dropped: %+v", c)
	}
	if c.Has("X-KW-199") || !c.Has("X-KW-0") {
		t.Error("the first unknown keywords are kept, the rest dropped")
	}
}

// TestEnvIDLimitOnTheWire: RFC 3461's 100-character limit on ENVID
// applies to its xtext form, which is what goes on the wire.
func TestEnvIDLimitOnTheWire(t *testing.T) {
	for _, envid := range []string{
		strings.Repeat("e", 100),         // 100 on the wire
		strings.Repeat("e", 101),         // 101
		strings.Repeat("+", 33),          // 99
		strings.Repeat("+", 34),          // 102
		strings.Repeat("=", 40),          // 120: accepted before
		"x" + strings.Repeat("\x01", 33), // 100
		"x" + strings.Repeat(" ", 34),    // 103
	} {
		wire := len(xtext(envid))
		if got := xtextLen(envid); got != wire {
			t.Errorf("xtextLen(%q) = %d, xtext has %d", envid, got, wire)
		}
		d := DSN{EnvID: envid}
		if p := d.validate(); (p == "") != (wire <= 100) {
			t.Errorf("EnvID of %d octets, %d on the wire: validate() = %q", len(envid), wire, p)
		}
	}
}

// BenchmarkReplyWorstRedacted measures reading the largest reply the
// limits allow (128 lines of 998 octets, control characters included) on
// a session that has logged in with a 2 KB OAuth token, so that every
// line is searched for fragments of it and escaped.
func BenchmarkReplyWorstRedacted(b *testing.B) {
	var raw bytes.Buffer
	for i := range MaxReplyLines {
		sep := "-"
		if i == MaxReplyLines-1 {
			sep = " "
		}
		line := "550" + sep + strings.Repeat("no\x1b[2K\r x", 120)
		raw.WriteString(line[:MaxReplyLineLength] + "\r\n")
	}
	var texts interner
	texts.addSecret([]byte(strings.Repeat("eyJ0eXAiOiJKV1Qi.Xy0-_", 100)))
	b.SetBytes(int64(raw.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := readReplyIn(bufio.NewReaderSize(bytes.NewReader(raw.Bytes()), 4096), OpMAIL, false, &texts); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConnectWorstEHLO: a session whose server sends the worst EHLO
// reply the limits allow connects with bounded capabilities, and the
// reply costs what BenchmarkEHLOWorst measures (milliseconds), so
// nothing that waits on the session (Close, a context) waits on the
// parser.
func TestConnectWorstEHLO(t *testing.T) {
	srv := faultserver.Start(t, faultserver.Reply("220 mx.example ESMTP\r\n"), faultserver.ReadLine(),
		faultserver.Reply(string(worstEHLO())), faultserver.ExpectLine("QUIT"), faultserver.Reply("221 bye\r\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Connect(ctx, conn, &Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	caps := c.Capabilities()
	checkCapsBounded(t, &caps)
	if err := c.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	<-srv.Done()
	if err := srv.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestReplyWorstEscapedMemory: the largest reply the limits allow, every
// octet of it a control character, on a session that must also search it
// for a 2 KB token, costs memory in proportion to its size: escaping
// makes at most four octets of text of each (ESC becomes \x1b), and the
// text is built once.
func TestReplyWorstEscapedMemory(t *testing.T) {
	var raw bytes.Buffer
	for i := range MaxReplyLines {
		sep := "-"
		if i == MaxReplyLines-1 {
			sep = " "
		}
		raw.WriteString("550" + sep + strings.Repeat("\x1b", MaxReplyLineLength-4) + "\r\n")
	}
	var texts interner
	texts.addSecret([]byte(strings.Repeat("eyJ0eXAiOiJKV1Qi.Xy0-_", 100)))
	var rep Reply
	var err error
	got := allocatedBy(func() {
		rep, err = readReplyIn(bufio.NewReaderSize(bytes.NewReader(raw.Bytes()), 4096), OpMAIL, false, &texts)
	})
	if err != nil {
		t.Fatal(err)
	}
	if limit := uint64(5 * raw.Len()); got > limit {
		t.Errorf("a reply of %d octets allocated %d, more than %d", raw.Len(), got, limit)
	}
	if want := strings.Repeat(`\x1b`, MaxReplyLineLength-4); rep.Lines[0] != want {
		t.Errorf("line 0 = %.40q...", rep.Lines[0])
	}
}

// TestServerAdvertisingNonASCIIKeywordsGetsThemIgnored: a server whose
// EHLO lines carry keywords of invalid or non-ASCII octets (64 lines of
// 998 octets of 0x85) gets those lines left out of Extensions, and
// parsing them allocates a bounded amount, not a multiple of the reply
// (strings.ToUpper made each invalid octet the three octets of U+FFFD).
func TestServerAdvertisingNonASCIIKeywordsGetsThemIgnored(t *testing.T) {
	lines := []string{"mx.example", "PIPELINING", "X-ĶEY value", "\x85AUTH PLAIN", "x-ok 1"}
	for range 64 {
		lines = append(lines, strings.Repeat("\x85", 998))
	}
	var c Capabilities
	got := allocatedBy(func() { c = parseEHLO(lines) })
	if got > 64<<10 {
		t.Errorf("parsing 64 lines of 998 invalid octets allocated %d octets", got)
	}
	want := map[string]string{"PIPELINING": "", "X-OK": "1"}
	if !maps.Equal(c.Extensions, want) || len(c.Auth) != 0 {
		t.Errorf("Extensions %q, Auth %q; want %q and none", c.Extensions, c.Auth, want)
	}
	if !c.Has("x-ok") || c.Has("X-ĶEY") {
		t.Errorf("Has(x-ok) %v, Has(X-ĶEY) %v", c.Has("x-ok"), c.Has("X-ĶEY"))
	}
}

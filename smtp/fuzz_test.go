package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for every parser and encoder of the package. Run one with
//
//	go test -run='^$' -fuzz='^FuzzReadReply$' -fuzztime=20s ./smtp
//
// Inputs that once failed are kept under testdata/fuzz/.

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 ok\r\n",
		"250-a\r\n250-b\r\n250 c\r\n",
		"250\r\n",
		"550 5.1.1 no such user\r\n",
		"550-5.1.1 a\r\n550 5.1.1 b\r\n",
		"250-a\r\n251 b\r\n",
		"25x ok\r\n",
		"250_ok\r\n",
		"250-a\n250 b\n",
		"421 4.3.2 bye\r\n250 after\r\n",
		"250 " + strings.Repeat("x", 995) + "\r\n",
		strings.Repeat("250-x\r\n", 128) + "250 y\r\n",
		"220 go\r",
		"",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, enhanced bool) {
		r := bufio.NewReaderSize(bytes.NewReader(data), 4096)
		// Read replies until the input is exhausted or one fails, as a
		// session would read a pipelined batch.
		for range 8 {
			rep, err := readReply(r, OpMAIL, enhanced)
			if err != nil {
				var se *Error
				if errors.As(err, &se) {
					if se.Kind != KindProtocol || !strings.HasPrefix(se.Error(), "smtp: ") {
						t.Fatalf("bad error %#v", se)
					}
				}
				return
			}
			if rep.Code < 200 || rep.Code > 599 {
				t.Fatalf("code %d out of range", rep.Code)
			}
			if len(rep.Lines) == 0 || len(rep.Lines) > MaxReplyLines {
				t.Fatalf("%d lines", len(rep.Lines))
			}
			for _, l := range rep.Lines {
				// Escaping turns one octet into at most four (\xHH).
				if len(l) > 4*MaxReplyLineLength {
					t.Fatalf("line of %d octets", len(l))
				}
				for _, r := range l {
					if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
						t.Fatalf("line with control character %U: %q", r, l)
					}
				}
			}
			if rep.Enhanced != "" {
				if !enhanced {
					t.Fatalf("enhanced code %q parsed without ENHANCEDSTATUSCODES", rep.Enhanced)
				}
				if !validEnhanced(rep.Enhanced) || int(rep.Enhanced[0]-'0') != rep.Code/100 {
					t.Fatalf("bad enhanced code %q for %d", rep.Enhanced, rep.Code)
				}
			}
			// The reply's own formatting never panics.
			_ = rep.String()
			_ = parseQueueID(rep.Text())
		}
	})
}

func FuzzParseEHLO(f *testing.F) {
	for _, s := range []string{
		"mx.example\nPIPELINING\nCHUNKING\nSIZE 1000\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nSTARTTLS\nDSN\nAUTH PLAIN LOGIN\nAUTH=CRAM-MD5",
		"mx\nauth=plain login\nAUTH PLAIN",
		"mx\nSIZE\nSIZE 5\nsize -1",
		"mx\n\n  \nX-A b c ",
		"",
	} {
		f.Add(s)
	}
	// The worst reply the limits allow, as lines.
	worst := strings.TrimSuffix(string(worstEHLO()), "\r\n")
	f.Add(strings.ReplaceAll(strings.ReplaceAll(worst, "250-", ""), "250 ", ""))
	f.Fuzz(func(t *testing.T, s string) {
		lines := strings.Split(s, "\n")
		c := parseEHLO(lines)
		checkCapsBounded(t, &c)
		if c.MaxSize < 0 {
			t.Fatalf("MaxSize %d", c.MaxSize)
		}
		if c.MaxSize > 0 && !c.Size {
			t.Fatal("MaxSize without Size")
		}
		seen := map[string]bool{}
		for _, m := range c.Auth {
			if m == "" || m != strings.ToUpper(m) || seen[m] {
				t.Fatalf("bad mechanism list %q", c.Auth)
			}
			seen[m] = true
			if !c.HasAuth(m) || (isASCII(m) && !c.HasAuth(strings.ToLower(m))) {
				t.Fatalf("HasAuth(%q) false", m)
			}
		}
		for kw := range c.Extensions {
			if kw != strings.ToUpper(kw) || !c.Has(kw) {
				t.Fatalf("keyword %q", kw)
			}
			// Case-insensitive for the ASCII keywords RFC 5321 allows
			// (Unicode case mapping does not round-trip, e.g. U+0130).
			if isASCII(kw) && !c.Has(strings.ToLower(kw)) {
				t.Fatalf("Has(%q) false", strings.ToLower(kw))
			}
		}
		flags := map[string]bool{
			"PIPELINING": c.Pipelining, "CHUNKING": c.Chunking, "8BITMIME": c.EightBitMIME,
			"SMTPUTF8": c.SMTPUTF8, "ENHANCEDSTATUSCODES": c.EnhancedStatusCodes,
			"STARTTLS": c.StartTLS, "DSN": c.DSN, "SIZE": c.Size,
		}
		for kw, set := range flags {
			if set != c.Has(kw) {
				t.Fatalf("%s: field %v, Has %v", kw, set, c.Has(kw))
			}
		}
	})
}

// FuzzEHLOLarge builds EHLO replies as large as the limits allow from a
// few fuzzed lines, repeated (with a counter, so names differ) up to
// MaxReplyLines lines of up to MaxReplyLineLength octets, and checks
// that what the parser keeps stays bounded and that its memory stays in
// proportion to the input: a parser that is quadratic or worse in the
// number of lines or names fails here.
func FuzzEHLOLarge(f *testing.F) {
	f.Add("AUTH A%d B%d C%d", "X-KW%d p", uint8(127), uint16(998))
	f.Add("AUTH=plain login x%d", "SIZE %d", uint8(127), uint16(500))
	f.Add("X-%d "+strings.Repeat("p ", 400), "AUTH PLAIN", uint8(64), uint16(998))
	f.Fuzz(func(t *testing.T, a, b string, n uint8, width uint16) {
		lines := []string{"mx.example"}
		for i := range min(int(n), MaxReplyLines-1) {
			tmpl := a
			if i%2 == 1 {
				tmpl = b
			}
			var line strings.Builder
			for k := 0; line.Len() < int(width) && k < 512; k++ {
				line.WriteString(strings.ReplaceAll(tmpl, "%d", strconv.Itoa(i*512+k)))
				line.WriteByte(' ')
			}
			s := line.String()
			if len(s) > MaxReplyLineLength-4 {
				s = s[:MaxReplyLineLength-4]
			}
			lines = append(lines, s)
		}
		size := 0
		for _, l := range lines {
			size += len(l)
		}
		var c Capabilities
		got := allocatedBy(func() { c = parseEHLO(lines) })
		checkCapsBounded(t, &c)
		if limit := uint64(64<<10 + 2*size); got > limit {
			t.Fatalf("parsing %d octets allocated %d", size, got)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// encodeSplit runs a fresh encoder over data cut at the given points.
func encodeSplit(data []byte, cuts []int, dotStuff, normalize bool) ([]byte, bool) {
	e := newBodyEncoder(dotStuff, normalize, 0, 0)
	var out []byte
	prev := 0
	for _, c := range cuts {
		var ok bool
		if out, ok = e.encode(out, data[prev:c]); !ok {
			return nil, false
		}
		prev = c
	}
	var ok bool
	if out, ok = e.encode(out, data[prev:]); !ok {
		return nil, false
	}
	return e.finish(out)
}

func FuzzBodyEncoder(f *testing.F) {
	for _, s := range []string{
		"", "a", "a\r\n", ".\r\n", "a\r\n.\r\nb", "a\n.\nb", "a\r.\rb\r", "\r\n\r\n", "..\r\n...", ".",
		"x\r", "\r", "\n", "\r\r\n", strings.Repeat("y", 999), "a\r\n" + strings.Repeat(".", 5) + "\r\n",
	} {
		f.Add([]byte(s), []byte{1, 3, 7}, true, false)
		f.Add([]byte(s), []byte{2}, false, true)
	}
	f.Fuzz(func(t *testing.T, data, split []byte, dotStuff, normalize bool) {
		want, wantOK := encodeSplit(data, nil, dotStuff, normalize)
		// Cut points from the split bytes, in order.
		var cuts []int
		pos := 0
		for _, b := range split {
			pos += int(b)
			if pos > len(data) {
				break
			}
			cuts = append(cuts, pos)
		}
		got, gotOK := encodeSplit(data, cuts, dotStuff, normalize)
		if gotOK != wantOK {
			t.Fatalf("one-shot ok=%v, streamed ok=%v (cuts %v)", wantOK, gotOK, cuts)
		}
		// Byte by byte, the hardest split.
		bytewise := make([]int, 0, len(data))
		for i := 1; i < len(data); i++ {
			bytewise = append(bytewise, i)
		}
		one, oneOK := encodeSplit(data, bytewise, dotStuff, normalize)
		if oneOK != wantOK {
			t.Fatalf("one-shot ok=%v, byte by byte ok=%v", wantOK, oneOK)
		}
		if !wantOK {
			return
		}
		if !bytes.Equal(got, want) || !bytes.Equal(one, want) {
			t.Fatalf("streamed output differs:\n one-shot %q\n streamed %q\n bytewise %q", want, got, one)
		}
		// Every CR is followed by LF and every LF preceded by CR.
		for i, c := range want {
			if c == '\r' && (i+1 == len(want) || want[i+1] != '\n') {
				t.Fatalf("bare CR at %d in %q", i, want)
			}
			if c == '\n' && (i == 0 || want[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, want)
			}
		}
		if !normalize && (bytes.Contains(data, []byte("\n")) || bytes.Contains(data, []byte("\r"))) {
			// Without normalisation, every CR and LF of the input was paired.
			if bytes.Count(data, []byte("\r")) != bytes.Count(data, []byte("\n")) {
				t.Fatalf("accepted unpaired line ends in %q", data)
			}
		}
		if len(want) > 0 && !bytes.HasSuffix(want, []byte("\r\n")) {
			t.Fatalf("output does not end in CRLF: %q", want)
		}
		if dotStuff {
			// On the wire after "DATA\r\n": the only end of data is the last.
			wire := append([]byte("\r\n"), want...)
			if i := bytes.Index(wire, []byte("\r\n.\r\n")); i != len(wire)-5 {
				t.Fatalf("end of data at %d of %d in %q", i, len(wire), want)
			}
			// Unstuffed, it is the input with normalised line ends.
			body := want[:len(want)-3]
			var unstuffed []byte
			for _, line := range bytes.SplitAfter(body, []byte("\r\n")) {
				if len(line) > 0 && line[0] == '.' {
					line = line[1:]
				}
				unstuffed = append(unstuffed, line...)
			}
			plain, ok := encodeSplit(data, nil, false, normalize)
			if !ok || !bytes.Equal(unstuffed, plain) {
				t.Fatalf("unstuffed %q, want %q", unstuffed, plain)
			}
		} else if !normalize {
			// BDAT without normalisation: the input, plus a final CRLF
			// when it lacked one.
			exp := data
			if len(data) > 0 && !bytes.HasSuffix(data, []byte("\r\n")) {
				exp = append(append([]byte(nil), data...), '\r', '\n')
			}
			if !bytes.Equal(want, exp) {
				t.Fatalf("BDAT output %q for %q", want, data)
			}
		}
	})
}

func FuzzQueueID(f *testing.F) {
	for _, s := range []string{
		"2.0.0 Ok: queued as 4Xk9Qz1234", "OK id=1abcDE-000123-Fg",
		"2.0.0 x8GFvAb1234567 Message accepted for delivery",
		"2.6.0 <m@x> [InternalId=42] Queued mail for delivery",
		"2.0.0 OK  1589461543 y11sm10453547pfo.104 - gsmtp", "Ok 0100018b1c2d-000000",
		"\u023aqueued as ", "", "id=", " gsmtp",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		id := parseQueueID(text)
		if id == "" {
			return
		}
		if !strings.Contains(text, id) {
			t.Fatalf("parseQueueID(%q) = %q, not in the text", text, id)
		}
		if strings.ContainsAny(id, " \t\r\n") {
			t.Fatalf("parseQueueID(%q) = %q has white space", text, id)
		}
	})
}

func FuzzValidateAddress(f *testing.F) {
	for _, s := range []string{
		"a@example.com", "postmaster", "", "a@", "@b", "a b@c", "a\r\n@b", "a\x00@b", "<a@b>",
		"δοκιμή@παράδειγμα.δοκιμή", "a\xff@b", strings.Repeat("l", 64) + "@" + strings.Repeat("d", 189),
		strings.Repeat("l", 65) + "@b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		u, problem := validateAddress(addr)
		if problem != "" {
			if u {
				t.Fatal("utf8 reported for an invalid address")
			}
			return
		}
		if strings.ContainsAny(addr, "\r\n\x00<> \t\x7f") {
			t.Fatalf("accepted %q", addr)
		}
		for i := 0; i < len(addr); i++ {
			if addr[i] < 0x20 {
				t.Fatalf("accepted a control character in %q", addr)
			}
		}
		if len(addr) > 254 {
			t.Fatalf("accepted %d octets", len(addr))
		}
		if !utf8.ValidString(addr) {
			t.Fatalf("accepted invalid UTF-8 %q", addr)
		}
		ascii := true
		for i := 0; i < len(addr); i++ {
			if addr[i] >= 0x80 {
				ascii = false
			}
		}
		if u == ascii {
			t.Fatalf("utf8=%v for %q", u, addr)
		}
		at := strings.LastIndexByte(addr, '@')
		if at < 0 {
			if !strings.EqualFold(addr, "postmaster") {
				t.Fatalf("accepted %q without @", addr)
			}
			return
		}
		if at == 0 || at == len(addr)-1 || at > 64 || len(addr)-at-1 > 255 {
			t.Fatalf("accepted local part or domain of bad length in %q", addr)
		}
		// What is accepted is safe on the wire as a path.
		line := "RCPT TO:<" + addr + ">\r\n"
		if strings.Count(line, "\r\n") != 1 || strings.Count(line, ">") != 1 {
			t.Fatalf("unsafe command %q", line)
		}
	})
}

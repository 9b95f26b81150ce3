package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// bufferedClient is a Client whose read buffer holds in (as much as one
// fill brings).
func bufferedClient(in string) *Client {
	c := &Client{r: bufio.NewReaderSize(strings.NewReader(in), 4096)}
	c.r.Peek(1) // fill the buffer
	return c
}

// TestReplyBufferedSeesOnlyWholeReplies: the sender's reader gives its
// answers once no whole reply is buffered (the next read would wait for
// the server): a reply's last line must have arrived, whatever its
// continuation lines.
func TestReplyBufferedSeesOnlyWholeReplies(t *testing.T) {
	for _, tc := range []struct {
		in    string
		reads int // replies read before asking
		want  bool
	}{
		{"", 0, false},
		{"250 ok\r\n", 0, true},
		{"250 ok\r\n", 1, false},
		{"250 ok\r\n354 go\r\n", 1, true},
		{"250 ok\r\n354 go\r\n", 2, false},
		{"250\r\n", 0, true},
		{"250-a\r\n250-b\r\n250 c\r\n", 0, true},
		{"250-a\r\n250-b\r\n", 0, false},
		{"250-a\r\n250 c", 0, false},
		{"250 o", 0, false},
		{"250 ok\r\n25", 1, false},
	} {
		c := bufferedClient(tc.in)
		var texts interner
		for range tc.reads {
			if _, err := readReplyIn(c.r, OpMAIL, false, &texts); err != nil {
				t.Fatalf("%q: %v", tc.in, err)
			}
		}
		if got := c.replyBuffered(); got != tc.want {
			t.Errorf("%q after %d replies: replyBuffered %v, want %v", tc.in, tc.reads, got, tc.want)
		}
	}
}

// FuzzReplyBuffered: whenever replyBuffered says a whole reply is
// buffered, the reply parser reads the next reply from those octets
// alone without running out of them (it may still reject it).
func FuzzReplyBuffered(f *testing.F) {
	for _, s := range []string{"250 ok\r\n", "250-a\r\n250 b\r\n", "250-a\r\n", "250\n", "2\n", "250-a\r\n25", "354 go ahead\r\n250 ok\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c := bufferedClient(in)
		if !c.replyBuffered() {
			return
		}
		buf, _ := c.r.Peek(c.r.Buffered())
		var texts interner
		_, err := readReplyIn(bufio.NewReaderSize(bytes.NewReader(buf), 4096), OpMAIL, false, &texts)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%q: replyBuffered, but reading it ran out: %v", in, err)
		}
	})
}

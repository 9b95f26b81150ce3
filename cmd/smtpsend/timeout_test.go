package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
)

// slowReader is a loopback proxy in front of target that passes what the
// client sends at rate octets a second per connection: a server that
// reads slowly.
func slowReader(t *testing.T, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { io.Copy(c, s); c.Close() })
			wg.Go(func() {
				defer s.Close()
				const chunk = 16 << 10
				buf := make([]byte, chunk)
				start, sent := time.Now(), 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := s.Write(buf[:n]); werr != nil {
							return
						}
						sent += n
						// Keep to the rate: sleep until sent octets are due.
						if due := start.Add(time.Duration(sent) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
							time.Sleep(time.Until(due))
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return ln.Addr().String()
}

// TestTimeoutIsEachMessagesOwn: -timeout is a message's own time. Twenty
// 5 MB files over two connections to a server that reads 5 MB/s on each:
// a file takes a second (two, counting what the kernel's buffers hold of
// the one before it), well within -timeout 6s, but the last ones on each
// connection wait nine seconds behind the others. All twenty go.
// (Before, -timeout ran from the moment each file's Send started, and
// the files at the back timed out.)
func TestTimeoutIsEachMessagesOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 100 MB")
	}
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.Plain, DiscardBodies: true})
	proxy := slowReader(t, srv.Addr(), 5<<20)
	dir := t.TempDir()
	line := strings.Repeat("x", 76) + "\n"
	big := strings.Repeat(line, (5<<20)/len(line))
	var files []string
	for i := range 20 {
		name := filepath.Join(dir, fmt.Sprintf("big%02d.eml", i))
		require.NoError(t, writeFileAt(name, eml(fmt.Sprintf("big %d", i), big)))
		files = append(files, name)
	}
	start := time.Now()
	args := append([]string{"-server", proxy, "-tls", "plaintext", "-conns", "2", "-timeout", "6s",
		"-from", "alice@example.com", "-to", "bob@localhost"}, files...)
	o := runCLI(t, runOpts{}, args...)
	t.Logf("20 x 5 MB in %v", time.Since(start))
	require.Equal(t, exitOK, o.code, o.all())
	assert.EqualValues(t, 20, srv.Count())
}

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// wireLat is the latency section's control: the least a client can do
// per Send. Each Send writes its pre-rendered MAIL, RCPT and BDAT LAST
// transaction at once on the least busy of its connections (no window,
// no waiting for a read to end), and a reader goroutine per connection
// answers the oldest pending Send at every third reply. What it measures
// beyond the round trip is the sink, the delay line and the machine.
type wireLat struct {
	conns []*wireLatConn
	next  atomic.Uint64
}

type wireLatConn struct {
	conn net.Conn
	br   *bufio.Reader

	mu      sync.Mutex // guards the fields below, and orders writes with pending
	pending []chan error
	err     error // the reader's end

	done chan struct{} // closed when the reader returns
}

func newWireLat(ctx context.Context, s latSpec, t latTarget) (*wireLat, error) {
	w := &wireLat{}
	for range max(s.Conns, 1) {
		c, err := dialWireLat(ctx, t)
		if err != nil {
			w.close()
			return nil, err
		}
		w.conns = append(w.conns, c)
	}
	return w, nil
}

// wireTx is one pre-rendered transaction.
var wireTx = []byte("MAIL FROM:<" + mailFrom + ">\r\nRCPT TO:<" + rcptTo + ">\r\nBDAT " + strconv.Itoa(len(message)) + " LAST\r\n" + string(message))

func dialWireLat(ctx context.Context, t latTarget) (*wireLatConn, error) {
	var conn net.Conn
	var err error
	if t.tls != nil {
		d := tls.Dialer{Config: t.tls}
		conn, err = d.DialContext(ctx, "tcp", t.addr)
	} else {
		conn, err = dial(ctx, t.addr)
	}
	if err != nil {
		return nil, err
	}
	c := &wireLatConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), done: make(chan struct{})}
	if err := c.hello(ctx, t.tls != nil); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	go c.read()
	return c, nil
}

// hello reads the greeting, says EHLO and, over TLS, logs in with AUTH
// PLAIN.
func (c *wireLatConn) hello(ctx context.Context, auth bool) error {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	step := func(cmd string, want int) (string, error) {
		if cmd != "" {
			if _, err := c.conn.Write([]byte(cmd + "\r\n")); err != nil {
				return "", err
			}
		}
		code, text, err := readReply(c.br)
		if err == nil && code != want {
			err = fmt.Errorf("wire client: %d, want %d", code, want)
		}
		return text, err
	}
	if _, err := step("", 220); err != nil {
		return err
	}
	caps, err := step("EHLO localhost", 250)
	if err != nil {
		return err
	}
	if !strings.Contains(strings.ToUpper(caps), "CHUNKING") || !strings.Contains(strings.ToUpper(caps), "PIPELINING") {
		return errors.New("wire client: the sink does not offer PIPELINING and CHUNKING")
	}
	if auth {
		_, err = step("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+benchUser+"\x00"+benchPass)), 235)
	}
	return err
}

// read answers the oldest pending Send at every third reply.
func (c *wireLatConn) read() {
	defer close(c.done)
	var err error
	for n := 1; ; n++ {
		var code int
		code, err = replyCode(c.br)
		if err != nil {
			break
		}
		if n%3 != 0 && code/100 == 2 {
			continue
		}
		if code/100 != 2 {
			err = fmt.Errorf("wire client: reply %d", code)
			break
		}
		c.mu.Lock()
		if len(c.pending) == 0 {
			c.mu.Unlock()
			err = errors.New("wire client: a reply nobody waits for")
			break
		}
		ch := c.pending[0]
		c.pending = c.pending[1:]
		c.mu.Unlock()
		ch <- nil
	}
	c.mu.Lock()
	c.err = err
	for _, ch := range c.pending {
		ch <- err
	}
	c.pending = nil
	c.mu.Unlock()
}

func (w *wireLat) send(ctx context.Context) error {
	// The connection with the fewest Sends pending, from a rotating start.
	var c *wireLatConn
	best := -1
	start := int(w.next.Add(1))
	for i := range w.conns {
		k := w.conns[(start+i)%len(w.conns)]
		k.mu.Lock()
		n := len(k.pending)
		k.mu.Unlock()
		if best < 0 || n < best {
			c, best = k, n
		}
	}
	ch := make(chan error, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.pending = append(c.pending, ch)
	_, err := c.conn.Write(wireTx)
	c.mu.Unlock()
	if err != nil {
		c.conn.Close()
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *wireLat) close() {
	for _, c := range w.conns {
		c.conn.Close()
		<-c.done
	}
}

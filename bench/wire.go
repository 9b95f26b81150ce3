package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The wire control: a client written only for the benchmark, which
// writes pre-rendered transactions and does nothing but the protocol.
// It is the ceiling a real client is measured against, in every
// section, in one of two shapes:
//
//   - a stream (wire-chunking with a window, and wire-data): on one
//     connection, with CHUNKING a writer goroutine keeps up to window
//     transactions (MAIL, RCPT, BDAT n LAST and the body, in one write
//     when several are due) ahead of a reader that counts replies; with
//     DATA, the body and final dot of one message leave in the same
//     write as the next message's MAIL, RCPT and DATA (RFC 2920), one
//     round trip per message;
//   - per Send (wire-chunking without a window): each Send writes its
//     transaction at once on the least busy of its connections (no
//     window, no waiting for a read to end), and a reader goroutine per
//     connection answers the oldest pending Send at its last reply.
//     What it measures beyond the round trip is the sink, the delay
//     line and the machine.

// wireConn is one connection of the control.
type wireConn struct {
	conn net.Conn
	br   *bufio.Reader

	mu      sync.Mutex // guards the fields below, and orders writes with pending
	pending []chan error
	err     error // the reader's end

	done chan struct{} // closed when the reader returns
}

// wireTxs is what the control writes, pre-rendered.
type wireTxs struct {
	perTx    int    // replies per BDAT transaction: MAIL, each RCPT, BDAT
	tx       []byte // one BDAT transaction
	envelope []byte // MAIL, RCPT, DATA
	bodyNext []byte // body, final dot, next MAIL, RCPT, DATA
	bodyEnd  []byte // body and final dot
}

func renderWire(msg []byte, to []string) wireTxs {
	env := "MAIL FROM:<" + mailFrom + ">\r\n"
	for _, rcpt := range to {
		env += "RCPT TO:<" + rcpt + ">\r\n"
	}
	w := wireTxs{perTx: 2 + len(to)}
	w.tx = append([]byte(env+"BDAT "+strconv.Itoa(len(msg))+" LAST\r\n"), msg...)
	w.envelope = []byte(env + "DATA\r\n")
	w.bodyEnd = append(append([]byte{}, msg...), ".\r\n"...)
	w.bodyNext = append(append([]byte{}, w.bodyEnd...), w.envelope...)
	return w
}

// dialWire connects, says EHLO and, over TLS, logs in with AUTH PLAIN.
func dialWire(ctx context.Context, t target, chunking bool) (*wireConn, error) {
	conn, err := dialTarget(ctx, t)
	if err != nil {
		return nil, err
	}
	c := &wireConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), done: make(chan struct{})}
	if err := c.hello(t.tls != nil, chunking); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *wireConn) hello(auth, chunking bool) error {
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
	caps = strings.ToUpper(caps)
	if !strings.Contains(caps, "PIPELINING") {
		return errors.New("wire client: the sink does not offer PIPELINING")
	}
	if chunking && !strings.Contains(caps, "CHUNKING") {
		return errors.New("wire client: the sink does not offer CHUNKING")
	}
	if auth {
		_, err = step("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+benchUser+"\x00"+benchPass)), 235)
	}
	return err
}

// readReply reads one reply, possibly multi-line, and returns its code
// and its lines.
func readReply(br *bufio.Reader) (int, string, error) {
	var text strings.Builder
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, text.String(), err
		}
		if len(line) < 4 {
			return 0, text.String(), fmt.Errorf("short reply line %q", line)
		}
		text.Write(line)
		if line[3] == ' ' || line[3] == '\r' {
			code, err := strconv.Atoi(string(line[:3]))
			return code, text.String(), err
		}
	}
}

// replyCode reads one reply and returns just its code, without
// allocating for a one-line reply.
func replyCode(br *bufio.Reader) (int, error) {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) < 4 {
			return 0, fmt.Errorf("short reply line %q", line)
		}
		if line[3] == ' ' || line[3] == '\r' {
			return int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'), nil
		}
	}
}

func openWire(ctx context.Context, s spec, t target) (client, error) {
	chunking := s.Client == clientWireChunking
	txs := renderWire(t.payload())
	if !chunking || s.Window > 1 {
		c, err := dialWire(ctx, t, chunking)
		if err != nil {
			return nil, err
		}
		w := &wireStream{wireConn: c, wireTxs: txs, chunking: chunking, window: max(s.Window, 1)}
		w.ahead = bytes.Repeat(txs.tx, w.window)
		return w, nil
	}
	w := &wirePool{wireTxs: txs}
	for range max(s.Conns, 1) {
		c, err := dialWire(ctx, t, true)
		if err != nil {
			w.Close()
			return nil, err
		}
		c.conn.SetDeadline(time.Time{})
		go c.read(txs.perTx)
		w.conns = append(w.conns, c)
	}
	return w, nil
}

// ---- per Send, on the least busy of its connections

type wirePool struct {
	wireTxs
	conns []*wireConn
	next  atomic.Uint64
}

// read answers the oldest pending Send at every perTx-th reply.
func (c *wireConn) read(perTx int) {
	defer close(c.done)
	var err error
	for n := 1; ; n++ {
		var code int
		code, err = replyCode(c.br)
		if err != nil {
			break
		}
		if n%perTx != 0 && code/100 == 2 {
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

func (w *wirePool) Send(ctx context.Context) error {
	// The connection with the fewest Sends pending, from a rotating start.
	var c *wireConn
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
	_, err := c.conn.Write(w.tx)
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

func (w *wirePool) Close() {
	for _, c := range w.conns {
		c.conn.Close()
		<-c.done
	}
}

// ---- a stream on one connection

type wireStream struct {
	*wireConn
	wireTxs
	chunking bool
	window   int
	ahead    []byte     // window BDAT transactions, back to back
	mu       sync.Mutex // serialises Send
}

// Send sends one message and reads its replies.
func (r *wireStream) Send(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		r.conn.SetDeadline(dl)
	}
	write, replies := r.tx, r.perTx
	if !r.chunking {
		write, replies = append(append([]byte{}, r.envelope...), r.bodyEnd...), 4
	}
	if _, err := r.conn.Write(write); err != nil {
		return err
	}
	for range replies {
		if code, err := replyCode(r.br); err != nil || code/100 == 4 || code/100 == 5 {
			return fmt.Errorf("wire client: reply %d: %v", code, err)
		}
	}
	return nil
}

func (r *wireStream) loop(ctx context.Context, q *quota) error {
	if dl, ok := ctx.Deadline(); ok {
		r.conn.SetDeadline(dl)
	}
	if r.chunking {
		return r.runChunking(q)
	}
	return r.runData(q)
}

func (r *wireStream) runData(q *quota) error {
	if !q.claim() {
		return nil
	}
	if _, err := r.conn.Write(r.envelope); err != nil {
		return err
	}
	for {
		for _, want := range [...]int{250, 250, 354} {
			if code, err := replyCode(r.br); err != nil || code != want {
				q.stop.Store(true)
				return fmt.Errorf("wire-data: reply %d, want %d: %v", code, want, err)
			}
		}
		more := q.claim()
		next := r.bodyEnd
		if more {
			next = r.bodyNext
		}
		if _, err := r.conn.Write(next); err != nil {
			return err
		}
		if code, err := replyCode(r.br); err != nil || code != 250 {
			q.stop.Store(true)
			return fmt.Errorf("wire-data: final reply %d: %v", code, err)
		}
		q.done.Add(1)
		if !more {
			return nil
		}
	}
}

func (r *wireStream) runChunking(q *quota) error {
	// credits counts the transactions that may be written now; the
	// reader returns them in batches (when it has parsed every reply it
	// holds and is about to wait), and wakes the writer through kick.
	var credits atomic.Int64
	credits.Store(int64(r.window))
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	// total counts the messages written (stored before the write, so the
	// reader never sees a reply before its message is counted). After
	// the last message the writer sends NOOP: the reply past
	// perTx*total is the NOOP's, and the run is over.
	var total atomic.Int64
	werr := make(chan error, 1)
	go func() {
		err := r.writeChunking(q, &credits, kick, done, &total)
		if err == nil {
			_, err = r.conn.Write([]byte("NOOP\r\n"))
		}
		if err != nil {
			// Unblock the reader: no NOOP reply will come.
			r.conn.SetDeadline(time.Unix(1, 0))
		}
		werr <- err
	}()
	var replies, answered int64
	var rerr error
	for {
		if answered > 0 && r.br.Buffered() == 0 {
			q.done.Add(answered)
			credits.Add(answered)
			answered = 0
			select {
			case kick <- struct{}{}:
			default:
			}
		}
		code, err := replyCode(r.br)
		if err != nil {
			rerr = err
			break
		}
		replies++
		per := int64(r.perTx)
		if replies > per*total.Load() {
			break // the NOOP's
		}
		if code/100 != 2 {
			rerr = fmt.Errorf("wire-chunking: reply %d", code)
			break
		}
		if replies%per == 0 {
			answered++
		}
	}
	q.done.Add(answered)
	if rerr != nil {
		q.stop.Store(true)
		// The writer may be blocked writing while nothing reads.
		r.conn.SetDeadline(time.Unix(1, 0))
	}
	close(done)
	if err := <-werr; rerr == nil {
		return err
	}
	return rerr
}

// writeChunking writes transactions while the quota and the window
// allow, all that the window allows in one write.
func (r *wireStream) writeChunking(q *quota, credits *atomic.Int64, kick, done <-chan struct{}, total *atomic.Int64) error {
	var n int64
	for {
		k := credits.Load()
		if k == 0 {
			select {
			case <-kick:
				continue
			case <-done:
				return nil
			}
		}
		claimed := int64(0)
		for claimed < k && q.claim() {
			claimed++
		}
		if claimed == 0 {
			return nil
		}
		credits.Add(-claimed)
		n += claimed
		total.Store(n)
		if _, err := r.conn.Write(r.ahead[:claimed*int64(len(r.tx))]); err != nil {
			return err
		}
	}
}

func (r *wireStream) Close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	r.conn.Write([]byte("QUIT\r\n"))
	io.Copy(io.Discard, r.br)
	r.conn.Close()
}

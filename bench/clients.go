package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	netsmtp "net/smtp"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// The clients compared, by the names the JSON output uses.
const (
	clientSender       = "smtpkit-sender" // the actor pool
	clientCore         = "smtpkit-client" // smtp.Client driven directly
	clientNetSMTP      = "net/smtp"
	clientGoSMTP       = "go-smtp"
	clientSource       = "smtp-source"   // Postfix's load generator, exec'd
	clientWireChunking = "wire-chunking" // pre-rendered BDAT stream, W in flight
	clientWireData     = "wire-data"     // RFC 2920 DATA grouping, one round trip per message
)

// The sinks, by the names the JSON output uses.
const (
	sinkGoSMTP   = "go-smtp"
	sinkSMTPSink = "smtp-sink"
	sinkPostfix  = "postfix"
	// sinkGoSMTPTLS is the go-smtp server with implicit TLS and AUTH
	// required (benchUser, benchPass): the latency and scale sections'
	// production-like sink.
	sinkGoSMTPTLS = "go-smtp-tls"
)

// The account of sinkGoSMTPTLS.
const (
	benchUser = "bench"
	benchPass = "bench-password"
)

// Envelope of every benchmark message. Postfix accepts @localhost
// without AUTH.
const (
	mailFrom = "bench@localhost"
	rcptTo   = "sink@localhost"
)

var rcpts = []string{rcptTo}

// message is the benchmark message: 1,100 octets, CRLF line ends, no
// line starting with a dot (so it is its own DATA form).
var message = makeMessage(1100)

func makeMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: Bench <" + mailFrom + ">\r\n")
	b.WriteString("To: Sink <" + rcptTo + ">\r\n")
	b.WriteString("Subject: smtpkit benchmark message\r\n")
	b.WriteString("Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n")
	b.WriteString("Message-ID: <bench.0@localhost>\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n")
	const line = "The quick brown fox jumps over the lazy dog, and the dog does not mind. "
	for b.Len() < size {
		n := min(len(line), size-b.Len()-2)
		if n <= 0 {
			b.Truncate(size - 2)
			n = 0
		}
		b.WriteString(line[:n])
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// scenario is one client configuration.
type scenario struct {
	Client string
	Conns  int // connections (sessions)
	Window int // transactions in flight per connection; 1 = none
}

func (s scenario) String() string {
	return fmt.Sprintf("%s/conns=%d/window=%d", s.Client, s.Conns, s.Window)
}

// label is the scenario's short name in tables and the chart.
func (s scenario) label() string {
	switch s.Client {
	case clientSender:
		return fmt.Sprintf("%s c%d w%d", s.Client, s.Conns, s.Window)
	case clientCore:
		if s.Window <= 1 {
			return s.Client + " Send"
		}
		return fmt.Sprintf("%s WriteTx/ReadTx w%d", s.Client, s.Window)
	case clientSource:
		return fmt.Sprintf("%s s%d", s.Client, s.Conns)
	case clientWireChunking:
		return fmt.Sprintf("%s w%d", s.Client, s.Window)
	}
	return s.Client
}

// supports reports whether the client can run against the sink.
func (s scenario) supports(sink string) bool {
	switch s.Client {
	case clientWireChunking:
		return sink != sinkSMTPSink // smtp-sink has no CHUNKING
	case clientSource:
		return sink == sinkSMTPSink
	}
	return true
}

// quota hands out the messages a run may send and counts those done.
type quota struct {
	max     int64        // messages that may be started
	started atomic.Int64 // claimed so far
	done    atomic.Int64 // accepted by the server
	stop    atomic.Bool  // no more claims
}

func newQuota(max int64) *quota { return &quota{max: max} }

// claim takes one message to send, or reports that the run is over.
func (q *quota) claim() bool {
	if q.stop.Load() {
		return false
	}
	if q.started.Add(1) > q.max {
		q.started.Add(-1)
		return false
	}
	return true
}

// runner is a connected client. run sends messages while the quota
// allows and returns when every message it started is answered; it may
// be called again. The first failed message ends the run with an error.
type runner interface {
	run(ctx context.Context, q *quota) error
	close()
}

// newRunner connects the client of sc to addr (the sink, or a delay
// line in front of it).
func newRunner(ctx context.Context, sc scenario, addr string) (runner, error) {
	switch sc.Client {
	case clientSender:
		return newSenderRunner(sc, addr)
	case clientCore:
		return newCoreRunner(ctx, sc, addr)
	case clientNetSMTP:
		return newNetSMTPRunner(ctx, addr)
	case clientGoSMTP:
		return newGoSMTPRunner(ctx, addr)
	case clientWireChunking:
		return newWireRunner(ctx, addr, true, sc.Window)
	case clientWireData:
		return newWireRunner(ctx, addr, false, 1)
	}
	return nil, fmt.Errorf("no runner for client %q", sc.Client)
}

func dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, nil
}

// ---- smtpkit sender: the actor pool

type senderRunner struct {
	s       *sender.Sender
	callers int
	msg     []byte   // the message; the benchmark's when nil
	to      []string // its recipients; rcpts when nil
	partial bool     // Envelope.AllowPartial
}

func newSenderRunner(sc scenario, addr string) (*senderRunner, error) {
	s, err := sender.New(sender.Config{
		Addr:        addr,
		Security:    sender.InsecurePlaintext,
		LocalName:   "localhost",
		MaxConns:    sc.Conns,
		MaxInFlight: sc.Window,
		IdleTimeout: 10 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	// Twice as many callers as the windows hold (and one more per
	// connection): a caller whose message was just answered needs a
	// moment to hand in its next one, and a window should not wait for
	// it. (With only Conns*Window callers, the sender at RTT 10 ms and
	// W=32 loses 10-15 %: see docs/benchmarks.md.)
	return &senderRunner{s: s, callers: 2*sc.Conns*sc.Window + sc.Conns}, nil
}

func (r *senderRunner) run(ctx context.Context, q *quota) error {
	return callersRun(q, r.callers, func() func() error {
		msg, to := r.msg, r.to
		if msg == nil {
			msg, to = message, rcpts
		}
		body := bytes.NewReader(msg)
		env := smtp.Envelope{From: mailFrom, To: to, AllowPartial: r.partial}
		return func() error {
			body.Reset(msg)
			_, err := r.s.Send(ctx, env, body)
			return err
		}
	})
}

// callersRun runs callers goroutines, each sending one message after
// another with its own function from newSend while the quota allows,
// and returns the first error (which ends the run).
func callersRun(q *quota, callers int, newSend func() func() error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send := newSend()
			for q.claim() {
				if err := send(); err != nil {
					once.Do(func() { first = err })
					q.stop.Store(true)
					return
				}
				q.done.Add(1)
			}
		}()
	}
	wg.Wait()
	return first
}

func (r *senderRunner) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r.s.Shutdown(ctx) != nil {
		r.s.Close()
	}
}

// ---- smtp.Client driven directly: Send, or WriteTx/ReadTx with a window

type coreRunner struct {
	c      *smtp.Client
	window int
	bodies []*bytes.Reader
	ring   []*smtp.Tx
}

func newCoreRunner(ctx context.Context, sc scenario, addr string) (*coreRunner, error) {
	t, err := transport.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c, err := smtp.Connect(ctx, t, "localhost", &smtp.Options{InsecureAllowPlaintext: true})
	if err != nil {
		return nil, err
	}
	w := max(sc.Window, 1)
	r := &coreRunner{c: c, window: w, ring: make([]*smtp.Tx, w)}
	for range w + 1 {
		r.bodies = append(r.bodies, bytes.NewReader(message))
	}
	return r, nil
}

func (r *coreRunner) run(ctx context.Context, q *quota) error {
	env := smtp.Envelope{From: mailFrom, To: rcpts}
	if r.window <= 1 {
		body := r.bodies[0]
		for q.claim() {
			body.Reset(message)
			if _, err := r.c.Send(ctx, env, body); err != nil {
				q.stop.Store(true)
				return err
			}
			q.done.Add(1)
		}
		return nil
	}
	// A ring of the transactions in flight, oldest at head.
	head, n, seq := 0, 0, 0
	var first error
	for {
		for n < r.window && first == nil && q.claim() {
			body := r.bodies[seq%len(r.bodies)]
			seq++
			body.Reset(message)
			tx, err := r.c.WriteTx(ctx, env, body)
			if err != nil {
				first = err
				q.stop.Store(true)
				break
			}
			r.ring[(head+n)%r.window] = tx
			n++
		}
		if n == 0 {
			return first
		}
		tx := r.ring[head]
		r.ring[head] = nil
		head = (head + 1) % r.window
		n--
		if _, err := r.c.ReadTx(ctx, tx); err != nil && first == nil {
			first = err
			q.stop.Store(true)
		} else if err == nil {
			q.done.Add(1)
		}
	}
}

func (r *coreRunner) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r.c.Quit(ctx) != nil {
		r.c.Close()
	}
}

// ---- net/smtp, one reused connection

type netSMTPRunner struct {
	c    *netsmtp.Client
	conn net.Conn
}

func newNetSMTPRunner(ctx context.Context, addr string) (*netSMTPRunner, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	c, err := netsmtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, err
	}
	return &netSMTPRunner{c: c, conn: conn}, nil
}

func (r *netSMTPRunner) run(ctx context.Context, q *quota) error {
	return oneAtATime(q, func() error { return netSMTPSend(r.c, writeMessage) })
}

// netSMTPSend sends one message on c, its body written by body.
func netSMTPSend(c *netsmtp.Client, body func(io.Writer) error) error {
	if err := c.Mail(mailFrom); err != nil {
		return err
	}
	if err := c.Rcpt(rcptTo); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if err := body(w); err != nil {
		return err
	}
	return w.Close()
}

// writeMessage writes the benchmark's message.
func writeMessage(w io.Writer) error {
	_, err := w.Write(message)
	return err
}

// oneAtATime runs send for each message the quota grants, until one
// fails.
func oneAtATime(q *quota, send func() error) error {
	for q.claim() {
		if err := send(); err != nil {
			q.stop.Store(true)
			return err
		}
		q.done.Add(1)
	}
	return nil
}

func (r *netSMTPRunner) close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if r.c.Quit() != nil {
		r.c.Close()
	}
}

// ---- emersion/go-smtp client, one reused connection

type goSMTPRunner struct {
	c    *gosmtp.Client
	conn net.Conn
}

func newGoSMTPRunner(ctx context.Context, addr string) (*goSMTPRunner, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c := gosmtp.NewClient(conn)
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, err
	}
	return &goSMTPRunner{c: c, conn: conn}, nil
}

func (r *goSMTPRunner) run(ctx context.Context, q *quota) error {
	return oneAtATime(q, r.one)
}

func (r *goSMTPRunner) one() error {
	if err := r.c.Mail(mailFrom, nil); err != nil {
		return err
	}
	if err := r.c.Rcpt(rcptTo, nil); err != nil {
		return err
	}
	w, err := r.c.Data()
	if err != nil {
		return err
	}
	if err := writeMessage(w); err != nil {
		return err
	}
	return w.Close()
}

func (r *goSMTPRunner) close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if r.c.Quit() != nil {
		r.c.Close()
	}
}

// ---- the wire limits: clients written only for the benchmark

// wireRunner writes pre-rendered transactions on one connection. With
// chunking, a writer goroutine keeps up to window transactions (MAIL,
// RCPT, BDAT n LAST and the body, in one write when several are due)
// ahead of a reader goroutine that counts replies: the most a pipelining
// client can get through the sink. Without, it groups as RFC 2920
// allows with DATA: the body and final dot of one message leave in the
// same write as the next message's MAIL, RCPT and DATA, one round trip
// per message.
type wireRunner struct {
	conn     net.Conn
	br       *bufio.Reader
	chunking bool
	window   int
	tx       []byte // window pre-rendered BDAT transactions, back to back
	txLen    int
	envelope []byte // MAIL, RCPT, DATA
	bodyNext []byte // body, final dot, next MAIL, RCPT, DATA
	bodyEnd  []byte // body and final dot
	perTx    int    // replies per BDAT transaction: MAIL, each RCPT, BDAT
}

func newWireRunner(ctx context.Context, addr string, chunking bool, window int) (*wireRunner, error) {
	return newWireRunnerFor(ctx, addr, chunking, window, message, rcpts)
}

// newWireRunnerFor is newWireRunner for msg and the recipients to.
func newWireRunnerFor(ctx context.Context, addr string, chunking bool, window int, msg []byte, to []string) (*wireRunner, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	r := &wireRunner{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), chunking: chunking, window: max(window, 1)}
	caps, err := r.hello()
	if err != nil {
		conn.Close()
		return nil, err
	}
	if !strings.Contains(caps, "PIPELINING") {
		conn.Close()
		return nil, errors.New("wire client: the sink does not offer PIPELINING")
	}
	if chunking && !strings.Contains(caps, "CHUNKING") {
		conn.Close()
		return nil, errors.New("wire client: the sink does not offer CHUNKING")
	}
	env := "MAIL FROM:<" + mailFrom + ">\r\n"
	for _, rcpt := range to {
		env += "RCPT TO:<" + rcpt + ">\r\n"
	}
	r.perTx = 2 + len(to)
	one := append([]byte(env+"BDAT "+strconv.Itoa(len(msg))+" LAST\r\n"), msg...)
	r.txLen = len(one)
	r.tx = bytes.Repeat(one, r.window)
	r.envelope = []byte(env + "DATA\r\n")
	r.bodyEnd = append(append([]byte{}, msg...), ".\r\n"...)
	r.bodyNext = append(append([]byte{}, r.bodyEnd...), r.envelope...)
	return r, nil
}

// hello reads the greeting, sends EHLO and returns its reply text.
func (r *wireRunner) hello() (string, error) {
	if code, _, err := readReply(r.br); err != nil || code != 220 {
		return "", fmt.Errorf("wire client: greeting %d: %v", code, err)
	}
	if _, err := r.conn.Write([]byte("EHLO localhost\r\n")); err != nil {
		return "", err
	}
	code, text, err := readReply(r.br)
	if err != nil || code != 250 {
		return "", fmt.Errorf("wire client: EHLO %d: %v", code, err)
	}
	return strings.ToUpper(text), nil
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

func (r *wireRunner) run(ctx context.Context, q *quota) error {
	if dl, ok := ctx.Deadline(); ok {
		r.conn.SetDeadline(dl)
	}
	if r.chunking {
		return r.runChunking(q)
	}
	return r.runData(q)
}

func (r *wireRunner) runData(q *quota) error {
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

func (r *wireRunner) runChunking(q *quota) error {
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
func (r *wireRunner) writeChunking(q *quota, credits *atomic.Int64, kick, done <-chan struct{}, total *atomic.Int64) error {
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
		if _, err := r.conn.Write(r.tx[:claimed*int64(r.txLen)]); err != nil {
			return err
		}
	}
}

func (r *wireRunner) close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	r.conn.Write([]byte("QUIT\r\n"))
	io.Copy(io.Discard, r.br)
	r.conn.Close()
}

// ---- Postfix smtp-source, exec'd

// sourceRun runs smtp-source for n messages over sessions connections
// (each reusing its connection) and returns how long it took.
func sourceRun(ctx context.Context, path, addr string, sessions int, n int64) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, path, "-s", strconv.Itoa(sessions), "-m", strconv.FormatInt(n, 10),
		"-l", "980", "-d", "-f", mailFrom, "-t", rcptTo, "-M", "localhost", addr)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	el := time.Since(start)
	if err != nil {
		return el, fmt.Errorf("smtp-source: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return el, nil
}

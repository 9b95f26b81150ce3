package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// The clients, by the names -clients and the JSON output use.
const (
	clientSender        = "smtpkit-sender"         // the actor pool
	clientCore          = "smtpkit-client"         // smtp.Client driven directly
	clientCoreMutex     = "smtpkit-client mutex"   // one smtp.Client, the caller holding a sync.Mutex drives
	clientCoreHandoff   = "smtpkit-client handoff" // one smtp.Client handed to the longest waiting caller
	clientNetSMTP       = "net/smtp"               // one reused connection
	clientNetSMTPPerMsg = "net/smtp per message"   // as net/smtp.SendMail
	clientGoSMTP        = "go-smtp"
	clientGoMailDial    = "go-mail DialAndSend"
	clientGoMailReuse   = "go-mail reused client"
	clientNodemailer    = "nodemailer pool"
	clientSource        = "smtp-source"   // Postfix's load generator, exec'd
	clientWireChunking  = "wire-chunking" // the control: pre-rendered BDAT transactions
	clientWireData      = "wire-data"     // the control with DATA: RFC 2920 grouping, one round trip per message
)

// clientDefs registers every client, once.
var clientDefs = []clientDef{
	{name: clientSender, about: "sender.Sender, MaxConns C and MaxInFlight W", open: openSender,
		label:   func(s spec) string { return fmt.Sprintf("%s c%d w%d", s.Client, s.Conns, s.Window) },
		callers: func(s spec) int { return 2*s.Conns*s.Window + s.Conns }},
	{name: clientCore, about: "smtp.Client: Send, or WriteTx/ReadTx with a window", open: openCore,
		label: func(s spec) string {
			if s.Window <= 1 {
				return s.Client + " Send"
			}
			return fmt.Sprintf("%s WriteTx/ReadTx w%d", s.Client, s.Window)
		}},
	{name: clientCoreMutex, about: "one smtp.Client under a sync.Mutex", open: openCore},
	{name: clientCoreHandoff, about: "one smtp.Client handed to the longest waiting caller", open: openCore},
	{name: clientNetSMTP, about: "net/smtp, one reused connection", open: openNetSMTP},
	{name: clientNetSMTPPerMsg, about: "net/smtp, a connection per message", open: openNetSMTPPerMsg,
		callers: func(spec) int { return 64 }},
	{name: clientGoSMTP, about: "the emersion/go-smtp client, one reused connection", open: openGoSMTP},
	{name: clientGoMailDial, about: "go-mail DialAndSendWithContext per message", open: openGoMail,
		callers: func(spec) int { return 64 }},
	{name: clientGoMailReuse, about: "one go-mail client dialed once", open: openGoMail,
		callers: func(spec) int { return 4 }},
	{name: clientNodemailer, about: "nodemailer's SMTP pool, in Node", open: openNodemailer,
		label:   func(s spec) string { return fmt.Sprintf("%s c%d", s.Client, s.Conns) },
		callers: func(s spec) int { return 4 * s.Conns }},
	{name: clientSource, about: "Postfix smtp-source with C sessions", open: openSource,
		label: func(s spec) string { return fmt.Sprintf("%s s%d", s.Client, s.Conns) },
		sinks: func(sink string) bool { return sink == sinkSMTPSink }},
	{name: clientWireChunking, about: "the wire control with BDAT: W in flight on one connection, or a Send at once on the least busy of C", open: openWire,
		label: func(s spec) string {
			if s.Window > 1 {
				return fmt.Sprintf("%s w%d", s.Client, s.Window)
			}
			return fmt.Sprintf("%s c%d", s.Client, s.Conns)
		},
		// One pending Send per caller: 32 in flight per connection, as
		// smtpkit's window.
		callers: func(s spec) int {
			if s.Window > 1 {
				return 1
			}
			return 32 * max(s.Conns, 1)
		},
		sinks: func(sink string) bool { return sink != sinkSMTPSink }}, // smtp-sink has no CHUNKING
	{name: clientWireData, about: "the wire control with DATA: one round trip per message", open: openWire},
}

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

// ---- smtpkit's sender: the actor pool

// newSender is the one place a sender.Sender is made: conns sessions
// with window transactions in flight each (0 for the default) to t, and
// edit, when set, changes the rest (the scale section gates the dials).
func newSender(t target, conns, window int, edit func(*sender.Config)) (*sender.Sender, error) {
	c := sender.Config{Addr: t.addr, MaxConns: conns, MaxInFlight: window, IdleTimeout: 10 * time.Minute}
	if t.tls != nil {
		c.Security = sender.ImplicitTLS
		c.Options.TLSConfig = t.tls
		c.Credentials = func(context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: benchUser, Secret: benchPass}, nil
		}
	} else {
		c.Security = sender.InsecurePlaintext
	}
	if edit != nil {
		edit(&c)
	}
	return sender.New(c)
}

type senderClient struct {
	s   *sender.Sender
	env smtp.Envelope
	msg []byte
}

func openSender(_ context.Context, s spec, t target) (client, error) {
	snd, err := newSender(t, s.Conns, s.Window, nil)
	if err != nil {
		return nil, err
	}
	return newSenderClient(snd, t), nil
}

func newSenderClient(s *sender.Sender, t target) *senderClient {
	msg, to := t.payload()
	return &senderClient{s: s, msg: msg, env: smtp.Envelope{From: mailFrom, To: to, AllowPartial: t.partial}}
}

func (c *senderClient) Send(ctx context.Context) error {
	_, err := c.s.Send(ctx, c.env, bytes.NewReader(c.msg))
	return err
}

func (c *senderClient) newCaller() func(context.Context) error {
	body := bytes.NewReader(c.msg)
	return func(ctx context.Context) error {
		body.Reset(c.msg)
		_, err := c.s.Send(ctx, c.env, body)
		return err
	}
}

func (c *senderClient) sendBody(ctx context.Context, body io.Reader) error {
	_, err := c.s.Send(ctx, c.env, body)
	return err
}

// idle has the sender open n sessions and waits for them to be idle:
// concurrent sends make it dial, repeated until all n exist.
func (c *senderClient) idle(ctx context.Context, n int) error {
	for try := 0; c.s.Stats().Open < int64(n) && try < 50; try++ {
		var wg sync.WaitGroup
		var failed atomic.Value
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.s.Send(ctx, c.env, &bodyReader{data: c.msg}); err != nil {
					failed.Store(err)
				}
			}()
		}
		wg.Wait()
		if err, ok := failed.Load().(error); ok {
			return err
		}
	}
	for deadline := time.Now().Add(5 * time.Second); c.s.Stats().Idle < c.s.Stats().Open && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if open := c.s.Stats().Open; open != int64(n) {
		return fmt.Errorf("the sender opened %d sessions, not %d", open, n)
	}
	return nil
}

func (c *senderClient) Close() { closeGently(10*time.Second, c.s.Shutdown, c.s.Close) }

// closeGently ends a client with gently (Shutdown, QUIT) within d, and
// with abort when that fails.
func closeGently(d time.Duration, gently func(context.Context) error, abort func() error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if gently(ctx) != nil {
		abort()
	}
}

// ---- smtp.Client driven directly

// coreClient is one smtp.Client. Its Send is the caller's own (one
// caller), or taken under a mutex (clientCoreMutex: the caller drives,
// the next to ask may barge in), or handed in order (clientCoreHandoff:
// database/sql's rule, a released connection goes to the longest
// waiting request). Whoever drives uses the client's body reader.
type coreClient struct {
	c    *smtp.Client
	env  smtp.Envelope
	msg  []byte
	body *bytes.Reader
	kind string
	mu   sync.Mutex    // clientCoreMutex's lock
	tok  chan struct{} // clientCoreHandoff's token: holding it is driving c
}

// coreWindow keeps a window of transactions written ahead of their
// replies with WriteTx and ReadTx.
type coreWindow struct {
	*coreClient
	window int
	bodies []*bytes.Reader
	ring   []*smtp.Tx
}

func openCore(ctx context.Context, s spec, t target) (client, error) {
	tr, err := transport.Dial(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	c, err := smtp.Connect(ctx, tr, &smtp.Options{LocalName: "localhost", InsecureAllowPlaintext: true})
	if err != nil {
		return nil, err
	}
	msg, to := t.payload()
	cc := &coreClient{c: c, env: smtp.Envelope{From: mailFrom, To: to}, msg: msg, body: bytes.NewReader(msg), kind: s.Client, tok: make(chan struct{}, 1)}
	cc.tok <- struct{}{}
	if s.Window <= 1 || s.Client != clientCore {
		return cc, nil
	}
	w := &coreWindow{coreClient: cc, window: s.Window, ring: make([]*smtp.Tx, s.Window)}
	for range s.Window + 1 {
		w.bodies = append(w.bodies, bytes.NewReader(msg))
	}
	return w, nil
}

func (c *coreClient) Send(ctx context.Context) error {
	switch c.kind {
	case clientCoreMutex:
		c.mu.Lock()
		defer c.mu.Unlock()
	case clientCoreHandoff:
		// A channel's waiting receivers are served in order, and a
		// send hands the token straight to the first of them.
		select {
		case <-c.tok:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { c.tok <- struct{}{} }()
	}
	c.body.Reset(c.msg)
	_, err := c.c.Send(ctx, c.env, c.body)
	return err
}

func (c *coreClient) sendBody(ctx context.Context, body io.Reader) error {
	_, err := c.c.Send(ctx, c.env, body)
	return err
}

func (c *coreClient) Close() { closeGently(5*time.Second, c.c.Quit, c.c.Close) }

func (r *coreWindow) loop(ctx context.Context, q *quota) error {
	// A ring of the transactions in flight, oldest at head.
	head, n, seq := 0, 0, 0
	var first error
	for {
		for n < r.window && first == nil && q.claim() {
			body := r.bodies[seq%len(r.bodies)]
			seq++
			body.Reset(r.msg)
			tx, err := r.c.WriteTx(ctx, r.env, body)
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

// errNoSend is the Send of a client whose messages leave from another
// process's loop.
var errNoSend = errors.New("this client runs its loops in another process")

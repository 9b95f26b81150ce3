package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/internal/tlsconf"
	"github.com/smtpkit/smtpkit/transport"
)

// SessionState is where a session stands. The zero value is StateClosed.
type SessionState int

// The states of a session.
const (
	// StateClosed: the session ended (Quit, Close or a failure); every
	// call returns an [*Error] wrapping [ErrClosed].
	StateClosed SessionState = iota
	// StateReady: greeted and EHLO done, no transaction under way.
	StateReady
	// StateTransaction: transactions have been written whose replies
	// are not all read (see [Client.WriteTx] and [Client.ReadTx]).
	StateTransaction
)

// String returns the state's name.
func (s SessionState) String() string {
	switch s {
	case StateReady:
		return "ready"
	case StateTransaction:
		return "transaction"
	}
	return "closed"
}

// Client is one SMTP session on one transport. It has a write half
// ([Client.WriteTx], [Client.Flush], [Client.Reset], [Client.Noop],
// [Client.Quit], [Client.Login]) and a read half ([Client.ReadTx],
// [Client.ReadReplies]) that share the queue of replies the server owes.
// One goroutine may drive both in turn, as [Client.Send] does, or one
// goroutine may write while another reads: each half must be called from
// one goroutine at a time, and [Client.Close] may be called from any
// goroutine. The Client starts no goroutine of its own.
//
// Whoever needs a reply reads it: a write-half call waiting for a 354
// reads it itself when no read-half call is reading, and waits for the
// reader otherwise.
//
// Each call's ctx bounds its I/O. A ctx that has already ended when a
// call begins fails the call (an [*Error] wrapping the ctx's error) and
// leaves the session as it was. A ctx that ends while the call is
// blocked reading or writing interrupts that I/O, from another
// goroutine, through the transport's SetDeadline (which must be safe for
// that, as net.Conn's is), and the session is closed: a reply or command
// cut in the middle leaves nothing to continue from. The call returns an
// [*Error] of Kind KindIO wrapping the ctx's error; every transaction
// whose commit point had been written and whose reply had not been read
// then ends with an error wrapping [ErrOutcomeUnknown], and the others
// with the error that closed the session. A transport with
// SetReadDeadline and SetWriteDeadline (any net.Conn) gets separate
// deadlines for the two halves; on one with SetDeadline alone, the
// sooner of the two is in force.
type Client struct {
	// Set while the session opens (Connect, STARTTLS, Login), before
	// either half runs, and only read after.
	t          transport.Transport
	opts       Options
	local      string // EHLO name
	serverName string
	greeting   Reply
	caps       Capabilities
	secure     bool   // the transport is TLS
	buffered   bool   // the transport is a kernel socket (socketBuffered)
	authed     bool   // AUTH succeeded
	id         uint64 // audit session id
	dl         deadliner
	// evctx is the context whose values the session's own events (not
	// a transaction's) carry to AuditContext: the Connect call's.
	evctx context.Context

	// The write half: owned by the goroutine in a write-half call, which
	// holds wmu for the call.
	wmu     sync.Mutex
	w       *bufio.Writer
	cw      countingWriter
	scratch []byte     // command formatting
	mailBuf []byte     // MAIL FROM of the transaction being written
	body    bodyStream // the body being written (newBodyStream)
	wwatch  watcher    // the write half's context

	// The read half: owned by the goroutine that holds the read token
	// (reading, under mu).
	r      *bufio.Reader
	texts  interner // reply texts the server repeats
	rwatch watcher  // the read half's context

	mu sync.Mutex // guards the fields below and the reply side of every Tx
	// cond (on mu) is broadcast after each reply is given to its
	// transaction, when the read token is released, and when the session
	// closes.
	cond sync.Cond
	// reading is the read token: set while a goroutine reads from the
	// transport. readers counts the goroutines in ReadReplies: while one
	// is there, the write half leaves all reading to it.
	reading bool
	readers int
	// state is the SessionState: changed under mu (setStateLocked),
	// read with or without it (State), since both halves ask often.
	state atomic.Int32
	// closeErr is the first cause of the close.
	closeErr *Error
	// finished counts the transactions done (Tx.finish, under mu); read
	// without mu by the sender's reader, to skip looking for answers
	// after a reply that finished none.
	finished atomic.Uint64
	// closing is the 421 with which the server announced it is closing
	// the session, while the replies still owed to committed transactions
	// are read (see beginClosing); nil otherwise.
	closing *Error
	// wbroken is the write that failed while a reader was still owed
	// replies (see writeFailed): nothing more is written, and the reader
	// reads what the server sent before it went.
	wbroken *Error
	// pending lists the replies the server owes, in order; pendingBase is
	// its array from its start, reused whenever the queue is empty.
	pending     []pending
	pendingBase []pending
	// open is the last transaction whose commit point has not been
	// written yet (its body or its final BDAT waits on replies), or nil.
	open *Tx
	// needReset asks for an RSET before the next MAIL.
	needReset bool
	// replyMax is the longest transaction reply read on the session
	// (in octets, as replyOctets counts them), and chunkReplySeen is set
	// once a BDAT chunk's reply has been read: together they size the
	// replies a transaction may leave owed (see owedReplyEstimate).
	replyMax       int
	chunkReplySeen bool
	// lastActive is when the last reply was read; an idle session is
	// probed for an unsolicited 421 before it is used again.
	lastActive time.Time
	// heard is when the server last answered, or when a command was
	// written while nothing was owed (see silent); unix nanoseconds.
	heard atomic.Int64
	// closeT is set when the transport must be closed once mu is
	// released (see unlock); tClosed once it has been.
	closeT, tClosed bool

	// evmu guards the audit events waiting to be handed to the hook, in
	// order, outside mu (see audit).
	evmu     sync.Mutex
	evq      []queuedEvent
	draining bool
}

// countingWriter counts the octets handed to the transport, so the
// client knows whether a commit point may have left. handed is raised to
// the end of each Write before the Write starts, since its octets may
// reach the server (and the server answer, or hang up, as the reader
// sees) before the Write returns; once it returns, n is what the
// transport accepted, and handed comes back to n if it failed. Both are
// written by the write half and read by either.
type countingWriter struct {
	w      io.Writer
	n      atomic.Int64
	handed atomic.Int64
	// stop is set once the server announced it is closing the session
	// (a 421): what is written from then on is dropped, and not counted.
	stop atomic.Bool
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	if cw.stop.Load() {
		return len(p), nil
	}
	cw.handed.Add(int64(len(p)))
	n, err := cw.w.Write(p)
	if err != nil && n < len(p) && errors.Is(err, transport.ErrMaybeWritten) {
		// The transport handed the octets over and cannot say whether
		// they left: count them as written, so a commit point among
		// them is taken as possibly delivered.
		n = len(p)
	}
	cw.n.Add(int64(n))
	if n < len(p) {
		cw.handed.Store(cw.n.Load())
	}
	return n, err
}

type replyKind uint8

const (
	kMail replyKind = iota
	kRcpt
	kData  // the 354 (or refusal) after DATA
	kChunk // a non-final BDAT chunk
	kFinal // the reply after the final dot or BDAT ... LAST
	kReset // RSET
	kCmd   // a command outside transactions (EHLO, AUTH, NOOP, QUIT...)
)

// pending is one reply the server owes.
type pending struct {
	tx   *Tx // nil for an RSET that belongs to no transaction, or a kCmd
	kind replyKind
	idx  int // recipient index for kRcpt
	// end is the output offset just past the command: the reply's wait
	// starts once the command has left (see armRead).
	end int64
	// res receives a kCmd's reply.
	res   *cmdResult
	cmdOp Op // a kCmd's step
}

// cmdResult is where a command outside transactions gets its reply.
type cmdResult struct {
	rep  Reply
	done bool
}

// Before a transaction is written on a session with nothing in flight,
// the client looks for a 421 or a close the server sent while the
// session sat unused (see checkIdle). idlePeekAfter is how long it must
// have sat; idleProbeAfter is how long before, where the socket cannot be
// asked without reading (see peekSocket), it tries a read of 2 ms.
const (
	idlePeekAfter  = time.Millisecond
	idleProbeAfter = time.Second
)

// peekResult is what peekSocket learnt.
type peekResult int

const (
	peekUnknown   peekResult = iota // the socket cannot be asked
	peekNothing                     // nothing to read, and no close
	peekSomething                   // bytes, a close or an error to read
)

// Connect starts a session on t, which must already be secure (implicit
// TLS, port 465): it reads the greeting and sends EHLO with
// opts.LocalName. A transport that is not TLS (one without a
// ConnectionState method) is refused unless opts.InsecureAllowPlaintext
// is set. opts may be nil. On failure t is closed and the error is an
// [*Error] with Op greeting or EHLO.
func Connect(ctx context.Context, t transport.Transport, opts *Options) (*Client, error) {
	c, err := newClient(t, opts)
	if err != nil {
		t.Close()
		return nil, err
	}
	if cs, ok := t.(interface{ ConnectionState() tls.ConnectionState }); ok {
		c.secure = true
		if c.serverName == "" {
			c.serverName = cs.ConnectionState().ServerName
		}
	} else if !c.opts.InsecureAllowPlaintext {
		t.Close()
		return nil, inputError(OpGreeting, "transport is not TLS; use ConnectStartTLS, or Options.InsecureAllowPlaintext for a loopback test sink")
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.evctx = context.WithoutCancel(ctx)
	c.watch(ctx)
	defer c.endWatch()
	if err := c.hello(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// ConnectStartTLS starts a session on a plain transport and upgrades it
// with STARTTLS (RFC 3207): greeting, EHLO (with opts.LocalName),
// STARTTLS, TLS handshake with opts.TLSConfig, EHLO again. The
// capabilities from before TLS are discarded. A server that does not
// offer STARTTLS, refuses it, or sends bytes after its 220 (response
// injection) ends the session with an error: there is never a fallback
// to plaintext. opts may be nil, and so may opts.TLSConfig (the system
// roots). The certificate is checked against opts.TLSConfig.ServerName
// or, when that is empty, the peer's IP address: set ServerName to the
// host name you dialed. TLS 1.2 is the floor.
func ConnectStartTLS(ctx context.Context, t transport.StartTLSCapable, opts *Options) (*Client, error) {
	c, err := newClient(t, opts)
	if err != nil {
		t.Close()
		return nil, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.evctx = context.WithoutCancel(ctx)
	c.watch(ctx)
	defer c.endWatch()
	if err := c.hello(ctx); err != nil {
		return nil, err
	}
	if !c.caps.StartTLS {
		return nil, c.fail(ctx, &Error{Op: OpSTARTTLS, Kind: KindProtocol, Message: "server does not offer STARTTLS; refusing to continue in plaintext", Err: ErrStartTLSNotOffered})
	}
	rep, err := c.cmd(ctx, OpSTARTTLS, c.opts.Timeouts.Command, "STARTTLS\r\n")
	if err != nil {
		return nil, err
	}
	if rep.Code != 220 {
		return nil, c.fail(ctx, replyError(OpSTARTTLS, &rep))
	}
	if c.r.Buffered() > 0 {
		return nil, c.fail(ctx, protoError(OpSTARTTLS, "server sent %d octets after its 220 before the TLS handshake (response injection); aborting", c.r.Buffered()))
	}
	name := c.serverName
	if name == "" {
		if rc, ok := t.(interface{ RemoteAddr() net.Addr }); ok && rc.RemoteAddr() != nil {
			name = rc.RemoteAddr().String()
		}
	}
	cfg := tlsconf.Client(c.opts.TLSConfig, name)
	c.setWriteDeadline(ctx, c.opts.Timeouts.Command)
	c.setReadDeadline(ctx, c.opts.Timeouts.Command)
	tt, err := t.UpgradeTLS(ctx, cfg)
	if err != nil {
		// A certificate error quotes the server's names: filtered.
		return nil, c.fail(ctx, ioError(ctx, OpSTARTTLS, c.opts.Redactor.WrapError(err)))
	}
	c.t = tt
	c.dl.reset(tt)
	c.cw.w = tt
	c.r.Reset(tt)
	c.secure = true
	c.serverName = cfg.ServerName
	c.caps = Capabilities{}
	// The greeting was read in plaintext, where anyone on the path could
	// have written it: from here on the session's greeting is the reply
	// to the EHLO sent over TLS (see Greeting).
	c.greeting = Reply{}
	ev := Event{Type: EventTLS, Op: OpSTARTTLS}
	if cs, ok := tt.(interface{ ConnectionState() tls.ConnectionState }); ok {
		ev.TLSVersion = tls.VersionName(cs.ConnectionState().Version)
	}
	c.audit(ev)
	if err := c.ehlo(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func newClient(t transport.Transport, opts *Options) (*Client, error) {
	c := &Client{t: t}
	c.setStateLocked(StateReady)
	if opts != nil {
		c.opts = *opts
	}
	c.local = c.opts.LocalName
	if c.local == "" {
		c.local = defaultLocalName
	}
	if p := validateHostname(c.local); p != "" {
		return nil, inputError(OpEHLO, "%s", p)
	}
	c.cond.L = &c.mu
	c.texts.share(c.opts.Redactor)
	c.opts.Timeouts = c.opts.Timeouts.withDefaults()
	c.id = sessionSeq.Add(1)
	if c.opts.TLSConfig != nil {
		c.serverName = c.opts.TLSConfig.ServerName
	}
	c.dl.reset(t)
	c.buffered = socketBuffered(t)
	c.cw.w = t
	c.r = bufio.NewReaderSize(t, 4096)
	c.w = bufio.NewWriterSize(&c.cw, 4096)
	return c, nil
}

// sessionSeq numbers sessions for audit events.
var sessionSeq atomic.Uint64

// hello reads the greeting and sends EHLO.
func (c *Client) hello(ctx context.Context) error {
	c.audit(Event{Type: EventConnect, Op: OpGreeting})
	if cs, ok := c.t.(interface{ ConnectionState() tls.ConnectionState }); ok {
		// Implicit TLS: the handshake happened before the greeting.
		c.audit(Event{Type: EventTLS, Op: OpGreeting, TLSVersion: tls.VersionName(cs.ConnectionState().Version)})
	}
	c.rwatch.watch(ctx, &c.dl, &c.dl.r)
	c.setReadDeadline(ctx, c.opts.Timeouts.Greeting)
	rep, err := readReplyIn(c.r, OpGreeting, false, &c.texts)
	if err != nil {
		return c.fail(ctx, ioError(ctx, OpGreeting, err))
	}
	c.greeting = rep
	c.audit(Event{Type: EventGreeting, Op: OpGreeting, Code: rep.Code})
	if rep.Code != 220 {
		return c.fail(ctx, replyError(OpGreeting, &rep))
	}
	if c.r.Buffered() > 0 {
		return c.fail(ctx, protoError(OpGreeting, "server sent %d octets after its greeting, before EHLO was written", c.r.Buffered()))
	}
	return c.ehlo(ctx)
}

// ehlo sends EHLO, falling back to HELO for a server that does not know
// it, and records the capabilities.
func (c *Client) ehlo(ctx context.Context) error {
	rep, err := c.cmd(ctx, OpEHLO, c.opts.Timeouts.Command, "EHLO "+c.local+"\r\n")
	if err != nil {
		return err
	}
	if rep.Code == 500 || rep.Code == 502 {
		rep, err = c.cmd(ctx, OpEHLO, c.opts.Timeouts.Command, "HELO "+c.local+"\r\n")
		if err != nil {
			return err
		}
		rep.Lines = rep.Lines[:1]
	}
	if rep.Code != 250 {
		return c.fail(ctx, replyError(OpEHLO, &rep))
	}
	c.caps = parseEHLO(rep.Lines)
	if c.secure && c.greeting.Code == 0 {
		c.greeting = rep
	}
	ext := make([]string, 0, len(c.caps.Extensions))
	for k := range c.caps.Extensions {
		ext = append(ext, k)
	}
	slices.Sort(ext)
	c.audit(Event{Type: EventEHLO, Op: OpEHLO, Code: rep.Code, Extensions: ext})
	return nil
}

// cmd writes one command outside transactions, flushes, and waits for
// its reply (read by this goroutine, or by a concurrent reader). A
// transport or protocol error closes the session; a 421 reply too, and
// is returned as the error. A reply that arrives before the command was
// written (bytes already buffered once its reply is read, with nothing
// else owed) is a protocol error: the server is answering commands it
// has not seen.
func (c *Client) cmd(ctx context.Context, op Op, timeout time.Duration, line string) (Reply, error) {
	res := &cmdResult{}
	c.mu.Lock()
	if c.State() == StateClosed || c.closing != nil {
		c.mu.Unlock()
		return Reply{}, c.closedError(op)
	}
	c.setWriteDeadline(ctx, timeout)
	c.w.WriteString(line)
	c.pushLocked(nil, kCmd, 0, res, op, 0)
	c.unlock()
	c.flush(ctx, op)
	c.await(ctx, func() bool { return res.done })
	c.mu.Lock()
	cause := c.closeErr
	c.mu.Unlock()
	switch {
	case !res.done && cause != nil:
		return Reply{}, cause
	case !res.done:
		return Reply{}, c.closedError(op)
	case res.rep.Code == 421 && cause != nil:
		return res.rep, cause
	}
	return res.rep, nil
}

// watch arranges for ctx's cancellation to interrupt the write half's
// blocked I/O (see watcher). On a transport with one deadline for both
// halves, the read half's watcher, when nobody holds the read token, is
// disarmed too: it may still hold an earlier call's context, whose end
// (after that call returned) would set the shared deadline in the past
// under this call's writes. This call's reads arm their own.
func (c *Client) watch(ctx context.Context) {
	c.wwatch.watch(ctx, &c.dl, &c.dl.w)
	if c.dl.rw != nil {
		return
	}
	c.mu.Lock()
	free := !c.reading && c.readers == 0
	if free {
		c.reading = true
	}
	c.mu.Unlock()
	if free {
		if c.rwatch.unwatch() {
			c.dl.uninterrupt(&c.dl.r)
		}
		c.mu.Lock()
		c.reading = false
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// endWatch disarms the contexts of a call that will not be repeated with
// them (Connect, Login: no other goroutine uses the client then), so
// that their end, once the call has returned, does not reach later I/O.
func (c *Client) endWatch() {
	if c.wwatch.unwatch() {
		c.dl.uninterrupt(&c.dl.w)
	}
	if c.rwatch.unwatch() {
		c.dl.uninterrupt(&c.dl.r)
	}
}

// watcher arranges for a context's cancellation to interrupt blocked
// I/O. The arrangement stays armed for the next call with the same
// context (a caller that pipelines uses one context for many calls;
// re-arming per call cost allocations and a quarter of the client's
// time) and is replaced when another context comes. A cancellation sets
// a past deadline for its half (for both on a transport with SetDeadline
// alone): a session whose I/O is cut in the middle is closed. Each half
// owns its watcher: the write half's is owned by the goroutine in a
// write-half call, the read half's by the holder of the read token.
type watcher struct {
	ctx  context.Context
	stop func() bool
	done chan struct{} // receives once from each AfterFunc that ran
}

func (w *watcher) watch(ctx context.Context, dl *deadliner, which *time.Time) {
	if ctx == w.ctx || w.ctx != nil && ctx.Done() == w.ctx.Done() && ctx.Done() != nil {
		// The same cancellation (a context that only adds values to
		// the armed one): the arrangement holds.
		return
	}
	if w.unwatch() {
		// The old context ended between calls: its past deadline must
		// not fail this call.
		dl.uninterrupt(which)
	}
	if ctx.Done() == nil {
		return
	}
	if w.done == nil {
		w.done = make(chan struct{}, 1)
	}
	done := w.done
	w.stop = context.AfterFunc(ctx, func() {
		dl.interrupt(which)
		done <- struct{}{}
	})
	w.ctx = ctx
}

// unwatch disarms the armed context, if any, and reports whether its
// AfterFunc had run. If it has started, unwatch waits until the past
// deadline is set, so that it cannot land on a later call's I/O.
func (w *watcher) unwatch() (fired bool) {
	if w.stop == nil {
		return false
	}
	if !w.stop() {
		<-w.done
		fired = true
	}
	w.stop, w.ctx = nil, nil
	return fired
}

// Flush is a write-half call that writes what WriteTx left buffered,
// first writing the body of the last transaction written if it only
// waited for replies (the 354 after DATA, or the RCPT replies of an
// all-or-nothing transaction), waiting for those replies to be read.
// A goroutine that writes while another reads ([Client.ReadReplies])
// must call Flush before it stops writing: until then the server may not
// have the commands it owes replies to. (ReadTx flushes by itself.) It
// returns an [*Error] wrapping [ErrClosed] on a closed session, and the
// ctx's error, with the session untouched, if ctx has already ended.
func (c *Client) Flush(ctx context.Context) error {
	_, err := c.flushOpen(ctx, func(*Tx) bool { return true })
	return err
}

// flushOpen is Flush, writing the open transaction's body or last chunk
// (advance) only if may, asked with mu held, says so. It reports
// whether a transaction is still open (only a write-half call opens
// one, but the read half drops it when the server closes with 421).
func (c *Client) flushOpen(ctx context.Context, may func(*Tx) bool) (open bool, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	closed, tx := c.State() == StateClosed, c.open
	adv := tx != nil && may(tx)
	c.unlock()
	if closed {
		return false, c.closedError(OpSend)
	}
	if err := ctxError(ctx, OpSend); err != nil {
		return tx != nil, err
	}
	c.watch(ctx)
	if adv {
		c.advance(ctx, tx)
	}
	c.flush(ctx, OpSend)
	if c.State() == StateClosed {
		return false, c.closedError(OpSend)
	}
	if tx == nil {
		return false, nil
	}
	c.mu.Lock()
	open = c.open != nil
	c.mu.Unlock()
	return open, nil
}

// setWriteDeadline sets the write half's deadline for the next step:
// ctx's deadline or now+timeout, whichever is sooner.
func (c *Client) setWriteDeadline(ctx context.Context, timeout time.Duration) {
	c.dl.set(&c.dl.w, ctx, timeout)
}

// setReadDeadline sets the read half's deadline for the next reply.
func (c *Client) setReadDeadline(ctx context.Context, timeout time.Duration) {
	c.dl.set(&c.dl.r, ctx, timeout)
}

// fail closes the session because of err (the first cause is kept),
// settles every pending transaction, and returns err.
func (c *Client) fail(_ context.Context, err *Error) *Error {
	c.mu.Lock()
	defer c.unlock()
	return c.failLocked(err)
}

// failLocked is fail with mu held; the transport is closed once mu is
// released (unlock).
func (c *Client) failLocked(err *Error) *Error {
	if c.State() == StateClosed {
		return err
	}
	c.setStateLocked(StateClosed)
	c.closeErr = err
	c.closeT = true
	c.auditLocked(Event{Type: EventSessionAborted, Op: err.Op, Code: err.Code, Enhanced: err.Enhanced, Kind: err.Kind, Error: err.Error()})
	for _, p := range c.pending {
		if p.tx != nil {
			p.tx.sessionLost(err)
		}
	}
	clear(c.pending)
	c.pending = c.pending[:0]
	if c.open != nil {
		c.open.sessionLost(err)
		c.open = nil
	}
	c.cond.Broadcast()
	return err
}

// unlock releases mu, then closes the transport if the session closed
// meanwhile, and hands the audit events to the hook: neither happens
// under mu.
func (c *Client) unlock() {
	closeT := c.closeT && !c.tClosed
	if closeT {
		c.tClosed = true
	}
	c.mu.Unlock()
	if closeT {
		c.t.Close()
	}
	c.drainEvents()
}

// closedError is returned by calls on a closed session.
func (c *Client) closedError(op Op) *Error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closedErrorLocked(op)
}

func (c *Client) closedErrorLocked(op Op) *Error {
	cause := c.closeErr
	if cause == nil {
		cause = c.closing
	}
	if cause == nil {
		cause = c.wbroken
	}
	e := &Error{Op: op, Kind: KindIO, Err: ErrClosed}
	if cause != nil {
		e.Message = "session closed after: " + cause.Error()
		e.Message = strings.TrimPrefix(e.Message, "smtp: ")
	}
	return e
}

// checkReady returns an error unless the session is open with no
// transaction under way.
func (c *Client) checkReady(op Op) *Error {
	switch c.State() {
	case StateClosed:
		return c.closedError(op)
	case StateTransaction:
		return inputError(op, "transactions are pending: read their replies with ReadTx first")
	}
	return nil
}

// State returns where the session stands.
func (c *Client) State() SessionState { return SessionState(c.state.Load()) }

// setStateLocked moves the session to s (mu held).
func (c *Client) setStateLocked(s SessionState) { c.state.Store(int32(s)) }

// Capabilities returns what the server advertised in its last EHLO
// reply (after STARTTLS, only what it advertised over TLS). The result
// is a copy: changing its Auth or Extensions changes nothing in the
// session.
func (c *Client) Capabilities() Capabilities {
	caps := c.caps
	caps.Auth = slices.Clone(c.caps.Auth)
	caps.Extensions = maps.Clone(c.caps.Extensions)
	return caps
}

// ctxError returns an error for a context that has already ended, so a
// call made with it fails without touching (and breaking) the session.
func ctxError(ctx context.Context, op Op) *Error {
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Kind: KindIO, Message: "context ended before the call", Err: context.Cause(ctx)}
	}
	return nil
}

// Greeting returns the server's greeting: on a session upgraded with
// STARTTLS, the reply to the EHLO sent over TLS, since the plaintext
// greeting could have been written by anyone on the path. The result is
// a copy.
func (c *Client) Greeting() Reply {
	g := c.greeting
	g.Lines = slices.Clone(g.Lines)
	return g
}

// IsTLS reports whether the session runs over TLS.
func (c *Client) IsTLS() bool { return c.secure }

// Err returns the error that closed the session, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr == nil {
		return nil
	}
	return c.closeErr
}

// silent reports how long the server has owed a reply without sending
// any: zero when nothing is owed. It is measured from the server's last
// reply, or from when a command was written while nothing was owed. It
// may be called from any goroutine (package sender uses it through
// smtpx.ClientSilent).
func (c *Client) silent() time.Duration {
	c.mu.Lock()
	owed := len(c.pending) > 0
	c.mu.Unlock()
	if !owed {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - c.heard.Load())
}

// Reset sends RSET, which abandons any transaction the server holds.
func (c *Client) Reset(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.checkReady(OpRSET); err != nil {
		return err
	}
	if err := ctxError(ctx, OpRSET); err != nil {
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpRSET, c.opts.Timeouts.Command, "RSET\r\n")
	if err != nil {
		return err
	}
	c.audit(Event{Type: EventReset, Op: OpRSET, Code: rep.Code})
	c.drainEvents()
	if rep.Code != 250 {
		return replyError(OpRSET, &rep)
	}
	c.mu.Lock()
	c.needReset = false
	c.mu.Unlock()
	return nil
}

// Noop sends NOOP: a cheap check that the session is alive.
func (c *Client) Noop(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.checkReady(OpNOOP); err != nil {
		return err
	}
	if err := ctxError(ctx, OpNOOP); err != nil {
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpNOOP, c.opts.Timeouts.Command, "NOOP\r\n")
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		return replyError(OpNOOP, &rep)
	}
	return nil
}

// Quit sends QUIT, reads the 221 and closes the transport. The session
// is closed whatever happens.
func (c *Client) Quit(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	defer c.wwatch.unwatch()
	if err := c.checkReady(OpQUIT); err != nil {
		c.Close()
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpQUIT, c.opts.Timeouts.Command, "QUIT\r\n")
	if err != nil {
		c.Close()
		return err
	}
	c.audit(Event{Type: EventQuit, Op: OpQUIT, Code: rep.Code})
	c.mu.Lock()
	if c.State() != StateClosed {
		c.setStateLocked(StateClosed)
		c.closeErr = &Error{Op: OpQUIT, Kind: KindIO, Message: "session ended by QUIT"}
		c.cond.Broadcast()
	}
	c.tClosed = true
	c.mu.Unlock()
	cerr := c.t.Close()
	c.drainEvents()
	if rep.Code != 221 {
		return replyError(OpQUIT, &rep)
	}
	if cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		return ioError(ctx, OpQUIT, cerr)
	}
	return nil
}

// Close closes the transport at once, without QUIT. Transactions whose
// replies were not read fail (with [ErrOutcomeUnknown] when their commit
// point was written). Close is idempotent, and may be called from any
// goroutine: a read or write blocked in another ends with the session.
func (c *Client) Close() error {
	c.fail(context.Background(), &Error{Op: OpQUIT, Kind: KindIO, Err: ErrClosed, Message: "closed by the client"})
	return nil
}

// queuedEvent is an event waiting for the hook, with the context whose
// values AuditContext gets (nil: none).
type queuedEvent struct {
	ctx context.Context
	e   Event
}

// audit hands an event to the hook, after those queued before it; it
// must not be called with mu held (see auditLocked).
func (c *Client) audit(e Event) {
	c.auditCtxLocked(c.evctx, e)
	c.drainEvents()
}

// auditLocked queues an event of the session for the hook; drainEvents
// (from unlock) hands the queue over, in order, from one goroutine at a
// time and never under mu.
func (c *Client) auditLocked(e Event) { c.auditCtxLocked(c.evctx, e) }

// auditCtxLocked queues an event whose AuditContext gets ctx's values.
func (c *Client) auditCtxLocked(ctx context.Context, e Event) {
	if c.opts.Audit == nil && c.opts.AuditContext == nil {
		return
	}
	e.Session = c.id
	c.evmu.Lock()
	c.evq = append(c.evq, queuedEvent{ctx, e})
	c.evmu.Unlock()
}

func (c *Client) drainEvents() {
	if c.opts.Audit == nil && c.opts.AuditContext == nil {
		return
	}
	c.evmu.Lock()
	if c.draining {
		c.evmu.Unlock()
		return
	}
	c.draining = true
	for len(c.evq) > 0 {
		q := c.evq
		c.evq = nil
		c.evmu.Unlock()
		for _, qe := range q {
			if h := c.opts.AuditContext; h != nil {
				ctx := qe.ctx
				if ctx == nil {
					ctx = context.Background()
				}
				h(ctx, qe.e)
			} else {
				c.opts.Audit(qe.e)
			}
		}
		c.evmu.Lock()
	}
	c.draining = false
	c.evmu.Unlock()
}

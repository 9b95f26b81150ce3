package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// Client is one SMTP session on one transport. Its methods must not be
// called concurrently, except [Client.Interrupt]: a Client belongs to one
// goroutine (the sender package gives each its own). It starts no
// goroutine; a context's
// cancellation reaches a blocked read or write through
// context.AfterFunc, which sets a past deadline on the transport (so a
// Transport's SetDeadline must be safe to call concurrently, as
// net.Conn's is).
type Client struct {
	t     transport.Transport
	cw    countingWriter
	r     *bufio.Reader
	w     *bufio.Writer
	opts  Options
	local string // EHLO name

	serverName string
	greeting   Reply
	caps       Capabilities
	secure     bool // the transport is TLS
	authed     bool // AUTH succeeded
	state      SessionState
	closeErr   *Error // the first cause of the close
	// closing is the 421 with which the server announced it is closing
	// the session, while the replies still owed to committed
	// transactions are read (see beginClosing); nil otherwise.
	closing *Error

	// pending lists the replies the server owes, in order.
	pending []pending
	// pendingBase is pending's array from its start, reused whenever
	// the queue is empty.
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
	id         uint64   // audit session id
	texts      interner // reply texts the server repeats
	scratch    []byte   // command formatting
	mailBuf    []byte   // MAIL FROM of the transaction being written (advance may use scratch meanwhile)
	// watchCtx is the context whose cancellation is armed to interrupt
	// I/O (see watch), watchStop disarms it, and watchDone receives once
	// from each AfterFunc that ran. At most one is armed at a time.
	watchCtx  context.Context
	watchStop func() bool
	watchDone chan struct{}
	// deadline is the transport deadline setDeadline last set, or zero
	// when another one may be in force (see setDeadline).
	deadline time.Time

	// interruptible is set while ReadTx waits for a reply: only then
	// does Interrupt end the wait (see waitArrived).
	interruptible bool
	// intMu guards the two fields below: Interrupt is the one method
	// called from another goroutine. inWait is set while the session
	// goroutine is blocked in waitArrived's read; interrupted is set by
	// Interrupt until a ReadTx takes it.
	intMu       sync.Mutex
	inWait      bool
	interrupted bool
}

// countingWriter counts the octets the transport accepted, so the
// client knows exactly whether a commit point has left.
type countingWriter struct {
	w io.Writer
	n int64
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n += int64(n)
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
	kAborted
)

type pending struct {
	tx   *Tx // nil for an RSET that belongs to no transaction
	kind replyKind
	idx  int // recipient index for kRcpt
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
// TLS, port 465): it reads the greeting and sends EHLO with localName. A
// transport that is not TLS (one without a ConnectionState method) is
// refused unless opts.InsecureAllowPlaintext is set. On failure t is
// closed and the error is an [*Error] with Op greeting or EHLO.
func Connect(ctx context.Context, t transport.Transport, localName string, opts *Options) (*Client, error) {
	c, err := newClient(t, localName, opts)
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
	c.watch(ctx)
	if err := c.hello(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// ConnectStartTLS starts a session on a plain transport and upgrades it
// with STARTTLS (RFC 3207): greeting, EHLO, STARTTLS, TLS handshake,
// EHLO again. The capabilities from before TLS are discarded. A server
// that does not offer STARTTLS, refuses it, or sends bytes after its 220
// (response injection) ends the session with an error: there is never a
// fallback to plaintext. tlsConfig may be nil; its ServerName defaults to
// opts.ServerName, then to the peer's IP address. TLS 1.2 is the floor.
func ConnectStartTLS(ctx context.Context, t transport.StartTLSCapable, localName string, tlsConfig *tls.Config, opts *Options) (*Client, error) {
	c, err := newClient(t, localName, opts)
	if err != nil {
		t.Close()
		return nil, err
	}
	c.watch(ctx)
	if err := c.hello(ctx); err != nil {
		return nil, err
	}
	if !c.caps.StartTLS {
		return nil, c.fail(ctx, protoError(OpSTARTTLS, "server does not offer STARTTLS; refusing to continue in plaintext"))
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
	if tlsConfig != nil && tlsConfig.ServerName != "" {
		name = tlsConfig.ServerName
	}
	if name == "" {
		if rc, ok := t.(interface{ RemoteAddr() net.Addr }); ok && rc.RemoteAddr() != nil {
			name = rc.RemoteAddr().String()
		}
	}
	cfg := transport.ClientTLSConfig(tlsConfig, name)
	c.setDeadline(ctx, c.opts.Timeouts.Command)
	tt, err := t.UpgradeTLS(ctx, cfg)
	if err != nil {
		// A certificate error quotes the server's names: filtered.
		return nil, c.fail(ctx, ioError(ctx, OpSTARTTLS, c.opts.Redactor.WrapError(err)))
	}
	c.t = tt
	c.deadline = time.Time{}
	c.cw.w = tt
	c.r.Reset(tt)
	c.secure = true
	c.serverName = cfg.ServerName
	c.caps = Capabilities{}
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

func newClient(t transport.Transport, localName string, opts *Options) (*Client, error) {
	if p := validateHostname(localName); p != "" {
		return nil, inputError(OpEHLO, "%s", p)
	}
	c := &Client{t: t, local: localName, state: StateReady}
	if opts != nil {
		c.opts = *opts
	}
	c.opts.Timeouts = c.opts.Timeouts.withDefaults()
	c.id = sessionSeq.Add(1)
	c.serverName = c.opts.ServerName
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
	c.setDeadline(ctx, c.opts.Timeouts.Greeting)
	rep, err := readReply(c.r, OpGreeting, false)
	if err != nil {
		return c.fail(ctx, ioError(ctx, OpGreeting, err))
	}
	c.greeting = rep
	c.audit(Event{Type: EventGreeting, Op: OpGreeting, Code: rep.Code})
	if rep.Code != 220 {
		return c.fail(ctx, replyError(OpGreeting, &rep))
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
	ext := make([]string, 0, len(c.caps.Extensions))
	for k := range c.caps.Extensions {
		ext = append(ext, k)
	}
	slices.Sort(ext)
	c.audit(Event{Type: EventEHLO, Op: OpEHLO, Code: rep.Code, Extensions: ext})
	return nil
}

// cmd writes one command, flushes, and reads its reply. A transport or
// protocol error closes the session; a 421 reply too, and is returned as
// the error.
func (c *Client) cmd(ctx context.Context, op Op, timeout time.Duration, line string) (Reply, error) {
	c.setDeadline(ctx, timeout)
	c.w.WriteString(line)
	if err := c.w.Flush(); err != nil {
		return Reply{}, c.fail(ctx, ioError(ctx, op, err))
	}
	rep, err := readReplyIn(c.r, op, c.caps.EnhancedStatusCodes, &c.texts)
	if err != nil {
		return rep, c.fail(ctx, ioError(ctx, op, err))
	}
	c.lastActive = time.Now()
	if rep.Code == 421 {
		return rep, c.fail(ctx, replyError(op, &rep))
	}
	return rep, nil
}

// watch arranges for ctx's cancellation to interrupt blocked I/O. The
// arrangement stays armed for the next call with the same context (a
// caller that pipelines uses one context for many calls; re-arming per
// call cost allocations and a quarter of the client's time) and is
// replaced when another context comes. A cancellation between calls sets
// a past deadline that the next call's setDeadline replaces.
func (c *Client) watch(ctx context.Context) {
	if ctx == c.watchCtx {
		return
	}
	c.unwatch()
	c.deadline = time.Time{} // the old context's AfterFunc may have set one
	if ctx.Done() == nil {
		return
	}
	t := c.t
	if c.watchDone == nil {
		c.watchDone = make(chan struct{}, 1)
	}
	done := c.watchDone
	c.watchStop = context.AfterFunc(ctx, func() {
		t.SetDeadline(time.Unix(1, 0))
		done <- struct{}{}
	})
	c.watchCtx = ctx
}

// unwatch disarms the armed context, if any. If its AfterFunc has
// started, it waits until the past deadline is set, so that it cannot
// land on a later call's I/O.
func (c *Client) unwatch() {
	if c.watchStop == nil {
		return
	}
	if !c.watchStop() {
		<-c.watchDone
	}
	c.watchStop, c.watchCtx = nil, nil
}

// Flush writes what WriteTx left buffered. ReadTx, and a WriteTx that
// must wait for a reply, flush by themselves.
func (c *Client) Flush(ctx context.Context) error {
	if c.state == StateClosed {
		return c.closedError(OpSend)
	}
	if err := ctxError(ctx, OpSend); err != nil {
		return err
	}
	c.watch(ctx)
	c.flush(ctx, OpSend)
	if c.state == StateClosed {
		return c.closedError(OpSend)
	}
	return nil
}

// setDeadline sets the transport deadline for the next step: the
// context's deadline or now+timeout, whichever is sooner.
//
// Moving a deadline re-arms two runtime timers, and a session sets one
// per reply: a deadline that would move later by less than
// timeout/deadlineSlack is left as it is, so a step may time out up to
// that much early (under 5 s of a 5 min timeout). A deadline that must
// come sooner is always set.
func (c *Client) setDeadline(ctx context.Context, timeout time.Duration) {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if ctx.Err() != nil {
		// The AfterFunc may have run before this deadline replaced its.
		c.t.SetDeadline(time.Unix(1, 0))
		c.deadline = time.Time{}
		return
	}
	if !c.deadline.IsZero() && !d.Before(c.deadline) && d.Sub(c.deadline) < timeout/deadlineSlack {
		return
	}
	c.t.SetDeadline(d)
	c.deadline = d
	if ctx.Err() != nil {
		c.t.SetDeadline(time.Unix(1, 0))
		c.deadline = time.Time{}
	}
}

// deadlineSlack: see setDeadline.
const deadlineSlack = 64

// fail closes the session because of err (the first cause is kept),
// settles every pending transaction, and returns err.
func (c *Client) fail(ctx context.Context, err *Error) *Error {
	if c.state == StateClosed {
		return err
	}
	c.state = StateClosed
	c.closeErr = err
	c.t.Close()
	c.unwatch()
	c.audit(Event{Type: EventSessionAborted, Op: err.Op, Code: err.Code, Enhanced: err.Enhanced, Kind: err.Kind, Error: err.Error()})
	for _, p := range c.pending {
		if p.tx != nil {
			p.tx.sessionLost(err)
		}
	}
	c.pending = c.pending[:0]
	if c.open != nil {
		c.open.sessionLost(err)
		c.open = nil
	}
	return err
}

// closedError is returned by calls on a closed session.
func (c *Client) closedError(op Op) *Error {
	e := &Error{Op: op, Kind: KindIO, Err: ErrClosed}
	cause := c.closeErr
	if cause == nil {
		cause = c.closing
	}
	if cause != nil {
		e.Message = "session closed after: " + cause.Error()
		e.Message = strings.TrimPrefix(e.Message, "smtp: ")
	}
	return e
}

// checkReady returns an error unless the session is open with no
// transaction under way.
func (c *Client) checkReady(op Op) *Error {
	switch c.state {
	case StateClosed:
		return c.closedError(op)
	case StateTransaction:
		return inputError(op, "transactions are pending: read their replies with ReadTx first")
	}
	return nil
}

// State returns where the session stands.
func (c *Client) State() SessionState { return c.state }

// Capabilities returns what the server advertised in its last EHLO
// reply (after STARTTLS, only what it advertised over TLS).
func (c *Client) Capabilities() Capabilities { return c.caps }

// ctxError returns an error for a context that has already ended, so a
// call made with it fails without touching (and breaking) the session.
func ctxError(ctx context.Context, op Op) *Error {
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Kind: KindIO, Message: "context ended before the call", Err: context.Cause(ctx)}
	}
	return nil
}

// Greeting returns the server's greeting reply.
func (c *Client) Greeting() Reply { return c.greeting }

// IsTLS reports whether the session runs over TLS.
func (c *Client) IsTLS() bool { return c.secure }

// Err returns the error that closed the session, or nil.
func (c *Client) Err() error {
	if c.closeErr == nil {
		return nil
	}
	return c.closeErr
}

// Reset sends RSET, which abandons any transaction the server holds.
func (c *Client) Reset(ctx context.Context) error {
	if err := c.checkReady(OpReset); err != nil {
		return err
	}
	if err := ctxError(ctx, OpReset); err != nil {
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpReset, c.opts.Timeouts.Command, "RSET\r\n")
	if err != nil {
		return err
	}
	c.audit(Event{Type: EventReset, Op: OpReset, Code: rep.Code})
	if rep.Code != 250 {
		return replyError(OpReset, &rep)
	}
	c.needReset = false
	return nil
}

// Noop sends NOOP: a cheap check that the session is alive.
func (c *Client) Noop(ctx context.Context) error {
	if err := c.checkReady(OpNoop); err != nil {
		return err
	}
	if err := ctxError(ctx, OpNoop); err != nil {
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpNoop, c.opts.Timeouts.Command, "NOOP\r\n")
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		return replyError(OpNoop, &rep)
	}
	return nil
}

// Quit sends QUIT, reads the 221 and closes the transport. The session
// is closed whatever happens.
func (c *Client) Quit(ctx context.Context) error {
	if err := c.checkReady(OpQuit); err != nil {
		if c.state != StateClosed {
			c.Close()
		}
		return err
	}
	c.watch(ctx)
	rep, err := c.cmd(ctx, OpQuit, c.opts.Timeouts.Command, "QUIT\r\n")
	if err != nil {
		return err
	}
	c.audit(Event{Type: EventQuit, Op: OpQuit, Code: rep.Code})
	c.state = StateClosed
	c.closeErr = &Error{Op: OpQuit, Kind: KindIO, Message: "session ended by QUIT"}
	cerr := c.t.Close()
	c.unwatch()
	if rep.Code != 221 {
		return replyError(OpQuit, &rep)
	}
	if cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		return ioError(ctx, OpQuit, cerr)
	}
	return nil
}

// Close closes the transport at once, without QUIT. Transactions whose
// replies were not read fail (with [ErrOutcomeUnknown] when their commit
// point was written). Close is idempotent.
func (c *Client) Close() error {
	if c.state == StateClosed {
		return nil
	}
	c.fail(context.Background(), &Error{Op: OpQuit, Kind: KindIO, Err: ErrClosed, Message: "closed by the client"})
	return nil
}

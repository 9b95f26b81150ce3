package smtp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The write half of a transaction: validation, commands, the body, and
// the commit point. Everything here runs on the goroutine in a
// write-half call (holding c.wmu); what the read half also sees is
// changed under c.mu.

// writable reports whether the client may write: the session is open and
// the server has not announced that it is closing it.
func (c *Client) writable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writableLocked()
}

func (c *Client) writableLocked() bool {
	return c.State() != StateClosed && c.closing == nil && c.wbroken == nil
}

// writeFailed ends the write half after a failed write. With a goroutine
// in ReadReplies and replies owed, the session stays open for it: the
// replies the server sent before it went are still read (a 421 among
// them makes what it never answered replayable), and the reader's end
// closes the session. Otherwise the session closes now.
func (c *Client) writeFailed(err *Error) {
	c.mu.Lock()
	defer c.unlock()
	if c.readers > 0 && len(c.pending) > 0 && c.State() != StateClosed {
		if c.wbroken == nil {
			c.wbroken = err
		}
		c.cw.stop.Store(true)
		return
	}
	c.failLocked(err)
}

// writeTx writes tx (see WriteTx). It returns an error only if nothing
// of tx was written; otherwise a session that closes on the way settles
// tx with the rest.
func (c *Client) writeTx(ctx context.Context, tx *Tx, env *Envelope, mail []byte) *Error {
	c.mu.Lock()
	open := c.open
	// The common case goes straight on, in one look: pipelining, no
	// transaction waiting for its body, and a reader (or replies owed),
	// so no idle check. Otherwise those steps come first.
	if !(open == nil && c.caps.Pipelining && (c.reading || c.readers > 0 || len(c.pending) > 0) && c.writableLocked()) {
		c.mu.Unlock()
		if open != nil {
			c.advance(ctx, open)
		}
		if !c.caps.Pipelining {
			c.flush(ctx, OpMAIL)
			c.await(ctx, func() bool { return len(c.pending) == 0 })
		} else {
			c.checkIdle(ctx)
		}
		c.mu.Lock()
		if !c.writableLocked() {
			c.mu.Unlock()
			return c.closedError(OpMAIL)
		}
	}
	c.setStateLocked(StateTransaction)
	reset := c.needReset
	c.needReset = false
	c.mu.Unlock()
	c.setWriteDeadline(ctx, c.opts.Timeouts.DataBlock)
	if reset {
		c.writeCommand(nil, kReset, 0, resetLine)
		// Without PIPELINING, RSET is answered before MAIL is sent.
		c.sync(ctx)
		if !c.writable() {
			return c.closedError(OpMAIL)
		}
	}
	c.writeCommand(tx, kMail, 0, mail)
	c.sync(ctx)
	for i, rcpt := range tx.to {
		line := c.rcptCommand(rcpt, env)
		end := c.queued() + int64(len(line))
		c.mu.Lock()
		stop := tx.mailErr != nil || !c.writableLocked()
		if !stop {
			c.pushLocked(tx, kRcpt, i, nil, "", end)
		}
		c.mu.Unlock()
		if stop {
			break
		}
		c.w.Write(line)
		c.sync(ctx)
	}
	c.mu.Lock()
	switch {
	case !c.writableLocked():
		// Closed or closing: tx is settled with the rest (sessionLost).
		c.mu.Unlock()
	case tx.mailErr != nil:
		tx.aborted = true
		c.needReset = true
		tx.maybeFinish()
		c.unlock()
	case tx.chunking && !tx.deferCommit:
		c.mu.Unlock()
		c.writeChunks(ctx, tx)
	case tx.chunking:
		// The body waits for the RCPT replies (see advance).
		c.open = tx
		c.mu.Unlock()
	case tx.rcptRead == len(tx.to) && !tx.recipientsOK():
		// Without PIPELINING the refusals are already known.
		c.mu.Unlock()
		c.abort(tx)
	default:
		if !tx.deferCommit {
			tx.dataSent = true
			c.mu.Unlock()
			c.writeCommand(tx, kData, 0, dataLine)
			c.mu.Lock()
		}
		c.open = tx
		c.mu.Unlock()
	}
	return nil
}

var (
	resetLine = []byte("RSET\r\n")
	dataLine  = []byte("DATA\r\n")
)

// prepare validates the envelope against the input rules and the
// server's extensions, consults the policy, and formats MAIL FROM.
func (c *Client) prepare(ctx context.Context, env *Envelope, body io.Reader) (*Tx, []byte, *Error) {
	if len(env.To) == 0 {
		return nil, nil, inputError(OpRCPT, "no recipients")
	}
	if body == nil {
		return nil, nil, inputError(OpBody, "nil body")
	}
	utf8 := env.SMTPUTF8
	if env.From != "" {
		u, p := validateAddress(env.From)
		if p != "" {
			e := inputError(OpMAIL, "sender: %s", p)
			return nil, nil, e
		}
		utf8 = utf8 || u
	}
	for _, rcpt := range env.To {
		u, p := validateAddress(rcpt)
		if p != "" {
			e := inputError(OpRCPT, "%s", p)
			e.Recipient = sanitize(rcpt)
			return nil, nil, e
		}
		utf8 = utf8 || u
	}
	caps := &c.caps
	if utf8 && !caps.SMTPUTF8 {
		return nil, nil, inputError(OpMAIL, "non-ASCII address or SMTPUTF8 requested, but the server does not offer SMTPUTF8")
	}
	if env.EightBitMIME && !caps.EightBitMIME {
		return nil, nil, inputError(OpMAIL, "BODY=8BITMIME requested, but the server does not offer 8BITMIME")
	}
	if env.DSN != nil {
		if !caps.DSN {
			return nil, nil, inputError(OpMAIL, "DSN requested, but the server does not offer DSN")
		}
		if p := env.DSN.validate(); p != "" {
			return nil, nil, inputError(OpMAIL, "DSN: %s", p)
		}
	}
	size := env.Size
	if l, ok := body.(interface{ Len() int }); ok && size <= 0 {
		switch body.(type) {
		case *bytes.Reader, *strings.Reader, *bytes.Buffer:
			size = int64(l.Len())
		}
	}
	if size < 0 {
		size = 0
	}
	maxSize := c.opts.MaxMessageSize
	if caps.MaxSize > 0 && (maxSize <= 0 || caps.MaxSize < maxSize) {
		maxSize = caps.MaxSize
	}
	if maxSize > 0 && size > maxSize {
		return nil, nil, &Error{Op: OpMAIL, Kind: KindPolicy, Message: fmt.Sprintf("message size %d exceeds the limit of %d octets", size, maxSize)}
	}
	if c.opts.Policy != nil {
		if err := c.opts.Policy(ctx, PolicyRequest{From: env.From, To: env.To, Size: size}); err != nil {
			return nil, nil, &Error{Op: OpSend, Kind: KindPolicy, Message: "vetoed by policy", Err: err}
		}
	}

	b := c.mailBuf[:0]
	b = append(b, "MAIL FROM:<"...)
	b = append(b, env.From...)
	b = append(b, '>')
	if size > 0 && caps.Size && !c.opts.NormalizeLineEndings {
		// With normalisation the body may grow; SIZE must not understate.
		b = append(b, " SIZE="...)
		b = strconv.AppendInt(b, size, 10)
	}
	if env.EightBitMIME {
		b = append(b, " BODY=8BITMIME"...)
	}
	if utf8 {
		b = append(b, " SMTPUTF8"...)
	}
	if d := env.DSN; d != nil {
		if d.Return != "" {
			b = append(b, " RET="...)
			b = append(b, strings.ToUpper(d.Return)...)
		}
		if d.EnvID != "" {
			b = append(b, " ENVID="...)
			b = append(b, xtext(d.EnvID)...)
		}
	}
	b = append(b, '\r', '\n')
	c.mailBuf = b

	tx := &Tx{
		c:        c,
		from:     env.From,
		to:       env.To,
		partial:  env.AllowPartial,
		body:     body,
		chunking: caps.Chunking,
		tag:      env.Tag,
	}
	if c.opts.AuditContext != nil {
		tx.evctx = context.WithoutCancel(ctx)
	}
	if c.opts.Audit == nil && c.opts.AuditContext == nil {
		// Nobody sees the events: the Message-ID is not looked for.
		tx.msgid.skip()
	}
	if len(env.To) == 1 {
		tx.rcpt = tx.rcpt1[:]
	} else {
		tx.rcpt = make([]RecipientStatus, len(env.To))
	}
	tx.deferCommit = !env.AllowPartial && len(env.To) > 1
	tx.enc = newBodyEncoder(!tx.chunking, c.opts.NormalizeLineEndings, c.opts.MaxLineLength, maxSize)
	for i, r := range env.To {
		tx.rcpt[i].Address = r
	}
	return tx, b, nil
}

func (d *DSN) validate() string {
	switch strings.ToUpper(d.Return) {
	case "", "FULL", "HDRS":
	default:
		return "Return must be FULL or HDRS"
	}
	never := false
	for _, n := range d.Notify {
		switch strings.ToUpper(n) {
		case "NEVER":
			never = true
		case "SUCCESS", "FAILURE", "DELAY":
		default:
			return "Notify values are NEVER, SUCCESS, FAILURE, DELAY"
		}
	}
	if never && len(d.Notify) > 1 {
		return "Notify NEVER cannot be combined"
	}
	if xtextLen(d.EnvID) > 100 {
		return "EnvID longer than 100 characters once xtext-encoded (RFC 3461)"
	}
	return ""
}

// rcptCommand formats RCPT TO for one recipient.
func (c *Client) rcptCommand(rcpt string, env *Envelope) []byte {
	b := c.scratch[:0]
	b = append(b, "RCPT TO:<"...)
	b = append(b, rcpt...)
	b = append(b, '>')
	if d := env.DSN; d != nil {
		if len(d.Notify) > 0 {
			b = append(b, " NOTIFY="...)
			for i, n := range d.Notify {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, strings.ToUpper(n)...)
			}
		}
		if d.OriginalRecipient {
			b = append(b, " ORCPT="...)
			b = appendORCPT(b, rcpt)
		}
	}
	b = append(b, '\r', '\n')
	c.scratch = b
	return b
}

// writeCommand queues a command line owed a reply of kind. The reply is
// recorded as owed before the line can reach the wire, so a reply read
// while nothing was owed was sent before its command.
func (c *Client) writeCommand(tx *Tx, kind replyKind, idx int, line []byte) {
	end := c.queued() + int64(len(line))
	c.mu.Lock()
	c.pushLocked(tx, kind, idx, nil, "", end)
	c.mu.Unlock()
	c.w.Write(line)
}

// pushLocked records a reply the server owes (mu held). On a session
// that is closed or closing nothing is recorded: what the command would
// write is dropped (see countingWriter.stop), and a transaction left
// with nothing owed is settled at the end of WriteTx.
func (c *Client) pushLocked(tx *Tx, kind replyKind, idx int, res *cmdResult, op Op, end int64) {
	if !c.writableLocked() {
		return
	}
	if tx != nil {
		tx.owed++
	}
	if len(c.pending) == 0 {
		// Start again at the front of the array: popping moves the
		// slice forward, and would otherwise wear its capacity away.
		c.pending = c.pendingBase
		c.heard.Store(time.Now().UnixNano())
	}
	if res != nil && end == 0 {
		end = c.queued()
	}
	before := cap(c.pending)
	c.pending = append(c.pending, pending{tx: tx, kind: kind, idx: idx, res: res, cmdOp: op, end: end})
	if cap(c.pending) != before {
		c.pendingBase = c.pending[:0]
	}
}

// sync waits for every owed reply when the server does not pipeline.
func (c *Client) sync(ctx context.Context) {
	if !c.caps.Pipelining {
		c.flush(ctx, OpMAIL)
		c.await(ctx, func() bool { return len(c.pending) == 0 })
	}
}

// queued is the output offset after everything written so far.
func (c *Client) queued() int64 { return c.cw.n.Load() + int64(c.w.Buffered()) }

// flush writes what is buffered, and starts the wait for the first
// reply owed if the read half waits without a deadline. On a session
// the server is closing, what is buffered is dropped.
func (c *Client) flush(ctx context.Context, op Op) {
	if c.w.Buffered() == 0 {
		return
	}
	if !c.writable() {
		c.w.Reset(&c.cw)
		return
	}
	c.setWriteDeadline(ctx, c.opts.Timeouts.DataBlock)
	if err := c.w.Flush(); err != nil {
		c.writeFailed(ioError(ctx, op, err))
		return
	}
	c.armRead(ctx)
}

// armRead starts the read deadline for the oldest owed reply once its
// command has left, unless one runs already: a reader that began to wait
// before the command left had no deadline. A deadline is never moved
// later by new work.
func (c *Client) armRead(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 || c.State() == StateClosed {
		return
	}
	p := c.pending[0]
	if p.end <= c.cw.n.Load() && !c.dl.readArmed() {
		c.setReadDeadline(ctx, c.replyTimeout(p.kind))
	}
}

// replyTimeout is how long the server may take for a reply of kind.
func (c *Client) replyTimeout(k replyKind) time.Duration {
	switch k {
	case kData:
		return c.opts.Timeouts.DataInit
	case kChunk:
		return c.opts.Timeouts.DataBlock
	case kFinal:
		return c.opts.Timeouts.DataEnd
	}
	return c.opts.Timeouts.Command
}

// advance writes tx's commit point (or abandons it with RSET) once the
// replies it waits on are in: for an all-or-nothing transaction with
// several recipients, the RCPT replies come first; then with CHUNKING the
// body in BDAT chunks, with DATA the DATA command, and after the 354 the
// body and final dot.
func (c *Client) advance(ctx context.Context, tx *Tx) {
	defer func() {
		c.mu.Lock()
		if c.open == tx {
			c.open = nil
		}
		c.settleState()
		c.mu.Unlock()
	}()
	c.mu.Lock()
	waitRcpt := tx.deferCommit && !tx.dataSent
	c.mu.Unlock()
	if waitRcpt {
		c.flush(ctx, OpRCPT)
		c.await(ctx, func() bool { return tx.rcptRead == len(tx.to) || tx.done })
		c.mu.Lock()
		if !c.writableLocked() || tx.done {
			c.mu.Unlock()
			return
		}
		if tx.mailErr != nil || tx.dataErr != nil || tx.bodyErr != nil || !tx.recipientsOK() {
			c.mu.Unlock()
			c.abort(tx)
			return
		}
		tx.dataSent = true
		c.mu.Unlock()
		if tx.chunking {
			c.writeChunks(ctx, tx)
			return
		}
		c.setWriteDeadline(ctx, c.opts.Timeouts.DataBlock)
		c.writeCommand(tx, kData, 0, dataLine)
	}
	if tx.chunking {
		return
	}
	c.flush(ctx, OpDATA)
	c.await(ctx, func() bool { return tx.dataReply != nil || tx.done })
	c.mu.Lock()
	if !c.writableLocked() || tx.done || tx.dataReply == nil || tx.dataReply.Code != 354 {
		c.mu.Unlock()
		return
	}
	if tx.mailErr != nil || !tx.recipientsOK() {
		// A 354 although the envelope failed: after 354 there is no
		// way back but to drop the connection.
		tx.aborted = true
		c.failLocked(protoError(OpDATA, "server sent 354 for a transaction whose envelope it refused; session dropped so nothing is delivered"))
		c.unlock()
		return
	}
	c.mu.Unlock()
	c.writeData(ctx, tx)
}

// abort abandons tx before its commit point with RSET.
func (c *Client) abort(tx *Tx) {
	c.mu.Lock()
	tx.aborted = true
	c.needReset = false
	c.mu.Unlock()
	c.writeCommand(tx, kReset, 0, resetLine)
}

// setMessageID records the Message-ID the body showed, for the events.
func (tx *Tx) setMessageID(id string) {
	tx.c.mu.Lock()
	defer tx.c.mu.Unlock()
	tx.msgID = id
}

// setBodyErr records why the body cannot be sent.
func (tx *Tx) setBodyErr(e *Error) {
	tx.c.mu.Lock()
	defer tx.c.mu.Unlock()
	if tx.bodyErr == nil {
		tx.bodyErr = e
	}
}

func (tx *Tx) bodyProblem() {
	kind := KindInvalidInput
	if tx.enc.sizeErr {
		kind = KindPolicy
	}
	tx.setBodyErr(&Error{Op: OpBody, Kind: kind, Message: tx.enc.problem})
}

// maxOwedReplyBytes bounds, in octets, the replies one transaction lets
// the server owe while its BDAT chunks stream: a server that answers each
// chunk as it reads it blocks once its unread replies fill the buffers
// between it and the client, and a client still writing then blocks too
// (the RFC 2920 deadlock). The bound must sit below the smallest such
// buffer of any transport: 16 KiB in Go's in-process network under wasm,
// often no more in a host's socket or a pipe. (Across transactions, the
// caller's window is the bound.)
const maxOwedReplyBytes = 4 << 10

// An owed reply is counted as owedReplyBytes, one reply line of the
// longest RFC 5321 (section 4.5.3.1.5) lets a server send, until the
// session has read a reply to a BDAT chunk: 8 replies owed at most. From
// then on it is counted as the longest transaction reply the server has
// sent on the session, and at least minOwedReplyBytes: a server that
// answers "250 2.0.0 Ok" may be owed 64 replies (a transaction with up to
// 60 recipients streams without waiting), one that answers every chunk
// with four lines of 500 octets only 2.
const (
	owedReplyBytes    = 512
	minOwedReplyBytes = 64
)

// owedReplyEstimate is the octets an owed reply is counted as.
func (c *Client) owedReplyEstimate() int {
	if !c.chunkReplySeen {
		return max(owedReplyBytes, c.replyMax)
	}
	return max(minOwedReplyBytes, c.replyMax)
}

// replyOctets is about what rep took on the wire: each line's code,
// separator, enhanced code, text and CRLF.
func replyOctets(rep *Reply) int {
	n := 0
	for _, l := range rep.Lines {
		n += len(l) + 6
		if rep.Enhanced != "" {
			n += len(rep.Enhanced) + 1
		}
	}
	return n
}

// writeChunks streams the body as BDAT chunks, the last with LAST. A
// bad body abandons the transaction with RSET: the chunk holding the bad
// octets is never written.
func (c *Client) writeChunks(ctx context.Context, tx *Tx) {
	c.mu.Lock()
	refused := tx.rcptRead == len(tx.to) && (tx.dataErr != nil || !tx.recipientsOK())
	c.mu.Unlock()
	if refused {
		c.abort(tx)
		return
	}
	s := c.newBodyStream(ctx, tx)
	defer s.release()
	if s.copyBody() && s.emit(nil, true) {
		return
	}
	if s.stop == stopBody && c.writable() {
		c.abort(tx)
	}
}

// writeData streams the body after a 354, dot-stuffed, and the final
// dot. A bad body can only be abandoned by dropping the session before
// the dot: the bad octets are never written.
func (c *Client) writeData(ctx context.Context, tx *Tx) {
	s := c.newBodyStream(ctx, tx)
	defer s.release()
	if s.copyBody() && s.emit(nil, true) {
		return
	}
	if s.stop == stopBody {
		c.mu.Lock()
		tx.aborted = true
		berr := tx.bodyErr
		c.failLocked(&Error{Op: OpBody, Kind: KindIO, Message: "session dropped before the final dot because the body failed", Err: berr})
		c.unlock()
	}
}

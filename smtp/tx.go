package smtp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Tx is a transaction written by [Client.WriteTx] whose replies are read
// by [Client.ReadTx]. Between the two, other transactions may be written
// behind it (pipelining); the Client tracks, for each, whether its
// commit point has been written.
type Tx struct {
	c        *Client
	from     string
	to       []string
	partial  bool
	body     io.Reader
	chunking bool
	// deferCommit: the commit must wait for the RCPT replies (more than
	// one recipient, all-or-nothing).
	deferCommit bool
	enc         bodyEncoder

	dataSent  bool   // DATA written (DATA mode)
	dataReply *Reply // the reply to DATA
	committed bool   // the commit point is queued for writing
	commitEnd int64  // the output offset just past the commit point
	aborted   bool   // abandoned before its commit point
	owed      int    // replies still owed by the server

	rcpt     []RecipientStatus
	rcpt1    [1]RecipientStatus // rcpt's storage for one recipient
	rcptRead int
	mailErr  *Error
	bodyErr  *Error
	dataErr  *Error
	// refused is the 421 the server answered one of this transaction's
	// commands with: its own refusal, never another's.
	refused *Error
	// lostErr is why the session ended before every reply was read.
	lostErr *Error
	final   *Reply
	// dataRep and finalRep hold the replies dataReply and final point
	// to, so that reading a reply allocates nothing.
	dataRep, finalRep Reply

	done    bool
	outcome *Outcome
	err     *Error
}

// Committed reports whether the transaction's commit point (the final
// "." or BDAT ... LAST) has been handed to the transport: from then on
// the server may deliver the message whatever happens to the session.
func (tx *Tx) Committed() bool { return tx.committed && tx.c.cw.n >= tx.commitEnd }

// Done reports whether every reply of the transaction has been read (or
// the session was lost), so ReadTx will not block.
func (tx *Tx) Done() bool { return tx.done }

// Result returns what ReadTx returns for a transaction that is Done,
// without reading or changing the session: a caller that watches its
// transport can answer a finished transaction while the client is in
// the middle of another call. Before Done it returns nil, nil.
func (tx *Tx) Result() (*Outcome, error) {
	if !tx.done {
		return nil, nil
	}
	if tx.err != nil {
		return nil, tx.err
	}
	return tx.outcome, nil
}

// Replayable reports whether the transaction failed without any chance
// of delivery and may be sent again on a new session: the server answered
// this transaction itself with 421 (see [Tx.Answered421]), or the session
// was lost before its commit point was written. A transaction whose
// commit point was written and whose own reply was lost is not
// replayable, whatever the server said to other transactions: its error
// wraps [ErrOutcomeUnknown].
func (tx *Tx) Replayable() bool {
	if !tx.done || tx.err == nil {
		return false
	}
	if tx.refused != nil {
		return true
	}
	return tx.lostErr != nil && tx.err == tx.lostErr && !tx.Committed()
}

// Answered421 reports whether the server answered one of this
// transaction's own commands with 421 (service not available, closing
// the channel). It is the transaction's own refusal; a transaction lost
// because the server sent 421 to another one reports false.
func (tx *Tx) Answered421() bool { return tx.refused != nil }

// Send delivers one message: MAIL, RCPT for each recipient, then the
// body with BDAT when the server offers CHUNKING, DATA otherwise; with
// PIPELINING the commands go in one write. The envelope is validated
// and the policy consulted before any byte is written. On success it
// returns the [Outcome]; otherwise an [*Error] (Op says which step
// failed; errors.Is(err, ErrOutcomeUnknown) when the message was
// committed but its reply lost). The session stays usable after a
// refused message.
func (c *Client) Send(ctx context.Context, env Envelope, body io.Reader) (*Outcome, error) {
	tx, err := c.WriteTx(ctx, env, body)
	if err != nil {
		return nil, err
	}
	return c.ReadTx(ctx, tx)
}

// WriteTx validates env and writes as much of the transaction as can be
// written without waiting for replies: MAIL and RCPT with PIPELINING,
// then with CHUNKING the body (ending in BDAT ... LAST unless the commit
// must wait for the RCPT replies), or DATA when the 354 may come without
// risk. Before it writes, it settles the transaction written before it
// (reading the replies that one's commit waits on, and writing its
// body), so a body and the next transaction's commands leave in one
// write.
//
// What WriteTx writes may stay in the client's buffer, so that several
// transactions leave in one write: it goes out with the next ReadTx (or
// a WriteTx that must wait for a reply), or at [Client.Flush].
//
// An error means nothing of this transaction was written: validation,
// policy, or a closed session (then wrapping [ErrClosed]). Otherwise
// read the outcome with [Client.ReadTx]; transactions must be read in
// the order written, or ReadTx reads the earlier ones on the way.
func (c *Client) WriteTx(ctx context.Context, env Envelope, body io.Reader) (*Tx, error) {
	if !c.writable() {
		return nil, c.closedError(OpMail)
	}
	tx, mail, err := c.prepare(ctx, &env, body)
	if err != nil {
		return nil, err
	}
	if err := ctxError(ctx, OpMail); err != nil {
		return nil, err
	}
	c.watch(ctx)
	if c.open != nil {
		c.advance(ctx, c.open)
	}
	if c.writable() && !c.caps.Pipelining {
		c.readUntil(ctx, func() bool { return len(c.pending) == 0 })
	}
	if c.writable() && len(c.pending) == 0 && c.open == nil {
		c.checkIdle(ctx)
	}
	if !c.writable() {
		return nil, c.closedError(OpMail)
	}
	c.state = StateTransaction
	c.setDeadline(ctx, c.opts.Timeouts.DataBlock)
	if c.needReset {
		c.needReset = false
		c.w.WriteString("RSET\r\n")
		c.push(nil, kReset, 0)
		// Without PIPELINING, RSET is answered before MAIL is sent.
		c.sync(ctx)
		if !c.writable() {
			return nil, c.closedError(OpMail)
		}
	}
	c.w.Write(mail)
	c.push(tx, kMail, 0)
	c.sync(ctx)
	for i, rcpt := range tx.to {
		if tx.mailErr != nil || !c.writable() {
			break
		}
		c.w.Write(c.rcptCommand(rcpt, &env))
		c.push(tx, kRcpt, i)
		c.sync(ctx)
	}
	if !c.writable() {
		// Closed or closing: tx is settled with the rest (sessionLost).
		return tx, nil
	}
	if tx.mailErr != nil {
		tx.aborted = true
		c.needReset = true
		tx.maybeFinish()
		return tx, nil
	}
	if tx.chunking && !tx.deferCommit {
		c.writeChunks(ctx, tx)
	} else if tx.chunking {
		// The body waits for the RCPT replies (see advance).
		c.open = tx
	} else if tx.rcptRead == len(tx.to) && !tx.recipientsOK() {
		// Without PIPELINING the refusals are already known.
		c.abort(tx)
	} else {
		if !tx.deferCommit {
			c.w.WriteString("DATA\r\n")
			c.push(tx, kData, 0)
			tx.dataSent = true
		}
		c.open = tx
	}
	return tx, nil
}

// ReadTx reads tx's replies (and those of transactions written before
// it), first writing its body or final chunk if they waited on replies,
// and returns its outcome. A second call returns the same result.
func (c *Client) ReadTx(ctx context.Context, tx *Tx) (*Outcome, error) {
	if tx == nil || tx.c != c {
		return nil, inputError(OpSend, "transaction does not belong to this client")
	}
	if !tx.done {
		// No early return for an ended ctx here: the transaction is
		// written, so its outcome must be settled (an interrupted read
		// closes the session and reports ErrOutcomeUnknown for a
		// committed transaction).
		c.watch(ctx)
		if c.open == tx {
			c.advance(ctx, tx)
		}
		c.interruptible = true
		c.readUntil(ctx, func() bool { return tx.done || c.takeInterrupt() })
		c.interruptible = false
		if !tx.done && c.state != StateClosed && len(c.pending) > 0 {
			return nil, ErrInterrupted
		}
		if !tx.done {
			if c.state != StateClosed {
				// Only reachable if the reply queue lost track: fail safe.
				c.fail(ctx, protoError(OpSend, "internal error: transaction has no pending reply"))
			}
			tx.sessionLost(c.closedError(OpSend))
		}
	}
	if c.state == StateTransaction && len(c.pending) == 0 && c.open == nil {
		c.state = StateReady
	}
	if tx.err != nil {
		return nil, tx.err
	}
	return tx.outcome, nil
}

// prepare validates the envelope against the input rules and the
// server's extensions, consults the policy, and formats MAIL FROM.
func (c *Client) prepare(ctx context.Context, env *Envelope, body io.Reader) (*Tx, []byte, *Error) {
	if len(env.To) == 0 {
		return nil, nil, inputError(OpRcpt, "no recipients")
	}
	if body == nil {
		return nil, nil, inputError(OpBody, "nil body")
	}
	utf8 := env.SMTPUTF8
	if env.From != "" {
		u, p := validateAddress(env.From)
		if p != "" {
			e := inputError(OpMail, "sender: %s", p)
			return nil, nil, e
		}
		utf8 = utf8 || u
	}
	for _, rcpt := range env.To {
		u, p := validateAddress(rcpt)
		if p != "" {
			e := inputError(OpRcpt, "%s", p)
			e.Recipient = sanitize(rcpt)
			return nil, nil, e
		}
		utf8 = utf8 || u
	}
	caps := &c.caps
	if utf8 && !caps.SMTPUTF8 {
		return nil, nil, inputError(OpMail, "non-ASCII address or SMTPUTF8 requested, but the server does not offer SMTPUTF8")
	}
	if env.EightBitMIME && !caps.EightBitMIME {
		return nil, nil, inputError(OpMail, "BODY=8BITMIME requested, but the server does not offer 8BITMIME")
	}
	if env.DSN != nil {
		if !caps.DSN {
			return nil, nil, inputError(OpMail, "DSN requested, but the server does not offer DSN")
		}
		if p := env.DSN.validate(); p != "" {
			return nil, nil, inputError(OpMail, "DSN: %s", p)
		}
	}
	size := env.Size
	if l, ok := body.(interface{ Len() int }); ok && size <= 0 {
		switch body.(type) {
		case *bytes.Reader, *strings.Reader, *bytes.Buffer:
			size = int64(l.Len())
		}
	}
	if size <= 0 {
		size = -1
	}
	maxSize := c.opts.MaxMessageSize
	if caps.MaxSize > 0 && (maxSize <= 0 || caps.MaxSize < maxSize) {
		maxSize = caps.MaxSize
	}
	if maxSize > 0 && size > maxSize {
		return nil, nil, &Error{Op: OpMail, Kind: KindPolicy, Message: fmt.Sprintf("message size %d exceeds the limit of %d octets", size, maxSize)}
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

// push records a reply the server owes.
func (c *Client) push(tx *Tx, kind replyKind, idx int) {
	if tx != nil {
		tx.owed++
	}
	if len(c.pending) == 0 {
		// Start again at the front of the array: popping moves the
		// slice forward, and would otherwise wear its capacity away.
		c.pending = c.pendingBase
	}
	before := cap(c.pending)
	c.pending = append(c.pending, pending{tx: tx, kind: kind, idx: idx})
	if cap(c.pending) != before {
		c.pendingBase = c.pending[:0]
	}
}

// sync waits for every owed reply when the server does not pipeline.
func (c *Client) sync(ctx context.Context) {
	if !c.caps.Pipelining && c.state != StateClosed {
		c.readUntil(ctx, func() bool { return len(c.pending) == 0 })
	}
}

// queued is the output offset after everything written so far.
func (c *Client) queued() int64 { return c.cw.n + int64(c.w.Buffered()) }

func (c *Client) flush(ctx context.Context, op Op) {
	if !c.writable() || c.w.Buffered() == 0 {
		return
	}
	c.setDeadline(ctx, c.opts.Timeouts.DataBlock)
	if err := c.w.Flush(); err != nil {
		c.fail(ctx, ioError(ctx, op, err))
	}
}

// readUntil reads replies until cond holds, the session closes, or
// nothing more is owed.
func (c *Client) readUntil(ctx context.Context, cond func() bool) {
	for !cond() && c.state != StateClosed && len(c.pending) > 0 {
		c.readOne(ctx)
	}
}

func (k replyKind) op() Op {
	switch k {
	case kMail:
		return OpMail
	case kRcpt:
		return OpRcpt
	case kData:
		return OpData
	case kChunk:
		return OpBDAT
	case kReset:
		return OpReset
	}
	return OpData
}

// readOne reads the next owed reply and gives it to its transaction.
// Within ReadTx, it first waits for the whole reply to arrive, a wait
// that Interrupt may end (and then it reads nothing).
func (c *Client) readOne(ctx context.Context) {
	p := c.pending[0]
	op := p.op()
	c.flush(ctx, op)
	if c.state == StateClosed {
		return
	}
	timeout := c.opts.Timeouts.Command
	switch p.kind {
	case kData:
		timeout = c.opts.Timeouts.DataInit
	case kChunk:
		timeout = c.opts.Timeouts.DataBlock
	case kFinal:
		timeout = c.opts.Timeouts.DataEnd
	}
	c.setDeadline(ctx, timeout)
	if c.interruptible && !c.waitArrived(ctx, op) {
		return
	}
	c.consume(ctx, p, op)
}

// Interrupt ends a wait of ReadTx for the server: that ReadTx, or the
// next one to wait if none is waiting now, returns ErrInterrupted,
// having read nothing more than whole replies, so the session stays
// usable. It is the one method that may be called from another
// goroutine; the sender package uses it to have a session write a new
// transaction while the replies of those in flight are on their way. It
// ends a blocked read by setting a past deadline on the transport (as a
// context's cancellation does), so a transport whose reads a deadline
// cannot end makes the wait last until the next reply arrives.
func (c *Client) Interrupt() {
	c.intMu.Lock()
	defer c.intMu.Unlock()
	c.interrupted = true
	if c.inWait {
		c.t.SetDeadline(time.Unix(1, 0))
	}
}

// takeInterrupt reports, and clears, an interruption.
func (c *Client) takeInterrupt() bool {
	c.intMu.Lock()
	defer c.intMu.Unlock()
	was := c.interrupted
	c.interrupted = false
	return was
}

// waitArrived waits until a whole reply is in the read buffer, without
// consuming anything, so that a read Interrupt ends loses no half-read
// reply (bufio.Reader.Peek keeps what it read; a TLS transport keeps a
// half-read record across a timeout). It reports false if Interrupt
// ended the wait, or the read failed (the session is then closed). A
// reply longer than the read buffer is left to consume. Each octet is
// looked at once however the reply trickles in (see replyScan).
func (c *Client) waitArrived(ctx context.Context, op Op) bool {
	var sc replyScan
	for {
		b, _ := c.r.Peek(c.r.Buffered())
		if sc.complete(b) || len(b) >= c.r.Size() {
			return true
		}
		c.intMu.Lock()
		if c.interrupted {
			c.intMu.Unlock()
			return false
		}
		c.inWait = true
		c.intMu.Unlock()
		deadline := c.deadline
		_, err := c.r.Peek(c.r.Buffered() + 1)
		c.intMu.Lock()
		c.inWait = false
		poked := c.interrupted
		c.intMu.Unlock()
		if poked {
			// The deadline set by Interrupt replaced the step's.
			c.deadline = time.Time{}
		}
		if err == nil {
			continue
		}
		if poked && isTimeout(err) && ctx.Err() == nil && (deadline.IsZero() || time.Now().Before(deadline)) {
			return false
		}
		c.fail(ctx, ioError(ctx, op, err))
		return false
	}
}

// replyScan finds the end of the first reply in a buffer that only
// grows at its end, resuming where the last look stopped: line is where
// the line being read starts, next the first octet not yet searched for
// its end. (replyComplete starts over at each look, which is linear only
// when the buffer is looked at once.)
type replyScan struct{ line, next int }

// complete reports whether b starts with a whole reply, as
// replyComplete does.
func (sc *replyScan) complete(b []byte) bool {
	for {
		i := bytes.IndexByte(b[sc.next:], '\n')
		if i < 0 {
			sc.next = len(b)
			return false
		}
		end := sc.next + i
		if end-sc.line < 4 || b[sc.line+3] != '-' {
			return true
		}
		sc.line, sc.next = end+1, end+1
	}
}

// op is the step a pending reply answers.
func (p pending) op() Op {
	if p.kind == kFinal && p.tx != nil && p.tx.chunking {
		return OpBDAT
	}
	return p.kind.op()
}

// Poll reads the replies that have already arrived, without writing or
// waiting for the network, and reports how many it read. (A reply that
// ends the session, a 421 or a malformed one, closes the connection as
// any read of it would.) The transactions they finish are then [Tx.Done], and
// ReadTx returns their outcome at once. A caller with many transactions
// in flight uses it to settle every finished one together, after the
// ReadTx that waited for the oldest.
func (c *Client) Poll() int {
	n := 0
	for c.state != StateClosed && len(c.pending) > 0 && c.replyArrived() {
		p := c.pending[0]
		c.consume(context.Background(), p, p.op())
		n++
	}
	return n
}

// replyArrived reports whether the read buffer holds a whole reply, so
// that reading it cannot wait for the network.
func (c *Client) replyArrived() bool {
	b, _ := c.r.Peek(c.r.Buffered())
	return replyComplete(b)
}

// replyComplete reports whether b starts with a whole reply: lines up to
// one that is not a continuation ("250-"), or one that ends a reply by
// being malformed, which reading rejects without more input.
func replyComplete(b []byte) bool {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return false
		}
		if i < 4 || b[3] != '-' {
			return true
		}
		b = b[i+1:]
	}
	return false
}

// consume reads the reply p is owed (from the read buffer, or from the
// connection with the deadline readOne set) and gives it to p's
// transaction.
func (c *Client) consume(ctx context.Context, p pending, op Op) {
	rep, err := readReplyIn(c.r, op, c.caps.EnhancedStatusCodes, &c.texts)
	if err != nil {
		c.fail(ctx, ioError(ctx, op, err))
		return
	}
	c.lastActive = time.Now()
	c.pending[0] = pending{} // no reference to a finished Tx
	c.pending = c.pending[1:]
	switch {
	case rep.Code == 421:
		e := replyError(op, &rep)
		if p.tx != nil && !p.tx.done {
			p.tx.owed--
			if p.kind == kRcpt {
				e.Recipient = p.tx.to[p.idx]
			}
			if p.tx.refused == nil {
				p.tx.refused = e
			}
		}
		c.beginClosing(ctx, e)
		return
	case p.tx == nil:
		c.audit(Event{Type: EventReset, Op: OpReset, Code: rep.Code})
	case !p.tx.done:
		c.replyMax = max(c.replyMax, replyOctets(&rep))
		c.chunkReplySeen = c.chunkReplySeen || p.kind == kChunk || p.kind == kFinal
		p.tx.onReply(p, &rep)
	}
	if c.closing != nil && len(c.pending) == 0 {
		c.fail(ctx, c.closing)
	}
}

// writable reports whether the client may write: the session is open and
// the server has not announced that it is closing it.
func (c *Client) writable() bool { return c.state != StateClosed && c.closing == nil }

// beginClosing handles a 421: the server is closing the session. Nothing
// more is written (what is still buffered is dropped, so no commit point
// queued after the 421 leaves). Only the replies owed to transactions
// whose commit point has left are still read: a server that goes on
// answering after its 421 gives them their real outcomes, and one that
// closes leaves them unknown. Every other transaction still open is
// settled now as lost before its commit point (replayable; the 421 is
// not copied onto it). Once the replies kept are read, or at once when
// there are none, the session closes with cause.
func (c *Client) beginClosing(ctx context.Context, cause *Error) {
	if c.closing == nil {
		c.closing = cause
	}
	c.w.Reset(&c.cw)
	keep := 0
	for i, p := range c.pending {
		if p.tx != nil && p.tx.refused == nil && p.tx.Committed() {
			keep = i + 1
		}
	}
	for _, p := range c.pending[keep:] {
		if p.tx != nil {
			p.tx.sessionLost(cause)
		}
	}
	clear(c.pending[keep:])
	c.pending = c.pending[:keep]
	if c.open != nil {
		c.open.sessionLost(cause)
		c.open = nil
	}
	if len(c.pending) == 0 {
		c.fail(ctx, cause)
	}
}

// onReply records one reply of the transaction.
func (tx *Tx) onReply(p pending, rep *Reply) {
	c := tx.c
	tx.owed--
	ok := rep.Code/100 == 2
	switch p.kind {
	case kMail:
		if ok {
			c.audit(Event{Type: EventMailAccepted, Op: OpMail, Code: rep.Code, Enhanced: rep.Enhanced, From: tx.from})
		} else {
			tx.mailErr = replyError(OpMail, rep)
		}
	case kRcpt:
		tx.rcpt[p.idx].Reply = *rep
		tx.rcptRead++
		ev := Event{Type: EventRcptAccepted, Op: OpRcpt, Code: rep.Code, Enhanced: rep.Enhanced, Recipient: tx.to[p.idx]}
		if !ok {
			ev.Type = EventRcptRefused
		}
		c.audit(ev)
	case kData:
		tx.dataRep = *rep
		tx.dataReply = &tx.dataRep
		if rep.Code != 354 {
			tx.dataErr = replyError(OpData, rep)
			tx.aborted = true
			c.needReset = true
		}
	case kChunk:
		if !ok && tx.dataErr == nil {
			tx.dataErr = replyError(OpBDAT, rep)
			c.needReset = true
		}
	case kFinal:
		tx.finalRep = *rep
		tx.final = &tx.finalRep
		if !ok && tx.chunking {
			c.needReset = true
		}
	case kReset:
		c.audit(Event{Type: EventReset, Op: OpReset, Code: rep.Code})
	}
	tx.maybeFinish()
}

// recipientsOK reports whether the RCPT replies allow the commit: all
// accepted, or with AllowPartial at least one.
func (tx *Tx) recipientsOK() bool {
	accepted := 0
	for _, r := range tx.rcpt {
		if r.Reply.Code/100 == 2 {
			accepted++
		}
	}
	if tx.partial {
		return accepted > 0
	}
	return accepted == len(tx.rcpt)
}

// rcptError is the error for refused recipients, or nil when the
// replies allow delivery (or are not all in).
func (tx *Tx) rcptError() *Error {
	if tx.rcptRead < len(tx.to) || tx.recipientsOK() {
		return nil
	}
	var refused []RecipientStatus
	for _, r := range tx.rcpt {
		if r.Reply.Code/100 != 2 {
			refused = append(refused, r)
		}
	}
	first := refused[0]
	e := replyError(OpRcpt, &first.Reply)
	e.Recipient = first.Address
	e.Refused = refused
	if tx.partial {
		e.Message = "every recipient was refused: " + e.Message
	} else if len(tx.to) > 1 {
		e.Message = fmt.Sprintf("%d of %d recipients refused, message sent to none: %s", len(refused), len(tx.to), e.Message)
	}
	return e
}

// maybeFinish settles the transaction once nothing more is owed and it
// has been committed or abandoned.
func (tx *Tx) maybeFinish() {
	if tx.done || tx.owed > 0 || !(tx.committed || tx.aborted) {
		return
	}
	tx.finish()
}

func (tx *Tx) finish() {
	tx.done = true
	c := tx.c
	finalOK := tx.final != nil && tx.final.Code/100 == 2
	switch {
	case tx.refused != nil:
		tx.err = tx.refused
	case tx.mailErr != nil:
		tx.err = tx.mailErr
	case !finalOK && tx.rcptError() != nil:
		tx.err = tx.rcptError()
	case tx.bodyErr != nil:
		tx.err = tx.bodyErr
	case tx.dataErr != nil:
		tx.err = tx.dataErr
	case tx.lostErr != nil:
		tx.err = tx.lostErr
	case tx.final == nil:
		tx.err = protoError(OpData, "transaction abandoned")
	case !finalOK:
		op := OpData
		if tx.chunking {
			op = OpBDAT
		}
		tx.err = replyError(op, tx.final)
	}
	if tx.err != nil {
		if !tx.aborted && !tx.committed {
			c.needReset = true
		}
		c.audit(Event{Type: EventMessageFailed, Op: tx.err.Op, Code: tx.err.Code, Enhanced: tx.err.Enhanced, Kind: tx.err.Kind, Error: tx.err.Error()})
		return
	}
	// One allocation holds the Outcome and, for one recipient, the
	// array of its Accepted list.
	ob := &struct {
		o   Outcome
		acc [1]string
	}{}
	o := &ob.o
	*o = Outcome{Reply: *tx.final, QueueID: QueueID(tx.final.Text()), Accepted: ob.acc[:0]}
	for _, r := range tx.rcpt {
		if r.Reply.Code/100 == 2 {
			o.Accepted = append(o.Accepted, r.Address)
		} else {
			o.Refused = append(o.Refused, r)
		}
	}
	tx.outcome = o
	op := OpData
	if tx.chunking {
		op = OpBDAT
	}
	c.audit(Event{Type: EventMessage, Op: op, Code: o.Reply.Code, Enhanced: o.Reply.Enhanced, QueueID: o.QueueID})
}

// sessionLost settles a transaction whose session broke (or is closing)
// because of cause. A transaction the server answered with 421 keeps that
// refusal as its error. Otherwise, one whose commit point was written gets
// an error wrapping ErrOutcomeUnknown, and one whose commit point was not
// written an I/O error that may be replayed; cause is wrapped, never
// copied: another transaction's 421 is not this one's reply.
func (tx *Tx) sessionLost(cause *Error) {
	if tx.done {
		return
	}
	switch {
	case tx.refused != nil:
		// Its own 421 is its answer (finish prefers it).
	case tx.Committed():
		op := OpData
		if tx.chunking {
			op = OpBDAT
		}
		tx.lostErr = &Error{Op: op, Kind: KindIO, Message: "reply to the committed message lost", Err: fmt.Errorf("%w: %w", ErrOutcomeUnknown, cause)}
	default:
		// Whatever ended the session (an I/O error, another
		// transaction's 421 or bad body), for this one it is a loss.
		tx.lostErr = &Error{Op: cause.Op, Kind: KindIO, Message: "session lost before the message was committed", Err: cause}
	}
	tx.owed = 0
	tx.finish()
}

// advance writes tx's commit point (or abandons it with RSET) once the
// replies it waits on are in: for an all-or-nothing transaction with
// several recipients, the RCPT replies come first; then with CHUNKING the
// body in BDAT chunks, with DATA the DATA command, and after the 354 the
// body and final dot.
func (c *Client) advance(ctx context.Context, tx *Tx) {
	defer func() {
		if c.open == tx {
			c.open = nil
		}
	}()
	if !c.writable() {
		return
	}
	if tx.deferCommit && !tx.dataSent {
		c.readUntil(ctx, func() bool { return tx.rcptRead == len(tx.to) || tx.done })
		if !c.writable() || tx.done {
			return
		}
		if tx.mailErr != nil || tx.dataErr != nil || tx.bodyErr != nil || !tx.recipientsOK() {
			c.abort(tx)
			return
		}
		tx.dataSent = true
		if tx.chunking {
			c.writeChunks(ctx, tx)
			return
		}
		c.setDeadline(ctx, c.opts.Timeouts.DataBlock)
		c.w.WriteString("DATA\r\n")
		c.push(tx, kData, 0)
	}
	if tx.chunking {
		return
	}
	c.readUntil(ctx, func() bool { return tx.dataReply != nil || tx.done })
	if !c.writable() || tx.done || tx.dataReply == nil || tx.dataReply.Code != 354 {
		return
	}
	if tx.mailErr != nil || !tx.recipientsOK() {
		// A 354 although the envelope failed: after 354 there is no
		// way back but to drop the connection.
		tx.aborted = true
		c.fail(ctx, protoError(OpData, "server sent 354 for a transaction whose envelope it refused; session dropped so nothing is delivered"))
		return
	}
	c.writeData(ctx, tx)
}

// abort abandons tx before its commit point with RSET.
func (c *Client) abort(tx *Tx) {
	c.w.WriteString("RSET\r\n")
	c.push(tx, kReset, 0)
	tx.aborted = true
	c.needReset = false
}

// commit marks tx's commit point as queued at the current offset.
func (c *Client) commit(tx *Tx) {
	tx.committed = true
	tx.commitEnd = c.queued()
}

var bodyBufPool = sync.Pool{New: func() any { b := make([]byte, DefaultChunkSize/4+DefaultChunkSize*2); return &b }}

// bodyBuffers returns a read buffer and an encode buffer for one body,
// and the pooled buffer to give back to putBodyBuffers (nil if none).
func (c *Client) bodyBuffers() (rb, eb []byte, pooled *[]byte) {
	cs := c.opts.chunkSize()
	if cs == DefaultChunkSize {
		p := bodyBufPool.Get().(*[]byte)
		b := *p
		return b[:cs/4], b[cs/4 : cs/4 : len(b)], p
	}
	return make([]byte, cs/4), make([]byte, 0, 2*cs), nil
}

// putBodyBuffers returns a buffer from bodyBuffers to the pool.
func putBodyBuffers(p *[]byte) {
	if p != nil {
		bodyBufPool.Put(p)
	}
}

// fill reads the body until at least want encoded octets are in out or
// the body ends. It returns the encoded octets and whether the body
// ended; a bad or failing body is recorded in tx.bodyErr.
func (tx *Tx) fill(rb, out []byte, want int) ([]byte, bool) {
	zero := 0
	for len(out) < want {
		n, err := tx.body.Read(rb)
		if n > 0 {
			zero = 0
			var ok bool
			if out, ok = tx.enc.encode(out, rb[:n]); !ok {
				tx.bodyProblem()
				return out, false
			}
		}
		switch {
		case err == io.EOF:
			var ok bool
			if out, ok = tx.enc.finish(out); !ok {
				tx.bodyProblem()
			}
			return out, true
		case err != nil:
			tx.bodyErr = &Error{Op: OpBody, Kind: KindInvalidInput, Message: "reading the body failed", Err: err}
			return out, false
		case n == 0:
			if zero++; zero > 100 {
				tx.bodyErr = &Error{Op: OpBody, Kind: KindInvalidInput, Message: "body reader returned no data and no error 100 times", Err: io.ErrNoProgress}
				return out, false
			}
		}
	}
	return out, false
}

func (tx *Tx) bodyProblem() {
	kind := KindInvalidInput
	if tx.enc.sizeErr {
		kind = KindPolicy
	}
	tx.bodyErr = &Error{Op: OpBody, Kind: kind, Message: tx.enc.problem}
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
	if tx.rcptRead == len(tx.to) && (tx.dataErr != nil || !tx.recipientsOK()) {
		c.abort(tx)
		return
	}
	rb, eb, pooled := c.bodyBuffers()
	defer putBodyBuffers(pooled)
	cs := c.opts.chunkSize()
	for c.writable() {
		out, eof := tx.fill(rb, eb[:0], cs)
		if tx.bodyErr != nil {
			c.abort(tx)
			return
		}
		c.setDeadline(ctx, c.opts.Timeouts.DataBlock)
		b := c.scratch[:0]
		b = append(b, "BDAT "...)
		b = strconv.AppendInt(b, int64(len(out)), 10)
		isLast := eof
		if isLast {
			b = append(b, " LAST"...)
		}
		b = append(b, '\r', '\n')
		c.scratch = b
		if len(out) > 0 || isLast {
			c.w.Write(b)
			if _, err := c.w.Write(out); err != nil {
				c.fail(ctx, ioError(ctx, OpBDAT, err))
				return
			}
			if isLast {
				c.push(tx, kFinal, 0)
				c.commit(tx)
			} else {
				c.push(tx, kChunk, 0)
			}
			c.sync(ctx)
			// Bound the octets owed (the RFC 2920 deadlock): a server
			// that stops reading while its replies pile up unread would
			// block these writes for ever.
			for tx.owed*c.owedReplyEstimate() > maxOwedReplyBytes && c.writable() && !tx.done {
				c.readOne(ctx)
			}
			if !c.writable() {
				return
			}
			if !isLast && tx.dataErr != nil {
				// A refused chunk fails the transaction: send no more.
				c.abort(tx)
				return
			}
		}
		if eof {
			return
		}
	}
}

// writeData streams the body after a 354, dot-stuffed, and the final
// dot. A bad body can only be abandoned by dropping the session before
// the dot: the bad octets are never written.
func (c *Client) writeData(ctx context.Context, tx *Tx) {
	rb, eb, pooled := c.bodyBuffers()
	defer putBodyBuffers(pooled)
	cs := c.opts.chunkSize()
	for c.writable() {
		out, eof := tx.fill(rb, eb[:0], cs)
		if tx.bodyErr != nil {
			tx.aborted = true
			c.fail(ctx, &Error{Op: OpBody, Kind: KindIO, Message: "session dropped before the final dot because the body failed: " + tx.bodyErr.Message})
			return
		}
		c.setDeadline(ctx, c.opts.Timeouts.DataBlock)
		if _, err := c.w.Write(out); err != nil {
			c.fail(ctx, ioError(ctx, OpData, err))
			return
		}
		if eof {
			c.push(tx, kFinal, 0)
			c.commit(tx)
			return
		}
	}
}

// checkIdle looks for a close or an unsolicited reply (a 421 at the
// server's idle timeout) on a session with nothing in flight that sat
// unused for idlePeekAfter, before a transaction is written on it:
// written to a server that has gone, a pipelined transaction's commit
// point could leave before the loss is seen, and the outcome would be
// unknown. Where the kernel can be asked (peekSocket) this costs one
// non-blocking system call and catches a close of any age; elsewhere a
// session unused for idleProbeAfter is probed with a 2 ms read.
func (c *Client) checkIdle(ctx context.Context) {
	idle := time.Since(c.lastActive)
	if idle < idlePeekAfter {
		return
	}
	if c.r.Buffered() > 0 {
		c.probeIdle(ctx)
		return
	}
	switch peekSocket(c.t) {
	case peekNothing:
	case peekSomething:
		c.probeIdle(ctx)
	default:
		if idle > idleProbeAfter {
			c.probeIdle(ctx)
		}
	}
}

// probeIdle reads, for at most 2 ms, what the server sent on an idle
// session: a close, or an unsolicited reply (a 421 before its idle
// timeout), either of which ends the session.
func (c *Client) probeIdle(ctx context.Context) {
	// A deadline already past would fail the read before it looks at
	// the socket; a short one in the future reads what is there.
	c.t.SetDeadline(time.Now().Add(2 * time.Millisecond))
	c.deadline = time.Time{}
	_, err := c.r.Peek(1)
	switch {
	case err == nil:
		c.setDeadline(ctx, time.Second)
		rep, rerr := readReplyIn(c.r, OpMail, c.caps.EnhancedStatusCodes, &c.texts)
		if rerr != nil {
			c.fail(ctx, ioError(ctx, OpMail, rerr))
		} else if rep.Code == 421 {
			c.fail(ctx, replyError(OpMail, &rep))
		} else {
			c.fail(ctx, protoError(OpMail, "unsolicited reply on an idle session: %s", rep.String()))
		}
	case isTimeout(err):
		// Nothing waiting: the session looks alive.
	default:
		c.fail(ctx, ioError(ctx, OpMail, fmt.Errorf("server closed the idle session: %w", err)))
	}
}

// sanitize makes an invalid address safe to show in an error.
func sanitize(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

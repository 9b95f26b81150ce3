package smtp

import (
	"context"
	"fmt"
	"time"
)

// The read half: replies are read in order by whoever holds the read
// token (c.reading) and given to the transaction or command that owes
// them, under c.mu; c.cond tells the other half.

// await returns once cond holds (it is called with c.mu held), the
// session has closed, or nothing more is owed. If no other goroutine is
// reading, it reads the replies itself; otherwise it waits for the
// reader. The caller must have flushed what cond waits on.
func (c *Client) await(ctx context.Context, cond func() bool) {
	c.mu.Lock()
	for !cond() && c.State() != StateClosed && len(c.pending) > 0 {
		if c.reading || c.readers > 0 {
			c.cond.Wait()
			continue
		}
		c.reading = true
		c.mu.Unlock()
		c.readOne(ctx)
		c.mu.Lock()
		c.reading = false
		c.cond.Broadcast()
	}
	c.unlock()
}

// readOne reads the next reply, with the read token held, and gives it
// to what owes it; it reports whether the session is closed. The wait for a reply starts once its command has left
// (before that, the write half's flush starts it: see armRead); with
// nothing owed, the read has no deadline.
func (c *Client) readOne(ctx context.Context) (closed bool) {
	c.rwatch.watch(ctx, &c.dl, &c.dl.r)
	c.mu.Lock()
	if c.State() == StateClosed {
		c.unlock()
		return true
	}
	op := OpSend
	if len(c.pending) > 0 {
		p := c.pending[0]
		op = p.op()
		if p.end <= c.cw.n.Load() {
			c.setReadDeadline(ctx, c.replyTimeout(p.kind))
		} else {
			c.dl.clearRead()
		}
	} else {
		c.dl.clearRead()
	}
	c.mu.Unlock()
	rep, err := readReplyIn(c.r, op, c.caps.EnhancedStatusCodes, &c.texts)
	c.mu.Lock()
	defer c.unlock()
	switch {
	case c.State() == StateClosed:
		// Closed meanwhile (Close, QUIT, or a failure on the write half).
	case err != nil:
		if len(c.pending) > 0 {
			op = c.pending[0].op()
		}
		c.failLocked(ioError(ctx, op, err))
	case len(c.pending) == 0:
		c.unsolicitedLocked(&rep)
	default:
		c.dispatchLocked(&rep)
	}
	return c.State() == StateClosed
}

// unsolicitedLocked ends the session on a reply sent while nothing was
// owed: a 421 (a server closing an idle session), or a reply to a command
// not yet written, which would be taken as the answer to the next one.
func (c *Client) unsolicitedLocked(rep *Reply) {
	if rep.Code == 421 {
		e := replyError(OpMAIL, rep)
		e.Message = "server closed the idle session: " + e.Message
		c.failLocked(e)
		return
	}
	c.failLocked(protoError(OpMAIL, "server sent a reply before its command was written: %s", rep.String()))
}

// dispatchLocked gives a reply to the oldest owed entry (mu held).
func (c *Client) dispatchLocked(rep *Reply) {
	p := c.pending[0]
	c.pending[0] = pending{} // no reference to a finished Tx
	c.pending = c.pending[1:]
	now := time.Now()
	c.lastActive = now
	c.heard.Store(now.UnixNano())
	defer c.cond.Broadcast()
	op := p.op()
	if p.kind == kCmd {
		p.res.rep = *rep
		p.res.done = true
		if rep.Code == 421 {
			c.failLocked(replyError(p.cmdOp, rep))
		}
		return
	}
	tx := p.tx
	if rep.Code == 421 && c.closing == nil {
		e := replyError(op, rep)
		if tx != nil && !tx.done {
			tx.owed--
			if p.kind == kRcpt {
				e.Recipient = tx.to[p.idx]
			}
			if tx.refused == nil {
				tx.refused = e
			}
		}
		c.beginClosingLocked(e)
		if tx != nil && !tx.done && tx.owed == 0 {
			// Its own 421 was its last reply: no more will come.
			tx.sessionLost(e)
		}
		return
	}
	switch {
	case tx == nil:
		c.auditLocked(Event{Type: EventReset, Op: OpRSET, Code: rep.Code})
	case !tx.done:
		if c.closing != nil {
			tx.after421 = true
			if rep.Code >= 400 && tx.closingRefusal == nil {
				tx.closingRefusal = replyError(op, rep)
			}
		}
		c.replyMax = max(c.replyMax, replyOctets(rep))
		c.chunkReplySeen = c.chunkReplySeen || p.kind == kChunk || p.kind == kFinal
		tx.onReply(p, rep)
	}
	if c.closing != nil && len(c.pending) == 0 {
		c.failLocked(c.closing)
	}
	if c.wbroken != nil && len(c.pending) == 0 {
		c.failLocked(c.wbroken)
	}
	c.settleState()
}

// op is the step a pending reply answers.
func (p pending) op() Op {
	if p.kind == kCmd {
		return p.cmdOp
	}
	if p.kind == kFinal && p.tx != nil && p.tx.chunking {
		return OpBDAT
	}
	return p.kind.op()
}

func (k replyKind) op() Op {
	switch k {
	case kMail:
		return OpMAIL
	case kRcpt:
		return OpRCPT
	case kData:
		return OpDATA
	case kChunk:
		return OpBDAT
	case kReset:
		return OpRSET
	}
	return OpDATA
}

// beginClosingLocked handles a 421: the server is closing the session
// (RFC 5321 §3.8), and the 421 is its last word. Nothing more is written
// (what is still buffered, or comes to be written, is dropped, so no
// commit point queued after the 421 leaves). Only the replies owed to
// transactions whose commit point has left are still read: a server that
// goes on answering after its 421 gives them their real outcomes (a 2xx
// is a delivery; a refusal is the closing session's, not a verdict), and
// one that closes leaves them never processed, and replayable. Every
// other transaction still open is settled now as lost before its commit
// point (replayable; the 421 is not copied onto it). Once the replies
// kept are read, or at once when there are none, the session closes with
// cause.
func (c *Client) beginClosingLocked(cause *Error) {
	if c.closing == nil {
		c.closing = cause
	}
	c.cw.stop.Store(true)
	keep := 0
	for i, p := range c.pending {
		if p.tx != nil && p.tx.refused == nil && p.tx.committedLocked() {
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
		c.failLocked(cause)
	}
}

// onReply records one reply of the transaction (c.mu held).
func (tx *Tx) onReply(p pending, rep *Reply) {
	c := tx.c
	tx.owed--
	ok := rep.Code/100 == 2
	if rep.Code >= 400 && !tx.aborted && c.closing == nil {
		// A refused transaction, at any step, is followed by RSET
		// before the next MAIL: some servers (Mailpit while it shuts
		// down) refuse the next MAIL with 503 otherwise.
		c.needReset = true
	}
	if rep.Code == 503 && tx.stateErr == nil && tx.mailErr == nil && (p.kind == kMail || p.kind == kRcpt || p.kind == kData) {
		e := replyError(p.op(), rep)
		e.Kind = KindProtocol
		e.Message = "the server's session is in the wrong state (bad sequence of commands), not a verdict on the message: " + e.Message
		tx.stateErr = e
	}
	switch p.kind {
	case kMail:
		if ok {
			c.auditCtxLocked(tx.evctx, tx.event(Event{Type: EventMailAccepted, Op: OpMAIL, Code: rep.Code, Enhanced: rep.Enhanced, From: tx.from}))
		} else {
			tx.mailErr = replyError(OpMAIL, rep)
		}
	case kRcpt:
		tx.rcpt[p.idx].Reply = *rep
		tx.rcptRead++
		ev := Event{Type: EventRcptAccepted, Op: OpRCPT, Code: rep.Code, Enhanced: rep.Enhanced, Recipient: tx.to[p.idx]}
		if !ok {
			ev.Type = EventRcptRefused
		}
		c.auditCtxLocked(tx.evctx, tx.event(ev))
	case kData:
		tx.dataRep = *rep
		tx.dataReply = &tx.dataRep
		if rep.Code != 354 {
			tx.dataErr = replyError(OpDATA, rep)
			tx.aborted = true
			c.needReset = true
		}
	case kChunk:
		if !ok && tx.dataErr == nil {
			tx.dataErr = replyError(OpBDAT, rep)
		}
	case kFinal:
		tx.finalRep = *rep
		tx.final = &tx.finalRep
	case kReset:
		c.auditLocked(Event{Type: EventReset, Op: OpRSET, Code: rep.Code})
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
	e := replyError(OpRCPT, &first.Reply)
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

// finish settles the transaction (c.mu held): its error, or its Outcome.
func (tx *Tx) finish() {
	tx.done = true
	c := tx.c
	c.finished.Add(1)
	finalOK := tx.final != nil && tx.final.Code/100 == 2
	switch {
	case tx.refused != nil:
		tx.err, tx.replay = tx.refused, true
	case tx.closingRefusal != nil && !finalOK:
		r := tx.closingRefusal
		tx.err = &Error{Op: r.Op, Kind: KindRejected, Code: c.closing.Code, Enhanced: c.closing.Enhanced, Recipient: r.Recipient,
			Message: fmt.Sprintf("refused (%d) by a session the server was closing after its 421, not a verdict on the message: %s", r.Code, c.closing.Message)}
		tx.replay = true
	case tx.lostErr != nil && tx.final == nil && tx.committedLocked():
		// Its commit point left and the session ended before its final
		// reply: whatever its MAIL and RCPT got, the server may have
		// queued it (into a transaction it still held open: see
		// settled). Its outcome is unknown, unless the server closed
		// after its 421 without answering it at all.
		tx.err = tx.lostErr
		tx.replay = c.closing != nil && !tx.after421
	case tx.stateErr != nil && !finalOK:
		tx.err, tx.replay = tx.stateErr, true
	case tx.mailErr != nil && !finalOK:
		// A refused MAIL whose final reply accepted the message anyway
		// is a delivery (see the doc comment of settled).
		tx.err = tx.mailErr
	case !finalOK && tx.rcptError() != nil:
		tx.err = tx.rcptError()
	case tx.bodyErr != nil:
		tx.err = tx.bodyErr
	case tx.dataErr != nil:
		tx.err = tx.dataErr
	case tx.lostErr != nil:
		tx.err = tx.lostErr
		tx.replay = !tx.committedLocked() || c.closing != nil && !tx.after421
	case tx.final == nil:
		tx.err = protoError(OpDATA, "transaction abandoned")
	case !finalOK:
		op := OpDATA
		if tx.chunking {
			op = OpBDAT
		}
		tx.err = replyError(op, tx.final)
	}
	if tx.err != nil {
		if !tx.aborted && !tx.committed {
			c.needReset = true
		}
		c.auditCtxLocked(tx.evctx, tx.event(Event{Type: EventMessageFailed, Op: tx.err.Op, Code: tx.err.Code, Enhanced: tx.err.Enhanced, Kind: tx.err.Kind, Error: tx.err.Error()}))
		return
	}
	// One allocation holds the Outcome and, for one recipient, the
	// array of its Accepted list.
	ob := &struct {
		o   Outcome
		acc [1]string
	}{}
	o := &ob.o
	*o = Outcome{Reply: *tx.final, QueueID: c.texts.outcomeQueueID(tx.final), Accepted: ob.acc[:0]}
	for _, r := range tx.rcpt {
		if r.Reply.Code/100 == 2 {
			o.Accepted = append(o.Accepted, r.Address)
		} else {
			o.Refused = append(o.Refused, r)
		}
	}
	tx.outcome = o
	op := OpDATA
	if tx.chunking {
		op = OpBDAT
	}
	c.auditCtxLocked(tx.evctx, tx.event(Event{Type: EventMessage, Op: op, Code: o.Reply.Code, Enhanced: o.Reply.Enhanced, QueueID: o.QueueID}))
}

// sessionLost settles a transaction whose session broke (or is closing)
// because of cause (c.mu held). A transaction the server answered with
// 421 keeps that refusal as its error. After another transaction's 421,
// one the server sent no reply since was never processed: it is
// replayable, committed or not. Otherwise, one whose commit point was
// written gets an error wrapping ErrOutcomeUnknown, and one whose commit
// point was not written an I/O error that may be replayed; cause is
// wrapped, never copied: another transaction's 421 is not this one's
// reply.
func (tx *Tx) sessionLost(cause *Error) {
	if tx.done {
		return
	}
	closing := tx.c.closing
	switch {
	case tx.refused != nil, tx.closingRefusal != nil:
		// Its own 421, or the closing session's refusal, is its answer
		// (finish prefers them).
	case closing != nil && !tx.after421:
		tx.lostErr = &Error{Op: OpMAIL, Kind: KindIO, Message: "the server closed the session after its 421 without answering this message, so it was never processed", Err: closing}
	case tx.committedLocked():
		op := OpDATA
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

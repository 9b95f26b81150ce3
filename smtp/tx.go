package smtp

import (
	"context"
	"io"

	"github.com/smtpkit/smtpkit/internal/smtpx"
)

// The parts of Tx and Client that package sender needs and that are not
// API (see package smtpx).
func init() {
	smtpx.ClientSilent = (*Client).silent
	smtpx.TxSettled = (*Tx).settled
	smtpx.ClientFinished = func(c *Client) uint64 { return c.finished.Load() }
	smtpx.ClientOpenWaiting = (*Client).openWaiting
	smtpx.ClientWritesFromReader = (*Client).writesFromReader
	smtpx.ClientFlushReady = (*Client).flushReady
	smtpx.ClientReplyBuffered = (*Client).replyBuffered
}

// Tx is a transaction written by [Client.WriteTx] whose replies are read
// by [Client.ReadTx] or [Client.ReadReplies]. Between the two, other
// transactions may be written behind it (pipelining); the Client tracks,
// for each, whether its commit point has been written. Its methods may
// be called from any goroutine.
type Tx struct {
	c *Client
	// Set by WriteTx before the transaction is shared, and only read
	// after.
	from        string
	to          []string
	partial     bool
	body        io.Reader
	chunking    bool
	deferCommit bool // the commit waits for the RCPT replies (more than one recipient, all-or-nothing)
	enc         bodyEncoder
	tag         string // Envelope.Tag, for the audit events
	// evctx carries the values of WriteTx's ctx (not its cancellation)
	// to AuditContext, for every event of the transaction.
	evctx context.Context
	// msgid reads the Message-ID header as the body streams; owned by
	// the write half. Its value is copied to msgID once found.
	msgid MessageIDScanner
	// bw is the writer a body's WriteTo is given; owned by the write
	// half. It is the transaction's own, so one kept past WriteTo
	// reaches no other message.
	bw bodyWriter

	// Guarded by c.mu. The write half sets the first group, the read
	// half the replies; each moves only forward.
	msgID     string // the message's Message-ID, once the body has shown it
	dataSent  bool   // DATA written (DATA mode), or the deferred commit begun
	committed bool   // the commit point is queued for writing
	commitEnd int64  // the output offset just past the commit point
	aborted   bool   // abandoned before its commit point
	bodyErr   *Error // the body failed a check or its reader failed
	owed      int    // replies still owed by the server

	dataReply *Reply // the reply to DATA
	rcpt      []RecipientStatus
	rcpt1     [1]RecipientStatus // rcpt's storage for one recipient
	rcptRead  int
	mailErr   *Error
	dataErr   *Error
	// refused is the 421 the server answered one of this transaction's
	// own commands with: its own refusal, never another's.
	refused *Error
	// after421 is set once the server sent this transaction a reply
	// after its 421 (to another transaction); closingRefusal is the
	// first refusal among them: the closing session's, not a verdict.
	after421       bool
	closingRefusal *Error
	// stateErr is a 503 to MAIL, RCPT or DATA: the server's state, not a
	// verdict on the message.
	stateErr *Error
	// lostErr is why the session ended before every reply was read.
	lostErr *Error
	final   *Reply
	// dataRep and finalRep hold the replies dataReply and final point
	// to, so that reading a reply allocates nothing.
	dataRep, finalRep Reply

	done    bool
	replay  bool // failed without any chance of delivery (see settled)
	outcome *Outcome
	err     *Error
}

// event returns e with the transaction's tag and Message-ID (c.mu
// held).
func (tx *Tx) event(e Event) Event {
	e.Tag, e.MessageID = tx.tag, tx.msgID
	return e
}

// Committed reports whether the transaction's commit point (the final
// "." or BDAT ... LAST) has been handed to the transport (a write holding
// it has started, and did not fail before it): from then on the server
// may deliver the message whatever happens to the session.
func (tx *Tx) Committed() bool {
	tx.c.mu.Lock()
	defer tx.c.mu.Unlock()
	return tx.committedLocked()
}

func (tx *Tx) committedLocked() bool { return tx.committed && tx.c.cw.handed.Load() >= tx.commitEnd }

func (tx *Tx) resultLocked() (*Outcome, error) {
	if !tx.done {
		return nil, nil
	}
	if tx.err != nil {
		return nil, tx.err
	}
	return tx.outcome, nil
}

// settled is the sender's one look at a transaction (smtpx.TxSettled):
// once it is done, its result (what ReadTx returns, without reading or
// changing the session), whether it is replayable, and whether the
// server answered one of its own commands with 421 (service not
// available, closing the channel: its own refusal, not one sent to
// another transaction); and what closed the session, if anything.
//
// A transaction is replayable when it failed without any chance of
// delivery and may be sent again on a new session:
//   - the server answered this transaction itself with 421;
//   - the session was lost before its commit point was written;
//   - after another transaction's 421, the server refused it (the
//     closing session's refusal, not a verdict on the message), or closed
//     the connection without answering it at all, committed or not (a
//     server that announced it is closing processes nothing more);
//   - the server answered its MAIL, RCPT or DATA with 503 (bad sequence
//     of commands): the session's state, not the message, was wrong.
//
// A transaction whose commit point was written, and whose own reply was
// lost on a server that was answering it, is not replayable: its error
// wraps [ErrOutcomeUnknown]. One whose final reply accepted the message
// is delivered, whatever its MAIL got: a server that still held an
// earlier transaction open answers the next pipelined MAIL with 503
// ("nested MAIL command") and may then take that message's recipients
// and body into the open transaction, and queue it.
func (tx *Tx) settled() (done bool, out *Outcome, err error, replay, answered421 bool, sessionErr error) {
	c := tx.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr != nil {
		sessionErr = c.closeErr
	}
	if !tx.done {
		return false, nil, nil, false, false, sessionErr
	}
	out, err = tx.resultLocked()
	return true, out, err, tx.replay, tx.refused != nil, sessionErr
}

// Send delivers one message: MAIL, RCPT for each recipient, then the
// body with BDAT when the server offers CHUNKING, DATA otherwise; with
// PIPELINING the commands go in one write. The envelope is validated
// and the policy consulted before any byte is written. On success it
// returns the [Outcome]; otherwise an [*Error] (Op says which step
// failed; errors.Is(err, ErrOutcomeUnknown) when the message was
// committed but its reply lost). The session stays usable after a
// refused message.
//
// A body that implements [io.WriterTo] (*bytes.Reader, *bytes.Buffer,
// *strings.Reader, io.MultiReader of those) is written from its own
// memory, without a copy, in BDAT chunks of up to 1 MiB; any other body
// is read in pieces of Options.ChunkSize. Either way every octet is
// checked before it is written: a body that breaks a rule (a bare CR or
// LF, a line too long, the size limit) never has its offending octet or
// its end written, and the transaction is abandoned. A WriteTo must not
// keep the writer it is given once it returns; one that does gets an
// error from every later Write, and writes into no other message.
func (c *Client) Send(ctx context.Context, env Envelope, body io.Reader) (*Outcome, error) {
	tx, err := c.WriteTx(ctx, env, body)
	if err != nil {
		return nil, err
	}
	return c.ReadTx(ctx, tx)
}

// WriteTx is the write half of a transaction. It validates env and
// writes as much of the transaction as can be written without waiting
// for replies: MAIL and RCPT with PIPELINING, then with CHUNKING the body
// (ending in BDAT ... LAST unless the commit must wait for the RCPT
// replies), or DATA when the 354 may come without risk. Before it
// writes, it settles the transaction written before it (waiting for the
// replies that one's commit waits on, and writing its body), so a body
// and the next transaction's commands leave in one write.
//
// What WriteTx writes may stay in the client's buffer, so that several
// transactions leave in one write: it goes out with the next ReadTx (or
// a WriteTx that must wait for a reply), or at [Client.Flush].
//
// An error means nothing of this transaction was written: validation,
// policy, or a closed session (then wrapping [ErrClosed]). Otherwise
// read the outcome with [Client.ReadTx] (while another goroutine is in
// [Client.ReadReplies], ReadTx waits for it to read the replies);
// transactions are answered in the order written.
func (c *Client) WriteTx(ctx context.Context, env Envelope, body io.Reader) (*Tx, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.writable() {
		return nil, c.closedError(OpMAIL)
	}
	tx, mail, err := c.prepare(ctx, &env, body)
	if err != nil {
		return nil, err
	}
	if err := ctxError(ctx, OpMAIL); err != nil {
		return nil, err
	}
	c.watch(ctx)
	if err := c.writeTx(ctx, tx, &env, mail); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if !c.writableLocked() && !tx.done && tx.owed == 0 && c.open != tx {
		// The session closed (or began closing) while tx was written,
		// and nothing of it is owed: settle it now, as the rest were.
		cause := c.closeErr
		if cause == nil {
			cause = c.closing
		}
		tx.sessionLost(cause)
	}
	c.unlock()
	return tx, nil
}

// ReadTx is the read half of one transaction, for a goroutine that also
// writes: it reads tx's replies (and those of transactions written
// before it), first writing its body or final chunk if they waited on
// replies and no other goroutine is in a write-half call, and returns
// its outcome. A second call returns the same result. While a goroutine
// is in [Client.ReadReplies], ReadTx (from any goroutine) reads nothing
// itself: it waits until that goroutine has read tx's replies or the
// session has closed, and the reader's context, not ReadTx's, bounds
// that wait.
func (c *Client) ReadTx(ctx context.Context, tx *Tx) (*Outcome, error) {
	if tx == nil || tx.c != c {
		return nil, inputError(OpSend, "transaction does not belong to this client")
	}
	// No early return for an ended ctx here: the transaction is written,
	// so its outcome must be settled (an interrupted read closes the
	// session and reports ErrOutcomeUnknown for a committed transaction).
	if c.wmu.TryLock() {
		c.watch(ctx)
		c.mu.Lock()
		open := c.open
		c.mu.Unlock()
		if open == tx {
			c.advance(ctx, tx)
		}
		c.flush(ctx, OpSend)
		c.wmu.Unlock()
	}
	c.await(ctx, func() bool { return tx.done })
	c.mu.Lock()
	if !tx.done {
		if c.State() != StateClosed {
			// Only reachable if the reply queue lost track: fail safe.
			c.failLocked(protoError(OpSend, "internal error: transaction has no pending reply"))
		}
		tx.sessionLost(c.closedErrorLocked(OpSend))
	}
	c.settleState()
	out, err := tx.resultLocked()
	c.unlock()
	return out, err
}

// ReadReplies is the read half for a goroutine that only reads: it
// reads every reply the server sends, in order, and gives each to the
// transaction or command that owes it, until the session closes; then it
// returns the error that closed it (wrapping [ErrClosed]). After each
// reply (and once more when the session closes), it calls after, if not
// nil, from this goroutine and without holding any lock of the Client.
// A [Client.ReadTx] on another goroutine returns once this goroutine
// has read its transaction's replies.
//
// It reads even when nothing is owed, so a server that closes an idle
// session, or sends a reply before its command was written, is seen at
// once: a reply that comes while nothing is owed ends the session (a 421
// with that reply, anything else as a protocol error). While it runs, a
// write-half call that needs a reply (the 354 after DATA) waits for it
// to be read here. It never writes: the goroutine that writes must
// flush ([Client.Flush]) before it waits for anything but the network.
func (c *Client) ReadReplies(ctx context.Context, after func()) error {
	c.mu.Lock()
	c.readers++
	for c.reading {
		c.cond.Wait()
	}
	c.reading = true
	c.mu.Unlock()
	for !c.readOne(ctx) {
		if after != nil {
			after()
		}
	}
	c.mu.Lock()
	c.rwatch.unwatch() // with the token: the read watcher is its holder's
	c.reading = false
	c.readers--
	c.cond.Broadcast()
	c.unlock()
	if after != nil {
		after()
	}
	return c.closedError(OpSend)
}

// settleState returns a session with nothing owed or open to StateReady
// (mu held).
func (c *Client) settleState() {
	if c.State() == StateTransaction && len(c.pending) == 0 && c.open == nil {
		c.setStateLocked(StateReady)
	}
}

package smtp

import (
	"bytes"
	"context"
	"net"

	"github.com/smtpkit/smtpkit/internal/smtpx"
)

// Writing from the reading goroutine. A program that reads on one
// goroutine (ReadReplies) and writes on another pays a wake-up of the
// writer for each reply that lets it write: the next message once a
// window of one is answered, a DATA body once its 354 is read. Package
// sender saves it: when its writer is not in a write-half call, the
// reader, in ReadReplies' callback, writes what can be written without
// waiting for any reply. These are the core's answers to "may it?" and
// its flush that never waits; they reach the sender through smtpx.
//
// While the reader writes, nobody reads. That is safe only while the
// server can never be blocked writing replies to us, or it could stop
// reading and block our write in turn (the RFC 2920 deadlock): the
// replies owed, counting those of what is about to be written, must fit
// in the buffers between the server and the client. On a kernel socket
// they do below maxOwedReplyBytes, the bound a lone goroutine keeps while
// chunks stream; on an unbuffered transport (net.Pipe) nothing fits, so
// the reader never writes there.

// innermostConn looks through transports that expose the connection they
// wrap (NetConn, as *tls.Conn and this module's transports do) down to
// one that does not.
func innermostConn(t any) any {
	for {
		nc, ok := t.(interface{ NetConn() net.Conn })
		if !ok {
			return t
		}
		t = nc.NetConn()
	}
}

// socketBuffered reports whether t is, or wraps, a kernel socket: one
// whose buffers hold at least maxOwedReplyBytes in each direction (or a
// test transport of this module that buffers as one does: see
// smtpx.SocketLike).
func socketBuffered(t any) bool {
	switch innermostConn(t).(type) {
	case *net.TCPConn, *net.UnixConn, interface{ KernelBuffered(smtpx.SocketLike) }:
		return true
	}
	return false
}

// awaitedInLocked reports whether the reply the open transaction's
// next step waits for (the RCPT replies of an all-or-nothing
// transaction, or the 354) has been read, or the transaction cannot go
// on anyway (it is done, or the session no longer writes). (c.mu held.)
func (c *Client) awaitedInLocked(tx *Tx) bool {
	switch {
	case tx.done || !c.writableLocked():
		return true
	case tx.deferCommit && !tx.dataSent:
		return tx.rcptRead == len(tx.to)
	case tx.chunking:
		return true
	}
	return tx.dataReply != nil
}

// openReadyLocked reports whether advance(tx) for the open transaction
// would write all it has to write without waiting for any reply: its
// awaited reply is in, and what follows is not a DATA command (which
// would then wait for its 354). (c.mu held.)
func (c *Client) openReadyLocked(tx *Tx) bool {
	dataNext := tx.deferCommit && !tx.dataSent && !tx.chunking && !tx.done && c.writableLocked()
	return c.awaitedInLocked(tx) && !dataNext
}

// openWaiting reports whether the open transaction, if any, still waits
// for the reply its next step needs (so a write-half call now would
// wait for it).
func (c *Client) openWaiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open != nil && !c.awaitedInLocked(c.open)
}

// writesFromReader reports whether the goroutine in ReadReplies, in its
// callback, may make a write-half call that leaves the server owing
// replies more: it will not wait for a reply (the server pipelines, and
// the open transaction can go on), and the replies owed then still fit
// in the buffers of the socket (see above).
func (c *Client) writesFromReader(replies int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writesFromReaderLocked(replies)
}

func (c *Client) writesFromReaderLocked(replies int) bool {
	if !c.caps.Pipelining || !c.buffered || c.readers == 0 || !c.writableLocked() {
		return false
	}
	owed := len(c.pending) + replies
	if c.open != nil {
		if !c.openReadyLocked(c.open) {
			return false
		}
		owed += 2 // its final reply, and an RSET's
	}
	if c.needReset {
		owed++
	}
	return owed*c.owedReplyEstimate() <= maxOwedReplyBytes
}

// flushReady is Flush that never waits for a reply: it writes the open
// transaction's body or last chunk only if the reply they wait on has
// been read (and, from the reading goroutine, only if writesFromReader
// allows it), then what is buffered. It reports whether a transaction
// is still open (its body not yet written).
func (c *Client) flushReady(ctx context.Context, fromReader bool) (open bool, err error) {
	return c.flushOpen(ctx, func(tx *Tx) bool {
		return c.openReadyLocked(tx) && (!fromReader || c.writesFromReaderLocked(0))
	})
}

// replyBuffered reports whether a whole reply is in the read buffer, so
// that ReadReplies' next read will not wait for the network. Only the
// goroutine in ReadReplies may ask (from its callback): it holds the read
// half. It looks at the lines of the next reply only (up to its last
// line), each of which the next read parses anyway.
func (c *Client) replyBuffered() bool {
	n := c.r.Buffered()
	if n == 0 {
		return false
	}
	buf, _ := c.r.Peek(n) // never waits: n octets are buffered
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return false
		}
		if i < 4 || buf[3] != '-' {
			return true // the reply's last line ("250 ok", or a short one)
		}
		buf = buf[i+1:]
	}
}

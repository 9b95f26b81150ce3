package smtp

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"unsafe"
)

// A body reaches the wire through a bodyStream, by one of two roads:
//
//   - A body that implements io.WriterTo (*bytes.Reader, *bytes.Buffer,
//     *strings.Reader, and many of the callers' own types) writes itself
//     to the stream. What the encoder takes as it is (verbatim: every
//     line already CRLF, within the limits, nothing to dot-stuff) goes
//     to the wire from the caller's memory, in BDAT chunks of up to
//     directChunkSize octets; nothing is copied but the last partial
//     chunk and the lines the encoder must change.
//   - Any other body (an *os.File among them, whose WriteTo hands the
//     stream to its ReadFrom) is read into one buffer of the read size
//     (Options.ChunkSize), and a full buffer of verbatim octets is
//     written from there as one chunk: one copy, the read itself.
//
// Either way the encoder sees every octet before it is written, so a
// body that breaks a rule never reaches the wire (see bodyEncoder), and
// what the encoder changes goes through eb, the encode buffer.

// directChunkSize is the largest BDAT chunk written from a body already
// in memory. Chosen by measurement (BenchmarkBodySize, 10 MiB bodies,
// CPU of client and sink per MB, on this project's 2-core machine): 64
// KiB 1,008 µs, 256 KiB 930 µs, 1 MiB 875 µs (the wire control 480-515
// µs): larger chunks cost fewer commands, replies and system calls.
// Past 1 MiB the gain is within noise, and a chunk is what a server may
// buffer at once. It is the sender's gate piece too.
const directChunkSize = 1 << 20

// slowRun: when verbatim took fewer octets than this before it stopped,
// the body needs changes throughout (bare LFs to normalise, say) and the
// encoder takes the next read-size window in one pass rather than a line
// at a time.
const slowRun = 512

// bodyBufs are one body's read and encode buffers, for one read size.
// Each is made when a body first needs it: rb only for a body that is
// read (ReadFrom), eb as small as the octets it has had to gather. A
// session that sends only small messages from memory so holds a few KiB,
// not the read size and three times it (the encoder's worst case).
type bodyBufs struct {
	size int    // the read size: the pool it belongs to
	rb   []byte // nil, or size octets
	eb   []byte // grown by append, kept at the capacity it reached
}

// ebInitial is the capacity of a new encode buffer: commands and small
// bodies fit; a body that needs more grows it once, and the pool keeps
// the grown buffer.
const ebInitial = 4 << 10

// bodyBufPools holds a pool of bodyBufs per read size (Options.ChunkSize):
// a body borrows its buffers for as long as it streams, so an idle
// session holds none, and a busy one allocates none per message.
var bodyBufPools sync.Map // int -> *sync.Pool

func bodyBufPool(size int) *sync.Pool {
	if p, ok := bodyBufPools.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := bodyBufPools.LoadOrStore(size, &sync.Pool{New: func() any {
		return &bodyBufs{size: size, eb: make([]byte, 0, ebInitial)}
	}})
	return p.(*sync.Pool)
}

// stopReason says why a bodyStream stopped writing.
type stopReason uint8

const (
	stopNone stopReason = iota
	stopBody            // the body failed (tx.bodyErr): abandon the transaction
	stopWire            // the session cannot go on, or a chunk was refused: handled
)

// errBodyStopped is what the stream's Write returns once it has stopped,
// so that a body's WriteTo returns early.
var errBodyStopped = errors.New("smtp: body stopped")

// bodyStream writes one transaction's body, on the write half: as BDAT
// chunks with CHUNKING, otherwise as the dot-stuffed stream after the
// 354. Owned by the goroutine in the write half for the body's length.
type bodyStream struct {
	c   *Client
	ctx context.Context
	tx  *Tx

	bufs    *bodyBufs // from bodyBufPool(bufs.size)
	rb      []byte    // read buffer (ReadFrom), made on first use
	eb      []byte    // encoded octets not yet written
	chunk   int       // the longest chunk: octets verbatim looks at once
	flushAt int       // eb is written once it holds this many octets
	stop    stopReason
}

// newBodyStream readies the client's one body stream for tx (the write
// half streams one body at a time): no allocation per message.
func (c *Client) newBodyStream(ctx context.Context, tx *Tx) *bodyStream {
	s := &c.body
	*s = bodyStream{c: c, ctx: ctx, tx: tx}
	cs := c.opts.chunkSize()
	s.bufs = bodyBufPool(cs).Get().(*bodyBufs)
	s.rb, s.eb = s.bufs.rb, s.bufs.eb[:0]
	s.flushAt = cs
	s.chunk = cs
	if c.opts.ChunkSize <= 0 {
		s.chunk = max(cs, directChunkSize)
	}
	return s
}

// release gives the buffers back, shuts the transaction's body writer
// (Tx.bw: a body that kept it, against the io.WriterTo contract, gets
// errBodyStopped from a late write and reaches no other message), and
// clears the stream.
func (s *bodyStream) release() {
	if s.tx != nil {
		s.tx.bw.s = nil
	}
	if s.bufs != nil {
		s.bufs.eb = s.eb[:0]
		bodyBufPool(s.bufs.size).Put(s.bufs)
	}
	*s = bodyStream{stop: stopWire}
}

// copyBody hands the whole body to the stream and, if it ended well,
// appends the end of the body (finish) to eb. It reports whether the
// commit point may be written (emit(nil, true)); if not, s.stop says why.
func (s *bodyStream) copyBody() bool {
	var err error
	switch r := s.tx.body.(type) {
	case *os.File:
		// Its WriteTo ends in our ReadFrom through io.Copy's buffer
		// check; go there directly.
		_, err = s.ReadFrom(r)
	case io.WriterTo:
		s.tx.bw.s = s
		_, err = r.WriteTo(&s.tx.bw)
	default:
		_, err = s.ReadFrom(r)
	}
	if s.stop != stopNone {
		return false
	}
	if err != nil {
		s.stop = stopBody
		e := &Error{Op: OpBody, Kind: KindInvalidInput, Message: "reading the body failed", Err: err}
		if err == errNoProgress {
			e.Message, e.Err = "body reader returned no data and no error 100 times", io.ErrNoProgress
		}
		s.tx.setBodyErr(e)
		return false
	}
	var ok bool
	if s.eb, ok = s.tx.enc.finish(s.eb); !ok {
		s.stop = stopBody
		s.tx.bodyProblem()
		return false
	}
	return true
}

// ReadFrom reads the body into the read buffer and writes it (the road
// for a body that is only an io.Reader): a full buffer of verbatim
// octets is one chunk, written from the buffer.
func (s *bodyStream) ReadFrom(r io.Reader) (int64, error) {
	if s.bufs.rb == nil {
		s.bufs.rb = make([]byte, s.bufs.size)
	}
	s.rb = s.bufs.rb
	s.chunk = len(s.rb)
	var total int64
	zero := 0
	for {
		n, err := r.Read(s.rb)
		if n > 0 {
			zero = 0
			total += int64(n)
			if _, werr := s.Write(s.rb[:n]); werr != nil {
				return total, werr
			}
		}
		switch {
		case err == io.EOF:
			return total, nil
		case err != nil:
			return total, err
		case n == 0:
			if zero++; zero > 100 {
				return total, errNoProgress
			}
		}
	}
}

// bodyWriter is what a body's WriteTo writes to: its transaction's
// door to the client's one body stream, shut (s == nil) once the body
// is done, so that a body that kept it writes nowhere. It passes on
// WriteString and ReadFrom, so that a *strings.Reader's string is not
// copied and io.Copy inside a WriteTo reads into the stream's buffer.
type bodyWriter struct{ s *bodyStream }

func (w *bodyWriter) Write(p []byte) (int, error) {
	if w.s == nil {
		return 0, errBodyStopped
	}
	return w.s.Write(p)
}

func (w *bodyWriter) WriteString(str string) (int, error) {
	if w.s == nil {
		return 0, errBodyStopped
	}
	return w.s.WriteString(str)
}

func (w *bodyWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.s == nil {
		return 0, errBodyStopped
	}
	return w.s.ReadFrom(r)
}

// errNoProgress: a body reader returned no data and no error 100 times.
var errNoProgress = errors.New("no progress")

// WriteString lets a *strings.Reader write to the stream without
// converting its string to a new []byte. The stream only reads p and
// keeps none of it once Write returns.
func (s *bodyStream) WriteString(str string) (int, error) {
	return s.Write(unsafe.Slice(unsafe.StringData(str), len(str)))
}

// Write takes the next octets of the body: it never keeps p once it
// returns. Verbatim octets go to the wire from p as part of a chunk of
// at least flushAt octets; shorter runs, and what the encoder changes,
// gather in eb. It returns errBodyStopped once the body failed or the
// session stopped.
func (s *bodyStream) Write(p []byte) (int, error) {
	if s.stop != stopNone {
		return 0, errBodyStopped
	}
	tx, n := s.tx, len(p)
	if !tx.msgid.Done() {
		tx.msgid.Write(p)
		if tx.msgid.Done() {
			tx.setMessageID(tx.msgid.MessageID())
		}
	}
	for len(p) > 0 {
		win := p[:min(len(p), s.chunk-len(s.eb))]
		k := tx.enc.verbatim(win)
		p = p[k:]
		if k > 0 && len(s.eb)+k >= s.flushAt {
			if !s.emit(win[:k], false) {
				return n - len(p), errBodyStopped
			}
		} else {
			s.eb = append(s.eb, win[:k]...)
		}
		if k < len(win) {
			var ok bool
			used := 0
			if k < slowRun {
				q := p[:min(len(p), s.flushAt)]
				s.eb, ok = tx.enc.encode(s.eb, q)
				used = len(q)
			} else {
				s.eb, used, ok = tx.enc.encodeLine(s.eb, p)
			}
			if !ok {
				s.stop = stopBody
				tx.bodyProblem()
				return n - len(p), errBodyStopped
			}
			p = p[used:]
		}
		if len(s.eb) >= s.flushAt && !s.emit(nil, false) {
			return n - len(p), errBodyStopped
		}
	}
	return n, nil
}

// push records the reply a chunk (or the final dot, for DATA) is owed,
// in one look at the session: it reports false, with s.stop set, if the
// session can no longer be written. The last one is the commit point.
// DATA's other parts are owed nothing: push records only when last.
func (s *bodyStream) push(kind replyKind, end int64, last bool) bool {
	c, tx := s.c, s.tx
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.writableLocked() {
		s.stop = stopWire
		return false
	}
	if !tx.chunking && !last {
		return true
	}
	c.pushLocked(tx, kind, 0, nil, "", end)
	if last {
		tx.committed = true
		tx.commitEnd = end
	}
	return true
}

// emit writes eb and then direct: as one BDAT chunk (the last with
// LAST), or as the next part of the DATA stream (the last ending in the
// final dot that eb holds). The last one is the commit point. It reports
// false, with s.stop set, when the session cannot go on or a chunk was
// refused (then the transaction is abandoned with RSET here).
func (s *bodyStream) emit(direct []byte, last bool) bool {
	c, tx, ctx := s.c, s.tx, s.ctx
	size := len(s.eb) + len(direct)
	c.setWriteDeadline(ctx, c.opts.Timeouts.DataBlock)
	op := OpDATA
	if tx.chunking {
		op = OpBDAT
		b := c.scratch[:0]
		b = append(b, "BDAT "...)
		b = strconv.AppendInt(b, int64(size), 10)
		if last {
			b = append(b, " LAST"...)
		}
		b = append(b, '\r', '\n')
		c.scratch = b
		kind := kChunk
		if last {
			kind = kFinal
		}
		if !s.push(kind, c.queued()+int64(len(b)+size), last) {
			return false
		}
		c.w.Write(b)
	} else if !s.push(kFinal, c.queued()+int64(size), last) {
		return false
	}
	if _, err := c.w.Write(s.eb); err != nil {
		s.stop = stopWire
		c.writeFailed(ioError(ctx, op, err))
		return false
	}
	s.eb = s.eb[:0]
	if _, err := c.w.Write(direct); err != nil {
		s.stop = stopWire
		c.writeFailed(ioError(ctx, op, err))
		return false
	}
	if !tx.chunking {
		return true
	}
	c.sync(ctx)
	// Bound the octets owed (the RFC 2920 deadlock): a server that
	// stops reading while its replies pile up unread would block these
	// writes for ever if nobody read them. With a goroutine in
	// ReadReplies somebody always reads, and the bound would only cost
	// a round trip per few KiB of replies (100 recipients with
	// AllowPartial at RTT 10 ms: 93 msg/s against the wire's 868): it
	// applies only without one.
	over := func() bool { return tx.owed*c.owedReplyEstimate() > maxOwedReplyBytes && !tx.done }
	c.mu.Lock()
	wait := c.readers == 0 && over()
	stopped := !c.writableLocked() || !last && tx.dataErr != nil
	c.mu.Unlock()
	if wait && !stopped {
		c.flush(ctx, OpBDAT)
		c.await(ctx, func() bool { return !over() })
		c.mu.Lock()
		stopped = !c.writableLocked() || !last && tx.dataErr != nil
		c.mu.Unlock()
	}
	if stopped {
		s.stop = stopWire
		if c.writable() {
			// A refused chunk fails the transaction: send no more.
			c.abort(tx)
		}
		return false
	}
	return true
}

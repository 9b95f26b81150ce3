//go:build js && wasm

package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall/js"
	"time"

	"github.com/smtpkit/smtpkit/internal/tlsconf"
)

// HostSocket returns a plaintext [StartTLSCapable] transport over sock, a
// socket that the JavaScript host opened and passed in (see [HostConn]
// for the kinds of socket it takes). addr is the "host:port" it is
// connected to: an upgrade whose config has no ServerName verifies the
// server's certificate against its host, as after [Dial].
func HostSocket(sock js.Value, addr string) (StartTLSCapable, error) {
	c, err := HostConn(sock, addr)
	if err != nil {
		return nil, err
	}
	return &plainConn{Conn: c, serverName: addr}, nil
}

// HostSocketTLS performs the TLS client handshake at once over sock
// (implicit TLS, as [DialTLS] does over TCP) and returns the encrypted
// transport, a [*tls.Conn]. addr and cfg are used as in [DialTLS]. On a
// failed handshake the socket is closed.
func HostSocketTLS(ctx context.Context, sock js.Value, addr string, cfg *tls.Config) (Transport, error) {
	c, err := HostConn(sock, addr)
	if err != nil {
		return nil, err
	}
	tc, err := handshake(ctx, c, tlsconf.Client(cfg, addr))
	if err != nil {
		return nil, handshakeError("tls handshake", addr, err)
	}
	return tc, nil
}

// HostConn returns a [net.Conn] over sock, a socket of the JavaScript
// host, available under GOOS=js. sock is either
//
//   - an object with a readable and a writable web stream (a
//     ReadableStream of Uint8Array chunks and a WritableStream), as the
//     connect() of Cloudflare Workers returns and as Node.js's
//     stream.Duplex.toWeb(socket) makes of a net.Socket; or
//   - a Node.js net.Socket (or any stream.Duplex), which HostConn turns
//     into such a pair with stream.Duplex.toWeb, found through the
//     host's require (Go's wasm_exec_node.js defines it), after turning
//     Nagle's algorithm off (setNoDelay), as Go does for TCP.
//
// The connection keeps the [Transport] contract: a deadline, set from any
// goroutine, ends a blocked Read or Write with [os.ErrDeadlineExceeded];
// a read that a deadline ended leaves the host's read pending, and what
// it brings is returned by the next Read, so nothing is lost. A Write
// that a deadline (or Close) ends while the host holds its octets
// cannot take them back: the host may still send them, so the Write
// reports them as written, len(p), with an error that matches
// [ErrMaybeWritten] (and [os.ErrDeadlineExceeded], or [net.ErrClosed]);
// the stream should then be closed. Close closes both streams and then
// the socket (its destroy method, else its close method, when it has
// one); it ends a blocked Read or Write.
//
// A chunk the host's readable stream yields that is not a Uint8Array
// (a Node.js Buffer is one) fails the Read with an error, as does a
// stream that another reader or writer has locked already: HostConn and
// the connection's methods report what the host throws as errors, and
// do not panic.
//
// remote names the peer in RemoteAddr and errors; it may be empty.
func HostConn(sock js.Value, remote string) (net.Conn, error) {
	if sock.Type() != js.TypeObject {
		return nil, fmt.Errorf("transport: host socket is a JavaScript %s, not an object", sock.Type())
	}
	streams := sock
	if !isObject(sock.Get("readable")) || !isObject(sock.Get("writable")) {
		if sock.Get("on").Type() != js.TypeFunction {
			return nil, fmt.Errorf("transport: host socket has neither readable and writable streams nor Node.js stream methods")
		}
		req := js.Global().Get("require")
		if req.Type() != js.TypeFunction {
			return nil, fmt.Errorf("transport: a Node.js socket needs require (to call stream.Duplex.toWeb); pass stream.Duplex.toWeb(socket) instead")
		}
		var err error
		streams, err = jsTry(func() js.Value { return req.Invoke("stream").Get("Duplex").Call("toWeb", sock) })
		if err != nil {
			return nil, fmt.Errorf("transport: stream.Duplex.toWeb of the host socket: %w", err)
		}
		if sock.Get("setNoDelay").Type() == js.TypeFunction {
			// As Go's net package does for TCP: a session's commands
			// are small writes, each waiting for its reply, which
			// Nagle's algorithm would hold back.
			jsTry(func() js.Value { return sock.Call("setNoDelay", true) })
		}
	}
	if !isObject(streams) || !isObject(streams.Get("readable")) || !isObject(streams.Get("writable")) {
		return nil, fmt.Errorf("transport: host socket has no readable and writable streams")
	}
	reader, err := jsTry(func() js.Value { return streams.Get("readable").Call("getReader") })
	if err != nil {
		return nil, fmt.Errorf("transport: host socket's readable stream: %w", err)
	}
	writer, err := jsTry(func() js.Value { return streams.Get("writable").Call("getWriter") })
	if err != nil {
		jsTry(func() js.Value { return reader.Call("releaseLock") })
		return nil, fmt.Errorf("transport: host socket's writable stream: %w", err)
	}
	c := &hostConn{
		sock:   sock,
		remote: remote,
		reader: reader,
		writer: writer,
		readc:  make(chan readResult, 1),
		writec: make(chan error, 1),
		closed: make(chan struct{}),
	}
	c.rdl.init()
	c.wdl.init()
	c.onRead = js.FuncOf(func(_ js.Value, args []js.Value) any {
		res := args[0]
		if !isObject(res) {
			c.readc <- readResult{err: fmt.Errorf("transport: reading from %s: the host's stream gave %s, not a read result", c.peer(), jsKind(res))}
			return nil
		}
		if res.Get("done").Truthy() {
			c.readc <- readResult{err: io.EOF}
			return nil
		}
		v := res.Get("value")
		if !v.InstanceOf(uint8Array) {
			c.readc <- readResult{err: fmt.Errorf("transport: reading from %s: the host's stream gave a chunk that is not a Uint8Array (%s)", c.peer(), jsKind(v))}
			return nil
		}
		b := make([]byte, v.Get("byteLength").Int())
		js.CopyBytesToGo(b, v)
		c.readc <- readResult{data: b}
		return nil
	})
	c.onReadErr = js.FuncOf(func(_ js.Value, args []js.Value) any {
		c.readc <- readResult{err: fmt.Errorf("transport: reading from %s: %s", c.peer(), jsError(args))}
		return nil
	})
	c.onWrite = js.FuncOf(func(js.Value, []js.Value) any {
		c.writec <- nil
		return nil
	})
	c.onWriteErr = js.FuncOf(func(_ js.Value, args []js.Value) any {
		c.writec <- fmt.Errorf("transport: writing to %s: %s", c.peer(), jsError(args))
		return nil
	})
	return c, nil
}

// maybeWrittenError is the error of a Write that ended with its octets
// handed over: a timeout (a [net.Error] whose Timeout and Temporary
// report true, matching [os.ErrDeadlineExceeded]) when a deadline ended
// it, else [net.ErrClosed]; either way it matches [ErrMaybeWritten].
type maybeWrittenError struct{ timeout bool }

func (e *maybeWrittenError) Error() string {
	if e.timeout {
		return "transport: write deadline exceeded after the octets were handed over; they may still be sent"
	}
	return "transport: connection closed after the octets were handed over; they may still be sent"
}

func (e *maybeWrittenError) Timeout() bool   { return e.timeout }
func (e *maybeWrittenError) Temporary() bool { return e.timeout }

func (e *maybeWrittenError) Is(target error) bool {
	switch target {
	case ErrMaybeWritten:
		return true
	case os.ErrDeadlineExceeded:
		return e.timeout
	case net.ErrClosed:
		return !e.timeout
	}
	return false
}

var uint8Array = js.Global().Get("Uint8Array")

func isObject(v js.Value) bool { return v.Type() == js.TypeObject }

// jsTry calls f, which calls into JavaScript, and returns what the host
// threw, if it threw, as an error instead of a panic.
func jsTry(f func() js.Value) (v js.Value, err error) {
	defer func() {
		if r := recover(); r != nil {
			je, ok := r.(js.Error)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("the host threw %s", jsError([]js.Value{je.Value}))
		}
	}()
	return f(), nil
}

// jsKind names the kind of a JavaScript value for an error: its
// constructor's name, or its type.
func jsKind(v js.Value) string {
	if isObject(v) {
		if ctor := v.Get("constructor"); ctor.Type() == js.TypeFunction {
			if name := ctor.Get("name"); name.Type() == js.TypeString {
				return name.String()
			}
		}
	}
	return v.Type().String()
}

// jsError describes the reason a promise was rejected with.
func jsError(args []js.Value) string {
	if len(args) == 0 {
		return "rejected"
	}
	v := args[0]
	if isObject(v) && v.Get("message").Type() == js.TypeString {
		return v.Get("message").String()
	}
	return js.Global().Get("String").Invoke(v).String()
}

type readResult struct {
	data []byte
	err  error
}

// hostConn is a net.Conn over a pair of web streams. At most one read
// and one write of the host's streams are in flight at a time, each
// answered through its own channel by a callback that the JavaScript
// event loop runs.
type hostConn struct {
	sock           js.Value
	remote         string
	reader, writer js.Value

	onRead, onReadErr, onWrite, onWriteErr js.Func

	readc  chan readResult // the result of the read in flight
	writec chan error      // the result of the write in flight
	closed chan struct{}   // closed by Close

	rdl, wdl deadline

	rmu     sync.Mutex // guards the fields below, and serialises Read
	reading bool       // a read of the host's stream is in flight
	rbuf    []byte     // octets read from the host and not yet returned
	rerr    error      // the end of the stream, or how reading failed

	wmu     sync.Mutex // guards the fields below, and serialises Write
	writing bool       // a write of the host's stream is in flight
	werr    error      // how a write failed

	closeOnce sync.Once
}

// Read implements [net.Conn].
func (c *hostConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rbuf) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		default:
		}
		expired := c.rdl.wait()
		select {
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		default:
		}
		if !c.reading {
			if _, err := jsTry(func() js.Value { return c.reader.Call("read").Call("then", c.onRead, c.onReadErr) }); err != nil {
				c.rerr = fmt.Errorf("transport: reading from %s: %w", c.peer(), err)
				continue
			}
			c.reading = true
		}
		select {
		case r := <-c.readc:
			c.reading = false
			c.rbuf, c.rerr = r.data, r.err
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

// Write implements [net.Conn]. It returns once the host's stream has
// taken the octets (for a Node.js socket, once they are handed to the
// system).
func (c *hostConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	expired := c.wdl.wait()
	select {
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	default:
	}
	if c.writing {
		// A deadline ended the previous Write before the host took it.
		select {
		case err := <-c.writec:
			c.writing = false
			if err != nil && c.werr == nil {
				c.werr = err
			}
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	if c.werr != nil {
		return 0, c.werr
	}
	if len(p) == 0 {
		return 0, nil
	}
	a := uint8Array.New(len(p))
	js.CopyBytesToJS(a, p)
	if _, err := jsTry(func() js.Value { return c.writer.Call("write", a).Call("then", c.onWrite, c.onWriteErr) }); err != nil {
		c.werr = fmt.Errorf("transport: writing to %s: %w", c.peer(), err)
		return 0, c.werr
	}
	c.writing = true
	select {
	case err := <-c.writec:
		c.writing = false
		if err != nil {
			// The host refused the chunk: it says nothing left.
			c.werr = err
			return 0, err
		}
		return len(p), nil
	case <-expired:
		// The host holds the chunk and may still send it: it counts as
		// written (see HostConn).
		return len(p), &maybeWrittenError{timeout: true}
	case <-c.closed:
		return len(p), &maybeWrittenError{}
	}
}

// Close implements [net.Conn]. It closes the writable stream (after
// what was written), cancels the readable one, and destroys or closes
// the socket. The callbacks are released once the host has settled
// every promise that could still call them.
func (c *hostConn) Close() error {
	first := false
	c.closeOnce.Do(func() {
		first = true
		close(c.closed)
		c.rdl.stop()
		c.wdl.stop()
		var promises []any
		for _, f := range []func() js.Value{
			func() js.Value { return c.writer.Call("close") },
			func() js.Value { return c.reader.Call("cancel") },
		} {
			if p, err := jsTry(f); err == nil {
				promises = append(promises, p)
			}
		}
		if d := c.sock.Get("destroy"); d.Type() == js.TypeFunction {
			jsTry(func() js.Value { return c.sock.Call("destroy") })
		} else if cl := c.sock.Get("close"); cl.Type() == js.TypeFunction {
			if p, err := jsTry(func() js.Value { return c.sock.Call("close") }); err == nil && isObject(p) && p.Get("then").Type() == js.TypeFunction {
				promises = append(promises, p)
			}
		}
		var release js.Func
		release = js.FuncOf(func(js.Value, []js.Value) any {
			c.onRead.Release()
			c.onReadErr.Release()
			c.onWrite.Release()
			c.onWriteErr.Release()
			release.Release()
			return nil
		})
		// A read or write still in flight settles when its stream is
		// closed or cancelled, before allSettled does.
		js.Global().Get("Promise").Call("allSettled", js.ValueOf(promises)).Call("then", release)
	})
	if !first {
		return net.ErrClosed
	}
	return nil
}

// LocalAddr implements [net.Conn].
func (c *hostConn) LocalAddr() net.Addr { return hostAddr("local") }

// RemoteAddr implements [net.Conn]: the remote given to HostConn.
func (c *hostConn) RemoteAddr() net.Addr { return hostAddr(c.peer()) }

func (c *hostConn) peer() string {
	if c.remote == "" {
		return "host socket"
	}
	return c.remote
}

// SetDeadline implements [net.Conn].
func (c *hostConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline implements [net.Conn].
func (c *hostConn) SetReadDeadline(t time.Time) error { c.rdl.set(t); return nil }

// SetWriteDeadline implements [net.Conn].
func (c *hostConn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// hostAddr is the address of a host socket: what the host said it is
// connected to.
type hostAddr string

func (hostAddr) Network() string  { return "host" }
func (a hostAddr) String() string { return string(a) }

// deadline is a point in time that waiters can select on: wait returns a
// channel that is closed once the deadline has passed. Moving the
// deadline wakes no one early: the channel is replaced only after it was
// closed and the deadline moved away from the past.
type deadline struct {
	mu      sync.Mutex // guards the fields below
	timer   *time.Timer
	expired chan struct{}
}

func (d *deadline) init() { d.expired = make(chan struct{}) }

// set moves the deadline to t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil // a timer that already fired finds itself replaced
	}
	closed := isDone(d.expired)
	if t.IsZero() {
		if closed {
			d.expired = make(chan struct{})
		}
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		if !closed {
			close(d.expired)
		}
		return
	}
	if closed {
		d.expired = make(chan struct{})
	}
	var tm *time.Timer
	tm = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.timer == tm {
			close(d.expired)
			d.timer = nil
		}
	})
	d.timer = tm
}

// stop cancels a pending timer.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// wait returns the channel that is closed when the deadline passes.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

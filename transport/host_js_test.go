//go:build js && wasm

package transport_test

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall/js"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/transport"
	"github.com/smtpkit/smtpkit/transport/transporttest"
)

// nodePair connects two Node.js sockets over loopback: client is the
// one connected, server the one accepted.
func nodePair(t *testing.T) (client, server js.Value, addr string) {
	t.Helper()
	req := js.Global().Get("require")
	if req.Type() != js.TypeFunction {
		t.Fatal("no require: run under Node.js (go_js_wasm_exec)")
	}
	nodeNet := req.Invoke("net")
	accepted := make(chan js.Value, 1)
	onConn := js.FuncOf(func(_ js.Value, args []js.Value) any {
		accepted <- args[0]
		return nil
	})
	listening := make(chan struct{})
	onListen := js.FuncOf(func(js.Value, []js.Value) any {
		close(listening)
		return nil
	})
	srv := nodeNet.Call("createServer", onConn)
	srv.Call("listen", 0, "127.0.0.1", onListen)
	select {
	case <-listening:
	case <-time.After(30 * time.Second):
		t.Fatal("Node.js server not listening after 30 s")
	}
	onListen.Release()
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.Call("address").Get("port").Int()))
	client = nodeNet.Call("connect", srv.Call("address").Get("port"), "127.0.0.1")
	select {
	case server = <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("no connection accepted after 30 s")
	}
	srv.Call("close")
	onConn.Release()
	return client, server, addr
}

// hostPairs makes transporttest pairs of Node.js sockets: the connected
// one, passed through as, is the transport under test; the accepted one,
// through HostConn too, is the peer.
func hostPairs(as func(js.Value) js.Value) transporttest.MakePair {
	return func(t *testing.T) (transport.Transport, net.Conn) {
		client, server, addr := nodePair(t)
		tr, err := transport.HostSocket(as(client), addr)
		noErr(t, err, "HostSocket")
		peer, err := transport.HostConn(server, "peer")
		noErr(t, err, "HostConn")
		return tr, peer
	}
}

// TestHostSocketConformance runs the Transport contract over a Node.js
// net.Socket.
func TestHostSocketConformance(t *testing.T) {
	transporttest.Run(t, hostPairs(func(s js.Value) js.Value { return s }))
}

// TestHostSocketWebStreams passes the socket as a pair of web streams,
// the shape of a Workers-style connect() socket.
func TestHostSocketWebStreams(t *testing.T) {
	transporttest.Run(t, hostPairs(func(s js.Value) js.Value {
		return js.Global().Get("require").Invoke("stream").Get("Duplex").Call("toWeb", s)
	}))
}

func TestHostConnRejects(t *testing.T) {
	if _, err := transport.HostConn(js.ValueOf(42), ""); err == nil {
		t.Error("HostConn accepted a number")
	}
	if _, err := transport.HostConn(js.Global().Get("Object").New(), ""); err == nil {
		t.Error("HostConn accepted an object with no streams")
	}
}

// jsFunc makes a JavaScript function of f, released when the test ends.
func jsFunc(t *testing.T, f func(this js.Value, args []js.Value) any) js.Func {
	fn := js.FuncOf(f)
	t.Cleanup(fn.Release)
	return fn
}

// webStreams returns a socket of web streams: a readable stream that
// yields chunks, and a writable stream over sink (an underlying sink
// object, or undefined for one that takes everything).
func webStreams(t *testing.T, sink js.Value, chunks ...js.Value) js.Value {
	start := jsFunc(t, func(_ js.Value, args []js.Value) any {
		for _, c := range chunks {
			args[0].Call("enqueue", c)
		}
		return nil
	})
	readable := js.Global().Get("ReadableStream").New(js.ValueOf(map[string]any{"start": start}))
	writable := js.Global().Get("WritableStream").New(sink)
	return js.ValueOf(map[string]any{"readable": readable, "writable": writable})
}

// TestHostConnRefusesChunks: a chunk that is not a Uint8Array fails the
// Read with an error (a string was read as no octets, a number as that
// many zero octets).
func TestHostConnRefusesChunks(t *testing.T) {
	good := js.Global().Get("Uint8Array").New(3)
	for name, chunk := range map[string]js.Value{
		"string":      js.ValueOf("220 ready\r\n"),
		"number":      js.ValueOf(16),
		"ArrayBuffer": js.Global().Get("ArrayBuffer").New(4),
		"object":      js.ValueOf(map[string]any{"length": 3}),
		"null":        js.Null(),
	} {
		t.Run(name, func(t *testing.T) {
			c, err := transport.HostConn(webStreams(t, js.Undefined(), good, chunk), "test")
			noErr(t, err, "HostConn")
			defer c.Close()
			buf := make([]byte, 16)
			if n, err := c.Read(buf); n != 3 || err != nil {
				t.Fatalf("first Read = %d, %v; want the 3 octets of the Uint8Array", n, err)
			}
			n, err := c.Read(buf)
			if err == nil || !strings.Contains(err.Error(), "not a Uint8Array") {
				t.Fatalf("Read of a %s chunk = %d, %v; want an error", name, n, err)
			}
			if _, err2 := c.Read(buf); err2 == nil {
				t.Error("a Read after the failed one succeeded")
			}
		})
	}
}

// TestHostConnLockedStreams: a stream that already has a reader (or a
// writer) is an error from HostConn, not a panic.
func TestHostConnLockedStreams(t *testing.T) {
	s := webStreams(t, js.Undefined())
	s.Get("readable").Call("getReader")
	if _, err := transport.HostConn(s, ""); err == nil {
		t.Error("HostConn took a readable stream that has a reader")
	}
	s = webStreams(t, js.Undefined())
	s.Get("writable").Call("getWriter")
	if _, err := transport.HostConn(s, ""); err == nil {
		t.Error("HostConn took a writable stream that has a writer")
	}
	// The readable stream was not left locked by the failed attempt.
	if s.Get("readable").Get("locked").Bool() {
		t.Error("the failed HostConn left the readable stream locked")
	}
}

// TestHostConnWriteCutReportsHanded: the host takes a chunk and settles
// its write only later (after the deadline): the Write reports the
// octets as written, with an error that matches ErrMaybeWritten and
// os.ErrDeadlineExceeded, since the host may still send them.
func TestHostConnWriteCutReportsHanded(t *testing.T) {
	never := jsFunc(t, func(js.Value, []js.Value) any { return nil })
	write := jsFunc(t, func(js.Value, []js.Value) any {
		return js.Global().Get("Promise").New(never) // settles never
	})
	c, err := transport.HostConn(webStreams(t, js.ValueOf(map[string]any{"write": write})), "test")
	noErr(t, err, "HostConn")
	defer c.Close()
	noErr(t, c.SetDeadline(time.Now().Add(20*time.Millisecond)), "SetDeadline")
	p := []byte("250 final dot\r\n.\r\n")
	n, err := c.Write(p)
	if n != len(p) {
		t.Errorf("Write = %d, want %d: the host holds the octets", n, len(p))
	}
	if !errors.Is(err, transport.ErrMaybeWritten) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write error %v, want one matching ErrMaybeWritten and os.ErrDeadlineExceeded", err)
	}
	if e := transporttest.CheckTimeoutError(err); e != nil {
		t.Error(e)
	}
}

// TestHostSocketTLSConformance runs the contract over HostSocketTLS: TLS
// over a Node.js socket. A Write that a deadline ends is reported
// through crypto/tls, which drops the record it was writing from its
// count but keeps the error, so ErrMaybeWritten still reaches the
// caller.
func TestHostSocketTLSConformance(t *testing.T) {
	tc := newTestCert(t)
	transporttest.Run(t, func(t *testing.T) (transport.Transport, net.Conn) {
		client, server, addr := nodePair(t)
		peer, err := transport.HostConn(server, "peer")
		noErr(t, err, "HostConn")
		srv := tls.Server(peer, &tls.Config{Certificates: []tls.Certificate{tc.cert}})
		done := make(chan error, 1)
		go func() { done <- srv.Handshake() }()
		tr, err := transport.HostSocketTLS(testContext(t), client, addr, &tls.Config{RootCAs: tc.pool, ServerName: "localhost"})
		noErr(t, err, "HostSocketTLS")
		noErr(t, <-done, "server handshake")
		return tr, srv
	})
}

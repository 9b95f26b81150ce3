//go:build js && wasm

package transport_test

import (
	"net"
	"strconv"
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

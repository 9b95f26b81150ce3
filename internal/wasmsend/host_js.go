//go:build js

package main

import (
	"context"
	"errors"
	"net"
	"syscall/js"

	"github.com/smtpkit/smtpkit/transport"
)

// hostConn returns the socket the JavaScript host opened and left in
// globalThis.smtpkitSocket (see host.js): a Node.js net.Socket, or any
// object with readable and writable web streams.
func hostConn(_ context.Context, addr string) (net.Conn, error) {
	sock := js.Global().Get("smtpkitSocket")
	if sock.IsUndefined() {
		return nil, errors.New("globalThis.smtpkitSocket is not set: run under host.js")
	}
	return transport.HostConn(sock, addr)
}

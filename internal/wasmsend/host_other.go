//go:build !wasip1 && !js

package main

import (
	"context"
	"net"
)

// hostConn dials the server: natively there is no host to hand a stream
// in. It is there to compare the same program's throughput.
func hostConn(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

//go:build wasip1

package main

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// hostConn returns the stream the WASI host handed in: standard input
// and output, which the host connected to the server.
func hostConn(context.Context, string) (net.Conn, error) {
	return stdioConn{}, nil
}

// stdioConn is a net.Conn over standard input and output. It keeps the
// transport.Transport contract: *os.File already honours deadlines,
// also from another goroutine, but its deadline error is an
// *fs.PathError, which crypto/tls would take for a permanent failure of
// the TLS session at the smtp package's first idle probe; stdioConn
// returns os.ErrDeadlineExceeded itself instead.
type stdioConn struct{}

func (stdioConn) Read(p []byte) (int, error) {
	n, err := os.Stdin.Read(p)
	return n, deadlineError(err)
}

func (stdioConn) Write(p []byte) (int, error) {
	n, err := os.Stdout.Write(p)
	return n, deadlineError(err)
}

func deadlineError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return os.ErrDeadlineExceeded
	}
	return err
}

func (stdioConn) Close() error {
	return errors.Join(os.Stdout.Close(), os.Stdin.Close())
}

func (stdioConn) SetDeadline(t time.Time) error {
	return errors.Join(os.Stdin.SetReadDeadline(t), os.Stdout.SetWriteDeadline(t))
}

func (stdioConn) SetReadDeadline(t time.Time) error  { return os.Stdin.SetReadDeadline(t) }
func (stdioConn) SetWriteDeadline(t time.Time) error { return os.Stdout.SetWriteDeadline(t) }
func (stdioConn) LocalAddr() net.Addr                { return stdioAddr{} }
func (stdioConn) RemoteAddr() net.Addr               { return stdioAddr{} }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

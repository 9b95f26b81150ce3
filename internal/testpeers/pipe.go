package testpeers

import (
	"context"
	"net"
	"sync"
)

// pipeListener is a net.Listener whose connections are in-memory pipes
// made by dial: a go-smtp server on it runs inside a testing/synctest
// bubble, where time is virtual and a test of backoff or idle timeouts
// takes no real time.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial makes a pipe and hands its server end to Accept.
func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// DialPipe connects to a server started with GoSMTPOptions.Pipe. The
// connection is a net.Pipe: no TLS on the wire (use Mode Plain and the
// sender's InsecurePlaintext), no kernel socket to peek at.
func (s *GoSMTPServer) DialPipe(ctx context.Context) (net.Conn, error) {
	return s.pipe.dial(ctx)
}

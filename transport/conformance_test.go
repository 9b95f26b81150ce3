package transport_test

import (
	"crypto/tls"
	"io/fs"
	"net"
	"os"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/transport"
	"github.com/smtpkit/smtpkit/transport/transporttest"
)

// acceptOne listens on loopback and returns the address and where the
// one accepted connection arrives.
func acceptOne(t *testing.T) (string, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err, "listen")
	conns := make(chan net.Conn, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			close(conns)
			return
		}
		conns <- c
	}()
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String(), conns
}

func TestConformanceDial(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transport.Transport, net.Conn) {
		addr, conns := acceptOne(t)
		tr, err := transport.Dial(testContext(t), addr)
		noErr(t, err, "Dial")
		return tr, <-conns
	})
}

func TestConformanceDialTLS(t *testing.T) {
	tc := newTestCert(t)
	transporttest.Run(t, func(t *testing.T) (transport.Transport, net.Conn) {
		addr, conns := acceptOne(t)
		srvc := make(chan net.Conn, 1)
		go func() {
			c, ok := <-conns
			if !ok {
				close(srvc)
				return
			}
			s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{tc.cert}})
			_ = s.Handshake()
			srvc <- s
		}()
		tr, err := transport.DialTLS(testContext(t), addr, &tls.Config{RootCAs: tc.pool})
		noErr(t, err, "DialTLS")
		return tr, <-srvc
	})
}

// TestConformancePipe runs the checks over net.Pipe, which has no buffer
// at all, through Upgradable.
func TestConformancePipe(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transport.Transport, net.Conn) {
		a, b := net.Pipe()
		return transport.Upgradable(a), b
	})
}

// TestFileTimeoutBreaksTLS shows why the contract names the error: an
// *os.File's deadline error is an *fs.PathError, which crypto/tls takes
// for a permanent failure, so a TLS session over a file (a pipe, a
// host-provided stream) dies at its first timed-out read. The errors of
// a net.Conn and of os.ErrDeadlineExceeded itself pass.
func TestFileTimeoutBreaksTLS(t *testing.T) {
	// What (*os.File).Read returns when its deadline passes.
	fileErr := &fs.PathError{Op: "read", Path: "/dev/stdin", Err: os.ErrDeadlineExceeded}
	if transporttest.CheckTimeoutError(fileErr) == nil {
		t.Fatalf("CheckTimeoutError accepted %T, which crypto/tls treats as permanent", fileErr)
	}
	noErr(t, transporttest.CheckTimeoutError(os.ErrDeadlineExceeded), "os.ErrDeadlineExceeded")

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	noErr(t, a.SetDeadline(time.Now().Add(-time.Second)), "pipe deadline")
	_, perr := a.Read(make([]byte, 1))
	noErr(t, transporttest.CheckTimeoutError(perr), "net.Pipe's timeout")
}

// Package transporttest checks that an implementation of
// [transport.Transport] keeps the contract the smtp package relies on, in
// the style of golang.org/x/net/nettest's TestConn: a transport over a
// host's socket, a tunnel or a pipe calls [Run] from its own tests with a
// function that makes a connected pair.
//
// The checks are the ones a session needs beyond moving bytes: a deadline
// ends a blocked Read, even one set from another goroutine (the smtp
// package cancels I/O that way when a context ends); the error it returns
// is a [net.Error] whose Timeout and Temporary methods report true, so
// that a crypto/tls session over the transport survives a timed-out read
// (the smtp package probes an idle session with a short read); nothing
// is lost across a timeout; a Write that a deadline ends never reports
// fewer octets than the peer gets unless its error matches
// [transport.ErrMaybeWritten] (the smtp package counts a commit point as
// unsent only when the transport says so); Close ends a blocked Read; and
// a [transport.StartTLSCapable] transport upgrades once.
package transporttest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
	"github.com/smtpkit/smtpkit/internal/tlsconf"
	"github.com/smtpkit/smtpkit/transport"
)

// MakePair makes, for one subtest, a connected pair: tr is the transport
// under test and peer the other end of its byte stream, a plain
// connection whatever tr is (for a transport that is already TLS, peer is
// the server's TLS connection). Both are closed when the subtest ends;
// MakePair may register more cleanup with t.Cleanup.
type MakePair func(t *testing.T) (tr transport.Transport, peer net.Conn)

// hangGuard bounds every wait of these tests, so that a transport that
// breaks the contract fails the test instead of hanging it. It is not a
// measurement: no correct transport comes near it.
const hangGuard = 30 * time.Second

// Run checks the transport made by mk against the contract, each check in
// its own subtest with a new pair.
func Run(t *testing.T, mk MakePair) {
	tests := []struct {
		name string
		fn   func(*testing.T, transport.Transport, net.Conn)
	}{
		{"BasicIO", testBasicIO},
		{"PastDeadline", testPastDeadline},
		{"FutureDeadline", testFutureDeadline},
		{"DeadlineInterruptsRead", testDeadlineInterruptsRead},
		{"TLSSurvivesTimeout", testTLSSurvivesTimeout},
		{"WriteCutByDeadline", testWriteCutByDeadline},
		{"PeerClose", testPeerClose},
		{"CloseInterruptsRead", testCloseInterruptsRead},
		{"StartTLS", testStartTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, peer := mk(t)
			t.Cleanup(func() {
				_ = tr.Close()
				_ = peer.Close()
			})
			tt.fn(t, tr, peer)
		})
	}
}

// CheckTimeoutError returns nil if err is what the contract asks of a
// Read or Write that a deadline ended: a [net.Error] (the error itself,
// not one it wraps, because crypto/tls looks at the error itself) whose
// Timeout and Temporary methods report true. [os.ErrDeadlineExceeded]
// is one; an [*os.File]'s [*io/fs.PathError] is not, and crypto/tls treats
// it as a permanent failure of the session.
func CheckTimeoutError(err error) error {
	if err == nil {
		return errors.New("got no error, want a timeout")
	}
	ne, ok := err.(net.Error)
	if !ok {
		return fmt.Errorf("got %T (%v), want a net.Error: crypto/tls would end its session on it", err, err)
	}
	if !ne.Timeout() {
		return fmt.Errorf("got %T (%v) whose Timeout() is false", err, err)
	}
	//lint:ignore SA1019 crypto/tls decides on Temporary whether a read error is permanent.
	if !ne.Temporary() { //nolint:staticcheck
		return fmt.Errorf("got %T (%v) whose Temporary() is false: crypto/tls would end its session on it", err, err)
	}
	return nil
}

// result is what a Read in another goroutine returned.
type result struct {
	n   int
	err error
}

// readAsync starts a Read of tr in a goroutine and returns where its
// result arrives; started is closed just before the Read is called.
func readAsync(tr io.Reader, buf []byte) (started chan struct{}, done chan result) {
	started = make(chan struct{})
	done = make(chan result, 1)
	go func() {
		close(started)
		n, err := tr.Read(buf)
		done <- result{n, err}
	}()
	return started, done
}

// wait returns the result from done, failing the test if none comes
// within the hang guard.
func wait(t *testing.T, done <-chan result, what string) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(hangGuard):
		t.Fatalf("%s: no return within %v", what, hangGuard)
		return result{}
	}
}

// expect reads len(want) bytes from r and requires them to equal want.
func expect(t *testing.T, r io.Reader, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("reading %q: %v", want, err)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// send writes s to w in another goroutine while it reads it from r, so
// that a stream with no buffer at all (net.Pipe) passes too.
func send(t *testing.T, w io.Writer, r io.Reader, s string) {
	t.Helper()
	wrote := make(chan error, 1)
	go func() {
		_, err := io.WriteString(w, s)
		wrote <- err
	}()
	expect(t, r, s)
	if err := <-wrote; err != nil {
		t.Fatalf("writing %q: %v", s, err)
	}
}

// checkTimeout fails the test unless err meets CheckTimeoutError.
func checkTimeout(t *testing.T, what string, err error) {
	t.Helper()
	if e := CheckTimeoutError(err); e != nil {
		t.Fatalf("%s after the deadline: %v", what, e)
	}
}

// testBasicIO sends 1 MiB of random octets through tr to an echoing peer
// and reads them back concurrently, so that neither direction's buffers
// need to hold the whole of it.
func testBasicIO(t *testing.T, tr transport.Transport, peer net.Conn) {
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	echoed := make(chan error, 1)
	go func() {
		_, err := io.CopyN(peer, peer, int64(len(data)))
		echoed <- err
	}()
	wrote := make(chan error, 1)
	go func() {
		for b := data; len(b) > 0; {
			n := min(len(b), 3000) // not a power of two: chunks straddle buffers
			if _, err := tr.Write(b[:n]); err != nil {
				wrote <- err
				return
			}
			b = b[n:]
		}
		wrote <- nil
	}()
	got := make([]byte, len(data))
	_, rerr := io.ReadFull(tr, got)
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-echoed; err != nil {
		t.Fatalf("peer echo: %v", err)
	}
	if rerr != nil {
		t.Fatalf("read: %v", rerr)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the octets read back differ from those written")
	}
}

// testPastDeadline: a deadline in the past fails Read at once with a
// timeout; clearing it makes the transport usable again, and nothing the
// peer sent meanwhile is lost. Then a Write with a past deadline fails
// too. (After a Write timed out, a stream may be unusable: crypto/tls
// treats every write error as permanent, and so does an SMTP session.)
func testPastDeadline(t *testing.T, tr transport.Transport, peer net.Conn) {
	if err := tr.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	_, err := tr.Read(make([]byte, 16))
	checkTimeout(t, "Read", err)
	if err := tr.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline(zero): %v", err)
	}
	send(t, peer, tr, "after the timeout\r\n")
	send(t, tr, peer, "still writable\r\n")

	if err := tr.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	_, err = tr.Write([]byte("x"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Write after the deadline: got %v, want an error whose Timeout() is true", err)
	}
}

// testFutureDeadline: a Read with nothing to read returns a timeout once
// the deadline has passed, not before it.
func testFutureDeadline(t *testing.T, tr transport.Transport, peer net.Conn) {
	deadline := time.Now().Add(20 * time.Millisecond)
	if err := tr.SetDeadline(deadline); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	_, done := readAsync(tr, make([]byte, 16))
	r := wait(t, done, "Read with a deadline")
	if time.Now().Before(deadline) {
		t.Fatalf("Read returned (%d, %v) before its deadline", r.n, r.err)
	}
	checkTimeout(t, "Read", r.err)
	if err := tr.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline(zero): %v", err)
	}
	send(t, peer, tr, "late\r\n")
}

// testDeadlineInterruptsRead: a Read blocked with no deadline returns a
// timeout when another goroutine sets one that has passed, as the smtp
// package does when a context ends.
func testDeadlineInterruptsRead(t *testing.T, tr transport.Transport, peer net.Conn) {
	if err := tr.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline(zero): %v", err)
	}
	started, done := readAsync(tr, make([]byte, 16))
	<-started
	if err := tr.SetDeadline(time.Now()); err != nil {
		t.Fatalf("SetDeadline(now): %v", err)
	}
	r := wait(t, done, "a Read blocked when the deadline was set")
	checkTimeout(t, "Read", r.err)
	if err := tr.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline(zero): %v", err)
	}
	send(t, peer, tr, "after the interrupt\r\n")
}

// testTLSSurvivesTimeout runs TLS over tr and times a read out, as the
// smtp package's idle probe does; the TLS session must still carry data
// afterwards.
func testTLSSurvivesTimeout(t *testing.T, tr transport.Transport, peer net.Conn) {
	cert := newCert(t)
	srv := tls.Server(peer, &tls.Config{Certificates: []tls.Certificate{cert.TLS}})
	cli := tls.Client(asConn(tr), tlsconf.Client(&tls.Config{RootCAs: cert.Pool}, "localhost"))
	handshake(t, cli, srv)

	if err := cli.SetDeadline(time.Now().Add(2 * time.Millisecond)); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	_, done := readAsync(cli, make([]byte, 16))
	r := wait(t, done, "TLS Read with a deadline")
	checkTimeout(t, "TLS Read", r.err)
	if err := cli.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("SetDeadline(zero): %v", err)
	}
	send(t, srv, cli, "220 still here\r\n")
	send(t, cli, srv, "QUIT\r\n")
}

// testWriteCutByDeadline: with a peer that reads nothing, Writes of 1 MiB
// go on until one blocks and the deadline ends it; then the transport is
// closed and the peer reads all that reaches it. It must not get more
// than the Writes reported, unless the last one's error matches
// transport.ErrMaybeWritten (the transport cannot know what left):
// otherwise a final dot that did leave would be counted as unsent, and
// its message sent twice. A transport that takes 256 MiB without
// blocking is not checked.
func testWriteCutByDeadline(t *testing.T, tr transport.Transport, peer net.Conn) {
	chunk := make([]byte, 1<<20)
	if err := tr.SetDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	var reported int64
	var werr error
	for reported < 256<<20 {
		n, err := tr.Write(chunk)
		if n < 0 || n > len(chunk) {
			t.Fatalf("Write returned %d for %d octets", n, len(chunk))
		}
		reported += int64(n)
		if err != nil {
			werr = err
			break
		}
	}
	if werr == nil {
		t.Logf("%d octets written and no Write blocked: nothing to check", reported)
		return
	}
	var ne net.Error
	if !errors.As(werr, &ne) || !ne.Timeout() {
		t.Fatalf("Write ended by the deadline: got %v, want an error whose Timeout() is true", werr)
	}
	maybe := errors.Is(werr, transport.ErrMaybeWritten)
	_ = tr.Close()
	// A guard only; a peer that knows its stream ended (net.Pipe)
	// refuses a deadline.
	_ = peer.SetDeadline(time.Now().Add(hangGuard))
	received, err := io.Copy(io.Discard, peer)
	var pe net.Error
	if errors.As(err, &pe) && pe.Timeout() {
		t.Fatalf("the peer's stream did not end within %v of Close", hangGuard)
	}
	if received > reported && !maybe {
		t.Fatalf("the Writes reported %d octets written, the peer got %d, and the last Write's error (%v) does not match transport.ErrMaybeWritten", reported, received, werr)
	}
	t.Logf("reported %d, received %d, maybe written: %v", reported, received, maybe)
}

// testPeerClose: what the peer sent before closing is read, then io.EOF.
func testPeerClose(t *testing.T, tr transport.Transport, peer net.Conn) {
	go func() {
		_, _ = io.WriteString(peer, "221 bye\r\n")
		_ = peer.Close()
	}()
	expect(t, tr, "221 bye\r\n")
	_, done := readAsync(tr, make([]byte, 16))
	if r := wait(t, done, "Read after the peer closed"); r.err != io.EOF {
		t.Fatalf("Read after the peer closed = (%d, %v), want io.EOF", r.n, r.err)
	}
}

// testCloseInterruptsRead: Close ends a blocked Read with an error, and
// the peer sees the stream end.
func testCloseInterruptsRead(t *testing.T, tr transport.Transport, peer net.Conn) {
	started, done := readAsync(tr, make([]byte, 16))
	<-started
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r := wait(t, done, "a Read blocked when Close was called"); r.err == nil {
		t.Fatalf("Read after Close returned %d octets and no error", r.n)
	}
	if _, err := tr.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close returned no error")
	}
	_, pdone := readAsync(peer, make([]byte, 16))
	if r := wait(t, pdone, "the peer's Read after Close"); r.err == nil {
		t.Fatalf("the peer read %d octets after Close, want the end of the stream", r.n)
	}
}

// testStartTLS upgrades a StartTLSCapable transport once; a second
// upgrade fails with transport.ErrAlreadyUpgraded. Other transports pass.
func testStartTLS(t *testing.T, tr transport.Transport, peer net.Conn) {
	up, ok := tr.(transport.StartTLSCapable)
	if !ok {
		t.Logf("%T is not StartTLSCapable: nothing to check", tr)
		return
	}
	cert := newCert(t)
	srv := tls.Server(peer, &tls.Config{Certificates: []tls.Certificate{cert.TLS}})
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Handshake() }()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	sec, err := up.UpgradeTLS(ctx, &tls.Config{RootCAs: cert.Pool, ServerName: "localhost"})
	if err != nil {
		_ = peer.Close()
		<-srvErr
		t.Fatalf("UpgradeTLS: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	t.Cleanup(func() { _ = sec.Close() })
	if _, err := up.UpgradeTLS(ctx, nil); !errors.Is(err, transport.ErrAlreadyUpgraded) {
		t.Fatalf("second UpgradeTLS: %v, want ErrAlreadyUpgraded", err)
	}
	send(t, srv, sec, "250 secure\r\n")
}

// handshake runs the client and server handshakes together.
func handshake(t *testing.T, cli, srv *tls.Conn) {
	t.Helper()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Handshake() }()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	err := cli.HandshakeContext(ctx)
	if err != nil {
		_ = srv.Close()
	}
	serr := <-srvErr
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if serr != nil {
		t.Fatalf("server handshake: %v", serr)
	}
}

func newCert(t *testing.T) *selfsigned.Cert {
	t.Helper()
	c, err := selfsigned.New("smtpkit transporttest", selfsigned.ECDSA, time.Hour)
	if err != nil {
		t.Fatalf("certificate: %v", err)
	}
	return c
}

// asConn gives a Transport the rest of net.Conn, so that crypto/tls can
// run over it: the read and write deadlines are set together.
func asConn(tr transport.Transport) net.Conn {
	if c, ok := tr.(net.Conn); ok {
		return c
	}
	return transportConn{tr}
}

type transportConn struct{ transport.Transport }

func (transportConn) LocalAddr() net.Addr                  { return pipeAddr{} }
func (transportConn) RemoteAddr() net.Addr                 { return pipeAddr{} }
func (c transportConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c transportConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "transport" }
func (pipeAddr) String() string  { return "transport" }

// NamedCert returns a self-signed certificate, its own CA, whose
// subject alternative names are names (which may hold any octet below
// 0x80, control characters included, as a hostile server's may) and
// 127.0.0.1, with a pool that trusts it: for tests of what a transport,
// or a client above it, makes of a certificate error that quotes them.
func NamedCert(t testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "transporttest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/internal/servertext"
	"github.com/smtpkit/smtpkit/internal/tlsconf"
)

// Transport is a bidirectional byte stream with a deadline, the minimum an
// SMTP session needs. Any [net.Conn] satisfies it.
//
// SetDeadline sets the read and write deadline together, as
// [net.Conn.SetDeadline] does; the zero time means no deadline.
//
// An implementation that is not a [net.Conn] (a stream a host hands in,
// a tunnel) must keep two promises that net.Conn keeps, because the smtp
// package relies on them:
//
//   - SetDeadline interrupts a Read or Write already blocked, also when
//     it is called from another goroutine: that is how a session stops
//     its I/O when its context ends.
//   - A Read or Write that a deadline ends returns an error that is itself
//     a [net.Error] whose Timeout and Temporary methods report true, such
//     as [os.ErrDeadlineExceeded]. crypto/tls looks at the error itself,
//     not at what it wraps, and takes any other read error for a
//     permanent one: the smtp package probes an idle session with a
//     short read deadline, and an [*os.File]'s [*io/fs.PathError] there
//     would end a TLS session at its next message. Nothing read after a
//     timeout is lost.
//
// Close ends a blocked Read or Write. Package transporttest checks an
// implementation against this contract.
//
// A transport that is a [*net.TCPConn], or wraps one and returns it from a
// NetConn method (as [*tls.Conn] and this package's transports do), lets
// the smtp package ask the socket, without reading, whether an idle
// server has closed the session before it writes on it.
type Transport interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
}

// StartTLSCapable is a plaintext [Transport] that can be upgraded to TLS in
// place, as the SMTP STARTTLS command requires (RFC 3207).
//
// UpgradeTLS performs the TLS client handshake over the existing stream,
// honouring ctx, and returns the encrypted transport. After a successful
// upgrade the receiver must no longer be read from or written to directly:
// all further traffic goes through the returned transport, and closing either
// closes the connection. The returned transport is not itself
// StartTLSCapable, and a second call to UpgradeTLS on the receiver fails.
// Implementations in this package close the connection when the handshake
// fails, since the stream is then in no usable state.
type StartTLSCapable interface {
	Transport
	UpgradeTLS(ctx context.Context, cfg *tls.Config) (Transport, error)
}

// ErrMaybeWritten is reported, through [errors.Is], by a Write that a
// deadline (or Close) ended after it had handed its octets to something
// that may still send them: the host of HostConn (under GOOS=js), which
// cannot take back a chunk it was given. Such a Write returns len(p) with the error:
// the octets count as written, since they may be. A layer above that
// counts what it wrote (crypto/tls, which drops the record it was
// writing from its count) should count the whole of its own Write as
// possibly written when the error matches ErrMaybeWritten; the smtp
// package then treats a commit point in it as possibly written.
var ErrMaybeWritten = errors.New("transport: write ended after its octets were handed over; they may still be sent")

// ErrAlreadyUpgraded is returned by UpgradeTLS when the transport has already
// been upgraded to TLS, or an upgrade is in progress.
var ErrAlreadyUpgraded = errors.New("transport: connection already upgraded to TLS")

// Dial opens a plaintext TCP connection to addr ("host:port") and returns it
// as a [StartTLSCapable] transport. It is meant for SMTP with STARTTLS, on
// the submission port 587 or on port 25; for implicit TLS on port 465 use
// [DialTLS].
//
// The context bounds the connection attempt only; once Dial has returned,
// cancelling ctx has no effect on the connection. The host part of addr is
// remembered: a later UpgradeTLS whose config has no ServerName verifies the
// certificate against that host. Errors wrap the [net.Dialer] error.
func Dial(ctx context.Context, addr string) (StartTLSCapable, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &plainConn{Conn: conn, serverName: addr}, nil
}

// DialTLS opens a TCP connection to addr ("host:port") and performs the TLS
// client handshake on it at once (implicit TLS, RFC 8314; port 465 for
// submission). Both the connection attempt and the handshake honour ctx;
// once DialTLS has returned, cancelling ctx has no effect on the connection.
//
// The caller's cfg is not modified: DialTLS uses a clone, in which an empty
// ServerName is the host of addr and MinVersion is at least TLS 1.2; a nil
// cfg means the system roots, the host of addr as the server name, and TLS
// 1.2 or later. The returned transport is a [*tls.Conn]; it is
// not [StartTLSCapable]. On a failed handshake the connection is closed and
// the error wraps the cause, for example a [*tls.CertificateVerificationError]
// or ctx.Err(); its text is made printable, since a certificate error quotes
// the names the server's certificate holds.
func DialTLS(ctx context.Context, addr string, cfg *tls.Config) (Transport, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc, err := handshake(ctx, conn, tlsconf.Client(cfg, addr))
	if err != nil {
		return nil, handshakeError("tls handshake", addr, err)
	}
	return tc, nil
}

// Upgradable returns c as a [StartTLSCapable] transport, for connections
// made by a custom dialer (a proxy or tunnel, for instance). If c already is
// a transport returned by [Dial] or Upgradable, it is returned unchanged.
//
// Because a connection carries no host name, an upgrade of the returned
// transport verifies the certificate against cfg.ServerName: callers should
// pass a config that sets ServerName to the host they dialed, otherwise the
// handshake fails (unless cfg.InsecureSkipVerify is set). The
// TLS 1.2 floor applies either way.
func Upgradable(c net.Conn) StartTLSCapable {
	if pc, ok := c.(*plainConn); ok {
		return pc
	}
	return &plainConn{Conn: c}
}

func dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	return conn, nil
}

// handshake runs the TLS client handshake over conn, closing conn if it
// fails.
func handshake(ctx context.Context, conn net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}

// handshakeError wraps the error of a failed TLS handshake with what
// and peer. Its text is made printable (see [servertext.Printable]): a
// certificate-verification error quotes the names the server's
// certificate holds, which the server, or anyone on the path before
// STARTTLS, chose, and which may hold CR, ESC or BEL. errors.Is and
// errors.As see through it to err: a [*tls.CertificateVerificationError]
// and the [x509.HostnameError] or [x509.UnknownAuthorityError] it holds.
// The text is not redacted here: this package knows no secret; a caller
// that does filters it again (smtp.Redactor.WrapError).
func handshakeError(what, peer string, err error) error {
	return &printableError{
		msg: "transport: " + what + " with " + servertext.Printable(peer) + ": " + servertext.Printable(err.Error()),
		err: err,
	}
}

// printableError is an error whose text was made printable; it unwraps
// to the original.
type printableError struct {
	msg string
	err error
}

func (e *printableError) Error() string { return e.msg }
func (e *printableError) Unwrap() error { return e.err }

// plainConn is a plaintext connection that can be upgraded to TLS once.
type plainConn struct {
	net.Conn
	// serverName is the "host:port" given to Dial, or empty for a
	// connection wrapped by Upgradable.
	serverName string
	// upgraded is set by the first UpgradeTLS call, successful or not.
	upgraded atomic.Bool
}

// UpgradeTLS implements [StartTLSCapable].
func (c *plainConn) UpgradeTLS(ctx context.Context, cfg *tls.Config) (Transport, error) {
	if !c.upgraded.CompareAndSwap(false, true) {
		return nil, ErrAlreadyUpgraded
	}
	tc, err := handshake(ctx, c.Conn, tlsconf.Client(cfg, c.serverName))
	if err != nil {
		return nil, handshakeError("starttls handshake", c.peer(), err)
	}
	return tc, nil
}

// NetConn returns the connection c wraps, as [tls.Conn.NetConn] does, so
// that the smtp package can ask the socket whether an idle server has
// closed it. Reading or writing it directly corrupts the session.
func (c *plainConn) NetConn() net.Conn { return c.Conn }

// peer names the remote end for error messages.
func (c *plainConn) peer() string {
	if c.serverName != "" {
		return c.serverName
	}
	if ra := c.Conn.RemoteAddr(); ra != nil {
		return ra.String()
	}
	return "peer"
}

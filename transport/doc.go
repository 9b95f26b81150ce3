// Package transport provides the byte streams an SMTP session runs over.
//
// A [Transport] is an [io.ReadWriteCloser] with a deadline; any [net.Conn]
// satisfies it, and so can a tunnel, a proxy or an in-memory pipe. A
// [StartTLSCapable] transport is a plaintext stream that can be upgraded to
// TLS in place, which is what the SMTP STARTTLS command needs.
//
// Two dialers cover the two ways mail submission is secured:
//
//   - [DialTLS] opens a TCP connection and performs the TLS handshake at once.
//     This is implicit TLS, used for submission on port 465 (RFC 8314, which
//     recommends it over STARTTLS).
//   - [Dial] opens a plain TCP connection that can later be upgraded with
//     UpgradeTLS. This is for STARTTLS on port 587 (RFC 6409 submission) or
//     port 25, as described by RFC 3207.
//
// Both honour their context for the connection and for the handshake. Server
// certificates are verified against the system roots (or the caller's
// RootCAs) and the server name unless the caller's [tls.Config] sets
// InsecureSkipVerify. TLS 1.2 is the lowest version ever negotiated, in line
// with RFC 8996, which deprecates TLS 1.0 and 1.1, and with RFC 8314
// (section 4.1), which asks mail clients and servers for TLS 1.2 or later;
// a TLS upgrade of any transport of this package applies the same floor.
//
// Under GOOS=js, HostSocket, HostSocketTLS and HostConn (built only for
// GOOS=js, and so documented only there: GOOS=js go doc) make a
// transport of a socket the JavaScript host opened: a Node.js net.Socket,
// or a socket with readable and writable web streams as the connect() of
// Cloudflare Workers returns. Any other stream can be made a transport by
// keeping the contract that [Transport] states; package transporttest
// checks it.
//
// The package knows nothing of SMTP. Errors returned by this package wrap
// their cause, so [errors.Is] and [errors.As] see the underlying [net.OpError],
// [tls.CertificateVerificationError] or context error.
package transport

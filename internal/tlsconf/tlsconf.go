// Package tlsconf holds the TLS client policy of the module (TLS 1.2 as
// the floor, the server's name from the address dialed), for package
// transport's dialers, package smtp's STARTTLS and package sender. It is
// not API: a caller's own dialer sets tls.Config.ServerName itself.
package tlsconf

import (
	"crypto/tls"
	"net"
	"strings"
)

// Client returns the TLS client configuration this module uses for
// a server named by serverName, which is either a host ("mail.example.com",
// "192.0.2.1", "::1", "[::1]") or a host and port ("mail.example.com:587",
// "[::1]:465").
//
// The result is a clone of cfg (a new config if cfg is nil), so cfg itself is
// never modified. On the clone, MinVersion is raised to TLS 1.2 if it is
// lower (zero included), and an empty ServerName is set to the host part of
// serverName, without brackets. Nothing else is changed: certificates are
// verified against cfg.RootCAs (or the system roots when nil) unless cfg sets
// InsecureSkipVerify. If serverName is empty, ServerName is left as it is.
func Client(cfg *tls.Config, serverName string) *tls.Config {
	var out *tls.Config
	if cfg == nil {
		out = &tls.Config{}
	} else {
		out = cfg.Clone()
	}
	if out.MinVersion < tls.VersionTLS12 {
		out.MinVersion = tls.VersionTLS12
	}
	if out.ServerName == "" {
		out.ServerName = hostOf(serverName)
	}
	return out
}

// hostOf returns the host part of s, which is "host" or "host:port", with
// any IPv6 brackets removed.
func hostOf(s string) string {
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	// No port: a bare name, a bare IPv6 literal, or a bracketed one.
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
}

package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/smtpkit/smtpkit/transport"
	"github.com/smtpkit/smtpkit/transport/transporttest"
)

// hostileNames are certificate names a server chose to rewrite a
// terminal's line: ESC, CR and BEL.
var hostileNames = []string{"mx\x1b[2K\r.example", "bell\a.example"}

// checkCertError checks a handshake error against a certificate with
// hostileNames: its text holds no control character, and errors.As
// still finds the certificate error and the host name error in it.
func checkCertError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the handshake succeeded with a certificate for other names")
	}
	msg := err.Error()
	for _, c := range msg {
		if c < 0x20 || c == 0x7f {
			t.Errorf("control character %U in %q", c, msg)
		}
	}
	if !strings.Contains(msg, `mx\x1b[2K\r.example`) || !strings.Contains(msg, `bell\a.example`) {
		t.Errorf("the names are not shown escaped: %q", msg)
	}
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		t.Errorf("errors.As finds no *tls.CertificateVerificationError in %T", err)
	}
	var he x509.HostnameError
	if !errors.As(err, &he) || he.Host != "localhost" {
		t.Errorf("errors.As finds no x509.HostnameError for localhost in %T", err)
	}
}

// tlsServer accepts one connection on loopback and runs a TLS server
// handshake on it with cert.
func tlsServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err, "listen")
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}}).HandshakeContext(context.Background())
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func TestDialTLSCertNamesPrintable(t *testing.T) {
	cert, pool := transporttest.NamedCert(t, hostileNames...)
	addr := tlsServer(t, cert)
	_, err := transport.DialTLS(testContext(t), addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	checkCertError(t, err)
}

func TestUpgradeTLSCertNamesPrintable(t *testing.T) {
	cert, pool := transporttest.NamedCert(t, hostileNames...)
	addr := tlsServer(t, cert)
	tr, err := transport.Dial(testContext(t), addr)
	noErr(t, err, "Dial")
	defer tr.Close()
	_, err = tr.UpgradeTLS(testContext(t), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	checkCertError(t, err)
}

package faultserver

import (
	"crypto/tls"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
)

var (
	selfSignedOnce sync.Once
	selfSignedCert tls.Certificate
	selfSignedErr  error
)

// SelfSignedTLS returns a server configuration for a [StartTLS] step and the
// pool a client needs in its RootCAs to verify it. The certificate is
// self-signed, valid for 127.0.0.1, ::1 and localhost, and generated once per
// test binary; each call returns new configs. SelfSignedTLS fails the test
// if the certificate cannot be made.
func SelfSignedTLS(t testing.TB) (server *tls.Config, roots *x509.CertPool) {
	t.Helper()
	selfSignedOnce.Do(func() { selfSignedCert, selfSignedErr = newSelfSigned() })
	if selfSignedErr != nil {
		t.Fatalf("faultserver: self-signed certificate: %v", selfSignedErr)
	}
	roots = x509.NewCertPool()
	roots.AddCert(selfSignedCert.Leaf)
	return &tls.Config{Certificates: []tls.Certificate{selfSignedCert}}, roots
}

func newSelfSigned() (tls.Certificate, error) {
	c, err := selfsigned.New("smtpkit faultserver", selfsigned.ECDSA, 24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	return c.TLS, nil
}

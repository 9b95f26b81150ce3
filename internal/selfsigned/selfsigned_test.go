package selfsigned

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	for _, kt := range []KeyType{ECDSA, RSA} {
		c, err := New("test", kt, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
			if _, err := c.TLS.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: c.Pool}); err != nil {
				t.Errorf("key type %d, %s: %v", kt, host, err)
			}
		}
		if _, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
			t.Errorf("key type %d: PEM pair: %v", kt, err)
		}
	}
}

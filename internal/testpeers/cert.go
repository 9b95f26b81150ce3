package testpeers

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Cert is a throwaway self-signed RSA 2048 certificate for the loopback peers:
// CN=localhost with the SANs localhost, 127.0.0.1 and ::1. It is its own
// root, so a client that trusts Pool can verify it by host name or by IP.
type Cert struct {
	// CertPEM and KeyPEM are the PEM encoded certificate and PKCS#8 key.
	CertPEM, KeyPEM []byte
	// CertFile and KeyFile hold CertPEM and KeyPEM. Both files are
	// world-readable (mode 0644, in a 0755 directory) so that the postfix
	// user can read them; they are removed when the test ends.
	CertFile, KeyFile string
	// Pool holds the certificate as the only root.
	Pool *x509.CertPool
	// Server is a server-side TLS configuration presenting the certificate.
	// Each call of NewCert returns a fresh copy that the caller may modify.
	Server *tls.Config
}

var (
	certOnce sync.Once
	certPEM  []byte
	keyPEM   []byte
	certPair tls.Certificate
	certErr  error
)

// generateCert makes the process-wide key pair. An RSA key takes a while, so
// it is made once and shared by every NewCert.
func generateCert() {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		certErr = err
		return
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		certErr = err
		return
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"smtpkit test peers"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		certErr = err
		return
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		certErr = err
		return
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
	certPair, certErr = tls.X509KeyPair(certPEM, keyPEM)
}

// NewCert returns the test certificate, written to fresh files for this
// caller. The key pair is generated once per process.
func NewCert(t testing.TB) *Cert {
	t.Helper()
	return writeCert(t, mkdirShared(t, "smtpkit-cert-"))
}

// writeCert returns the test certificate with its files in dir, which must
// exist.
func writeCert(t testing.TB, dir string) *Cert {
	t.Helper()
	certOnce.Do(generateCert)
	if certErr != nil {
		t.Fatalf("testpeers: generating the test certificate: %v", certErr)
	}
	c := &Cert{
		CertPEM:  append([]byte(nil), certPEM...),
		KeyPEM:   append([]byte(nil), keyPEM...),
		CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile:  filepath.Join(dir, "key.pem"),
		Pool:     x509.NewCertPool(),
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{c.CertFile, c.CertPEM}, {c.KeyFile, c.KeyPEM}} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		// WriteFile's mode is filtered by the umask.
		if err := os.Chmod(f.path, 0o644); err != nil {
			t.Fatalf("testpeers: %v", err)
		}
	}
	c.Pool.AppendCertsFromPEM(c.CertPEM)
	c.Server = &tls.Config{
		Certificates: []tls.Certificate{certPair},
		MinVersion:   tls.VersionTLS12,
	}
	return c
}

// ClientConfig returns a client TLS configuration that trusts only this
// certificate. ServerName is left empty so that the caller's own logic (or
// the dialed host, 127.0.0.1, ::1 or localhost, all of which the certificate
// covers) decides it.
func (c *Cert) ClientConfig() *tls.Config {
	return &tls.Config{RootCAs: c.Pool, MinVersion: tls.VersionTLS12}
}

// mkdirShared makes a fresh directory that other users (postfix) can
// traverse and read, unlike t.TempDir, whose directories are 0700. It is
// made in $TMPDIR, or in /tmp when others cannot search $TMPDIR, and
// removed when the test ends.
func mkdirShared(t testing.TB, prefix string) string {
	t.Helper()
	parent := os.TempDir()
	if _, ok := blockedAncestor(parent); !ok {
		// A private $TMPDIR: the postfix user could not reach the files.
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		t.Fatalf("testpeers: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testpeers: %v", err)
	}
	return dir
}

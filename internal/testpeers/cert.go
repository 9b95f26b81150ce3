package testpeers

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
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
	c, err := selfsigned.New("smtpkit test peers", selfsigned.RSA, 10*365*24*time.Hour)
	if err != nil {
		certErr = err
		return
	}
	certPEM, keyPEM, certPair = c.CertPEM, c.KeyPEM, c.TLS
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

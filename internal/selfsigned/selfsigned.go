// Package selfsigned makes self-signed certificates for the loopback
// servers of this module: the demo server of cmd/smtpsend, the scripted
// test server and the real test peers. It is not for production use.
package selfsigned

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"
)

// KeyType selects the certificate's key.
type KeyType int

const (
	// ECDSA is a P-256 key: fast to make; the zero value.
	ECDSA KeyType = iota
	// RSA is a 2048-bit key, for peers whose TLS stacks want RSA
	// (Postfix, Mailpit); it takes a while to make.
	RSA
)

// Cert is a self-signed certificate for localhost, 127.0.0.1 and ::1,
// which is its own CA.
type Cert struct {
	// TLS is the certificate and key for a tls.Config, with Leaf set.
	TLS tls.Certificate
	// CertPEM and KeyPEM are the certificate and its PKCS #8 key in PEM.
	CertPEM, KeyPEM []byte
	// Pool trusts this certificate alone.
	Pool *x509.CertPool
}

// New makes a certificate named org (its Subject's organisation), valid
// from an hour ago for validFor.
func New(org string, kt KeyType, validFor time.Duration) (*Cert, error) {
	var key crypto.Signer
	var err error
	usage := x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign
	if kt == RSA {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
		usage |= x509.KeyUsageKeyEncipherment
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{org}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &Cert{
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}),
		Pool:    pool,
	}, nil
}

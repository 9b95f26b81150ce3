package tlsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"go.uber.org/goleak"

	"github.com/smtpkit/smtpkit/internal/tlsconf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("runtime.handleEvent"))
}

func TestClientKeepsCallersConfigAndRaisesFloor(t *testing.T) {
	roots := x509.NewCertPool()
	tests := []struct {
		name           string
		cfg            *tls.Config
		serverName     string
		wantServerName string
		wantMin        uint16
	}{
		{"nil config, host and port", nil, "mail.example.com:587", "mail.example.com", tls.VersionTLS12},
		{"nil config, bare host", nil, "mail.example.com", "mail.example.com", tls.VersionTLS12},
		{"IPv4 with port", nil, "127.0.0.1:465", "127.0.0.1", tls.VersionTLS12},
		{"bare IPv4", nil, "127.0.0.1", "127.0.0.1", tls.VersionTLS12},
		{"IPv6 with port", nil, "[::1]:465", "::1", tls.VersionTLS12},
		{"bracketed IPv6", nil, "[::1]", "::1", tls.VersionTLS12},
		{"bare IPv6", nil, "::1", "::1", tls.VersionTLS12},
		{"empty name", nil, "", "", tls.VersionTLS12},
		{"zero MinVersion raised", &tls.Config{}, "a.example:25", "a.example", tls.VersionTLS12},
		{"TLS 1.0 raised", &tls.Config{MinVersion: tls.VersionTLS10}, "a.example:25", "a.example", tls.VersionTLS12},
		{"TLS 1.1 raised", &tls.Config{MinVersion: tls.VersionTLS11}, "a.example:25", "a.example", tls.VersionTLS12},
		{"TLS 1.2 kept", &tls.Config{MinVersion: tls.VersionTLS12}, "a.example:25", "a.example", tls.VersionTLS12},
		{"TLS 1.3 kept", &tls.Config{MinVersion: tls.VersionTLS13}, "a.example:25", "a.example", tls.VersionTLS13},
		{"ServerName kept", &tls.Config{ServerName: "b.example"}, "a.example:25", "b.example", tls.VersionTLS12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *tls.Config
			if tt.cfg != nil {
				tt.cfg.RootCAs = roots
				before = tt.cfg.Clone()
			}
			got := tlsconf.Client(tt.cfg, tt.serverName)
			if got == nil || got == tt.cfg {
				t.Fatalf("got %p for input %p, want a new config", got, tt.cfg)
			}
			if got.ServerName != tt.wantServerName {
				t.Errorf("ServerName = %q, want %q", got.ServerName, tt.wantServerName)
			}
			if got.MinVersion != tt.wantMin {
				t.Errorf("MinVersion = %#x, want %#x", got.MinVersion, tt.wantMin)
			}
			if got.InsecureSkipVerify {
				t.Error("InsecureSkipVerify set")
			}
			if tt.cfg != nil {
				if got.RootCAs != roots {
					t.Error("RootCAs not carried over")
				}
				if before.MinVersion != tt.cfg.MinVersion || before.ServerName != tt.cfg.ServerName {
					t.Error("caller's config modified")
				}
			}
		})
	}

	t.Run("InsecureSkipVerify kept", func(t *testing.T) {
		got := tlsconf.Client(&tls.Config{InsecureSkipVerify: true}, "a.example")
		if !got.InsecureSkipVerify {
			t.Error("InsecureSkipVerify dropped")
		}
	})
}

package transport_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/smtpkit/smtpkit/transport"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
	"github.com/smtpkit/smtpkit/internal/tlsconf"
)

func TestMain(m *testing.M) {
	// Under GOOS=js the runtime parks a goroutine in handleEvent to wait
	// for the JavaScript event loop; it is not the tests'.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("runtime.handleEvent"))
}

// testCert is a self-signed certificate for 127.0.0.1, ::1 and localhost,
// with the pool that trusts it.
type testCert struct {
	cert tls.Certificate
	pool *x509.CertPool
}

func newTestCert(t *testing.T) testCert {
	t.Helper()
	c, err := selfsigned.New("smtpkit transport test", selfsigned.ECDSA, time.Hour)
	noErr(t, err, "certificate")
	return testCert{cert: c.TLS, pool: c.Pool}
}

// noErr stops the test if err is not nil.
func noErr(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: unexpected error: %v", what, err)
	}
}

// wantErr stops the test if err is nil, and checks that its message
// contains prefix.
func wantErr(t *testing.T, err error, prefix string) {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	if !strings.Contains(err.Error(), prefix) {
		t.Errorf("error %q does not contain %q", err, prefix)
	}
}

// server is a loopback listener that hands each accepted connection to a
// handler in its own goroutine. Cleanup closes the listener and every
// connection and waits for the handlers.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex // guards conns
	conns []net.Conn
}

func startServer(t *testing.T, handle func(net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err, "listen")
	s := &server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// tlsEcho returns a handler that runs a TLS server handshake with cfg,
// reports its result on errc, and then echoes one line.
func tlsEcho(cfg *tls.Config, errc chan<- error) func(net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, cfg)
		err := tc.Handshake()
		errc <- err
		if err != nil {
			return
		}
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return
		}
		_, _ = io.WriteString(tc, line)
	}
}

// expectRead reads len(want) bytes from r and requires them to equal want.
func expectRead(t *testing.T, r io.Reader, want string) {
	t.Helper()
	got := make([]byte, len(want))
	_, err := io.ReadFull(r, got)
	noErr(t, err, "read")
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// checkSecure checks a transport returned by DialTLS or UpgradeTLS: it is a
// *tls.Conn at TLS 1.2 or later, not upgradable again, and carries data.
func checkSecure(t *testing.T, tr transport.Transport) {
	t.Helper()
	if _, ok := tr.(transport.StartTLSCapable); ok {
		t.Error("a TLS transport must not be StartTLSCapable")
	}
	conn, ok := tr.(*tls.Conn)
	if !ok {
		t.Fatalf("got %T, want *tls.Conn", tr)
	}
	if v := conn.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("negotiated version %#x, want TLS 1.2 or later", v)
	}
	noErr(t, tr.SetDeadline(time.Now().Add(time.Minute)), "set deadline")
	const msg = "EHLO client.example\r\n"
	_, err := io.WriteString(tr, msg)
	noErr(t, err, "write")
	expectRead(t, tr, msg)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDialTLS(t *testing.T) {
	tc := newTestCert(t)
	certs := []tls.Certificate{tc.cert}

	tests := []struct {
		name      string
		serverCfg *tls.Config
		clientCfg *tls.Config
		// check inspects the client's error; nil means success is expected.
		check func(t *testing.T, err error)
	}{
		{
			name:      "verified with RootCAs",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: &tls.Config{RootCAs: tc.pool},
		},
		{
			name:      "verified with TLS 1.2 only server",
			serverCfg: &tls.Config{Certificates: certs, MaxVersion: tls.VersionTLS12},
			clientCfg: &tls.Config{RootCAs: tc.pool},
		},
		{
			name:      "verified against localhost name",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: &tls.Config{RootCAs: tc.pool, ServerName: "localhost"},
		},
		{
			name:      "InsecureSkipVerify honoured",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: &tls.Config{InsecureSkipVerify: true},
		},
		{
			name:      "unknown authority with nil config",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: nil,
			check: func(t *testing.T, err error) {
				var cve *tls.CertificateVerificationError
				if !errors.As(err, &cve) {
					t.Errorf("error %v (%T) is not a *tls.CertificateVerificationError", err, err)
				}
				var uae x509.UnknownAuthorityError
				if !errors.As(err, &uae) {
					t.Errorf("error %v is not an x509.UnknownAuthorityError", err)
				}
			},
		},
		{
			name:      "unknown authority with empty config",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: &tls.Config{},
			check: func(t *testing.T, err error) {
				var cve *tls.CertificateVerificationError
				if !errors.As(err, &cve) {
					t.Errorf("error %v (%T) is not a *tls.CertificateVerificationError", err, err)
				}
			},
		},
		{
			name:      "wrong server name",
			serverCfg: &tls.Config{Certificates: certs},
			clientCfg: &tls.Config{RootCAs: tc.pool, ServerName: "mail.example.com"},
			check: func(t *testing.T, err error) {
				var hostErr x509.HostnameError
				if !errors.As(err, &hostErr) {
					t.Errorf("error %v is not an x509.HostnameError", err)
				}
			},
		},
		{
			name:      "TLS 1.1 server refused",
			serverCfg: &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
			clientCfg: &tls.Config{RootCAs: tc.pool},
			check:     func(t *testing.T, err error) { wantErr(t, err, "version") },
		},
		{
			name:      "TLS 1.1 server refused despite caller MinVersion TLS 1.0",
			serverCfg: &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
			clientCfg: &tls.Config{RootCAs: tc.pool, MinVersion: tls.VersionTLS10},
			check:     func(t *testing.T, err error) { wantErr(t, err, "version") },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errc := make(chan error, 1)
			srv := startServer(t, tlsEcho(tt.serverCfg, errc))
			var before *tls.Config
			if tt.clientCfg != nil {
				before = tt.clientCfg.Clone()
			}

			tr, err := transport.DialTLS(testContext(t), srv.addr(), tt.clientCfg)

			if tt.clientCfg != nil && (before.MinVersion != tt.clientCfg.MinVersion || before.ServerName != tt.clientCfg.ServerName) {
				t.Error("DialTLS modified the caller's config")
			}
			if tt.check != nil {
				wantErr(t, err, "transport: tls handshake with "+srv.addr()+": ")
				if tr != nil {
					t.Errorf("got transport %v with error", tr)
				}
				tt.check(t, err)
				if err := <-errc; err == nil {
					t.Error("server handshake succeeded, want failure")
				}
				return
			}
			noErr(t, err, "DialTLS")
			defer tr.Close()
			noErr(t, <-errc, "server handshake")
			checkSecure(t, tr)
		})
	}
}

// starttlsServer is a handler that greets in plaintext, waits for
// "STARTTLS\r\n", answers, and then behaves like tlsEcho.
func starttlsServer(cfg *tls.Config, errc chan<- error) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := io.WriteString(c, "220 ready\r\n"); err != nil {
			errc <- err
			return
		}
		// Read byte by byte so that nothing after the command is buffered
		// away from the TLS handshake.
		var line []byte
		b := make([]byte, 1)
		for !strings.HasSuffix(string(line), "\n") {
			if _, err := c.Read(b); err != nil {
				errc <- err
				return
			}
			line = append(line, b[0])
		}
		if string(line) != "STARTTLS\r\n" {
			errc <- errors.New("unexpected command " + string(line))
			return
		}
		if _, err := io.WriteString(c, "220 go ahead\r\n"); err != nil {
			errc <- err
			return
		}
		tlsEcho(cfg, errc)(c)
	}
}

func TestDialUpgradeTLS(t *testing.T) {
	tc := newTestCert(t)
	serverCfg := &tls.Config{Certificates: []tls.Certificate{tc.cert}}
	rawDial := func(t *testing.T, ctx context.Context, addr string) transport.StartTLSCapable {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		noErr(t, err, "dial")
		return transport.Upgradable(c)
	}

	tests := []struct {
		name string
		// connect returns a StartTLSCapable connection to addr.
		connect   func(t *testing.T, ctx context.Context, addr string) transport.StartTLSCapable
		clientCfg func(addr string) *tls.Config
	}{
		{
			name: "Dial, server name from address",
			connect: func(t *testing.T, ctx context.Context, addr string) transport.StartTLSCapable {
				c, err := transport.Dial(ctx, addr)
				noErr(t, err, "Dial")
				return c
			},
			clientCfg: func(string) *tls.Config { return &tls.Config{RootCAs: tc.pool} },
		},
		{
			name:    "Upgradable with the module's TLS config",
			connect: rawDial,
			clientCfg: func(addr string) *tls.Config {
				return tlsconf.Client(&tls.Config{RootCAs: tc.pool}, addr)
			},
		},
		{
			name:      "Upgradable with explicit server name",
			connect:   rawDial,
			clientCfg: func(string) *tls.Config { return &tls.Config{RootCAs: tc.pool, ServerName: "localhost"} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errc := make(chan error, 1)
			srv := startServer(t, starttlsServer(serverCfg, errc))
			ctx := testContext(t)

			plain := tt.connect(t, ctx, srv.addr())
			defer plain.Close()
			expectRead(t, plain, "220 ready\r\n")
			_, err := io.WriteString(plain, "STARTTLS\r\n")
			noErr(t, err, "write")
			expectRead(t, plain, "220 go ahead\r\n")

			secure, err := plain.UpgradeTLS(ctx, tt.clientCfg(srv.addr()))
			noErr(t, err, "UpgradeTLS")
			defer secure.Close()
			noErr(t, <-errc, "server handshake")
			checkSecure(t, secure)

			again, err := plain.UpgradeTLS(ctx, tt.clientCfg(srv.addr()))
			if !errors.Is(err, transport.ErrAlreadyUpgraded) {
				t.Errorf("second UpgradeTLS: got %v, want ErrAlreadyUpgraded", err)
			}
			if again != nil {
				t.Errorf("second UpgradeTLS returned a transport")
			}
		})
	}
}

func TestUpgradableWithoutServerName(t *testing.T) {
	tc := newTestCert(t)
	errc := make(chan error, 1)
	srv := startServer(t, tlsEcho(&tls.Config{Certificates: []tls.Certificate{tc.cert}}, errc))
	ctx := testContext(t)

	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", srv.addr())
	noErr(t, err, "dial")
	up := transport.Upgradable(c)
	if again := transport.Upgradable(up.(net.Conn)); again != up {
		t.Error("Upgradable of an upgradable transport wrapped it again")
	}

	// Without a host name there is nothing to verify the certificate
	// against, so the upgrade must fail rather than skip verification.
	tr, err := up.UpgradeTLS(ctx, &tls.Config{RootCAs: tc.pool})
	wantErr(t, err, "transport: starttls handshake with "+srv.addr()+": ")
	if tr != nil {
		t.Error("got a transport with the error")
	}
	// The failed upgrade closed the connection.
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after failed upgrade: got %v, want net.ErrClosed", err)
	}
}

// silentServer accepts connections, signals on started once it has
// received the first byte of each (of a TLS ClientHello), and never
// answers.
func silentServer(started chan<- struct{}) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := c.Read(make([]byte, 1)); err != nil {
			return
		}
		select {
		case started <- struct{}{}:
		default:
		}
		// Hold the connection open, unanswered, until the client or the
		// test cleanup closes it.
		_, _ = io.Copy(io.Discard, c)
	}
}

func TestHandshakeHonoursContext(t *testing.T) {
	tests := []struct {
		name string
		// run starts a handshake that can only end through ctx.
		run func(ctx context.Context, addr string) (transport.Transport, error)
	}{
		{
			name: "DialTLS",
			run: func(ctx context.Context, addr string) (transport.Transport, error) {
				return transport.DialTLS(ctx, addr, nil)
			},
		},
		{
			name: "Dial then UpgradeTLS",
			run: func(ctx context.Context, addr string) (transport.Transport, error) {
				c, err := transport.Dial(ctx, addr)
				if err != nil {
					return nil, err
				}
				return c.UpgradeTLS(ctx, nil)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/cancel", func(t *testing.T) {
			started := make(chan struct{}, 1)
			srv := startServer(t, silentServer(started))
			// The outer timeout only bounds a broken test; the handshake is
			// ended by the cancel once the server has seen the ClientHello.
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			go func() {
				select {
				case <-started:
					cancel()
				case <-ctx.Done():
				}
			}()

			tr, err := tt.run(ctx, srv.addr())
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want an error wrapping context.Canceled", err)
			}
			if tr != nil {
				t.Error("got a transport with the error")
			}
		})
		t.Run(tt.name+"/deadline", func(t *testing.T) {
			started := make(chan struct{}, 1)
			srv := startServer(t, silentServer(started))
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()

			tr, err := tt.run(ctx, srv.addr())
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want an error wrapping context.DeadlineExceeded", err)
			}
			if tr != nil {
				t.Error("got a transport with the error")
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err, "listen")
	closedAddr := ln.Addr().String()
	noErr(t, ln.Close(), "close listener")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name  string
		ctx   context.Context
		addr  string
		check func(t *testing.T, err error)
	}{
		{
			name: "closed port",
			ctx:  context.Background(),
			addr: closedAddr,
			check: func(t *testing.T, err error) {
				var opErr *net.OpError
				if !errors.As(err, &opErr) {
					t.Errorf("error %v is not a *net.OpError", err)
				}
			},
		},
		{
			name: "cancelled context",
			ctx:  cancelled,
			addr: closedAddr,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, context.Canceled) {
					t.Errorf("error %v does not wrap context.Canceled", err)
				}
			},
		},
		{
			name:  "malformed address",
			ctx:   context.Background(),
			addr:  "127.0.0.1",
			check: func(t *testing.T, err error) {},
		},
	}
	dialers := []struct {
		name string
		dial func(ctx context.Context, addr string) (transport.Transport, error)
	}{
		{"Dial", func(ctx context.Context, addr string) (transport.Transport, error) {
			c, err := transport.Dial(ctx, addr)
			if c == nil {
				return nil, err // avoid a typed nil in the interface
			}
			return c, err
		}},
		{"DialTLS", func(ctx context.Context, addr string) (transport.Transport, error) {
			return transport.DialTLS(ctx, addr, nil)
		}},
	}
	for _, d := range dialers {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				tr, err := d.dial(tt.ctx, tt.addr)
				wantErr(t, err, "transport: dial "+tt.addr+": ")
				if tr != nil {
					t.Error("got a transport with the error")
				}
				tt.check(t, err)
			})
		}
	}
}

// Compile-time checks: any net.Conn, and so a *tls.Conn, is a Transport.
var (
	_ transport.Transport = net.Conn(nil)
	_ transport.Transport = (*tls.Conn)(nil)
)

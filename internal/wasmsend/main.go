// Command wasmsend sends mail with the smtp package from WebAssembly, over
// a stream its host hands in: under GOOS=wasip1 its standard input and
// output (the host connects them to the server), under GOOS=js a socket
// the JavaScript host opened (host.js, run by Node.js), and natively a TCP
// connection of its own, for comparison. It sends -n messages in one
// session, in plaintext, with STARTTLS or with implicit TLS, and logs in
// with AUTH; on a TLS session it pauses for -idle half-way, longer than
// the smtp package waits before it probes an idle session.
//
// Its test (TestWasmSend) builds it for both targets, runs it against
// Mailpit and compares every message byte for byte; docs/wasm.md shows
// it as an example.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/smtpkit/smtpkit/internal/tlsconf"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.mode, "mode", "starttls", "plain, starttls or tls")
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:587", "the server's host:port (natively dialed; elsewhere the host connects)")
	flag.StringVar(&cfg.serverName, "servername", "localhost", "the name the server's certificate must carry")
	flag.StringVar(&cfg.ca, "ca", "", "PEM file of the CA to trust (the system roots when empty)")
	flag.StringVar(&cfg.user, "user", "", "AUTH user (no AUTH when empty)")
	flag.StringVar(&cfg.pass, "pass", "", "AUTH password")
	flag.StringVar(&cfg.run, "run", "run", "a tag for the messages' subjects")
	flag.IntVar(&cfg.n, "n", 20, "messages to send")
	flag.DurationVar(&cfg.idle, "idle", 1500*time.Millisecond, "pause half-way on a TLS session (0: none)")
	startup := flag.Bool("startup", false, "exit at once (to measure start-up)")
	flag.Parse()
	if *startup {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := send(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "wasmsend:", err)
		os.Exit(1)
	}
}

type config struct {
	mode, addr, serverName, ca, user, pass, run string
	n                                           int
	idle                                        time.Duration
}

// send opens a session over the host's stream and sends cfg.n messages.
func send(ctx context.Context, cfg config) error {
	tlsConf := &tls.Config{ServerName: cfg.serverName}
	if cfg.ca != "" {
		pem, err := os.ReadFile(cfg.ca)
		if err != nil {
			return err
		}
		tlsConf.RootCAs = x509.NewCertPool()
		if !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", cfg.ca)
		}
	}
	conn, err := hostConn(ctx, cfg.addr)
	if err != nil {
		return fmt.Errorf("host stream: %w", err)
	}
	const local = "wasmsend.example"
	var c *smtp.Client
	switch cfg.mode {
	case "plain":
		c, err = smtp.Connect(ctx, conn, &smtp.Options{LocalName: local, InsecureAllowPlaintext: true})
	case "starttls":
		c, err = smtp.ConnectStartTLS(ctx, transport.Upgradable(conn), &smtp.Options{LocalName: local, TLSConfig: tlsConf})
	case "tls":
		tc := tls.Client(conn, tlsconf.Client(tlsConf, cfg.addr))
		if err = tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return fmt.Errorf("tls handshake: %w", err)
		}
		c, err = smtp.Connect(ctx, tc, &smtp.Options{LocalName: local})
	default:
		conn.Close()
		return fmt.Errorf("unknown mode %q", cfg.mode)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if cfg.user != "" {
		if err := c.Login(ctx, cfg.user, cfg.pass); err != nil {
			return err
		}
	}
	var busy time.Duration
	start := time.Now()
	for i := range cfg.n {
		if i == cfg.n/2 && cfg.mode != "plain" && cfg.idle > 0 {
			busy += time.Since(start)
			time.Sleep(cfg.idle)
			start = time.Now()
		}
		env := smtp.Envelope{From: "wasm@sender.example", To: []string{"rcpt@receiver.example"}}
		if _, err := c.Send(ctx, env, strings.NewReader(string(Message(cfg.run, cfg.mode, i)))); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	busy += time.Since(start)
	if err := c.Quit(ctx); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wasmsend: %s: %d messages in %v, %.0f msg/s (idle pause excluded)\n",
		cfg.mode, cfg.n, busy.Round(time.Millisecond), float64(cfg.n)/busy.Seconds())
	return nil
}

// Message returns the i-th message of a run in a mode: a few header
// fields (Subject names it; Message-ID is there so that Mailpit adds
// only Return-Path and Received), then a body with dot-led lines, a long
// line, and a size that varies from 1 KiB to over 100 KiB.
func Message(run, mode string, i int) []byte {
	var b strings.Builder
	subject := fmt.Sprintf("wasmsend %s %s %d", run, mode, i)
	fmt.Fprintf(&b, "Subject: %s\r\nFrom: <wasm@sender.example>\r\nTo: <rcpt@receiver.example>\r\n", subject)
	fmt.Fprintf(&b, "Message-ID: <%s.%s.%d@wasmsend.example>\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\n\r\n", run, mode, i)
	b.WriteString(".a line that starts with a dot\r\n..and one with two\r\n.\r\n")
	b.WriteString(strings.Repeat("x", 990) + "\r\n")
	size := 1 << 10
	if i%5 == 4 {
		size = 100 << 10
	}
	for line := 0; b.Len() < size; line++ {
		if line%40 == 39 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "%s/%s/%d line %06d: the quick brown fox jumps over the lazy dog\r\n", run, mode, i, line)
	}
	b.WriteString("end\r\n")
	return []byte(b.String())
}

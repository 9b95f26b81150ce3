package transport_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/transport"
)

// The examples dial an SMTP server inside the test process
// (internal/demoserver), whose certificate names "localhost" and is
// trusted through its CertPool; a program would dial its provider and
// leave RootCAs nil (the system roots). Package smtp speaks SMTP over
// these transports; here a few lines are exchanged by hand to show the
// stream.

func exampleServer(startTLS bool) *demoserver.Server {
	srv, err := demoserver.Start(demoserver.Options{StartTLS: startTLS})
	if err != nil {
		log.Fatal(err)
	}
	return srv
}

// exchange writes cmd (if any) and reads one reply, multi-line or not,
// returning its last line.
func exchange(r *bufio.Reader, t transport.Transport, cmd string) string {
	if cmd != "" {
		if _, err := t.Write([]byte(cmd + "\r\n")); err != nil {
			log.Fatal(err)
		}
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

// Implicit TLS (port 465): the handshake happens in DialTLS, before the
// server's greeting, with the certificate checked against the host of
// addr and TLS 1.2 as the floor.
func ExampleDialTLS() {
	srv := exampleServer(false)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t, err := transport.DialTLS(ctx, srv.Addr(), &tls.Config{ServerName: "localhost", RootCAs: srv.CertPool()})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	fmt.Println("TLS:", tls.VersionName(t.(*tls.Conn).ConnectionState().Version))
	r := bufio.NewReader(t)
	fmt.Println(exchange(r, t, ""))
	fmt.Println(exchange(r, t, "QUIT"))
	// Output:
	// TLS: TLS 1.3
	// 220 localhost ESMTP Service Ready
	// 221 2.0.0 Bye
}

// STARTTLS (port 587): Dial returns a plaintext stream that UpgradeTLS
// turns into a TLS one once the server has said 220 to STARTTLS; from
// then on only the returned transport is used. smtp.ConnectStartTLS does
// this, and refuses a server that does not offer STARTTLS.
func ExampleDial() {
	srv := exampleServer(true)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	plain, err := transport.Dial(ctx, srv.Addr())
	if err != nil {
		log.Fatal(err)
	}
	r := bufio.NewReader(plain)
	fmt.Println(exchange(r, plain, ""))
	exchange(r, plain, "EHLO client.example.com")
	fmt.Println(exchange(r, plain, "STARTTLS"))
	t, err := plain.UpgradeTLS(ctx, &tls.Config{ServerName: "localhost", RootCAs: srv.CertPool()})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	r = bufio.NewReader(t)
	fmt.Println(exchange(r, t, "QUIT"))
	// Output:
	// 220 localhost ESMTP Service Ready
	// 220 2.0.0 Ready to start TLS
	// 221 2.0.0 Bye
}

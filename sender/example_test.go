package sender_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// The examples run against an SMTP server inside the test process
// (internal/demoserver): implicit TLS with a certificate made on the
// spot, AUTH PLAIN as demo/secret. It refuses reject@ recipients (550),
// defers defer@ ones (451) and drops the connection after the message
// for drop@ ones. A program would set Addr to its provider's
// "host:465" and leave Options.TLSConfig nil (the system roots).

func exampleServer() *demoserver.Server {
	srv, err := demoserver.Start(demoserver.Options{Users: map[string]string{"demo": "secret"}})
	if err != nil {
		log.Fatal(err)
	}
	return srv
}

func exampleCredentials(context.Context) (sender.Credentials, error) {
	return sender.Credentials{Username: "demo", Secret: "secret"}, nil
}

func exampleMessage(to string) *strings.Reader {
	return strings.NewReader("From: app@example.com\r\nTo: " + to + "\r\nSubject: Hello\r\n\r\nHello.\r\n")
}

// exampleSendThenShutdown sends n messages, one after another, and shuts
// snd down.
func exampleSendThenShutdown(snd *sender.Sender, n int) {
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		to := fmt.Sprintf("user%d@example.net", i)
		_, err := snd.Send(ctx, smtp.Envelope{From: "app@example.com", To: []string{to}}, exampleMessage(to))
		cancel()
		if err != nil {
			log.Fatal(err)
		}
	}
	if err := snd.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// Many goroutines share one Sender; it keeps at most MaxConns
// connections and gives each Send exactly one answer.
func ExampleSender_Send() {
	srv := exampleServer()
	defer srv.Close()

	snd, err := sender.New(sender.Config{
		Addr:        srv.Addr(),
		Options:     smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		Credentials: exampleCredentials,
		MaxConns:    2,
	})
	if err != nil {
		log.Fatal(err)
	}

	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			to := fmt.Sprintf("user%d@example.net", i)
			if _, err := snd.Send(ctx, smtp.Envelope{From: "app@example.com", To: []string{to}}, exampleMessage(to)); err != nil {
				log.Print(err)
			}
		})
	}
	wg.Wait()

	// Shutdown lets the sessions finish and QUIT; Close would abort.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := snd.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	st := snd.Stats()
	fmt.Println("sent:", st.Sent, "failed:", st.Failed, "at most 2 connections:", st.Dials <= 2)
	fmt.Println("the server has:", len(srv.Messages()))
	// Output:
	// sent: 10 failed: 0 at most 2 connections: true
	// the server has: 10
}

// What to do with each error. The sender never retries a refused
// message and never sends a message twice; the program decides, from the
// classification, whether to retry later (say, from its own job queue).
func ExampleSender_Send_errors() {
	srv := exampleServer()
	defer srv.Close()
	snd, err := sender.New(sender.Config{Addr: srv.Addr(), Options: smtp.Options{TLSConfig: srv.ClientTLSConfig()}, Credentials: exampleCredentials})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())

	for _, to := range []string{"ann@example.net", "reject@example.net", "defer@example.net", "drop@example.net"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := snd.Send(ctx, smtp.Envelope{From: "app@example.com", To: []string{to}}, exampleMessage(to))
		cancel()
		switch {
		case err == nil:
			fmt.Println(to, "-> sent: mark the job done")
		case errors.Is(err, sender.ErrOutcomeUnknown):
			// Committed, answer lost: it may have been delivered.
			fmt.Println(to, "-> unknown: mark the job for a person to check; never resend blindly")
		case smtp.IsConfig(err):
			fmt.Println(to, "-> setup: pause the queue and alert; the job is not at fault")
		case smtp.IsPermanent(err):
			fmt.Println(to, "-> permanent: mark the job failed")
		case smtp.IsTemporary(err), errors.Is(err, context.DeadlineExceeded):
			fmt.Println(to, "-> temporary: requeue the job with a delay")
		default:
			fmt.Println(to, "-> other:", err)
		}
	}
	// Output:
	// ann@example.net -> sent: mark the job done
	// reject@example.net -> permanent: mark the job failed
	// defer@example.net -> temporary: requeue the job with a delay
	// drop@example.net -> unknown: mark the job for a person to check; never resend blindly
}

// Credentials are asked for at each login, so a provider can hand out a
// fresh OAuth access token (XOAUTH2, OAUTHBEARER) or a rotated password
// without restarting the program. Here it counts the logins.
func ExampleCredentialsFunc() {
	srv := exampleServer()
	defer srv.Close()

	var mu sync.Mutex
	logins := 0
	creds := func(ctx context.Context) (sender.Credentials, error) {
		mu.Lock()
		defer mu.Unlock()
		logins++
		// A real provider would refresh a token here, bounded by ctx:
		// tok, err := tokenSource.Token()
		// return sender.Credentials{Mechanism: smtp.MechXOAUTH2,
		//	Username: "me@example.com", Secret: tok.AccessToken}, err
		return sender.Credentials{Mechanism: smtp.MechPLAIN, Username: "demo", Secret: "secret"}, nil
	}
	snd, err := sender.New(sender.Config{
		Addr:               srv.Addr(),
		Options:            smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		Credentials:        creds,
		MaxConns:           1,
		MaxMessagesPerConn: 2, // a new session, and so a new login, every 2 messages
	})
	if err != nil {
		log.Fatal(err)
	}
	exampleSendThenShutdown(snd, 4)
	mu.Lock()
	defer mu.Unlock()
	fmt.Println("messages:", len(srv.Messages()), "logins:", logins)
	// Output:
	// messages: 4 logins: 2
}

// Shutdown is how a program that wants its messages out ends: new Sends,
// and Sends still waiting for a session, get ErrClosed at once; the
// sessions finish the messages they have written, say QUIT, and
// Shutdown returns nil, or, if its ctx ends first, does what Close does
// and returns ctx.Err(). Close is the abort: sessions are closed without
// QUIT, and a message past its commit point is answered with
// ErrOutcomeUnknown. Close after Shutdown does nothing more; it is
// idempotent, so a deferred Close is always safe.
func ExampleSender_Shutdown() {
	srv := exampleServer()
	defer srv.Close()
	snd, err := sender.New(sender.Config{Addr: srv.Addr(), Options: smtp.Options{TLSConfig: srv.ClientTLSConfig()}, Credentials: exampleCredentials})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := snd.Send(ctx, smtp.Envelope{From: "app@example.com", To: []string{"you@example.net"}}, exampleMessage("you@example.net")); err != nil {
		log.Fatal(err)
	}

	// At exit (on SIGTERM, say): give the sessions 10 s to finish.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	fmt.Println("shutdown:", snd.Shutdown(sctx))
	_, err = snd.Send(ctx, smtp.Envelope{From: "app@example.com", To: []string{"late@example.net"}}, exampleMessage("late@example.net"))
	fmt.Println("a Send after Shutdown:", errors.Is(err, sender.ErrClosed))
	fmt.Println("close:", snd.Close())
	fmt.Println("delivered:", len(srv.Messages()))
	// Output:
	// shutdown: <nil>
	// a Send after Shutdown: true
	// close: <nil>
	// delivered: 1
}

// Config.Dial replaces dialing Addr: for a proxy, a tunnel, or a dialer
// of your own. With ImplicitTLS (the zero Security) it returns a
// connection that is already TLS; with StartTLS, a plain one wrapped
// with transport.Upgradable (and Options.TLSConfig.ServerName set, since
// a connection carries no host name). It is called from each new
// session's goroutine, so several calls may run at once.
func ExampleConfig_dial() {
	srv := exampleServer()
	defer srv.Close()

	var dials atomic.Int64
	dial := func(ctx context.Context) (transport.Transport, error) {
		dials.Add(1)
		var d net.Dialer // or a SOCKS5 dialer, an SSH tunnel...
		conn, err := d.DialContext(ctx, "tcp", srv.Addr())
		if err != nil {
			return nil, err
		}
		tc := tls.Client(conn, &tls.Config{ServerName: "localhost", RootCAs: srv.CertPool(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		return tc, nil
	}
	snd, err := sender.New(sender.Config{Dial: dial, Credentials: exampleCredentials, MaxConns: 1})
	if err != nil {
		log.Fatal(err)
	}
	exampleSendThenShutdown(snd, 3)
	fmt.Println("messages:", len(srv.Messages()), "dials:", dials.Load())
	// Output:
	// messages: 3 dials: 1
}

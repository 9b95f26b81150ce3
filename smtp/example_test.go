package smtp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// The examples run against an SMTP server inside the test process
// (internal/demoserver): implicit TLS with a certificate made on the
// spot, AUTH PLAIN as demo/secret. It refuses reject@ recipients (550),
// defers defer@ ones (451) and drops the connection after the message
// for drop@ ones.

func exampleServer() *demoserver.Server {
	srv, err := demoserver.Start(demoserver.Options{Users: map[string]string{"demo": "secret"}})
	if err != nil {
		log.Fatal(err)
	}
	return srv
}

// exampleConnect opens one session to srv, over implicit TLS.
func exampleConnect(ctx context.Context, srv *demoserver.Server, opts *smtp.Options) *smtp.Client {
	t, err := transport.DialTLS(ctx, srv.Addr(), srv.ClientTLSConfig())
	if err != nil {
		log.Fatal(err)
	}
	c, err := smtp.Connect(ctx, t, opts)
	if err != nil {
		log.Fatal(err)
	}
	return c
}

// exampleDial opens one logged-in session to srv.
func exampleDial(ctx context.Context, srv *demoserver.Server, opts *smtp.Options) *smtp.Client {
	c := exampleConnect(ctx, srv, opts)
	if err := c.Login(ctx, "demo", "secret"); err != nil {
		log.Fatal(err)
	}
	return c
}

// One session, driven by hand: dial with implicit TLS, greet, log in,
// send, quit. Most programs use the sender package instead, which does
// this on goroutines of its own and reconnects.
func ExampleConnect() {
	srv := exampleServer()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t, err := transport.DialTLS(ctx, srv.Addr(), srv.ClientTLSConfig())
	if err != nil {
		log.Fatal(err)
	}
	c, err := smtp.Connect(ctx, t, &smtp.Options{LocalName: "client.example.com"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("TLS:", c.IsTLS(), "AUTH:", c.Capabilities().Auth)
	if err := c.Login(ctx, "demo", "secret"); err != nil {
		log.Fatal(err)
	}
	msg := "From: me@example.com\r\nTo: you@example.net\r\nSubject: Hi\r\n\r\nHello.\r\n"
	out, err := c.Send(ctx, smtp.Envelope{From: "me@example.com", To: []string{"you@example.net"}}, strings.NewReader(msg))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted:", out.Accepted, "queue id found:", out.QueueID != "")
	if err := c.Quit(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// TLS: true AUTH: [PLAIN]
	// accepted: [you@example.net] queue id found: true
}

// Every error is an *smtp.Error with the step that failed, and
// IsTemporary and IsPermanent say whether a retry can help. An error that
// wraps ErrOutcomeUnknown is neither: the message was committed and may
// have been delivered, so sending it again may deliver it twice.
func ExampleIsTemporary() {
	srv := exampleServer()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exampleDial(ctx, srv, nil)
	defer c.Close()

	for _, rcpt := range []string{"you@example.net", "reject@example.net", "defer@example.net", "drop@example.net"} {
		msg := "From: me@example.com\r\nTo: " + rcpt + "\r\nSubject: Hi\r\n\r\nHello.\r\n"
		_, err := c.Send(ctx, smtp.Envelope{From: "me@example.com", To: []string{rcpt}}, strings.NewReader(msg))
		var se *smtp.Error
		errors.As(err, &se)
		switch {
		case err == nil:
			fmt.Println(rcpt, "sent")
		case errors.Is(err, smtp.ErrOutcomeUnknown):
			fmt.Println(rcpt, "outcome unknown: record it, do not resend; step", se.Op)
		case smtp.IsPermanent(err):
			fmt.Println(rcpt, "permanent: give up;", se.Op, se.Code, se.Enhanced)
		case smtp.IsTemporary(err):
			fmt.Println(rcpt, "temporary: retry later;", se.Op, se.Code, se.Enhanced)
		}
	}
	// Output:
	// you@example.net sent
	// reject@example.net permanent: give up; RCPT 550 5.1.1
	// defer@example.net temporary: retry later; RCPT 451 4.3.0
	// drop@example.net outcome unknown: record it, do not resend; step BDAT
}

// The audit hook receives an event for each step: codes, steps,
// addresses and mechanism names, never credentials nor message content.
// SlogAudit logs them with log/slog; here with the time attribute (and
// the queue id) left out so the output stays the same from run to run.
func ExampleSlogAudit() {
	srv := exampleServer()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	h := slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "queue_id" || a.Key == "session" {
				return slog.Attr{}
			}
			return a
		},
	})
	c := exampleDial(ctx, srv, &smtp.Options{Audit: smtp.SlogAudit(slog.New(h))})
	defer c.Close()
	msg := "From: me@example.com\r\nTo: you@example.net\r\nSubject: Hi\r\n\r\nHello.\r\n"
	if _, err := c.Send(ctx, smtp.Envelope{From: "me@example.com", To: []string{"you@example.net"}}, strings.NewReader(msg)); err != nil {
		log.Fatal(err)
	}
	if err := c.Quit(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=DEBUG msg="smtp connect" op=greeting
	// level=DEBUG msg="smtp tls" op=greeting tls="TLS 1.3"
	// level=DEBUG msg="smtp greeting" op=greeting code=220
	// level=DEBUG msg="smtp ehlo" op=EHLO code=250 extensions="8BITMIME AUTH CHUNKING ENHANCEDSTATUSCODES LIMITS PIPELINING SIZE SMTPUTF8"
	// level=DEBUG msg="smtp auth" op=AUTH code=235 enhanced=2.0.0 mechanism=PLAIN
	// level=DEBUG msg="smtp mail" op=MAIL code=250 enhanced=2.0.0 from=me@example.com
	// level=DEBUG msg="smtp rcpt-accepted" op=RCPT code=250 enhanced=2.0.0 rcpt=you@example.net
	// level=INFO msg="smtp message" op=BDAT code=250 enhanced=2.0.0
	// level=DEBUG msg="smtp quit" op=QUIT code=221
}

// On port 587 the session starts in plaintext and is upgraded with
// STARTTLS before anything else is said; a server that does not offer
// STARTTLS is an error, never a plaintext session. Set
// Options.TLSConfig.ServerName to the host you dialed: the certificate
// is checked against it. (The demo server's certificate names
// "localhost"; leave RootCAs nil for the system roots.)
func ExampleConnectStartTLS() {
	srv, err := demoserver.Start(demoserver.Options{StartTLS: true, Users: map[string]string{"demo": "secret"}})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t, err := transport.Dial(ctx, srv.Addr()) // "smtp.example.com:587"
	if err != nil {
		log.Fatal(err)
	}
	c, err := smtp.ConnectStartTLS(ctx, t, &smtp.Options{
		LocalName: "client.example.com",
		TLSConfig: &tls.Config{ServerName: "localhost", RootCAs: srv.CertPool()},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Only what the server said over TLS counts: AUTH is offered now.
	fmt.Println("TLS:", c.IsTLS(), "STARTTLS offered again:", c.Capabilities().Has("STARTTLS"), "AUTH:", c.Capabilities().Auth)
	if err := c.Login(ctx, "demo", "secret"); err != nil {
		log.Fatal(err)
	}
	if err := c.Quit(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// TLS: true STARTTLS offered again: false AUTH: [PLAIN]
}

// tokenSource stands for an OAuth 2.0 token source (such as
// golang.org/x/oauth2's): it hands out its cached access token until
// told that the token was refused, and then a fresh one.
type tokenSource struct {
	cached, fresh string
}

func (s *tokenSource) Token() string { return s.cached }
func (s *tokenSource) Refresh()      { s.cached = s.fresh }

// XOAUTH2 (Gmail, Microsoft 365) logs in with an access token instead of
// a password. A token that has expired is refused like a wrong password
// (IsConfig), and the session stays usable: refresh the token and log in
// again. (A sender.Sender asks its Config.Credentials at each login, so
// there the provider refreshes the token.)
func ExampleClient_LoginWith() {
	srv, err := demoserver.Start(demoserver.Options{Tokens: map[string]string{"me@example.com": "token-2"}})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exampleConnect(ctx, srv, nil)
	defer c.Close()

	tokens := &tokenSource{cached: "token-1", fresh: "token-2"} // token-1 has expired
	err = c.LoginWith(ctx, smtp.MechXOAUTH2, "me@example.com", tokens.Token())
	if smtp.IsConfig(err) {
		fmt.Println("refused:", err)
		tokens.Refresh()
		err = c.LoginWith(ctx, smtp.MechXOAUTH2, "me@example.com", tokens.Token())
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("logged in with the fresh token")
	if err := c.Quit(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// refused: smtp: AUTH: auth: 535 5.7.8: XOAUTH2 refused: Authentication failed
	// logged in with the fresh token
}

// A Policy sees every transaction after its envelope is checked and
// before a byte of it is written, and may veto it: here, mail to
// anywhere but example.net, or larger than 1 MB when its size is known
// (Size 0: unknown). The veto is an *Error of Kind KindPolicy that wraps
// the policy's error; the session is not touched.
func ExamplePolicy() {
	srv := exampleServer()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	errNotAllowed := errors.New("recipient outside example.net")
	policy := func(ctx context.Context, req smtp.PolicyRequest) error {
		for _, to := range req.To {
			if !strings.HasSuffix(to, "@example.net") {
				return fmt.Errorf("%w: %s", errNotAllowed, to)
			}
		}
		if req.Size > 1<<20 {
			return errors.New("message over 1 MB")
		}
		return nil
	}
	c := exampleDial(ctx, srv, &smtp.Options{Policy: policy})
	defer c.Close()
	for _, rcpt := range []string{"you@example.net", "someone@example.org"} {
		msg := "From: me@example.com\r\nTo: " + rcpt + "\r\nSubject: Hi\r\n\r\nHello.\r\n"
		_, err := c.Send(ctx, smtp.Envelope{From: "me@example.com", To: []string{rcpt}}, strings.NewReader(msg))
		var se *smtp.Error
		switch {
		case err == nil:
			fmt.Println(rcpt, "sent")
		case errors.As(err, &se) && se.Kind == smtp.KindPolicy:
			fmt.Println(rcpt, "vetoed:", errors.Is(err, errNotAllowed), "session:", c.State())
		default:
			log.Fatal(err)
		}
	}
	// Output:
	// you@example.net sent
	// someone@example.org vetoed: true session: ready
}

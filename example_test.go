package smtpkit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"go.uber.org/goleak"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// The examples run against an SMTP server inside the test process
// (internal/demoserver): implicit TLS with a certificate made on the
// spot, AUTH PLAIN as demo/secret. A program would name its provider's
// server instead: Addr "smtp.example.com:465" and no TLSConfig (the
// system roots).

// TestMain checks that the examples leave no goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// exampleServer starts the in-process server.
func exampleServer() *demoserver.Server {
	srv, err := demoserver.Start(demoserver.Options{Users: map[string]string{"demo": "secret"}})
	if err != nil {
		log.Fatal(err)
	}
	return srv
}

// Send one message: the shortest complete program.
func Example() {
	srv := exampleServer()
	defer srv.Close()

	snd, err := sender.New(sender.Config{
		Addr:      srv.Addr(),            // "smtp.example.com:465"
		TLSConfig: srv.ClientTLSConfig(), // nil: the system roots
		Credentials: func(ctx context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())

	msg := "From: me@example.com\r\nTo: you@example.net\r\nSubject: Hello\r\n\r\nHi there.\r\n"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := snd.Send(ctx, smtp.Envelope{From: "me@example.com", To: []string{"you@example.net"}}, strings.NewReader(msg))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted:", out.Accepted, "reply:", out.Reply.Code)
	// Output:
	// accepted: [you@example.net] reply: 250
}

// One Sender serves every request of a web server: it is safe for
// concurrent use and bounds the connections to the SMTP server. Each
// request gives its Send a deadline of its own, and the handler turns the
// error's classification into an HTTP status.
func Example_httpHandler() {
	srv := exampleServer()
	defer srv.Close()

	snd, err := sender.New(sender.Config{
		Addr:      srv.Addr(),
		TLSConfig: srv.ClientTLSConfig(),
		MaxConns:  4,
		Credentials: func(ctx context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("POST /signup", func(w http.ResponseWriter, r *http.Request) {
		email := r.FormValue("email")
		// The mail must not hold the request longer than this, and
		// stops as soon as the client goes away.
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		msg := "From: welcome@example.com\r\nTo: " + email + "\r\nSubject: Welcome\r\n\r\nHello!\r\n"
		_, err := snd.Send(ctx, smtp.Envelope{From: "welcome@example.com", To: []string{email}}, strings.NewReader(msg))
		switch {
		case err == nil:
			w.WriteHeader(http.StatusCreated)
		case errors.Is(err, smtp.ErrOutcomeUnknown):
			// It may have been sent: do not invite the user to retry.
			http.Error(w, "welcome mail may be delayed", http.StatusAccepted)
		case smtp.IsPermanent(err):
			http.Error(w, "this address cannot receive mail", http.StatusUnprocessableEntity)
		default: // temporary, or the request's deadline
			w.Header().Set("Retry-After", "60")
			http.Error(w, "mail is unavailable, try again later", http.StatusServiceUnavailable)
		}
	})
	web := httptest.NewServer(mux) // 127.0.0.1
	defer web.Close()

	for _, email := range []string{"ann@example.net", "reject@example.net", "defer@example.net"} {
		resp, err := web.Client().PostForm(web.URL+"/signup", url.Values{"email": {email}})
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(email, resp.StatusCode)
	}
	// Output:
	// ann@example.net 201
	// reject@example.net 422
	// defer@example.net 503
}

// Compose a MIME message (text and an attachment) with
// github.com/emersion/go-message, then send it. smtpkit takes the message
// as bytes and leaves its format to the program.
func Example_mime() {
	srv := exampleServer()
	defer srv.Close()

	var h mail.Header
	h.SetDate(time.Now())
	h.SetAddressList("From", []*mail.Address{{Name: "Billing", Address: "billing@example.com"}})
	h.SetAddressList("To", []*mail.Address{{Name: "Ann", Address: "ann@example.net"}})
	h.SetSubject("Your invoice, März")
	if err := h.GenerateMessageID(); err != nil {
		log.Fatal(err)
	}
	var buf bytes.Buffer
	mw, err := mail.CreateWriter(&buf, h)
	if err != nil {
		log.Fatal(err)
	}
	tw, err := mw.CreateInline()
	if err != nil {
		log.Fatal(err)
	}
	var th mail.InlineHeader
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	w, err := tw.CreatePart(th)
	if err != nil {
		log.Fatal(err)
	}
	io.WriteString(w, "Grüße! Your invoice is attached.\r\n")
	w.Close()
	tw.Close()
	var ah mail.AttachmentHeader
	ah.SetContentType("text/csv", nil)
	ah.SetFilename("invoice.csv")
	w, err = mw.CreateAttachment(ah)
	if err != nil {
		log.Fatal(err)
	}
	io.WriteString(w, "item,amount\r\nwidgets,42.00\r\n")
	w.Close()
	mw.Close()

	snd, err := sender.New(sender.Config{
		Addr:      srv.Addr(),
		TLSConfig: srv.ClientTLSConfig(),
		Credentials: func(ctx context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// go-message writes CRLF line endings and encodes 8-bit text, so the
	// body passes smtpkit's bare-LF check as it is.
	if _, err := snd.Send(ctx, smtp.Envelope{From: "billing@example.com", To: []string{"ann@example.net"}}, &buf); err != nil {
		log.Fatal(err)
	}

	// What arrived, read back with go-message.
	got := srv.Messages()[0]
	mr, err := mail.CreateReader(bytes.NewReader(got.Data))
	if err != nil {
		log.Fatal(err)
	}
	subject, _ := mr.Header.Subject()
	fmt.Println("subject:", subject)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		} else if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		switch ph := p.Header.(type) {
		case *mail.InlineHeader:
			ct, _, _ := ph.ContentType()
			fmt.Printf("inline %s: %q\n", ct, body)
		case *mail.AttachmentHeader:
			name, _ := ph.Filename()
			fmt.Printf("attachment %s: %d bytes\n", name, len(body))
		}
	}
	// Output:
	// subject: Your invoice, März
	// inline text/plain: "Grüße! Your invoice is attached.\r\n"
	// attachment invoice.csv: 28 bytes
}

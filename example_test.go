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
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"

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
		Addr:    srv.Addr(),                                     // "smtp.example.com:465"
		Options: smtp.Options{TLSConfig: srv.ClientTLSConfig()}, // TLSConfig nil: the system roots
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
		Addr:     srv.Addr(),
		Options:  smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		MaxConns: 4,
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
			// The message's: this address (or this message) will
			// never be accepted.
			http.Error(w, "this address cannot receive mail", http.StatusUnprocessableEntity)
		case smtp.IsConfig(err):
			// The setup's (a refused login, an untrusted
			// certificate): not the user's fault, and no retry of
			// theirs will help until someone fixes it. Alert.
			log.Printf("ALERT: mail setup broken: %v", err)
			http.Error(w, "mail is unavailable", http.StatusServiceUnavailable)
		default: // the moment's (smtp.IsTemporary), or the request's deadline
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

// A receipt as nearly every transactional mail is: a text and an HTML
// version of the same text, a logo the HTML shows inline, and a PDF
// attached. It is built with github.com/emersion/go-message as the
// sender reads it, through an io.Pipe: the whole message is never in
// memory, however large the attachment. smtpkit takes the message as
// bytes and leaves its format to the program.
//
//	multipart/mixed
//	├── multipart/related
//	│   ├── multipart/alternative
//	│   │   ├── text/plain
//	│   │   └── text/html       <img src="cid:logo@example.com">
//	│   └── image/png           Content-ID: <logo@example.com>
//	└── application/pdf         receipt.pdf
func Example_mime() {
	srv := exampleServer()
	defer srv.Close()
	snd, err := sender.New(sender.Config{
		Addr:    srv.Addr(),
		Options: smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		Credentials: func(ctx context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())

	var h mail.Header
	h.SetDate(time.Now())
	h.SetAddressList("From", []*mail.Address{{Name: "Shop", Address: "shop@example.com"}})
	h.SetAddressList("To", []*mail.Address{{Name: "Ann", Address: "ann@example.net"}})
	h.SetSubject("Your receipt, März")
	if err := h.GenerateMessageID(); err != nil {
		log.Fatal(err)
	}
	pdf := strings.NewReader("%PDF-1.4 (a receipt; an *os.File in a program)")
	body := streamReceipt(h, pdf)
	defer body.Close() // stops the writer if Send returns before reading it all

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = snd.Send(ctx, smtp.Envelope{From: "shop@example.com", To: []string{"ann@example.net"}}, body)
	switch {
	case err == nil:
	case errors.Is(err, smtp.ErrOutcomeUnknown):
		log.Fatal("may have been sent: ", err)
	case smtp.IsPermanent(err), smtp.IsConfig(err), smtp.IsTemporary(err):
		log.Fatal(smtp.Classify(err), ": ", err)
	default: // the context ended
		log.Fatal(err)
	}

	// What arrived, read back with go-message.
	got, err := message.Read(bytes.NewReader(srv.Messages()[0].Data))
	if err != nil {
		log.Fatal(err)
	}
	gh := mail.Header{Header: got.Header}
	subject, _ := gh.Subject()
	fmt.Println("subject:", subject)
	got.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		ct, _, _ := e.Header.ContentType()
		line := strings.Repeat("  ", len(path)) + ct
		if !strings.HasPrefix(ct, "multipart/") {
			disp, params, _ := e.Header.ContentDisposition()
			data, _ := io.ReadAll(e.Body)
			line += " " + disp
			if id := e.Header.Get("Content-ID"); id != "" {
				line += " " + id
			}
			if name := params["filename"]; name != "" {
				line += " " + name
			}
			if strings.HasPrefix(ct, "text/") {
				line += fmt.Sprintf(": %q", data)
			} else {
				line += fmt.Sprintf(": %d bytes", len(data))
			}
		}
		fmt.Println(line)
		return nil
	})
	// Output:
	// subject: Your receipt, März
	// multipart/mixed
	//   multipart/related
	//     multipart/alternative
	//       text/plain inline: "Thank you, Ann! Your receipt is attached.\r\n"
	//       text/html inline: "<p>Thank you, Ann!</p><img src=\"cid:logo@example.com\" alt=\"Shop\">\r\n"
	//     image/png inline <logo@example.com>: 67 bytes
	//   application/pdf attachment receipt.pdf: 46 bytes
}

// streamReceipt returns the receipt as a reader that a goroutine fills
// while the sender reads it. Closing the reader stops the goroutine; an
// error while building the message reaches the sender as a failed read
// (an invalid-input error: nothing is committed).
//
// A pipe cannot be read twice, so the sender cannot replay this body on
// another connection after a 421 before its commit point: that Send
// returns the temporary error, and the program may build the message
// again and call Send again.
func streamReceipt(h mail.Header, pdf io.Reader) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeReceipt(pw, h, pdf))
	}()
	return pr
}

// logoPNG is a 1×1 PNG.
var logoPNG = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" +
	"\x00\x00\x00\nIDATx\x9cc\x00\x01\x00\x00\x05\x00\x01\r\n-\xb4\x00\x00\x00\x00IEND\xaeB`\x82")

// writeReceipt writes the receipt's MIME tree to w. go-message writes
// CRLF line endings, quoted-printable text and base64 with short lines,
// so the body passes smtpkit's checks (no bare LF, lines of at most 998
// octets) as it is.
func writeReceipt(w io.Writer, h mail.Header, pdf io.Reader) error {
	h = h.Copy() // SetContentType must not change the caller's header
	h.SetContentType("multipart/mixed", nil)
	mixed, err := message.CreateWriter(w, h.Header)
	if err != nil {
		return err
	}

	var rh message.Header
	rh.SetContentType("multipart/related", map[string]string{"type": "multipart/alternative"})
	related, err := mixed.CreatePart(rh)
	if err != nil {
		return err
	}
	var ah message.Header
	ah.SetContentType("multipart/alternative", nil)
	alt, err := related.CreatePart(ah)
	if err != nil {
		return err
	}
	for _, p := range []struct{ ct, text string }{
		{"text/plain", "Thank you, Ann! Your receipt is attached.\r\n"},
		{"text/html", `<p>Thank you, Ann!</p><img src="cid:logo@example.com" alt="Shop">` + "\r\n"},
	} {
		var th mail.InlineHeader
		th.SetContentType(p.ct, map[string]string{"charset": "utf-8"})
		th.Set("Content-Disposition", "inline")
		th.Set("Content-Transfer-Encoding", "quoted-printable")
		pw, err := alt.CreatePart(th.Header)
		if err != nil {
			return err
		}
		if _, err := io.WriteString(pw, p.text); err != nil {
			return err
		}
		if err := pw.Close(); err != nil {
			return err
		}
	}
	if err := alt.Close(); err != nil {
		return err
	}

	var ih message.Header
	ih.SetContentType("image/png", nil)
	ih.SetContentDisposition("inline", nil)
	ih.Set("Content-ID", "<logo@example.com>")
	ih.Set("Content-Transfer-Encoding", "base64")
	img, err := related.CreatePart(ih)
	if err != nil {
		return err
	}
	if _, err := img.Write(logoPNG); err != nil {
		return err
	}
	if err := img.Close(); err != nil {
		return err
	}
	if err := related.Close(); err != nil {
		return err
	}

	var fh mail.AttachmentHeader
	fh.SetContentType("application/pdf", nil)
	fh.SetFilename("receipt.pdf")
	fh.Set("Content-Transfer-Encoding", "base64")
	att, err := mixed.CreatePart(fh.Header)
	if err != nil {
		return err
	}
	if _, err := io.Copy(att, pdf); err != nil {
		return err
	}
	if err := att.Close(); err != nil {
		return err
	}
	return mixed.Close()
}

// mailer is what the rate-limit recipe needs of a *sender.Sender.
type mailer interface {
	Send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error)
}

// rateLimited puts one limiter in front of a Sender's Send: every
// handler of the program shares it, so together they stay within the
// provider's rate. The library has no limiter of its own: a token bucket
// from golang.org/x/time/rate does it, and the program decides where it
// sits (per provider, per account, per tenant).
type rateLimited struct {
	lim *rate.Limiter
	snd mailer
}

// Send waits for its turn, within ctx, and sends.
func (r *rateLimited) Send(ctx context.Context, env smtp.Envelope, body io.Reader) (*smtp.Outcome, error) {
	if err := r.lim.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err() // ended while waiting: nothing was sent
		}
		// Wait returns at once when the turn would come after ctx's
		// deadline. Say so as the context would, so that the error
		// classifies as the caller's (smtp.ClassCanceled), not the
		// server's.
		return nil, fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
	}
	return r.snd.Send(ctx, env, body)
}

// Respect a provider's rate: Amazon SES, for one, starts a production
// account at 14 messages per second. A limiter of 14 per second with a
// burst of 14 lets a quiet program send a short burst at once and holds
// a busy one to the rate; MaxMessagesPerConn caps the messages on one
// connection, for providers that count those too.
func Example_rateLimit() {
	srv := exampleServer()
	defer srv.Close()
	snd, err := sender.New(sender.Config{
		Addr:    srv.Addr(),
		Options: smtp.Options{TLSConfig: srv.ClientTLSConfig()},
		Credentials: func(ctx context.Context) (sender.Credentials, error) {
			return sender.Credentials{Username: "demo", Secret: "secret"}, nil
		},
		MaxMessagesPerConn: 50, // a new connection after 50 messages
	})
	if err != nil {
		log.Fatal(err)
	}
	defer snd.Shutdown(context.Background())
	limited := &rateLimited{lim: rate.NewLimiter(14, 14), snd: snd} // share it: one per provider account

	var sent, refused, setup, later, unknown int
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		to := fmt.Sprintf("user%d@example.net", i)
		msg := "From: shop@example.com\r\nTo: " + to + "\r\nSubject: Your order\r\n\r\nShipped.\r\n"
		_, err := limited.Send(ctx, smtp.Envelope{From: "shop@example.com", To: []string{to}}, strings.NewReader(msg))
		cancel()
		switch {
		case err == nil:
			sent++
		case errors.Is(err, smtp.ErrOutcomeUnknown):
			unknown++ // record it; never resend automatically
		case smtp.IsPermanent(err):
			refused++
		case smtp.IsConfig(err):
			setup++ // pause and alert: nothing goes until the setup is fixed
		default: // smtp.IsTemporary, or the caller's own deadline
			later++
		}
	}
	fmt.Println("sent:", sent, "refused:", refused, "setup:", setup, "later:", later, "unknown:", unknown)
	// Output:
	// sent: 5 refused: 0 setup: 0 later: 0 unknown: 0
}

// countingMailer stands in for the Sender in the rate test: it accepts
// every message at once, so the time a Send takes is the limiter's.
type countingMailer struct{ n atomic.Int64 }

func (m *countingMailer) Send(context.Context, smtp.Envelope, io.Reader) (*smtp.Outcome, error) {
	m.n.Add(1)
	return &smtp.Outcome{}, nil
}

// TestRateLimit runs the recipe in a synctest bubble, whose clock is
// virtual: 1,000 Sends from 50 handlers at 100 per second (burst 10)
// take 10 s of virtual time, less one burst; a caller whose context ends
// while it waits for its turn returns then, with its context's error,
// and one whose deadline comes before its turn returns at once.
func TestRateLimit(t *testing.T) {
	const (
		n     = 1000
		per   = 100 // per second
		burst = 10
	)
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.net"}}
	synctest.Test(t, func(t *testing.T) {
		m := &countingMailer{}
		rl := &rateLimited{lim: rate.NewLimiter(per, burst), snd: m}
		start := time.Now()
		var wg sync.WaitGroup
		next := make(chan int)
		for range 50 {
			wg.Go(func() {
				for range next {
					if _, err := rl.Send(t.Context(), env, strings.NewReader("x")); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		took := time.Since(start)
		want := n * time.Second / per
		if oneBurst := burst * time.Second / per; took < want-oneBurst || took > want+oneBurst {
			t.Errorf("%d Sends at %d/s took %v, want %v ± %v", n, per, took, want, oneBurst)
		}
		if m.n.Load() != n {
			t.Errorf("sent %d, want %d", m.n.Load(), n)
		}

		// The bucket is empty: the next turn is 10 ms away, and the
		// one after, 20 ms. A caller canceled after 5 ms returns then.
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(5*time.Millisecond, cancel)
		t0 := time.Now()
		rl.lim.ReserveN(t0, 1) // someone else's turn first
		_, err := rl.Send(ctx, env, strings.NewReader("x"))
		if !errors.Is(err, context.Canceled) || smtp.Classify(err) != smtp.ClassCanceled {
			t.Errorf("canceled while waiting: got %v (%v)", err, smtp.Classify(err))
		}
		if d := time.Since(t0); d != 5*time.Millisecond {
			t.Errorf("canceled after 5ms: returned after %v", d)
		}

		// A deadline before the caller's turn: it returns at once,
		// before the deadline, with an error of the caller's.
		ctx, cancel = context.WithTimeout(t.Context(), 5*time.Millisecond)
		defer cancel()
		t0 = time.Now()
		_, err = rl.Send(ctx, env, strings.NewReader("x"))
		if !errors.Is(err, context.DeadlineExceeded) || smtp.Classify(err) != smtp.ClassCanceled {
			t.Errorf("deadline before the turn: got %v (%v)", err, smtp.Classify(err))
		}
		if d := time.Since(t0); d > 5*time.Millisecond {
			t.Errorf("deadline 5ms: returned after %v", d)
		}
		if m.n.Load() != n {
			t.Errorf("a caller that gave up sent anyway: %d", m.n.Load())
		}
	})
}

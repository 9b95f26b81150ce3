package smtp_test

import (
	"bytes"
	"context"
	"net"
	netsmtp "net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// benchMessage is a 1.1 KB message: a few headers and 15 lines of text.
var benchMessage = func() []byte {
	var b strings.Builder
	b.WriteString("From: Alice <a@example.com>\r\n")
	b.WriteString("To: Bob <b@example.com>\r\n")
	b.WriteString("Subject: benchmark message\r\n")
	b.WriteString("Message-ID: <bench.1@example.com>\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("\r\n")
	for b.Len() < 1100 {
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n")
	}
	return []byte(b.String())
}()

// BenchmarkClientSend measures messages per second on one plaintext
// connection to the in-process go-smtp server (which discards bodies):
// smtpkit's Send, smtpkit with 32 transactions written ahead, and the
// standard library's net/smtp client for comparison. Allocations count
// the whole process, server included, so only their difference between
// sub-benchmarks says something about the clients.
func BenchmarkClientSend(b *testing.B) {
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	connect := func(b *testing.B) *smtp.Client {
		srv := testpeers.GoSMTP(b, testpeers.GoSMTPOptions{DiscardBodies: true})
		ctx := context.Background()
		tr, err := transport.Dial(ctx, srv.Addr())
		if err != nil {
			b.Fatal(err)
		}
		c, err := smtp.Connect(ctx, tr, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Quit(context.Background()) })
		return c
	}
	perSecond := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	}

	b.Run("smtpkit/Send", func(b *testing.B) {
		c := connect(b)
		ctx := context.Background()
		body := bytes.NewReader(benchMessage)
		b.ReportAllocs()
		b.SetBytes(int64(len(benchMessage)))
		b.ResetTimer()
		for range b.N {
			body.Reset(benchMessage)
			if _, err := c.Send(ctx, env, body); err != nil {
				b.Fatal(err)
			}
		}
		perSecond(b)
	})

	b.Run("smtpkit/window32", func(b *testing.B) {
		const window = 32
		c := connect(b)
		ctx := context.Background()
		var bodies [window]bytes.Reader
		var txs [window]*smtp.Tx
		b.ReportAllocs()
		b.SetBytes(int64(len(benchMessage)))
		b.ResetTimer()
		for sent := 0; sent < b.N; {
			n := min(window, b.N-sent)
			for i := range n {
				bodies[i].Reset(benchMessage)
				tx, err := c.WriteTx(ctx, env, &bodies[i])
				if err != nil {
					b.Fatal(err)
				}
				txs[i] = tx
			}
			for i := range n {
				if _, err := c.ReadTx(ctx, txs[i]); err != nil {
					b.Fatal(err)
				}
				txs[i] = nil
			}
			sent += n
		}
		perSecond(b)
	})

	b.Run("net/smtp", func(b *testing.B) {
		srv := testpeers.GoSMTP(b, testpeers.GoSMTPOptions{DiscardBodies: true})
		conn, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			b.Fatal(err)
		}
		c, err := netsmtp.NewClient(conn, "localhost")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Quit() })
		if err := c.Hello("client.example"); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(benchMessage)))
		b.ResetTimer()
		for range b.N {
			if err := c.Mail("a@example.com"); err != nil {
				b.Fatal(err)
			}
			if err := c.Rcpt("b@example.com"); err != nil {
				b.Fatal(err)
			}
			w, err := c.Data()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(benchMessage); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
		perSecond(b)
	})
}

// BenchmarkSendAfterIdle measures one Send on a session left idle for
// 1.1 s, against the in-process go-smtp server: the client first checks
// that the server has not closed the session meanwhile (a non-blocking
// socket peek where the platform allows, a 2 ms read otherwise). Each
// iteration sleeps 1.1 s with the timer stopped, so run it with a fixed
// count:
//
//	go test -run='^$' -bench=SendAfterIdle -benchtime=6x ./smtp
func BenchmarkSendAfterIdle(b *testing.B) {
	srv := testpeers.GoSMTP(b, testpeers.GoSMTPOptions{DiscardBodies: true})
	ctx := context.Background()
	tr, err := transport.Dial(ctx, srv.Addr())
	if err != nil {
		b.Fatal(err)
	}
	c, err := smtp.Connect(ctx, tr, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Quit(context.Background()) })
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	body := bytes.NewReader(benchMessage)
	for range b.N {
		b.StopTimer()
		time.Sleep(1100 * time.Millisecond)
		body.Reset(benchMessage)
		b.StartTimer()
		if _, err := c.Send(ctx, env, body); err != nil {
			b.Fatal(err)
		}
	}
}

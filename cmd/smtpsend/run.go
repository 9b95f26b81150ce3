package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smtpkit/smtpkit/internal/demoserver"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// run is smtpsend: it parses args, sends, prints to stdout and stderr,
// and returns the exit status. It reads the environment only through env
// and standard input only through stdin, so tests run it in-process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env func(string) string) int {
	con := newConsole(stdout, stderr)
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return usageFailed(con, err)
	}
	if o.server == "" {
		return runDemo(ctx, o, stdin, con)
	}
	return runServer(ctx, o, stdin, con, env)
}

func usageFailed(con *console, err error) int {
	var ue *usageError
	if errors.As(err, &ue) && ue.msg == "" {
		return exitUsage // the flag package said it already
	}
	con.Errf("%v\n", err)
	con.Errf("nothing was sent; run smtpsend -h for help (exit %d)\n", exitUsage)
	return exitUsage
}

// maxInFlight is how many messages one connection may have written ahead
// of their replies (the sender's own default, named here because the
// number of sending goroutines follows from it).
const maxInFlight = 16

// baseConfig is the sender configuration both modes share.
func baseConfig(o *options) sender.Config {
	return sender.Config{
		MaxConns:    o.conns,
		MaxInFlight: maxInFlight,
		DialTimeout: o.timeout,
		Options: smtp.Options{
			LocalName: o.ehlo,
			// .eml files written on Unix end their lines with LF alone.
			// Converting every line ending to CRLF leaves no bare LF for
			// a smuggling attempt to hide in, and dot-stuffing then
			// applies to every line.
			NormalizeLineEndings: !o.strictCRLF,
		},
	}
}

// runServer sends to -server.
func runServer(ctx context.Context, o *options, stdin io.Reader, con *console, env func(string) string) int {
	names := o.files
	if len(names) == 0 {
		names = []string{"-"}
	}
	srcs, err := fileSources(names, stdin, con)
	if err != nil {
		return usageFailed(con, err)
	}
	tlsConf, err := o.tlsConfig()
	if err != nil {
		return usageFailed(con, err)
	}
	creds, err := o.credentials(env, con)
	if err != nil {
		return usageFailed(con, err)
	}
	if o.tlsMode == "plaintext" {
		con.Errf("warning: -tls plaintext: the message%s crosses the network unencrypted\n",
			map[bool]string{true: " and the password", false: ""}[creds != nil])
	}

	cfg := baseConfig(o)
	cfg.Addr = o.server
	cfg.Security = o.security()
	cfg.Options.TLSConfig = tlsConf
	cfg.Credentials = creds
	if o.verify {
		return runVerify(ctx, o, cfg, con)
	}

	connect := map[string]string{
		"implicit":  "TCP to " + o.server + ", TLS from the first byte",
		"starttls":  "TCP to " + o.server + ", plaintext until STARTTLS",
		"plaintext": "TCP to " + o.server + ", PLAINTEXT, never encrypted",
	}[o.tlsMode]
	j := &job{o: o, cfg: cfg, con: con, srcs: srcs, connect: connect}
	results := j.run(ctx)
	if len(results) == 1 {
		j.printOutcome(results[0])
	}
	return exitCode(results)
}

// runDemo starts the embedded server and sends to it: the sample
// message, or the files named on the command line.
func runDemo(ctx context.Context, o *options, stdin io.Reader, con *console) int {
	var srcs []source
	if len(o.files) > 0 {
		var err error
		if srcs, err = fileSources(o.files, stdin, con); err != nil {
			return usageFailed(con, err)
		}
	} else {
		msg := sampleMessage(o.from, o.to, time.Now())
		srcs = []source{{name: "sample message", open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(msg)), nil
		}}}
	}

	// A password made up for this run: the demo needs AUTH, and a fixed
	// one would teach the wrong habit.
	user, pass := "demo", rand.Text()
	con.Secret(pass)
	srv, err := demoserver.Start(demoserver.Options{Users: map[string]string{user: pass}})
	if err != nil {
		con.Errf("starting the demo server: %v\n", err)
		return exitTempFail
	}
	defer srv.Close()

	con.Outf("smtpsend demo: no -server given, so an SMTP server runs inside this process.\n")
	con.Outf("server:  %s, implicit TLS with a self-signed certificate made just now,\n", srv.Addr())
	con.Outf("         AUTH PLAIN as %q with a password made up for this run\n", user)
	con.Outf("client:  a sender.Sender trusting only that certificate\n\n")

	cfg := baseConfig(o)
	cfg.Addr = srv.Addr()
	cfg.Security = sender.ImplicitTLS
	cfg.Options.TLSConfig = srv.ClientTLSConfig()
	cfg.Credentials = func(context.Context) (sender.Credentials, error) {
		return sender.Credentials{Username: user, Secret: pass}, nil
	}
	j := &job{o: o, cfg: cfg, con: con, srcs: srcs, connect: "TCP to " + srv.Addr() + ", TLS from the first byte"}
	results := j.run(ctx)
	code := exitCode(results)
	if len(results) != 1 {
		return code
	}
	j.printOutcome(results[0])

	msgs := srv.Messages()
	if len(msgs) == 0 {
		con.Outf("\n--- the server kept no message ---\n")
		return code
	}
	m := msgs[len(msgs)-1]
	con.Outf("\n--- the message as the server received it (%d octets, queue id %s) ---\n", len(m.Data), m.QueueID)
	con.Outf("%s", strings.ReplaceAll(string(m.Data), "\r\n", "\n"))
	if m.Dropped {
		con.Outf("\n--- the server has it, but dropped the connection instead of saying so ---\n")
	}
	if code == exitOK && len(o.files) == 0 {
		con.Outf("\n--- try next ---\n")
		con.Outf("  go run ./cmd/smtpsend -to reject@example.net   refused permanently (exit 65)\n")
		con.Outf("  go run ./cmd/smtpsend -to defer@example.net    temporary failure (exit 75)\n")
		con.Outf("  go run ./cmd/smtpsend -to drop@example.net     outcome unknown (exit 76)\n")
		con.Outf("  SMTP_PASSWORD=... go run ./cmd/smtpsend -server smtp.example.com:465 \\\n")
		con.Outf("      -user me@example.com -from me@example.com -to you@example.net message.eml\n")
	}
	return code
}

// sampleMessage is the demo's message: plain text, RFC 5322.
func sampleMessage(from string, to []string, now time.Time) string {
	hdrFrom := from
	if hdrFrom == "" {
		hdrFrom = demoFrom
	}
	var b strings.Builder
	b.WriteString("From: smtpsend demo <" + hdrFrom + ">\r\n")
	b.WriteString("To: " + angleList(to) + "\r\n")
	b.WriteString("Subject: Hello from smtpkit\r\n")
	b.WriteString("Date: " + now.Format(time.RFC1123Z) + "\r\n")
	fmt.Fprintf(&b, "Message-ID: <%s@smtpsend.localhost>\r\n", strings.ToLower(rand.Text()[:16]))
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("\r\n")
	b.WriteString("This message went through a sender.Sender: one goroutine owns the\r\n")
	b.WriteString("connection, which it dialed with TLS, logged in on with AUTH PLAIN,\r\n")
	b.WriteString("and used for MAIL, RCPT and the message itself.\r\n")
	b.WriteString("\r\n")
	b.WriteString(".A line that starts with a dot arrives as written: with DATA the\r\n")
	b.WriteString("client doubles the dot and the server removes it; with BDAT the\r\n")
	b.WriteString("message is sent as it is.\r\n")
	return b.String()
}

func angleList(addrs []string) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = "<" + a + ">"
	}
	return strings.Join(parts, ", ")
}

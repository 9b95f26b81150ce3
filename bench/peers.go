package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	netsmtp "net/smtp"
	"os/exec"
	"strconv"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	mail "github.com/wneessen/go-mail"
)

// The peers: the SMTP clients in use today, as clients of the bench.

// dial connects to addr, over TLS when t says so; the connection's
// deadline is ctx's.
func dial(ctx context.Context, addr string) (net.Conn, error) {
	return dialTarget(ctx, target{addr: addr})
}

func dialTarget(ctx context.Context, t target) (net.Conn, error) {
	var c net.Conn
	var err error
	if t.tls != nil {
		d := tls.Dialer{Config: t.tls}
		c, err = d.DialContext(ctx, "tcp", t.addr)
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", t.addr)
	}
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, nil
}

// ---- net/smtp, one reused connection

type netSMTPClient struct {
	c    *netsmtp.Client
	conn net.Conn
	msg  []byte
}

func openNetSMTP(ctx context.Context, _ spec, t target) (client, error) {
	conn, err := dial(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(t.addr)
	c, err := netsmtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, err
	}
	msg, _ := t.payload()
	return &netSMTPClient{c: c, conn: conn, msg: msg}, nil
}

func (r *netSMTPClient) Send(context.Context) error {
	return netSMTPSend(r.c, func(w io.Writer) error { _, err := w.Write(r.msg); return err })
}

func (r *netSMTPClient) sendBody(_ context.Context, body io.Reader) error {
	return netSMTPSend(r.c, func(w io.Writer) error { _, err := io.Copy(w, body); return err })
}

// netSMTPSend sends one message on c, its body written by body.
func netSMTPSend(c *netsmtp.Client, body func(io.Writer) error) error {
	if err := c.Mail(mailFrom); err != nil {
		return err
	}
	if err := c.Rcpt(rcptTo); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if err := body(w); err != nil {
		return err
	}
	return w.Close()
}

// writeMessage writes the benchmark's message.
func writeMessage(w io.Writer) error {
	_, err := w.Write(message)
	return err
}

func (r *netSMTPClient) Close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if r.c.Quit() != nil {
		r.c.Close()
	}
}

// ---- net/smtp, a new connection per message, as net/smtp.SendMail does

type netSMTPPerMsg struct{ t target }

func openNetSMTPPerMsg(_ context.Context, _ spec, t target) (client, error) {
	return &netSMTPPerMsg{t: t}, nil
}

func (c *netSMTPPerMsg) Send(ctx context.Context) error {
	conn, err := dialTarget(ctx, c.t)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cl, err := netsmtp.NewClient(conn, "localhost")
	if err != nil {
		return err
	}
	if err := cl.Hello("localhost"); err != nil {
		return err
	}
	if c.t.tls != nil {
		if err := cl.Auth(netsmtp.PlainAuth("", benchUser, benchPass, "localhost")); err != nil {
			return err
		}
	}
	if err := netSMTPSend(cl, writeMessage); err != nil {
		return err
	}
	return cl.Quit()
}

func (c *netSMTPPerMsg) Close() {}

// ---- emersion/go-smtp client, one reused connection

type goSMTPClient struct {
	c    *gosmtp.Client
	conn net.Conn
}

func openGoSMTP(ctx context.Context, _ spec, t target) (client, error) {
	conn, err := dial(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	c := gosmtp.NewClient(conn)
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, err
	}
	return &goSMTPClient{c: c, conn: conn}, nil
}

func (r *goSMTPClient) Send(context.Context) error {
	if err := r.c.Mail(mailFrom, nil); err != nil {
		return err
	}
	if err := r.c.Rcpt(rcptTo, nil); err != nil {
		return err
	}
	w, err := r.c.Data()
	if err != nil {
		return err
	}
	if err := writeMessage(w); err != nil {
		return err
	}
	return w.Close()
}

func (r *goSMTPClient) Close() {
	r.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if r.c.Quit() != nil {
		r.c.Close()
	}
}

// ---- github.com/wneessen/go-mail: DialAndSend per message, or one
// client reused (its Send serialises callers on a mutex; a semaphore
// in front lets a waiting caller give up when its ctx ends)

type goMailClient struct {
	c     *mail.Client
	reuse bool
	sem   chan struct{} // holds the reused client; owns dialed
	// dialed says whether the reused client is connected; guarded by
	// sem.
	dialed bool
}

// goMailText is the benchmark message's body, without its header
// (go-mail writes its own).
var goMailText = func() string {
	_, body, _ := strings.Cut(string(message), "\r\n\r\n")
	return body
}()

func newGoMailClient(reuse bool, t target) (*goMailClient, error) {
	host, port, err := net.SplitHostPort(t.addr)
	if err != nil {
		return nil, err
	}
	var p int
	fmt.Sscan(port, &p)
	opts := []mail.Option{mail.WithPort(p), mail.WithHELO("localhost"), mail.WithTimeout(30 * time.Second)}
	if t.tls != nil {
		opts = append(opts, mail.WithSSL(), mail.WithTLSConfig(t.tls), mail.WithSMTPAuth(mail.SMTPAuthPlain),
			mail.WithUsername(benchUser), mail.WithPassword(benchPass))
	} else {
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	}
	c, err := mail.NewClient(host, opts...)
	if err != nil {
		return nil, err
	}
	g := &goMailClient{c: c, reuse: reuse, sem: make(chan struct{}, 1)}
	return g, nil
}

func goMailMsg() (*mail.Msg, error) {
	m := mail.NewMsg()
	if err := m.From(mailFrom); err != nil {
		return nil, err
	}
	if err := m.To(rcptTo); err != nil {
		return nil, err
	}
	m.Subject("smtpkit benchmark message")
	m.SetBodyString(mail.TypeTextPlain, goMailText)
	return m, nil
}

func (g *goMailClient) Send(ctx context.Context) error {
	m, err := goMailMsg()
	if err != nil {
		return err
	}
	if !g.reuse {
		return g.c.DialAndSendWithContext(ctx, m)
	}
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.sem }()
	if !g.dialed {
		if err := g.c.DialWithContext(ctx); err != nil {
			return err
		}
		g.dialed = true
	}
	if err := g.c.Send(m); err != nil {
		g.c.Close()
		g.dialed = false
		return err
	}
	return nil
}

func (g *goMailClient) Close() {
	if g.reuse {
		g.sem <- struct{}{}
		if g.dialed {
			g.c.Close()
		}
		<-g.sem
	}
}

func openGoMail(_ context.Context, s spec, t target) (client, error) {
	return newGoMailClient(s.Client == clientGoMailReuse, t)
}

// ---- Postfix smtp-source, exec'd

// sourceClient runs smtp-source with its sessions; a Send is a run of
// one message.
type sourceClient struct {
	path, addr string
	sessions   int
}

func openSource(_ context.Context, s spec, t target) (client, error) {
	if t.lab == nil {
		return nil, fmt.Errorf("smtp-source: no lab to find it")
	}
	path, err := t.lab.sourcePath()
	if err != nil {
		return nil, err
	}
	return &sourceClient{path: path, addr: t.addr, sessions: max(s.Conns, 1)}, nil
}

func (c *sourceClient) Send(ctx context.Context) error {
	_, err := sourceRun(ctx, c.path, c.addr, 1, 1)
	return err
}

func (c *sourceClient) batch(ctx context.Context, n int64) (time.Duration, error) {
	return sourceRun(ctx, c.path, c.addr, c.sessions, n)
}

func (c *sourceClient) Close() {}

// sourceRun runs smtp-source for n messages over sessions connections
// (each reusing its connection) and returns how long it took.
func sourceRun(ctx context.Context, path, addr string, sessions int, n int64) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, path, "-s", strconv.Itoa(sessions), "-m", strconv.FormatInt(n, 10),
		"-l", "980", "-d", "-f", mailFrom, "-t", rcptTo, "-M", "localhost", addr)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	el := time.Since(start)
	if err != nil {
		return el, fmt.Errorf("smtp-source: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return el, nil
}

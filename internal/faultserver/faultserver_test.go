package faultserver_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bound is the deadline set on test connections; it only keeps a broken
// test from hanging.
const bound = 30 * time.Second

// client is a raw test client.
type client struct {
	t *testing.T
	net.Conn
}

func dial(t *testing.T, srv *fs.Server) *client {
	t.Helper()
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.SetDeadline(time.Now().Add(bound)); err != nil {
		t.Fatal(err)
	}
	return &client{t: t, Conn: c}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

func (c *client) expect(want string) {
	c.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.Conn, got); err != nil {
		c.t.Fatalf("read %q: got %q, %v", want, got, err)
	}
	if string(got) != want {
		c.t.Fatalf("read %q, want %q", got, want)
	}
}

// expectEOF reads until the server closes the connection and returns the
// error, io.EOF for an orderly close.
func (c *client) expectEOF() error {
	c.t.Helper()
	rest, err := io.ReadAll(c.Conn)
	if len(rest) > 0 {
		c.t.Errorf("unexpected bytes before close: %q", rest)
	}
	if err == nil {
		return io.EOF
	}
	return err
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(bound):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func noErr(t *testing.T, srv *fs.Server) {
	t.Helper()
	if err := srv.Err(); err != nil {
		t.Fatalf("server: %v", err)
	}
}

func wantReceived(t *testing.T, srv *fs.Server, want string) {
	t.Helper()
	if got := string(srv.Received()); got != want {
		t.Errorf("Received() = %q, want %q", got, want)
	}
}

func TestTranscript(t *testing.T) {
	srv := fs.Start(t,
		fs.Reply("220 mx.example ESMTP\r\n"),
		fs.ExpectLine("EHLO client.example"),
		fs.Reply(fs.Lines("250-mx.example", "250 PIPELINING")),
		fs.ExpectLine("QUIT"),
		fs.Reply("221 bye\r\n"),
	)
	c := dial(t, srv)
	c.expect("220 mx.example ESMTP\r\n")
	c.send("EHLO client.example\r\n")
	c.expect("250-mx.example\r\n250 PIPELINING\r\n")
	c.send("QUIT\r\n")
	c.expect("221 bye\r\n")
	wait(t, srv.Done(), "Done")
	noErr(t, srv)
	wantReceived(t, srv, "EHLO client.example\r\nQUIT\r\n")
	if n := srv.Conns(); n != 1 {
		t.Errorf("Conns() = %d, want 1", n)
	}
	// The script ran out without a Close step: the server keeps the
	// connection until the client closes it.
	select {
	case <-srv.HungUp():
		t.Fatal("server hung up before the client closed")
	default:
	}
	_ = c.Close()
	wait(t, srv.HungUp(), "HungUp")
}

func TestPipelinedWriteMatchedBySeveralSteps(t *testing.T) {
	const cmds = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
	tests := []struct {
		name  string
		write func(c *client)
	}{
		{"one write", func(c *client) { c.send(cmds) }},
		{"byte by byte", func(c *client) {
			for i := range len(cmds) {
				c.send(cmds[i : i+1])
			}
		}},
		{"split across commands", func(c *client) {
			c.send(cmds[:5])
			c.send(cmds[5:40])
			c.send(cmds[40:])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fs.Start(t,
				fs.Expect("MAIL FROM:<a@example.org>\r\n"),
				fs.ExpectLine("RCPT TO:<b@example.org>"),
				fs.Expect("DATA\r\n"),
				fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"),
				fs.ReadUntil("\r\n.\r\n"),
				fs.Reply("250 queued\r\n"),
				fs.Close(),
			)
			c := dial(t, srv)
			tt.write(c)
			c.expect("250 ok\r\n250 ok\r\n354 go\r\n")
			c.send("Subject: x\r\n\r\nbody\r\n.\r\n")
			c.expect("250 queued\r\n")
			if err := c.expectEOF(); err != io.EOF {
				t.Errorf("after Close step: %v, want EOF", err)
			}
			wait(t, srv.HungUp(), "HungUp")
			noErr(t, srv)
			wantReceived(t, srv, cmds+"Subject: x\r\n\r\nbody\r\n.\r\n")
		})
	}
}

func TestReadSteps(t *testing.T) {
	srv := fs.Start(t,
		fs.ExpectLine("DATA"),
		// An empty body: the CRLF ending the DATA line counts.
		fs.ReadUntil("\r\n.\r\n"),
		fs.Reply("250 empty\r\n"),
		fs.ReadLine(),
		fs.ReadLine(),
		fs.ReadN(5),
		fs.ReadUntil("\r\n.\r\n"),
		fs.Reply("250 done\r\n"),
		fs.ReadN(0),
		fs.Close(),
	)
	c := dial(t, srv)
	c.send("DATA\r\n.\r\n")
	c.expect("250 empty\r\n")
	c.send("NOOP\r\nbare\nLF\r\n12345a\r\n..b\r\n.\r\n")
	c.expect("250 done\r\n")
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	got := srv.LinesRead()
	want := []string{"NOOP\r\n", "bare\nLF\r\n"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("LinesRead() = %q, want %q", got, want)
	}
}

func TestReadUntilNeedsNewBytes(t *testing.T) {
	// After a line, ReadUntil("\r\n") must read the next line, not match the
	// CRLF already consumed.
	srv := fs.Start(t,
		fs.ExpectLine("A"),
		fs.ReadUntil("\r\n"),
		fs.ExpectLine("C"),
		fs.Reply("ok\r\n"),
	)
	c := dial(t, srv)
	c.send("A\r\nB\r\nC\r\n")
	c.expect("ok\r\n")
	wait(t, srv.Done(), "Done")
	noErr(t, srv)
}

func TestStartTLS(t *testing.T) {
	serverCfg, roots := fs.SelfSignedTLS(t)
	srv := fs.Start(t,
		fs.Reply("220 ready\r\n"),
		fs.ExpectLine("STARTTLS"),
		fs.Reply("220 go ahead\r\n"),
		fs.StartTLS(serverCfg),
		fs.ExpectLine("EHLO again"),
		fs.Reply("250 secure\r\n"),
		fs.ReadLine(),
		fs.Reply("221 bye\r\n"),
		fs.Close(),
	)
	c := dial(t, srv)
	c.expect("220 ready\r\n")
	c.send("STARTTLS\r\n")
	c.expect("220 go ahead\r\n")
	tc := tls.Client(c.Conn, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	sc := &client{t: t, Conn: tc}
	sc.send("EHLO again\r\n")
	sc.expect("250 secure\r\n")
	sc.send("QUIT\r\n")
	sc.expect("221 bye\r\n")
	if err := sc.expectEOF(); err != io.EOF {
		t.Errorf("after Close step: %v, want EOF", err)
	}
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	// Plaintext before the handshake, decrypted bytes after, no records.
	wantReceived(t, srv, "STARTTLS\r\nEHLO again\r\nQUIT\r\n")
}

func TestImplicitTLS(t *testing.T) {
	serverCfg, roots := fs.SelfSignedTLS(t)
	srv := fs.Start(t,
		fs.StartTLS(serverCfg),
		fs.Reply("220 tls\r\n"),
		fs.ExpectLine("QUIT"),
	)
	conn, err := tls.Dial("tcp", srv.Addr(), &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	defer conn.Close()
	c := &client{t: t, Conn: conn}
	c.expect("220 tls\r\n")
	c.send("QUIT\r\n")
	wait(t, srv.Done(), "Done")
	noErr(t, srv)
	wantReceived(t, srv, "QUIT\r\n")
}

func TestStallUntilClientCloses(t *testing.T) {
	srv := fs.Start(t,
		fs.Reply("220 ready\r\n"),
		fs.Stall(),
	)
	c := dial(t, srv)
	c.expect("220 ready\r\n")
	c.send("EHLO client.example\r\n")
	// Nothing comes back; the client gives up and closes.
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if _, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read during stall: %v, want a timeout", err)
	}
	select {
	case <-srv.Done():
		t.Fatal("Stall ended before the client closed")
	default:
	}
	_ = c.Close()
	wait(t, srv.Done(), "Done")
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	wantReceived(t, srv, "EHLO client.example\r\n")
}

func TestBlockUntilServerClosed(t *testing.T) {
	srv := fs.Start(t, fs.Block())
	c := dial(t, srv)
	c.send("EHLO\r\n")
	// The server is blocked and reads nothing; only Close ends it.
	srv.Close()
	wait(t, srv.Done(), "Done")
	noErr(t, srv)
	if got := srv.Received(); len(got) != 0 {
		t.Errorf("Block read %q", got)
	}
}

func TestMismatch(t *testing.T) {
	tests := []struct {
		name      string
		step      fs.Step
		send      string
		closeSend bool // close the client's write side after send
		want, got string
		cause     error
	}{
		{name: "ExpectLine", step: fs.ExpectLine("QUIT"), send: "RSET\r\n", want: "QUIT\r\n", got: "RSET\r\n"},
		{name: "ExpectLine bare LF", step: fs.ExpectLine("QUIT"), send: "QUIT\nX\r\n", want: "QUIT\r\n", got: "QUIT\nX\r\n"},
		{name: "Expect", step: fs.Expect("MAIL FROM:<a>\r\n"), send: "MAIL FROM:<b>\r\nXYZ", want: "MAIL FROM:<a>\r\n", got: "MAIL FROM:<b>\r\n"},
		{name: "Expect short then EOF", step: fs.Expect("QUIT\r\n"), send: "QU", closeSend: true, want: "QUIT\r\n", got: "QU", cause: io.EOF},
		{name: "ExpectLine EOF", step: fs.ExpectLine("QUIT"), send: "QUIT", closeSend: true, want: "QUIT\r\n", got: "QUIT", cause: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fs.Start(t, fs.Reply("220 hi\r\n"), tt.step, fs.Reply("never sent\r\n"))
			c := dial(t, srv)
			c.expect("220 hi\r\n")
			c.send(tt.send)
			if tt.closeSend {
				if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			wait(t, srv.Done(), "Done")
			// The failed step closed the connection.
			if err := c.expectEOF(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("after mismatch: %v, want the connection closed", err)
			}
			wait(t, srv.HungUp(), "HungUp")

			err := srv.Err()
			var se *fs.StepError
			if !errors.As(err, &se) {
				t.Fatalf("Err() = %v, want a *StepError", err)
			}
			if se.Conn != 0 || se.Index != 1 || se.Step != tt.step.String() {
				t.Errorf("StepError = %+v, want conn 0 step 1 %s", se, tt.step)
			}
			var me *fs.MismatchError
			if !errors.As(err, &me) {
				t.Fatalf("Err() = %v, want a *MismatchError", err)
			}
			if me.Want != tt.want || me.Got != tt.got || !errors.Is(me.Cause, tt.cause) && me.Cause != tt.cause {
				t.Errorf("mismatch = %#v, want Want %q Got %q Cause %v", me, tt.want, tt.got, tt.cause)
			}
			msg := err.Error()
			for _, part := range []string{"faultserver: conn 0 step 1 ", `expected "` + strings.ReplaceAll(tt.want, "\r\n", `\r\n`) + `"`} {
				if !strings.Contains(msg, part) {
					t.Errorf("error %q does not contain %q", msg, part)
				}
			}
		})
	}
}

func TestLineTooLong(t *testing.T) {
	srv := fs.Start(t, fs.ReadLine())
	c := dial(t, srv)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(bytes.Repeat([]byte("x"), fs.MaxLine+1))
		writeErr <- err
	}()
	wait(t, srv.Done(), "Done")
	_ = c.Close()
	<-writeErr // the server may close before reading everything
	err := srv.Err()
	if err == nil || !strings.Contains(err.Error(), "line longer than") {
		t.Fatalf("Err() = %v, want a line length error", err)
	}
	if n := len(srv.Received()); n > fs.MaxLine+1 || n < fs.MaxLine {
		t.Errorf("received %d bytes, want about %d", n, fs.MaxLine)
	}
}

func TestDrainAfterScript(t *testing.T) {
	srv := fs.Start(t, fs.Reply("220 hi\r\n"))
	c := dial(t, srv)
	c.expect("220 hi\r\n")
	wait(t, srv.Done(), "Done")
	c.send("QUIT\r\n")
	_ = c.Close()
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	wantReceived(t, srv, "QUIT\r\n")
}

func TestAbort(t *testing.T) {
	srv := fs.Start(t, fs.ExpectLine("EHLO"), fs.Abort())
	c := dial(t, srv)
	c.send("EHLO\r\n")
	wait(t, srv.HungUp(), "HungUp")
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after Abort: %v, want ECONNRESET", err)
	}
	noErr(t, srv)
}

func TestStartMulti(t *testing.T) {
	srv := fs.StartMulti(t,
		[]fs.Step{fs.Reply("421 go away\r\n"), fs.Close()},
		[]fs.Step{fs.Reply("220 welcome back\r\n"), fs.ExpectLine("QUIT"), fs.Close()},
	)
	c1 := dial(t, srv)
	c1.expect("421 go away\r\n")
	if err := c1.expectEOF(); err != io.EOF {
		t.Errorf("first connection: %v, want EOF", err)
	}
	c2 := dial(t, srv)
	c2.expect("220 welcome back\r\n")
	c2.send("QUIT\r\n")
	wait(t, srv.Done(), "Done")
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	if got := string(srv.ReceivedOn(1)); got != "QUIT\r\n" {
		t.Errorf("ReceivedOn(1) = %q", got)
	}
	if got := srv.ReceivedOn(0); len(got) != 0 {
		t.Errorf("ReceivedOn(0) = %q", got)
	}
	if got := srv.ReceivedOn(7); got != nil {
		t.Errorf("ReceivedOn(7) = %q, want nil", got)
	}

	// A connection beyond the scripts is closed and reported.
	c3 := dial(t, srv)
	if err := c3.expectEOF(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("extra connection: %v, want it closed", err)
	}
	if err := srv.Err(); !strings.Contains(err.Error(), "unexpected connection 2") {
		t.Errorf("Err() = %v, want an unexpected connection error", err)
	}
	if n := srv.Conns(); n != 3 {
		t.Errorf("Conns() = %d, want 3", n)
	}
}

func TestCloseInterruptsSteps(t *testing.T) {
	tests := []struct {
		name string
		step fs.Step
	}{
		{"ExpectLine", fs.ExpectLine("QUIT")},
		{"Sleep", fs.Sleep(time.Hour)},
		{"ReadUntil", fs.ReadUntil("\r\n.\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fs.Start(t, fs.Reply("220 hi\r\n"), tt.step)
			c := dial(t, srv)
			c.expect("220 hi\r\n")
			srv.Close()
			srv.Close() // idempotent
			wait(t, srv.Done(), "Done")
			wait(t, srv.HungUp(), "HungUp")
			if err := srv.Err(); !errors.Is(err, fs.ErrClosed) {
				t.Errorf("Err() = %v, want ErrClosed", err)
			}
		})
	}
}

func TestCloseBeforeConnection(t *testing.T) {
	srv := fs.Start(t, fs.Reply("220 hi\r\n"))
	srv.Close()
	wait(t, srv.Done(), "Done")
	wait(t, srv.HungUp(), "HungUp")
	noErr(t, srv)
	if _, err := net.Dial("tcp", srv.Addr()); err == nil {
		t.Error("dial after Close succeeded")
	}
}

func TestFunc(t *testing.T) {
	srv := fs.Start(t,
		fs.Expect("BDAT 5 LAST\r\n"),
		fs.Func(func(c net.Conn) error {
			// The chunk arrived with the command and is already buffered.
			chunk := make([]byte, 5)
			if _, err := io.ReadFull(c, chunk); err != nil {
				return err
			}
			_, err := io.WriteString(c, "250 got "+string(chunk)+"\r\n")
			return err
		}),
		fs.ExpectLine("QUIT"),
		fs.Func(func(net.Conn) error { return errors.New("boom") }),
	)
	c := dial(t, srv)
	c.send("BDAT 5 LAST\r\nhelloQUIT\r\n")
	c.expect("250 got hello\r\n")
	wait(t, srv.Done(), "Done")
	wantReceived(t, srv, "BDAT 5 LAST\r\nhelloQUIT\r\n")
	var se *fs.StepError
	if err := srv.Err(); !errors.As(err, &se) || se.Index != 3 || se.Err.Error() != "boom" {
		t.Errorf("Err() = %v, want step 3 boom", err)
	}
}

func TestLines(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"220 hi"}, "220 hi\r\n"},
		{[]string{"250-a", "250 b"}, "250-a\r\n250 b\r\n"},
		{[]string{""}, "\r\n"},
	}
	for _, tt := range tests {
		if got := fs.Lines(tt.in...); got != tt.want {
			t.Errorf("Lines(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEcho(t *testing.T) {
	srv := fs.Start(t,
		fs.Echo("535 failed: {line} [{decoded}]\r\n"),
		fs.Echo("550 {decoded}\r\n"),
	)
	c := dial(t, srv)
	c.send("AUTH PLAIN AHUAcA==\r\n")
	c.expect("535 failed: AUTH PLAIN AHUAcA== [\x00u\x00p]\r\n")
	c.send("MAIL FROM:<a>\r\n")
	c.expect("550 FROM:<a>\r\n")
	wait(t, srv.Done(), "Done")
	noErr(t, srv)
	if got := srv.LinesRead(); len(got) != 2 || got[0] != "AUTH PLAIN AHUAcA==\r\n" {
		t.Errorf("LinesRead() = %q", got)
	}
}

package faultserver

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Limits on what a single step reads.
const (
	// MaxLine is the longest line, CRLF included, that [ExpectLine] and
	// [ReadLine] accept; a longer line fails the step.
	MaxLine = 1 << 20
	// MaxUntil is the most bytes a [ReadUntil] step reads before it fails.
	MaxUntil = 64 << 20
)

// historyLen is how many consumed bytes a session remembers for ReadUntil.
const historyLen = 4096

// errHungUp is returned by the steps that close the connection, to end the
// script without draining.
var errHungUp = errors.New("faultserver: hung up")

// Step is one scripted action of a [Server]. Steps are made by the functions
// of this package ([Expect], [Reply], [StartTLS], ...); the zero Step is not
// valid. A Step holds no state of its own, so one can be reused in several
// scripts.
type Step struct {
	desc string
	run  func(c *session) error
}

// String returns a description of the step, such as `ExpectLine("QUIT")`,
// as used in a [StepError].
func (s Step) String() string { return s.desc }

// Expect reads exactly len(s) bytes from the client and requires them to
// equal s. The bytes may arrive in one write or many, and may be the first
// part of a longer write (pipelined commands), whose rest is left for the
// next steps. On a mismatch the step fails with a [*MismatchError] holding
// both strings, and the connection is closed.
func Expect(s string) Step {
	return Step{
		desc: "Expect(" + strconv.Quote(s) + ")",
		run: func(c *session) error {
			got, err := c.readFull(len(s))
			if err != nil {
				return &MismatchError{Want: s, Got: string(got), Cause: err}
			}
			if string(got) != s {
				return &MismatchError{Want: s, Got: string(got)}
			}
			return nil
		},
	}
}

// ExpectLine reads one line, up to and including CRLF, and requires it to
// equal s+"\r\n". A bare LF does not end a line, so "QUIT\n" followed by
// more input is a mismatch. On a mismatch the step fails with a
// [*MismatchError] and the connection is closed. Lines are limited to
// [MaxLine] bytes.
func ExpectLine(s string) Step {
	want := s + "\r\n"
	return Step{
		desc: "ExpectLine(" + strconv.Quote(s) + ")",
		run: func(c *session) error {
			got, err := c.readLine()
			if err != nil {
				return &MismatchError{Want: want, Got: string(got), Cause: err}
			}
			if string(got) != want {
				return &MismatchError{Want: want, Got: string(got)}
			}
			return nil
		},
	}
}

// Reply writes s to the client verbatim, in one write. The caller includes
// the CRLFs, so s may be a multi-line reply ("250-a\r\n250 b\r\n"), a partial
// line, or a reply followed by injected bytes.
func Reply(s string) Step {
	return Step{
		desc: "Reply(" + strconv.Quote(s) + ")",
		run: func(c *session) error {
			_, err := io.WriteString(c.conn, s)
			return err
		},
	}
}

// ReadLine reads one line, whatever it is, up to and including CRLF, and
// records it for [Server.LinesRead]. Lines are limited to [MaxLine] bytes.
func ReadLine() Step {
	return Step{
		desc: "ReadLine()",
		run: func(c *session) error {
			line, err := c.readLine()
			if err != nil {
				return fmt.Errorf("after %q: %w", line, err)
			}
			c.srv.recordLine(c.idx, string(line))
			return nil
		},
	}
}

// Echo reads one line, as [ReadLine] does, and answers with reply in
// which "{line}" stands for the line read (without its CRLF) and
// "{decoded}" for its last space-separated word decoded from base64 (the
// word itself when it is not base64). It plays a server that quotes what
// the client sent, as broken and hostile servers do with an AUTH line:
// Echo("535 5.7.8 Authentication failed: {line} {decoded}\r\n"). The
// caller includes the CRLFs; the decoded text is written as it is, NUL and
// control characters included.
func Echo(reply string) Step {
	s := EchoFunc(func(line string) string {
		word := line[strings.LastIndexByte(line, ' ')+1:]
		decoded := word
		if b, err := base64.StdEncoding.DecodeString(word); err == nil {
			decoded = string(b)
		}
		return strings.NewReplacer("{line}", line, "{decoded}", decoded).Replace(reply)
	})
	s.desc = "Echo(" + strconv.Quote(reply) + ")"
	return s
}

// EchoFunc reads one line, as [ReadLine] does, and answers with what f
// returns for it (given without its CRLF), for answers that depend on
// what the client sent, such as a SASL challenge built on the client's
// nonce.
func EchoFunc(f func(line string) string) Step {
	return Step{
		desc: "EchoFunc()",
		run: func(c *session) error {
			raw, err := c.readLine()
			if err != nil {
				return fmt.Errorf("after %q: %w", raw, err)
			}
			c.srv.recordLine(c.idx, string(raw))
			_, err = io.WriteString(c.conn, f(strings.TrimSuffix(string(raw), "\r\n")))
			return err
		},
	}
}

// ReadN reads n bytes and discards them (they are still recorded in
// [Server.Received]) without holding them in memory. A zero or negative n
// reads nothing.
func ReadN(n int) Step {
	return Step{
		desc: "ReadN(" + strconv.Itoa(n) + ")",
		run: func(c *session) error {
			if n <= 0 {
				return nil
			}
			for left := n; ; {
				k := min(left, len(c.pending))
				c.consume(k)
				if left -= k; left == 0 {
					return nil
				}
				if err := c.fill(); err != nil {
					return fmt.Errorf("after %d of %d bytes: %w", n-left, n, err)
				}
			}
		},
	}
}

// ReadUntil reads until the received stream ends with s, for example
// "\r\n.\r\n" at the end of a DATA body. The bytes consumed by the previous
// steps of the connection count, so that ".\r\n" right after the DATA
// command line ends an empty body; the step still consumes at least one
// byte. At most [MaxUntil] bytes are read, and an empty s reads nothing.
func ReadUntil(s string) Step {
	return Step{
		desc: "ReadUntil(" + strconv.Quote(s) + ")",
		run:  func(c *session) error { return c.readUntil([]byte(s)) },
	}
}

// StartTLS runs a TLS server handshake with cfg on the connection; the
// steps after it read and write through TLS, and [Server.Received] records
// the decrypted bytes. Bytes the client sent before the handshake that no
// step consumed are handed to the handshake. As the first step of a script,
// StartTLS makes an implicit-TLS server.
func StartTLS(cfg *tls.Config) Step {
	return Step{
		desc: "StartTLS()",
		run: func(c *session) error {
			pc := &prefixConn{Conn: c.conn, prefix: c.pending}
			c.pending, c.history = nil, nil
			tc := tls.Server(pc, cfg)
			if err := tc.HandshakeContext(c.srv.ctx); err != nil {
				return err
			}
			c.conn = tc
			return nil
		},
	}
}

// Close closes the connection and ends the script; unlike a script that runs
// out of steps, the server reads nothing more. After a StartTLS step the
// TLS close_notify alert is sent first.
func Close() Step {
	return Step{
		desc: "Close()",
		run: func(c *session) error {
			_ = c.conn.Close()
			return errHungUp
		},
	}
}

// Abort closes the connection abruptly, with a TCP reset rather than an
// orderly shutdown (and without a TLS close_notify), and ends the script.
func Abort() Step {
	return Step{
		desc: "Abort()",
		run: func(c *session) error {
			if tc, ok := c.raw.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.raw.Close()
			return errHungUp
		},
	}
}

// Stall stops answering: it writes nothing and waits until the client closes
// the connection or the server is closed. To notice the client's close it
// keeps reading, so what the client sends meanwhile is recorded (and never
// answered); use [Block] for a server that does not read either.
func Stall() Step {
	return Step{
		desc: "Stall()",
		run: func(c *session) error {
			c.drain()
			return nil
		},
	}
}

// Block stops reading and writing altogether until the server is closed, so
// a client that keeps writing eventually fills the socket buffers and
// blocks. Block does not notice the client closing the connection. Since it
// ends only with the server, it ends the script: later steps never run.
func Block() Step {
	return Step{
		desc: "Block()",
		run: func(c *session) error {
			<-c.srv.ctx.Done()
			return errHungUp
		},
	}
}

// Sleep waits for d before the next step. Closing the server interrupts it.
func Sleep(d time.Duration) Step {
	return Step{
		desc: "Sleep(" + d.String() + ")",
		run: func(c *session) error {
			timer := time.NewTimer(d)
			defer timer.Stop()
			select {
			case <-timer.C:
				return nil
			case <-c.srv.ctx.Done():
				return ErrClosed
			}
		},
	}
}

// Func runs f with the connection, as an escape hatch for what the other
// steps cannot do. Reads from the conn given to f return first the bytes
// already received but not consumed by earlier steps, and are recorded like
// every other read; after a StartTLS step the conn is the TLS one. The conn
// has a NetConn method that returns the accepted TCP connection, for socket
// options such as buffer sizes. An error
// from f fails the step. Closing the server closes the conn, which
// interrupts f's reads and writes; f must not call [Server.Close].
func Func(f func(c net.Conn) error) Step {
	return Step{
		desc: "Func()",
		run: func(c *session) error {
			return f(&scriptConn{Conn: c.conn, s: c})
		},
	}
}

// session is the state of one scripted connection. It is owned by the
// connection's goroutine.
type session struct {
	srv *Server
	idx int
	// raw is the accepted TCP connection; conn is raw, or the TLS
	// connection over it after a StartTLS step.
	raw, conn net.Conn
	// pending holds bytes read and recorded but not consumed by a step.
	pending []byte
	// history holds the last consumed bytes, at most historyLen.
	history []byte
	buf     []byte
}

func newSession(srv *Server, idx int, conn net.Conn) *session {
	return &session{srv: srv, idx: idx, raw: conn, conn: conn, buf: make([]byte, 32<<10)}
}

// fill reads once from the connection, records what it got and appends it
// to pending.
func (c *session) fill() error {
	n, err := c.conn.Read(c.buf)
	if n > 0 {
		c.srv.record(c.idx, c.buf[:n])
		c.pending = append(c.pending, c.buf[:n]...)
		return nil
	}
	return err
}

// consume removes and returns the first n pending bytes.
func (c *session) consume(n int) []byte {
	out := c.pending[:n:n]
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	if len(out) >= historyLen {
		c.history = append(c.history[:0], out[len(out)-historyLen:]...)
	} else {
		c.history = append(c.history, out...)
		if extra := len(c.history) - historyLen; extra > 0 {
			c.history = append(c.history[:0], c.history[extra:]...)
		}
	}
	return out
}

// readFull consumes exactly n bytes. On error it returns the pending bytes
// without consuming them.
func (c *session) readFull(n int) ([]byte, error) {
	for len(c.pending) < n {
		if err := c.fill(); err != nil {
			return c.pending, err
		}
	}
	return c.consume(n), nil
}

// readLine consumes one CRLF-terminated line of at most MaxLine bytes. On
// error it returns the pending bytes without consuming them.
func (c *session) readLine() ([]byte, error) {
	scanned := 0
	for {
		if i := bytes.Index(c.pending[scanned:], []byte("\r\n")); i >= 0 {
			end := scanned + i + 2
			if end > MaxLine {
				break
			}
			return c.consume(end), nil
		}
		if len(c.pending) >= MaxLine {
			break
		}
		if len(c.pending) > 0 {
			scanned = len(c.pending) - 1 // a CR may be waiting for its LF
		}
		if err := c.fill(); err != nil {
			return c.pending, err
		}
	}
	return c.pending[:min(len(c.pending), 64)], fmt.Errorf("line longer than %d bytes", MaxLine)
}

// readUntil consumes bytes until the consumed stream ends with s.
func (c *session) readUntil(s []byte) error {
	if len(s) == 0 {
		return nil
	}
	read := 0
	for {
		// Search the last len(s)-1 consumed bytes and the pending ones,
		// so that a match needs at least one pending byte.
		tail := c.history[max(0, len(c.history)-(len(s)-1)):]
		window := append(append([]byte(nil), tail...), c.pending...)
		if i := bytes.Index(window, s); i >= 0 {
			n := i + len(s) - len(tail)
			if read+n > MaxUntil {
				break
			}
			c.consume(n)
			return nil
		}
		read += len(c.pending)
		if read > MaxUntil {
			break
		}
		c.consume(len(c.pending))
		if err := c.fill(); err != nil {
			return fmt.Errorf("after %d bytes: %w", read, err)
		}
	}
	return fmt.Errorf("no %q in the first %d bytes", s, MaxUntil)
}

// drain reads and records until the connection fails or is closed.
func (c *session) drain() {
	for {
		c.pending = nil
		if err := c.fill(); err != nil {
			return
		}
	}
}

// scriptConn is the connection given to a Func step: reads go through the
// session, so they see pending bytes first and are recorded.
type scriptConn struct {
	net.Conn
	s *session
}

// NetConn returns the accepted TCP connection under the session.
func (sc *scriptConn) NetConn() net.Conn { return sc.s.raw }

func (sc *scriptConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(sc.s.pending) == 0 {
		if err := sc.s.fill(); err != nil {
			return 0, err
		}
	}
	return copy(p, sc.s.consume(min(len(p), len(sc.s.pending)))), nil
}

// prefixConn is a connection whose reads return prefix before reading from
// the connection itself.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (pc *prefixConn) Read(p []byte) (int, error) {
	if len(pc.prefix) > 0 {
		n := copy(p, pc.prefix)
		pc.prefix = pc.prefix[n:]
		return n, nil
	}
	return pc.Conn.Read(p)
}

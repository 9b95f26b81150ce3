package faultserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// ErrClosed is the cause reported by [Server.Err] for a step that was
// interrupted because the server was closed before the step completed.
var ErrClosed = errors.New("server closed")

// StepError reports the first failed step of a script: a mismatch (the
// cause is then a [*MismatchError]) or an I/O error.
type StepError struct {
	// Conn is the index of the connection, 0 for the first one accepted.
	Conn int
	// Index is the index of the failed step in its script, 0 for the first.
	Index int
	// Step describes the step, for example `ExpectLine("QUIT")`.
	Step string
	// Err is the cause; it is never nil.
	Err error
}

// Error returns "faultserver: conn C step I STEP: CAUSE".
func (e *StepError) Error() string {
	return fmt.Sprintf("faultserver: conn %d step %d %s: %v", e.Conn, e.Index, e.Step, e.Err)
}

// Unwrap returns the cause.
func (e *StepError) Unwrap() error { return e.Err }

// MismatchError reports bytes from the client that differ from what an
// [Expect] or [ExpectLine] step required.
type MismatchError struct {
	// Want is what the step expected.
	Want string
	// Got is what the client sent; when the stream ended or failed first, it
	// is the part that did arrive, and Cause says why no more did.
	Got string
	// Cause is nil for a plain mismatch, or the read error (io.EOF when the
	// client closed the connection) that cut the received bytes short.
	Cause error
}

// Error returns `expected "WANT", got "GOT"`, with the cause appended when
// there is one. Both strings are quoted with %q, so CR, LF and other control
// bytes are visible.
func (e *MismatchError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("expected %q, got %q, then: %v", e.Want, e.Got, e.Cause)
	}
	return fmt.Sprintf("expected %q, got %q", e.Want, e.Got)
}

// Unwrap returns the cause, or nil.
func (e *MismatchError) Unwrap() error { return e.Cause }

// Server is a loopback server that runs scripts against the connections it
// accepts. It is created by [Start] or [StartMulti], and all its methods are
// safe for concurrent use.
type Server struct {
	t       testing.TB
	ln      net.Listener
	scripts [][]Step
	// ctx is cancelled by Close; steps that wait select on it.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the accept loop and the connection goroutines.
	wg        sync.WaitGroup
	closeOnce sync.Once
	// done is closed when every script has finished or failed (or by Close).
	done chan struct{}
	// hungUp is closed when every scripted connection is closed (or by
	// Close).
	hungUp chan struct{}

	mu sync.Mutex // guards the fields below
	// conns holds every accepted connection, scripted or not.
	conns []net.Conn
	// received holds the bytes read on each connection, by index.
	received [][]byte
	// lines holds the lines read by ReadLine steps, per connection.
	lines [][]string
	// err is the first error, or nil.
	err error
	// running counts the scripts not yet finished; open counts the
	// scripted connections not yet closed, including ones not yet
	// accepted.
	running, open int
	// shutdown is set by Close; no connection is accepted after it.
	shutdown bool
}

// Start starts a server on 127.0.0.1 that runs script against the first
// connection it accepts. Any further connection is closed at once and
// reported by [Server.Err]. The server is closed by a t.Cleanup function;
// Start fails the test if it cannot listen.
func Start(t testing.TB, script ...Step) *Server {
	t.Helper()
	return start(t, [][]Step{script})
}

// StartMulti starts a server on 127.0.0.1 that runs scripts[i] against the
// i-th connection it accepts (0-based), so a test can script a client's
// redials. Connections are served concurrently. A connection beyond the
// last script is closed at once and reported by [Server.Err]. The server is
// closed by a t.Cleanup function; StartMulti fails the test if it cannot
// listen.
func StartMulti(t testing.TB, scripts ...[]Step) *Server {
	t.Helper()
	return start(t, scripts)
}

func start(t testing.TB, scripts [][]Step) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultserver: listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		t:       t,
		ln:      ln,
		scripts: scripts,
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		hungUp:  make(chan struct{}),
		running: len(scripts),
		open:    len(scripts),
	}
	if len(scripts) == 0 {
		close(s.done)
		close(s.hungUp)
	}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.Close)
	return s
}

// Addr returns the address the server listens on, "127.0.0.1:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Received returns a copy of every byte the clients sent, in the order they
// were received on each connection; with several connections, the bytes of
// connection 0 come first, then those of connection 1, and so on. After a
// [StartTLS] step the recorded bytes are the decrypted stream, not the TLS
// records. Bytes are recorded as they are read, so bytes still in flight are
// not yet included: wait for [Server.Done] or [Server.HungUp] first.
func (s *Server) Received() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []byte
	for _, b := range s.received {
		out = append(out, b...)
	}
	return out
}

// ReceivedOn returns a copy of the bytes received on connection i (0 for
// the first), or nil if there is no such connection.
func (s *Server) ReceivedOn(i int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i >= len(s.received) {
		return nil
	}
	return append([]byte(nil), s.received[i]...)
}

// LinesRead returns the lines consumed by [ReadLine] steps, each with its
// CRLF, in connection order as for [Server.Received].
func (s *Server) LinesRead() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.lines {
		out = append(out, l...)
	}
	return out
}

// Err returns the first error: a failed step (a [*StepError], whose cause is
// a [*MismatchError] for a mismatch, or [ErrClosed] if the server was closed
// mid-step), an unexpected connection, or an accept error. It returns nil if
// nothing went wrong so far.
func (s *Server) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Done returns a channel that is closed when every script has finished:
// run to its end, ended by a [Close] or [Abort] step, or failed. It is also
// closed by [Server.Close]. A script that has run to its end may leave its
// connection open (see [Server.HungUp]).
func (s *Server) Done() <-chan struct{} { return s.done }

// HungUp returns a channel that is closed when every scripted connection
// has been closed: by a [Close] or [Abort] step, after a failed step, or,
// for a script that ran to its end, once the client has closed the
// connection and everything it sent has been recorded. It is also closed by
// [Server.Close]. Wait on it, after closing the client, to assert on the
// complete [Server.Received].
func (s *Server) HungUp() <-chan struct{} { return s.hungUp }

// Conns returns the number of connections accepted so far, including
// unexpected ones.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops the listener, closes every connection, interrupts every
// step, and waits until every goroutine of the server has returned. It is
// idempotent; concurrent calls wait for the first to finish. A step that was
// still running is reported by [Server.Err] with cause [ErrClosed], unless an
// earlier error was recorded. Close must not be called from a [Func] step.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		_ = s.ln.Close()
		s.mu.Lock()
		s.shutdown = true
		conns := append([]net.Conn(nil), s.conns...)
		s.mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		s.wg.Wait()

		s.mu.Lock()
		defer s.mu.Unlock()
		if s.running > 0 {
			s.running = 0
			close(s.done)
		}
		if s.open > 0 {
			s.open = 0
			close(s.hungUp)
		}
	})
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() == nil {
				s.fail(fmt.Errorf("faultserver: accept: %w", err))
			}
			return
		}
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			_ = conn.Close()
			return
		}
		idx := len(s.conns)
		s.conns = append(s.conns, conn)
		s.received = append(s.received, nil)
		s.lines = append(s.lines, nil)
		s.mu.Unlock()

		if idx >= len(s.scripts) {
			// Record first, so a client that sees the close sees the error.
			s.fail(fmt.Errorf("faultserver: unexpected connection %d: only %d script(s)", idx, len(s.scripts)))
			_ = conn.Close()
			continue
		}
		s.wg.Add(1)
		go s.serve(idx, conn, s.scripts[idx])
	}
}

// serve runs script on conn, then drains the connection unless the script
// hung up.
func (s *Server) serve(idx int, conn net.Conn, script []Step) {
	defer s.wg.Done()
	defer s.hangUp(conn)
	c := newSession(s, idx, conn)
	for i, step := range script {
		err := step.run(c)
		if err == errHungUp {
			s.scriptDone()
			return
		}
		if err != nil {
			if s.ctx.Err() != nil && !isMismatch(err) {
				// The server was closed under the step.
				err = ErrClosed
			}
			se := &StepError{Conn: idx, Index: i, Step: step.String(), Err: err}
			s.t.Logf("%v", se)
			s.fail(se)
			s.scriptDone()
			return
		}
	}
	s.scriptDone()
	c.drain()
}

// isMismatch reports whether err is a mismatch of received bytes, rather
// than a read that failed before enough bytes arrived.
func isMismatch(err error) bool {
	var m *MismatchError
	return errors.As(err, &m) && m.Cause == nil
}

// fail records err unless an earlier error was recorded.
func (s *Server) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// scriptDone counts a finished script, closing done after the last one.
func (s *Server) scriptDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running == 0 { // already closed by Close
		return
	}
	s.running--
	if s.running == 0 {
		close(s.done)
	}
}

// hangUp closes a scripted connection and counts it, closing hungUp after
// the last one.
func (s *Server) hangUp(conn net.Conn) {
	_ = conn.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == 0 {
		return
	}
	s.open--
	if s.open == 0 {
		close(s.hungUp)
	}
}

// record appends p to the bytes received on connection idx.
func (s *Server) record(idx int, p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received[idx] = append(s.received[idx], p...)
}

// recordLine appends a line read by a ReadLine step on connection idx.
func (s *Server) recordLine(idx int, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines[idx] = append(s.lines[idx], line)
}

// Lines joins lines with CRLF and appends a final CRLF, for building
// replies and expectations: Lines("250-a", "250 b") is "250-a\r\n250 b\r\n".
// Lines with no arguments returns "".
func Lines(lines ...string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}

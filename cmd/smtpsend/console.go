package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/smtpkit/smtpkit/internal/servertext"
	"github.com/smtpkit/smtpkit/smtp"
)

// console serialises everything smtpsend prints: results from the
// sending goroutines, audit events from the sender's session goroutines,
// and the progress line on standard error, which is taken off the screen
// before another line is written to the terminal, and drawn again after.
//
// Every line it prints passes through servertext, the filter the smtp
// package puts server text through: characters that are not printable
// (ESC, BEL, CR...) are escaped, so a server's reply cannot rewrite what
// the terminal shows, and the password or token, registered with Secret,
// is redacted wherever it appears. The library has done both already;
// this is the last line of defence, for text that reaches smtpsend by
// another way (a certificate's names in a TLS error, say).
type console struct {
	mu       sync.Mutex // guards the fields below and the writes
	out, err io.Writer
	red      servertext.Redactor // the secrets of this run
	// progress returns the progress line; nil when there is none.
	progress func() string
	// outShared is set when standard output is a terminal too, so that
	// its lines also need the progress line out of the way.
	outShared bool
	shown     bool // a progress line is on the screen
}

func newConsole(stdout, stderr io.Writer) *console {
	return &console{out: stdout, err: stderr}
}

// Secret registers a password or token that must never be printed.
func (c *console) Secret(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.red.AddSecret([]byte(s))
}

// Outf prints to standard output.
func (c *console) Outf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outShared {
		c.clearLocked()
	}
	io.WriteString(c.out, c.red.CleanLines(fmt.Sprintf(format, args...)))
	if c.outShared {
		c.drawLocked()
	}
}

// Errf prints to standard error, prefixed with "smtpsend: ".
func (c *console) Errf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	io.WriteString(c.err, c.red.CleanLines(fmt.Sprintf("smtpsend: "+format, args...)))
	c.drawLocked()
}

// ErrWriter returns a writer to standard error that keeps the progress
// line intact (for the -v slog handler).
func (c *console) ErrWriter() io.Writer { return consoleErr{c} }

type consoleErr struct{ c *console }

func (w consoleErr) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.c.clearLocked()
	_, err := io.WriteString(w.c.err, w.c.red.CleanLines(string(p)))
	w.c.drawLocked()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// StartProgress shows the line that line returns on standard error
// until StopProgress; outShared says standard output is the same
// terminal.
func (c *console) StartProgress(line func() string, outShared bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.progress, c.outShared = line, outShared
	c.drawLocked()
}

// Redraw brings the progress line up to date.
func (c *console) Redraw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	c.drawLocked()
}

// StopProgress removes the progress line.
func (c *console) StopProgress() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	c.progress, c.outShared = nil, false
}

func (c *console) clearLocked() {
	if c.shown {
		io.WriteString(c.err, "\r\x1b[K")
		c.shown = false
	}
}

func (c *console) drawLocked() {
	if c.progress != nil {
		io.WriteString(c.err, c.progress())
		c.shown = true
	}
}

// isTerminal reports whether stream (standard input, output or error)
// is a character device, such as a terminal. It is a variable so tests
// can pretend.
var isTerminal = func(stream any) bool {
	f, ok := stream.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// exchangePrinter turns the sender's audit events into lines that read
// like the SMTP exchange they record: the client's command, then the
// server's reply. Events carry codes, steps and addresses, never
// credentials nor message content, and so do these lines.
type exchangePrinter struct {
	c       *console
	connect string // how the connection is made, for the connect line
}

func (p *exchangePrinter) event(e smtp.Event) {
	cmd, reply := "", ""
	code := codeString(e.Code, e.Enhanced)
	switch e.Type {
	case smtp.EventConnect:
		cmd = "connect"
		reply = p.connect
	case smtp.EventGreeting:
		cmd, reply = "(greeting)", code
	case smtp.EventEHLO:
		cmd, reply = "EHLO", code
	case smtp.EventTLS:
		if e.Op == smtp.OpSTARTTLS {
			cmd, reply = "STARTTLS", "220, then "+e.TLSVersion
		} else {
			// Implicit TLS: the handshake came before the greeting.
			cmd, reply = "(TLS handshake)", e.TLSVersion
		}
	case smtp.EventAuth:
		cmd, reply = "AUTH "+e.Mechanism, code
		if e.Error != "" {
			reply += "  refused: " + e.Error
		}
	case smtp.EventMailAccepted:
		cmd, reply = "MAIL FROM:<"+e.From+">", code
	case smtp.EventRcptAccepted:
		cmd, reply = "RCPT TO:<"+e.Recipient+">", code
	case smtp.EventRcptRefused:
		cmd, reply = "RCPT TO:<"+e.Recipient+">", code+"  refused"
	case smtp.EventMessage:
		cmd, reply = "(the message, by "+string(e.Op)+")", code
		if e.QueueID != "" {
			reply += "  queued as " + e.QueueID
		}
	case smtp.EventMessageFailed:
		cmd, reply = "(transaction failed at "+string(e.Op)+")", e.Error
	case smtp.EventReset:
		cmd, reply = "RSET", code
	case smtp.EventQuit:
		cmd, reply = "QUIT", code
	case smtp.EventSessionAborted:
		cmd, reply = "(session aborted at "+string(e.Op)+")", e.Error
		if e.Op == smtp.OpQUIT && strings.Contains(e.Error, "closed by the client") {
			cmd, reply = "(connection closed)", "by the client, without QUIT"
		}
	default:
		cmd, reply = string(e.Type), code
	}
	p.c.Outf("  %-34s -> %s\n", cmd, reply)
}

// codeString formats a reply code and its enhanced code.
func codeString(code int, enhanced string) string {
	if code == 0 {
		return ""
	}
	if enhanced != "" {
		return fmt.Sprintf("%d %s", code, enhanced)
	}
	return fmt.Sprint(code)
}

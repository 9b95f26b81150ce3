package smtp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Op names the protocol step an error happened in.
type Op string

// The steps of a session, as they appear in [Error.Op].
const (
	OpDial     Op = "dial"
	OpGreeting Op = "greeting"
	OpEHLO     Op = "EHLO"
	OpSTARTTLS Op = "STARTTLS"
	OpAuth     Op = "AUTH"
	OpMail     Op = "MAIL"
	OpRcpt     Op = "RCPT"
	OpData     Op = "DATA"
	OpBDAT     Op = "BDAT"
	OpBody     Op = "body"
	OpReset    Op = "RSET"
	OpNoop     Op = "NOOP"
	OpQuit     Op = "QUIT"
	OpSend     Op = "send"
)

// Kind classifies an error by what went wrong.
type Kind int

// The kinds of [Error].
const (
	// KindIO is a transport failure: the connection broke, timed out, or
	// the context ended while the session was waiting on the network.
	KindIO Kind = iota + 1
	// KindProtocol is a server that broke the protocol: a malformed or
	// oversized reply, an unexpected code, or bytes injected after STARTTLS.
	KindProtocol
	// KindRejected is a well-formed 4xx or 5xx reply from the server.
	KindRejected
	// KindAuth is a failed authentication, or none possible.
	KindAuth
	// KindInvalidInput is a caller mistake. A bad address, an empty
	// recipient list or a method called in the wrong state is caught
	// before any byte is written. A body that cannot be sent (a bare CR
	// or LF without [Options.NormalizeLineEndings], an overlong line, a
	// reader that fails) is found while the body streams, after MAIL and
	// RCPT have been sent (and DATA's 354 or earlier BDAT chunks): the
	// transaction is then abandoned before its commit point, with RSET
	// under BDAT and by dropping the session before the final dot under
	// DATA. Either way nothing is committed and the offending octets
	// never reach the wire.
	KindInvalidInput
	// KindPolicy is a veto by the [Options.Policy] hook or a size limit.
	KindPolicy
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case KindIO:
		return "io"
	case KindProtocol:
		return "protocol"
	case KindRejected:
		return "rejected"
	case KindAuth:
		return "auth"
	case KindInvalidInput:
		return "invalid input"
	case KindPolicy:
		return "policy"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ErrOutcomeUnknown means that the commit point of a message (the final
// "." of DATA or the BDAT ... LAST chunk) was written but its reply was
// lost: the message may or may not have been delivered. Retrying may
// deliver it twice. Test for it with errors.Is.
var ErrOutcomeUnknown = errors.New("smtp: outcome unknown: the message was committed but its reply was lost")

// ErrClosed is the cause of an [Error] for any call on a session that
// is closed, whether by Quit, Close, or a failure that broke it.
var ErrClosed = errors.New("smtp: session closed")

// RecipientStatus is the server's reply to one RCPT command.
type RecipientStatus struct {
	// Address is the recipient as given in the Envelope.
	Address string
	// Reply is the server's reply to its RCPT command.
	Reply Reply
}

// Error is the one error type the smtp package returns; find it with
// errors.As. Its message starts with "smtp:" and never contains a
// credential or a message body.
type Error struct {
	// Op is the step that failed.
	Op Op
	// Kind classifies the failure.
	Kind Kind
	// Code is the server's reply code, or 0 when there was no reply.
	Code int
	// Enhanced is the RFC 3463 enhanced status code ("5.1.1"), when the
	// server advertised ENHANCEDSTATUSCODES and sent one.
	Enhanced string
	// Message describes the failure; for a rejection it is the server's
	// text.
	Message string
	// Recipient is the address the failure concerns, for Op RCPT.
	Recipient string
	// Refused lists every refused recipient when a transaction failed
	// because of them (Op RCPT).
	Refused []RecipientStatus
	// Err is the underlying cause, if any.
	Err error
}

// Error formats the error as "smtp: OP[ <rcpt>]: KIND: [CODE ENH ]MESSAGE[: CAUSE]".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("smtp: ")
	b.WriteString(string(e.Op))
	if e.Recipient != "" {
		b.WriteString(" <")
		b.WriteString(e.Recipient)
		b.WriteByte('>')
	}
	b.WriteString(": ")
	b.WriteString(e.Kind.String())
	if e.Code != 0 {
		b.WriteString(": ")
		b.WriteString(strconv.Itoa(e.Code))
		if e.Enhanced != "" {
			b.WriteByte(' ')
			b.WriteString(e.Enhanced)
		}
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if len(e.Refused) > 1 || (len(e.Refused) == 1 && e.Refused[0].Address != e.Recipient) {
		b.WriteString(" (refused:")
		for _, r := range e.Refused {
			fmt.Fprintf(&b, " <%s> %d", r.Address, r.Reply.Code)
			if r.Reply.Enhanced != "" {
				b.WriteString(" " + r.Reply.Enhanced)
			}
			if t := r.Reply.Text(); t != "" {
				b.WriteString(" " + t)
			}
			b.WriteByte(';')
		}
		b.WriteByte(')')
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether retrying later may succeed: a 4xx reply, a
// transport failure, or a protocol error. An error whose outcome is
// unknown (see [ErrOutcomeUnknown]) is not temporary: retrying may
// deliver twice.
func (e *Error) Temporary() bool {
	if errors.Is(e.Err, ErrOutcomeUnknown) {
		return false
	}
	if e.Code >= 400 && e.Code < 500 {
		return true
	}
	if e.Code >= 500 {
		return false
	}
	return e.Kind == KindIO || e.Kind == KindProtocol
}

// Permanent reports whether retrying the same request cannot help: a 5xx
// reply, invalid input, or a policy veto.
func (e *Error) Permanent() bool {
	if errors.Is(e.Err, ErrOutcomeUnknown) {
		return false
	}
	if e.Code >= 500 {
		return true
	}
	if e.Code >= 400 {
		return false
	}
	return e.Kind == KindInvalidInput || e.Kind == KindPolicy || (e.Kind == KindAuth && e.Code == 0)
}

// IsTemporary reports whether err is an [*Error] for which retrying later
// may help (4xx replies and transport failures). It is false for
// [ErrOutcomeUnknown]: such a message may already have been delivered.
func IsTemporary(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Temporary()
}

// IsPermanent reports whether err is an [*Error] that retrying cannot fix
// (5xx replies, invalid input, policy vetoes).
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent()
}

// replyError builds a KindRejected error from a reply.
func replyError(op Op, r *Reply) *Error {
	return &Error{Op: op, Kind: KindRejected, Code: r.Code, Enhanced: r.Enhanced, Message: r.Text()}
}

func protoError(op Op, format string, args ...any) *Error {
	return &Error{Op: op, Kind: KindProtocol, Message: fmt.Sprintf(format, args...)}
}

func inputError(op Op, format string, args ...any) *Error {
	return &Error{Op: op, Kind: KindInvalidInput, Message: fmt.Sprintf(format, args...)}
}

// ioError wraps a transport error. When ctx has ended, its error is the
// cause, so errors.Is(err, context.DeadlineExceeded) holds.
func ioError(ctx context.Context, op Op, err error) *Error {
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	if ctx != nil && (errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err)) {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		} else if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			// The transport deadline was the context's, and it fired
			// before the context's own timer marked the context done.
			err = fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
		}
	}
	return &Error{Op: op, Kind: KindIO, Err: err}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

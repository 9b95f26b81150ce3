package smtp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Op names the protocol step an error happened in.
type Op string

// The steps of a session, as they appear in [Error.Op]. The steps that
// are SMTP commands are spelt as the command (OpMAIL is "MAIL").
const (
	// OpDial is the step of dialing a transport. Package smtp never
	// dials, so a Client never returns it: it is the Op of a dial
	// error from package sender (its Config.Addr or Config.Dial), and
	// of a caller's own dialer that reports with an [*Error].
	OpDial     Op = "dial"
	OpGreeting Op = "greeting"
	OpEHLO     Op = "EHLO"
	OpSTARTTLS Op = "STARTTLS"
	OpAUTH     Op = "AUTH"
	OpMAIL     Op = "MAIL"
	OpRCPT     Op = "RCPT"
	OpDATA     Op = "DATA"
	OpBDAT     Op = "BDAT"
	OpBody     Op = "body"
	OpRSET     Op = "RSET"
	OpNOOP     Op = "NOOP"
	OpQUIT     Op = "QUIT"
	OpSend     Op = "send"
	// OpConfig is a configuration that cannot work, found before any
	// session was attempted (for example a sender Config without an
	// address). It is always in [ClassConfig].
	OpConfig Op = "config"
)

// The former spellings of the Op names, kept so that code written
// against them compiles.
const (
	// Deprecated: use OpAUTH.
	OpAuth = OpAUTH
	// Deprecated: use OpMAIL.
	OpMail = OpMAIL
	// Deprecated: use OpRCPT.
	OpRcpt = OpRCPT
	// Deprecated: use OpDATA.
	OpData = OpDATA
	// Deprecated: use OpRSET.
	OpReset = OpRSET
	// Deprecated: use OpNOOP.
	OpNoop = OpNOOP
	// Deprecated: use OpQUIT.
	OpQuit = OpQUIT
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
	// transaction is then abandoned before its commit point (under DATA
	// this closes the session). Either way nothing is committed and the
	// offending octets never reach the wire.
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

// ErrStartTLSNotOffered is the cause of the [Error] (Op STARTTLS) of a
// session that was to be upgraded with STARTTLS on a server that does not
// offer it. The session is dropped: there is never a fallback to
// plaintext. It is in [ClassConfig] (a server set up without TLS will not
// change by itself), and it deserves an alert of its own: an attacker
// between the client and the server strips STARTTLS from the EHLO reply
// to read the mail. Test for it with errors.Is.
var ErrStartTLSNotOffered = errors.New("smtp: STARTTLS required but not offered")

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

// Class answers "whose move is it?" for an error: what a program should
// do next with the message, the moment, the setup. Every error is in
// exactly one class; [Classify] finds it.
type Class int

// The classes. The zero value, ClassNone, is the class of a nil error.
const (
	// ClassNone: no error; the message was accepted.
	ClassNone Class = iota
	// ClassPermanent: the message's. This message will never be
	// accepted as it is: a 5xx reply to MAIL, RCPT, DATA or BDAT, an
	// envelope or body the client refused to send, a policy veto, a size
	// limit. Do not retry it; tell its author.
	ClassPermanent
	// ClassTemporary: the moment's. The message was not accepted, and a
	// later attempt may succeed: a 4xx reply (421 included), a network
	// failure, a timeout, a server that broke the protocol, a session
	// closed under the call. Retry later, with backoff.
	ClassTemporary
	// ClassConfig: the setup's. Nothing will be sent until someone
	// changes the configuration or the account: a login refused (5xx at
	// AUTH, 530 "authentication required") or impossible (no AUTH or no
	// common mechanism offered, credentials that cannot be sent or a
	// provider that failed), STARTTLS required but not offered
	// ([ErrStartTLSNotOffered]), a certificate that is not trusted, has
	// expired or is for another name, a TLS mode that does not match
	// the port (implicit TLS to a STARTTLS port, or a plain transport
	// where TLS is required), a server that refuses the client at its
	// greeting or EHLO (5xx), an invalid local name or Config ([OpConfig]),
	// and a server that claimed a login without proving it knows the
	// credentials. Pause the work that depends on it and alert someone;
	// failing each message would lose mail that a fixed configuration
	// delivers, and retrying each would hammer an account that may lock.
	ClassConfig
	// ClassOutcomeUnknown: nobody's yet. The message's commit point was
	// written and its answer lost ([ErrOutcomeUnknown]): it may have been
	// delivered. Never resend it automatically; settle it from the logs.
	ClassOutcomeUnknown
	// ClassCanceled: the caller's. The caller's own context ended before
	// the message was committed, and nothing was sent (sender.Send
	// returns ctx.Err() then). Retry when it suits the caller; it says
	// nothing about the server.
	ClassCanceled
)

// String returns the class's name.
func (c Class) String() string {
	switch c {
	case ClassNone:
		return "none"
	case ClassPermanent:
		return "permanent"
	case ClassTemporary:
		return "temporary"
	case ClassConfig:
		return "config"
	case ClassOutcomeUnknown:
		return "outcome unknown"
	case ClassCanceled:
		return "canceled"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Classify returns the class of err, which may be any error a Client,
// a sender.Sender or a transport returns. It decides in this order:
//
//  1. nil is [ClassNone].
//  2. A chain that holds [ErrOutcomeUnknown] is [ClassOutcomeUnknown],
//     whatever else it holds (a caller's context that ended after the
//     commit point included).
//  3. A chain that holds [ErrStartTLSNotOffered] is [ClassConfig].
//  4. A chain with an [*Error] is classified by its innermost *Error: the
//     one found by following each *Error's cause to the last *Error in
//     the chain. A wrapper that only reports a cause, such as the
//     sender's fail-fast error (sender.ErrFailingFast), which wraps the
//     error of the session that last failed, therefore classifies as
//     that cause does: fail-fast after a refused password is
//     ClassConfig, after a refused connection ClassTemporary.
//  5. A chain without an *Error: a context error (context.Canceled,
//     context.DeadlineExceeded) is [ClassCanceled], the caller's own
//     context having ended (sender.Send returns it bare when the
//     message was withdrawn before its commit point); a TLS certificate
//     or TLS record error is [ClassConfig]; anything else (an error of a
//     custom Dial, a closed Sender's sender.ErrClosed) is
//     [ClassTemporary].
//
// An *Error is classified by its Op, Kind, Code and cause:
//
//   - Op [OpConfig]: ClassConfig.
//   - A cause that is a TLS certificate verification failure
//     ([*tls.CertificateVerificationError], an x509 error) or a TLS
//     record from a server that does not speak TLS
//     ([tls.RecordHeaderError]: implicit TLS to a STARTTLS port):
//     ClassConfig.
//   - [KindAuth]: ClassTemporary with a 4xx code (454), ClassConfig
//     otherwise (535, 534, no code: no AUTH, no common mechanism, AUTH
//     refused without TLS, a failed credentials provider; 235 from a
//     server that did not prove itself).
//   - [KindInvalidInput]: ClassConfig at AUTH (credentials that cannot
//     be encoded, a bad mechanism name), at greeting (a transport that
//     is not TLS), at STARTTLS (a transport that cannot be upgraded) and
//     at EHLO (an invalid local name); ClassPermanent elsewhere (the
//     envelope or the body).
//   - [KindPolicy]: ClassPermanent.
//   - [KindRejected] (and [KindIO] carrying a copied code): 4xx is
//     ClassTemporary. 5xx is ClassConfig at greeting, EHLO, STARTTLS and
//     AUTH, and for 530 (authentication required) and 538 (encryption
//     required) at any step; ClassPermanent otherwise. A code outside
//     4xx and 5xx (an unexpected reply) is ClassTemporary.
//   - [KindProtocol]: ClassTemporary, whatever its code (a code there
//     is not a verdict: the reply to a cancelled AUTH exchange, a 250
//     where 235 was due).
//   - [KindIO] without a code: ClassTemporary. This
//     includes a context that ended during a Client call: the client
//     cannot tell a caller's deadline from a server too slow for it;
//     test errors.Is(err, context.Canceled) to tell your own
//     cancellation apart.
//
// The predicates [IsPermanent], [IsTemporary] and [IsConfig] test for
// one class each; test [ErrOutcomeUnknown] with errors.Is.
func Classify(err error) Class {
	if err == nil {
		return ClassNone
	}
	if errors.Is(err, ErrOutcomeUnknown) {
		return ClassOutcomeUnknown
	}
	if errors.Is(err, ErrStartTLSNotOffered) {
		return ClassConfig
	}
	e := innermost(err)
	if e == nil {
		switch {
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return ClassCanceled
		case tlsSetupError(err):
			return ClassConfig
		}
		return ClassTemporary
	}
	return e.class()
}

// innermost returns the last [*Error] found by following the causes of
// err, or nil when err holds none.
func innermost(err error) *Error {
	var e *Error
	if !errors.As(err, &e) {
		return nil
	}
	for e.Err != nil {
		var inner *Error
		if !errors.As(e.Err, &inner) {
			break
		}
		e = inner
	}
	return e
}

// class classifies e alone; its cause is only looked at for TLS errors.
func (e *Error) class() Class {
	if e.Op == OpConfig || (e.Err != nil && tlsSetupError(e.Err)) {
		return ClassConfig
	}
	switch e.Kind {
	case KindAuth:
		if e.Code >= 400 && e.Code < 500 {
			return ClassTemporary
		}
		return ClassConfig
	case KindInvalidInput:
		switch e.Op {
		case OpAUTH, OpGreeting, OpSTARTTLS, OpEHLO:
			return ClassConfig
		}
		return ClassPermanent
	case KindPolicy:
		return ClassPermanent
	case KindProtocol:
		// A code here is not a verdict (the reply to a cancelled AUTH
		// exchange, a 250 where 235 was due): the server misbehaved.
		return ClassTemporary
	}
	switch {
	case e.Code >= 400 && e.Code < 500:
		return ClassTemporary
	case e.Code >= 500 && e.Code < 600:
		switch {
		case e.Op == OpGreeting, e.Op == OpEHLO, e.Op == OpSTARTTLS, e.Op == OpAUTH:
			return ClassConfig
		case e.Code == 530, e.Code == 538:
			return ClassConfig
		}
		return ClassPermanent
	}
	return ClassTemporary
}

// tlsSetupError reports whether err holds a TLS failure that only a
// change of configuration (trust, server name, TLS mode) can cure.
func tlsSetupError(err error) bool {
	var (
		cve  *tls.CertificateVerificationError
		rhe  tls.RecordHeaderError
		uae  x509.UnknownAuthorityError
		he   x509.HostnameError
		cie  x509.CertificateInvalidError
		sre  x509.SystemRootsError
		cse  x509.ConstraintViolationError
		uce  x509.UnhandledCriticalExtension
		iae  x509.InsecureAlgorithmError
		puae *x509.UnknownAuthorityError
		phe  *x509.HostnameError
		pcie *x509.CertificateInvalidError
	)
	return errors.As(err, &cve) || errors.As(err, &rhe) ||
		errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie) ||
		errors.As(err, &sre) || errors.As(err, &cse) || errors.As(err, &uce) || errors.As(err, &iae) ||
		errors.As(err, &puae) || errors.As(err, &phe) || errors.As(err, &pcie)
}

// IsPermanent reports whether err is in [ClassPermanent]: this message
// will never be accepted as it is (a 5xx reply to the transaction,
// invalid input, a policy veto). Do not retry it. A refused login or
// an untrusted certificate is not permanent but [IsConfig].
func IsPermanent(err error) bool { return Classify(err) == ClassPermanent }

// IsTemporary reports whether err is in [ClassTemporary]: the message
// was not accepted, and retrying later may succeed (4xx replies,
// transport failures, timeouts). It is false for [ErrOutcomeUnknown]
// (such a message may already have been delivered), for a caller's own
// ended context (see [ClassCanceled]) and for [IsConfig] errors.
func IsTemporary(err error) bool { return Classify(err) == ClassTemporary }

// IsConfig reports whether err is in [ClassConfig]: nothing will be
// sent until someone changes the configuration or the account (a login
// refused or impossible, STARTTLS or AUTH missing where required, a
// certificate not trusted or for another name, a TLS mode that does not
// match the server). Pause and alert; do not fail the message.
func IsConfig(err error) bool { return Classify(err) == ClassConfig }

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

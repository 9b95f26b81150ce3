package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"

	"github.com/smtpkit/smtpkit/smtp"
)

// status is what became of one message. The order is the order of
// severity that decides the exit code of a run (see worst).
type status int

const (
	statusSent     status = iota // accepted by the server
	statusRefused                // refused permanently: exit 65
	statusDeferred               // not accepted, retry later: exit 75
	statusConfig                 // nothing goes until the setup changes: exit 78
	statusUnknown                // sent, answer lost: exit 76
)

func (s status) String() string {
	switch s {
	case statusSent:
		return "sent"
	case statusRefused:
		return "refused"
	case statusDeferred:
		return "deferred"
	case statusConfig:
		return "config"
	}
	return "unknown"
}

// exitCode is the exit status for a run whose worst message ended so.
func (s status) exitCode() int {
	switch s {
	case statusSent:
		return exitOK
	case statusRefused:
		return exitRefused
	case statusDeferred:
		return exitTempFail
	case statusConfig:
		return exitConfig
	}
	return exitUnknown
}

// classify says what an error from sender.Send (or Verify) means for
// the message. The library decides, with smtp.Classify; smtpsend only
// maps its answer:
//
//   - smtp.ClassOutcomeUnknown: the commit point was written and the
//     answer lost; the message may have been delivered.
//   - smtp.ClassConfig: a login refused or impossible, a certificate not
//     trusted, STARTTLS missing, the wrong -tls mode. Nothing will be
//     sent until the command line, the account or the server changes.
//   - smtp.ClassPermanent: a 5xx reply to the message, bad input, a
//     policy veto. The same message will fail the same way.
//   - everything else is temporary: a 4xx reply, a network failure or a
//     timeout before the message was committed, or a context that ended
//     before it was written (smtp.ClassCanceled: an interrupt). Nothing
//     was accepted; a retry may succeed.
func classify(err error) status {
	switch smtp.Classify(err) {
	case smtp.ClassNone:
		return statusSent
	case smtp.ClassOutcomeUnknown:
		return statusUnknown
	case smtp.ClassConfig:
		return statusConfig
	case smtp.ClassPermanent:
		return statusRefused
	}
	return statusDeferred
}

// innermost returns the innermost *smtp.Error of err (the one
// smtp.Classify decides by), or nil.
func innermost(err error) *smtp.Error {
	e, ok := errors.AsType[*smtp.Error](err)
	if !ok {
		return nil
	}
	for {
		inner, ok := errors.AsType[*smtp.Error](e.Err)
		if !ok {
			return e
		}
		e = inner
	}
}

// replyText is what the server said about err, for the outcome's
// "reply:" line: the code and enhanced code of the innermost
// *smtp.Error, and its text only for a rejection (the text of any other
// kind is the library's, such as the sender's fail-fast explanation, or
// has the library's words around the server's). It is "" when the
// server said nothing.
func replyText(err error) string {
	e := innermost(err)
	if e == nil || e.Code == 0 {
		return ""
	}
	s := codeString(e.Code, e.Enhanced)
	if e.Kind == smtp.KindRejected && e.Message != "" {
		s += " " + e.Message
	}
	return s
}

// cause returns the error that explains err. It is err itself, except
// for the sender's fail-fast error after failed dials: an I/O error at
// the dial step that wraps the last dial's own error. When that one is a
// server's answer (a 535 at AUTH, a 554 greeting), it is the answer that
// says whether a retry can help, and the step it names is the step that
// failed.
func cause(err error) error {
	outer, ok := errors.AsType[*smtp.Error](err)
	if !ok || outer.Op != smtp.OpDial || outer.Err == nil {
		return err
	}
	if inner, ok := errors.AsType[*smtp.Error](outer.Err); ok {
		return inner
	}
	return err
}

// worst returns the more severe of two statuses.
func worst(a, b status) status {
	if b > a {
		return b
	}
	return a
}

// steps names each protocol step for error messages.
var steps = map[smtp.Op]string{
	smtp.OpDial:     "connecting",
	smtp.OpGreeting: "waiting for the server's greeting",
	smtp.OpEHLO:     "EHLO",
	smtp.OpSTARTTLS: "STARTTLS",
	smtp.OpAUTH:     "logging in (AUTH)",
	smtp.OpMAIL:     "MAIL FROM",
	smtp.OpRCPT:     "RCPT TO",
	smtp.OpDATA:     "sending the message (DATA)",
	smtp.OpBDAT:     "sending the message (BDAT)",
	smtp.OpBody:     "reading the message",
	smtp.OpRSET:     "RSET",
	smtp.OpNOOP:     "NOOP",
	smtp.OpQUIT:     "QUIT",
	smtp.OpSend:     "sending",
}

// step names the step at which err happened.
func step(err error) string {
	err = cause(err)
	if e, ok := errors.AsType[*smtp.Error](err); ok {
		if s, ok := steps[e.Op]; ok {
			return s
		}
		return string(e.Op)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "waiting for a connection"
	}
	return "sending"
}

// advice says whether a retry can help, for a failed message.
func advice(s status) string {
	switch s {
	case statusRefused:
		return "permanent failure: sending the same message again will fail the same way; fix the message or the addresses"
	case statusDeferred:
		return "temporary failure: the message was not accepted; retrying later may succeed"
	case statusConfig:
		return "setup failure: nothing will be sent until the configuration, the account or the server changes (the login, the certificate, the -tls mode); sending again as it is will fail the same way"
	case statusUnknown:
		return "outcome unknown: the message was sent but the server's answer was lost, so it may have been delivered; do not resend it blindly, check the recipient's mailbox or the server's log first"
	}
	return ""
}

// hint suggests a fix for common set-up mistakes, or returns "".
func hint(err error, o *options) string {
	err = cause(err)
	if errors.Is(err, smtp.ErrStartTLSNotOffered) {
		return "the server did not offer STARTTLS, so nothing was sent: it may not support it (try -tls implicit, usually port 465), or something between you and the server removed it from the EHLO reply"
	}
	var verr *tls.CertificateVerificationError
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var rerr tls.RecordHeaderError
	switch {
	case errors.As(err, &verr), errors.As(err, &uerr):
		if errors.As(err, &herr) {
			return "the server's certificate is not for the name in -server; connect by the name the certificate carries"
		}
		return "the server's certificate is not trusted; for a self-signed test server pass its PEM certificate with -ca-file"
	case errors.As(err, &herr):
		return "the server's certificate is not for the name in -server; connect by the name the certificate carries"
	case errors.As(err, &rerr):
		if o.tlsMode == "implicit" {
			return "the server does not speak TLS from the first byte; try -tls starttls (usually port 587)"
		}
	}
	if e, ok := errors.AsType[*smtp.Error](err); ok {
		switch {
		case e.Op == smtp.OpAUTH && (e.Code == 535 || e.Code == 534):
			return "check -user and the password (or token)"
		case e.Op == smtp.OpAUTH && e.Code == 0 && strings.Contains(e.Message, "does not offer"):
			return "choose another mechanism with -auth, or leave -auth out"
		case (e.Op == smtp.OpMAIL || e.Op == smtp.OpRCPT) && (e.Code == 530 || e.Code == 554 && strings.Contains(strings.ToLower(e.Message), "relay")):
			return "the server wants you to log in first: pass -user"
		case e.Op == smtp.OpGreeting && e.Kind == smtp.KindIO && o.tlsMode == "starttls":
			return "the server sent no greeting: if it speaks TLS from the first byte (usually port 465), use -tls implicit"
		case e.Op == smtp.OpBody && e.Kind == smtp.KindInvalidInput && o.strictCRLF:
			return "the message has bare LF or CR line endings; leave out -strict-line-endings to convert them to CRLF"
		}
	}
	return ""
}

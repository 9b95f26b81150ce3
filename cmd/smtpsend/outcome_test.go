package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/smtpkit/smtpkit/smtp"
)

func TestClassify(t *testing.T) {
	unknown := &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindIO, Err: fmt.Errorf("%w: EOF", smtp.ErrOutcomeUnknown)}
	for _, tc := range []struct {
		name string
		err  error
		want status
	}{
		{"nil", nil, statusSent},
		{"550 at RCPT", &smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 550}, statusRefused},
		{"554 after data", &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindRejected, Code: 554}, statusRefused},
		{"535 login", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535}, statusConfig},
		{"no common mechanism", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth}, statusConfig},
		{"bad input", &smtp.Error{Op: smtp.OpBody, Kind: smtp.KindInvalidInput}, statusRefused},
		{"policy", &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindPolicy}, statusRefused},
		{"451 at RCPT", &smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 451}, statusDeferred},
		{"454 login", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 454}, statusDeferred},
		{"421", &smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindRejected, Code: 421}, statusDeferred},
		{"dial", &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: errors.New("refused")}, statusDeferred},
		{"protocol", &smtp.Error{Op: smtp.OpEHLO, Kind: smtp.KindProtocol}, statusDeferred},
		{"withdrawn", context.DeadlineExceeded, statusDeferred},
		{"outcome unknown", unknown, statusUnknown},
		{"outcome unknown, wrapped", fmt.Errorf("x: %w", unknown), statusUnknown},
	} {
		assert.Equal(t, tc.want, classify(tc.err), tc.name)
	}
}

// TestExitCodeOrder: the worst message decides, 76 > 75 > 65 > 0.
func TestExitCodeOrder(t *testing.T) {
	r := func(ss ...status) []result {
		out := make([]result, len(ss))
		for i, s := range ss {
			out[i].status = s
		}
		return out
	}
	for _, tc := range []struct {
		results []result
		want    int
	}{
		{r(), exitOK},
		{r(statusSent), exitOK},
		{r(statusSent, statusSent), exitOK},
		{r(statusSent, statusRefused), exitRefused},
		{r(statusRefused, statusDeferred), exitTempFail},
		{r(statusDeferred, statusRefused, statusSent), exitTempFail},
		{r(statusUnknown, statusDeferred), exitUnknown},
		{r(statusSent, statusRefused, statusDeferred, statusUnknown), exitUnknown},
		{r(statusUnknown, statusSent), exitUnknown},
	} {
		assert.Equal(t, tc.want, exitCode(tc.results))
	}
	assert.Equal(t, []int{0, 65, 75, 78, 76}, []int{statusSent.exitCode(), statusRefused.exitCode(), statusDeferred.exitCode(), statusConfig.exitCode(), statusUnknown.exitCode()})
}

func TestStepAndAdvice(t *testing.T) {
	assert.Equal(t, "RCPT TO", step(&smtp.Error{Op: smtp.OpRCPT}))
	assert.Equal(t, "logging in (AUTH)", step(fmt.Errorf("wrapped: %w", &smtp.Error{Op: smtp.OpAUTH})))
	assert.Equal(t, "waiting for a connection", step(context.DeadlineExceeded))
	assert.Equal(t, "sending", step(errors.New("other")))
	assert.Contains(t, advice(statusRefused), "will fail the same way")
	assert.Contains(t, advice(statusDeferred), "retrying later may succeed")
	assert.Contains(t, advice(statusUnknown), "do not resend it blindly")
}

func TestHints(t *testing.T) {
	impl := &options{tlsMode: "implicit"}
	certErr := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: fmt.Errorf("handshake: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})}
	assert.Contains(t, hint(certErr, impl), "-ca-file")
	nameErr := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: &tls.CertificateVerificationError{Err: x509.HostnameError{Host: "x"}}}
	assert.Contains(t, hint(nameErr, impl), "not for the name")
	notTLS := &smtp.Error{Op: smtp.OpDial, Kind: smtp.KindIO, Err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}}
	assert.Contains(t, hint(notTLS, impl), "-tls starttls")
	assert.Empty(t, hint(notTLS, &options{tlsMode: "starttls"}))
	assert.Contains(t, hint(&smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535}, impl), "-user")
	assert.Contains(t, hint(&smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindRejected, Code: 530}, impl), "log in first")
	assert.Contains(t, hint(&smtp.Error{Op: smtp.OpBody, Kind: smtp.KindInvalidInput}, &options{strictCRLF: true}), "-strict-line-endings")
	assert.Empty(t, hint(&smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 550}, impl))
	noGreeting := &smtp.Error{Op: smtp.OpGreeting, Kind: smtp.KindIO, Err: context.DeadlineExceeded}
	assert.Contains(t, hint(noGreeting, &options{tlsMode: "starttls"}), "-tls implicit")
	assert.Empty(t, hint(noGreeting, impl))
	assert.Contains(t, hint(&smtp.Error{Op: smtp.OpSTARTTLS, Kind: smtp.KindProtocol, Err: smtp.ErrStartTLSNotOffered}, impl), "did not offer STARTTLS")
}

func TestExchangePrinter(t *testing.T) {
	var out bytes.Buffer
	p := &exchangePrinter{c: newConsole(&out, &out), connect: "TCP, TLS"}
	for _, e := range []smtp.Event{
		{Type: smtp.EventConnect, Op: smtp.OpGreeting},
		{Type: smtp.EventTLS, Op: smtp.OpGreeting, TLSVersion: "TLS 1.3"},
		{Type: smtp.EventGreeting, Op: smtp.OpGreeting, Code: 220},
		{Type: smtp.EventEHLO, Op: smtp.OpEHLO, Code: 250},
		{Type: smtp.EventTLS, Op: smtp.OpSTARTTLS, TLSVersion: "TLS 1.3"},
		{Type: smtp.EventAuth, Op: smtp.OpAUTH, Mechanism: "PLAIN", Code: 535, Enhanced: "5.7.8", Error: "smtp: AUTH: auth: 535 5.7.8: PLAIN refused"},
		{Type: smtp.EventMailAccepted, Op: smtp.OpMAIL, Code: 250, Enhanced: "2.1.0", From: "a@example.com"},
		{Type: smtp.EventRcptRefused, Op: smtp.OpRCPT, Code: 550, Enhanced: "5.1.1", Recipient: "x@example.net"},
		{Type: smtp.EventMessage, Op: smtp.OpDATA, Code: 250, QueueID: "Q1"},
		{Type: smtp.EventSessionAborted, Op: smtp.OpDATA, Error: "smtp: DATA: io: EOF"},
		{Type: smtp.EventQuit, Op: smtp.OpQUIT, Code: 221},
	} {
		p.event(e)
	}
	want := []string{
		"  connect                            -> TCP, TLS",
		"  (TLS handshake)                    -> TLS 1.3",
		"  (greeting)                         -> 220",
		"  EHLO                               -> 250",
		"  STARTTLS                           -> 220, then TLS 1.3",
		"  AUTH PLAIN                         -> 535 5.7.8  refused: smtp: AUTH: auth: 535 5.7.8: PLAIN refused",
		"  MAIL FROM:<a@example.com>          -> 250 2.1.0",
		"  RCPT TO:<x@example.net>            -> 550 5.1.1  refused",
		"  (the message, by DATA)             -> 250  queued as Q1",
		"  (session aborted at DATA)          -> smtp: DATA: io: EOF",
		"  QUIT                               -> 221",
	}
	assert.Equal(t, strings.Join(want, "\n")+"\n", out.String())
}

func TestConsoleProgress(t *testing.T) {
	var out, errw bytes.Buffer
	c := newConsole(&out, &errw)
	n := 0
	line := func() string { n++; return fmt.Sprintf("%d/2 done", n) }
	c.Outf("before\n")
	c.StartProgress(line, false)
	c.Outf("line\n") // standard output is elsewhere: the line stays
	c.Errf("oops\n")
	c.Redraw()
	c.StopProgress()
	c.Errf("after\n")
	assert.Equal(t, "before\nline\n", out.String())
	// The progress line is drawn, taken away around every other line on
	// the terminal, drawn again up to date, and finally cleared.
	assert.Equal(t, "1/2 done"+"\r\x1b[K"+"smtpsend: oops\n"+"2/2 done"+"\r\x1b[K"+"3/2 done"+"\r\x1b[K"+"smtpsend: after\n", errw.String())

	// Standard output on the same terminal.
	out.Reset()
	errw.Reset()
	c.StartProgress(func() string { return "p" }, true)
	c.Outf("x\n")
	c.StopProgress()
	assert.Equal(t, "x\n", out.String())
	assert.Equal(t, "p\r\x1b[Kp\r\x1b[K", errw.String())

	assert.False(t, isTerminal(&out), "a buffer is no terminal")
}

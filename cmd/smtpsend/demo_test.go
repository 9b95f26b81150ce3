package main

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoNoFlags is the README's first command: no flags, an embedded
// server, one sample message, exit 0.
func TestDemoNoFlags(t *testing.T) {
	o := runCLI(t, runOpts{})
	require.Equal(t, exitOK, o.code, o.all())
	assert.Empty(t, o.stderr)

	// The SMTP exchange, from the audit events, in order.
	wantInOrder(t, o.stdout,
		"--- SMTP exchange",
		"connect", "TLS from the first byte",
		"(greeting)", "-> 220",
		"EHLO", "-> 250",
		"AUTH PLAIN", "-> 235",
		"MAIL FROM:<"+demoFrom+">", "-> 250",
		"RCPT TO:<"+demoTo+">", "-> 250",
		"(the message, by BDAT)", "queued as DEMO0001",
		"QUIT", "-> 221",
		"--- outcome ---",
		"status:    sent",
		"queue id:  DEMO0001",
		"accepted:  "+demoTo,
		"--- the message as the server received it",
		"From: smtpsend demo <"+demoFrom+">",
		"To: <"+demoTo+">",
		"Subject: Hello from smtpkit",
		"\n.A line that starts with a dot arrives as written",
		"--- try next ---",
	)
	assert.NotContains(t, o.stdout, "\r", "the message is printed with the terminal's line endings")
	// The made-up password (a crypto/rand.Text) is never printed.
	assert.NotRegexp(t, `[A-Z2-7]{26}`, o.stdout, "no password in the output")
}

func TestDemoExitCodes(t *testing.T) {
	for _, tc := range []struct {
		to     string
		code   int
		status string
		want   []string
	}{
		{"reject@example.net", exitRefused, "refused", []string{"550 5.1.1", "permanent failure", "the server kept no message"}},
		{"defer@example.net", exitTempFail, "deferred", []string{"451 4.3.0", "temporary failure", "the server kept no message"}},
		{"drop@example.net", exitUnknown, "unknown", []string{"outcome unknown", "do not resend it blindly", "dropped the connection instead of saying so"}},
	} {
		t.Run(tc.status, func(t *testing.T) {
			o := runCLI(t, runOpts{}, "-to", tc.to)
			assert.Equal(t, tc.code, o.code)
			assert.Contains(t, o.stdout, "status:    "+tc.status)
			for _, w := range tc.want {
				assert.Contains(t, o.all(), w)
			}
			assert.NotContains(t, o.stdout, "--- try next ---")
		})
	}
}

func TestDemoFilesAndStdin(t *testing.T) {
	a := writeFile(t, "a.eml", eml("first", "one"))
	b := writeFile(t, "b.eml", eml("second", "two"))
	o := runCLI(t, runOpts{stdin: strings.NewReader(eml("third", "three"))}, a, "-", b)
	require.Equal(t, exitOK, o.code, o.all())
	for _, name := range []string{a, b, "<stdin>"} {
		assert.Regexp(t, `(?m)^sent +`+regexp.QuoteMeta(name)+`: queued as DEMO000\d$`, o.stdout)
	}
	assert.Regexp(t, `messages +sent +refused +deferred +config +unknown +time +msg/s\n3 +3 +0 +0 +0 +0 `, o.stdout)
	assert.NotContains(t, o.stdout, "--- SMTP exchange", "several messages print no exchange")

	// One message from a file prints the exchange and what arrived.
	o = runCLI(t, runOpts{}, "-from", "alice@example.com", "-to", "bob@example.org", a)
	require.Equal(t, exitOK, o.code, o.all())
	wantInOrder(t, o.stdout, "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>", "Subject: first", "one")
}

// wantInOrder checks that s contains each of parts, in this order.
func wantInOrder(t *testing.T, s string, parts ...string) {
	t.Helper()
	rest := s
	for _, p := range parts {
		i := strings.Index(rest, p)
		if !assert.GreaterOrEqual(t, i, 0, "missing, or out of order: %q", p) {
			return
		}
		rest = rest[i+len(p):]
	}
}

// TestStrictLineEndings: a file with LF line endings is converted to
// CRLF by default, and refused with -strict-line-endings (nothing sent).
func TestStrictLineEndings(t *testing.T) {
	file := writeFile(t, "lf.eml", eml("lf", "one\ntwo"))
	o := runCLI(t, runOpts{}, file)
	require.Equal(t, exitOK, o.code, o.all())
	assert.Contains(t, o.stdout, "one\ntwo\n")

	o = runCLI(t, runOpts{}, "-strict-line-endings", file)
	assert.Equal(t, exitRefused, o.code)
	assert.Contains(t, o.stderr, "failed at reading the message")
	assert.Contains(t, o.stderr, "bare LF")
	assert.Contains(t, o.stderr, "hint: the message has bare LF or CR line endings; leave out -strict-line-endings")
	assert.Contains(t, o.stdout, "the server kept no message")

	// CRLF files pass either way.
	o = runCLI(t, runOpts{}, "-strict-line-endings", writeFile(t, "crlf.eml", crlf(eml("crlf", "x"))))
	assert.Equal(t, exitOK, o.code, o.all())
}

// TestInterrupted: after an interrupt (the context ends), messages not yet
// sent are deferred, exit 75.
func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr syncBuffer
	a := writeFile(t, "a.eml", eml("a", "a"))
	b := writeFile(t, "b.eml", eml("b", "b"))
	code := run(ctx, []string{a, b}, strings.NewReader(""), &stdout, &stderr, func(string) string { return "" })
	assert.Equal(t, exitTempFail, code)
	assert.Regexp(t, `(?m)^deferred +\S+a\.eml: failed at waiting for a connection: not sent: context canceled$`, stdout.String())
	assert.Regexp(t, `\n2 +0 +0 +2 +0 +0 `, stdout.String())
}

package main

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// A server that echoes the AUTH exchange, for every mechanism, with and
// without -v: neither standard output nor standard error carries the
// password or token in any form, nor a control character from the
// server.

const (
	echoUser     = "alice@example.com"
	echoPassword = "Echo-Pass-w0rd-7f3a"
	echoToken    = "ya29.Echo-T0ken_abcdefghijklmnop"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// echoHello is a server's greeting and EHLO reply offering every
// mechanism.
func echoHello() []fs.Step {
	return []fs.Step{fs.Reply("220 mx.example ESMTP\r\n"), fs.ReadLine(),
		fs.Reply("250-mx.example\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER\r\n")}
}

// echoPrologue is what the server says before the client's line that
// carries the secret (or the SCRAM proof).
func echoPrologue(mech string) []fs.Step {
	switch mech {
	case smtp.MechLOGIN:
		return []fs.Step{fs.ReadLine(), fs.Reply("334 " + b64("Username:") + "\r\n"), fs.ReadLine(), fs.Reply("334 " + b64("Password:") + "\r\n")}
	case smtp.MechCRAMMD5:
		return []fs.Step{fs.ReadLine(), fs.Reply("334 " + b64("<1.2@mx.example>") + "\r\n")}
	case smtp.MechSCRAMSHA256:
		return []fs.Step{fs.EchoFunc(func(line string) string {
			first, _ := base64.StdEncoding.DecodeString(line[strings.LastIndexByte(line, ' ')+1:])
			_, nonce, _ := strings.Cut(string(first), ",r=")
			return "334 " + b64("r="+nonce+"srv,s="+b64("salt")+",i=4096") + "\r\n"
		})}
	}
	return nil
}

// forbiddenForms returns the forms of the secrets that must never be
// printed: raw, base64 in both alphabets, and inside the initial
// responses.
func forbiddenForms() []string {
	var out []string
	for _, raw := range []string{echoPassword, echoToken, "\x00" + echoUser + "\x00" + echoPassword,
		"user=" + echoUser + "\x01auth=Bearer " + echoToken + "\x01\x01"} {
		out = append(out, raw, b64(raw), base64.RawStdEncoding.EncodeToString([]byte(raw)), base64.URLEncoding.EncodeToString([]byte(raw)))
	}
	return out
}

func TestEchoingServerRedacted(t *testing.T) {
	msg := writeFile(t, "m.eml", eml("echo", "x"))
	tokFile := writeFile(t, "token", echoToken+"\n")
	mechs := []string{smtp.MechPLAIN, smtp.MechLOGIN, smtp.MechCRAMMD5, smtp.MechSCRAMSHA256, smtp.MechXOAUTH2, smtp.MechOAUTHBEARER}
	for _, mech := range mechs {
		for _, v := range []struct {
			name string
			echo string
			code int
		}{
			{"535", "535 5.7.8 Authentication failed: {line} {decoded}\x1b[2K\r\n", exitConfig},
			{"garbage", "{decoded} {line}\r\n", exitTempFail},
		} {
			for _, verbose := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/v=%v", mech, v.name, verbose)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					script := append(append(echoHello(), echoPrologue(mech)...), fs.Echo(v.echo))
					srv := fs.StartMulti(t, script, script, script)
					args := []string{"-server", srv.Addr(), "-tls", "plaintext", "-user", echoUser, "-auth", mech,
						"-from", "a@example.com", "-to", "b@example.net", "-timeout", "10s"}
					ro := runOpts{env: map[string]string{passwordEnv: echoPassword}}
					if mech == smtp.MechXOAUTH2 || mech == smtp.MechOAUTHBEARER {
						args = append(args, "-oauth-token-file", tokFile)
						ro.env = nil
					}
					if verbose {
						args = append(args, "-v")
					}
					o := runCLI(t, ro, append(args, msg)...)
					assert.Equal(t, v.code, o.code)
					out := o.all()
					for _, f := range forbiddenForms() {
						assert.NotContains(t, out, f)
					}
					if v.name == "535" {
						assert.Contains(t, out, "[redacted]", "the echo was printed, redacted")
					}
					assert.NotContains(t, out, "\x1b")
					assert.NotContains(t, out, "\x00")
					if verbose {
						assert.Contains(t, o.stderr, `msg="smtp auth"`)
					}
				})
			}
		}
	}
}

// TestSpoofedReplyEscaped: a refusal whose text would, printed as it is,
// erase the line and print a success over it is shown escaped, and the
// exit code still says refused.
func TestSpoofedReplyEscaped(t *testing.T) {
	msg := writeFile(t, "m.eml", eml("spoof", "x"))
	// RSET and QUIT, whichever comes, are answered.
	after := fs.EchoFunc(func(line string) string {
		if line == "QUIT" {
			return "221 bye\r\n"
		}
		return "250 ok\r\n"
	})
	for _, verbose := range []bool{false, true} {
		srv := fs.Start(t, fs.Reply("220 mx.example ESMTP\r\n"), fs.ReadLine(), fs.Reply("250 mx.example\r\n"),
			fs.ReadLine(), fs.Reply("550 5.7.1 no\r\x1b[2K\r sent m.eml: queued as 4Xk9Qz\a\r\n"), after, after)
		args := []string{"-server", srv.Addr(), "-tls", "plaintext", "-from", "a@example.com", "-to", "b@example.net", msg}
		if verbose {
			args = append([]string{"-v"}, args...)
		}
		o := runCLI(t, runOpts{}, args...)
		assert.Equal(t, exitRefused, o.code)
		out := o.all()
		assert.NotContains(t, out, "\x1b")
		assert.NotContains(t, out, "\r")
		assert.NotContains(t, out, "\a")
		assert.Contains(t, o.stderr, `no\r\x1b[2K\r sent m.eml: queued as 4Xk9Qz\a`)
	}
}

// TestConsoleFilters: whatever reaches the console, by any way, is
// printed without the run's secrets and without control characters;
// the line structure (LF, tab) stays.
func TestConsoleFilters(t *testing.T) {
	var out, errb syncBuffer
	con := newConsole(&out, &errb)
	con.Secret(echoPassword)
	con.Outf("a\t%s\n", "x509: certificate is valid for \x1b]0;evil\a"+echoPassword)
	con.Errf("%v\n", b64("\x00u\x00"+echoPassword))
	fmt.Fprintf(con.ErrWriter(), "level=WARN error=%q\n", echoPassword+"\x9b")
	all := out.String() + errb.String()
	assert.Equal(t, "a\tx509: certificate is valid for \\x1b]0;evil\\a[redacted]\n", out.String())
	assert.NotContains(t, all, echoPassword)
	assert.NotContains(t, all, "\x1b")
	assert.Equal(t, 3, strings.Count(all, "[redacted]"), all)
}

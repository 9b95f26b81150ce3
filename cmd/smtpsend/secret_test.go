package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/internal/testpeers"
)

// buildBinary builds smtpsend into a test directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			t.Skip("no go command to build smtpsend with")
		}
	}
	bin := filepath.Join(t.TempDir(), "smtpsend")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// TestPasswordNeverShown runs the built binary with the password in
// $SMTP_PASSWORD, the way a script would, and checks that the password is
// neither in the process's arguments (which ps shows to every user) nor
// in anything it prints, when the login succeeds and when it fails.
func TestPasswordNeverShown(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/PID/cmdline")
	}
	t.Parallel()
	const pass = "Tr0ub4dor-and-3-horses"
	bin := buildBinary(t)
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{
		Mode:         testpeers.ImplicitTLS,
		Auth:         map[string]string{"alice": pass},
		AuthRequired: true,
		// Hold the session at MAIL so the process is alive to be looked at.
		Delay: func(stage string) time.Duration {
			if stage == "MAIL" {
				return 500 * time.Millisecond
			}
			return 0
		},
	})
	msg := writeFile(t, "m.eml", eml("secret test", "body"))

	runBin := func(password string, extra ...string) (code int, output, cmdline string) {
		args := append([]string{"-server", srv.Addr(), "-ca-file", srv.Cert().CertFile,
			"-user", "alice", "-from", "alice@example.com", "-to", "bob@localhost"}, extra...)
		args = append(args, msg)
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), passwordEnv+"="+password)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		// The process is alive (held at MAIL, or retrying its login):
		// read what ps would show.
		time.Sleep(100 * time.Millisecond)
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/cmdline")
		require.NoError(t, err)
		err = cmd.Wait()
		code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		t.Logf("exit %d\n%s", code, out.String())
		return code, out.String(), strings.ReplaceAll(string(raw), "\x00", " ")
	}

	code, output, cmdline := runBin(pass)
	assert.Equal(t, exitOK, code)
	assert.Contains(t, cmdline, "-user alice", "the arguments were read")
	assert.NotContains(t, cmdline, pass)
	assert.NotContains(t, output, pass)
	assert.Contains(t, output, "AUTH PLAIN")
	assert.Equal(t, int64(1), srv.Count())

	// A wrong password: the setup's to fix (78), and still never shown.
	wrong := pass + "-wrong"
	code, output, cmdline = runBin(wrong)
	assert.Equal(t, exitConfig, code)
	assert.Contains(t, output, "failed at logging in (AUTH)")
	assert.NotContains(t, cmdline, "Tr0ub4dor")
	assert.NotContains(t, output, "Tr0ub4dor")

	// With -v every audit event is logged; none carries the password.
	code, output, _ = runBin(pass, "-v")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, output, `msg="smtp auth"`)
	assert.NotContains(t, output, pass)

	// A server that echoes the AUTH line, decoded and not, in its refusal
	// (see TestEchoingServerRedacted for every mechanism, in-process).
	for _, verbose := range []bool{false, true} {
		echo := fs.Start(t, append(echoHello(), fs.Echo("535 5.7.8 failed: {line} {decoded}\r\n"))...)
		args := []string{"-server", echo.Addr(), "-tls", "plaintext", "-user", "alice", "-auth", "PLAIN",
			"-from", "alice@example.com", "-to", "bob@localhost", msg}
		if verbose {
			args = append([]string{"-v"}, args...)
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), passwordEnv+"="+pass)
		out, err := cmd.CombinedOutput()
		t.Logf("%v\n%s", err, out)
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, exitConfig, ee.ExitCode())
		assert.Contains(t, string(out), "[redacted]")
		for _, f := range []string{pass, b64(pass), b64("\x00alice\x00" + pass)} {
			assert.NotContains(t, string(out), f)
		}
	}
}

// TestNoFlagTakesAPassword: there is no flag a password could be given
// with, and the refusal does not echo the value.
func TestNoFlagTakesAPassword(t *testing.T) {
	for _, name := range []string{"password", "pass", "pw", "secret", "p"} {
		o := runCLI(t, runOpts{}, "-server", "127.0.0.1:465", "-user", "u", "-"+name+"=hunter2", "-from", "a@example.com", "-to", "b@example.net")
		assert.Equal(t, exitUsage, o.code, name)
		assert.NotContains(t, o.all(), "hunter2")
	}
	names := flagNames(t)
	assert.Contains(t, names, "password-file")
	for _, name := range names {
		if strings.Contains(strings.ToLower(name), "pass") {
			assert.Equal(t, "password-file", name, "the one flag that names a password takes a file, not a value")
		}
	}
}

// flagNames lists smtpsend's flags, from its usage text.
func flagNames(t *testing.T) []string {
	t.Helper()
	var usage strings.Builder
	_, err := parseArgs([]string{"-h"}, &usage)
	require.Error(t, err)
	var names []string
	for _, line := range strings.Split(usage.String(), "\n") {
		if strings.HasPrefix(line, "  -") {
			f := strings.Fields(line)[0]
			names = append(names, strings.TrimPrefix(f, "-"))
		}
	}
	require.NotEmpty(t, names)
	return names
}

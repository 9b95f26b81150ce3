package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUsageErrors: every mistake on the command line exits 64 before
// anything is dialed. None of these touch the network: the non-loopback
// names are refused before any lookup.
func TestUsageErrors(t *testing.T) {
	msg := writeFile(t, "m.eml", eml("usage", "x"))
	pwFile := writeFile(t, "pw", "s3cret\n")
	emptyFile := writeFile(t, "empty", "\n")
	notPEM := writeFile(t, "ca.pem", "not a certificate\n")
	missing := filepath.Join(t.TempDir(), "missing.eml")
	srv := []string{"-server", "127.0.0.1:1", "-from", "a@example.com", "-to", "b@example.net"}
	with := func(extra ...string) []string { return append(append([]string{}, srv...), extra...) }

	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"-bogus"}, nil, "flag provided but not defined: -bogus"},
		{"no password flag", with("-user", "u", "-password", "hunter2", msg), nil, "flag provided but not defined: -password"},
		{"bad tls mode", with("-tls", "ssl", msg), nil, `-tls "ssl": want implicit, starttls or plaintext`},
		{"plaintext to a remote host", []string{"-server", "smtp.example.com:25", "-tls", "plaintext", "-from", "a@example.com", "-to", "b@example.net", msg}, nil, "not loopback; add -insecure"},
		{"plaintext to a remote IP", []string{"-server", "192.0.2.1:25", "-tls", "plaintext", "-from", "a@example.com", "-to", "b@example.net", msg}, nil, "not loopback"},
		{"insecure without plaintext", with("-insecure", msg), nil, "-insecure only relaxes -tls plaintext"},
		{"ca-file with plaintext", with("-tls", "plaintext", "-ca-file", notPEM, msg), nil, "-ca-file has no use with -tls plaintext"},
		{"server without port", []string{"-server", "smtp.example.com", "-from", "a@example.com", "-to", "b@example.net", msg}, nil, "want host:port"},
		{"server bad port", []string{"-server", "smtp.example.com:99999", "-from", "a@example.com", "-to", "b@example.net", msg}, nil, "bad port"},
		{"no from", []string{"-server", "127.0.0.1:1", "-to", "b@example.net", msg}, nil, "-from is required"},
		{"no to", []string{"-server", "127.0.0.1:1", "-from", "a@example.com", msg}, nil, "at least one -to"},
		{"empty to", with("-to", "", msg), nil, "empty address"},
		{"user without password", with("-user", "u", msg), nil, "needs a password: set $SMTP_PASSWORD or pass -password-file"},
		{"password file without user", with("-password-file", pwFile, msg), nil, "need -user"},
		{"missing password file", with("-user", "u", "-password-file", missing, msg), nil, "-password-file: open " + missing},
		{"empty password file", with("-user", "u", "-password-file", emptyFile, msg), nil, "the first line is empty"},
		{"unknown mechanism", with("-user", "u", "-auth", "DIGEST-MD5", msg), map[string]string{passwordEnv: "pw"}, `unknown mechanism`},
		{"token mechanism without token", with("-user", "u", "-auth", "xoauth2", msg), map[string]string{passwordEnv: "pw"}, "-auth XOAUTH2 needs -oauth-token-file"},
		{"token file with password mechanism", with("-user", "u", "-auth", "PLAIN", "-oauth-token-file", pwFile, msg), nil, "needs -auth XOAUTH2 or OAUTHBEARER"},
		{"token and password files", with("-user", "u", "-oauth-token-file", pwFile, "-password-file", pwFile, msg), nil, "exclude each other"},
		{"missing ca file", with("-ca-file", missing, msg), nil, "-ca-file: open " + missing},
		{"ca file without PEM", with("-ca-file", notPEM, msg), nil, "no PEM certificate"},
		{"missing message", with(missing), nil, "open " + missing},
		{"directory as message", with(t.TempDir()), nil, "is a directory"},
		{"stdin twice", with("-", "-"), nil, "only once"},
		{"zero timeout", with("-timeout", "0s", msg), nil, "-timeout must be positive"},
		{"too many conns", with("-conns", "1000", msg), nil, "-conns must be between 1 and 100"},
		{"demo with user", []string{"-user", "u"}, nil, "-user needs -server"},
		{"demo with tls", []string{"-tls", "starttls"}, nil, "-tls needs -server"},
		{"demo with missing file", []string{missing}, nil, "open " + missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := runCLI(t, runOpts{env: tc.env}, tc.args...)
			assert.Equal(t, exitUsage, o.code)
			assert.Contains(t, o.stderr, tc.want)
			assert.Empty(t, o.stdout, "nothing was sent, nothing reported")
			assert.NotContains(t, o.all(), "hunter2")
			assert.NotContains(t, o.all(), "s3cret")
		})
	}
}

func TestHelp(t *testing.T) {
	o := runCLI(t, runOpts{}, "-h")
	require.Equal(t, exitOK, o.code)
	for _, w := range []string{"usage: smtpsend", "-server host:port", "$SMTP_PASSWORD", "76 > 78 > 75 > 65 > 0", "-verify", "-oauth-token-file", "-conns"} {
		assert.Contains(t, o.stderr, w)
	}
}

func TestTLSModeDefaults(t *testing.T) {
	for _, tc := range []struct{ server, want string }{
		{"smtp.example.com:465", "implicit"},
		{"smtp.example.com:587", "starttls"},
		{"smtp.example.com:25", "starttls"},
		{"127.0.0.1:2525", "implicit"},
	} {
		o, err := parseArgs([]string{"-server", tc.server, "-from", "a@example.com", "-to", "b@example.net"}, &strings.Builder{})
		require.NoError(t, err)
		assert.Equal(t, tc.want, o.tlsMode, tc.server)
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST": true, "127.0.0.1": true, "127.1.2.3": true, "::1": true,
		"localhost.example.com": false, "10.0.0.1": false, "192.168.1.1": false, "smtp.example.com": false, "": false,
	} {
		assert.Equal(t, want, isLoopback(host), host)
	}
}

func TestNullSender(t *testing.T) {
	o, err := parseArgs([]string{"-server", "127.0.0.1:465", "-from", "<>", "-to", "b@example.net"}, &strings.Builder{})
	require.NoError(t, err)
	assert.Equal(t, "", o.from)
}

func TestReadSecretFile(t *testing.T) {
	for content, want := range map[string]string{
		"pw\n":         "pw",
		"pw\r\n":       "pw",
		"pw":           "pw",
		"pw\nextra\n":  "pw",
		" spaced pw\n": " spaced pw",
	} {
		got, warning, err := readSecretFile("-password-file", writeFile(t, "pw", content))
		require.NoError(t, err)
		assert.Equal(t, want, got)
		assert.Empty(t, warning)
	}
	_, _, err := readSecretFile("-password-file", writeFile(t, "pw", ""))
	assert.ErrorContains(t, err, "first line is empty")
}

// TestReadSecretFileLimits: the size is capped (and a file that never
// ends, /dev/zero, ends the read at the cap), a file others can write
// is refused, and one others can read is used with a warning.
func TestReadSecretFileLimits(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix permissions")
	}
	big := writeFile(t, "big", strings.Repeat("x", maxSecretFile+1))
	_, _, err := readSecretFile("-password-file", big)
	assert.ErrorContains(t, err, "larger than 64 KiB")
	assert.NotContains(t, err.Error(), "xxxx")

	zero := filepath.Join(t.TempDir(), "zero")
	require.NoError(t, os.Symlink("/dev/zero", zero))
	_, _, err = readSecretFile("-password-file", zero)
	require.Error(t, err, "/dev/zero is refused (others can write it) and never read past the cap")

	// A pipe that never ends, which others cannot write: the cap ends
	// the read.
	if mkfifo, err := exec.LookPath("mkfifo"); err == nil {
		fifo := filepath.Join(t.TempDir(), "fifo")
		require.NoError(t, exec.Command(mkfifo, "-m", "600", fifo).Run())
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			defer f.Close()
			zeros := make([]byte, 4096)
			for {
				if _, err := f.Write(zeros); err != nil {
					return // the reader closed the pipe
				}
			}
		}()
		_, _, err = readSecretFile("-password-file", fifo)
		assert.ErrorContains(t, err, "larger than 64 KiB")
		<-done
	}

	for _, mode := range []os.FileMode{0o666, 0o620, 0o602, 0o660} {
		path := writeFile(t, "pw", "secret-pw\n")
		require.NoError(t, os.Chmod(path, mode))
		_, _, err := readSecretFile("-password-file", path)
		assert.ErrorContains(t, err, "others can write the file", "mode %o", mode)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o444} {
		path := writeFile(t, "pw", "secret-pw\n")
		require.NoError(t, os.Chmod(path, mode))
		got, warning, err := readSecretFile("-password-file", path)
		require.NoError(t, err, "mode %o", mode)
		assert.Equal(t, "secret-pw", got)
		assert.Contains(t, warning, "others can read the file", "mode %o", mode)
	}

	// Through the command: refused is a usage error that names the file
	// but not its content; readable by others is a warning on stderr.
	path := writeFile(t, "pw", "secret-pw\n")
	require.NoError(t, os.Chmod(path, 0o666))
	o := runCLI(t, runOpts{}, "-server", "127.0.0.1:1", "-tls", "plaintext", "-user", "u", "-password-file", path, "-from", "a@example.com", "-to", "b@example.net")
	assert.Equal(t, exitUsage, o.code)
	assert.Contains(t, o.stderr, "others can write the file")
	assert.NotContains(t, o.all(), "secret-pw")
}

package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// outcome is what one in-process run of smtpsend did.
type outcome struct {
	code           int
	stdout, stderr string
}

// all is everything the run printed.
func (o outcome) all() string { return o.stdout + o.stderr }

// runOpts configures runCLI.
type runOpts struct {
	stdin io.Reader
	env   map[string]string
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a run
// (its console serialises them already; this makes the test's own reads
// safe too).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCLI runs smtpsend in-process with args and returns what it did. The
// environment holds only what ro.env says.
func runCLI(t *testing.T, ro runOpts, args ...string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	env := func(k string) string { return ro.env[k] }
	stdin := ro.stdin
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	code := run(ctx, args, stdin, &stdout, &stderr, env)
	o := outcome{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("smtpsend %s\n-> exit %d\n[stdout]\n%s[stderr]\n%s", strings.Join(args, " "), code, o.stdout, o.stderr)
	if pw := ro.env[passwordEnv]; pw != "" {
		assert.NotContains(t, o.all(), pw, "the password is never printed")
	}
	return o
}

// writeFile writes content to a new file in a test directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// eml returns a small message with LF line endings, as a file written on
// Unix has.
func eml(subject, body string) string {
	return "From: Alice <alice@example.com>\nTo: Bob <bob@localhost>\nSubject: " + subject +
		"\nMessage-ID: <" + strings.ReplaceAll(strings.ToLower(subject), " ", "-") + "@example.com>\n\n" + body + "\n"
}

// crlf converts LF line endings to CRLF.
func crlf(s string) string {
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// writeFileAt writes content to path.
func writeFileAt(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}

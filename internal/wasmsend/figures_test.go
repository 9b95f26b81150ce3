package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/testpeers"
)

// TestWasmFigures measures, in one run, what docs/wasm.md reports: the
// program's size (raw and gzip) for each target, its start-up time, and
// messages per second sending plaintext to Mailpit, natively, under
// wazero and under Node.js. It needs $SMTPKIT_WASMSEND=1 and
// $SMTPKIT_WASMSEND_FIGURES=1; it measures, it checks nothing.
func TestWasmFigures(t *testing.T) {
	if os.Getenv("SMTPKIT_WASMSEND_FIGURES") != "1" {
		t.Skip("a measurement for docs/wasm.md: set $SMTPKIT_WASMSEND=1 and $SMTPKIT_WASMSEND_FIGURES=1")
	}
	h := newWasmHost(t)
	native := filepath.Join(h.dir, "wasmsend-native")
	if out, err := exec.Command("go", "build", "-o", native, ".").CombinedOutput(); err != nil {
		t.Fatalf("native build: %v\n%s", err, out)
	}
	for _, f := range []string{native, h.wasm("wasip1"), h.wasm("js")} {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var gz bytes.Buffer
		w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		_, _ = w.Write(raw)
		_ = w.Close()
		t.Logf("size %-20s %6.2f MiB raw, %5.2f MiB gzip -9", filepath.Base(f), mib(len(raw)), mib(gz.Len()))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := func(name string, cmd *exec.Cmd, done func()) (time.Duration, string) {
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		done()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, stderr.Bytes())
		}
		return took, string(bytes.TrimSpace(stderr.Bytes()))
	}
	targets := []string{"native", "wasip1", "js"}
	command := func(target, addr string, args ...string) (*exec.Cmd, func()) {
		if target == "native" {
			return exec.CommandContext(ctx, native, append([]string{"-addr", addr}, args...)...), func() {}
		}
		return h.command(ctx, t, target, addr, "", args...)
	}
	// Start-up: the first wazero run compiles the module into the cache
	// (cold); later runs load it (warm).
	for _, target := range targets {
		for i, label := range []string{"first", "second", "third"} {
			cmd, done := command(target, "", "-startup")
			took, _ := run(target+" start-up", cmd, done)
			t.Logf("start-up %-6s %-6s run: %v", target, label, took.Round(time.Millisecond))
			if target != "wasip1" && i == 1 {
				break
			}
		}
	}
	m := testpeers.Mailpit(t, testpeers.MailpitOptions{})
	const n = 200
	rate := regexp.MustCompile(`[0-9]+ msg/s`)
	for _, target := range targets {
		cmd, done := command(target, m.SMTPAddr(), "-mode", "plain", "-n", fmt.Sprint(n), "-run", "figures-"+target)
		_, out := run(target+" send", cmd, done)
		t.Logf("throughput %-6s %s (%s)", target, rate.FindString(out), out)
	}
}

func mib(n int) float64 { return float64(n) / (1 << 20) }

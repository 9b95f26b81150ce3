package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpkit/smtpkit/internal/delayline"
	"github.com/smtpkit/smtpkit/internal/testpeers"
)

// The peers (sinks) and the delay lines run in helper processes: the
// benchmark binary started again with envHelper set. The process that
// measures then holds only the client under test, so its CPU time, its
// garbage collector and runtime.MemStats belong to the client alone. Two
// helpers run: one hosts the sinks, the other the delay lines, so a
// busy sink does not delay the line's timing.
const envHelper = "SMTPKIT_BENCH_HELPER"

// isHelper reports whether this process was started as a helper.
func isHelper() bool { return os.Getenv(envHelper) == "1" }

// helperMain serves commands, one per line on stdin, answering each on
// stdout with "ok [VALUE]" or "err MESSAGE". Closing stdin stops every
// peer and line and ends the process. It returns the exit code.
func helperMain() int {
	// Peers are exec'd from this thread and die with it (Pdeathsig):
	// keep it alive, and never hand it to another goroutine.
	runtime.LockOSThread()
	// An interrupt reaches the whole process group; the parent stops us
	// by closing stdin, after which the cleanups run.
	signal.Ignore(os.Interrupt)
	h := &peerHost{tb: &hostTB{name: "bench-helper"}, lines: map[string]*delayline.Line{}}
	defer h.tb.runCleanups()
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		val, err := h.do(strings.Fields(in.Text()))
		if err != nil {
			fmt.Fprintf(out, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " | "))
		} else {
			fmt.Fprintf(out, "ok %s\n", val)
		}
		out.Flush()
	}
	return 0
}

// peerHost is the state of a helper process; only its main goroutine
// touches it.
type peerHost struct {
	tb      *hostTB
	gosmtp  *testpeers.GoSMTPServer
	lines   map[string]*delayline.Line
	profile *os.File
}

func (h *peerHost) do(args []string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("empty command")
	}
	switch args[0] {
	case "gosmtp":
		return h.tb.try(func(tb testing.TB) string {
			h.gosmtp = testpeers.GoSMTP(tb, testpeers.GoSMTPOptions{DiscardBodies: true})
			return h.gosmtp.Addr()
		})
	case "gosmtp-tls":
		// Implicit TLS with AUTH PLAIN/LOGIN required, as a submission
		// server on port 465 runs: "ADDR CERTFILE".
		return h.tb.try(func(tb testing.TB) string {
			s := testpeers.GoSMTP(tb, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, DiscardBodies: true,
				Auth: map[string]string{benchUser: benchPass}, AuthRequired: true})
			return s.Addr() + " " + s.Cert().CertFile
		})
	case "count":
		if h.gosmtp == nil {
			return "0", nil
		}
		return strconv.FormatInt(h.gosmtp.Count(), 10), nil
	case "smtp-sink":
		return h.tb.try(func(tb testing.TB) string { return testpeers.SMTPSink(tb).Addr() })
	case "smtp-source":
		return h.tb.try(func(tb testing.TB) string { return testpeers.SMTPSourcePath(tb) })
	case "postfix":
		return h.tb.try(func(tb testing.TB) string {
			return testpeers.Postfix(tb, testpeers.PostfixOptions{}).PlainAuthAddr()
		})
	case "cpu":
		// The CPU time this process (the sinks) has used, in ns.
		d, ok := cpuTime()
		if !ok {
			return "-1", nil
		}
		return strconv.FormatInt(int64(d), 10), nil
	case "echo":
		return h.echo()
	case "line":
		if len(args) != 3 {
			return "", errors.New("usage: line TARGET ONE_WAY_NS")
		}
		ns, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return "", err
		}
		l, err := delayline.Start(args[1], time.Duration(ns))
		if err != nil {
			return "", err
		}
		h.lines[l.Addr()] = l
		h.tb.Cleanup(func() { l.Close() })
		return l.Addr(), nil
	case "unline":
		if l := h.lines[args[len(args)-1]]; l != nil {
			delete(h.lines, l.Addr())
			return "", l.Close()
		}
		return "", nil
	case "cpuprofile":
		return h.cpuProfile(args)
	}
	return "", fmt.Errorf("unknown command %q", args[0])
}

// cpuProfile starts a CPU profile of this process into the file named
// by args[1], stopped when the helper ends.
func (h *peerHost) cpuProfile(args []string) (string, error) {
	if len(args) != 2 || h.profile != nil {
		return "", errors.New("usage: cpuprofile FILE (once)")
	}
	f, err := os.Create(args[1])
	if err != nil {
		return "", err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return "", err
	}
	h.profile = f
	h.tb.Cleanup(func() {
		pprof.StopCPUProfile()
		f.Close()
	})
	return "", nil
}

// echo starts a loopback echo server, for measuring a line's round trip.
func (h *peerHost) echo() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	h.tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), nil
}

// hostTB lets the testpeers starters, written for tests, run in a
// program: it implements every testing.TB method they use. Fatal and
// Skip unwind to [hostTB.try] with a panic instead of ending a test.
// The embedded interface is nil; it only supplies the unexported method
// that keeps other packages from implementing testing.TB.
type hostTB struct {
	testing.TB
	name string

	mu       sync.Mutex // guards the fields below
	cleanups []func()
	failed   bool
	ctx      context.Context
	cancel   context.CancelFunc
}

type tbStop struct {
	skip bool
	msg  string
}

func (t *hostTB) try(f func(testing.TB) string) (val string, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, ok := r.(tbStop)
			if !ok {
				panic(r)
			}
			if s.skip {
				err = fmt.Errorf("unavailable: %s", s.msg)
			} else {
				err = errors.New(s.msg)
			}
		}
	}()
	return f(t), nil
}

func (t *hostTB) runCleanups() {
	t.mu.Lock()
	if t.cancel != nil {
		t.cancel()
	}
	t.mu.Unlock()
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		f()
	}
}

func (t *hostTB) logf(format string, args ...any) {
	if os.Getenv("SMTPKIT_BENCH_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "bench helper: "+format+"\n", args...)
	}
}

func (t *hostTB) Helper()                 {}
func (t *hostTB) Name() string            { return t.name }
func (t *hostTB) Log(args ...any)         { t.logf("%s", fmt.Sprint(args...)) }
func (t *hostTB) Logf(f string, a ...any) { t.logf(f, a...) }
func (t *hostTB) Output() io.Writer       { return os.Stderr }
func (t *hostTB) Attr(key, value string)  {}
func (t *hostTB) Error(args ...any)       { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *hostTB) Errorf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench helper: "+f+"\n", a...)
	t.Fail()
}
func (t *hostTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}
func (t *hostTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *hostTB) FailNow()                  { t.Fail(); panic(tbStop{msg: "FailNow"}) }
func (t *hostTB) Fatal(args ...any)         { t.Fail(); panic(tbStop{msg: fmt.Sprint(args...)}) }
func (t *hostTB) Fatalf(f string, a ...any) { t.Fail(); panic(tbStop{msg: fmt.Sprintf(f, a...)}) }
func (t *hostTB) Skip(args ...any)          { panic(tbStop{skip: true, msg: fmt.Sprint(args...)}) }
func (t *hostTB) SkipNow()                  { panic(tbStop{skip: true, msg: "SkipNow"}) }
func (t *hostTB) Skipf(f string, a ...any)  { panic(tbStop{skip: true, msg: fmt.Sprintf(f, a...)}) }
func (t *hostTB) Skipped() bool             { return false }
func (t *hostTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}
func (t *hostTB) TempDir() string {
	dir, err := os.MkdirTemp("", "smtpkit-bench-")
	if err != nil {
		t.Fatalf("TempDir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
func (t *hostTB) ArtifactDir() string { return t.TempDir() }
func (t *hostTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	t.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}
func (t *hostTB) Chdir(dir string) { t.Fatalf("Chdir is not supported in the bench helper") }
func (t *hostTB) Context() context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx == nil {
		t.ctx, t.cancel = context.WithCancel(context.Background())
	}
	return t.ctx
}

// helper is the measuring process's handle on a helper process.
type helper struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	done chan struct{}

	mu sync.Mutex // serialises commands
}

// startHelper starts this binary again as a helper.
func startHelper() (*helper, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Stderr = os.Stderr
	in, out, err := startPiped(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting bench helper %s: %w", filepath.Base(exe), err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewReader(out), done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(h.done)
	}()
	return h, nil
}

// startPiped starts cmd, killed if this process dies, with pipes to its
// stdin and from its stdout.
func startPiped(cmd *exec.Cmd) (io.WriteCloser, io.ReadCloser, error) {
	cmd.SysProcAttr = helperAttr()
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return in, out, nil
}

// call sends one command and returns the helper's answer.
func (h *helper) call(args ...string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := fmt.Fprintln(h.in, strings.Join(args, " ")); err != nil {
		return "", fmt.Errorf("bench helper: %w", err)
	}
	line, err := h.out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("bench helper (%s): %w", args[0], err)
	}
	line = strings.TrimSuffix(line, "\n")
	if v, ok := strings.CutPrefix(line, "ok"); ok {
		return strings.TrimSpace(v), nil
	}
	return "", fmt.Errorf("%s: %s", args[0], strings.TrimPrefix(line, "err "))
}

// close stops the helper: closing its stdin makes it stop its peers and
// exit; it is killed if it has not within 30 s.
func (h *helper) close() {
	h.in.Close()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		h.cmd.Process.Signal(syscall.SIGKILL)
		<-h.done
	}
}

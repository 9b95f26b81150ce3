package testpeers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment
// ago. All n listeners are open at once, so the ports differ; another process
// may still take one before the peer binds it, which the peers handle by
// retrying with new ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitBanner connects to addr until it reads a "220" greeting (over TLS when
// tlsConf is not nil) or the deadline passes. alive, if not nil, is polled to
// give up early when the server has died.
func waitBanner(addr string, tlsConf *tls.Config, deadline time.Time, alive func() error) error {
	var last error
	for {
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		last = probeBanner(addr, tlsConf)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no SMTP greeting from %s: %w", addr, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func probeBanner(addr string, tlsConf *tls.Config) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			return err
		}
		c = tc
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

// listening reports whether something listens on 127.0.0.1:port, looking at
// /proc/net/tcp so that no connection is made (smtp-sink counts sessions).
// ok is false when /proc cannot tell.
func listening(port int) (yes, ok bool) {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false, false
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	any := fmt.Sprintf("00000000:%04X", port)
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && (f[1] == want || f[1] == any) && f[3] == "0A" {
			return true, true
		}
	}
	return false, true
}

// pidAlive reports whether pid is a live process: one that exists and is
// not a zombie waiting for init (which may be slow) to reap it.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false
		}
		// No /proc: ask the kernel.
		return syscall.Kill(pid, 0) == nil
	}
	// pid (comm) state ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}

// blockedAncestor returns the first ancestor of dir that others cannot
// search, if any.
func blockedAncestor(dir string) (string, bool) {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return d, false
		}
		if d == filepath.Dir(d) {
			return "", true
		}
	}
}

// instancePIDs lists the processes whose environment holds MAIL_CONFIG=dir,
// that is every process of the Postfix instance configured in dir (master
// passes MAIL_CONFIG on to all its daemons).
func instancePIDs(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needle := []byte("\x00MAIL_CONFIG=" + dir + "\x00")
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || len(env) == 0 {
			continue
		}
		env = append([]byte{0}, env...)
		if env[len(env)-1] != 0 {
			env = append(env, 0)
		}
		if bytes.Contains(env, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Proc is a peer program started by this package, such as [SMTPSink]. It is
// stopped when the test ends.
type Proc struct {
	addr    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error

	stopOnce sync.Once
}

// Addr returns the "host:port" the program listens on.
func (p *Proc) Addr() string { return p.addr }

// Port returns the port the program listens on.
func (p *Proc) Port() int {
	_, port, _ := net.SplitHostPort(p.addr)
	n, _ := strconv.Atoi(port)
	return n
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output returns what the program wrote to stdout and stderr so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Exited reports whether the program has ended, and its Wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop ends the program (SIGTERM, then SIGKILL after 5 s) and waits for it.
// It is called when the test ends; calling it again is harmless.
func (p *Proc) Stop() error {
	var err error
	p.stopOnce.Do(func() { err = stopCmd(p.cmd, p.done, 5*time.Second) })
	return err
}

// startProc starts argv with its output in logPath, in its own process group
// and (on Linux) killed when the test process dies.
func startProc(argv []string, env []string, logPath string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = childAttr(true)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stopCmd sends SIGTERM to cmd's process group, then SIGKILL after grace,
// and waits for the process to be reaped.
func stopCmd(cmd *exec.Cmd, done <-chan struct{}, grace time.Duration) error {
	select {
	case <-done:
		return nil
	default:
	}
	pid := cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	select {
	case <-done:
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for %v and was killed", filepath.Base(cmd.Path), pid, grace)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", filepath.Base(cmd.Path), pid)
	}
}

// runCapture runs argv, returning its combined output. With viaScript it
// runs under script(1) so that the program sees a terminal: Postfix commands
// print their errors only to a terminal (and syslog, which a test machine
// may lack).
func runCapture(ctx context.Context, viaScript bool, env []string, argv ...string) (string, error) {
	if viaScript {
		if sp, err := exec.LookPath("script"); err == nil {
			quoted := make([]string, len(argv))
			for i, a := range argv {
				quoted[i] = shellQuote(a)
			}
			argv = []string{sp, "-qec", strings.Join(quoted, " "), "/dev/null"}
		}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = childAttr(false)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	text := strings.ReplaceAll(string(out), "\r\n", "\n")
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return text, err
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// cleanEnv returns the environment for a peer process, without variables
// that would redirect it (MAIL_CONFIG for Postfix, MP_* for Mailpit).
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "MAIL_CONFIG" || strings.HasPrefix(k, "MP_") || k == "LANG" || strings.HasPrefix(k, "LC_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LANG=C")
	return append(env, extra...)
}

// tail returns the last n bytes of s, marking a cut.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// addrInUse reports whether a log says a port was taken.
func addrInUse(log string) bool {
	return strings.Contains(log, "ddress already in use")
}

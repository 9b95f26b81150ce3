package testpeers

import (
	"context"

	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Credentials and domain of every [Postfix] instance.
const (
	// PostfixUser is the SASL user in each instance's sasldb.
	PostfixUser = "testuser"
	// PostfixPass is PostfixUser's password.
	PostfixPass = "testpass"
	// PostfixDomain is the instance's only local domain: recipients
	// @localhost are accepted without AUTH, any other domain is relaying and
	// needs AUTH (unless OpenRelay).
	PostfixDomain = "localhost"
)

// PostfixMechanisms lists the SASL mechanisms each instance offers (after
// STARTTLS, or at once on the implicit-TLS and plaintext-AUTH ports).
var PostfixMechanisms = []string{"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"}

// Bounds: postfixCmdTimeout for "postfix check" and "postfix start" (both
// slow shell scripts on a loaded machine), postfixReadyTimeout for the
// listeners to greet once start has returned, postfixStopTimeout for
// "postfix stop".
const (
	postfixCmdTimeout   = 60 * time.Second
	postfixReadyTimeout = 20 * time.Second
	postfixStopTimeout  = 15 * time.Second
)

// PostfixOptions configures [Postfix]. The zero value discards all mail and
// allows 50 MiB messages.
type PostfixOptions struct {
	// MessageSizeLimit is message_size_limit in bytes; 52428800 when 0.
	MessageSizeLimit int64
	// ForbidBareNewline sets smtpd_forbid_bare_newline = reject with no
	// exclusions, so that a bare LF in DATA earns "550 5.5.2". (By default
	// this Postfix accepts bare LF, and loopback is excluded anyway.)
	ForbidBareNewline bool
	// Deliver stores every accepted message, once per recipient, in a
	// maildir that [PostfixServer.Delivered] reads, instead of discarding
	// it.
	Deliver bool
	// OpenRelay accepts any recipient from loopback without AUTH
	// (permit_mynetworks). By default only @localhost is accepted without
	// AUTH and other domains get "554 5.7.1 Relay access denied".
	OpenRelay bool
	// Cert is the certificate to present; when nil, the shared test
	// certificate (see NewCert), written inside the instance directory.
	Cert *Cert
	// MainCF holds extra main.cf lines ("name = value"), appended last so
	// they override the defaults.
	MainCF []string
}

// PostfixServer is a private Postfix instance started by [Postfix].
type PostfixServer struct {
	base     string // everything lives here
	confDir  string // config_directory
	maildir  string // virtual delivery target (with Deliver)
	logPath  string // maillog_file
	ports    []int  // starttls, implicit TLS, plaintext AUTH
	cert     *Cert
	deliver  bool
	watchdog *exec.Cmd
	wdDone   chan struct{}
	wdPipe   *os.File

	stopOnce sync.Once
	stopErr  error
}

// Postfix starts a private Postfix 3 instance on free loopback ports and
// stops it (and every process of it) when the test ends. It needs root, the
// postfix package and sasl2-bin; without them the test is skipped (see
// [Require]).
//
// The instance has three smtpd listeners: [PostfixServer.StartTLSAddr]
// (STARTTLS offered, AUTH only after it), [PostfixServer.ImplicitTLSAddr]
// (TLS from the first byte) and [PostfixServer.PlainAuthAddr] (AUTH offered
// without TLS; STARTTLS is offered too). Users: [PostfixUser]/[PostfixPass] in a sasldb,
// mechanisms [PostfixMechanisms]. SMTPUTF8 is enabled. The end-of-data reply
// is Postfix's own "250 2.0.0 Ok: queued as ID".
//
// It uses its own config, queue and data directories and never the
// system-wide ones, so several instances (in several test processes) can run
// at once. A watchdog process stops the instance if the test process dies
// without running its cleanups.
func Postfix(t testing.TB, opts PostfixOptions) *PostfixServer {
	t.Helper()
	postfixBin := Require(t, ProgPostfix)
	saslpasswd := Require(t, ProgSaslpasswd2)
	if os.Geteuid() != 0 {
		Unavailable(t, "a private Postfix instance must be started as root (running as uid %d)", os.Geteuid())
	}
	if !haveSASLPlugins() {
		Unavailable(t, "Cyrus SASL plugins (libplain.so) not found; %s", installHint(ProgSaslpasswd2))
	}
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		Unavailable(t, "no postfix user (%v); %s", err, installHint(ProgPostfix))
	}
	if opts.MessageSizeLimit <= 0 {
		opts.MessageSizeLimit = 52428800
	}
	started := time.Now()
	base := mkdirShared(t, "smtpkit-postfix-")
	cert := opts.Cert
	if cert == nil {
		// Inside base, so that the watchdog's cleanup removes it too.
		tlsDir := filepath.Join(base, "tls")
		if err := os.Mkdir(tlsDir, 0o755); err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		cert = writeCert(t, tlsDir)
	}
	p := &PostfixServer{
		base:    base,
		confDir: filepath.Join(base, "etc"),
		maildir: filepath.Join(base, "mail", "sink"),
		logPath: filepath.Join(base, "log", "maillog"),
		cert:    cert,
		deliver: opts.Deliver,
	}
	// Registered after mkdirShared, so it runs before the directory is
	// removed, and before anything is started.
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("testpeers: stopping Postfix: %v", err)
		}
	})
	if err := p.layout(pfUser, saslpasswd); err != nil {
		t.Fatalf("testpeers: preparing Postfix in %s: %v", base, err)
	}
	if err := p.startWatchdog(postfixBin); err != nil {
		t.Fatalf("testpeers: %v", err)
	}

	env := cleanEnv()
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		p.ports = ports
		if err := p.writeConfig(opts, pfUser); err != nil {
			t.Fatalf("testpeers: writing Postfix config: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), postfixCmdTimeout)
		// Never start on a config that does not check out: postfix would
		// fall back to the system-wide queue and configuration.
		out, err := runCapture(ctx, true, env, postfixBin, "-c", p.confDir, "check")
		if err != nil || strings.Contains(out, "fatal:") {
			cancel()
			t.Fatalf("testpeers: postfix -c %s check failed: %v\n%s\n--- maillog ---\n%s", p.confDir, err, out, tail(p.Log(), 4000))
		}
		if strings.Contains(out, "warning:") {
			t.Logf("testpeers: postfix check: %s", strings.TrimSpace(out))
		}
		// The check just passed: let start skip running it again.
		if err := os.WriteFile(filepath.Join(p.base, "spool", "quick-start"), nil, 0o644); err != nil {
			cancel()
			t.Fatalf("testpeers: %v", err)
		}
		out, err = runCapture(ctx, true, env, postfixBin, "-c", p.confDir, "start")
		cancel()
		if err == nil {
			err = p.waitReady(time.Now().Add(postfixReadyTimeout))
		}
		if err == nil {
			t.Logf("testpeers: Postfix ready in %v: STARTTLS %s, TLS %s, plain AUTH %s (config %s)",
				time.Since(started).Round(time.Millisecond), p.StartTLSAddr(), p.ImplicitTLSAddr(), p.PlainAuthAddr(), p.confDir)
			return p
		}
		lastErr = fmt.Errorf("%v\n%s", err, out)
		inUse := addrInUse(out) || addrInUse(p.Log())
		p.stopInstance()
		if !inUse {
			break
		}
		t.Logf("testpeers: Postfix port taken, retrying with new ports: %v", err)
	}
	t.Fatalf("testpeers: starting Postfix (%s): %v\n--- maillog ---\n%s", p.confDir, lastErr, tail(p.Log(), 6000))
	return nil
}

// haveSASLPlugins reports whether Cyrus SASL's PLAIN plugin is installed.
func haveSASLPlugins() bool {
	for _, pat := range []string{"/usr/lib/*/sasl2/libplain.so*", "/usr/lib/sasl2/libplain.so*", "/usr/lib64/sasl2/libplain.so*"} {
		if m, _ := filepath.Glob(pat); len(m) > 0 {
			return true
		}
	}
	return false
}

// layout makes the directories, the sasldb and the SASL config.
func (p *PostfixServer) layout(pfUser *user.User, saslpasswd string) error {
	uid, _ := strconv.Atoi(pfUser.Uid)
	gid, _ := strconv.Atoi(pfUser.Gid)
	for _, d := range []struct {
		path    string
		postfix bool
		mode    fs.FileMode
	}{
		{p.confDir, false, 0o755},
		{filepath.Join(p.confDir, "sasl"), false, 0o755},
		{filepath.Join(p.base, "spool"), false, 0o755},
		{filepath.Join(p.base, "data"), true, 0o700},
		{filepath.Join(p.base, "log"), false, 0o755},
		{filepath.Join(p.base, "mail"), true, 0o755},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
		if d.postfix {
			if err := os.Chown(d.path, uid, gid); err != nil {
				return err
			}
		}
	}
	if err := precreateQueue(filepath.Join(p.base, "spool"), uid); err != nil {
		return err
	}
	// The postfix user must be able to reach the instance directory.
	if dir, ok := blockedAncestor(p.base); !ok {
		return fmt.Errorf("%s is not searchable by other users, so the postfix user cannot reach %s; set TMPDIR to a directory under a world-searchable path", dir, p.base)
	}

	saslDir := filepath.Join(p.confDir, "sasl")
	db := filepath.Join(saslDir, "sasldb2")
	// Debian's smtpd reads $config_directory/sasl/smtpd.conf whatever
	// cyrus_sasl_config_path says.
	conf := fmt.Sprintf("pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: %s\nsasldb_path: %s\n",
		strings.Join(PostfixMechanisms, " "), db)
	if err := writeFileAtomic(filepath.Join(saslDir, "smtpd.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(saslpasswd, "-p", "-c", "-f", db, "-u", PostfixDomain, PostfixUser)
	cmd.Stdin = strings.NewReader(PostfixPass)
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("saslpasswd2: %v: %s", err, out)
	}
	// smtpd reads it as the postfix user.
	if err := os.Chown(db, 0, gid); err != nil {
		return err
	}
	return os.Chmod(db, 0o640)
}

// precreateQueue makes the queue directories as postfix-files describes
// them. "postfix check" would create them too, but with a chown, chmod and
// mkdir process per directory, which takes seconds on a slow machine.
func precreateQueue(spool string, uid int) error {
	postdrop := -1
	if g, err := user.LookupGroup("postdrop"); err == nil {
		postdrop, _ = strconv.Atoi(g.Gid)
	}
	dirs := []struct {
		name     string
		uid, gid int
		mode     fs.FileMode
	}{
		{"pid", 0, -1, 0o755},
		{"active", uid, -1, 0o700},
		{"bounce", uid, -1, 0o700},
		{"corrupt", uid, -1, 0o700},
		{"defer", uid, -1, 0o700},
		{"deferred", uid, -1, 0o700},
		{"flush", uid, -1, 0o700},
		{"hold", uid, -1, 0o700},
		{"incoming", uid, -1, 0o700},
		{"private", uid, -1, 0o700},
		{"saved", uid, -1, 0o700},
		{"trace", uid, -1, 0o700},
		{"maildrop", uid, postdrop, 0o730},
		{"public", uid, postdrop, 0o710},
	}
	for _, d := range dirs {
		if d.name == "maildrop" || d.name == "public" {
			if postdrop < 0 {
				continue // leave it to postfix check
			}
		}
		path := filepath.Join(spool, d.name)
		if err := os.Mkdir(path, d.mode); err != nil {
			return err
		}
		if err := os.Chown(path, d.uid, d.gid); err != nil {
			return err
		}
		if err := os.Chmod(path, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeConfig writes main.cf and master.cf atomically.
func (p *PostfixServer) writeConfig(opts PostfixOptions, pfUser *user.User) error {
	spool := filepath.Join(p.base, "spool")
	relay := "permit_sasl_authenticated, reject_unauth_destination"
	if opts.OpenRelay {
		relay = "permit_mynetworks, " + relay
	}
	var b strings.Builder
	w := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	b.WriteString("# Private test instance written by smtpkit internal/testpeers.\n")
	w("compatibility_level", "3.6")
	w("config_directory", p.confDir)
	w("queue_directory", spool)
	w("data_directory", filepath.Join(p.base, "data"))
	w("maillog_file", p.logPath)
	w("maillog_file_prefixes", p.base)
	w("myhostname", "localhost")
	w("mydomain", "localdomain")
	w("myorigin", "localhost")
	w("mydestination", PostfixDomain)
	w("inet_interfaces", "127.0.0.1")
	w("inet_protocols", "ipv4")
	w("mynetworks", "127.0.0.0/8")
	w("alias_maps", "")
	w("alias_database", "")
	w("local_recipient_maps", "")
	w("relay_domains", "")
	w("biff", "no")
	w("append_dot_mydomain", "no")
	// No header rewriting or added headers for loopback clients, so that
	// delivered messages differ from what was sent only by trace headers.
	w("local_header_rewrite_clients", "")
	if opts.Deliver {
		// Everything, whatever the domain, goes to one maildir. Domain
		// classes are kept as they are (virtual_mailbox_domains empty) so
		// that relay control works as without Deliver.
		for _, k := range []string{"default_transport", "relay_transport", "local_transport", "virtual_transport"} {
			w(k, "virtual")
		}
		w("virtual_mailbox_domains", "")
		w("virtual_mailbox_base", filepath.Join(p.base, "mail"))
		w("virtual_mailbox_maps", "static:sink/")
		w("virtual_uid_maps", "static:"+pfUser.Uid)
		w("virtual_gid_maps", "static:"+pfUser.Gid)
		w("virtual_minimum_uid", pfUser.Uid)
		w("virtual_mailbox_limit", strconv.FormatInt(opts.MessageSizeLimit*2, 10))
	} else {
		for _, k := range []string{"default_transport", "relay_transport", "local_transport", "virtual_transport"} {
			w(k, "discard")
		}
	}
	w("smtpd_banner", "$myhostname ESMTP Postfix-test")
	w("smtpd_relay_restrictions", relay)
	w("smtpd_recipient_restrictions", "")
	w("message_size_limit", strconv.FormatInt(opts.MessageSizeLimit, 10))
	w("smtputf8_enable", "yes")
	w("smtpd_tls_cert_file", p.cert.CertFile)
	w("smtpd_tls_key_file", p.cert.KeyFile)
	w("smtpd_tls_security_level", "may")
	w("smtpd_tls_auth_only", "yes")
	w("smtpd_tls_loglevel", "1")
	w("smtpd_sasl_auth_enable", "yes")
	w("smtpd_sasl_type", "cyrus")
	w("smtpd_sasl_path", "smtpd")
	w("cyrus_sasl_config_path", filepath.Join(p.confDir, "sasl"))
	w("smtpd_sasl_local_domain", PostfixDomain)
	w("smtpd_sasl_security_options", "noanonymous")
	w("smtpd_sasl_tls_security_options", "noanonymous")
	if opts.ForbidBareNewline {
		w("smtpd_forbid_bare_newline", "reject")
		w("smtpd_forbid_bare_newline_exclusions", "")
	}
	for _, l := range opts.MainCF {
		b.WriteString(l + "\n")
	}
	if err := writeFileAtomic(filepath.Join(p.confDir, "main.cf"), []byte(b.String()), 0o644); err != nil {
		return err
	}

	var m strings.Builder
	m.WriteString("# service type private unpriv chroot wakeup maxproc command\n")
	fmt.Fprintf(&m, "127.0.0.1:%d inet n - n - - smtpd\n", p.ports[0])
	fmt.Fprintf(&m, "127.0.0.1:%d inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n  -o smtpd_tls_security_level=encrypt\n", p.ports[1])
	fmt.Fprintf(&m, "127.0.0.1:%d inet n - n - - smtpd\n  -o smtpd_tls_auth_only=no\n", p.ports[2])
	// Debian's services, none chrooted (the chroot would lack our files).
	m.WriteString(`pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
virtual    unix  - n n -     - virtual
lmtp       unix  - - n -     - lmtp
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
`)
	return writeFileAtomic(filepath.Join(p.confDir, "master.cf"), []byte(m.String()), 0o644)
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it into place, so that Postfix never reads a partial file. The file's
// mtime is set a minute back.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		// Postfix re-reads a config file every 300 ms until its mtime is
		// at least two seconds old (dict_load_file: "the file may still
		// be written"). Written atomically, it is complete: backdate it.
		past := time.Now().Add(-time.Minute)
		err = os.Chtimes(tmp, past, past)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// startWatchdog starts a shell that stops the instance and removes its
// directory once its stdin (a pipe whose write end only this process holds)
// reaches EOF, that is when the test process dies without cleaning up. In a
// normal stop the watchdog is killed first.
func (p *PostfixServer) startWatchdog(postfixBin string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	script := `read -r _ || true
if [ -f "$2/main.cf" ]; then "$1" -c "$2" stop >/dev/null 2>&1 || true; fi
pid=$(sed -n 1p "$3" 2>/dev/null | tr -d ' ')
[ -n "$pid" ] && kill -9 -"$pid" 2>/dev/null
rm -rf "$4"`
	cmd := exec.Command("/bin/sh", "-c", script, "testpeers-postfix-watchdog",
		postfixBin, p.confDir, filepath.Join(p.base, "spool", "pid", "master.pid"), p.base)
	cmd.Stdin = r
	cmd.Env = cleanEnv()
	// Its own process group, so that a ^C to the test does not reach it,
	// and no Pdeathsig: it must outlive us.
	cmd.SysProcAttr = childAttr(false)
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		return fmt.Errorf("starting the Postfix watchdog: %v", err)
	}
	_ = r.Close()
	p.watchdog, p.wdPipe, p.wdDone = cmd, w, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(p.wdDone)
	}()
	return nil
}

// waitReady waits until all three listeners greet.
func (p *PostfixServer) waitReady(deadline time.Time) error {
	alive := func() error {
		if p.masterPID() == 0 {
			return errors.New("the Postfix master is not running")
		}
		return nil
	}
	tlsConf := p.cert.ClientConfig()
	tlsConf.ServerName = "localhost"
	if err := waitBanner(p.StartTLSAddr(), nil, deadline, alive); err != nil {
		return err
	}
	if err := waitBanner(p.ImplicitTLSAddr(), tlsConf, deadline, alive); err != nil {
		return err
	}
	return waitBanner(p.PlainAuthAddr(), nil, deadline, alive)
}

// masterPID returns the running master's PID, or 0.
func (p *PostfixServer) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.base, "spool", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !pidAlive(pid) {
		return 0
	}
	return pid
}

// stopInstance stops master and waits until no process of the instance is
// left, killing stragglers.
func (p *PostfixServer) stopInstance() error {
	var errs []error
	master := p.masterPID()
	if pid := master; pid != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), postfixStopTimeout)
		out, err := runCapture(ctx, false, cleanEnv(), lookup(ProgPostfix), "-c", p.confDir, "stop")
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("postfix stop: %v: %s", err, out))
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	killed := false
	for {
		pids := instancePIDs(p.confDir)
		if pidAlive(master) && !slices.Contains(pids, master) {
			pids = append(pids, master)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if killed {
				errs = append(errs, fmt.Errorf("processes %v of the instance survive SIGKILL", pids))
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			errs = append(errs, fmt.Errorf("processes %v of the instance outlived master and were killed", pids))
			killed = true
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// Stop stops the instance and waits until none of its processes is left.
// It is called when the test ends; calling it again is harmless.
func (p *PostfixServer) Stop() error {
	p.stopOnce.Do(func() {
		p.stopErr = p.stopInstance()
		if p.watchdog != nil {
			_ = p.watchdog.Process.Kill()
			<-p.wdDone
			_ = p.wdPipe.Close()
		}
	})
	return p.stopErr
}

// StartTLSAddr returns the address of the listener that offers STARTTLS and
// AUTH only after it.
func (p *PostfixServer) StartTLSAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.ports[0]) }

// ImplicitTLSAddr returns the address of the implicit-TLS listener
// (smtpd_tls_wrappermode), which offers AUTH.
func (p *PostfixServer) ImplicitTLSAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.ports[1]) }

// PlainAuthAddr returns the address of the listener that offers AUTH
// without TLS (smtpd_tls_auth_only = no), for AUTH-over-plaintext tests.
// It offers STARTTLS as well.
func (p *PostfixServer) PlainAuthAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.ports[2]) }

// Cert returns the certificate the instance presents.
func (p *PostfixServer) Cert() *Cert { return p.cert }

// ConfigDir returns the instance's config_directory, for postconf -c or
// postqueue -c.
func (p *PostfixServer) ConfigDir() string { return p.confDir }

// Log returns the instance's maillog so far (smtpd, cleanup, qmgr...),
// useful in failure messages.
func (p *PostfixServer) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Delivered returns the messages delivered so far, oldest first, one per
// recipient. It needs Deliver. Each is the maildir file as Postfix wrote it:
// LF line endings, and Return-Path, Delivered-To and Received headers
// prepended to what the client sent.
func (p *PostfixServer) Delivered() ([][]byte, error) {
	if !p.deliver {
		return nil, errors.New("testpeers: Postfix was started without Deliver, so it discards all mail")
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(p.maildir, sub))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			files = append(files, file{filepath.Join(p.maildir, sub, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return filepath.Base(files[i].path) < filepath.Base(files[j].path)
	})
	out := make([][]byte, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// WaitDelivered waits until at least n messages have been delivered (see
// [PostfixServer.Delivered]) and returns them; after timeout it returns
// what there is with an error that includes the maillog's end.
func (p *PostfixServer) WaitDelivered(n int, timeout time.Duration) ([][]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := p.Delivered()
		if err != nil || len(msgs) >= n {
			return msgs, err
		}
		if time.Now().After(deadline) {
			return msgs, fmt.Errorf("testpeers: %d of %d messages delivered after %v; maillog:\n%s", len(msgs), n, timeout, tail(p.Log(), 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SMTPSink starts Postfix's smtp-sink on a free loopback port with the given
// flags (see smtp-sink(1): -c counters, -Q/-q/-r/-f faults, -w/-W delays,
// -d dumps, ...) and stops it when the test ends. "-u postfix" is added when
// running as root (smtp-sink requires it). Readiness is checked without
// connecting, so the first session is the test's.
func SMTPSink(t testing.TB, args ...string) *Proc {
	t.Helper()
	bin := Require(t, ProgSMTPSink)
	dir := t.TempDir()
	var lastOut string
	for attempt := 1; attempt <= 3; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		argv := []string{bin}
		if os.Geteuid() == 0 && !slices.Contains(args, "-u") {
			argv = append(argv, "-u", "postfix")
		}
		argv = append(argv, args...)
		argv = append(argv, addr, "256")
		proc, err := startProc(argv, cleanEnv(), filepath.Join(dir, fmt.Sprintf("smtp-sink-%d.log", attempt)))
		if err != nil {
			t.Fatalf("testpeers: starting smtp-sink: %v", err)
		}
		proc.addr = addr
		t.Cleanup(func() {
			if err := proc.Stop(); err != nil {
				t.Errorf("testpeers: stopping smtp-sink: %v", err)
			}
		})
		err = waitListening(proc, ports[0], time.Now().Add(10*time.Second))
		if err == nil {
			return proc
		}
		_ = proc.Stop()
		lastOut = proc.Output()
		if !addrInUse(lastOut) {
			t.Fatalf("testpeers: smtp-sink %v: %v\n%s", argv, err, lastOut)
		}
	}
	t.Fatalf("testpeers: smtp-sink could not bind a port:\n%s", lastOut)
	return nil
}

// SMTPSourcePath returns the path of Postfix's smtp-source load generator,
// skipping or failing the test when it is missing (see [Require]).
func SMTPSourcePath(t testing.TB) string {
	t.Helper()
	return Require(t, ProgSMTPSource)
}

// waitListening waits until proc listens on port, or has exited.
func waitListening(proc *Proc, port int, deadline time.Time) error {
	for {
		if exited, err := proc.Exited(); exited {
			return fmt.Errorf("exited before listening: %v", err)
		}
		yes, ok := listening(port)
		if !ok {
			// No /proc: fall back to a connection.
			yes = probeBanner(proc.addr, nil) == nil
		}
		if yes {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %d", port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

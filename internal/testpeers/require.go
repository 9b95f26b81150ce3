package testpeers

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// EnvRequirePeers is the environment variable that turns a missing peer
// program from a skipped test into a failed one. CI sets it to 1.
const EnvRequirePeers = "SMTPKIT_REQUIRE_PEERS"

// EnvMailpit is the environment variable that names the mailpit binary to
// run. It takes precedence over $PATH and the build cache (see [Require]).
const EnvMailpit = "SMTPKIT_MAILPIT"

// MailpitVersion is the Mailpit release that the tests and .ci/run use.
const MailpitVersion = "v1.33.1"

// Names of the programs that [Require] knows how to find.
const (
	ProgPostfix     = "postfix"
	ProgSMTPSink    = "smtp-sink"
	ProgSMTPSource  = "smtp-source"
	ProgSaslpasswd2 = "saslpasswd2"
	ProgMailpit     = "mailpit"
)

// PeersRequired reports whether missing peers must fail tests instead of
// skipping them, that is whether $SMTPKIT_REQUIRE_PEERS is 1 (or "true").
func PeersRequired() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv(EnvRequirePeers))) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// MailpitCachePath is where .ci/run installs the mailpit binary:
// ${XDG_CACHE_HOME:-$HOME/.cache}/smtpkit-peers/bin/mailpit.
func MailpitCachePath() string {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "smtpkit-peers", "bin", "mailpit")
}

// installHint tells how to install the program name on Debian.
func installHint(name string) string {
	switch name {
	case ProgPostfix, ProgSMTPSink, ProgSMTPSource:
		return "install Postfix: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && " +
			"DEBIAN_FRONTEND=noninteractive apt-get install -y postfix sasl2-bin libsasl2-modules (or run bash .ci/run)"
	case ProgSaslpasswd2:
		return "install Cyrus SASL tools: apt-get install -y sasl2-bin libsasl2-modules (or run bash .ci/run)"
	case ProgMailpit:
		return fmt.Sprintf("build it: GOBIN=%s go install github.com/axllent/mailpit@%s, or set $%s to a mailpit binary (or run bash .ci/run)",
			filepath.Dir(MailpitCachePath()), MailpitVersion, EnvMailpit)
	}
	return "install " + name
}

// candidates lists where the program name may live, in order of preference.
func candidates(name string) []string {
	var c []string
	if name == ProgMailpit {
		if p := os.Getenv(EnvMailpit); p != "" {
			// An explicit choice: look nowhere else, so a typo is noticed.
			return []string{p}
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		c = append(c, p)
	}
	switch name {
	case ProgMailpit:
		c = append(c, MailpitCachePath())
	default:
		// Postfix and Cyrus SASL install into sbin, which a non-root $PATH
		// often lacks.
		c = append(c, "/usr/sbin/"+name, "/usr/local/sbin/"+name)
	}
	return c
}

// lookup returns the absolute path of an executable program name, or "".
func lookup(name string) string {
	for _, p := range candidates(name) {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return p
	}
	return ""
}

// Require returns the absolute path of the peer program name (one of the
// Prog constants, or any program on $PATH). When it is missing, the test is
// skipped, or, if [PeersRequired], fails with a message that says how to
// install it.
//
// mailpit is looked up as $SMTPKIT_MAILPIT if set (and nowhere else), else on
// $PATH, else in [MailpitCachePath]. Postfix and SASL programs are looked up
// on $PATH and in /usr/sbin.
//
// Under GOOS=wasip1 and GOOS=js, where a program cannot start another,
// the test is always skipped, saying so: there is nothing to install.
func Require(t testing.TB, name string) string {
	t.Helper()
	if !CanStartProcesses() {
		t.Skipf("testpeers: %s runs as a separate process, and GOOS=%s cannot start processes", name, runtime.GOOS)
	}
	if p := lookup(name); p != "" {
		return p
	}
	where := strings.Join(candidates(name), ", ")
	if where == "" {
		where = "$PATH"
	}
	Unavailable(t, "%s not found (looked in %s); %s", name, where, installHint(name))
	return ""
}

// CanStartProcesses reports whether this platform can run a peer program
// with os/exec: false under wasip1 and js (WebAssembly), true elsewhere.
func CanStartProcesses() bool {
	return runtime.GOOS != "wasip1" && runtime.GOOS != "js"
}

// Unavailable stops the test because a peer cannot run here: t.Skipf
// normally, t.Fatalf when [PeersRequired].
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "testpeers: " + fmt.Sprintf(format, args...)
	if PeersRequired() {
		t.Fatalf("%s ($%s=1, so this is an error)", msg, EnvRequirePeers)
		return
	}
	t.Skipf("%s (skipping; set $%s=1 to make this an error)", msg, EnvRequirePeers)
}

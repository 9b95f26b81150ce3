package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// Exit codes, after sysexits.h.
const (
	exitOK       = 0
	exitUsage    = 64 // EX_USAGE: the command was used incorrectly
	exitRefused  = 65 // EX_DATAERR: refused permanently
	exitTempFail = 75 // EX_TEMPFAIL: temporary failure, retry later
	exitUnknown  = 76 // EX_PROTOCOL, used here for "outcome unknown"
	exitConfig   = 78 // EX_CONFIG: the setup (login, TLS) must change first
)

// passwordEnv names the environment variable that holds the password.
const passwordEnv = "SMTP_PASSWORD"

// Defaults of the demo mode.
const (
	demoFrom = "smtpsend@example.com"
	demoTo   = "you@example.net"
)

// options are the parsed command line.
type options struct {
	server         string
	tlsMode        string // implicit, starttls or plaintext, after defaulting
	caFile         string
	user           string
	passwordFile   string
	auth           string
	oauthTokenFile string
	from           string
	to             []string
	ehlo           string
	timeout        time.Duration
	conns          int
	insecure       bool
	strictCRLF     bool
	verbose        bool
	verify         bool
	files          []string
}

// usageError is a mistake on the command line: exit 64.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("empty address")
	}
	*l = append(*l, s)
	return nil
}

const usageHead = `usage: smtpsend [flags] [message.eml ...]

With no -server, smtpsend starts an SMTP server inside its own process
(implicit TLS with a certificate made on the spot, AUTH PLAIN), sends a
sample message to it and shows the SMTP exchange, the outcome and the
message as the server received it. The demo server refuses reject@...
(550), defers defer@... (451) and drops the connection after the message
for drop@..., so -to shows each exit status.

With -server, smtpsend sends each message file (RFC 5322, "-" for standard
input; standard input when there is none) to that server. The password
comes from $SMTP_PASSWORD or -password-file, never from a flag.

With -verify, smtpsend only checks that it can connect, agree on TLS and
log in with the flags given, as a service would at startup, and sends
nothing.

Exit status: 0 all sent; 64 bad usage; 65 refused permanently; 75 temporary
failure, retry later; 76 outcome unknown, do not resend blindly; 78 the
setup must change (login refused, certificate not trusted, STARTTLS
missing, wrong -tls mode). With several messages the worst decides:
76 > 78 > 75 > 65 > 0.

Flags:
`

// parseArgs parses the command line. It returns flag.ErrHelp for -h, a
// *usageError for a mistake, or the options.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	var to listFlag
	fs := flag.NewFlagSet("smtpsend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.server, "server", "", "the SMTP server's `host:port`; none runs the demo against an embedded server")
	fs.StringVar(&o.tlsMode, "tls", "", "`mode`: implicit (TLS from the first byte, port 465), starttls (port 587) or plaintext (loopback only, unless -insecure); default starttls for ports 25 and 587, implicit otherwise")
	fs.StringVar(&o.caFile, "ca-file", "", "trust the PEM certificate(s) in `file` as well as the system roots (for self-signed test servers)")
	fs.StringVar(&o.user, "user", "", "log in as `name`; the password comes from $"+passwordEnv+" or -password-file")
	fs.StringVar(&o.passwordFile, "password-file", "", "read the password from `file` (its first line; at most 64 KiB; refused if others can write it)")
	fs.StringVar(&o.auth, "auth", "", "SASL `mechanism`: SCRAM-SHA-256, PLAIN, LOGIN, CRAM-MD5, XOAUTH2 or OAUTHBEARER; default the strongest password mechanism both sides have, or XOAUTH2 with -oauth-token-file")
	fs.StringVar(&o.oauthTokenFile, "oauth-token-file", "", "log in with the OAuth 2.0 access token in `file`, read again at each login so a refresher can replace it (same limits as -password-file)")
	fs.StringVar(&o.from, "from", "", "the envelope sender (MAIL FROM) `address`; <> is the null sender (default "+demoFrom+" in the demo)")
	fs.Var(&to, "to", "a recipient `address` (RCPT TO); repeat for several (default "+demoTo+" in the demo)")
	fs.StringVar(&o.ehlo, "ehlo", "", "the `name` to send with EHLO (default localhost)")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "give up on a message this `duration` after its turn comes (connecting included; waiting behind other messages does not count)")
	fs.IntVar(&o.conns, "conns", 2, "the most connections to use at once when sending several messages")
	fs.BoolVar(&o.insecure, "insecure", false, "allow -tls plaintext to a host that is not loopback: the message and credentials cross the network in clear")
	fs.BoolVar(&o.strictCRLF, "strict-line-endings", false, "refuse messages with bare LF or CR line endings instead of converting them to CRLF")
	fs.BoolVar(&o.verbose, "v", false, "log every audit event to standard error")
	fs.BoolVar(&o.verify, "verify", false, "check the setup and send nothing: connect, TLS, EHLO, AUTH, QUIT; exit 0 when it works, 78 when the setup must change, 75 when the server cannot be reached now")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		// The flag package has printed the problem and the usage.
		return nil, &usageError{}
	}
	o.to = to
	o.files = fs.Args()
	if err := o.check(); err != nil {
		return nil, err
	}
	return o, nil
}

// check validates the options and fills in defaults.
func (o *options) check() error {
	if o.timeout <= 0 {
		return usagef("-timeout must be positive")
	}
	if o.conns < 1 || o.conns > 100 {
		return usagef("-conns must be between 1 and 100")
	}
	stdin := 0
	for _, f := range o.files {
		if f == "-" {
			stdin++
		}
	}
	if stdin > 1 {
		return usagef(`standard input ("-") can be named only once`)
	}
	if o.auth != "" {
		switch strings.ToUpper(o.auth) {
		case smtp.MechSCRAMSHA256, smtp.MechPLAIN, smtp.MechLOGIN, smtp.MechCRAMMD5, smtp.MechXOAUTH2, smtp.MechOAUTHBEARER:
			o.auth = strings.ToUpper(o.auth)
		default:
			return usagef("-auth %q: unknown mechanism (SCRAM-SHA-256, PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER)", o.auth)
		}
	}

	if o.verify {
		if o.server == "" {
			return usagef("-verify needs -server: it checks the connection to a real server")
		}
		if len(o.files) > 0 {
			return usagef("-verify sends nothing, so it takes no message files")
		}
	}
	if o.server == "" {
		// The demo: the embedded server has its own TLS and credentials.
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"-tls", o.tlsMode != ""}, {"-ca-file", o.caFile != ""}, {"-user", o.user != ""},
			{"-password-file", o.passwordFile != ""}, {"-auth", o.auth != ""},
			{"-oauth-token-file", o.oauthTokenFile != ""}, {"-insecure", o.insecure},
		} {
			if f.set {
				return usagef("%s needs -server: without it smtpsend runs the demo, whose embedded server has its own TLS and credentials", f.name)
			}
		}
		if o.from == "" {
			o.from = demoFrom
		}
		if len(o.to) == 0 {
			o.to = []string{demoTo}
		}
		if o.from == "<>" {
			o.from = ""
		}
		return nil
	}

	host, port, err := net.SplitHostPort(o.server)
	if err != nil || host == "" {
		return usagef("-server %q: want host:port, for example smtp.example.com:465", o.server)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return usagef("-server %q: bad port", o.server)
	}
	switch o.tlsMode {
	case "":
		o.tlsMode = "implicit"
		if port == "25" || port == "587" {
			o.tlsMode = "starttls"
		}
	case "implicit", "starttls":
	case "plaintext":
		if !isLoopback(host) && !o.insecure {
			return usagef("-tls plaintext would send the message (and any password) in clear to %s, which is not loopback; add -insecure if you really mean it", host)
		}
		if o.caFile != "" {
			return usagef("-ca-file has no use with -tls plaintext")
		}
	default:
		return usagef("-tls %q: want implicit, starttls or plaintext", o.tlsMode)
	}
	if o.insecure && o.tlsMode != "plaintext" {
		return usagef("-insecure only relaxes -tls plaintext; certificates are always verified (use -ca-file to trust a self-signed one)")
	}
	if o.from == "" && !o.verify {
		return usagef("-from is required with -server (use -from '<>' for the null sender)")
	}
	if o.from == "<>" {
		o.from = ""
	}
	if len(o.to) == 0 && !o.verify {
		return usagef("at least one -to is required with -server")
	}
	if o.user == "" {
		if o.passwordFile != "" || o.oauthTokenFile != "" || o.auth != "" {
			return usagef("-password-file, -oauth-token-file and -auth need -user")
		}
	}
	if o.oauthTokenFile != "" && o.passwordFile != "" {
		return usagef("-oauth-token-file and -password-file exclude each other")
	}
	return nil
}

// isLoopback reports whether host is a loopback address or "localhost".
// Names other than localhost are not resolved: what a name resolves to
// is not a promise that the traffic stays on this machine.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// security maps -tls to the sender's mode.
func (o *options) security() sender.Security {
	switch o.tlsMode {
	case "starttls":
		return sender.StartTLS
	case "plaintext":
		return sender.InsecurePlaintext
	}
	return sender.ImplicitTLS
}

// tlsConfig returns the TLS configuration for -ca-file, or nil for the
// system roots.
func (o *options) tlsConfig() (*tls.Config, error) {
	if o.caFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, usagef("-ca-file: %v", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, usagef("-ca-file %s: no PEM certificate in it", o.caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// maxSecretFile is the largest password or token file read: OAuth access
// tokens run to a few kilobytes, and anything much larger is not a secret
// file (or never ends, as /dev/zero does not).
const maxSecretFile = 64 << 10

// readSecretFile returns the first line of a password or token file, and
// a warning to print when others can read the file. It refuses a file
// that others (its group, or everyone) can write, as ssh refuses such a
// key: whoever can write it can make smtpsend log in as someone else, or
// send the password to a server of their choosing. A pipe (a process
// substitution such as <(pass show mail)) is read like a file.
func readSecretFile(flagName, path string) (secret, warning string, _ error) {
	f, err := os.Open(path)
	if err != nil {
		// The *PathError names the file, never its content.
		return "", "", fmt.Errorf("%s: %w", flagName, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", flagName, err)
	}
	if perm := st.Mode().Perm(); runtime.GOOS != "windows" {
		if perm&0o022 != 0 {
			return "", "", fmt.Errorf("%s %s: others can write the file (mode %04o); refusing to use it (chmod 600 %s)", flagName, path, perm, path)
		}
		if perm&0o044 != 0 && st.Mode().IsRegular() {
			warning = fmt.Sprintf("warning: %s %s: others can read the file (mode %04o); chmod 600 %s", flagName, path, perm, path)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", flagName, err)
	}
	if len(data) > maxSecretFile {
		clear(data)
		return "", "", fmt.Errorf("%s %s: larger than %d KiB; it should hold the secret on its first line", flagName, path, maxSecretFile>>10)
	}
	s := string(data)
	clear(data)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		return "", "", fmt.Errorf("%s %s: the first line is empty", flagName, path)
	}
	return s, warning, nil
}

// credentials returns the sender's credentials provider, or nil without
// -user. The password is read once, here; an OAuth token file is read
// again at every login, so whatever refreshes the token can replace the
// file while smtpsend runs. Every secret read is given to con, which
// never prints it, and con prints the warnings about the files.
func (o *options) credentials(env func(string) string, con *console) (sender.CredentialsFunc, error) {
	if o.user == "" {
		return nil, nil
	}
	user, mech := o.user, o.auth
	isToken := mech == smtp.MechXOAUTH2 || mech == smtp.MechOAUTHBEARER
	if o.oauthTokenFile != "" {
		if mech == "" {
			mech = smtp.MechXOAUTH2
		} else if !isToken {
			return nil, usagef("-oauth-token-file needs -auth XOAUTH2 or OAUTHBEARER, not %s", mech)
		}
		tok, warning, err := readSecretFile("-oauth-token-file", o.oauthTokenFile)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		con.Secret(tok)
		if warning != "" {
			con.Errf("%s\n", warning)
		}
		path := o.oauthTokenFile
		return func(context.Context) (sender.Credentials, error) {
			tok, _, err := readSecretFile("-oauth-token-file", path)
			if err != nil {
				return sender.Credentials{}, err
			}
			con.Secret(tok)
			return sender.Credentials{Mechanism: mech, Username: user, Secret: tok}, nil
		}, nil
	}
	if isToken {
		return nil, usagef("-auth %s needs -oauth-token-file", mech)
	}
	var pass string
	if o.passwordFile != "" {
		p, warning, err := readSecretFile("-password-file", o.passwordFile)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		if warning != "" {
			con.Errf("%s\n", warning)
		}
		pass = p
	} else {
		pass = env(passwordEnv)
		if pass == "" {
			return nil, usagef("-user %s needs a password: set $%s or pass -password-file (there is no password flag: the process list would show it)", user, passwordEnv)
		}
	}
	con.Secret(pass)
	return func(context.Context) (sender.Credentials, error) {
		return sender.Credentials{Mechanism: mech, Username: user, Secret: pass}, nil
	}, nil
}

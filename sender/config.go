package sender

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// Security is how a session is protected.
type Security int

const (
	// ImplicitTLS speaks TLS from the first byte (port 465, RFC 8314).
	// It is the zero value.
	ImplicitTLS Security = iota
	// StartTLS connects in plaintext and upgrades with STARTTLS (port
	// 587); a server that does not offer it is an error, never a
	// plaintext fallback.
	StartTLS
	// InsecurePlaintext never encrypts: credentials and messages cross
	// the network in clear. For loopback test sinks only.
	InsecurePlaintext
)

// String returns the mode's name.
func (s Security) String() string {
	switch s {
	case ImplicitTLS:
		return "implicit-tls"
	case StartTLS:
		return "starttls"
	case InsecurePlaintext:
		return "insecure-plaintext"
	}
	return "unknown"
}

// Credentials are what one login uses. They print, log and marshal
// without their secret: whatever the verb (%v, %+v, %#v, %s...),
// through [log/slog] with any handler, and through [encoding/json],
// Secret shows as "[redacted]" (or "" when empty); Mechanism and
// Username are shown.
type Credentials struct {
	// Mechanism is a SASL mechanism name (smtp.MechPLAIN, ...); empty
	// picks the strongest password mechanism both sides offer.
	Mechanism string
	// Username is the account name.
	Username string
	// Secret is the password or, for XOAUTH2 and OAUTHBEARER, the access
	// token.
	Secret string
}

// redacted stands for a secret in what Credentials print and log.
const redacted = "[redacted]"

func (c Credentials) shownSecret() string {
	if c.Secret == "" {
		return ""
	}
	return redacted
}

// String returns the credentials with their secret redacted:
// {Mechanism:PLAIN Username:me@example.com Secret:[redacted]}.
func (c Credentials) String() string {
	return "{Mechanism:" + c.Mechanism + " Username:" + c.Username + " Secret:" + c.shownSecret() + "}"
}

// GoString returns the credentials as a Go literal, with their secret
// redacted, for %#v.
func (c Credentials) GoString() string {
	return "sender.Credentials{Mechanism:" + strconv.Quote(c.Mechanism) + ", Username:" + strconv.Quote(c.Username) + ", Secret:" + strconv.Quote(c.shownSecret()) + "}"
}

// Format implements [fmt.Formatter], so that no verb prints the secret:
// %#v is GoString, every other verb String.
func (c Credentials) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, c.GoString())
		return
	}
	fmt.Fprint(f, c.String())
}

// LogValue implements [slog.LogValuer]: a group of mechanism, username
// and the redacted secret.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("mechanism", c.Mechanism),
		slog.String("username", c.Username),
		slog.String("secret", c.shownSecret()))
}

// MarshalJSON implements [json.Marshaler]: the three fields by their
// names, the secret redacted, so that a config dumped as JSON (a debug
// endpoint, a structured log that encodes values itself) does not leak
// it. Unmarshalling such JSON gives Credentials whose Secret is
// "[redacted]": a dump is not a way to store them.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct{ Mechanism, Username, Secret string }{c.Mechanism, c.Username, c.shownSecret()})
}

// CredentialsFunc returns the credentials for one login. It is called
// each time a session authenticates, so OAuth tokens can be refreshed;
// ctx bounds the call.
type CredentialsFunc func(ctx context.Context) (Credentials, error)

// Config configures a [Sender]. Zero values take the defaults documented
// on each field.
type Config struct {
	// Addr is the server's host:port. Required unless Dial is set.
	Addr string
	// Security selects implicit TLS (the zero value), STARTTLS or
	// insecure plaintext.
	Security Security
	// Dial, when set, replaces dialing Addr: it returns a transport to
	// the server (for StartTLS, one that is transport.StartTLSCapable;
	// wrap a net.Conn with transport.Upgradable). With ImplicitTLS the
	// transport must already be TLS. It is called from the goroutine
	// of each new session, and of Verify: several calls may run at
	// once. ctx bounds the dial (with DialTimeout). A transport that is,
	// or wraps with a NetConn method (as *tls.Conn does), a TCP or Unix
	// socket lets a session's reader write small messages itself
	// instead of waking its writer; on any other (an in-memory pipe) it
	// never does, as it could not know that the server will read.
	Dial func(ctx context.Context) (transport.Transport, error)
	// Credentials, when set, is called at each login, from the
	// goroutine of the session logging in (or Verify's): several calls
	// may run at once. Nil means no AUTH.
	Credentials CredentialsFunc

	// MaxConns bounds the sessions open at once; 0 means 2.
	MaxConns int
	// MaxInFlight bounds the transactions written on one session ahead
	// of their replies (pipelining); 0 means 16, 1 disables pipelining
	// across messages.
	MaxInFlight int
	// IdleTimeout closes a session unused this long; 0 means 60 s.
	IdleTimeout time.Duration
	// MaxMessagesPerConn closes a session after this many transactions;
	// 0 means no limit.
	MaxMessagesPerConn int
	// MaxLifetime closes a session this long after it was dialed (once
	// its in-flight work is done); 0 means no limit.
	MaxLifetime time.Duration
	// DialTimeout bounds dialing, TLS, greeting, EHLO and AUTH of a new
	// session; 0 means 30 s.
	DialTimeout time.Duration
	// Backoff returns the policy for dials after failed sessions; nil
	// means exponential from 100 ms to 10 s with jitter. A failed session
	// is a dial that failed, or a connection that ended (a 421, a loss,
	// a refused login) before the server gave any transaction a verdict;
	// every dial after one waits the backoff, and a verdict resets it.
	Backoff func() backoff.BackOff
	// MaxDialFailures is how many failed sessions in a row (see Backoff)
	// make Send fail fast with the last cause; 0 means 3. While it fails
	// fast, the first Send after the backoff has passed starts one new
	// session; nothing dials while nobody sends. A login the server
	// refuses with 5xx (or credentials that are invalid) counts as all of
	// them at once: a wrong password is not tried again before the
	// backoff has passed and a Send asks, which could lock the account.
	MaxDialFailures int
	// MaxAttempts bounds how often one request may fail by its own
	// fault: the server answered its own transaction with 421, or the
	// connection was lost while it was the oldest in flight, before its
	// commit point. Such a request is written again on another session
	// (if its body is unread or an io.Seeker); replays that other
	// requests' failures cause do not count, and are bounded by the
	// caller's context and the backoff. 0 means 3.
	MaxAttempts int

	// Options configures each session: the EHLO name (LocalName,
	// "localhost" when empty), TLS (TLSConfig: nil means the system
	// roots; an empty ServerName means the host of Addr), policy, audit
	// hook, limits, timeouts. Its Policy, Audit and AuditContext hooks
	// are called from the goroutines of every session, so several calls
	// may run at once. Its InsecureAllowPlaintext is Security's
	// to set: New refuses a Config that sets it without Security
	// InsecurePlaintext.
	Options smtp.Options
}

// withDefaults returns c with its defaults, or an [*smtp.Error] with Op
// smtp.OpConfig (smtp.IsConfig) for a Config that cannot work.
func (c Config) withDefaults() (Config, error) {
	if c.Addr == "" && c.Dial == nil {
		return c, &smtp.Error{Op: smtp.OpConfig, Kind: smtp.KindInvalidInput, Message: "sender: Config needs Addr or Dial"}
	}
	if c.Security < ImplicitTLS || c.Security > InsecurePlaintext {
		return c, &smtp.Error{Op: smtp.OpConfig, Kind: smtp.KindInvalidInput, Message: "sender: unknown Security"}
	}
	if c.Options.InsecureAllowPlaintext && c.Security != InsecurePlaintext {
		return c, &smtp.Error{Op: smtp.OpConfig, Kind: smtp.KindInvalidInput, Message: "sender: Options.InsecureAllowPlaintext is set without Security InsecurePlaintext; set Security instead"}
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 2
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 16
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 30 * time.Second
	}
	if c.Backoff == nil {
		c.Backoff = func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = 100 * time.Millisecond
			b.MaxInterval = 10 * time.Second
			b.MaxElapsedTime = 0
			return b
		}
	}
	if c.MaxDialFailures <= 0 {
		c.MaxDialFailures = 3
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.Security == InsecurePlaintext {
		c.Options.InsecureAllowPlaintext = true
	}
	return c, nil
}

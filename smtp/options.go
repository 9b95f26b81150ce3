package smtp

import (
	"context"
	"crypto/tls"
	"time"
)

// Default RFC 5321 §4.5.3.2 timeouts, used for a step when its context
// has no earlier deadline.
const (
	defaultGreetingTimeout  = 5 * time.Minute
	defaultCommandTimeout   = 5 * time.Minute
	defaultDataInitTimeout  = 2 * time.Minute
	defaultDataBlockTimeout = 3 * time.Minute
	defaultDataEndTimeout   = 10 * time.Minute
)

// defaultChunkSize is the size of a BDAT chunk, and so the bound on the
// memory a body takes while it streams.
const defaultChunkSize = 64 << 10

// Timeouts bounds each step of a session when the context has no earlier
// deadline. A zero field takes the RFC 5321 default.
type Timeouts struct {
	// Greeting bounds the wait for the server's 220 (default 5 min).
	Greeting time.Duration
	// Command bounds EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, NOOP and
	// QUIT (default 5 min).
	Command time.Duration
	// DataInit bounds the wait for the 354 after DATA (default 2 min).
	DataInit time.Duration
	// DataBlock bounds each write, and each reply to a non-final BDAT
	// chunk (default 3 min).
	DataBlock time.Duration
	// DataEnd bounds the wait for the final reply after the body
	// (default 10 min).
	DataEnd time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Greeting, defaultGreetingTimeout)
	def(&t.Command, defaultCommandTimeout)
	def(&t.DataInit, defaultDataInitTimeout)
	def(&t.DataBlock, defaultDataBlockTimeout)
	def(&t.DataEnd, defaultDataEndTimeout)
	return t
}

// PolicyRequest is what a [Policy] decides on.
type PolicyRequest struct {
	// From is the reverse-path ("" for the null sender).
	From string
	// To lists the recipients.
	To []string
	// Size is the message size when known before sending (from
	// Envelope.Size, or the length of a *bytes.Reader, *strings.Reader
	// or *bytes.Buffer body); 0 means unknown, as in Envelope.Size.
	Size int64
}

// Policy is a pre-send veto: it is called after the envelope has been
// validated and before any byte of the transaction is written. A non-nil
// error stops the transaction; Send returns it wrapped in an [*Error] of
// Kind [KindPolicy].
type Policy func(ctx context.Context, req PolicyRequest) error

// defaultLocalName is the EHLO name of a session whose
// Options.LocalName is empty.
const defaultLocalName = "localhost"

// Options configures a session. The zero value (and a nil *Options) is a
// TLS-only session, greeting as "localhost", with RFC 5321 timeouts, 998-octet lines, no policy and
// no audit hook.
type Options struct {
	// LocalName is the name this client gives in EHLO (or HELO): its
	// host name, ideally one the server can resolve. Empty means
	// "localhost", in package sender too.
	LocalName string

	// TLSConfig configures the STARTTLS handshake of [ConnectStartTLS]
	// (a transport that is already TLS was configured when it was
	// dialed). Nil means the system roots. Its ServerName is the
	// server's name: the certificate is verified against it, and
	// OAUTHBEARER sends it; when empty, ConnectStartTLS takes the
	// peer's IP address, and Connect the name the TLS connection was
	// made for. The caller's config is never modified; TLS 1.2 is the
	// floor.
	TLSConfig *tls.Config

	// InsecureAllowPlaintext allows a session, and AUTH, on a transport
	// that is not TLS. Use it only for loopback test sinks: everything,
	// credentials included, crosses the network in clear.
	InsecureAllowPlaintext bool

	// NormalizeLineEndings converts bare CR and bare LF in bodies to
	// CRLF. When false (the default) such a body is refused with
	// KindInvalidInput: bare line ends are the raw material of SMTP
	// smuggling.
	NormalizeLineEndings bool

	// MaxLineLength is the longest body line allowed, without its CRLF.
	// Zero means 998 (RFC 5322); a negative value means no limit.
	MaxLineLength int

	// MaxMessageSize is the largest body, in octets, this client will
	// send; it is checked before sending when the size is known and
	// while the body streams. Zero means no limit of our own (the
	// server's SIZE limit, if any, still applies).
	MaxMessageSize int64

	// ChunkSize is the BDAT chunk size and the unit in which a body is
	// read. Zero means 64 KiB; a value below 512 means 512.
	ChunkSize int

	// Timeouts bounds each step when its context has no deadline.
	Timeouts Timeouts

	// Policy, when set, may veto each transaction before it starts. It
	// is called from WriteTx, on the goroutine writing; the sessions of
	// a sender.Sender call it from several goroutines at once (the
	// sender passes it the values of the caller's context).
	Policy Policy

	// Audit, when set, receives an [Event] for each step of the session,
	// in order, from one goroutine of the session at a time (the one
	// that wrote or read the step: a reader goroutine too), never while
	// the Client holds its lock; the sessions of a sender.Sender call
	// it from several goroutines at once. It must not call back into
	// the Client. Events never carry credentials or message content.
	Audit func(Event)

	// AuditContext, when set, is called instead of Audit, with the
	// values (not the cancellation) of the context of the call the
	// event belongs to: for a transaction's events, the ctx given to
	// WriteTx (or Send), even for a late event that comes after the
	// call returned; for a session's, the ctx of the call that made
	// it. A slog.Handler that reads a trace or request id from the
	// context then finds the caller's ([SlogAuditContext]). It is
	// called as Audit is.
	AuditContext func(context.Context, Event)

	// Redactor, when set, is shared with the other sessions of a chain
	// (the sessions of one sender, of one account): the session
	// registers with it every secret it sends during AUTH, and removes
	// every secret it holds, whichever session registered it, from all
	// the server text it reads, from the greeting on. When nil, the
	// session has its own, which knows the session's secrets from its
	// AUTH on.
	Redactor *Redactor
}

func (o *Options) chunkSize() int {
	if o.ChunkSize <= 0 {
		return defaultChunkSize
	}
	if o.ChunkSize < 512 {
		return 512
	}
	return o.ChunkSize
}

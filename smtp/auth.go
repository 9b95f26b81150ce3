package smtp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/smtpkit/smtpkit/internal/sasl"
	"github.com/smtpkit/smtpkit/internal/servertext"
)

// SASL mechanism names for [Client.LoginWith].
const (
	MechSCRAMSHA256 = "SCRAM-SHA-256" // RFC 5802, RFC 7677
	MechPLAIN       = "PLAIN"         // RFC 4616
	MechLOGIN       = "LOGIN"         // obsolete but common
	MechCRAMMD5     = "CRAM-MD5"      // RFC 2195; only when nothing better is offered
	MechXOAUTH2     = "XOAUTH2"       // Google, Microsoft 365: secret is an OAuth 2.0 access token
	MechOAUTHBEARER = "OAUTHBEARER"   // RFC 7628: secret is an OAuth 2.0 access token
)

// maxAuthSteps bounds the challenges one AUTH exchange may take.
const maxAuthSteps = 8

// maxCommandLine is the longest command line RFC 5321 (§4.5.3.1.4)
// allows, CRLF included. An AUTH initial response that would make the
// line longer is sent after the server's first, empty, challenge instead
// (RFC 4954 §4): OAuth access tokens are often longer than that.
const maxCommandLine = 512

// Login authenticates with a password, choosing the strongest mechanism
// both sides offer: SCRAM-SHA-256, then PLAIN, then LOGIN, and CRAM-MD5
// only when the server offers nothing else. With no common mechanism it
// returns an [*Error] of Kind [KindAuth] naming what the server offered.
func (c *Client) Login(ctx context.Context, user, password string) error {
	mech := sasl.Strongest(c.caps.Auth)
	if mech == "" {
		if err := c.checkAuth(); err != nil {
			return err
		}
		if len(c.caps.Auth) == 0 {
			msg := "server offers no AUTH"
			if c.caps.StartTLS && !c.secure {
				msg += " before STARTTLS (servers commonly offer it only over TLS: use ConnectStartTLS)"
			}
			return &Error{Op: OpAUTH, Kind: KindAuth, Message: msg}
		}
		return &Error{Op: OpAUTH, Kind: KindAuth, Message: fmt.Sprintf("no password mechanism in common; server offers %q", strings.Join(c.caps.Auth, " "))}
	}
	return c.LoginWith(ctx, mech, user, password)
}

// LoginWith authenticates with the named mechanism (see the Mech
// constants); for XOAUTH2 and OAUTHBEARER, secret is the access token.
// Credentials are checked before any byte is written. AUTH is refused on
// a session without TLS unless [Options.InsecureAllowPlaintext] is set,
// and may succeed only once per session.
//
// A refusal (535, 534, 454...) is an [*Error] of Kind [KindAuth] with the
// server's codes, temporary or permanent as the code says; the session
// stays usable (a token mechanism's error challenge is answered as its
// specification asks, so the server ends the exchange cleanly), and
// LoginWith may be called again. A server that does not prove itself
// (SCRAM's server signature) ends the session. An unknown or malformed
// mechanism name, and credentials the mechanism cannot carry, are
// [KindInvalidInput]. No error or audit event carries the secret or its
// encodings.
func (c *Client) LoginWith(ctx context.Context, mech, user, secret string) error {
	if err := c.checkAuth(); err != nil {
		return err
	}
	mech = strings.ToUpper(mech)
	if !validMechName(mech) {
		if len(mech) > 32 {
			mech = mech[:32] + "..."
		}
		return inputError(OpAUTH, "invalid SASL mechanism name %q", mech)
	}
	if !c.caps.HasAuth(mech) {
		return &Error{Op: OpAUTH, Kind: KindAuth, Message: fmt.Sprintf("server does not offer %s; it offers %q", mech, strings.Join(c.caps.Auth, " "))}
	}
	m, err := c.mechanism(mech, user, secret)
	if err != nil {
		return &Error{Op: OpAUTH, Kind: KindInvalidInput, Message: mech, Err: err}
	}
	if err := ctxError(ctx, OpAUTH); err != nil {
		return err
	}
	c.watch(ctx)
	defer c.endWatch()
	enhanced, aerr := c.authenticate(ctx, m, secret)
	ev := Event{Type: EventAuth, Op: OpAUTH, Mechanism: mech}
	if aerr != nil {
		ev.Code, ev.Enhanced, ev.Kind, ev.Error = aerr.Code, aerr.Enhanced, aerr.Kind, aerr.Error()
	} else {
		ev.Code, ev.Enhanced = 235, enhanced
	}
	c.audit(ev)
	if aerr != nil {
		return aerr
	}
	c.authed = true
	return nil
}

func (c *Client) checkAuth() *Error {
	if err := c.checkReady(OpAUTH); err != nil {
		return err
	}
	if c.authed {
		return inputError(OpAUTH, "already authenticated: AUTH may succeed only once per session")
	}
	if !c.secure && !c.opts.InsecureAllowPlaintext {
		return &Error{Op: OpAUTH, Kind: KindAuth, Message: "refusing to send credentials on a session without TLS (Options.InsecureAllowPlaintext allows it)"}
	}
	return nil
}

// validMechName reports whether s is a SASL mechanism name (RFC 4422
// §3.1: 1 to 20 upper-case letters, digits, "-" and "_").
func validMechName(s string) bool {
	if len(s) == 0 || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (c *Client) mechanism(mech, user, secret string) (sasl.Mechanism, error) {
	switch mech {
	case MechSCRAMSHA256:
		return sasl.ScramSHA256(user, secret)
	case MechPLAIN:
		return sasl.Plain("", user, secret)
	case MechLOGIN:
		return sasl.Login(user, secret)
	case MechCRAMMD5:
		return sasl.CramMD5(user, secret)
	case MechXOAUTH2:
		return sasl.XOAuth2(user, secret)
	case MechOAUTHBEARER:
		host, port := c.serverName, 0
		if rc, ok := c.t.(interface{ RemoteAddr() net.Addr }); ok && rc.RemoteAddr() != nil {
			if h, p, err := net.SplitHostPort(rc.RemoteAddr().String()); err == nil {
				port, _ = strconv.Atoi(p)
				if host == "" {
					host = h
				}
			}
		}
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		return sasl.OAuthBearer(user, host, port, secret)
	}
	return nil, fmt.Errorf("unsupported mechanism %q", mech)
}

// authenticate runs the AUTH exchange. Protocol and transport errors
// close the session; a refusal leaves it usable. On success it returns
// the enhanced status code of the 235, if any.
//
// Before anything is sent, the secret, and then each line that carries
// it (or a proof derived from it), is registered with the session's text
// filter (see interner; the Redactor of Options, shared with the other
// sessions of its chain, when set), so that no server text read afterwards (a
// reply that echoes the AUTH line, a garbage line quoted in a protocol
// error, a token error report) can carry them into an error, an event
// or a log line.
func (c *Client) authenticate(ctx context.Context, m sasl.Mechanism, secret string) (enhanced string, _ *Error) {
	c.texts.share(c.opts.Redactor) // done when the session starts; here too, in case
	c.texts.addSecret([]byte(secret))
	ir, hasIR, err := m.Start()
	if err != nil {
		return "", &Error{Op: OpAUTH, Kind: KindAuth, Message: m.Name(), Err: err}
	}
	line := "AUTH " + m.Name()
	// deferred is an initial response too long for the command line: it
	// answers the server's first challenge, which must be empty.
	var deferred string
	if hasIR {
		enc := "=" // RFC 4954 §4: an empty initial response
		if len(ir) > 0 {
			enc = base64.StdEncoding.EncodeToString(ir)
			c.guard(m.Name(), secret, ir, enc)
			clear(ir)
		}
		if len(line)+1+len(enc)+2 <= maxCommandLine {
			line += " " + enc
		} else {
			deferred = enc
		}
	}
	rep, rerr := c.cmd(ctx, OpAUTH, c.opts.Timeouts.Command, line+"\r\n")
	for step := 0; rerr == nil && rep.Code == 334; step++ {
		if step == maxAuthSteps {
			return "", c.cancelAuth(ctx, m, "too many challenges", nil)
		}
		var resp string
		if deferred != "" {
			if strings.TrimSpace(rep.Text()) != "" {
				return "", c.cancelAuth(ctx, m, "server sent a challenge where it should ask for the initial response", nil)
			}
			resp, deferred = deferred, ""
		} else {
			chal, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(rep.Text()))
			if derr != nil {
				why := "challenge is not base64"
				if strings.Contains(rep.Text(), servertext.Marker) {
					why = "challenge echoes what the client sent (redacted)"
				}
				return "", c.cancelAuth(ctx, m, why, nil)
			}
			out, merr := m.Next(chal)
			if errors.Is(merr, sasl.ErrServerVerification) {
				// SCRAM: the server's signature does not match, so it does
				// not know the user's keys and may be an impostor. Cancelling
				// would leave the session open to it: drop it.
				return "", c.fail(ctx, &Error{Op: OpAUTH, Kind: KindAuth, Message: m.Name() + ": server did not prove it knows the credentials; session dropped", Err: merr})
			}
			if merr != nil {
				return "", c.cancelAuth(ctx, m, "challenge refused", merr)
			}
			resp = base64.StdEncoding.EncodeToString(out)
			c.guard(m.Name(), secret, out, resp)
			clear(out)
		}
		rep, rerr = c.cmd(ctx, OpAUTH, c.opts.Timeouts.Command, resp+"\r\n")
	}
	if rerr != nil {
		var e *Error
		if errors.As(rerr, &e) {
			return "", e
		}
		return "", ioError(ctx, OpAUTH, rerr)
	}
	switch {
	case rep.Code == 235:
		if err := m.Complete(); err != nil {
			// The server claimed success before the exchange was done
			// (SCRAM: without proving itself): it may be an impostor, so
			// the session is dropped.
			msg := m.Name() + ": server reported success before the exchange was complete; session dropped"
			if errors.Is(err, sasl.ErrServerVerification) {
				msg = m.Name() + ": server did not prove it knows the credentials; session dropped"
			}
			return "", c.fail(ctx, &Error{Op: OpAUTH, Kind: KindAuth, Code: rep.Code, Enhanced: rep.Enhanced, Message: msg, Err: err})
		}
		return rep.Enhanced, nil
	case rep.Code < 400:
		// Not an AUTH reply (smtp-sink answers 250): the client is not
		// authenticated, whatever the server thinks.
		return "", &Error{Op: OpAUTH, Kind: KindProtocol, Code: rep.Code, Enhanced: rep.Enhanced, Message: m.Name() + ": server answered with " + strconv.Itoa(rep.Code) + ", not 235: " + rep.Text()}
	}
	e := &Error{Op: OpAUTH, Kind: KindAuth, Code: rep.Code, Enhanced: rep.Enhanced, Message: m.Name() + " refused: " + rep.Text()}
	if te := sasl.ServerError(m); te != nil {
		te.Status = c.texts.cleanString(te.Status)
		te.Schemes = c.texts.cleanString(te.Schemes)
		te.Scope = c.texts.cleanString(te.Scope)
		e.Err = te
	}
	return "", e
}

// guard registers with the session's text filter what an AUTH message
// about to be sent carries that is secret besides the password or token
// (registered before the exchange): a SCRAM client proof, a CRAM-MD5
// digest; and the parts of the base64 line that encode a secret. What
// is not secret (a user name, a SCRAM nonce, "auth=Bearer") is not
// registered, so that the server's challenges, which repeat the SCRAM
// nonce, and its ordinary text are left intact.
func (c *Client) guard(mech, secret string, raw []byte, line string) {
	if len(secret) >= servertext.MinSecret {
		if i := bytes.Index(raw, []byte(secret)); i >= 0 {
			c.texts.addSent(line, i, i+len(secret))
		}
	}
	i := -1
	switch mech {
	case MechSCRAMSHA256:
		if i = bytes.LastIndex(raw, []byte(",p=")); i >= 0 {
			i += 3
		}
	case MechCRAMMD5:
		if i = bytes.LastIndexByte(raw, ' '); i >= 0 {
			i++
		}
	}
	if i >= 0 && i < len(raw) {
		c.texts.addSecret(raw[i:])
		c.texts.addSent(line, i, len(raw))
	}
}

// cancelAuth answers "*" (RFC 4954 §4) to abandon the exchange and reads
// the server's reply, which must be a refusal (501); the session stays
// usable then. cause is the mechanism's objection to a challenge, if
// any: a SCRAM server error (e=) is the server refusing the credentials,
// so the error is of Kind auth; anything else is a protocol error.
func (c *Client) cancelAuth(ctx context.Context, m sasl.Mechanism, why string, cause error) *Error {
	e := &Error{Op: OpAUTH, Kind: KindProtocol, Message: m.Name() + ": " + why + "; exchange cancelled", Err: cause}
	var se *sasl.SCRAMError
	if errors.As(cause, &se) {
		e.Kind = KindAuth
		se.Value = c.texts.cleanString(se.Value)
	}
	rep, err := c.cmd(ctx, OpAUTH, c.opts.Timeouts.Command, "*\r\n")
	if err != nil {
		// The session broke (cmd closed it): say so too.
		if cause == nil {
			e.Err = err
		} else {
			e.Err = fmt.Errorf("%w (then the session broke: %w)", cause, err)
		}
		return e
	}
	e.Code, e.Enhanced = rep.Code, rep.Enhanced
	if rep.Code < 400 {
		// The server did not accept the cancellation: where the exchange
		// stands is unknown, so the session cannot be trusted.
		e.Message += "; server answered " + strconv.Itoa(rep.Code) + " to the cancellation; session dropped"
		return c.fail(ctx, e)
	}
	return e
}

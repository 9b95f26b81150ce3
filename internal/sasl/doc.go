// Package sasl implements the client side of the SASL mechanisms that SMTP
// submission servers offer in the AUTH extension.
//
// The package does no I/O. Each [Mechanism] is a small state machine: the SMTP
// driver asks it for the initial response, feeds it every server challenge
// (already base64-decoded) and tells it when the server has accepted the
// exchange. Base64 framing, the 334/235/5xx reply codes and cancellation with
// "*" belong to the driver.
//
// # Mechanisms
//
//   - PLAIN, RFC 4616: the authorization identity, the user name and the
//     password in one initial response. Safe only inside TLS.
//   - LOGIN, draft-murchison-sasl-login (never an RFC, but universally
//     deployed): the user name and the password as answers to two prompts.
//   - SCRAM-SHA-256, RFC 5802 and RFC 7677: a salted challenge-response
//     exchange in which the server never sees the password and proves that
//     it knows the stored key. Channel binding (the -PLUS variant) is not
//     implemented.
//   - XOAUTH2, the Google and Microsoft OAuth 2.0 mechanism documented at
//     https://developers.google.com/gmail/imap/xoauth2-protocol.
//   - OAUTHBEARER, RFC 7628: the standardised OAuth 2.0 bearer-token
//     mechanism.
//   - CRAM-MD5, RFC 2195: a keyed MD5 digest of a server challenge. It is
//     provided only for servers that offer nothing better.
//
// The framework itself is described in RFC 4422.
//
// # Driving an exchange
//
// A driver for RFC 4954 AUTH uses a mechanism as follows:
//
//  1. Call Start. If ok is true, send "AUTH <Name> <base64(ir)>", where an
//     empty ir is sent as "="; if ok is false, send "AUTH <Name>".
//  2. On every 334 reply, base64-decode the reply text (empty text is an empty
//     challenge) and pass it to Next. If Next fails, cancel the exchange by
//     sending "*" and report Next's error; otherwise send the base64 of the
//     returned response, which may be an empty line.
//  3. On 235, call Complete. If it fails, the server has not proved its
//     identity (for SCRAM) or the exchange ended in a state the client did
//     not expect; the driver must treat the session as unauthenticated and
//     close it rather than send mail.
//  4. On any other reply the exchange failed. For the token mechanisms,
//     [ServerError] returns what the server said about the token.
//
// A Mechanism value serves exactly one exchange and is not safe for
// concurrent use; build a new one for every AUTH attempt. The responses
// returned by Start and Next contain secrets (or, for SCRAM, values derived
// from them), so the driver must not log them.
//
// # Secrets
//
// No error returned by this package contains a password or a token, and the
// mechanisms format themselves (with %v, %+v, %#v, %s and the other verbs)
// without their secrets, so that logging one by accident is safe.
// Constructors reject unusable input with errors that wrap
// [ErrInvalidCredentials] and name the offending field but never its value.
package sasl

// Package smtpkit sends mail over SMTP from long-running Go programs.
//
// The module has three packages, imported one way:
//
//   - [github.com/smtpkit/smtpkit/sender]: the pool most programs use.
//     Each connection is owned by one goroutine; Send is context-aware,
//     never delivers a message twice, and reconnects on 421.
//   - [github.com/smtpkit/smtpkit/smtp]: one SMTP session on any byte
//     stream: TLS and STARTTLS, AUTH (SCRAM-SHA-256, PLAIN, LOGIN,
//     XOAUTH2, OAUTHBEARER), PIPELINING, CHUNKING, SMTPUTF8, typed and
//     classified errors, a policy hook and audit events.
//   - [github.com/smtpkit/smtpkit/transport]: the byte streams: TCP with
//     implicit TLS, TCP upgradable by STARTTLS, or anything with Read,
//     Write, Close and SetDeadline.
//
// TLS is required; plaintext exists only behind options whose names say
// they are insecure.
package smtpkit

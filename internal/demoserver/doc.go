// Package demoserver is a small SMTP server that runs inside the process
// that starts it, for the smtpsend demo and for this module's runnable
// examples. It is not a test double: it is github.com/emersion/go-smtp,
// configured the way a submission server is.
//
// [Start] listens on a free 127.0.0.1 port and speaks TLS from the first
// byte (implicit TLS, RFC 8314) with a self-signed ECDSA certificate made
// on the spot, whose only trust anchor is [Server.CertPool] (or, with
// [Options.StartTLS], in plaintext until STARTTLS). When [Options.Users]
// is set it offers AUTH PLAIN, with [Options.Tokens] AUTH XOAUTH2, and
// refuses MAIL before a successful login. Every accepted message is recorded, byte for byte as
// the client sent it (after dot-unstuffing or BDAT reassembly), and can be
// read back with [Server.Messages].
//
// So that the demo and the examples can show each kind of failure, three
// recipient local parts behave specially, whatever their domain:
//
//	reject@...  RCPT TO is refused permanently: 550 5.1.1
//	defer@...   RCPT TO is refused temporarily: 451 4.3.0
//	drop@...    the message is received and recorded, then the connection
//	            is closed without a reply: the client cannot know it was
//	            delivered (smtp.ErrOutcomeUnknown)
//
// The package is internal: it is neither a production server nor part of
// the module's API.
package demoserver

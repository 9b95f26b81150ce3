// Command smtpsend sends mail with smtpkit, and shows how.
//
// Run with no flags, it starts an SMTP server inside its own process
// (implicit TLS with a certificate made on the spot, AUTH PLAIN), sends a
// sample message to it through a sender.Sender, and prints the SMTP
// exchange (from the audit events), the outcome and the message as the
// server received it:
//
//	go run ./cmd/smtpsend
//
// With -server it sends message files (RFC 5322, ".eml"), or standard
// input, to a real server:
//
//	SMTP_PASSWORD=... smtpsend -server smtp.example.com:465 \
//	    -user me@example.com -from me@example.com -to you@example.net msg.eml
//
// The password comes from $SMTP_PASSWORD or -password-file, never from a
// flag, which anyone on the machine could read in the process list.
// Several files are sent concurrently over -conns connections, with a
// progress line when standard error is a terminal and a summary table at
// the end.
//
// The exit status follows sysexits.h:
//
//	0   every message was accepted
//	64  bad usage: wrong flags, unreadable files; nothing was sent
//	65  refused permanently (5xx, bad input, a policy veto): sending the
//	    same message again will fail the same way
//	75  temporary failure (4xx, network, timeout): the message was not
//	    accepted; retry later
//	76  outcome unknown: the message was sent but the server's answer was
//	    lost; it may have been delivered, so do not resend it blindly
//	78  the setup must change (EX_CONFIG): the login was refused or is
//	    impossible, the certificate is not trusted or not for the name,
//	    STARTTLS is missing, or -tls does not match the port; nothing will
//	    be sent until someone fixes it
//
// -verify checks the setup (connect, TLS, EHLO, AUTH, QUIT) and sends
// nothing, as a service would at startup; it exits 0, 75 or 78.
//
// With several messages the worst one decides, in the order
// 76 > 78 > 75 > 65 > 0: an unknown outcome needs a person to look before
// anything is resent, so it hides nothing; a broken setup needs a person
// too, and a script that retried it on 75 would only repeat a refused
// login until the account locks; a temporary failure outranks
// a permanent one because a script that retries on 75 loses no mail,
// while one that gives up on 65 would drop the messages that a retry
// could still deliver. Each message's own status is printed on standard
// output, one line per message, so a script can resend only those marked
// "deferred".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

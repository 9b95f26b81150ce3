// Package testpeers starts and stops the real SMTP servers that the tests of
// this module talk to: an in-process github.com/emersion/go-smtp server
// ([GoSMTP]), private Postfix instances ([Postfix], [SMTPSink]) and Mailpit
// ([Mailpit]).
//
// Every peer listens on a free loopback port only, lives in its own temporary
// directory and is stopped by a t.Cleanup that is registered before the peer
// is started, so nothing is left running when a test passes, fails or panics.
// Several test binaries (go test ./... runs packages in parallel) can start
// peers at the same time without sharing any state.
//
// A peer whose program is not installed skips the test, unless the
// environment variable SMTPKIT_REQUIRE_PEERS is set to 1 (CI does), in which
// case the test fails with a message that says how to install it. See
// [Require].
//
// The package is meant for tests only: it calls t.Fatal on setup errors and
// its TLS certificates are throwaway, world-readable and self-signed.
package testpeers

// Package smtpx gives package sender the parts of package smtp's Client
// and Tx that it needs and that are not API: package smtp sets these
// variables in its init, to funcs of the types the comments name, and
// package sender asserts them to those types once, at its own init.
//
// They are variables of type any, not funcs of smtp's types, because
// this package cannot import smtp (smtp imports it).
package smtpx

var (
	// TxSettled is a func(*smtp.Tx) (done bool, out *smtp.Outcome,
	// err error, replay, answered421 bool, sessionErr error): in one
	// look at the session, whether the transaction is done and, if so,
	// its result, whether it may be written again, whether the server
	// answered one of its own commands with 421, and the error that
	// closed the session (nil while open).
	TxSettled any
	// ClientFinished is a func(*smtp.Client) uint64: how many of the
	// client's transactions are done so far; it takes no lock.
	ClientFinished any
	// ClientSilent is a func(*smtp.Client) time.Duration: how long the
	// server has owed a reply without sending any (zero when nothing is
	// owed).
	ClientSilent any
)

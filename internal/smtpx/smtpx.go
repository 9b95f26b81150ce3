// Package smtpx gives package sender the parts of package smtp's Client
// and Tx that it needs and that are not API: package smtp sets these
// variables in its init, to funcs of the types the comments name, and
// package sender asserts them to those types once, at its own init.
//
// They are variables of type any, not funcs of smtp's types, because
// this package cannot import smtp (smtp imports it).
package smtpx

var (
	// TxDone is a func(*smtp.Tx) bool: whether every reply of the
	// transaction has been read, or the session lost.
	TxDone any
	// TxResult is a func(*smtp.Tx) (*smtp.Outcome, error): what ReadTx
	// returns for a transaction that is done, without reading; nil, nil
	// before.
	TxResult any
	// TxReplayable is a func(*smtp.Tx) bool: whether the transaction
	// failed without any chance of delivery and may be written again on
	// another session.
	TxReplayable any
	// TxAnswered421 is a func(*smtp.Tx) bool: whether the server
	// answered one of the transaction's own commands with 421.
	TxAnswered421 any
	// ClientSilent is a func(*smtp.Client) time.Duration: how long the
	// server has owed a reply without sending any (zero when nothing is
	// owed).
	ClientSilent any
)

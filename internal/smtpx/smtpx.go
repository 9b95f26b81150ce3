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
	// ClientOpenWaiting is a func(*smtp.Client) bool: whether the
	// transaction whose commit point waits on replies still waits for
	// the next one it needs.
	ClientOpenWaiting any
	// ClientWritesFromReader is a func(*smtp.Client, replies int) bool:
	// whether the goroutine in ReadReplies may, from its callback, write
	// what leaves the server owing that many replies more without waiting
	// for any and without risking the RFC 2920 deadlock.
	ClientWritesFromReader any
	// ClientFlushReady is a func(*smtp.Client, context.Context,
	// fromReader bool) (open bool, err error): Flush that never waits
	// for a reply (nor, from the reader, writes what it may not); open
	// reports a transaction whose body it has not written.
	ClientFlushReady any
	// ClientReplyBuffered is a func(*smtp.Client) bool: whether a whole
	// reply waits in the read buffer (asked only from ReadReplies'
	// callback).
	ClientReplyBuffered any
)

// SocketLike is the argument of the marker method by which a transport
// inside this module says it buffers like a kernel socket (at least
// 4 KiB each way, so a write never waits on a peer that is itself
// blocked writing replies that fit): KernelBuffered(SocketLike). Only a
// package of this module can name the type, so only its test
// transports (internal/testpeers.BufferedPipe) can claim it.
type SocketLike struct{}

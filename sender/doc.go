// Package sender sends mail from long-running programs over a bounded
// set of SMTP sessions, each owned by one goroutine.
//
// A [Sender] is shared by every goroutine of a program. [Sender.Send]
// hands a request to a session with room for it (dialing one lazily, up
// to [Config.MaxConns]) and waits for its own answer until its context
// ends. There is no queue and no retry beyond one rule, decided per
// message from what the server said about that message: a message the
// server answered with 421, or whose connection was lost before its
// commit point (the final "." or BDAT ... LAST) was written, is written
// again on another session. A message whose commit point was written and
// whose own reply was lost gets [ErrOutcomeUnknown]: it may have been
// delivered, and the sender never writes it twice. Sessions that fail
// before delivering anything are redialled only after a backoff, and
// only while someone waits.
//
// Sessions pipeline: with PIPELINING and CHUNKING up to
// [Config.MaxInFlight] transactions are written ahead of their replies;
// with PIPELINING alone the next transaction's commands leave in the
// same write as the previous body.
package sender

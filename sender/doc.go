// Package sender sends mail from long-running programs over a bounded
// set of SMTP sessions, each owned by one goroutine.
//
// A [Sender] is shared by every goroutine of a program. [Sender.Send]
// hands a request to a session with room for it (dialing one lazily, up
// to [Config.MaxConns]) and waits for its own answer until its context
// ends. There is no queue and no retry beyond one rule: a session the
// server closed (421, or closed while idle) is redialled with backoff,
// and the requests whose commit point had not been written are written
// again. A request whose commit point was written and whose reply was
// lost gets [ErrOutcomeUnknown]: it may have been delivered, and the
// sender never writes it twice.
//
// Sessions pipeline: with PIPELINING and CHUNKING up to
// [Config.MaxInFlight] transactions are written ahead of their replies;
// with PIPELINING alone the next transaction's commands leave in the
// same write as the previous body.
package sender

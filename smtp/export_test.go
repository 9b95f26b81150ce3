package smtp

import "context"

// Test access, for package smtp_test, to what package sender reaches
// through internal/smtpx: each reads Tx.settled, the sender's one look.

// TxDone reports whether every reply of tx has been read.
func TxDone(tx *Tx) bool { done, _, _, _, _, _ := tx.settled(); return done }

// TxResult returns tx's outcome once it is done (nil, nil before).
func TxResult(tx *Tx) (*Outcome, error) { _, out, err, _, _, _ := tx.settled(); return out, err }

// TxReplayable reports whether tx may be written again.
func TxReplayable(tx *Tx) bool { _, _, _, replay, _, _ := tx.settled(); return replay }

// TxAnswered421 reports whether the server answered tx itself with 421.
func TxAnswered421(tx *Tx) bool { _, _, _, _, own421, _ := tx.settled(); return own421 }

// ParseQueueID is the parser behind Outcome.QueueID.
func ParseQueueID(text string) string { return parseQueueID(text) }

// WritesFromReader, OpenWaiting and FlushReady are what the sender's
// reader asks before it writes in its writer's stead (readerwrite.go).
func WritesFromReader(c *Client, replies int) bool { return c.writesFromReader(replies) }
func OpenWaiting(c *Client) bool                   { return c.openWaiting() }
func FlushReady(c *Client, ctx context.Context, fromReader bool) (open bool, err error) {
	return c.flushReady(ctx, fromReader)
}

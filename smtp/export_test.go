package smtp

// Test access, for package smtp_test, to what package sender reaches
// through internal/smtpx.

// TxDone reports whether every reply of tx has been read.
func TxDone(tx *Tx) bool { return tx.isDone() }

// TxResult returns tx's outcome once it is done.
func TxResult(tx *Tx) (*Outcome, error) { return tx.result() }

// TxReplayable reports whether tx may be written again.
func TxReplayable(tx *Tx) bool { return tx.replayable() }

// TxAnswered421 reports whether the server answered tx itself with 421.
func TxAnswered421(tx *Tx) bool { return tx.answered421() }

// ParseQueueID is the parser behind Outcome.QueueID.
func ParseQueueID(text string) string { return parseQueueID(text) }

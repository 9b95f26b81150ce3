package sender

// WriterWakes is how many times the writers of s's sessions have woken
// from waiting for work.
func WriterWakes(s *Sender) int64 { return s.stats.writerWakes.Load() }

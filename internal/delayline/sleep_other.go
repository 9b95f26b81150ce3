//go:build !linux

package delayline

import "time"

func preciseThread() (restore func()) { return func() {} }

// sleep falls back to the Go timer; the waiter's margin grows to cover
// its coarser wake-ups.
func sleep(d time.Duration) { time.Sleep(d) }

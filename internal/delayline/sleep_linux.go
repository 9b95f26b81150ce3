//go:build linux

package delayline

import (
	"syscall"
	"time"
)

const (
	prSetTimerSlack = 29
	prGetTimerSlack = 30
)

// preciseThread lowers the calling thread's timer slack to 1 ns, so a
// nanosleep ends when asked rather than up to 50 µs later, and returns
// the function that restores it. The caller holds runtime.LockOSThread.
func preciseThread() (restore func()) {
	old, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	if errno != 0 {
		return func() {}
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, 1, 0); errno != 0 {
		return func() {}
	}
	return func() { syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, old, 0) }
}

// sleep blocks the calling OS thread for d with nanosleep, which is not
// rounded to the Go timer's millisecond.
func sleep(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil)
}

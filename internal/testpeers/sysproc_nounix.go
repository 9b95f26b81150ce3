//go:build !unix

package testpeers

import "syscall"

// childAttr has nothing to set where processes are not unix ones; on wasip1
// and js, starting a process fails anyway, and the tests that need one skip.
func childAttr(bool) *syscall.SysProcAttr { return nil }

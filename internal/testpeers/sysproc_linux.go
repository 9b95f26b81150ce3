//go:build linux

package testpeers

import "syscall"

// childAttr puts a child in its own process group; with dieWithParent it is
// also sent SIGKILL if the test process dies without running its cleanups
// (a test timeout, for example).
func childAttr(dieWithParent bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if dieWithParent {
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}

//go:build unix && !linux

package testpeers

import "syscall"

// childAttr puts a child in its own process group.
func childAttr(bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

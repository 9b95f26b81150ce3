//go:build linux

package main

import "syscall"

// helperAttr has a helper killed if the measuring process dies without
// stopping it.
func helperAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

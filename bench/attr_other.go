//go:build !linux

package main

import "syscall"

func helperAttr() *syscall.SysProcAttr { return nil }

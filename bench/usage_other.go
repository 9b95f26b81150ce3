//go:build !unix

package main

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }

func ctxSwitches() (int64, bool) { return 0, false }

//go:build !unix

package smtp

import "time"

// processCPU is not measured here: reportCPUPerMB reports nothing.
func processCPU() time.Duration { return 0 }

//go:build unix && !linux

package testkit

import "time"

// processCPUTime is not read outside Linux.
func processCPUTime(int) (time.Duration, bool) { return 0, false }

package testkit

import (
	"time"

	"golang.org/x/sys/unix"
)

// processCPUTime reads the CPU-time clock of process pid, to the
// nanosecond: Linux names it (^pid << 3) | CPUCLOCK_SCHED (2) and lets any
// process read it.
func processCPUTime(pid int) (time.Duration, bool) {
	if pid <= 0 {
		return 0, false
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|2), &ts); err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}

//go:build unix && !linux

package testkit

// processStopped cannot tell outside Linux.
func processStopped(int) (stopped, known bool) { return false, false }

//go:build unix && !linux

package testkit

// processStopped cannot tell outside Linux.
func processStopped(int) (stopped, known bool) { return false, false }

// listeningSockets cannot tell outside Linux.
func listeningSockets(int) (n int, known bool) { return 0, false }

package testkit

import (
	"fmt"
	"os"
	"strings"
)

// processStopped reports whether process pid is stopped (by SIGSTOP), from
// the state in /proc/<pid>/stat; known is false when that cannot be read.
func processStopped(pid int) (stopped, known bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false, false
	}
	// "pid (comm) state …", where comm may hold spaces and parentheses.
	i := strings.LastIndex(string(stat), ") ")
	if i < 0 || i+2 >= len(stat) {
		return false, false
	}
	return stat[i+2] == 'T', true
}

// listeningSockets counts the sockets listening on TCP port (IPv4 and
// IPv6), from the kernel's tables; known is false when none can be read.
func listeningSockets(port int) (n int, known bool) {
	suffix := fmt.Sprintf(":%04X", port)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		known = true
		for line := range strings.Lines(string(data)) {
			// "sl local_address rem_address st …"; st 0A is LISTEN.
			if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" {
				n++
			}
		}
	}
	return n, known
}

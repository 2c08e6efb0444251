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

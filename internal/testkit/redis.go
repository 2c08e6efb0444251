package testkit

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/redisserver"
)

// Redis is a redis-server of a test's own, on a free loopback port, with
// nothing saved to disk. Its methods are the faults a fleet must survive.
type Redis struct {
	t      testing.TB
	server *redisserver.Server
}

// StartRedis starts a redis-server for t and stops it when t ends. It skips
// t when redis-server is not installed (Debian: apt-get install
// redis-server; .ci/run installs it).
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	server, err := redisserver.Start(t.TempDir())
	if errors.Is(err, redisserver.ErrNotInstalled) {
		t.Skip("redis-server is not installed (apt-get install redis-server): skipping the tests against a real Redis")
	}
	if err != nil {
		t.Fatalf("testkit: redis-server did not start: %v", err)
	}
	r := &Redis{t: t, server: server}
	t.Cleanup(r.Stop)
	return r
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.server.Addr() }

// Stop kills the server (frozen or not) and waits for it to exit.
func (r *Redis) Stop() { r.server.Kill() }

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// answers, as with a server stalled on a slow disk or a swapped-out host.
func (r *Redis) Freeze() { r.signal(syscall.SIGSTOP) }

// Resume continues a frozen server.
func (r *Redis) Resume() { r.signal(syscall.SIGCONT) }

func (r *Redis) signal(sig os.Signal) {
	r.t.Helper()
	if err := r.server.Signal(sig); err != nil {
		r.t.Fatalf("testkit: signalling redis-server: %v", err)
	}
}

// Restart kills the server and starts an empty one on the same port, as a
// crashed Redis without persistence comes back.
func (r *Redis) Restart() {
	r.t.Helper()
	if err := r.server.Restart(); err != nil {
		r.t.Fatalf("testkit: restarting redis-server: %v", err)
	}
}

// CPUTime is the processor time (user and system) the server has used so
// far, from /proc: benchmarks divide it by their operations to tell what a
// round trip costs Redis. ok is false where there is no /proc.
func (r *Redis) CPUTime() (used time.Duration, ok bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(r.server.Pid()) + "/stat")
	if err != nil {
		return 0, false
	}
	// utime and stime are the 12th and 13th fields after the command
	// name's closing parenthesis, in ticks of USER_HZ, which Linux fixes at
	// 100 for every architecture it exports /proc on.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 13 {
		return 0, false
	}
	user, err1 := strconv.ParseInt(fields[11], 10, 64)
	system, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(user+system) * 10 * time.Millisecond, true
}

// ProcessCPUTime is the processor time (user and system) this process has
// used so far.
func ProcessCPUTime() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

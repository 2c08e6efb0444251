package testkit

import (
	"errors"
	"os"
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
// far: benchmarks divide it by their operations to tell what a round trip
// costs Redis. ok is false where it cannot be read (outside Linux).
func (r *Redis) CPUTime() (used time.Duration, ok bool) { return processCPUTime(r.server.Pid()) }

// ProcessCPUTime is the processor time (user and system) this process has
// used so far.
func ProcessCPUTime() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

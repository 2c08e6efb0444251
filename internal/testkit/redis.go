package testkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/redisserver"
	"github.com/redis/go-redis/v9"
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
	return startRedis(t, func(dir string) (*redisserver.Server, error) { return redisserver.Start(dir) })
}

func startRedis(t testing.TB, start func(dir string) (*redisserver.Server, error)) *Redis {
	t.Helper()
	server, err := start(t.TempDir())
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

// StartRedisCluster starts a Redis Cluster of three masters (no replicas),
// each slot assigned, for t, and returns the nodes' addresses once the
// cluster says it is ok.
func StartRedisCluster(t testing.TB) []string {
	t.Helper()
	var addrs []string
	var clients []*redis.Client
	for range 3 {
		node := startRedis(t, redisserver.StartClusterNode)
		addrs = append(addrs, node.Addr())
		client := redis.NewClient(&redis.Options{Addr: node.Addr()})
		t.Cleanup(func() { _ = client.Close() })
		clients = append(clients, client)
	}
	ctx := context.Background()
	const slots = 16384
	for i, client := range clients {
		// ADDSLOTS, not ADDSLOTSRANGE, which Redis 6 lacks.
		args := []any{"CLUSTER", "ADDSLOTS"}
		for slot := i * slots / len(clients); slot < (i+1)*slots/len(clients); slot++ {
			args = append(args, slot)
		}
		if err := client.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("testkit: assigning slots: %v", err)
		}
		if i > 0 {
			host, port, _ := net.SplitHostPort(addrs[i])
			if err := clients[0].Do(ctx, "CLUSTER", "MEET", host, port).Err(); err != nil {
				t.Fatalf("testkit: joining the cluster: %v", err)
			}
		}
	}
	// The nodes learn of each other by gossip, a few seconds here.
	for deadline := time.Now().Add(30 * time.Second); !clusterOK(ctx, clients); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("testkit: the Redis Cluster was not ok on every node after 30s")
		}
	}
	return addrs
}

// clusterOK reports whether every node says the cluster is ok.
func clusterOK(ctx context.Context, nodes []*redis.Client) bool {
	for _, node := range nodes {
		if info, err := node.ClusterInfo(ctx).Result(); err != nil || !strings.Contains(info, "cluster_state:ok") {
			return false
		}
	}
	return true
}

// StartRedisSentinel starts a Redis Sentinel for t, watching master under
// masterName, and returns it once it knows the master.
func StartRedisSentinel(t testing.TB, master *Redis, masterName string) *Redis {
	t.Helper()
	sentinel := startRedis(t, func(dir string) (*redisserver.Server, error) {
		return redisserver.StartSentinel(dir, masterName, master.Addr())
	})
	client := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	WaitFor(t, "the Sentinel knows its master", func() bool {
		addr, err := client.GetMasterAddrByName(context.Background(), masterName).Result()
		return err == nil && net.JoinHostPort(addr[0], addr[1]) == master.Addr()
	})
	return sentinel
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.server.Addr() }

// Stop kills the server (frozen or not) and waits for it to exit.
func (r *Redis) Stop() { r.server.Kill() }

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// answers, as with a server stalled on a slow disk or a swapped-out host.
// It returns once the server has stopped: a signal lands when the kernel
// gets to it, and a command sent before that would still be answered.
func (r *Redis) Freeze() {
	r.t.Helper()
	r.signal(syscall.SIGSTOP)
	r.awaitStopped(true)
}

// Resume continues a frozen server, and returns once it runs.
func (r *Redis) Resume() {
	r.t.Helper()
	r.signal(syscall.SIGCONT)
	r.awaitStopped(false)
}

// awaitStopped waits until the server is stopped, or runs; where that
// cannot be read (outside Linux), it returns at once.
func (r *Redis) awaitStopped(stopped bool) {
	r.t.Helper()
	WaitFor(r.t, fmt.Sprintf("redis-server is stopped: %t", stopped), func() bool {
		is, known := processStopped(r.server.Pid())
		return !known || is == stopped
	})
}

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

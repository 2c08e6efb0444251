package testkit

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server of a test's own, on a free loopback port, with
// nothing saved to disk. Its methods are the faults a fleet must survive.
type Redis struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	mu     sync.Mutex // guards cmd and exited
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// redisStartWithin bounds how long a starting redis-server may take to
// answer PING.
const redisStartWithin = 10 * time.Second

// StartRedis starts a redis-server for t and stops it when t ends. It skips
// t when redis-server is not installed (Debian: apt-get install
// redis-server; .ci/run installs it).
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server): skipping the tests against a real Redis")
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir()}
	// A port free a moment ago may be taken before redis-server binds it.
	for attempt := 1; ; attempt++ {
		r.port = FreePort()
		err := r.start()
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("testkit: redis-server did not start: %v", err)
		}
	}
	t.Cleanup(r.Stop)
	return r
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func (r *Redis) start() error {
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--logfile", "",
	)
	out := new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()
	deadline := time.Now().Add(redisStartWithin)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited: %s", strings.TrimSpace(out.String()))
		default:
		}
		if pingRedis(r.Addr()) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("redis-server did not answer PING within %s", redisStartWithin)
}

// pingRedis speaks just enough of the protocol to see the server answer.
func pingRedis(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop kills the server (frozen or not) and waits for it to exit.
func (r *Redis) Stop() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// answers, as with a server stalled on a slow disk or a swapped-out host.
func (r *Redis) Freeze() { r.signal(syscall.SIGSTOP) }

// Resume continues a frozen server.
func (r *Redis) Resume() { r.signal(syscall.SIGCONT) }

func (r *Redis) signal(sig syscall.Signal) {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		r.t.Fatalf("testkit: redis-server is not running")
	}
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("testkit: signalling redis-server: %v", err)
	}
}

// Restart kills the server and starts an empty one on the same port, as a
// crashed Redis without persistence comes back.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	if err := r.start(); err != nil {
		r.t.Fatalf("testkit: restarting redis-server: %v", err)
	}
}

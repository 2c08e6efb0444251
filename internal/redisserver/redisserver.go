// Package redisserver runs a redis-server of one's own, never the system's
// service: on a free loopback port, in a directory the caller gives, with
// nothing saved to disk. The tests (through testkit) and the demo's -fleet
// mode use it.
package redisserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotInstalled is returned by Start when redis-server is not on the PATH.
var ErrNotInstalled = errors.New("redis-server is not installed: apt-get install redis-server (Debian) / brew install redis")

// startWithin bounds how long a starting redis-server may take to answer
// PING.
const startWithin = 10 * time.Second

// Server is a running (or killed) redis-server.
type Server struct {
	bin     string
	dir     string
	port    int
	config  string   // a config file to read first, if any
	args    []string // more arguments, after the defaults
	maxPort int      // the highest port it may take, if not 65535

	mu     sync.Mutex // guards cmd and exited
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// Start starts a redis-server with its files in dir, on a free loopback
// port, with args added to the defaults (e.g. "--cluster-enabled", "yes").
func Start(dir string, args ...string) (*Server, error) {
	return start(&Server{dir: dir, args: args})
}

// StartClusterNode starts a redis-server in cluster mode, with its files
// in dir, on a free loopback port of at most 55535: a cluster node also
// listens on its port + 10000.
func StartClusterNode(dir string) (*Server, error) {
	return start(&Server{dir: dir, args: []string{"--cluster-enabled", "yes"}, maxPort: 65535 - 10000})
}

// StartSentinel starts a Redis Sentinel with its files in dir, on a free
// loopback port, watching the master at masterAddr under masterName.
func StartSentinel(dir, masterName, masterAddr string) (*Server, error) {
	host, port, err := net.SplitHostPort(masterAddr)
	if err != nil {
		return nil, err
	}
	// Sentinel rewrites its config file as it learns: it must be its own.
	config := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("sentinel monitor %s %s %s 1\n", masterName, host, port)), 0o600); err != nil {
		return nil, err
	}
	return start(&Server{dir: dir, config: config, args: []string{"--sentinel"}})
}

func start(s *Server) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNotInstalled
	}
	s.bin = bin
	// A port free a moment ago may be taken before redis-server binds it
	// (redis-server then exits), or be bound by another test binary's
	// server by then (answers tells).
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(s.maxPort); err == nil {
			err = s.start()
		}
		if err == nil {
			return s, nil
		}
		if attempt == 3 {
			return nil, err
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Pid is the running server's process id, 0 when it is not running.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) start() error {
	var args []string
	if s.config != "" {
		args = append(args, s.config) // redis-server reads a config file only as its first argument
	}
	args = append(args,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--logfile", "",
	)
	cmd := exec.Command(s.bin, append(args, s.args...)...)
	out := new(bytes.Buffer) // read once the server has exited, as Wait has copied all
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(startWithin)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			s.Kill()
			return fmt.Errorf("redis-server exited: %s", strings.TrimSpace(out.String()))
		default:
		}
		if answers(s.Addr(), cmd.Process.Pid) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("redis-server did not answer PING within %s", startWithin)
}

// Kill kills the server (frozen or not), as a crash would, and waits for it
// to exit. It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart kills the server if it runs and starts an empty one on the same
// port, as a crashed Redis without persistence comes back.
func (s *Server) Restart() error {
	s.Kill()
	return s.start()
}

// Signal sends sig to the running server: SIGSTOP freezes it (connections
// stay open and nothing answers, as with a server stalled on a slow disk),
// SIGCONT lets it go on.
func (s *Server) Signal(sig os.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("redis-server is not running")
	}
	return s.cmd.Process.Signal(sig)
}

// answers reports whether the server at addr is process pid, speaking just
// enough of the protocol to ask it: a port free a moment ago may have been
// taken by another test binary's server, which must not pass for this one.
func answers(addr string, pid int) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("INFO server\r\n")); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	header, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(header, "$")))
	if !strings.HasPrefix(header, "$") || err != nil {
		return fmt.Errorf("INFO answered %q", header)
	}
	info := make([]byte, size)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	if !strings.Contains(string(info), fmt.Sprintf("\nprocess_id:%d\r", pid)) {
		return fmt.Errorf("another process than redis-server %d answers on %s", pid, addr)
	}
	return nil
}

// freePort is a free loopback port, at most highest when highest is not 0.
func freePort(highest int) (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if highest == 0 || port <= highest {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port at most %d", highest)
}

package redisserver

import (
	"errors"
	"os"
	"testing"
)

// startForTest starts a server for t, killed when t ends; t is skipped
// without redis-server.
func startForTest(t *testing.T) *Server {
	t.Helper()
	s, err := Start(t.TempDir())
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

func TestServerStartsKillsAndRestarts(t *testing.T) {
	s := startForTest(t)
	first := s.Pid()
	if err := answers(s.Addr(), first); err != nil {
		t.Fatalf("a started server does not answer: %v", err)
	}

	s.Kill()
	if answers(s.Addr(), first) == nil || s.Pid() != 0 {
		t.Fatalf("a killed server still answers (pid %d)", s.Pid())
	}
	if err := s.Signal(os.Interrupt); err == nil {
		t.Error("signalling a killed server did not fail")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := answers(s.Addr(), s.Pid()); err != nil || s.Pid() == first || s.Pid() == 0 {
		t.Fatalf("after Restart: ping %v, pid %d (was %d); want a new server on the same port", err, s.Pid(), first)
	}
}

// A server of another test binary on the port is not taken for one's own.
func TestStartOnATakenPortFails(t *testing.T) {
	other := startForTest(t)
	s := &Server{bin: other.bin, dir: t.TempDir(), port: other.Port()}
	t.Cleanup(s.Kill)
	if err := s.start(); err == nil {
		t.Fatalf("started on the port of redis-server %d", other.Pid())
	}
}

func TestStartSaysWhenRedisIsNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := Start(t.TempDir()); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Start without redis-server on the PATH: %v, want ErrNotInstalled", err)
	}
}

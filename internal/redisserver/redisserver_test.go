package redisserver

import (
	"errors"
	"os"
	"testing"
)

func TestServerStartsKillsAndRestarts(t *testing.T) {
	s, err := Start(t.TempDir())
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	if err := ping(s.Addr()); err != nil {
		t.Fatalf("a started server does not answer: %v", err)
	}
	first := s.Pid()

	s.Kill()
	if ping(s.Addr()) == nil || s.Pid() != 0 {
		t.Fatalf("a killed server still answers (pid %d)", s.Pid())
	}
	if err := s.Signal(os.Interrupt); err == nil {
		t.Error("signalling a killed server did not fail")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := ping(s.Addr()); err != nil || s.Pid() == first || s.Pid() == 0 {
		t.Fatalf("after Restart: ping %v, pid %d (was %d); want a new server on the same port", err, s.Pid(), first)
	}
}

func TestStartSaysWhenRedisIsNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := Start(t.TempDir()); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Start without redis-server on the PATH: %v, want ErrNotInstalled", err)
	}
}

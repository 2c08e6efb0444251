package testkit

import "testing"

// Freeze returns once redis-server has stopped, so that no command sent
// after it is answered; Resume once it runs again.
func TestFreezeReturnsOnceRedisHasStopped(t *testing.T) {
	r := StartRedis(t)
	pid := r.server.Pid()
	if _, known := processStopped(pid); !known {
		t.Skip("a process's state cannot be read here")
	}
	for range 20 {
		r.Freeze()
		if stopped, _ := processStopped(pid); !stopped {
			t.Fatal("Freeze returned before redis-server stopped")
		}
		r.Resume()
		if stopped, _ := processStopped(pid); stopped {
			t.Fatal("Resume returned before redis-server ran again")
		}
	}
}

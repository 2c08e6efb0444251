package testkit

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A port from FreePort is Caddy's to bind (with SO_REUSEPORT, as Caddy
// binds), on loopback or every address, and no one else's.
func TestFreePortIsHeldForCaddyAlone(t *testing.T) {
	port := FreePort()
	for _, addr := range []string{"127.0.0.1", "", "[::1]"} {
		if l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", addr, port)); err == nil {
			l.Close()
			t.Errorf("another server bound %q port %d", addr, port)
		}
	}
	asCaddy := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return err
	}}
	for _, addr := range []string{"127.0.0.1", ""} {
		l, err := asCaddy.Listen(context.Background(), "tcp", fmt.Sprintf("%s:%d", addr, port))
		if err != nil {
			t.Fatalf("Caddy cannot bind %q port %d: %v", addr, port, err)
		}
		go func() {
			if conn, err := l.Accept(); err == nil {
				conn.Close()
			}
		}()
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Errorf("no connection reaches Caddy on %q port %d: %v", addr, port, err)
		} else {
			conn.Close()
		}
		l.Close()
	}
}

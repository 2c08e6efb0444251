package testkit

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// FreePort returns a TCP port that no other process can take while this one
// runs, on any address. A port that was merely free a moment ago is not
// enough: test binaries run in parallel, and Caddy binds its ports with
// SO_REUSEPORT, so the Caddies of two binaries given the same port would
// both bind it and answer each other's requests. Here the port stays bound,
// by a socket that never listens and is never closed, with SO_REUSEPORT:
// Caddy, in this process or in a child (same user), binds it too, while the
// kernel hands it to no one else asking for a free port, and a bind without
// SO_REUSEPORT fails.
func FreePort() int {
	port, err := holdPort()
	if err != nil {
		panic("testkit: no free port: " + err.Error())
	}
	return port
}

// holdPort binds a socket with SO_REUSEPORT to a port the kernel picks, on
// every IPv4 and IPv6 address (every IPv4 address without IPv6), and leaves
// it open.
func holdPort() (int, error) {
	fd, err := socket(unix.AF_INET6)
	var addr unix.Sockaddr = &unix.SockaddrInet6{}
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	} else {
		fd, err = socket(unix.AF_INET)
		addr = &unix.SockaddrInet4{}
	}
	if err != nil {
		return 0, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return 0, err
	}
	if err := unix.Bind(fd, addr); err != nil {
		unix.Close(fd)
		return 0, err
	}
	bound, err := unix.Getsockname(fd)
	switch a := bound.(type) {
	case *unix.SockaddrInet6:
		return a.Port, nil
	case *unix.SockaddrInet4:
		return a.Port, nil
	}
	unix.Close(fd)
	return 0, fmt.Errorf("getsockname: %v %T", err, bound)
}

// socket is a TCP socket that the processes this one starts do not inherit.
func socket(family int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Socket(family, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	return fd, err
}

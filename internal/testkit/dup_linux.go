package testkit

import "golang.org/x/sys/unix"

// redirectFD makes newfd a copy of oldfd. Linux on arm64 has no dup2, so
// dup3 it is.
func redirectFD(oldfd, newfd int) error { return unix.Dup3(oldfd, newfd, 0) }

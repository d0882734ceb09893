// Package testnet holds network helpers for the project's tests.
package testnet

import (
	"net"
	"sync"
	"syscall"
	"testing"
)

// RefusedAddr returns a loopback address ("127.0.0.1:port") where every
// connection is refused, for as long as the test runs: a TCP socket is
// bound to the port but never listens, so the kernel answers a connect
// with a reset, and no other socket can take the port meanwhile (unlike
// a listener closed at once, whose port the next test may get).
func RefusedAddr(t testing.TB) string {
	t.Helper()
	addr, _ := Refused(t)
	return addr
}

// Refused is RefusedAddr that can give the port up early: after release
// (which may be called more than once) the test can listen on addr itself,
// for an upstream that comes up late.
func Refused(t testing.TB) (addr string, release func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	var once sync.Once
	release = func() { once.Do(func() { syscall.Close(fd) }) }
	t.Cleanup(release)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		t.Fatalf("getsockname: %T", sa)
	}
	return (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: in4.Port}).String(), release
}

//go:build unix

package main

import (
	"fmt"
	"io"
	"net"
	"syscall"
)

// holdPort binds a TCP socket to addr (127.0.0.1:port) without listening:
// the kernel refuses every connection to it, and no other socket can take
// the port until the returned Closer closes it.
func holdPort(addr string) (io.Closer, error) {
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	ip4 := tcp.IP.To4()
	if ip4 == nil {
		return nil, fmt.Errorf("%s is not an IPv4 address", addr)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	// The closed server's connections linger in TIME_WAIT on this port.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	sa := &syscall.SockaddrInet4{Port: tcp.Port}
	copy(sa.Addr[:], ip4)
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return heldPort(fd), nil
}

type heldPort int

func (h heldPort) Close() error { return syscall.Close(int(h)) }

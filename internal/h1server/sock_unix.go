//go:build unix

package h1server

import (
	"net"
	"syscall"
)

// initRaw makes the connection read its socket directly when it has one.
func (c *conn) initRaw(inner net.Conn, feed func([]byte)) {
	sc, ok := inner.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	c.raw, c.feed = raw, feed
}

func newConnIO() *connIO {
	x := new(connIO)
	x.readFn, x.idleFn = x.doRead, x.doIdleRead
	return x
}

// doRead is c.readFn: one read(2) into c.rdst; false to wait for the
// socket to become readable.
func (c *connIO) doRead(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), c.rdst)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return false
		}
		c.rn, c.rerrno = n, err
		return true
	}
}

// doIdleRead is c.idleFn: it takes a read buffer only once the socket
// has bytes, so that a connection waiting for its next request holds
// none. Go's poller is edge-triggered, but records an edge that arrives
// while nobody waits: a read that finds nothing (EAGAIN) returns the
// buffer and waits for the next edge, and no byte that arrived in
// between is missed.
func (c *connIO) doIdleRead(fd uintptr) bool {
	if c.rb == nil {
		c.rb = rbufPool.Get().(*[rbufSize]byte)[:]
	}
	c.again = false
	for {
		n, err := syscall.Read(int(fd), c.rb)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			rbufPool.Put((*[rbufSize]byte)(c.rb))
			c.rb = nil
			c.again = true
			return c.idleTry
		}
		c.rn, c.rerrno = n, err
		return true
	}
}

//go:build unix

package h2conn

import (
	"io"
	"net"
	"os"
	"syscall"
)

type rawConn = syscall.RawConn

// newRawConn returns c's socket for reading directly, nil if it has
// none.
func newRawConn(c net.Conn) rawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// rawIO reads a socket directly: the functions given to RawConn.Read,
// made once, and their arguments and results.
type rawIO struct {
	c              net.Conn // for the addresses of errors
	readFn, fillFn func(uintptr) bool
	dst            []byte
	buf            **[readBufSize]byte
	n              int
	errno          error
	// testHookWait, when set by a test, runs when fill has given its
	// buffer back and is about to wait for bytes.
	testHookWait func()
}

func newRawIO(c net.Conn) *rawIO {
	x := &rawIO{c: c}
	x.readFn, x.fillFn = x.doRead, x.doFill
	return x
}

// read reads the socket into p, waiting for bytes if it has none.
func (x *rawIO) read(raw rawConn, p []byte) (int, error) {
	x.dst = p
	err := raw.Read(x.readFn)
	x.dst = nil
	return x.result(err)
}

// fill reads the socket into *buf, waiting for bytes if it has none:
// *buf is taken from rbufPool only when the socket has bytes, and given
// back (nil) when it has none.
func (x *rawIO) fill(raw rawConn, buf **[readBufSize]byte) (int, error) {
	x.buf = buf
	err := raw.Read(x.fillFn)
	x.buf = nil
	return x.result(err)
}

func (x *rawIO) result(err error) (int, error) {
	n, errno := x.n, x.errno
	x.n, x.errno = 0, nil
	switch {
	case err != nil:
		return 0, err
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: x.c.LocalAddr(), Addr: x.c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}

// doRead is readFn: one read(2) into dst; false to wait for bytes.
func (x *rawIO) doRead(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), x.dst)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return false
		}
		x.n, x.errno = n, err
		return true
	}
}

// doFill is fillFn: one read(2) into the buffer, taken from the pool if
// needed; when the socket has nothing, the buffer goes back, and false
// waits for bytes. Go's poller is edge-triggered, but records an edge
// that arrives while nobody waits: no byte that arrives between the
// read that found nothing and the wait is missed.
func (x *rawIO) doFill(fd uintptr) bool {
	if *x.buf == nil {
		*x.buf = rbufPool.Get().(*[readBufSize]byte)
	}
	for {
		n, err := syscall.Read(int(fd), (*x.buf)[:])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			rbufPool.Put(*x.buf)
			*x.buf = nil
			if h := x.testHookWait; h != nil {
				h()
			}
			return false
		}
		x.n, x.errno = n, err
		return true
	}
}

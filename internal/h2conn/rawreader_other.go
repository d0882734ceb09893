//go:build !unix

package h2conn

import (
	"errors"
	"net"
	"syscall"
)

type rawConn = syscall.RawConn

// newRawConn: sockets are read through net.Conn's Read here.
func newRawConn(net.Conn) rawConn { return nil }

type rawIO struct{ testHookWait func() }

func newRawIO(net.Conn) *rawIO { return new(rawIO) }

func (*rawIO) read(rawConn, []byte) (int, error) { return 0, errors.ErrUnsupported }

func (*rawIO) fill(rawConn, **[readBufSize]byte) (int, error) {
	return 0, errors.ErrUnsupported
}

//go:build !unix

package h1server

import "net"

// initRaw: without Unix sockets, the connection is read through its
// net.Conn, holding a buffer while idle.
func (c *conn) initRaw(net.Conn, func([]byte)) {}

func newConnIO() *connIO { return new(connIO) }

//go:build !unix

package h1server

import "time"

// Without Unix sockets there is no disconnect watcher: a client that goes
// away is noticed when a read or a write of its connection fails.

type connWatch struct{}

type serverWatch struct{}

func (s *Server) watchShutdown()   { _ = s.watch }
func (c *conn) watchStart()        {}
func (c *conn) watchEnd(bool)      {}
func (c *conn) armWatch(*response) {}
func (c *conn) stopWatch()         {}

func (c *conn) canPark() bool { return false }
func (c *conn) park(time.Duration) bool {
	return false
}
func (c *conn) takeParked() bool { return false }

const parkDelay = time.Second

func (c *conn) canParkHere() bool { return false }

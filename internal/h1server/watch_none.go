//go:build !unix

package h1server

// Without Unix sockets there is no disconnect watcher: a client that goes
// away is noticed when a read or a write of its connection fails.

type connWatch struct{}

type watcher struct{}

func (s *Server) watchShutdown()   {}
func (c *conn) watchStart()        {}
func (c *conn) watchEnd(bool)      {}
func (c *conn) armWatch(*response) {}
func (c *conn) stopWatch()         {}

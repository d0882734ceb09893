package h1server

import (
	"bytes"
	"net"
	"sync"
	"time"
)

// handOff gives the connection, with the bytes read of it so far, to
// Server.HandOff: it is no longer this server's.
func (c *conn) handOff() error {
	c.mu.Lock()
	c.hijacked = true // serve's end leaves it open
	c.mu.Unlock()
	c.watchEnd(true)
	rc := &replayConn{Conn: c.rwc, buf: bytes.Clone(c.rb[c.rp:c.rw])}
	c.releaseRbuf()
	c.releaseWbuf()
	c.rwc.SetReadDeadline(time.Time{})
	c.srv.trackConn(c, false)
	c.srv.HandOff(rc)
	return nil
}

// replayConn is a handed-off connection: its reads return the bytes the
// server read first.
type replayConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	r.mu.Lock()
	if len(r.buf) > 0 {
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		r.mu.Unlock()
		return n, nil
	}
	r.mu.Unlock()
	return r.Conn.Read(p)
}

// Detach returns the bytes the server read first and not yet returned,
// and the connection as the server accepted it, for a reader that reads
// that connection itself from then on (internal/h2conn, which waits for
// bytes on the socket beneath holding no buffer); r is not read again.
func (r *replayConn) Detach() (buffered []byte, inner net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	buffered, r.buf = r.buf, nil
	return buffered, r.Conn
}

// Unwrap returns the connection as the server accepted it, for a
// ConnContext that needs it (h1guard.ConnContext looks for its *Conn):
// c itself unless c is a handed-off connection.
func Unwrap(c net.Conn) net.Conn {
	if r, ok := c.(*replayConn); ok {
		return r.Conn
	}
	return c
}

// ConnQueue is a net.Listener whose Accept returns the connections given
// to Put: pass its Put as Server.HandOff, and the queue to another
// server's Serve (internal/h2server's, an http.Server's), and the h2c
// connections of an HTTP/1 listener are served by that server as if it
// had accepted them.
type ConnQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

// NewConnQueue returns a queue whose Addr is addr.
func NewConnQueue(addr net.Addr) *ConnQueue {
	return &ConnQueue{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

// Put waits for Accept to take c; if the queue is closed first, c is
// closed.
func (q *ConnQueue) Put(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *ConnQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

// Close makes Accept and Put return: later connections are closed.
func (q *ConnQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *ConnQueue) Addr() net.Addr { return q.addr }

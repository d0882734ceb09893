// Package h2conn wraps the connections that net/http's HTTP/2 server and
// transport use, to cut their syscalls per stream:
//
//   - Batched writes. Both flush after nearly every frame, each flush a
//     write(2). Here Write appends to a buffer and returns; one writer
//     goroutine, started when the buffer goes from empty to not empty,
//     yields to every goroutine already runnable and then writes what has
//     piled up, the frames of many streams, in one syscall. Nothing waits
//     on a timer.
//   - Buffered reads (the app-facing side). The server reads each frame
//     straight from its connection, its 9-byte header and its payload in
//     two read(2)s; here a read takes what the socket holds, up to 16 KiB,
//     and the frames are served from that.
//
// A connection accepted by Listen stays as it is (every call passes
// through) unless it opens with the HTTP/2 preface: HTTP/1.1 keeps its
// own writes, sendfile and all. See docs/design.md, "HTTP/2 connections".
package h2conn

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// preface is what an HTTP/2 client sends first (RFC 9113, section 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

const (
	// maxPending is how many bytes may wait for the writer before Write
	// blocks until they are taken.
	maxPending = 256 << 10
	// maxSpare is the largest write buffer kept for reuse.
	maxSpare = 64 << 10
	// readBufSize is the read buffer of an app-facing HTTP/2 connection:
	// one frame of the default maximum size.
	readBufSize = 16 << 10
	// closeGrace bounds how long the writer may still try to write what
	// was pending at Close before the connection is closed anyway.
	closeGrace = 5 * time.Second
)

// Conn is a net.Conn whose writes are batched (and, on the app-facing
// side, reads buffered) once it carries HTTP/2. A failed write is not
// reported by the Write whose bytes it carried, but by every later one;
// the connection is broken then, and its reads fail as well.
type Conn struct {
	net.Conn

	on atomic.Bool // batching and buffering are on

	// The reading goroutine's: sniffing for the preface, then the read
	// buffer. net/http never reads one connection from two goroutines at
	// once.
	sniffing bool
	sniffed  int // bytes of the preface matched so far
	rbuf     []byte
	r, w     int // rbuf[r:w] is read and not yet returned

	mu       sync.Mutex
	cond     sync.Cond // L is &mu; signalled when the writer takes or ends
	buf      []byte    // written, not yet taken by the writer
	spare    []byte    // a taken buffer, for reuse
	writing  bool      // the writer goroutine runs
	err      error     // sticky: the first failed write
	closed   bool      // Close was called
	closeNow bool      // ... while the writer ran: the writer closes
}

// Client returns c with its writes batched from the start: an upstream
// connection of net/http's HTTP/2 transport, which buffers its reads
// itself.
func Client(c net.Conn) *Conn {
	bc := &Conn{Conn: c}
	bc.cond.L = &bc.mu
	bc.on.Store(true)
	return bc
}

// Listen wraps l: each connection it accepts is a *Conn that turns
// batching and read buffering on if it opens with the HTTP/2 preface.
func Listen(l net.Listener) net.Listener { return listener{l} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	bc := &Conn{Conn: c, sniffing: true}
	bc.cond.L = &bc.mu
	return bc, nil
}

// HTTP2 reports whether c carries HTTP/2 (batching and buffering are on).
func (c *Conn) HTTP2() bool { return c.on.Load() }

func (c *Conn) Read(p []byte) (int, error) {
	if c.r < c.w {
		n := copy(p, c.rbuf[c.r:c.w])
		c.r += n
		return n, nil
	}
	if c.rbuf == nil || len(p) >= len(c.rbuf) {
		n, err := c.Conn.Read(p)
		if c.sniffing && n > 0 {
			c.sniff(p[:n])
		}
		return n, err
	}
	n, err := c.Conn.Read(c.rbuf)
	c.r, c.w = 0, n
	m := copy(p, c.rbuf[:n])
	c.r = m
	return m, err
}

// sniff matches the first bytes read against the preface.
func (c *Conn) sniff(b []byte) {
	k := min(len(b), len(preface)-c.sniffed)
	if string(b[:k]) != preface[c.sniffed:c.sniffed+k] {
		c.sniffing = false
		return
	}
	c.sniffed += k
	if c.sniffed == len(preface) {
		c.sniffing = false
		c.rbuf = make([]byte, readBufSize)
		c.on.Store(true)
	}
}

// Write queues p for the writer once batching is on; it blocks only while
// maxPending bytes wait already.
func (c *Conn) Write(p []byte) (int, error) {
	if !c.on.Load() {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	for c.err == nil && !c.closed && len(c.buf) >= maxPending {
		c.cond.Wait()
	}
	switch {
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return 0, err
	case c.closed:
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	if !c.writing {
		c.writing = true
		go c.writeLoop()
	}
	c.mu.Unlock()
	return len(p), nil
}

// writeLoop writes the buffer until it stays empty.
func (c *Conn) writeLoop() {
	// Let every goroutine that is ready to run add its frames first.
	runtime.Gosched()
	c.mu.Lock()
	for len(c.buf) > 0 && c.err == nil {
		b := c.buf
		c.buf, c.spare = c.spare[:0], nil
		c.cond.Broadcast()
		c.mu.Unlock()
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		if cap(b) <= maxSpare {
			c.spare = b[:0]
		}
		if err != nil && c.err == nil {
			c.err = err
		}
	}
	c.buf = c.buf[:0]
	c.writing = false
	c.cond.Broadcast()
	closeNow := c.closeNow
	c.mu.Unlock()
	if closeNow {
		c.Conn.Close()
	}
}

// Close closes the connection once what was written before is written:
// at once when nothing waits, else by the writer, within closeGrace.
// Reads fail from now on either way.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	c.cond.Broadcast()
	if !c.writing {
		c.mu.Unlock()
		return c.Conn.Close()
	}
	c.closeNow = true
	c.mu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(closeGrace))
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		_ = cr.CloseRead()
	}
	return nil
}

// wait blocks until what is pending is written; it returns the sticky
// error, if any.
func (c *Conn) wait() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.writing && c.err == nil {
		c.cond.Wait()
	}
	return c.err
}

// CloseWrite half-closes the connection once what is pending is written,
// if the connection supports that (as *net.TCPConn does).
func (c *Conn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.ErrUnsupported
	}
	if err := c.wait(); err != nil {
		return err
	}
	return cw.CloseWrite()
}

// ReadFrom copies r to the connection after what is pending, keeping the
// wrapped connection's fast paths (sendfile, splice).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if c.on.Load() {
		if err := c.wait(); err != nil {
			return 0, err
		}
	}
	return io.Copy(c.Conn, r)
}

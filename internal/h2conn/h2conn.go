// Package h2conn wraps the connections that carry HTTP/2, the app-facing
// ones of internal/h2server and the upstream ones of net/http's HTTP/2
// transport, to cut their syscalls per stream:
//
//   - Batched writes. Frames are written one at a time, by many streams;
//     here Write appends to a buffer and returns; one writer goroutine,
//     started when the buffer goes from empty to not empty, yields to
//     every goroutine already runnable and then writes what has piled up,
//     the frames of many streams, in one syscall. Nothing waits on a
//     timer.
//   - Buffered reads (the app-facing side, Server). A frame is read as
//     its 9-byte header and its payload; here a read takes what the
//     socket holds, up to 16 KiB, and the frames are served from that.
//
// See docs/design.md, "HTTP/2 connections".
package h2conn

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"time"
)

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
// side, reads buffered). A failed write is not reported by the Write
// whose bytes it carried, but by every later one; the connection is
// broken then, and its reads fail as well.
type Conn struct {
	net.Conn

	// The reading goroutine's read buffer (Server's). Nothing reads one
	// connection from two goroutines at once.
	rbuf []byte
	r, w int // rbuf[r:w] is read and not yet returned

	mu       sync.Mutex
	cond     sync.Cond // L is &mu; signalled when the writer takes or ends
	buf      []byte    // written, not yet taken by the writer
	spare    []byte    // a taken buffer, for reuse
	writing  bool      // the writer goroutine runs
	err      error     // sticky: the first failed write
	closed   bool      // Close was called
	closeNow bool      // ... while the writer ran: the writer closes
}

// Client returns c with its writes batched: an upstream connection of
// net/http's HTTP/2 transport, which buffers its reads itself.
func Client(c net.Conn) *Conn {
	bc := &Conn{Conn: c}
	bc.cond.L = &bc.mu
	return bc
}

// Server returns c with its writes batched and its reads buffered: an
// app-facing connection of internal/h2server, which reads every frame
// in two small reads.
func Server(c net.Conn) *Conn {
	bc := Client(c)
	bc.rbuf = make([]byte, readBufSize)
	return bc
}

func (c *Conn) Read(p []byte) (int, error) {
	if c.r < c.w {
		n := copy(p, c.rbuf[c.r:c.w])
		c.r += n
		return n, nil
	}
	if c.rbuf == nil || len(p) >= len(c.rbuf) {
		return c.Conn.Read(p)
	}
	n, err := c.Conn.Read(c.rbuf)
	c.r, c.w = 0, n
	m := copy(p, c.rbuf[:n])
	c.r = m
	return m, err
}

// Write queues p for the writer; it blocks only while maxPending bytes
// wait already.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && !c.closed && len(c.buf) >= maxPending {
		c.cond.Wait()
	}
	if _, err := c.queueLocked(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Queue is Write without the wait: it queues p whatever waits already,
// and returns how many bytes wait then. It is for a writer that must not
// block on a peer that does not read (the reading goroutine of
// internal/h2server, answering PINGs and SETTINGS) and bounds what it
// queues itself.
func (c *Conn) Queue(p []byte) (pending int, err error) {
	c.mu.Lock()
	return c.queueLocked(p)
}

// queueLocked appends p to the buffer and unlocks c.mu.
func (c *Conn) queueLocked(p []byte) (int, error) {
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
	n := len(c.buf)
	c.mu.Unlock()
	return n, nil
}

// Writable reports whether fewer than maxPending bytes wait, so that a
// Write would not block, or the error a Write would return.
func (c *Conn) Writable() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return false, c.err
	case c.closed:
		return false, net.ErrClosed
	}
	return len(c.buf) < maxPending, nil
}

// WaitWritable blocks while maxPending bytes wait; it returns the error
// a Write would return.
func (c *Conn) WaitWritable() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closed && len(c.buf) >= maxPending {
		c.cond.Wait()
	}
	switch {
	case c.err != nil:
		return c.err
	case c.closed:
		return net.ErrClosed
	}
	return nil
}

// MaxPending is how many bytes may wait before Write blocks.
const MaxPending = maxPending

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
	if err := c.wait(); err != nil {
		return 0, err
	}
	return io.Copy(c.Conn, r)
}

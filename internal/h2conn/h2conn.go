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
//     The buffer is held only while it holds bytes or the socket has
//     more: a read that finds the socket empty gives it back to a pool
//     and waits for bytes without one (on Unix, through the socket's
//     syscall.RawConn), so that an idle connection holds no buffer.
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

	// The reading side, Server's: the reading goroutine's alone (nothing
	// reads one connection from two goroutines at once).
	buffered bool
	// rbuf[r:w] is read and not yet returned. rbuf is nil while the
	// connection waits for bytes with none buffered (when rd.raw is
	// set): it comes from rbufPool.
	rbuf *[readBufSize]byte
	r, w int
	rd   rawReader

	mu       sync.Mutex
	cond     sync.Cond // L is &mu; signalled when the writer takes or ends
	buf      *wbuf     // written, not yet taken by the writer; nil: nothing
	spare    *wbuf     // a taken buffer, for reuse while the writer runs
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
//
// Where it can, it reads the socket beneath c itself, so as to wait for
// bytes holding no buffer: beneath a wrapper that has read ahead
// (Detach, internal/h1server's hand-off) and one that watches the bytes
// read (NetConn and Feed, internal/h1guard), which is fed what is read.
// c's other methods (deadlines, Close) are used as they are.
func Server(c net.Conn) *Conn {
	bc := Client(c)
	bc.buffered = true
	bc.rd.init(c)
	return bc
}

var rbufPool = sync.Pool{New: func() any { return new([readBufSize]byte) }}

// wbuf is a write buffer. A connection holds its write buffers only
// while it has bytes to write: when the writer has written them all,
// they go back to wbufPool, so that an idle connection holds none.
type wbuf struct{ b []byte }

var wbufPool = sync.Pool{New: func() any { return new(wbuf) }}

// queuedLocked is how many bytes wait for the writer.
func (c *Conn) queuedLocked() int {
	if c.buf == nil {
		return 0
	}
	return len(c.buf.b)
}

// rawReader is how a Server connection reads: the bytes pre first, then
// raw (the socket, see rawreader_unix.go), or src's Read when there is
// no raw.
type rawReader struct {
	pre  []byte       // read ahead by a wrapper, not yet returned
	src  net.Conn     // what is read when raw is nil
	raw  rawConn      // the socket beneath, read directly
	feed func([]byte) // a wrapper's, told every byte read beneath it
	io   *rawIO       // raw's reading state
}

// detacher is a connection that has read ahead of its reader
// (internal/h1server's hand-off): Detach returns those bytes and the
// connection beneath, which the caller reads from then on.
type detacher interface {
	Detach() (buffered []byte, inner net.Conn)
}

// tap is a connection that watches the bytes read through it
// (internal/h1guard's): a reader of NetConn tells it every byte through
// Feed, in order.
type tap interface {
	NetConn() net.Conn
	Feed([]byte)
}

func (rd *rawReader) init(c net.Conn) {
	rd.src = c
	if d, ok := c.(detacher); ok {
		rd.pre, rd.src = d.Detach()
	}
	inner, feed := rd.src, func([]byte) {}
	if t, ok := inner.(tap); ok {
		inner, feed = t.NetConn(), t.Feed
	}
	if raw := newRawConn(inner); raw != nil {
		rd.raw, rd.feed, rd.io = raw, feed, newRawIO(c)
	}
}

func (c *Conn) Read(p []byte) (int, error) {
	if c.r < c.w {
		n := copy(p, c.rbuf[c.r:c.w])
		c.r += n
		return n, nil
	}
	if !c.buffered {
		return c.Conn.Read(p)
	}
	if len(c.rd.pre) > 0 {
		n := copy(p, c.rd.pre)
		c.rd.pre = c.rd.pre[n:]
		if len(c.rd.pre) == 0 {
			c.rd.pre = nil
		}
		return n, nil
	}
	if len(p) >= readBufSize {
		return c.readDirect(p)
	}
	n, err := c.fill()
	c.r, c.w = 0, n
	if n == 0 {
		return 0, err
	}
	m := copy(p, c.rbuf[:n])
	c.r = m
	return m, err
}

// Buffered reports how many bytes were read from the socket and not yet
// returned by Read (Server's; from the reading goroutine).
func (c *Conn) Buffered() int { return c.w - c.r + len(c.rd.pre) }

// Fill waits until Read has bytes to return without reading the socket,
// reading the socket once if it has none buffered: a reader that holds
// buffers of its own (a framer's) can give them up and wait here with
// none (Server's; from the reading goroutine).
func (c *Conn) Fill() error {
	if !c.buffered || c.Buffered() > 0 {
		return nil
	}
	n, err := c.fill()
	c.r, c.w = 0, n
	if n > 0 {
		return nil // an error comes back with the next read
	}
	return err
}

// readDirect reads the socket into p, without the buffer, which holds
// nothing.
func (c *Conn) readDirect(p []byte) (int, error) {
	if c.rd.raw == nil {
		return c.rd.src.Read(p)
	}
	n, err := c.rd.io.read(c.rd.raw, p)
	if n > 0 {
		c.rd.feed(p[:n])
	}
	return n, err
}

// fill reads the socket into the buffer, which holds nothing. Reading
// the socket directly, it takes the buffer only once the socket has
// bytes, and gives it back when it has none.
func (c *Conn) fill() (int, error) {
	if c.rd.raw == nil {
		if c.rbuf == nil {
			c.rbuf = rbufPool.Get().(*[readBufSize]byte)
		}
		return c.rd.src.Read(c.rbuf[:])
	}
	n, err := c.rd.io.fill(c.rd.raw, &c.rbuf)
	if n > 0 {
		c.rd.feed(c.rbuf[:n])
	}
	return n, err
}

// Write queues p for the writer; it blocks only while maxPending bytes
// wait already.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && !c.closed && c.queuedLocked() >= maxPending {
		c.cond.Wait()
	}
	if _, err := c.queueLocked(p, nil); err != nil {
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
	return c.queueLocked(p, nil)
}

// QueueFrame is Queue for a frame given as its header and its payload,
// which are copied as one.
func (c *Conn) QueueFrame(header, payload []byte) (pending int, err error) {
	c.mu.Lock()
	return c.queueLocked(header, payload)
}

// queueLocked appends p and then q to the buffer and unlocks c.mu.
func (c *Conn) queueLocked(p, q []byte) (int, error) {
	switch {
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return 0, err
	case c.closed:
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.buf == nil {
		c.buf = wbufPool.Get().(*wbuf)
	}
	c.buf.b = append(c.buf.b, p...)
	c.buf.b = append(c.buf.b, q...)
	if !c.writing {
		c.writing = true
		go c.writeLoop()
	}
	n := len(c.buf.b)
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
	return c.queuedLocked() < maxPending, nil
}

// WaitWritable blocks while maxPending bytes wait; it returns the error
// a Write would return.
func (c *Conn) WaitWritable() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closed && c.queuedLocked() >= maxPending {
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
	for c.queuedLocked() > 0 && c.err == nil {
		b := c.buf
		c.buf, c.spare = c.spare, nil
		c.cond.Broadcast()
		c.mu.Unlock()
		_, err := c.Conn.Write(b.b)
		c.mu.Lock()
		c.spare = b
		release(&c.spare, false)
		if err != nil && c.err == nil {
			c.err = err
		}
	}
	// Nothing waits (or nothing more will be written): the buffers go
	// back to the pool until the next write.
	release(&c.buf, true)
	release(&c.spare, true)
	c.writing = false
	c.cond.Broadcast()
	closeNow := c.closeNow
	c.mu.Unlock()
	if closeNow {
		c.Conn.Close()
	}
}

// release empties *b, dropping a buffer larger than maxSpare, and with
// pool gives it back to wbufPool; c.mu is held.
func release(b **wbuf, pool bool) {
	if *b == nil {
		return
	}
	if cap((*b).b) > maxSpare {
		(*b).b = nil
	}
	(*b).b = (*b).b[:0]
	if pool {
		wbufPool.Put(*b)
		*b = nil
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

package h1server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Connection states, for Shutdown (as net/http's ConnState).
const (
	stateNew    = iota // accepted, no byte of a request read yet
	stateActive        // reading or serving a request
	stateIdle          // waiting for the next request
)

// Buffer sizes. A read buffer holds a request head and what follows it in
// the same reads; a head longer than rbufSize moves to a buffer of the
// server's head limit. The write buffer holds a response head and, until
// the handler returns or flushes, up to pendingMax bytes of its body: a
// body that fits gets a Content-Length, a longer one is chunked.
const (
	rbufSize   = 4 << 10
	wbufSize   = 8 << 10
	pendingMax = 4 << 10
	// reserve is the room left between a response's header fields and
	// its body for the framing fields, which are known only once the
	// body is (see response.commit).
	reserve = 256
)

var (
	rbufPool = sync.Pool{New: func() any { return new([rbufSize]byte) }}
	wbufPool = sync.Pool{New: func() any { return new([wbufSize]byte) }}
)

// tap is a connection that watches the bytes read through it:
// internal/h1guard's *Conn. The server reads the socket beneath it
// (NetConn) and hands it the bytes (Feed).
type tap interface {
	NetConn() net.Conn
	Feed([]byte)
}

// conn is one client connection, served by one goroutine (serve). The
// fields without a comment belong to that goroutine, or, while a handler
// runs, to whichever goroutine reads the request body (under its mutex).
//
// It is what an idle connection costs, 10,000 of them for an app that
// keeps a large keep-alive pool: what only a connection being served
// needs is in its connIO, which a parked connection gives back (see
// docs/design.md, "The app-facing HTTP/1.1 server").
type conn struct {
	srv        *Server
	rwc        net.Conn // as accepted
	ctx        context.Context
	remoteAddr string

	// raw is the socket beneath rwc, read directly; nil if it has none,
	// and then the connection is read through rwc, holding a buffer while
	// idle, and has no disconnect watcher. feed is rwc's, if it is a tap.
	raw  syscall.RawConn
	feed func([]byte)

	// connIO is the state of the connection's reads and writes: nil while
	// it is parked, from a pool otherwise.
	*connIO

	// headDL is set while a head deadline (ReadHeaderTimeout or
	// IdleTimeout) is in force on the socket.
	headDL bool
	// afterPOST: the last request was a POST (CR and LF bytes before the
	// next head are skipped, as net/http does).
	afterPOST bool
	// The handler set a deadline: reset before the next request.
	hdlReadDL, hdlWriteDL atomic.Bool

	mu       sync.Mutex // guards hijacked and handedOff
	hijacked bool

	state atomic.Uint64 // unix seconds << 8 | state

	// cur is the request in flight; nil between requests.
	cur atomic.Pointer[response]
	// watch is the connection's part of the disconnect watcher (see
	// armWatch, in watch_*.go).
	watch connWatch
}

// connIO is the part of a connection that only a connection being served
// needs: its buffers (held only while a request is read or answered) and
// the state of its reads and writes. A connection parked (see park) has
// none: it gives its connIO back to ioPool, and takes one again when it
// resumes. Its fields belong to the connection's goroutine.
type connIO struct {
	readFn func(uintptr) bool // io.doRead, made once per connIO
	idleFn func(uintptr) bool // io.doIdleRead
	// readFn's and idleFn's argument and results.
	rdst    []byte
	rn      int
	rerrno  error
	idleTry bool // idleFn only tries: it does not wait
	again   bool // idleFn found nothing to read

	// The read buffer: rb[rp:rw] is read and not consumed. nil while
	// idle with nothing buffered.
	rb     []byte
	rp, rw int
	rerr   error // sticky read error

	// The write buffer: wb[ws:wn] is waiting to be written. nil while
	// idle.
	wb     []byte
	ws, wn int
	werr   error
}

var ioPool = sync.Pool{New: func() any { return newConnIO() }}

// attachIO gives the connection a connIO.
func (c *conn) attachIO() { c.connIO = ioPool.Get().(*connIO) }

// detachIO gives the connection's connIO back, clean: the connection
// holds no buffer, and has no error and nothing buffered.
func (c *conn) detachIO() {
	x := c.connIO
	c.connIO = nil
	*x = connIO{readFn: x.readFn, idleFn: x.idleFn}
	ioPool.Put(x)
}

func newConn(s *Server, rwc net.Conn, ctx context.Context) *conn {
	c := &conn{srv: s, rwc: rwc, ctx: ctx}
	c.attachIO()
	if ra := rwc.RemoteAddr(); ra != nil {
		c.remoteAddr = ra.String()
	}
	inner := rwc
	var feed func([]byte)
	if t, ok := rwc.(tap); ok {
		inner, feed = t.NetConn(), t.Feed
	}
	c.initRaw(inner, feed)
	c.setState(stateNew)
	return c
}

// setState records the connection's state for Shutdown. Only a new
// connection's time is ever read (closeIdleConns, as net/http: one that
// has sent nothing for 5 s counts as idle), so the other states, set
// twice per request, skip the clock: on a VM it costs more than the rest
// of this.
func (c *conn) setState(st int) {
	if st != stateNew {
		c.state.Store(uint64(st))
		return
	}
	c.state.Store(uint64(time.Now().Unix())<<8 | uint64(st))
}

func (c *conn) getState() (int, int64) {
	v := c.state.Load()
	return int(v & 0xff), int64(v >> 8)
}

// errHandedOff ends serve for a connection given to Server.HandOff.
var errHandedOff = errors.New("h1server: connection handed off")

// serve serves the connection, from its accept.
func (c *conn) serve() {
	c.watchStart()
	if d := c.srv.ReadHeaderTimeout; d > 0 {
		c.rwc.SetReadDeadline(time.Now().Add(d))
		c.headDL = true
	}
	c.run(true)
}

// run reads requests off the connection and serves them in order until
// the connection closes, fails, is hijacked or handed off, or, idle for
// the park delay between two requests, is parked (see park): then run
// returns, and the watcher resumes the connection on a new goroutine.
//
// Between requests the goroutine waits for the next one itself (waitNext),
// keeping the stack its requests grew (16 or 32 KiB through the proxy)
// for up to the park delay. Waiting on a new goroutine instead would free
// that stack at once, but every request would then grow a small stack
// again, copying its frames at each doubling: about 5 % of a request's
// CPU under load, for memory that a busy connection uses again within
// milliseconds. A connection idle past the park delay has no goroutine
// and no stack at all.
func (c *conn) run(first bool) {
	moved := false
	var inFlight *response
	defer func() {
		if moved {
			return
		}
		if p := recover(); p != nil && p != http.ErrAbortHandler {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			c.srv.logf("http: panic serving %v: %v\n%s", c.remoteAddr, p, buf)
		}
		if inFlight != nil {
			inFlight.cancel()
			inFlight.disableWriteContinue()
		}
		c.mu.Lock()
		gone := c.hijacked
		c.mu.Unlock()
		if gone {
			return
		}
		if inFlight != nil {
			c.stopWatch()
			if inFlight.body != nil {
				inFlight.body.Close()
			}
		}
		c.close()
	}()

	for {
		if !first && c.raw != nil && c.buffered() == 0 && c.rerr == nil && !c.hdlReadDL.Load() {
			c.releaseRbuf()
			parked, err := c.waitNext()
			if parked {
				moved = true
				return // the watcher resumes it
			}
			if err != nil {
				return
			}
		}
		w, err := c.readRequest(first)
		if err == errHandedOff {
			return
		}
		if c.rp != 0 || c.rw != 0 || w != nil {
			c.setState(stateActive)
		}
		if c.srv.shuttingDown() {
			return
		}
		if err != nil {
			c.replyError(err)
			return
		}
		first = false
		req := w.req

		if hasToken(req.Header.Get("Expect"), "100-continue") {
			if req.ProtoAtLeast(1, 1) && req.ContentLength != 0 && w.body != nil {
				w.body.expect = true
				w.canWriteContinue.Store(true)
			}
		} else if req.Header.Get("Expect") != "" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusExpectationFailed)
			w.finishRequest()
			return
		}

		c.cur.Store(w)
		if w.body == nil {
			c.armWatch(w)
		}
		inFlight = w
		if req.Method == "OPTIONS" && req.RequestURI == "*" {
			optionsStar(w, req)
		} else {
			c.srv.Handler.ServeHTTP(w, req)
		}
		inFlight = nil
		w.cancel()
		c.mu.Lock()
		gone := c.hijacked
		c.mu.Unlock()
		if gone {
			return
		}
		w.finishRequest()
		c.cur.Store(nil)
		if !w.shouldReuseConnection() {
			if w.requestBodyLimitHit || (w.body != nil && w.body.earlyClosed()) {
				c.closeWriteAndWait()
			}
			return
		}
		c.releaseWbuf()
		c.setState(stateIdle)
		if c.srv.shuttingDown() {
			return
		}
		c.srv.notifyChanged()
	}
}

// optionsStar answers "OPTIONS *" as net/http's server does, whose
// handler never sees it.
func optionsStar(w *response, r *http.Request) {
	w.Header().Set("Content-Length", "0")
	if r.ContentLength != 0 {
		// Up to 4 KiB of body is read; beyond that the connection closes.
		n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 4<<10+1))
		if n > 4<<10 {
			w.requestTooLarge()
		}
	}
}

// close releases the connection's buffers and closes it. A parked
// connection has none. Its connIO is left to the collector: a handler's
// goroutine may still hold the connection through its request.
func (c *conn) close() {
	if c.connIO != nil {
		if c.ws < c.wn && c.werr == nil {
			c.flush()
		}
		c.releaseWbuf()
		c.releaseRbuf()
	}
	c.watchEnd(false)
	c.rwc.Close()
	c.srv.trackConn(c, false)
}

// closeWriteAndWait sends FIN and, rather than closing at once (which
// would make the kernel answer the client's unread bytes with RST, which
// can destroy the answer before the client reads it), waits 500 ms, as
// net/http waits: it reads and discards what the client still sends, up
// to 256 KiB, and waits out the rest of the 500 ms without reading. A
// client still sending a large body (an upload the proxy answered early:
// docs/design.md, "The app-facing HTTP/1.1 server") would otherwise meet
// the RST as soon as those 256 KiB were read, and lose the answer.
func (c *conn) closeWriteAndWait() {
	if c.ws < c.wn && c.werr == nil {
		c.flush()
	}
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	deadline := time.Now().Add(500 * time.Millisecond)
	c.rwc.SetReadDeadline(deadline)
	if c.rb == nil {
		c.getRbuf()
	}
	for total := 0; ; {
		n, err := c.sockRead(c.rb)
		total += n
		if err != nil {
			return
		}
		if total >= 256<<10 {
			break
		}
	}
	time.Sleep(time.Until(deadline))
}

// Errors of a request head, answered as net/http answers them.
var (
	errTooLarge   = errors.New("h1server: request head too large")
	errBadRequest = errors.New("h1server: malformed request")
	errSilent     = errors.New("h1server: connection ended before a request")
	errUnsupTE    = errors.New("h1server: unsupported transfer encoding")
)

// statusError is answered with its code and text.
type statusError struct {
	code int
	text string
}

func (e statusError) Error() string { return http.StatusText(e.code) + ": " + e.text }

const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// replyError answers a request the server refuses itself, as net/http's
// server does (same status, text and headers), and leaves the connection
// to be closed.
func (c *conn) replyError(err error) {
	var msg string
	switch err {
	case errSilent:
		return
	case errTooLarge:
		const publicErr = "431 Request Header Fields Too Large"
		msg = "HTTP/1.1 " + publicErr + errorHeaders + publicErr
	case errUnsupTE:
		msg = "HTTP/1.1 501 Not Implemented" + errorHeaders + "Unsupported transfer encoding"
	default:
		if se, ok := err.(statusError); ok {
			line := itoa3(se.code) + " " + http.StatusText(se.code) + ": " + se.text
			msg = "HTTP/1.1 " + line + errorHeaders + line
		} else {
			const publicErr = "400 Bad Request"
			msg = "HTTP/1.1 " + publicErr + errorHeaders + publicErr
		}
	}
	c.rwc.SetWriteDeadline(time.Now().Add(time.Second))
	if _, werr := io.WriteString(c.rwc, msg); werr != nil {
		return
	}
	c.closeWriteAndWait()
}

func itoa3(code int) string {
	return string([]byte{byte('0' + code/100%10), byte('0' + code/10%10), byte('0' + code%10)})
}

// ---- reading ----

func (c *conn) getRbuf() {
	c.rb = rbufPool.Get().(*[rbufSize]byte)[:]
	c.rp, c.rw = 0, 0
}

func (c *conn) releaseRbuf() {
	if len(c.rb) == rbufSize {
		rbufPool.Put((*[rbufSize]byte)(c.rb))
	}
	c.rb = nil
	c.rp, c.rw = 0, 0
}

func (c *conn) buffered() int { return c.rw - c.rp }

// sockRead reads once from the socket into p (len(p) > 0), waiting for
// bytes if there are none; io.EOF when the client closed.
func (c *conn) sockRead(p []byte) (int, error) {
	if c.raw == nil {
		return c.rwc.Read(p)
	}
	c.rdst = p
	err := c.raw.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rdst, c.rn, c.rerrno = nil, 0, nil
	return c.readResult(p, n, errno, err)
}

func (c *conn) readResult(p []byte, n int, errno, err error) (int, error) {
	if err == nil && errno != nil {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.rwc.LocalAddr(), Addr: c.rwc.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	}
	if err != nil {
		return 0, err
	}
	if n <= 0 {
		return 0, io.EOF
	}
	if c.feed != nil {
		c.feed(p[:n])
	}
	return n, nil
}

// fill reads once more into the read buffer, after what it holds.
func (c *conn) fill() error {
	if c.rerr != nil {
		return c.rerr
	}
	if c.rb == nil {
		c.getRbuf()
	}
	if c.rp == c.rw {
		c.rp, c.rw = 0, 0
	} else if c.rw == len(c.rb) && c.rp > 0 {
		c.rw = copy(c.rb, c.rb[c.rp:c.rw])
		c.rp = 0
	}
	if c.rw == len(c.rb) {
		return bufio.ErrBufferFull
	}
	n, err := c.sockRead(c.rb[c.rw:])
	c.rw += n
	if err != nil {
		c.rerr = err
	}
	return err
}

// bufRead is bufio.Reader.Read on the read buffer: buffered bytes if
// there are any, else one read of the socket, into p directly when p is
// at least a buffer long.
func (c *conn) bufRead(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.rp == c.rw {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.rb == nil || len(p) >= len(c.rb) {
			n, err := c.sockRead(p)
			if err != nil {
				c.rerr = err
			}
			return n, err
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.rb[c.rp:c.rw])
	c.rp += n
	return n, nil
}

// waitRequest waits for the first bytes of the next request, holding no
// buffer meanwhile, within timeout (zero: none) from now.
func (c *conn) waitRequest(timeout time.Duration) error {
	if c.rerr != nil {
		return c.rerr
	}
	if c.raw == nil {
		if timeout > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(timeout))
			c.headDL = true
		}
		return c.fill()
	}
	c.releaseRbuf()
	// One try first: under load the next request is often there already,
	// and then no deadline needs setting.
	if !c.tryRead() {
		return c.rerr
	}
	return c.waitRead(timeout)
}

// tryRead reads what the socket holds, taking a buffer only if it holds
// something; it reports whether it held nothing. The buffer must be
// released and empty.
func (c *conn) tryRead() (empty bool) {
	c.idleTry = true
	err := c.raw.Read(c.idleFn)
	c.idleTry = false
	if err == nil && c.again {
		return true
	}
	c.idleResult(err)
	return false
}

// waitRead waits for the socket to have bytes (within timeout, zero:
// none), holding no buffer meanwhile, and reads them.
func (c *conn) waitRead(timeout time.Duration) error {
	if timeout > 0 {
		c.rwc.SetReadDeadline(time.Now().Add(timeout))
		c.headDL = true
	}
	if h := c.srv.testHookIdle; h != nil {
		h(c)
	}
	c.idleResult(c.raw.Read(c.idleFn))
	return c.rerr
}

func (c *conn) idleResult(err error) {
	n, errno := c.rn, c.rerrno
	c.rn, c.rerrno = 0, nil
	if c.rb == nil {
		c.getRbuf() // an error: readResult needs no bytes
	}
	n, err = c.readResult(c.rb, n, errno, err)
	c.rp, c.rw = 0, n
	if err != nil {
		c.rerr = err
	}
}

// waitNext waits on run's goroutine for the next request's first bytes,
// holding no buffer, and reads them. Past the park delay (when the idle
// timeout is longer) it parks the connection and reports parked: run
// then returns, and the watcher resumes the connection when bytes come.
// The deadline is set before the one try-then-wait read, so that an idle
// connection costs one read(2) that finds nothing, not two.
//
// It yields first: under load other connections' goroutines are
// runnable, often with answers still to write, and the client's next
// request is a round trip away. Reading after them finds that request
// more often than reading at once, which finds nothing and pays for a
// read(2) and a wait in the poller (docs/design.md, "The app-facing
// HTTP/1.1 server"). With nothing else runnable the yield returns at once.
func (c *conn) waitNext() (parked bool, err error) {
	runtime.Gosched()
	timeout := c.srv.idleTimeout()
	parkDelay := parkDelay
	if c.srv.parkDelay > 0 {
		parkDelay = c.srv.parkDelay
	}
	if !c.canPark() || timeout > 0 && timeout <= parkDelay {
		return false, c.waitRead(timeout)
	}
	err = c.waitRead(parkDelay)
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false, err
	}
	c.rerr = nil
	c.releaseRbuf()
	rest := time.Duration(0)
	if timeout > 0 {
		rest = timeout - parkDelay
	}
	c.detachIO()
	if c.park(rest) {
		return true, nil
	}
	c.attachIO()
	if rest > 0 {
		c.rwc.SetReadDeadline(time.Now().Add(rest))
	} else {
		c.rwc.SetReadDeadline(time.Time{})
	}
	return false, c.waitRead(0)
}

// ---- writing ----

func (c *conn) getWbuf() {
	if c.wb == nil {
		c.wb = wbufPool.Get().(*[wbufSize]byte)[:]
		c.ws, c.wn = 0, 0
	}
}

func (c *conn) releaseWbuf() {
	if len(c.wb) == wbufSize {
		wbufPool.Put((*[wbufSize]byte)(c.wb))
	}
	c.wb = nil
	c.ws, c.wn = 0, 0
}

// flush writes what the write buffer holds. A failed write is sticky:
// the connection is closed, and the request in flight canceled, as
// net/http does.
func (c *conn) flush() error {
	if c.werr != nil {
		return c.werr
	}
	if c.ws < c.wn {
		_, err := c.rwc.Write(c.wb[c.ws:c.wn])
		if err != nil {
			c.writeFailed(err)
			return err
		}
	}
	c.ws, c.wn = 0, 0
	return nil
}

// writeDirect writes p straight to the socket (after what is buffered).
func (c *conn) writeDirect(p []byte) error {
	if err := c.flush(); err != nil {
		return err
	}
	if _, err := c.rwc.Write(p); err != nil {
		c.writeFailed(err)
		return err
	}
	return nil
}

func (c *conn) writeFailed(err error) {
	c.werr = err
	c.ws, c.wn = 0, 0
	if w := c.cur.Load(); w != nil {
		w.cancel()
	}
	c.rwc.Close()
}

// ensureW makes room for n more bytes in the write buffer, flushing it or
// growing it.
func (c *conn) ensureW(n int) error {
	if c.wn+n <= len(c.wb) {
		return nil
	}
	if err := c.flush(); err != nil {
		return err
	}
	if n > len(c.wb) {
		c.wb = make([]byte, n)
	}
	return nil
}

// ---- hijack ----

// hijack takes the connection away from the server for w's handler.
func (c *conn) hijack(w *response) (net.Conn, *bufio.ReadWriter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hijacked {
		return nil, nil, http.ErrHijacked
	}
	c.stopWatch()
	c.watchEnd(true)
	if w.body != nil {
		w.body.hijack()
	}
	c.hijacked = true
	c.rwc.SetDeadline(time.Time{})
	var br *bufio.Reader
	if n := c.buffered(); n > 0 {
		// The bytes read ahead come first, buffered as in net/http's
		// hijack, so that Buffered reports them.
		left := bytes.Clone(c.rb[c.rp:c.rw])
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(left), c.rwc), max(n, 4096))
		br.Peek(n)
	} else {
		br = bufio.NewReader(c.rwc)
	}
	c.releaseRbuf()
	c.releaseWbuf()
	c.srv.trackConn(c, false)
	return c.rwc, bufio.NewReadWriter(br, bufio.NewWriter(c.rwc)), nil
}

package h2server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

const (
	// writeBufSize is how much of a response body a stream holds before
	// it sends DATA (a handler that returns first sends it with its
	// HEADERS and END_STREAM at once), as net/http's server.
	writeBufSize = 4 << 10
	// maxKeptBodyBuf is the largest request-body buffer kept with a
	// pooled stream.
	maxKeptBodyBuf = 64 << 10
)

// stream is one request and its response. It is pooled: its buffers,
// header map and timer serve many requests. What a handler holds (the
// request's Body and the ResponseWriter, in reqState) is not pooled, and
// checks that the stream still serves its request.
type stream struct {
	c       *conn
	id      uint32
	ctx     context.Context
	cancel  context.CancelFunc
	req     *http.Request
	rs      *reqState
	handler http.Handler
	isHead  bool

	// dead is set (under c.mu) when the stream closes; read under wmu,
	// it keeps frames from following our RST_STREAM.
	dead atomic.Bool
	// sentFinal is set under wmu once the final HEADERS are written.
	sentFinal atomic.Bool
	// sentEnd is set under wmu as the frame with END_STREAM is written:
	// from then on the peer may see the stream closed, before the
	// handler's goroutine has taken it out of the table.
	sentEnd atomic.Bool

	// Under c.mu.
	closed     bool  // left the connection's table
	closeErr   error // why, nil when closed normally
	remoteDone bool  // END_STREAM received
	localDone  bool  // the handler ended and its response was sent
	sendWindow int32
	recvAvail  int32
	recvUnsent int32
	declLen    int64 // the request's Content-Length, -1 if none
	bodyBytes  int64

	// The request body, under bmu.
	bmu           sync.Mutex
	bcond         sync.Cond // L is &bmu
	gen           uint64    // incremented when the stream is pooled
	rbuf          []byte
	rpos          int
	berr          error // io.EOF, or why the body failed; after the buffered bytes
	bclosed       bool  // the handler closed the body: DATA is dropped
	needsContinue bool
	reqTrailer    http.Header // the request's declared trailers
	gotTrailer    http.Header // trailers received, for reqTrailer at the body's end
	readDeadline  time.Time
	rdTimer       *time.Timer
	writeDeadline time.Time
	wdTimer       *time.Timer

	// The response: the handler's goroutine's.
	hdr         http.Header
	status      int
	wroteHeader bool
	sentHeader  bool
	snap        []snapField // the header as of WriteHeader
	snapVals    []string
	clen        int64  // Content-Length set by the handler, -1 if none
	clenStr     string // ... as sent
	hasDate     bool
	hasCType    bool
	hasCE       bool
	trailers    []string // declared trailer keys
	wbuf        []byte
	wrote       int64
}

type snapField struct {
	key        string
	start, end int // in snapVals
}

// reqState is what a handler holds of one request: not pooled.
type reqState struct {
	rw   responseWriter
	body requestBody
}

var streamPool = sync.Pool{New: func() any {
	st := new(stream)
	st.bcond.L = &st.bmu
	return st
}}

func getStream(c *conn, id uint32) *stream {
	st := streamPool.Get().(*stream)
	st.bmu.Lock() // for the deadline timers, which read them
	st.c = c
	st.id = id
	st.bmu.Unlock()
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	st.rs = new(reqState)
	st.clen = -1
	st.declLen = -1
	return st
}

// release pools st: the handler has ended and the stream has left the
// connection's table.
func (st *stream) release() {
	st.bmu.Lock()
	st.gen++
	if cap(st.rbuf) > maxKeptBodyBuf {
		st.rbuf = nil
	}
	st.rbuf = st.rbuf[:0]
	st.rpos = 0
	st.berr = nil
	st.bclosed = false
	st.needsContinue = false
	st.reqTrailer, st.gotTrailer = nil, nil
	st.readDeadline = time.Time{}
	if st.rdTimer != nil {
		st.rdTimer.Stop()
	}
	st.writeDeadline = time.Time{}
	if st.wdTimer != nil {
		st.wdTimer.Stop()
	}
	st.c = nil
	st.bmu.Unlock()

	st.cancel()
	st.ctx, st.cancel, st.req, st.rs, st.handler = nil, nil, nil, nil, nil
	st.isHead = false
	st.dead.Store(false)
	st.sentFinal.Store(false)
	st.sentEnd.Store(false)
	st.closed, st.closeErr, st.remoteDone, st.localDone = false, nil, false, false
	st.sendWindow, st.recvAvail, st.recvUnsent = 0, 0, 0
	st.bodyBytes = 0
	if len(st.hdr) > 64 {
		st.hdr = nil
	} else {
		clear(st.hdr)
	}
	st.status, st.wroteHeader, st.sentHeader = 0, false, false
	st.snap, st.snapVals = st.snap[:0], st.snapVals[:0]
	clear(st.snapVals[:cap(st.snapVals)])
	st.clenStr, st.hasDate, st.hasCType, st.hasCE = "", false, false, false
	st.trailers = st.trailers[:0]
	st.wbuf = st.wbuf[:0]
	st.wrote = 0
	streamPool.Put(st)
}

// discard ends a stream whose handler never ran (reset while queued,
// or the connection ended): the connection gets its unread bytes back.
func (st *stream) discard() {
	c := st.c
	if unread := st.closeBody(); unread > 0 {
		c.mu.Lock()
		inc := c.creditConnLocked(unread)
		c.mu.Unlock()
		c.writeWindowUpdates(0, inc, 0)
	}
	st.release()
}

// runHandler serves st on a worker goroutine and returns the next stream
// the connection queued, which the worker serves next.
func (c *conn) runHandler(st *stream) *stream {
	if c.callHandler(st) {
		st.finish()
		if h := c.srv.testHookAfterFinish; h != nil {
			h()
		}
	} else {
		c.resetStream(st.id, http2.ErrCodeInternal)
	}
	st.rs.rw.st = nil
	if unread := st.closeBody(); unread > 0 {
		c.mu.Lock()
		inc := c.creditConnLocked(unread)
		c.mu.Unlock()
		c.writeWindowUpdates(0, inc, 0)
	}
	st.cancel()

	var next *stream
	var skipped []*stream
	rst := false
	c.mu.Lock()
	c.handlers--
	if c.handlers == 0 && len(c.streams) == 0 {
		c.idleSince = time.Now()
	}
	st.localDone = true
	if !st.closed {
		if st.remoteDone {
			c.closeStreamLocked(st, nil, false)
		} else {
			// The response is complete while the request is not: the
			// client may stop sending (RFC 9113, section 8.1).
			rst = true
			c.closeStreamLocked(st, errStreamClosed, true)
		}
	}
	for len(c.queue) > 0 {
		q := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		if q.closed {
			skipped = append(skipped, q)
			continue
		}
		next = q
		c.handlers++
		break
	}
	if len(c.queue) == 0 {
		c.queue = nil
	}
	c.maybeFinishLocked()
	c.mu.Unlock()
	if rst && c.lockControl() == nil {
		c.framer.WriteRSTStream(st.id, http2.ErrCodeNo)
		c.unlockControl()
	}
	for _, q := range skipped {
		q.discard()
	}
	st.release()
	return next
}

// callHandler runs st's handler and reports whether it returned; a
// panic other than http.ErrAbortHandler is logged as net/http does.
func (c *conn) callHandler(st *stream) (ok bool) {
	defer func() {
		if ok {
			return
		}
		if e := recover(); e != nil && e != http.ErrAbortHandler {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			c.srv.logf("http2: panic serving %v: %v\n%s", c.remoteAddr, e, buf)
		}
	}()
	st.handler.ServeHTTP(&st.rs.rw, st.req)
	return true
}

// The request body.

// appendBody adds DATA to the body, unless the handler closed it.
// Under c.mu.
func (st *stream) appendBody(p []byte) bool {
	st.bmu.Lock()
	defer st.bmu.Unlock()
	if st.bclosed {
		return false
	}
	if st.rpos == len(st.rbuf) {
		st.rbuf, st.rpos = st.rbuf[:0], 0
	}
	st.rbuf = append(st.rbuf, p...)
	st.bcond.Broadcast()
	return true
}

// endBody ends the body with err (io.EOF: complete), after the bytes
// buffered.
func (st *stream) endBody(err error) {
	st.bmu.Lock()
	if st.berr == nil {
		st.berr = err
	}
	st.bcond.Broadcast()
	st.bmu.Unlock()
}

// setTrailer records a request trailer, for the body's end. Under c.mu.
func (st *stream) setTrailer(k, v string) {
	st.bmu.Lock()
	if _, declared := st.reqTrailer[k]; declared {
		if st.gotTrailer == nil {
			st.gotTrailer = http.Header{}
		}
		st.gotTrailer[k] = append(st.gotTrailer[k], v)
	}
	st.bmu.Unlock()
}

// closeBody closes the body for good and returns the bytes it dropped.
func (st *stream) closeBody() int {
	st.bmu.Lock()
	defer st.bmu.Unlock()
	unread := len(st.rbuf) - st.rpos
	st.rbuf, st.rpos = st.rbuf[:0], 0
	st.bclosed = true
	st.bcond.Broadcast()
	return unread
}

// creditLocked adds n bytes of st's window credit and returns the
// WINDOW_UPDATE increment due now, if any. Under c.mu.
func (st *stream) creditLocked(n int) int32 {
	return credit(&st.recvAvail, &st.recvUnsent, n)
}

func (st *stream) onReadDeadline() {
	st.bmu.Lock()
	st.bcond.Broadcast()
	st.bmu.Unlock()
}

func (st *stream) setReadDeadline(t time.Time) {
	st.bmu.Lock()
	defer st.bmu.Unlock()
	st.readDeadline = t
	switch {
	case t.IsZero():
		if st.rdTimer != nil {
			st.rdTimer.Stop()
		}
	case st.rdTimer == nil:
		st.rdTimer = time.AfterFunc(time.Until(t), st.onReadDeadline)
	default:
		st.rdTimer.Reset(time.Until(t))
	}
	st.bcond.Broadcast()
}

// setWriteDeadline arms the stream's write deadline: when it passes, the
// stream is reset (INTERNAL_ERROR) and writes fail, as net/http's server
// does; a write waiting for the flow-control windows returns at once, one
// waiting for a slow reader's socket when the connection ends.
func (st *stream) setWriteDeadline(t time.Time) {
	st.bmu.Lock()
	st.writeDeadline = t
	switch {
	case t.IsZero():
		if st.wdTimer != nil {
			st.wdTimer.Stop()
		}
	case st.wdTimer == nil:
		st.wdTimer = time.AfterFunc(time.Until(t), st.onWriteDeadline)
	default:
		st.wdTimer.Reset(time.Until(t))
	}
	st.bmu.Unlock()
	if !t.IsZero() && !time.Now().Before(t) {
		st.onWriteDeadline()
	}
}

var errWriteDeadline = fmt.Errorf("http2: response write: %w", os.ErrDeadlineExceeded)

// onWriteDeadline resets the stream if its write deadline has passed; a
// timer of a request the stream no longer serves finds it not due, or
// the stream gone from the connection's table.
func (st *stream) onWriteDeadline() {
	st.bmu.Lock()
	due := !st.writeDeadline.IsZero() && !time.Now().Before(st.writeDeadline)
	c, id := st.c, st.id
	st.bmu.Unlock()
	if !due || c == nil {
		return
	}
	c.mu.Lock()
	live := c.streams[id] == st
	if live {
		c.closeStreamLocked(st, errWriteDeadline, true)
	}
	c.mu.Unlock()
	if live && c.lockControl() == nil {
		c.framer.WriteRSTStream(id, http2.ErrCodeInternal)
		c.unlockControl()
	}
}

// requestBody is a request's Body: reads wait for DATA and give flow
// control back as the handler takes the bytes.
type requestBody struct {
	st     *stream
	gen    uint64
	sawEOF bool
	closed bool
}

var errDeadline = fmt.Errorf("http2: request body read: %w", os.ErrDeadlineExceeded)

func (b *requestBody) Read(p []byte) (int, error) {
	st := b.st
	st.bmu.Lock()
	if st.gen != b.gen || b.closed {
		st.bmu.Unlock()
		if b.sawEOF {
			return 0, io.EOF
		}
		return 0, errClosedBody
	}
	if st.needsContinue {
		st.needsContinue = false
		c, id := st.c, st.id
		st.bmu.Unlock()
		c.write100Continue(st, id)
		st.bmu.Lock()
		if st.gen != b.gen {
			st.bmu.Unlock()
			return 0, errClosedBody
		}
	}
	for st.rpos == len(st.rbuf) && st.berr == nil && !st.bclosed {
		if !st.readDeadline.IsZero() && !time.Now().Before(st.readDeadline) {
			st.bmu.Unlock()
			return 0, errDeadline
		}
		st.bcond.Wait()
		if st.gen != b.gen {
			st.bmu.Unlock()
			return 0, errClosedBody
		}
	}
	if st.rpos < len(st.rbuf) {
		if len(p) == 0 {
			st.bmu.Unlock()
			return 0, nil
		}
		n := copy(p, st.rbuf[st.rpos:])
		st.rpos += n
		c, id := st.c, st.id
		st.bmu.Unlock()
		c.bodyRead(st, id, n)
		return n, nil
	}
	err := st.berr
	if st.bclosed {
		err = errClosedBody
	}
	if err == io.EOF {
		b.sawEOF = true
		for k, vv := range st.gotTrailer {
			st.reqTrailer[k] = vv
		}
	}
	st.bmu.Unlock()
	return 0, err
}

// Buffered reports whether the body's next Read, and whether all of it,
// is served without waiting for DATA: what arrived is buffered, and the
// end is known once END_STREAM (or a failure) came. A body that awaits
// its 100 Continue is not at hand.
func (b *requestBody) Buffered() (next, all bool) {
	st := b.st
	st.bmu.Lock()
	defer st.bmu.Unlock()
	switch {
	case st.gen != b.gen || b.closed || st.bclosed:
		return true, true
	case st.needsContinue:
		return false, false
	}
	done := st.berr != nil
	return done || st.rpos < len(st.rbuf), done
}

func (b *requestBody) Close() error {
	st := b.st
	st.bmu.Lock()
	if st.gen != b.gen || b.closed {
		st.bmu.Unlock()
		return nil
	}
	b.closed = true
	unread := len(st.rbuf) - st.rpos
	st.rbuf, st.rpos = st.rbuf[:0], 0
	st.bclosed = true
	st.bcond.Broadcast()
	c := st.c
	st.bmu.Unlock()
	if unread > 0 {
		c.mu.Lock()
		inc := c.creditConnLocked(unread)
		c.mu.Unlock()
		c.writeWindowUpdates(0, inc, 0)
	}
	return nil
}

// bodyRead gives back the flow control of n bytes the handler read of
// st (id): the connection's, and the stream's while it may send more.
func (c *conn) bodyRead(st *stream, id uint32, n int) {
	c.mu.Lock()
	connInc := c.creditConnLocked(n)
	var streamInc int32
	if c.streams[id] == st && !st.remoteDone {
		streamInc = st.creditLocked(n)
	}
	c.mu.Unlock()
	c.writeWindowUpdates(id, connInc, streamInc)
}

// write100Continue answers Expect: 100-continue on the body's first
// read, unless the response has begun or the stream has ended (st may
// serve another request by now: the table tells).
func (c *conn) write100Continue(st *stream, id uint32) {
	if c.lockWrite() != nil {
		return
	}
	c.mu.Lock()
	live := c.streams[id] == st
	c.mu.Unlock()
	if live && !st.dead.Load() && !st.sentFinal.Load() {
		c.hbuf.Reset()
		c.encodeField(":status", "100")
		c.writeHeaderBlockLocked(st.id, c.hbuf.Bytes(), false)
	}
	c.wmu.Unlock()
}

// The response.

// responseWriter is a request's http.ResponseWriter. It supports
// Flush, http.ResponseController's FlushError, SetReadDeadline,
// SetWriteDeadline and EnableFullDuplex (always on), and trailers as
// net/http's server does; not Hijack.
type responseWriter struct{ st *stream }

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ http.Flusher        = (*responseWriter)(nil)
	_ io.StringWriter     = (*responseWriter)(nil)
)

func (w *responseWriter) stream() *stream {
	if w.st == nil {
		panic("http2: ResponseWriter used after the handler returned")
	}
	return w.st
}

func (w *responseWriter) Header() http.Header {
	st := w.stream()
	if st.hdr == nil {
		st.hdr = make(http.Header)
	}
	return st.hdr
}

func (w *responseWriter) WriteHeader(code int) { w.stream().writeHeader(code) }

func (w *responseWriter) Write(p []byte) (int, error) { return w.stream().write(p, "") }

func (w *responseWriter) WriteString(s string) (int, error) { return w.stream().write(nil, s) }

func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError sends the status, the headers and what is buffered.
func (w *responseWriter) FlushError() error {
	st := w.stream()
	if !st.wroteHeader {
		st.writeHeader(http.StatusOK)
	}
	if st.sentHeader && len(st.wbuf) == 0 {
		if st.dead.Load() {
			return st.closedError()
		}
		return nil
	}
	err := st.flush(st.wbuf, false)
	st.wbuf = st.wbuf[:0]
	return err
}

func (w *responseWriter) SetReadDeadline(t time.Time) error {
	w.stream().setReadDeadline(t)
	return nil
}

func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.stream().setWriteDeadline(t)
	return nil
}

// EnableFullDuplex is a no-op: reading the request while writing the
// response is always possible.
func (w *responseWriter) EnableFullDuplex() error { return nil }

func checkWriteHeaderCode(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204, status == 304:
		return false
	}
	return true
}

func (st *stream) writeHeader(code int) {
	if st.wroteHeader {
		return
	}
	checkWriteHeaderCode(code)
	if code < 200 {
		st.write1xx(code)
		return
	}
	st.wroteHeader = true
	st.status = code
	// Snapshot the header: the handler may change the map afterwards
	// (trailers), and the HEADERS frame may leave later.
	for k, vv := range st.hdr {
		switch k {
		case "Content-Length":
			if len(vv) > 0 {
				if n, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
					st.clen, st.clenStr = int64(n), vv[0]
				}
			}
			continue
		case "Connection":
			if len(vv) > 0 && vv[0] == "close" {
				// As net/http's server: the connection ends once idle.
				st.c.startGracefulShutdown()
			}
			continue
		case "Date":
			st.hasDate = true
		case "Content-Type":
			st.hasCType = true
		case "Content-Encoding":
			st.hasCE = len(vv) > 0 && vv[0] != ""
		case "Trailer":
			for _, v := range vv {
				for k := range strings.SplitSeq(v, ",") {
					st.declareTrailer(strings.TrimSpace(k))
				}
			}
		}
		start := len(st.snapVals)
		st.snapVals = append(st.snapVals, vv...)
		st.snap = append(st.snap, snapField{key: k, start: start, end: len(st.snapVals)})
	}
}

func (st *stream) declareTrailer(k string) {
	if k == "" {
		return
	}
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) || slices.Contains(st.trailers, k) {
		return
	}
	st.trailers = append(st.trailers, k)
}

// write1xx sends an informational response at once, with the fields
// of the header map as they are (but framing ones).
func (st *stream) write1xx(code int) {
	c := st.c
	if c.lockWrite() != nil {
		return
	}
	defer c.wmu.Unlock()
	if st.dead.Load() || st.sentFinal.Load() {
		return
	}
	c.hbuf.Reset()
	c.encodeField(":status", statusText(code))
	for k, vv := range st.hdr {
		if k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		c.encodeValues(k, vv)
	}
	c.writeHeaderBlockLocked(st.id, c.hbuf.Bytes(), false)
}

var errTooLong = errors.New("http2: handler wrote more than the declared Content-Length")

func (st *stream) write(p []byte, s string) (int, error) {
	if !st.wroteHeader {
		st.writeHeader(http.StatusOK)
	}
	if !bodyAllowedForStatus(st.status) {
		return 0, http.ErrBodyNotAllowed
	}
	n := len(p) + len(s)
	st.wrote += int64(n)
	if st.clen >= 0 && st.wrote > st.clen {
		return 0, errTooLong
	}
	if st.isHead {
		return n, nil
	}
	if st.wbuf == nil {
		st.wbuf = make([]byte, 0, writeBufSize)
	}
	if len(st.wbuf)+n <= cap(st.wbuf) {
		if p != nil {
			st.wbuf = append(st.wbuf, p...)
		} else {
			st.wbuf = append(st.wbuf, s...)
		}
		return n, nil
	}
	if p == nil {
		p = []byte(s)
	}
	if len(st.wbuf) > 0 {
		k := cap(st.wbuf) - len(st.wbuf)
		st.wbuf = append(st.wbuf, p[:k]...)
		err := st.flush(st.wbuf, false)
		st.wbuf = st.wbuf[:0]
		if err != nil {
			return 0, err
		}
		p = p[k:]
	}
	if len(p) >= cap(st.wbuf) {
		if err := st.flush(p, false); err != nil {
			return 0, err
		}
	} else {
		st.wbuf = append(st.wbuf, p...)
	}
	return n, nil
}

func (st *stream) closedError() error {
	if err := st.closeErr; err != nil {
		return err
	}
	return errStreamClosed
}

// finish completes the response when the handler returns: the status
// and headers if not sent, what is buffered, and the end of the stream,
// with the trailers.
func (st *stream) finish() {
	if !st.wroteHeader {
		st.writeHeader(http.StatusOK)
	}
	// Header keys with http.TrailerPrefix are trailers, declared or not
	// (gRPC's way, as net/http allows).
	for k, vv := range st.hdr {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			st.declareTrailer(name)
			st.hdr[http.CanonicalHeaderKey(name)] = vv
		}
	}
	if len(st.trailers) > 1 {
		slices.Sort(st.trailers)
	}
	data := st.wbuf
	if st.isHead {
		data = nil
	}
	st.flush(data, true)
	st.wbuf = st.wbuf[:0]
}

func (st *stream) hasTrailers() bool {
	for _, k := range st.trailers {
		if _, ok := st.hdr[k]; ok {
			return true
		}
	}
	return false
}

// flush sends the HEADERS if not yet sent, then data, then, if end, the
// trailers or END_STREAM. It waits for the flow-control windows; data
// goes out in as few locked sections as the windows allow, the common
// small response (HEADERS, DATA, trailers) in one.
func (st *stream) flush(data []byte, end bool) error {
	c := st.c
	headers := !st.sentHeader
	trailers := end && st.hasTrailers()
	var ctype, clen string
	if headers {
		st.sentHeader = true
		clen = st.clenStr
		if clen == "" && end && bodyAllowedForStatus(st.status) && (len(data) > 0 || !st.isHead) {
			clen = strconv.Itoa(len(data))
		}
		if !st.hasCType && !st.hasCE && bodyAllowedForStatus(st.status) && len(data) > 0 {
			ctype = http.DetectContentType(data)
		}
	}
	for {
		n, err := c.takeWindow(st, len(data), !headers)
		if err != nil {
			return err
		}
		chunk := data[:n]
		data = data[n:]
		last := len(data) == 0
		if err := c.lockWrite(); err != nil {
			return err
		}
		if st.dead.Load() {
			c.wmu.Unlock()
			return st.closedError()
		}
		endData := end && last && !trailers
		if end && last {
			st.sentEnd.Store(true)
		}
		if headers {
			headers = false
			block := c.encodeResponseHeaders(st, ctype, clen)
			st.sentFinal.Store(true)
			if err := c.writeHeaderBlockLocked(st.id, block, endData && len(chunk) == 0); err != nil {
				c.wmu.Unlock()
				return err
			}
			if len(chunk) == 0 {
				endData = false // sent with the HEADERS
			}
		}
		for len(chunk) > 0 || endData {
			frame := chunk
			if len(frame) > c.peerMaxFrame {
				frame = frame[:c.peerMaxFrame]
			}
			chunk = chunk[len(frame):]
			endFrame := endData && len(chunk) == 0
			if err := c.writeDataLocked(st.id, endFrame, frame); err != nil {
				c.wmu.Unlock()
				return err
			}
			if endFrame {
				break
			}
		}
		if end && last && trailers {
			c.hbuf.Reset()
			c.encodeHeaderMap(st.hdr, st.trailers)
			if err := c.writeHeaderBlockLocked(st.id, c.hbuf.Bytes(), true); err != nil {
				c.wmu.Unlock()
				return err
			}
		}
		c.wmu.Unlock()
		if last {
			return nil
		}
	}
}

// encodeResponseHeaders encodes st's status and header snapshot. Under
// wmu.
func (c *conn) encodeResponseHeaders(st *stream, ctype, clen string) []byte {
	c.hbuf.Reset()
	c.encodeField(":status", statusText(st.status))
	for _, f := range st.snap {
		c.encodeValues(f.key, st.snapVals[f.start:f.end])
	}
	if ctype != "" {
		c.encodeField("content-type", ctype)
	}
	if clen != "" {
		c.encodeField("content-length", clen)
	}
	if !st.hasDate {
		c.encodeField("date", date())
	}
	return c.hbuf.Bytes()
}

// takeWindow takes up to want bytes of the stream's and the
// connection's send windows; it waits for some if block.
func (c *conn) takeWindow(st *stream, want int, block bool) (int, error) {
	if want == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if st.closed {
			return 0, st.closedError()
		}
		if c.closed {
			return 0, errClientDisconnected
		}
		n := min(int32(min(want, maxWindow)), st.sendWindow, c.sendWindow)
		if n > 0 {
			st.sendWindow -= n
			c.sendWindow -= n
			return int(n), nil
		}
		if !block {
			return 0, nil
		}
		c.flowCond.Wait()
	}
}

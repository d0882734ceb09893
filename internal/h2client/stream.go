package h2client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"

	"golang.org/x/net/http2"
)

// stream is one request and its response on a connection. Its fields are
// guarded by the connection's mu. It is recycled, per connection, once
// nothing refers to it: refs counts the caller (then the response body),
// the connection's map, the context's AfterFunc and the body writer.
type stream struct {
	cc       *conn
	id       uint32
	gen      uint32 // changes on recycling: a stale body sees it
	cond     *sync.Cond
	refs     int
	closed   bool   // removed from the connection
	cancelFn func() // onCancel, made once

	ctx   context.Context
	stop  func() bool // the context's AfterFunc; nil once stopped
	trace *httptrace.ClientTrace
	rb    *reqBody

	// Sending.
	sendWin int64
	sentEnd bool // END_STREAM or RST_STREAM sent: no more DATA
	wstop   bool // the body writer must stop
	waitWin bool // the body writer waits for window
	writer  bool // a body writer runs

	// Receiving.
	isHead      bool
	recvWin     int64
	recvUnacked int64
	resp        *http.Response
	info        []info1xx
	n1xx        int
	cl          int64 // the answer's Content-Length; -1 unknown
	received    int64
	rbuf        []byte
	roff        int
	recvEnd     bool // END_STREAM, a reset, or the connection's end
	rstRecv     bool
	trailer     http.Header
	trailerDone bool
	err         error
	unprocessed bool // err is ErrUnprocessed: the body may be sent again
	bodyClosed  bool
}

// info1xx is an informational answer waiting for the caller.
type info1xx struct {
	code   int
	header textproto.MIMEHeader
}

// newStreamLocked returns a recycled or new stream, referred to by the
// caller.
func (cc *conn) newStreamLocked() *stream {
	var s *stream
	if n := len(cc.free); n > 0 {
		s = cc.free[n-1]
		cc.free[n-1] = nil
		cc.free = cc.free[:n-1]
	} else {
		s = &stream{cc: cc}
		s.cond = sync.NewCond(&cc.mu)
		s.cancelFn = s.onCancel
	}
	s.refs = 1
	s.cl = -1
	return s
}

// maxFree bounds the recycled streams a connection keeps.
const maxFree = 256

// recycleLocked keeps s for another request once nothing refers to it.
func (cc *conn) recycleLocked(s *stream) {
	if s.refs > 0 || !s.closed {
		return
	}
	rbuf := s.rbuf[:0]
	if cap(rbuf) > 64<<10 {
		rbuf = nil
	}
	info := s.info[:0]
	*s = stream{cc: cc, gen: s.gen + 1, cond: s.cond, cancelFn: s.cancelFn, rbuf: rbuf, info: info}
	if len(cc.free) < maxFree {
		cc.free = append(cc.free, s)
	}
}

// onCancel is the AfterFunc of the request's context: RST_STREAM(CANCEL),
// and the stream's reads fail with the context's cause.
func (s *stream) onCancel() {
	cc := s.cc
	cc.mu.Lock()
	id, ctx := s.id, s.ctx
	cc.mu.Unlock()
	reset := cc.resetStream(s, id, http2.ErrCodeCancel, context.Cause(ctx))
	cc.mu.Lock()
	s.refs--
	cc.recycleLocked(s)
	cc.mu.Unlock()
	if reset && id != 0 {
		cc.healthPing()
	}
}

// roundTrip sends req on a new stream, in the slot getConn reserved, and
// waits for its response headers.
func (cc *conn) roundTrip(ctx context.Context, req *http.Request, rb *reqBody) (*http.Response, error) {
	cc.mu.Lock()
	s := cc.newStreamLocked()
	cc.mu.Unlock()
	s.ctx, s.rb = ctx, rb
	s.trace = httptrace.ContextClientTrace(ctx)
	s.isHead = req.Method == http.MethodHead

	cc.wmu.Lock()
	cc.mu.Lock()
	over := len(cc.streams) >= int(cc.maxStreams)
	cc.mu.Unlock()
	if over {
		// The peer's SETTINGS lowered its limit after this slot was
		// reserved, and are acknowledged (onSettings holds wmu, as
		// this does until the HEADERS are written): a stream over the
		// limit now is a PROTOCOL_ERROR. Another connection takes the
		// request; nothing was encoded, so HPACK's state is intact.
		cc.wmu.Unlock()
		cc.dropUnopened(s)
		return nil, fmt.Errorf("%w: the peer lowered its concurrent streams limit", ErrUnprocessed)
	}
	if err := cc.encodeHeaders(req, rb); err != nil {
		cc.wmu.Unlock()
		cc.dropUnopened(s)
		return nil, err
	}
	cc.mu.Lock()
	if cc.closed || cc.goaway {
		cc.mu.Unlock()
		cc.wmu.Unlock()
		cc.dropUnopened(s)
		return nil, fmt.Errorf("%w: the connection closed first", ErrUnprocessed)
	}
	id := cc.nextID
	cc.nextID += 2
	if cc.nextID > maxStreamID {
		cc.goaway = true // stream IDs used up: no new streams here
	}
	s.id = id
	cc.lastID.Store(id)
	cc.streams[id] = s
	s.refs++ // the connection's
	s.sendWin, s.recvWin = cc.peerInitWin, streamWindow
	endStream := rb.empty() && len(rb.trailer) == 0
	inline := false
	if small := rb.small; small != nil {
		n := int64(len(*small))
		if n <= s.sendWin && n <= cc.sendWin {
			inline = true
			s.sendWin -= n
			cc.sendWin -= n
		}
	}
	s.sentEnd = endStream || inline
	if !s.sentEnd {
		s.writer = true
		s.refs++ // the writer's
		if rb.small != nil {
			rb.writing.Store(true)
		}
	}
	hasCtx := ctx.Done() != nil
	if hasCtx {
		s.refs++ // the context's
	}
	maxFrame := cc.peerMaxFrame
	cc.mu.Unlock()

	cc.writeHeadersLocked(id, cc.hbuf.Bytes(), endStream, maxFrame)
	if inline {
		b := *rb.small
		for len(b) > maxFrame {
			cc.fr.WriteData(id, false, b[:maxFrame])
			b = b[maxFrame:]
		}
		cc.fr.WriteData(id, true, b)
	}
	cc.flushLocked()
	cc.wmu.Unlock()

	if hasCtx {
		stop := context.AfterFunc(ctx, s.cancelFn)
		cc.mu.Lock()
		if s.closed {
			if stop() {
				s.refs--
			}
		} else {
			s.stop = stop
		}
		cc.mu.Unlock()
	}
	if s.writer {
		if testHookBodyWriter != nil {
			testHookBodyWriter()
		}
		go s.writeBody(id, rb.body)
	}

	cc.mu.Lock()
	for len(s.info) > 0 || s.resp == nil && s.err == nil {
		if len(s.info) > 0 { // informational answers first, in order
			inf := s.info[0]
			s.info = append(s.info[:0], s.info[1:]...)
			cc.mu.Unlock()
			if err := s.got1xx(inf); err != nil {
				cc.resetStream(s, id, http2.ErrCodeCancel, err)
			}
			cc.mu.Lock()
			continue
		}
		s.cond.Wait()
	}
	resp := s.resp
	if resp == nil {
		err := s.err
		s.refs--
		cc.recycleLocked(s)
		cc.mu.Unlock()
		return nil, err
	}
	resp.Request = req
	if s.isHead || s.recvEnd && s.err == nil && s.roff == len(s.rbuf) && s.trailer == nil {
		resp.Body = http.NoBody
		s.bodyClosed = true
		rst := !s.closed
		cc.mu.Unlock()
		if rst {
			cc.resetStream(s, id, http2.ErrCodeCancel, nil)
		}
		cc.mu.Lock()
		s.refs--
		cc.recycleLocked(s)
		cc.mu.Unlock()
		return resp, nil
	}
	resp.Body = &body{cc: cc, s: s, gen: s.gen}
	cc.mu.Unlock()
	return resp, nil
}

// dropUnopened gives back the slot and stream of a request that was
// never sent.
func (cc *conn) dropUnopened(s *stream) {
	cc.mu.Lock()
	s.closed = true
	s.refs--
	cc.recycleLocked(s)
	cc.active--
	if cc.active == 0 {
		cc.idleLocked()
	}
	cc.mu.Unlock()
}

// got1xx passes an informational answer to the request's ClientTrace.
func (s *stream) got1xx(inf info1xx) error {
	tr := s.trace
	if tr == nil {
		return nil
	}
	if inf.code == http.StatusContinue {
		if tr.Got100Continue != nil {
			tr.Got100Continue()
		}
		return nil
	}
	if tr.Got1xxResponse != nil {
		return tr.Got1xxResponse(inf.code, inf.header)
	}
	return nil
}

// writeHeadersLocked writes a header block as HEADERS and CONTINUATION
// frames; under wmu.
func (cc *conn) writeHeadersLocked(id uint32, block []byte, endStream bool, maxFrame int) {
	first, rest := block, []byte(nil)
	if len(block) > maxFrame {
		first, rest = block[:maxFrame], block[maxFrame:]
	}
	cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		n := min(len(rest), maxFrame)
		cc.fr.WriteContinuation(id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
}

// errStopped ends a body writer whose stream ended.
var errStopped = errors.New("h2client: stream ended")

// bodyBufs are the body writers' read buffers.
var bodyBufs = sync.Pool{New: func() any { return new([16 << 10]byte) }}

// testHookBodyWriter, when set by a test, is called as a body writer
// starts.
var testHookBodyWriter func()

// writeBody is the goroutine that sends a request body (b, or the
// read-ahead one) and its END_STREAM or trailers.
func (s *stream) writeBody(id uint32, b io.ReadCloser) {
	cc, rb := s.cc, s.rb
	var err error
	if rb.small != nil {
		err = s.writeData(id, *rb.small, true)
	} else {
		err = s.copyBody(id, rb, b)
	}
	if err != nil && err != errStopped {
		cc.resetStream(s, id, http2.ErrCodeCancel, err)
	}
	cc.mu.Lock()
	s.writer = false
	s.refs--
	cc.recycleLocked(s)
	cc.mu.Unlock()
}

func (s *stream) copyBody(id uint32, rb *reqBody, b io.ReadCloser) error {
	cc := s.cc
	buf := bodyBufs.Get().(*[16 << 10]byte)
	defer bodyBufs.Put(buf)
	var sent int64
	for {
		cc.mu.Lock()
		if s.wstop {
			keep := s.unprocessed
			cc.mu.Unlock()
			if !keep && !rb.started.Load() {
				// Ended before the body was read, not to be sent
				// again: closing it is this writer's.
				rb.close()
			}
			return errStopped
		}
		rb.started.Store(true)
		cc.mu.Unlock()
		n, rerr := b.Read(buf[:])
		if n > 0 {
			sent += int64(n)
			if rb.cl >= 0 && sent > rb.cl {
				b.Close()
				return fmt.Errorf("h2client: request body longer than its ContentLength %d", rb.cl)
			}
			if err := s.writeData(id, buf[:n], false); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			b.Close()
			if rb.cl >= 0 && sent != rb.cl {
				return fmt.Errorf("h2client: request body of %d bytes, shorter than its ContentLength %d", sent, rb.cl)
			}
			return s.writeEnd(id, rb.trailer)
		}
		if rerr != nil {
			b.Close()
			return fmt.Errorf("h2client: reading the request body: %w", rerr)
		}
	}
}

// writeData sends p as DATA frames within the stream's and the
// connection's send windows, waiting for WINDOW_UPDATEs as needed; end
// sets END_STREAM on the last.
func (s *stream) writeData(id uint32, p []byte, end bool) error {
	cc := s.cc
	for {
		cc.mu.Lock()
		n := 0
		for {
			if s.wstop || cc.closed {
				s.waitWin = false
				cc.mu.Unlock()
				return errStopped
			}
			if len(p) == 0 {
				break
			}
			n = int(min(int64(len(p)), int64(cc.peerMaxFrame), s.sendWin, cc.sendWin))
			if n > 0 {
				break
			}
			s.waitWin = true
			s.cond.Wait()
		}
		s.waitWin = false
		s.sendWin -= int64(n)
		cc.sendWin -= int64(n)
		cc.mu.Unlock()
		last := end && n == len(p)
		cc.wmu.Lock()
		cc.mu.Lock()
		if s.wstop || cc.closed {
			cc.sendWin += int64(n)
			cc.mu.Unlock()
			cc.wmu.Unlock()
			return errStopped
		}
		if last {
			s.sentEnd = true
			if s.recvEnd {
				cc.closeStreamLocked(s)
			}
		}
		cc.mu.Unlock()
		cc.fr.WriteData(id, last, p[:n])
		err := cc.flushLocked()
		cc.wmu.Unlock()
		if err != nil {
			return err
		}
		p = p[n:]
		if last || len(p) == 0 && !end {
			return nil
		}
	}
}

// writeEnd ends the request: trailers if it has any, else an empty DATA
// frame with END_STREAM.
func (s *stream) writeEnd(id uint32, trailer http.Header) error {
	if len(trailer) == 0 {
		return s.writeData(id, nil, true)
	}
	cc := s.cc
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if err := cc.encodeTrailers(trailer); err != nil {
		return err
	}
	cc.mu.Lock()
	if s.wstop || cc.closed {
		cc.mu.Unlock()
		return errStopped
	}
	s.sentEnd = true
	if s.recvEnd {
		cc.closeStreamLocked(s)
	}
	maxFrame := cc.peerMaxFrame
	cc.mu.Unlock()
	cc.writeHeadersLocked(id, cc.hbuf.Bytes(), true, maxFrame)
	return cc.flushLocked()
}

// errClosedBody is a read of a response body after Close.
var errClosedBody = errors.New("h2client: read on closed response body")

// body is a response body: it reads from its stream's buffer. gen tells a
// body whose stream was recycled after Close.
type body struct {
	cc  *conn
	s   *stream
	gen uint32
}

func (b *body) Read(p []byte) (int, error) {
	cc, s := b.cc, b.s
	cc.mu.Lock()
	for {
		if s.gen != b.gen || s.bodyClosed {
			cc.mu.Unlock()
			return 0, errClosedBody
		}
		if s.roff < len(s.rbuf) || s.recvEnd {
			break
		}
		s.cond.Wait()
	}
	if s.roff == len(s.rbuf) {
		err := s.endLocked()
		cc.mu.Unlock()
		return 0, err
	}
	n := copy(p, s.rbuf[s.roff:])
	s.roff += n
	if s.roff == len(s.rbuf) {
		s.rbuf, s.roff = s.rbuf[:0], 0
	}
	cc.recvUnacked += int64(n)
	cinc := cc.connUpdateLocked()
	var inc uint32
	if !s.recvEnd {
		s.recvUnacked += int64(n)
		if s.recvUnacked >= streamWindow/2 {
			inc = uint32(s.recvUnacked)
			s.recvWin += s.recvUnacked
			s.recvUnacked = 0
		}
	}
	var err error
	if s.roff == len(s.rbuf) && s.recvEnd {
		err = s.endLocked()
	}
	id := s.id
	cc.mu.Unlock()
	if inc > 0 || cinc > 0 {
		cc.sendWindowUpdates(s, id, inc, cinc)
	}
	return n, err
}

// endLocked is the result of a read at the end of the answer: its error,
// or io.EOF once the trailers are in the response's Trailer.
func (s *stream) endLocked() error {
	if s.err != nil {
		return s.err
	}
	if s.trailer != nil && !s.trailerDone {
		s.trailerDone = true
		if t := s.resp.Trailer; t == nil {
			s.resp.Trailer = s.trailer // none declared: the map as it came
		} else {
			for k, vv := range s.trailer {
				t[k] = vv
			}
		}
	}
	return io.EOF
}

// Close ends the body; before the end of the answer it resets the
// stream (RST_STREAM CANCEL).
func (b *body) Close() error {
	cc, s := b.cc, b.s
	cc.mu.Lock()
	if s.gen != b.gen || s.bodyClosed {
		cc.mu.Unlock()
		return nil
	}
	s.bodyClosed = true
	cc.recvUnacked += int64(len(s.rbuf) - s.roff)
	s.rbuf, s.roff = s.rbuf[:0], 0
	cinc := cc.connUpdateLocked()
	id := s.id
	rst := !s.closed
	s.cond.Broadcast()
	cc.mu.Unlock()
	if rst {
		cc.resetStream(s, id, http2.ErrCodeCancel, errClosedBody)
	}
	if cinc > 0 {
		cc.sendWindowUpdates(nil, 0, 0, cinc)
	}
	cc.mu.Lock()
	s.refs--
	cc.recycleLocked(s)
	cc.mu.Unlock()
	return nil
}

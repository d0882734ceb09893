package h2client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sidecar-proxy/sidecar/internal/h2conn"
)

// conn is one HTTP/2 connection to an upstream address. Its reader
// goroutine owns the reads; writes are made under wmu by whichever
// goroutine has a frame to send. Lock order: wmu before mu.
type conn struct {
	t    *Transport
	addr string

	ready   chan struct{} // closed once the dial ended
	dialErr error         // set before ready is closed

	br *bufio.Reader
	fr *http2.Framer // reads: the reader goroutine; writes: under wmu

	wmu    sync.Mutex
	wbuf   frameBuf // the framer writes here; flushLocked sends it
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	nextID uint32
	lower  map[string]string // header names in lower case, beyond the common ones

	lastID atomic.Uint32 // the highest stream ID opened

	mu      sync.Mutex
	nc      net.Conn
	streams map[uint32]*stream
	active  int // streams open, or reserved by a caller about to open one
	free    []*stream
	// The peer's settings.
	maxStreams        uint32
	peerInitWin       int64
	peerMaxFrame      int
	peerMaxHeaderList uint32 // 0: no limit
	sendWin           int64  // the connection's send window
	recvWin           int64  // the connection's receive window left
	recvUnacked       int64  // bytes consumed and not yet given back
	goaway            bool   // no new streams (a GOAWAY, or stream IDs used up)
	peerGoaway        bool   // a GOAWAY came
	goawayID          uint32 // its last stream ID
	closing           bool   // close once without streams
	closed            bool
	idleAt            time.Time
	idleTimer         *time.Timer
	idleArmed         bool
	// The health PING (healthPing): outstanding, its payload, when it
	// was sent, and why the connection closed when it went unanswered.
	// pingFrames is frames when the PING was sent, or when its timer
	// last found frames read since: frames arriving mean the upstream
	// is there, busy (the ack may queue behind its DATA). pingTimer is
	// the connection's one PING timer, made by the first PING.
	pingOut    bool
	pingData   [8]byte
	pingAt     time.Time
	pingSeq    uint64
	pingFrames uint64
	pingTimer  *time.Timer
	lostErr    error
	// frames counts the frames the reader read.
	frames atomic.Uint64

	// The reader's.
	hdec  *hpack.Decoder
	hb    headerBlock
	canon map[string]string // wire names to canonical keys
}

// frameBuf collects the framer's writes.
type frameBuf struct{ b []byte }

func (w *frameBuf) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func newConn(t *Transport, addr string) *conn {
	return &conn{
		t:            t,
		addr:         addr,
		ready:        make(chan struct{}),
		nextID:       1,
		streams:      map[uint32]*stream{},
		active:       1, // the dialing caller's
		maxStreams:   initialMaxStreams,
		peerInitWin:  65535,
		peerMaxFrame: 16384,
		sendWin:      65535,
		recvWin:      connWindow,
		canon:        map[string]string{},
	}
}

// reserve takes a stream slot if the connection has one free.
func (cc *conn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.goaway || cc.closing || cc.active >= int(cc.maxStreams) {
		return false
	}
	if cc.pingOut && time.Since(cc.pingAt) > cc.t.pingTimeout()/20 {
		return false // the upstream may be unreachable on it: see healthPing
	}
	cc.active++
	return true
}

// errPingTimeout fails the streams of a connection whose health PING went
// unanswered.
var errPingTimeout = errors.New("h2client: upstream did not answer a PING in time; connection closed")

// healthPing sends a PING, unless one is outstanding, after a stream's
// caller gave up on it. A request that timed out may have found the
// upstream unreachable on this connection, and TCP alone takes minutes to
// tell (a peer gone without a reset, a dropped NAT entry): new requests
// avoid the connection once the PING has waited a twentieth of the
// transport's PingTimeout (250 ms by default), and without an answer
// within PingTimeout the connection is closed and its streams fail
// (unless frames came meanwhile: see pingExpired). Any answer makes it
// usable again.
func (cc *conn) healthPing() {
	cc.mu.Lock()
	if cc.closed || cc.pingOut || cc.nc == nil {
		cc.mu.Unlock()
		return
	}
	cc.pingOut, cc.pingAt = true, time.Now()
	cc.pingSeq++
	cc.pingFrames = cc.frames.Load()
	binary.BigEndian.PutUint64(cc.pingData[:], cc.pingSeq)
	data := cc.pingData
	if cc.pingTimer == nil {
		cc.pingTimer = time.AfterFunc(cc.t.pingTimeout(), cc.pingExpired)
	} else {
		cc.pingTimer.Reset(cc.t.pingTimeout())
	}
	cc.mu.Unlock()
	cc.wmu.Lock()
	cc.fr.WritePing(false, data)
	cc.flushLocked()
	cc.wmu.Unlock()
}

// pingExpired closes the connection if its health PING is still
// unanswered and no frame came since it was sent (or since the last
// look): a connection that frames arrive on is given another
// PingTimeout.
func (cc *conn) pingExpired() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	timeout := cc.t.pingTimeout()
	if cc.closed || !cc.pingOut || time.Since(cc.pingAt) < timeout {
		return // answered, or a run of the timer that a new PING reset
	}
	if n := cc.frames.Load(); n != cc.pingFrames {
		cc.pingFrames = n
		cc.pingTimer.Reset(timeout)
		return
	}
	cc.lostErr = errPingTimeout
	cc.nc.Close() // the reader ends, and fails the connection
}

// pingAnswered takes the acknowledgement of a PING.
func (cc *conn) pingAnswered(data [8]byte) {
	cc.mu.Lock()
	if cc.pingOut && data == cc.pingData {
		cc.pingOut = false
		cc.pingTimer.Stop()
	}
	cc.mu.Unlock()
}

// unreserve gives back a slot that opened no stream.
func (cc *conn) unreserve() {
	cc.mu.Lock()
	cc.active--
	if cc.active == 0 {
		cc.idleLocked()
	}
	cc.mu.Unlock()
}

// idleLocked runs when the last stream ends: a connection that takes no
// new streams closes; another waits for IdleConnTimeout.
func (cc *conn) idleLocked() {
	if cc.closed || cc.nc == nil {
		return // not dialed yet: dial checks when it is
	}
	if cc.goaway || cc.closing {
		cc.nc.Close() // the reader ends, and fails the connection
		return
	}
	if d := cc.t.IdleConnTimeout; d > 0 {
		cc.idleAt = time.Now()
		if !cc.idleArmed {
			cc.idleArmed = true
			if cc.idleTimer == nil {
				cc.idleTimer = time.AfterFunc(d, cc.idleCheck)
			} else {
				cc.idleTimer.Reset(d)
			}
		}
	}
}

// idleCheck is the idle timer: it closes the connection if it has been
// without streams for IdleConnTimeout.
func (cc *conn) idleCheck() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.idleArmed = false
	if cc.closed || cc.active > 0 {
		return
	}
	if left := cc.t.IdleConnTimeout - time.Since(cc.idleAt); left > 0 {
		cc.idleArmed = true
		cc.idleTimer.Reset(left)
		return
	}
	cc.closing = true
	cc.idleLocked()
}

// closeWhenIdle closes the connection now if it has no streams, else
// once its last stream ends; it takes no new ones.
func (cc *conn) closeWhenIdle() {
	cc.mu.Lock()
	cc.closing = true
	if cc.active == 0 {
		cc.idleLocked()
	}
	cc.mu.Unlock()
}

// dial opens the connection, sends the preface and SETTINGS, and starts
// the reader.
func (cc *conn) dial(ctx context.Context) {
	nc, err := cc.t.dialer()(ctx, "tcp", cc.addr)
	if err != nil {
		cc.dialErr = err
		cc.mu.Lock()
		cc.closed = true
		cc.mu.Unlock()
		cc.t.removeConn(cc)
		close(cc.ready)
		return
	}
	if _, ok := nc.(*h2conn.Conn); !ok {
		nc = h2conn.Client(nc)
	}
	size := cc.t.ReadBufferSize
	if size <= 0 {
		size = defaultBufferSize
	}
	cc.br = bufio.NewReaderSize(nc, size)
	cc.fr = http2.NewFramer(&cc.wbuf, cc.br)
	cc.fr.SetReuseFrames()
	cc.fr.SetMaxReadFrameSize(maxFrameSize)
	cc.hdec = hpack.NewDecoder(4096, cc.emit)
	cc.hdec.SetMaxStringLength(int(cc.t.maxHeaderBytes()))
	cc.henc = hpack.NewEncoder(&cc.hbuf)
	cc.lower = map[string]string{}

	cc.wmu.Lock()
	cc.mu.Lock()
	cc.nc = nc
	cc.mu.Unlock()
	cc.wbuf.b = append(cc.wbuf.b, http2.ClientPreface...)
	cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: cc.t.maxHeaderBytes()},
	)
	cc.fr.WriteWindowUpdate(0, connWindow-65535)
	cc.flushLocked()
	cc.wmu.Unlock()
	close(cc.ready)
	go cc.readLoop()

	cc.mu.Lock()
	if cc.active == 0 {
		cc.idleLocked() // every waiter gave up
	}
	cc.mu.Unlock()
}

// flushLocked sends what the framer wrote; under wmu. A failed write
// closes the connection: its reader then fails every stream.
func (cc *conn) flushLocked() error {
	if len(cc.wbuf.b) == 0 {
		return nil
	}
	_, err := cc.nc.Write(cc.wbuf.b)
	cc.wbuf.b = cc.wbuf.b[:0]
	if err != nil {
		cc.nc.Close()
	}
	return err
}

// errConnLost is the error of a stream whose connection the upstream
// closed before the stream ended.
var errConnLost = errors.New("h2client: upstream closed the connection before the stream ended")

// readLoop reads frames until the connection fails.
func (cc *conn) readLoop() {
	var err error
	for {
		var f http2.Frame
		f, err = cc.fr.ReadFrame()
		cc.frames.Add(1)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.streamFailed(se.StreamID, se.Code, fmt.Errorf("h2client: malformed frame: %w", err))
				continue
			}
			break
		}
		if err = cc.handle(f); err != nil {
			break
		}
	}
	cc.fail(err)
}

func (cc *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.HeadersFrame, *http2.ContinuationFrame:
		b, err := cc.headerFragment(f)
		var se http2.StreamError
		if errors.As(err, &se) {
			cc.streamFailed(se.StreamID, se.Code, err)
			return nil
		}
		if b == nil {
			return err
		}
		return cc.onHeaders(b)
	case *http2.SettingsFrame:
		return cc.onSettings(f)
	case *http2.WindowUpdateFrame:
		return cc.onWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			cc.pingAnswered(f.Data)
		} else {
			cc.wmu.Lock()
			cc.fr.WritePing(true, f.Data)
			cc.flushLocked()
			cc.wmu.Unlock()
		}
	case *http2.GoAwayFrame:
		cc.onGoAway(f)
	case *http2.RSTStreamFrame:
		return cc.onReset(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is off
	}
	return nil
}

// checkID refuses a frame for a stream the client never opened.
func (cc *conn) checkID(id uint32) error {
	if id%2 == 0 || id > cc.lastID.Load() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// streamFailed resets the stream a malformed frame belongs to.
func (cc *conn) streamFailed(id uint32, code http2.ErrCode, err error) {
	cc.mu.Lock()
	s := cc.streams[id]
	cc.mu.Unlock()
	if s != nil {
		cc.resetStream(s, id, code, err)
	}
}

// fail ends the connection after err: a GOAWAY for a protocol error, the
// socket closed, every stream failed.
func (cc *conn) fail(err error) {
	var ce http2.ConnectionError
	protocolErr := errors.As(err, &ce)
	if protocolErr {
		cc.wmu.Lock()
		cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil)
		cc.flushLocked()
		cc.wmu.Unlock()
	}
	cc.nc.Close()
	lost := errConnLost
	if protocolErr {
		lost = fmt.Errorf("h2client: connection error: %w", err)
	} else if err != io.EOF {
		lost = fmt.Errorf("h2client: connection lost: %w", err)
	}
	var bodies []*reqBody
	cc.mu.Lock()
	if cc.lostErr != nil {
		lost = cc.lostErr
	}
	cc.closed = true
	if cc.idleTimer != nil {
		cc.idleTimer.Stop()
	}
	if cc.pingTimer != nil {
		cc.pingTimer.Stop()
	}
	for id, s := range cc.streams {
		if s.err == nil {
			if cc.peerGoaway && id > cc.goawayID && s.resp == nil {
				s.err = fmt.Errorf("%w: stream %d above the GOAWAY's last stream ID %d", ErrUnprocessed, id, cc.goawayID)
				s.unprocessed = true
			} else {
				s.err = lost
				if s.writer && s.rb.started.Load() {
					bodies = append(bodies, s.rb)
				}
			}
		}
		s.wstop, s.sentEnd, s.recvEnd = true, true, true
		cc.closeStreamLocked(s)
		s.cond.Broadcast()
	}
	cc.mu.Unlock()
	cc.t.removeConn(cc)
	for _, rb := range bodies {
		rb.close()
	}
}

func (cc *conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	if err := cc.checkID(id); err != nil {
		return err
	}
	data := f.Data()
	flow := int64(f.Length)
	var rst error
	code := http2.ErrCodeProtocol
	stop := false
	cc.mu.Lock()
	if flow > cc.recvWin {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	cc.recvWin -= flow
	s := cc.streams[id]
	switch {
	case s == nil:
		cc.recvUnacked += flow // a stream that ended: the bytes go back at once
	case s.recvEnd:
		cc.recvUnacked += flow
		rst, code = errors.New("h2client: DATA after END_STREAM"), http2.ErrCodeStreamClosed
	case s.resp == nil:
		cc.recvUnacked += flow
		rst = errors.New("h2client: DATA before the response headers")
	case flow > s.recvWin:
		cc.recvUnacked += flow
		rst, code = errors.New("h2client: DATA beyond the stream's window"), http2.ErrCodeFlowControl
	default:
		s.recvWin -= flow
		if pad := flow - int64(len(data)); pad > 0 {
			cc.recvUnacked += pad
			s.recvUnacked += pad
		}
		s.received += int64(len(data))
		if s.cl >= 0 && s.received > s.cl {
			cc.recvUnacked += int64(len(data))
			rst = fmt.Errorf("h2client: response body longer than its Content-Length %d", s.cl)
			break
		}
		s.rbuf = append(s.rbuf, data...)
		if f.StreamEnded() {
			if s.cl >= 0 && s.received != s.cl && s.err == nil {
				s.err = fmt.Errorf("h2client: response body of %d bytes, shorter than its Content-Length %d", s.received, s.cl)
			}
			stop = cc.endRecvLocked(s)
		}
		s.cond.Broadcast()
	}
	upd := cc.connUpdateLocked()
	cc.mu.Unlock()
	if rst != nil {
		cc.resetStream(s, id, code, rst)
	} else if stop {
		cc.resetStream(s, id, http2.ErrCodeNo, nil)
	}
	if upd > 0 {
		cc.sendWindowUpdates(nil, 0, 0, upd)
	}
	return nil
}

// endRecvLocked records the peer's END_STREAM. It reports whether the
// request is still being sent: the answer is complete, so the rest is
// not (RST_STREAM NO_ERROR, as net/http does).
func (cc *conn) endRecvLocked(s *stream) bool {
	s.recvEnd = true
	if s.sentEnd {
		cc.closeStreamLocked(s)
		return false
	}
	return true
}

// connUpdateLocked returns the connection window increment due, if any.
func (cc *conn) connUpdateLocked() uint32 {
	if cc.recvUnacked < connWindow/2 {
		return 0
	}
	n := cc.recvUnacked
	cc.recvUnacked = 0
	cc.recvWin += n
	return uint32(n)
}

// sendWindowUpdates sends a stream's (s, id: inc) and the connection's
// (cinc) WINDOW_UPDATEs.
func (cc *conn) sendWindowUpdates(s *stream, id uint32, inc, cinc uint32) {
	cc.wmu.Lock()
	if inc > 0 {
		cc.mu.Lock()
		open := s.id == id && !s.closed && !s.recvEnd
		cc.mu.Unlock()
		if open {
			cc.fr.WriteWindowUpdate(id, inc)
		}
	}
	if cinc > 0 {
		cc.fr.WriteWindowUpdate(0, cinc)
	}
	cc.flushLocked()
	cc.wmu.Unlock()
}

func (cc *conn) onHeaders(f *headerBlock) error {
	id := f.streamID
	if err := cc.checkID(id); err != nil {
		return err
	}
	cc.mu.Lock()
	s := cc.streams[id]
	if s == nil {
		cc.mu.Unlock()
		return nil // a stream that ended: decoded for HPACK's sake only
	}
	first, ended, isHead := s.resp == nil, s.recvEnd, s.isHead
	cc.mu.Unlock()
	if ended {
		cc.resetStream(s, id, http2.ErrCodeStreamClosed, errors.New("h2client: HEADERS after END_STREAM"))
		return nil
	}
	if !first {
		trailer, err := cc.parseTrailers(f)
		if err != nil {
			cc.resetStream(s, id, http2.ErrCodeProtocol, err)
			return nil
		}
		cc.mu.Lock()
		if s.id != id || s.closed {
			cc.mu.Unlock()
			return nil
		}
		s.trailer = trailer
		if s.cl >= 0 && s.received != s.cl && s.err == nil {
			s.err = fmt.Errorf("h2client: response body of %d bytes, shorter than its Content-Length %d", s.received, s.cl)
		}
		stop := cc.endRecvLocked(s)
		s.cond.Broadcast()
		cc.mu.Unlock()
		if stop {
			cc.resetStream(s, id, http2.ErrCodeNo, nil)
		}
		return nil
	}
	resp, info, err := cc.parseResponse(f, isHead)
	if err != nil {
		cc.resetStream(s, id, http2.ErrCodeProtocol, err)
		return nil
	}
	stop := false
	cc.mu.Lock()
	if s.id != id || s.closed {
		cc.mu.Unlock()
		return nil
	}
	if info != nil {
		s.n1xx++
		if s.n1xx > max1xx {
			err = errors.New("h2client: too many informational responses")
		} else {
			s.info = append(s.info, *info)
		}
	} else {
		s.resp = resp
		if !isHead && resp.StatusCode != 204 && resp.StatusCode != 304 {
			s.cl = resp.ContentLength
		}
		if f.endStream {
			if s.cl > 0 {
				s.err = fmt.Errorf("h2client: response ended before its Content-Length %d", s.cl)
			}
			stop = cc.endRecvLocked(s)
		}
	}
	s.cond.Broadcast()
	cc.mu.Unlock()
	if err != nil {
		cc.resetStream(s, id, http2.ErrCodeProtocol, err)
	} else if stop {
		cc.resetStream(s, id, http2.ErrCodeNo, nil)
	}
	return nil
}

func (cc *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxFrameSize:
			cc.peerMaxFrame = int(st.Val)
		case http2.SettingMaxConcurrentStreams:
			cc.maxStreams = st.Val
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - cc.peerInitWin
			for _, s := range cc.streams {
				s.sendWin += delta
				if s.sendWin > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				if delta > 0 && s.waitWin {
					s.cond.Broadcast()
				}
			}
			cc.peerInitWin = int64(st.Val)
		case http2.SettingHeaderTableSize:
			cc.henc.SetMaxDynamicTableSizeLimit(st.Val)
		case http2.SettingMaxHeaderListSize:
			cc.peerMaxHeaderList = st.Val
		}
		return nil
	})
	cc.mu.Unlock()
	if err != nil {
		return err
	}
	cc.fr.WriteSettingsAck()
	cc.flushLocked()
	return nil
}

func (cc *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	cc.mu.Lock()
	if f.StreamID == 0 {
		cc.sendWin += inc
		if cc.sendWin > 1<<31-1 {
			cc.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, s := range cc.streams {
			if s.waitWin {
				s.cond.Broadcast()
			}
		}
		cc.mu.Unlock()
		return nil
	}
	id := f.StreamID
	if err := cc.checkID(id); err != nil {
		cc.mu.Unlock()
		return err
	}
	s := cc.streams[id]
	if s == nil {
		cc.mu.Unlock()
		return nil
	}
	s.sendWin += inc
	over := s.sendWin > 1<<31-1
	if s.waitWin {
		s.cond.Broadcast()
	}
	cc.mu.Unlock()
	if over {
		cc.resetStream(s, id, http2.ErrCodeFlowControl, errors.New("h2client: stream send window overflow"))
	}
	return nil
}

// errFromPeer is the Cause of a StreamError for the peer's RST_STREAM.
var errFromPeer = errors.New("received from peer")

func (cc *conn) onReset(f *http2.RSTStreamFrame) error {
	id := f.StreamID
	if err := cc.checkID(id); err != nil {
		return err
	}
	cc.mu.Lock()
	s := cc.streams[id]
	if s == nil {
		cc.mu.Unlock()
		return nil
	}
	rb := s.rb
	abort := s.writer && rb.started.Load()
	switch {
	case f.ErrCode == http2.ErrCodeNo && s.recvEnd:
		// The answer is complete: stop sending.
	case f.ErrCode == http2.ErrCodeRefusedStream && s.resp == nil && s.n1xx == 0:
		s.err = fmt.Errorf("%w: stream %d refused (REFUSED_STREAM)", ErrUnprocessed, id)
		s.unprocessed = true
		abort = false // the body, if unread, may be sent again
	default:
		if s.err == nil {
			s.err = http2.StreamError{StreamID: id, Code: f.ErrCode, Cause: errFromPeer}
		}
	}
	s.rstRecv = true
	s.wstop, s.sentEnd, s.recvEnd = true, true, true
	cc.closeStreamLocked(s)
	s.cond.Broadcast()
	cc.mu.Unlock()
	if abort {
		rb.close()
	}
	return nil
}

func (cc *conn) onGoAway(f *http2.GoAwayFrame) {
	last := f.LastStreamID
	cc.mu.Lock()
	if cc.peerGoaway && cc.goawayID < last {
		last = cc.goawayID
	}
	cc.goaway, cc.peerGoaway, cc.goawayID = true, true, last
	for id, s := range cc.streams {
		if id <= last {
			continue
		}
		if s.resp == nil {
			s.err = fmt.Errorf("%w: stream %d above the GOAWAY's last stream ID %d", ErrUnprocessed, id, last)
			s.unprocessed = true
		} else {
			s.err = fmt.Errorf("h2client: stream %d above the GOAWAY's last stream ID %d", id, last)
		}
		s.wstop, s.sentEnd, s.recvEnd = true, true, true
		cc.closeStreamLocked(s)
		s.cond.Broadcast()
	}
	if cc.active == 0 {
		cc.idleLocked()
	}
	cc.mu.Unlock()
	cc.t.removeConn(cc)
}

// resetStream ends stream s (if it is still stream id) with RST_STREAM
// code, and reports whether it did. err, when not nil, is what its reads
// and its caller get. A body writer that has begun reading the request
// body has it closed.
func (cc *conn) resetStream(s *stream, id uint32, code http2.ErrCode, err error) bool {
	cc.wmu.Lock()
	cc.mu.Lock()
	if s.id != id || s.closed {
		cc.mu.Unlock()
		cc.wmu.Unlock()
		return false
	}
	if err != nil && s.err == nil {
		s.err = err
	}
	send := !s.rstRecv
	rb := s.rb
	abort := s.writer && rb.started.Load()
	s.wstop, s.sentEnd, s.recvEnd = true, true, true
	cc.closeStreamLocked(s)
	s.cond.Broadcast()
	cc.mu.Unlock()
	if send {
		cc.fr.WriteRSTStream(id, code)
		cc.flushLocked()
	}
	cc.wmu.Unlock()
	if abort {
		rb.close()
	}
	return true
}

// closeStreamLocked removes s from the connection and frees its slot.
func (cc *conn) closeStreamLocked(s *stream) {
	if s.closed {
		return
	}
	s.closed = true
	delete(cc.streams, s.id)
	if s.stop != nil {
		if s.stop() {
			s.refs-- // the context's; else its callback drops it
		}
		s.stop = nil
	}
	s.refs-- // the connection's
	cc.active--
	if cc.active == 0 {
		cc.idleLocked()
	}
	cc.recycleLocked(s)
}

package h2server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sidecar-proxy/sidecar/internal/h2conn"
)

const (
	// initialWindowSize is RFC 9113's initial flow-control window.
	initialWindowSize = 65535
	maxWindow         = 1<<31 - 1
	// inflowMinRefresh: a WINDOW_UPDATE is sent once this much credit
	// has accumulated, or when it at least doubles what the peer has
	// left (as net/http's server).
	inflowMinRefresh = 4 << 10
	// goAwayLinger is how long a connection that sent its last frames
	// (a GOAWAY) keeps reading before it closes, so that a peer's
	// frames in flight do not turn the close into a TCP reset that
	// could destroy the GOAWAY before it is read.
	goAwayLinger = time.Second
	// drainSlack is what a connection error's drain reads beyond a
	// connection window: frames other than DATA in flight.
	drainSlack = 256 << 10
	// maxHeaderFrames bounds the frames (HEADERS and CONTINUATIONs) of
	// one header block: with the size bound, a CONTINUATION flood of
	// empty frames ends the connection too.
	maxHeaderFrames = 256
	// recentClosed is how many closed streams a connection remembers,
	// to tell a frame on a stream it reset (in flight, ignored) from
	// one on a stream closed both ways (STREAM_CLOSED).
	recentClosed = 64
	// maxWriteFrameSize caps the DATA frames written, whatever the
	// peer's SETTINGS_MAX_FRAME_SIZE allows.
	maxWriteFrameSize = 64 << 10
)

var clientPreface = []byte(http2.ClientPreface)

var (
	errClientDisconnected = errors.New("http2: client disconnected")
	errStreamClosed       = errors.New("http2: stream closed")
	errClosedBody         = errors.New("http2: request body closed by handler")
	errControlFlood       = errors.New("http2: too many control frames queued for a peer that does not read")
)

// connError is a connection error: GOAWAY with code, then close.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("connection error %v: %s", e.code, e.reason) }

// streamError is a stream error: RST_STREAM with code.
type streamError struct {
	id   uint32
	code http2.ErrCode
}

func (e streamError) Error() string { return fmt.Sprintf("stream %d error %v", e.id, e.code) }

// conn is one HTTP/2 connection. Its goroutine (serve) reads and
// dispatches frames; handlers run on the server's workers and write
// their frames themselves, under wmu.
type conn struct {
	srv        *Server
	nc         net.Conn // as accepted
	bc         *h2conn.Conn
	ctx        context.Context // ConnContext's; cancelled when the connection ends
	cancel     context.CancelFunc
	remoteAddr string
	framer     *http2.Framer // writes, under wmu

	// The reading goroutine's.
	rf             *readFramer // nil while waiting for bytes
	hdec           *hpack.Decoder
	hb             headerBlock
	sawSettings    bool
	canon          map[string]string // lower-case name -> canonical key, beyond the common ones
	maxHeaderList  uint32
	advMaxStreams  uint32
	initRecvWindow int32 // per stream, as advertised

	// wmu serializes writing: the HPACK encoder and the framer's write
	// side. Nothing blocks on the socket under it (see lockWrite).
	wmu          sync.Mutex
	henc         *hpack.Encoder
	hbuf         bytes.Buffer
	pending      int               // bytes waiting in bc as of the last write
	lower        map[string]string // canonical key -> lower-case name, beyond the common ones
	peerMaxFrame int               // the peer's SETTINGS_MAX_FRAME_SIZE, capped
	wroteGoAway  bool

	// mu guards the streams and the flow-control windows. Lock order:
	// wmu before mu, mu before a stream's bmu.
	mu               sync.Mutex
	flowCond         sync.Cond // L is &mu: windows grew, or a stream or the connection closed
	streams          map[uint32]*stream
	maxClientID      uint32
	sendWindow       int32 // connection-level, toward the peer
	initSendWindow   int32 // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	recvAvail        int32 // connection-level window the peer has
	recvUnsent       int32 // credit not yet sent
	handlers         int   // handlers running (or handed to a worker)
	queue            []*stream
	goingAway        bool   // GOAWAY sent or being sent: no new streams
	goAwayID         uint32 // its last stream ID
	closed           bool
	unackedSettings  int
	idleSince        time.Time // when the last stream closed
	idleTimer        *time.Timer
	closedIDs        [recentClosed]uint32
	closedResetByUs  [recentClosed]bool
	closedNext       int
	maxHandlersQueue int
	linger           bool // the read deadline is set to end the connection
}

func newConn(s *Server, nc net.Conn, ctx context.Context) *conn {
	c := &conn{
		srv:            s,
		nc:             nc,
		bc:             h2conn.Server(nc),
		remoteAddr:     nc.RemoteAddr().String(),
		streams:        map[uint32]*stream{},
		sendWindow:     initialWindowSize,
		initSendWindow: initialWindowSize,
		recvAvail:      initialWindowSize,
		maxHeaderList:  s.maxHeaderListSize(),
		advMaxStreams:  s.maxStreams(),
		initRecvWindow: s.streamWindow(),
		peerMaxFrame:   16 << 10,
		idleSince:      time.Now(),
	}
	c.maxHandlersQueue = 4 * int(c.advMaxStreams)
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.flowCond.L = &c.mu
	c.framer = http2.NewFramer(frameSink{c}, nil)
	c.hdec = hpack.NewDecoder(s.headerTableSize(), c.emit)
	c.hdec.SetMaxStringLength(int(c.maxHeaderList))
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.henc.SetMaxDynamicTableSizeLimit(s.headerTableSize())
	return c
}

// readFramer reads a connection's frames. It is pooled: while the
// socket has nothing to read, and no header block is half read, the
// reading goroutine gives it back and waits for bytes without it
// (h2conn.Conn.Fill), and with it the buffer x/net's Framer grows to the
// largest frame it has read (a request body's 16 KiB DATA), which would
// otherwise stay with an idle connection.
type readFramer struct {
	fr  *http2.Framer
	src frameSource
}

// frameSource is a pooled framer's reader: the connection it reads for
// now.
type frameSource struct{ r io.Reader }

func (s *frameSource) Read(p []byte) (int, error) { return s.r.Read(p) }

var readFramerPool = sync.Pool{New: func() any {
	rf := new(readFramer)
	rf.fr = http2.NewFramer(nil, &rf.src)
	rf.fr.SetReuseFrames()
	return rf
}}

// takeReadFramer gives the connection a framer to read with.
func (c *conn) takeReadFramer() {
	rf := readFramerPool.Get().(*readFramer)
	rf.src.r = c.bc
	rf.fr.SetMaxReadFrameSize(c.srv.maxReadFrameSize())
	c.rf = rf
}

// releaseReadFramer gives the connection's framer back: between frames,
// outside a header block, it holds no state of the connection's.
func (c *conn) releaseReadFramer() {
	c.rf.src.r = nil
	readFramerPool.Put(c.rf)
	c.rf = nil
}

// frameSink is the framer's writer: frames go to the connection's
// buffer without waiting (the caller holds wmu and bounds them).
type frameSink struct{ c *conn }

func (w frameSink) Write(p []byte) (int, error) {
	n, err := w.c.bc.Queue(p)
	w.c.pending = n
	return len(p), err
}

// serve runs the connection: settings, preface, then frames until the
// connection ends.
func (c *conn) serve() {
	defer c.teardown()
	defer func() {
		if e := recover(); e != nil {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			c.srv.logf("http2: panic serving connection %v: %v\n%s", c.remoteAddr, e, buf)
		}
	}()
	s := c.srv
	if s.IdleTimeout > 0 {
		c.mu.Lock()
		c.idleTimer = time.AfterFunc(s.IdleTimeout, c.onIdleTimer)
		c.mu.Unlock()
	}
	if s.ReadHeaderTimeout > 0 {
		c.bc.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
	}
	// Our SETTINGS go first, without waiting for the client's.
	c.wmu.Lock()
	c.framer.WriteSettings(
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: s.maxReadFrameSize()},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.advMaxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.maxHeaderList},
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: s.headerTableSize()},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.initRecvWindow)},
	)
	if d := s.connWindow() - initialWindowSize; d > 0 {
		c.framer.WriteWindowUpdate(0, uint32(d))
	}
	c.wmu.Unlock()
	c.mu.Lock()
	c.unackedSettings++
	c.recvAvail = s.connWindow()
	c.mu.Unlock()

	var pre [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.bc, pre[:]); err != nil {
		return
	}
	if !bytes.Equal(pre[:], clientPreface) {
		c.goAway(http2.ErrCodeProtocol, "invalid preface")
		c.drain()
		return
	}
	c.takeReadFramer()
	for {
		if c.bc.Buffered() == 0 && !c.hb.active {
			// Wait for bytes holding no framer.
			c.releaseReadFramer()
			if err := c.bc.Fill(); err != nil {
				return
			}
			c.takeReadFramer()
		}
		f, err := c.rf.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			switch {
			case errors.As(err, &se):
				// A malformed frame of one stream (WINDOW_UPDATE of 0).
				c.resetStream(se.StreamID, se.Code)
				continue
			case errors.Is(err, http2.ErrFrameTooLarge):
				c.goAway(http2.ErrCodeFrameSize, "frame too large")
				c.drain()
				return
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				reason := ""
				if d := c.rf.fr.ErrorDetail(); d != nil {
					reason = d.Error()
				}
				c.goAway(http2.ErrCode(ce), reason)
				c.drain()
			}
			return
		}
		if err := c.processFrame(f); err != nil {
			var ce connError
			var se streamError
			switch {
			case errors.As(err, &se):
				c.resetStream(se.id, se.code)
				continue
			case errors.As(err, &ce):
				c.goAway(ce.code, ce.reason)
				c.drain()
			case errors.Is(err, errControlFlood):
				// Nothing more will be read by this peer: no grace.
				c.srv.logf("http2: closing connection from %v: %v", c.remoteAddr, err)
				c.nc.Close()
			}
			return
		}
	}
}

// drain reads and drops what the peer still sends, for goAwayLinger at
// most, after a connection error's GOAWAY: closing with unread bytes
// would reset the connection. It stops early past what a peer could
// have had in flight, a connection window of DATA and a little more: a
// peer that sends more (a CONTINUATION flood) is not heeding the GOAWAY,
// and gets the reset.
func (c *conn) drain() {
	c.failStreams(errClientDisconnected)
	c.bc.SetReadDeadline(time.Now().Add(goAwayLinger))
	buf := make([]byte, 4<<10)
	for left := int64(c.srv.connWindow()) + drainSlack; left > 0; {
		n, err := c.bc.Read(buf)
		if err != nil {
			return
		}
		left -= int64(n)
	}
}

// teardown ends the connection: its streams fail, contexts are
// cancelled, the socket is closed once what is queued is written.
func (c *conn) teardown() {
	c.failStreams(errClientDisconnected)
	c.cancel()
	c.bc.Close()
	c.srv.trackConn(c, false)
}

// failStreams closes every stream with err and refuses new ones.
func (c *conn) failStreams(err error) {
	c.mu.Lock()
	c.closed = true
	c.goingAway = true
	for _, st := range c.streams {
		c.closeStreamLocked(st, err, false)
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	queued := c.queue
	c.queue = nil
	c.flowCond.Broadcast()
	c.mu.Unlock()
	for _, st := range queued {
		st.discard()
	}
}

// closeNow is Server.Close for this connection.
func (c *conn) closeNow() {
	c.failStreams(errClientDisconnected)
	c.cancel()
	c.nc.Close()
	c.bc.Close()
}

// processFrame handles one frame of the peer.
func (c *conn) processFrame(f http2.Frame) error {
	if !c.sawSettings {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
		}
		c.sawSettings = true
		if c.srv.ReadHeaderTimeout > 0 {
			// Unless a GOAWAY has set the deadline to end the
			// connection meanwhile.
			c.mu.Lock()
			if !c.linger {
				c.bc.SetReadDeadline(time.Time{})
			}
			c.mu.Unlock()
		}
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.HeadersFrame:
		return c.processHeaders(f)
	case *http2.ContinuationFrame:
		return c.processContinuation(f)
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.PingFrame:
		return c.processPing(f)
	case *http2.RSTStreamFrame:
		return c.processReset(f)
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			return streamError{f.StreamID, http2.ErrCodeProtocol}
		}
		return nil
	case *http2.GoAwayFrame:
		c.startGracefulShutdown()
		return nil
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	}
	return nil // unknown frame types are ignored
}

// lookup returns the open stream id, or how the id stands: idle (never
// opened), or closed (reset by us: frames in flight are expected).
// Under c.mu.
func (c *conn) lookup(id uint32) (st *stream, idle, resetByUs bool) {
	if st := c.streams[id]; st != nil {
		return st, false, false
	}
	if id > c.maxClientID {
		return nil, true, false
	}
	for i, cid := range c.closedIDs {
		if cid == id {
			return nil, false, c.closedResetByUs[i]
		}
	}
	return nil, false, false
}

func (c *conn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	data := f.Data()
	c.mu.Lock()
	st, idle, resetByUs := c.lookup(id)
	if idle {
		c.mu.Unlock()
		return connError{http2.ErrCodeProtocol, "DATA on an idle stream"}
	}
	if c.goingAway && id > c.goAwayID {
		st = nil
		resetByUs = true // ignore: the peer knows it was not served
	}
	if st == nil || st.remoteDone {
		// Closed: the connection's window still counts it, and gets it
		// back at once.
		if f.Length > uint32(c.recvAvail) {
			c.mu.Unlock()
			return connError{http2.ErrCodeFlowControl, "DATA beyond the connection's window"}
		}
		c.recvAvail -= int32(f.Length)
		inc := c.creditConnLocked(int(f.Length))
		c.mu.Unlock()
		if err := c.writeWindowUpdates(0, inc, 0); err != nil {
			return err
		}
		if resetByUs {
			return nil
		}
		return streamError{id, http2.ErrCodeStreamClosed}
	}
	if f.Length > uint32(c.recvAvail) {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "DATA beyond the connection's window"}
	}
	if f.Length > uint32(st.recvAvail) {
		c.recvAvail -= int32(f.Length)
		inc := c.creditConnLocked(int(f.Length))
		c.mu.Unlock()
		if err := c.writeWindowUpdates(0, inc, 0); err != nil {
			return err
		}
		return streamError{id, http2.ErrCodeFlowControl}
	}
	c.recvAvail -= int32(f.Length)
	st.recvAvail -= int32(f.Length)
	if st.declLen >= 0 && st.bodyBytes+int64(len(data)) > st.declLen {
		inc := c.creditConnLocked(int(f.Length))
		c.closeStreamLocked(st, fmt.Errorf("http2: client sent more than the declared Content-Length of %d bytes", st.declLen), true)
		c.mu.Unlock()
		c.writeWindowUpdates(0, inc, 0)
		return streamError{id, http2.ErrCodeProtocol}
	}
	st.bodyBytes += int64(len(data))
	var connInc, streamInc int32
	if len(data) > 0 && !st.appendBody(data) {
		// The handler closed the body: the connection gets the bytes
		// back at once.
		connInc = c.creditConnLocked(len(data))
	}
	if pad := int(f.Length) - len(data); pad > 0 {
		// Padding is never read: credit it back now.
		connInc += c.creditConnLocked(pad)
		if !f.StreamEnded() {
			streamInc = st.creditLocked(pad)
		}
	}
	var err error
	if f.StreamEnded() {
		err = c.endRemoteLocked(st)
	}
	c.mu.Unlock()
	if werr := c.writeWindowUpdates(0, connInc, 0); werr != nil {
		return werr
	}
	if streamInc > 0 {
		if werr := c.writeWindowUpdates(id, streamInc, 0); werr != nil {
			return werr
		}
	}
	return err
}

// endRemoteLocked ends the request side of st (END_STREAM): its body's
// end, once the bytes match a declared Content-Length.
func (c *conn) endRemoteLocked(st *stream) error {
	if st.declLen >= 0 && st.bodyBytes != st.declLen {
		c.closeStreamLocked(st, fmt.Errorf("http2: request declared a Content-Length of %d but sent %d bytes", st.declLen, st.bodyBytes), true)
		return streamError{st.id, http2.ErrCodeProtocol}
	}
	st.remoteDone = true
	st.endBody(io.EOF)
	if st.localDone {
		c.closeStreamLocked(st, nil, false)
	}
	return nil
}

func (c *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		c.mu.Lock()
		c.unackedSettings--
		bad := c.unackedSettings < 0
		c.mu.Unlock()
		if bad {
			return connError{http2.ErrCodeProtocol, "SETTINGS ACK without SETTINGS"}
		}
		return nil
	}
	// Applied in order, each as it comes (RFC 9113, section 6.5.3).
	var tableSizes []uint32
	var maxFrame uint32
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), "invalid setting"}
			}
			return connError{http2.ErrCodeProtocol, "invalid setting"}
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			tableSizes = append(tableSizes, s.Val)
		case http2.SettingInitialWindowSize:
			return c.setInitialWindow(s.Val)
		case http2.SettingMaxFrameSize:
			maxFrame = s.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := c.lockControl(); err != nil {
		return err
	}
	for _, v := range tableSizes {
		c.henc.SetMaxDynamicTableSize(v)
	}
	if maxFrame != 0 {
		c.peerMaxFrame = int(min(maxFrame, maxWriteFrameSize))
	}
	c.framer.WriteSettingsAck()
	return c.unlockControl()
}

// setInitialWindow applies a new SETTINGS_INITIAL_WINDOW_SIZE to every
// open stream's send window.
func (c *conn) setInitialWindow(v uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delta := int32(v) - c.initSendWindow
	c.initSendWindow = int32(v)
	for _, st := range c.streams {
		n := int64(st.sendWindow) + int64(delta)
		if n > maxWindow {
			return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window"}
		}
		st.sendWindow = int32(n)
	}
	c.flowCond.Broadcast()
	return nil
}

func (c *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		n := int64(c.sendWindow) + int64(f.Increment)
		if n > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.sendWindow = int32(n)
		c.flowCond.Broadcast()
		return nil
	}
	st, idle, _ := c.lookup(f.StreamID)
	if idle {
		return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
	}
	if st == nil {
		return nil // closed: allowed
	}
	n := int64(st.sendWindow) + int64(f.Increment)
	if n > maxWindow {
		c.closeStreamLocked(st, errStreamClosed, true)
		return streamError{f.StreamID, http2.ErrCodeFlowControl}
	}
	st.sendWindow = int32(n)
	c.flowCond.Broadcast()
	return nil
}

func (c *conn) processPing(f *http2.PingFrame) error {
	if f.IsAck() {
		return nil // we send no PINGs
	}
	if err := c.lockControl(); err != nil {
		return err
	}
	c.framer.WritePing(true, f.Data)
	return c.unlockControl()
}

func (c *conn) processReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, idle, _ := c.lookup(f.StreamID)
	if idle {
		return connError{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
	}
	if st != nil {
		c.closeStreamLocked(st, fmt.Errorf("http2: stream reset by the client (%v)", f.ErrCode), false)
	}
	return nil
}

// closeStreamLocked closes st: it leaves the connection's table, its
// body and writes fail with err (nil: closed normally), its context is
// cancelled. resetByUs records that the peer may still send frames for
// it, which are dropped.
func (c *conn) closeStreamLocked(st *stream, err error, resetByUs bool) {
	if st.closed {
		return
	}
	st.closed = true
	st.closeErr = err // before dead: who sees dead reads it without c.mu
	st.dead.Store(true)
	delete(c.streams, st.id)
	c.closedIDs[c.closedNext] = st.id
	c.closedResetByUs[c.closedNext] = resetByUs
	c.closedNext = (c.closedNext + 1) % recentClosed
	if err != nil {
		st.endBody(err)
		st.cancel()
	}
	c.flowCond.Broadcast()
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		c.maybeFinishLocked()
	}
}

// maybeFinishLocked ends a connection that has sent GOAWAY once nothing
// is left to serve: its reads end after goAwayLinger (or at the peer's
// close), and the connection closes.
func (c *conn) maybeFinishLocked() {
	if !c.goingAway || c.closed || len(c.streams) > 0 || c.handlers > 0 || c.linger {
		return
	}
	c.linger = true
	c.bc.SetReadDeadline(time.Now().Add(goAwayLinger))
}

// startGracefulShutdown sends GOAWAY (NO_ERROR) naming the last stream
// served; the connection ends once those are done.
func (c *conn) startGracefulShutdown() {
	c.goAway(http2.ErrCodeNo, "")
}

// goAway sends GOAWAY once; with an error code the caller ends the
// connection.
func (c *conn) goAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	if c.goingAway && code == http2.ErrCodeNo {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	c.goAwayID = c.maxClientID
	last := c.goAwayID
	c.mu.Unlock()
	if code != http2.ErrCodeNo {
		c.srv.logf("http2: connection error from %v: %v %s", c.remoteAddr, code, reason)
	}
	c.wmu.Lock()
	if !c.wroteGoAway || code != http2.ErrCodeNo {
		c.wroteGoAway = true
		var debug []byte
		if reason != "" {
			debug = []byte(reason)
		}
		c.framer.WriteGoAway(last, code, debug)
	}
	c.wmu.Unlock()
	if code == http2.ErrCodeNo {
		c.mu.Lock()
		c.maybeFinishLocked()
		c.mu.Unlock()
	}
}

// onIdleTimer ends a connection idle for IdleTimeout, or looks again
// when it is due.
func (c *conn) onIdleTimer() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	idle := len(c.streams) == 0 && c.handlers == 0
	d := c.srv.IdleTimeout
	if idle {
		d -= time.Since(c.idleSince)
	}
	if idle && d <= 0 {
		c.mu.Unlock()
		c.startGracefulShutdown()
		return
	}
	c.idleTimer.Reset(d)
	c.mu.Unlock()
}

// resetStream sends RST_STREAM for id and closes the stream if open.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.closeStreamLocked(st, fmt.Errorf("http2: stream reset (%v)", code), true)
	} else {
		// Remember it, so that the peer's frames in flight are dropped.
		c.closedIDs[c.closedNext] = id
		c.closedResetByUs[c.closedNext] = true
		c.closedNext = (c.closedNext + 1) % recentClosed
	}
	c.mu.Unlock()
	if c.lockControl() == nil {
		c.framer.WriteRSTStream(id, code)
		c.unlockControl()
	}
}

// creditConnLocked adds n bytes of connection-level credit and returns
// the WINDOW_UPDATE increment due now, if any.
func (c *conn) creditConnLocked(n int) int32 {
	return credit(&c.recvAvail, &c.recvUnsent, n)
}

// credit adds n bytes of credit to a receive window (avail, with unsent
// credit not yet announced) and returns the WINDOW_UPDATE increment due
// now: none until the credit reaches inflowMinRefresh or what the peer
// may still send, so small reads do not each cost a frame.
func credit(avail, unsent *int32, n int) int32 {
	if n <= 0 {
		return 0
	}
	*unsent += int32(n)
	if *unsent < inflowMinRefresh && *unsent < *avail {
		return 0
	}
	inc := *unsent
	*avail += inc
	*unsent = 0
	return inc
}

// writeWindowUpdates sends WINDOW_UPDATE for the connection (connInc)
// and the stream id (streamInc), those that are not 0.
func (c *conn) writeWindowUpdates(id uint32, connInc, streamInc int32) error {
	if connInc <= 0 && streamInc <= 0 {
		return nil
	}
	if err := c.lockControl(); err != nil {
		return err
	}
	if connInc > 0 {
		c.framer.WriteWindowUpdate(0, uint32(connInc))
	}
	if streamInc > 0 {
		c.framer.WriteWindowUpdate(id, uint32(streamInc))
	}
	return c.unlockControl()
}

// lockControl takes wmu for control frames, which are written whatever
// is pending: the reading goroutine must not wait on a peer that does
// not read. unlockControl reports a peer that lets them pile up.
func (c *conn) lockControl() error {
	c.wmu.Lock()
	return nil
}

func (c *conn) unlockControl() error {
	flood := c.pending > 2*h2conn.MaxPending
	c.wmu.Unlock()
	if flood {
		return errControlFlood
	}
	return nil
}

// lockWrite takes wmu for a handler's frames once fewer than
// h2conn.MaxPending bytes wait, so that a slow reader holds the handler
// back without wmu held.
func (c *conn) lockWrite() error {
	for {
		c.wmu.Lock()
		if c.pending < h2conn.MaxPending {
			return nil
		}
		ok, err := c.bc.Writable()
		if err != nil {
			c.wmu.Unlock()
			return err
		}
		if ok {
			c.pending = 0
			return nil
		}
		c.wmu.Unlock()
		if err := c.bc.WaitWritable(); err != nil {
			return err
		}
	}
}

// writeDataLocked writes a DATA frame (no padding) straight into the
// connection's buffer: the framer would copy data into a buffer of its
// own first, which would grow to the largest frame written and stay
// with the connection while it is idle.
func (c *conn) writeDataLocked(id uint32, endStream bool, data []byte) error {
	var flags byte
	if endStream {
		flags = byte(http2.FlagDataEndStream)
	}
	n := len(data)
	hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	pending, err := c.bc.QueueFrame(hdr[:], data)
	c.pending = pending
	return err
}

// writeHeaderBlockLocked writes block as HEADERS and CONTINUATIONs.
func (c *conn) writeHeaderBlockLocked(id uint32, block []byte, endStream bool) error {
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > c.peerMaxFrame {
			frag = frag[:c.peerMaxFrame]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = c.framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
		} else {
			err = c.framer.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return nil
}

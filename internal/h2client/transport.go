package h2client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
)

// Limits and windows.
const (
	defaultMaxHeadBytes = 1 << 20
	defaultBufferSize   = 16 << 10
	// streamWindow is each stream's receive window, our
	// SETTINGS_INITIAL_WINDOW_SIZE, and connWindow the connection's: the
	// figures of net/http's transport.
	streamWindow = 4 << 20
	connWindow   = 1 << 30
	// initialMaxStreams is the peer's concurrency limit assumed until its
	// SETTINGS arrive.
	initialMaxStreams = 100
	// maxFrameSize is the largest frame read (the default
	// SETTINGS_MAX_FRAME_SIZE, which is never raised).
	maxFrameSize = 16 << 10
	// smallBody is the largest request body of known length sent with the
	// HEADERS from the caller's goroutine.
	smallBody = 16 << 10
	// maxTries bounds the sends of a request the peer did not process.
	maxTries = 4
	// max1xx bounds the informational answers before the final one.
	max1xx = 16
	// maxStreamID is the largest client stream ID.
	maxStreamID = 1<<31 - 1
	// defaultPingTimeout is Transport.PingTimeout's default.
	defaultPingTimeout = 5 * time.Second
)

// ErrUnprocessed is matched (errors.Is) by the error of a request the
// upstream refused without processing it: its stream was above a GOAWAY's
// last stream ID, refused with REFUSED_STREAM, or never sent because the
// connection closed first. Sending it again is safe.
var ErrUnprocessed = errors.New("h2client: request not processed by the upstream")

// Transport is an http.RoundTripper for HTTP/2 with prior knowledge over
// TCP (http URLs only). It is safe for concurrent use; change its fields
// only before the first RoundTrip.
type Transport struct {
	// DialContext opens connections; nil means a net.Dialer's with a
	// 30-second timeout. Connections are wrapped by internal/h2conn
	// (batched writes) unless they already are.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// IdleConnTimeout closes connections without streams for this long;
	// 0 means never.
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response's header list (as HPACK
	// counts it) and is sent as SETTINGS_MAX_HEADER_LIST_SIZE; 0 means
	// 1 MiB.
	MaxResponseHeaderBytes int64
	// ReadBufferSize is each connection's read buffer; 0 means 16 KiB.
	ReadBufferSize int
	// PingTimeout bounds the wait for the acknowledgement of the PING a
	// connection sends when a stream's caller gives up on it (a per-try
	// timeout, say): without it, and without any frame read on the
	// connection meanwhile (which gives it another PingTimeout), the
	// connection is closed, its streams fail, and the next requests go
	// to a new one. New requests avoid the connection after a twentieth
	// of it. 0 means 5 seconds.
	PingTimeout time.Duration

	mu    sync.Mutex
	conns map[string][]*conn // by host:port
}

var _ http.RoundTripper = (*Transport)(nil)

// RoundTrip sends req on a stream of a pooled connection and returns its
// response, whose Body reads from the stream; closing the Body before its
// end resets the stream. req's context bounds the whole exchange, body
// included.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	addr, err := target(req)
	if err != nil {
		closeReqBody(req)
		return nil, err
	}
	rb, err := newReqBody(req)
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	for try := 1; ; try++ {
		cc, err := t.getConn(ctx, addr)
		if err != nil {
			rb.close()
			return nil, err
		}
		resp, err := cc.roundTrip(ctx, req, rb)
		if err == nil {
			rb.done()
			return resp, nil
		}
		if try < maxTries && errors.Is(err, ErrUnprocessed) && ctx.Err() == nil && rb.rewind() {
			continue
		}
		if ctx.Err() != nil && !errors.Is(err, context.Cause(ctx)) {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		rb.done()
		rb.close()
		return nil, err
	}
}

// target returns the host:port of req's URL.
func target(req *http.Request) (string, error) {
	u := req.URL
	if u == nil {
		return "", errors.New("h2client: request has no URL")
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("h2client: unsupported protocol scheme %q", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("h2client: no host in request URL")
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "80"), nil
	}
	return u.Host, nil
}

func closeReqBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// CloseIdleConnections closes the connections without streams; the others
// take no new streams and close when their last stream ends.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	all := t.conns
	t.conns = nil
	t.mu.Unlock()
	for _, cs := range all {
		for _, cc := range cs {
			cc.closeWhenIdle()
		}
	}
}

// getConn returns a connection to addr with a stream slot reserved for
// the caller: a pooled one with a free slot, or a new one (dialed once
// for all callers that find no other).
func (t *Transport) getConn(ctx context.Context, addr string) (*conn, error) {
	t.mu.Lock()
	var cc *conn
	cs := t.conns[addr]
	for _, c := range cs {
		if c.reserve() {
			cc = c
			break
		}
	}
	if cc == nil {
		cc = newConn(t, addr)
		if t.conns == nil {
			t.conns = map[string][]*conn{}
		}
		t.conns[addr] = append(cs, cc)
		go cc.dial(context.WithoutCancel(ctx))
	}
	t.mu.Unlock()
	select {
	case <-cc.ready:
	default:
		select {
		case <-cc.ready:
		case <-ctx.Done():
			cc.unreserve()
			return nil, context.Cause(ctx)
		}
	}
	if cc.dialErr != nil {
		return nil, cc.dialErr
	}
	return cc, nil
}

// removeConn drops cc from the pool.
func (t *Transport) removeConn(cc *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cs := t.conns[cc.addr]
	for i, c := range cs {
		if c == cc {
			copy(cs[i:], cs[i+1:])
			cs[len(cs)-1] = nil
			cs = cs[:len(cs)-1]
			break
		}
	}
	if len(cs) == 0 {
		delete(t.conns, cc.addr)
	} else {
		t.conns[cc.addr] = cs
	}
}

func (t *Transport) pingTimeout() time.Duration {
	if t.PingTimeout > 0 {
		return t.PingTimeout
	}
	return defaultPingTimeout
}

func (t *Transport) maxHeaderBytes() uint32 {
	n := t.MaxResponseHeaderBytes
	if n <= 0 {
		n = defaultMaxHeadBytes
	}
	return uint32(min(n, 1<<31-1))
}

func (t *Transport) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if t.DialContext != nil {
		return t.DialContext
	}
	d := &net.Dialer{Timeout: 30 * time.Second}
	return d.DialContext
}

// reqBody is a request's body across the tries of a RoundTrip.
type reqBody struct {
	body    io.ReadCloser // nil: none
	cl      int64         // its length; -1 unknown
	small   *[]byte       // the whole body, read ahead (up to smallBody, all of it at hand)
	trailer http.Header
	getBody func() (io.ReadCloser, error)

	// started is set, under the connection's lock, before a body writer
	// first reads body: from then on it cannot be sent again as it is.
	started atomic.Bool
	// writing: a body writer took small, which is then never reused.
	writing atomic.Bool
	once    sync.Once // closes body
}

var smallBufs = sync.Pool{New: func() any { b := make([]byte, 0, smallBody+1); return &b }}

// newReqBody takes req's body; a small one of known length, all of it at
// hand, is read at once. One still arriving is not read ahead: the
// HEADERS go first.
func newReqBody(req *http.Request) (*reqBody, error) {
	rb := &reqBody{body: req.Body, cl: req.ContentLength, trailer: req.Trailer, getBody: req.GetBody}
	if rb.body == http.NoBody {
		rb.body = nil
	}
	switch {
	case rb.body == nil:
		rb.cl = 0
	case rb.cl == 0:
		rb.cl = -1 // a Body with ContentLength 0 is of unknown length
	}
	if rb.body == nil || len(rb.trailer) > 0 || rb.cl > smallBody || !inmem.Whole(rb.body) {
		return rb, nil
	}
	bp := smallBufs.Get().(*[]byte)
	if rb.cl < 0 {
		// A body of unknown length all at hand, as a gRPC call's
		// usually is once its END_STREAM came: read up to smallBody of
		// it, and send it with the HEADERS when that is all of it. The
		// request still declares no length.
		if err := rb.readUnknown(bp); err != nil {
			return nil, err
		}
		return rb, nil
	}
	b := (*bp)[:rb.cl]
	_, err := io.ReadFull(rb.body, b)
	rb.body.Close()
	if err != nil {
		smallBufs.Put(bp)
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			err = fmt.Errorf("h2client: request body shorter than its ContentLength %d", rb.cl)
		}
		return nil, err
	}
	*bp = b
	rb.small = bp
	rb.body = nil
	return rb, nil
}

// readUnknown reads a body of unknown length that is all at hand into bp,
// which becomes rb.small when it holds all of it. A longer body is sent
// by a body writer as usual, what was read first.
func (rb *reqBody) readUnknown(bp *[]byte) error {
	b := (*bp)[:smallBody+1]
	n, err := io.ReadFull(rb.body, b)
	switch err {
	case nil:
		// More than smallBody: the writer sends what was read, then the
		// rest.
		head := append([]byte(nil), b...)
		smallBufs.Put(bp)
		rb.body = readCloser{io.MultiReader(bytes.NewReader(head), rb.body), rb.body}
		return nil
	case io.EOF, io.ErrUnexpectedEOF:
		rb.body.Close()
		*bp = b[:n]
		rb.small = bp
		rb.body = nil
		return nil
	}
	smallBufs.Put(bp)
	rb.body.Close()
	return err
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// empty reports whether there is no body at all.
func (rb *reqBody) empty() bool { return rb.body == nil && rb.small == nil }

// rewind readies the body for another try: true when it was not read, or
// was read ahead, or GetBody gives it anew.
func (rb *reqBody) rewind() bool {
	if rb.body == nil || !rb.started.Load() {
		return true
	}
	if rb.getBody == nil {
		return false
	}
	b, err := rb.getBody()
	if err != nil {
		return false
	}
	rb.body = b
	rb.once = sync.Once{}
	rb.started.Store(false)
	return true
}

// done returns a read-ahead body's buffer once no writer uses it.
func (rb *reqBody) done() {
	if rb.small != nil && !rb.writing.Load() {
		smallBufs.Put(rb.small)
		rb.small = nil
	}
}

func (rb *reqBody) close() {
	if rb.body != nil {
		rb.once.Do(func() { rb.body.Close() })
	}
}

package h1client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
)

// Defaults of the Transport's zero fields.
const (
	defaultMaxIdle      = 2 // net/http's DefaultMaxIdleConnsPerHost
	defaultMaxHeadBytes = 1 << 20
	defaultBufferSize   = 16 << 10
)

// peekAfter is how long a connection must have been idle for its reuse
// to be preceded by a peek (alive). A busy proxy reuses its connections
// within milliseconds, and the recv(2) would cost every request about 4 %
// of its CPU; a FIN that comes sooner is handled by the retry of a stale
// connection, and bytes sent unasked in the same segment as an answer
// are found in the read buffer (release).
var peekAfter = 100 * time.Millisecond // a variable for tests

// Transport is an http.RoundTripper for HTTP/1.1 over TCP (http URLs) or
// TLS (https URLs). Its zero value dials with a net.Dialer and keeps two
// idle connections per address. It is safe for concurrent use; change its
// fields only before the first RoundTrip.
type Transport struct {
	// DialContext opens connections; nil means a zero net.Dialer's.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSClientConfig is used for https URLs; nil means the zero config.
	// A config without ServerName gets the URL's host name.
	TLSClientConfig *tls.Config
	// TLSHandshakeTimeout bounds the handshake; 0 means no limit but the
	// request's context.
	TLSHandshakeTimeout time.Duration
	// MaxIdleConnsPerHost bounds the idle connections kept per address;
	// 0 means 2.
	MaxIdleConnsPerHost int
	// IdleConnTimeout closes connections idle this long; 0 means never.
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response head; 0 means 1 MiB.
	MaxResponseHeaderBytes int64
	// ExpectContinueTimeout is how long a request with
	// "Expect: 100-continue" waits for the 100 before sending its body
	// anyway; 0 sends it at once.
	ExpectContinueTimeout time.Duration
	// ReadBufferSize and WriteBufferSize are each connection's buffers;
	// 0 means 16 KiB.
	ReadBufferSize, WriteBufferSize int

	mu      sync.Mutex
	idle    map[connKey][]*conn // most recently used last
	sweeper *time.Timer         // armed while idle connections may expire
}

var _ http.RoundTripper = (*Transport)(nil)

type connKey struct {
	tls  bool
	addr string // host:port
}

// RoundTrip sends req and returns its response, whose Body reads from the
// connection; closing it, or reading it to its end, ends the use of the
// connection. req's context bounds the whole exchange, body included.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	key, host, err := target(req)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	ctx := req.Context()
	for try := 0; ; try++ {
		c, err := t.getConn(ctx, key, host)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := c.roundTrip(ctx, req)
		if err == nil {
			return resp, nil
		}
		var se *staleError
		if try == 0 && errors.As(err, &se) && bodyless(req) && ctx.Err() == nil {
			continue // the upstream closed the idle connection: once more on a new one
		}
		return nil, err
	}
}

// CloseIdleConnections closes the idle connections; connections in use
// are kept and pooled when their response ends.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.nc.Close()
		}
	}
}

// target returns the pool key and TLS host name of req's URL.
func target(req *http.Request) (connKey, string, error) {
	u := req.URL
	if u == nil {
		return connKey{}, "", errors.New("h1client: request has no URL")
	}
	var k connKey
	port := "80"
	switch u.Scheme {
	case "http":
	case "https":
		k.tls, port = true, "443"
	default:
		return connKey{}, "", fmt.Errorf("h1client: unsupported protocol scheme %q", u.Scheme)
	}
	if u.Host == "" {
		return connKey{}, "", errors.New("h1client: no host in request URL")
	}
	host := u.Hostname()
	k.addr = u.Host
	if u.Port() == "" {
		k.addr = net.JoinHostPort(host, port)
	}
	return k, host, nil
}

func bodyless(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// getConn returns an idle connection to key that is still alive, or
// dials a new one.
func (t *Transport) getConn(ctx context.Context, key connKey, host string) (*conn, error) {
	var now time.Time
	for {
		t.mu.Lock()
		cs := t.idle[key]
		if len(cs) == 0 {
			t.mu.Unlock()
			break
		}
		c := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		t.idle[key] = cs[:len(cs)-1]
		t.mu.Unlock()
		if now.IsZero() {
			now = time.Now()
		}
		idle := now.Sub(c.idleAt)
		if t.IdleConnTimeout > 0 && idle >= t.IdleConnTimeout || idle >= peekAfter && !c.alive() {
			c.nc.Close()
			continue
		}
		c.reused = true
		return c, nil
	}
	return t.dial(ctx, key, host)
}

func (t *Transport) dial(ctx context.Context, key connKey, host string) (*conn, error) {
	dial := t.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	c := &conn{t: t, key: key, nc: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	if key.tls {
		if err := c.handshake(ctx, host); err != nil {
			nc.Close()
			return nil, err
		}
	}
	c.br = bufio.NewReaderSize(c.nc, orDefault(t.ReadBufferSize, defaultBufferSize))
	c.bw = bufio.NewWriterSize(c.nc, orDefault(t.WriteBufferSize, defaultBufferSize))
	return c, nil
}

func (c *conn) handshake(ctx context.Context, host string) error {
	cfg := c.t.TLSClientConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(c.nc, cfg)
	if d := c.t.TLSHandshakeTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	st := tc.ConnectionState()
	c.nc, c.tls = tc, &st
	return nil
}

// putIdle pools c after a complete exchange, or closes it when the pool
// for its address is full.
func (t *Transport) putIdle(c *conn) {
	c.idleAt = time.Now()
	c.reused = false
	max := orDefault(t.MaxIdleConnsPerHost, defaultMaxIdle)
	t.mu.Lock()
	if t.idle == nil {
		t.idle = map[connKey][]*conn{}
	}
	cs := t.idle[c.key]
	if len(cs) >= max {
		t.mu.Unlock()
		c.nc.Close()
		return
	}
	t.idle[c.key] = append(cs, c)
	if t.IdleConnTimeout > 0 && t.sweeper == nil {
		t.sweeper = time.AfterFunc(t.IdleConnTimeout, t.sweep)
	}
	t.mu.Unlock()
}

// sweep closes the connections idle past IdleConnTimeout, and runs again
// while any remain pooled.
func (t *Transport) sweep() {
	now := time.Now()
	var expired []*conn
	t.mu.Lock()
	oldest := now
	for k, cs := range t.idle {
		keep := cs[:0]
		for _, c := range cs {
			if now.Sub(c.idleAt) >= t.IdleConnTimeout {
				expired = append(expired, c)
				continue
			}
			keep = append(keep, c)
			if c.idleAt.Before(oldest) {
				oldest = c.idleAt
			}
		}
		clear(cs[len(keep):])
		if len(keep) == 0 {
			delete(t.idle, k)
		} else {
			t.idle[k] = keep
		}
	}
	t.sweeper = nil
	if len(t.idle) > 0 {
		t.sweeper = time.AfterFunc(oldest.Add(t.IdleConnTimeout).Sub(now), t.sweep)
	}
	t.mu.Unlock()
	for _, c := range expired {
		c.nc.Close()
	}
}

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// conn is one upstream connection. It is used by one exchange at a time.
type conn struct {
	t      *Transport
	key    connKey
	nc     net.Conn
	raw    syscall.RawConn // the TCP socket, for alive; nil if not one
	tls    *tls.ConnectionState
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	reused bool // taken from the pool for this exchange

	mu      sync.Mutex // orders deadline changes against abort
	aborted bool
}

// aLongTimeAgo is a deadline that has passed: setting it ends blocked
// reads and writes at once.
var aLongTimeAgo = time.Unix(1, 0)

// abort ends the exchange in progress: the request's context is done.
func (c *conn) abort() {
	c.mu.Lock()
	c.aborted = true
	c.nc.SetDeadline(aLongTimeAgo)
	c.mu.Unlock()
}

func (c *conn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	if !c.aborted {
		c.nc.SetReadDeadline(t)
	}
	c.mu.Unlock()
}

// alive reports whether an idle connection looks usable: a non-blocking
// peek finds neither the upstream's FIN nor unsolicited bytes (on TLS,
// bytes may be a session ticket, so only the FIN counts).
func (c *conn) alive() bool {
	if c.raw == nil {
		return true
	}
	var n int
	var err error
	cerr := c.raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	switch {
	case cerr != nil:
		return false
	case err == syscall.EAGAIN:
		return true
	case err != nil || n == 0:
		return false
	}
	return c.tls != nil
}

// staleError is a failure on a reused connection before any byte of an
// answer arrived: most likely the upstream closed it while it was idle.
type staleError struct{ err error }

func (e *staleError) Error() string { return e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

// bodyWrite is a request body being written by its own goroutine.
type bodyWrite struct {
	done chan error
}

// roundTrip makes the exchange of req on c.
func (c *conn) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(ctx, c.abort)
	ex := &exchange{c: c, stop: stop, req: req}
	resp, err := ex.run(ctx)
	if err != nil {
		stop()
		c.nc.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, err
	}
	return resp, nil
}

// exchange is one request and its response on a connection.
type exchange struct {
	c    *conn
	stop func() bool // the AfterFunc of the request's context
	req  *http.Request
	bw   *bodyWrite // the body's writer goroutine, if any
	// keepAlive is false when the connection must not serve another
	// exchange: the request or the response said close, a body was left
	// unsent, or an answer came before the request was all written.
	keepAlive bool
	got       bool // bytes of an answer arrived
}

func (ex *exchange) run(ctx context.Context) (*http.Response, error) {
	c, req := ex.c, ex.req
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	cl := req.ContentLength
	if body != nil && cl == 0 {
		body.Close()
		body = nil
	}
	if body == nil {
		cl = 0
	}
	ex.keepAlive = !req.Close
	if err := writeHead(c.bw, req, cl, body != nil && cl < 0); err != nil {
		if body != nil {
			body.Close()
		}
		return nil, err
	}
	expect := body != nil && httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue")
	switch {
	case body == nil:
		if err := c.bw.Flush(); err != nil {
			return nil, ex.stale(err)
		}
	case !expect && cl > 0 && cl <= int64(c.bw.Available()) && inmem.Whole(body):
		// The hot path: head and body, all of it at hand, in one write.
		// A body still arriving is not read ahead: its head goes first.
		err := writeBody(c.bw, body, cl, req.Trailer)
		body.Close()
		if err == nil {
			err = c.bw.Flush()
		}
		if err != nil {
			return nil, ex.stale(err)
		}
	default:
		if err := c.bw.Flush(); err != nil {
			body.Close()
			return nil, ex.stale(err)
		}
		if expect && c.t.ExpectContinueTimeout > 0 {
			resp, err := ex.awaitContinue(ctx)
			if resp != nil || err != nil {
				body.Close()
				ex.keepAlive = false // the body was never sent
				return resp, err
			}
		}
		ex.bw = &bodyWrite{done: make(chan error, 1)}
		go func() {
			err := writeBody(c.bw, body, cl, req.Trailer)
			body.Close()
			if err == nil {
				err = c.bw.Flush()
			}
			ex.bw.done <- err
			if err != nil {
				// The upstream waits for the rest of a body that will
				// not come: end the exchange, as net/http does.
				c.nc.Close()
			}
		}()
	}
	resp, err := ex.readResponse(ctx)
	if err != nil {
		if ex.bw != nil {
			if werr := ex.writeErr(); werr != nil && !ex.got {
				// The write failed first: it says more than the read.
				return nil, ex.stale(werr)
			}
		}
		return nil, ex.stale(err)
	}
	return resp, nil
}

// stale marks err a staleError when it happened on a reused connection
// before any byte of an answer.
func (ex *exchange) stale(err error) error {
	if ex.c.reused && !ex.got && ex.req.Context().Err() == nil {
		return &staleError{err}
	}
	return err
}

// writeErr is the error of the body's writer if it has ended, after the
// read of the answer failed. It never waits: the writer may be blocked
// reading the app's body, and ends when the connection (closed by the
// caller) or that body fails.
func (ex *exchange) writeErr() error {
	select {
	case err := <-ex.bw.done:
		return err
	default:
		return nil
	}
}

// awaitContinue waits up to ExpectContinueTimeout for the upstream's
// answer to a request with "Expect: 100-continue": nil, nil for a 100 or
// no answer in time (send the body), or the final response that made the
// body unnecessary.
func (ex *exchange) awaitContinue(ctx context.Context) (*http.Response, error) {
	c := ex.c
	c.setReadDeadline(time.Now().Add(c.t.ExpectContinueTimeout))
	_, err := c.br.Peek(1)
	c.setReadDeadline(time.Time{})
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
		return nil, nil // no answer in time: send the body
	}
	if err != nil {
		return nil, ex.stale(err)
	}
	ex.got = true
	h, err := readHead(c.br, ex.maxHead())
	if err != nil {
		return nil, err
	}
	if h.code == http.StatusContinue {
		return nil, nil
	}
	// Another 1xx is passed on; then the final answer follows.
	ex.keepAlive = false
	return ex.response(ctx, h)
}

func (ex *exchange) maxHead() int64 {
	if n := ex.c.t.MaxResponseHeaderBytes; n > 0 {
		return n
	}
	return defaultMaxHeadBytes
}

// errClosedBody is a read of a response body after Close.
var errClosedBody = errors.New("h1client: read on closed response body")

// body is a response body read from the connection. state moves from
// reading to done (read to its end: the connection was released) or
// closed (Close before the end: the connection was closed).
type body struct {
	ex      *exchange
	br      *bufio.Reader
	state   atomic.Int32
	remain  int64 // Content-Length bytes left; -1 for chunked or until close
	chunked bool
	chunk   int64 // bytes left in the current chunk
	// untilClose: the body ends when the upstream closes the connection.
	untilClose bool
	resp       *http.Response // its Trailer is filled at the end
	err        error          // sticky read error
}

const (
	bodyReading = iota
	bodyDone
	bodyClosed
)

func (b *body) Read(p []byte) (int, error) {
	switch b.state.Load() {
	case bodyDone:
		return 0, io.EOF
	case bodyClosed:
		return 0, errClosedBody
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	switch {
	case b.chunked:
		n, err = b.readChunked(p)
	case b.untilClose:
		n, err = b.br.Read(p)
		if err == io.EOF {
			b.finish(false)
			return n, io.EOF
		}
	default:
		if int64(len(p)) > b.remain {
			p = p[:b.remain]
		}
		n, err = b.br.Read(p)
		b.remain -= int64(n)
		if b.remain == 0 {
			b.finish(true)
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil && err != io.EOF {
		b.err = err
		if b.state.CompareAndSwap(bodyReading, bodyClosed) {
			b.ex.release(false)
		}
	}
	return n, err
}

// Close ends the body. Unread bytes that are already buffered are
// skipped and the connection reused; otherwise it is closed.
func (b *body) Close() error {
	if b.state.Load() != bodyReading {
		return nil
	}
	if !b.chunked && !b.untilClose && b.err == nil && b.remain <= int64(b.br.Buffered()) {
		b.br.Discard(int(b.remain))
		b.remain = 0
		b.finish(true)
		return nil
	}
	if b.state.CompareAndSwap(bodyReading, bodyClosed) {
		b.ex.release(false)
	}
	return nil
}

// finish ends a body read to its end.
func (b *body) finish(reusable bool) {
	if b.state.CompareAndSwap(bodyReading, bodyDone) {
		b.ex.release(reusable)
	}
}

// release ends the exchange: the connection goes back to the pool when
// reusable and nothing forbids it, else it is closed.
func (ex *exchange) release(reusable bool) {
	c := ex.c
	if !ex.stop() {
		reusable = false // the context ended: the deadline is spent
	}
	if ex.bw != nil {
		select {
		case err := <-ex.bw.done:
			if err != nil {
				reusable = false
			}
		default:
			// Still writing: the answer came early. The writer ends
			// once the connection is closed below, or the app's body
			// fails; it is never waited for, as it may be blocked
			// reading the app.
			reusable = false
		}
	}
	if reusable && ex.keepAlive && c.br.Buffered() == 0 {
		// (Bytes buffered past the answer came unasked: never an answer.)
		c.t.putIdle(c)
		return
	}
	c.nc.Close()
}

// upgraded is a 101 response's Body: the connection itself.
type upgraded struct {
	ex     *exchange
	closed atomic.Bool
}

func (u *upgraded) Read(p []byte) (int, error)  { return u.ex.c.br.Read(p) }
func (u *upgraded) Write(p []byte) (int, error) { return u.ex.c.nc.Write(p) }
func (u *upgraded) Close() error {
	if u.closed.Swap(true) {
		return nil
	}
	u.ex.stop()
	return u.ex.c.nc.Close()
}

// CloseWrite half-closes a TCP connection, as a tunnel's copy needs.
func (u *upgraded) CloseWrite() error {
	if cw, ok := u.ex.c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

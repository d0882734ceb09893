package h1guard

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
)

// Verdicts returned by Conn.Next. They are sentinels: compare with errors.Is.
var (
	// ErrContentLengthAndTransferEncoding reports a request head carrying
	// both Content-Length and Transfer-Encoding.
	ErrContentLengthAndTransferEncoding = errors.New("h1guard: request has both Content-Length and Transfer-Encoding")

	// ErrMultipleTransferEncoding reports more than one Transfer-Encoding
	// header field.
	ErrMultipleTransferEncoding = errors.New("h1guard: request has more than one Transfer-Encoding header field")

	// ErrUnsupportedTransferEncoding reports a Transfer-Encoding value other
	// than exactly "chunked" (compared case-insensitively after trimming
	// spaces and tabs), such as "chunked, identity" or "xchunked".
	ErrUnsupportedTransferEncoding = errors.New(`h1guard: Transfer-Encoding is not exactly "chunked"`)

	// ErrTransferEncodingHTTP10 reports Transfer-Encoding in an HTTP/1.0
	// request. Go's server ignores it and frames the body by Content-Length;
	// RFC 9112, section 6.1, requires treating the framing as faulty.
	ErrTransferEncodingHTTP10 = errors.New("h1guard: Transfer-Encoding in an HTTP/1.0 request")

	// ErrInvalidContentLength reports a Content-Length value that is empty,
	// contains anything but ASCII digits (after trimming spaces and tabs),
	// or exceeds 1<<63-1.
	ErrInvalidContentLength = errors.New("h1guard: invalid Content-Length value")

	// ErrConflictingContentLength reports several Content-Length header
	// fields whose values differ.
	ErrConflictingContentLength = errors.New("h1guard: multiple differing Content-Length values")

	// ErrSpaceBeforeColon reports whitespace between a header field name and
	// its colon, as in "Transfer-Encoding : chunked".
	ErrSpaceBeforeColon = errors.New("h1guard: whitespace between header field name and colon")

	// ErrObsFold reports obsolete line folding: a header line that starts
	// with a space or a tab.
	ErrObsFold = errors.New("h1guard: obsolete line folding in request head")

	// ErrMalformedHeader reports a header line without a colon or with an
	// empty field name.
	ErrMalformedHeader = errors.New("h1guard: malformed header line")

	// ErrMalformedRequestLine reports a request line that Go's server would
	// not accept, or bytes that are not HTTP/1.x at all (for example a
	// tunnel after an upgrade).
	ErrMalformedRequestLine = errors.New("h1guard: malformed request line")

	// ErrMalformedChunked is returned for the requests that follow a chunked
	// body that Go's chunked reader rejects (bad chunk-size line, missing
	// CRLF after chunk data, oversize trailer section, ...). After such a
	// body the position of the next request is unknown.
	ErrMalformedChunked = errors.New("h1guard: malformed chunked request body")

	// ErrNoConn is returned by Next called on a nil *Conn, which is what
	// FromContext returns when the request did not arrive on a connection
	// accepted by Listen and registered by ConnContext.
	ErrNoConn = errors.New("h1guard: request context has no *h1guard.Conn (missing Listen or ConnContext?)")
)

// headSlack is added to the server's header limit before the Conn gives up
// on a head. Go's server allows MaxHeaderBytes+4096 bytes to be read for a
// head, on top of up to 4096 bytes its bufio.Reader may already hold, so a
// head larger than MaxHeaderBytes+headSlack is always rejected by the server
// with 431 and never reaches a handler: giving up on it (and answering nil
// from then on) cannot let an unjudged request through.
const headSlack = 16 << 10

// Listen wraps l; conns it accepts are *Conn.
func Listen(l net.Listener) net.Listener {
	return listener{l}
}

type listener struct {
	net.Listener
}

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newConn(c), nil
}

// Conn is a net.Conn that follows the HTTP/1.1 request framing of the bytes
// read through it and keeps one verdict per request head. All net.Conn
// methods but Read are those of the wrapped connection.
//
// Read and Next may run concurrently (the server's reading goroutine and a
// handler). Read itself must not be called concurrently with another Read,
// as no stream parser can follow bytes delivered out of order; net/http
// never does that.
type Conn struct {
	net.Conn

	// verdicts counts the queued nil verdicts not yet returned by Next,
	// with offBit set once the parser has stopped: then, the queue
	// exhausted, Next returns p.err (nil after a pass-through stop, the
	// error after an error verdict), which the parser no longer changes.
	verdicts atomic.Int64

	// p is owned by the reading goroutine.
	p parser
}

// offBit marks, in Conn.verdicts, a parser that has stopped.
const offBit = 1 << 62

func newConn(c net.Conn) *Conn {
	gc := &Conn{Conn: c}
	gc.p.setLimit(http.DefaultMaxHeaderBytes + headSlack)
	gc.p.skipOptionsStar = true
	return gc
}

// Read reads from the wrapped connection and feeds the bytes read to the
// framing parser. It never alters or delays them, and copies only a line
// split across Reads.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.Feed(b[:n])
	}
	return n, err
}

// Feed judges b as though Read had just returned it. It is for a server
// that reads the wrapped connection (NetConn) itself rather than through
// Read: internal/h1server does, to wait for a request without holding a
// buffer. The bytes of the stream must reach the Conn once each and in
// order, through Read or Feed, from one goroutine at a time.
func (c *Conn) Feed(b []byte) {
	if c.p.st == stOff {
		return
	}
	c.p.feed(b)
	if h := c.p.heads; h > 0 {
		c.p.heads = 0
		c.verdicts.Add(int64(h))
	}
	if c.p.st == stOff {
		c.verdicts.Or(offBit)
	}
}

// NetConn returns the wrapped connection, for a server that reads it
// itself and hands the bytes to Feed.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Next pops the verdict for the next request head read on this connection,
// in order: nil when the framing was unambiguous, else one of the Err values
// of this package saying what was wrong. The handler calls it exactly once
// per request. If no head has been parsed (should not happen), it returns
// nil. After an error verdict every later call returns an error as well;
// after the Conn stopped tracking (HTTP/2 preface, oversize head) every
// later call returns nil. Next on a nil *Conn returns ErrNoConn.
//
// Next is safe to call concurrently with Read.
func (c *Conn) Next() error {
	if c == nil {
		return ErrNoConn
	}
	// The verdicts form a run of nils, possibly ended by one final verdict:
	// a counter is the whole queue.
	for {
		v := c.verdicts.Load()
		if v&^offBit > 0 {
			if c.verdicts.CompareAndSwap(v, v-1) {
				return nil
			}
			continue
		}
		if v&offBit != 0 {
			return c.p.err
		}
		return nil
	}
}

// CloseWrite shuts down the writing side of the wrapped connection if it
// supports that (as *net.TCPConn does), so that the server can still
// half-close before hanging up; otherwise it returns errors.ErrUnsupported.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// ReadFrom copies r to the wrapped connection, keeping its io.ReaderFrom
// fast paths (sendfile, splice) for responses. Only the read side of the
// connection is watched, so writes need no inspection.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

type connKey struct{}

// ConnContext is for http.Server.ConnContext: it stores the *Conn in ctx (if
// c is one). It also reads the *http.Server from ctx (http.ServerContextKey)
// to learn its MaxHeaderBytes and whether it answers "OPTIONS *" requests
// itself, so that the verdict queue stays aligned with the requests the
// handler sees. It must run before the first Read of c, as http.Server
// arranges. To combine it with another ConnContext function, call both.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	gc, ok := c.(*Conn)
	if !ok {
		return ctx
	}
	if srv, _ := ctx.Value(http.ServerContextKey).(*http.Server); srv != nil {
		limit := srv.MaxHeaderBytes
		if limit <= 0 {
			limit = http.DefaultMaxHeaderBytes
		}
		gc.p.setLimit(limit + headSlack)
		gc.p.skipOptionsStar = !srv.DisableGeneralOptionsHandler
	}
	return context.WithValue(ctx, connKey{}, gc)
}

// FromContext returns the *Conn stored by ConnContext, or nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

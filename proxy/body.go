package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
	"github.com/sidecar-proxy/sidecar/policy"
)

// replayBody gives each attempt the request body. A body of known length up
// to buffer_limit is buffered and replayed; a larger one streams and can be
// retried only after a connect_error that read none of it. A body of
// unknown length (chunked, or an HTTP/2 stream such as a gRPC call) is
// never read ahead, as its sender may wait for answers between messages:
// it streams through a teeBody, which keeps up to buffer_limit for replay.
// The server closes the app's body when the handler returns.
type replayBody struct {
	orig    io.ReadCloser // nil when the request has no body
	buf     []byte        // the whole body, when buffered
	stream  *countingBody // the body streamed with a byte count, when retries are on
	tee     *teeBody      // a body of unknown length, when retries are on
	noRetry bool
}

func newReplayBody(req *http.Request, p *routePolicy, grpc bool) replayBody {
	b := replayBody{orig: req.Body}
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		b.orig = nil
		return b
	case p.attempts <= 1 && p.hedge == nil:
		b.noRetry = true // one attempt: the body streams as it is
		return b
	case grpc || req.ContentLength < 0:
		b.tee = &teeBody{orig: req.Body, limit: p.bufferLimit}
		b.tee.cond.L = &b.tee.mu
		return b
	}
	if req.ContentLength <= p.bufferLimit {
		limit := p.bufferLimit
		if req.ContentLength >= 0 {
			limit = req.ContentLength
		}
		buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
		switch {
		case err != nil:
			// The app's body broke: send what came, then the error.
			b.stream = &countingBody{r: io.MultiReader(bytes.NewReader(buf), errReader{err})}
			b.noRetry = true
		case int64(len(buf)) <= limit:
			b.buf = buf
		default:
			b.stream = &countingBody{r: io.MultiReader(bytes.NewReader(buf), req.Body)}
			b.noRetry = true // read past the limit: it cannot be replayed
		}
		return b
	}
	b.stream = &countingBody{r: req.Body}
	return b
}

// next returns the body for the next attempt.
func (b *replayBody) next() io.ReadCloser {
	switch {
	case b.orig == nil:
		return nil
	case b.buf != nil:
		return inmem.NewBody(b.buf)
	case b.tee != nil:
		return b.tee.next()
	case b.stream == nil:
		return b.orig
	}
	return b.stream
}

// hedge returns the body for an attempt sent while earlier ones may
// still be sending theirs (a hedge): the whole body, read from the
// buffer, which no attempt's reads disturb. It reports false while the
// body is not whole at hand: still arriving, past buffer_limit, or
// streamed.
func (b *replayBody) hedge() (io.ReadCloser, bool) {
	switch {
	case b.orig == nil:
		return nil, true
	case b.buf != nil:
		return inmem.NewBody(b.buf), true
	case b.tee != nil:
		if buf, ok := b.tee.whole(); ok {
			return inmem.NewBody(buf), true
		}
	}
	return nil, false
}

// replayable reports whether the body can be sent again after outcome.
func (b *replayBody) replayable(o policy.Outcome) bool {
	switch {
	case b.orig == nil || b.buf != nil:
		return true
	case b.tee != nil:
		return b.tee.replayable()
	case b.noRetry:
		return false
	}
	// A streamed body is intact only if nothing was read from it, which a
	// connect_error guarantees: the connection never existed.
	return o == policy.ConnectError && b.stream.n.Load() == 0
}

// countingBody streams a body, counting bytes read, and ignores Close so
// the transport cannot close it under a later attempt.
type countingBody struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingBody) Close() error { return nil }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// errStaleAttempt ends reads of the request body by an attempt that a
// retry has replaced.
var errStaleAttempt = errors.New("request body: attempt superseded by a retry")

// teeBody streams a request body to the current attempt and keeps what it
// read, up to limit bytes, so that the next attempt can replay it and then
// go on reading. Only one reader reads the original at a time, outside the
// lock, into a scratch buffer; the bytes land in buf, where every reader
// of the current attempt finds them, so a superseded attempt that was
// blocked in a read loses nothing for its successor. Past the limit, no
// replay is possible and consumed bytes are dropped.
type teeBody struct {
	orig  io.Reader
	limit int64

	mu      sync.Mutex
	cond    sync.Cond // L is &mu; signalled when a read of orig ends
	buf     []byte    // bytes of orig from offset base on
	base    int64     // > 0 once consumed bytes were dropped
	total   int64     // bytes read from orig
	err     error     // orig's error, io.EOF included; sticky
	reading bool      // a reader is in orig.Read
	gen     int64     // the current attempt's reader
	scratch *[teeScratchSize]byte
}

// teeScratchSize is what one read of a teeBody's original takes at most.
const teeScratchSize = 16 << 10

// teeScratch recycles the teeBodies' scratch buffers: a body read to its
// end (every unary gRPC call's) returns its buffer at once.
var teeScratch = sync.Pool{New: func() any { return new([teeScratchSize]byte) }}

// next returns a reader of the whole body for the next attempt; earlier
// readers fail from now on.
func (t *teeBody) next() io.ReadCloser {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.cond.Broadcast()
	return &teeReader{t: t, gen: t.gen}
}

// replayable reports whether every byte read so far is kept and the
// original has not failed.
func (t *teeBody) replayable() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base == 0 && t.total <= t.limit && (t.err == nil || t.err == io.EOF)
}

// whole returns the whole body once it was read to its end within the
// limit. The bytes are never changed after that, so any number of
// readers may share them.
func (t *teeBody) whole() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != io.EOF || t.base != 0 || t.total > t.limit {
		return nil, false
	}
	return t.buf, true
}

// teeReader is one attempt's view of a teeBody.
type teeReader struct {
	t   *teeBody
	gen int64
	pos int64 // offset in the body
}

func (r *teeReader) Read(p []byte) (int, error) {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		switch {
		case r.gen != t.gen:
			return 0, errStaleAttempt
		case r.pos < t.base+int64(len(t.buf)):
			n := copy(p, t.buf[r.pos-t.base:])
			r.pos += int64(n)
			if t.total > t.limit && r.pos == t.base+int64(len(t.buf)) {
				// No replay is possible any more: drop what was consumed.
				t.base, t.buf = r.pos, t.buf[:0]
			}
			return n, nil
		case t.err != nil:
			return 0, t.err
		case t.reading:
			t.cond.Wait()
			continue
		}
		if t.scratch == nil {
			t.scratch = teeScratch.Get().(*[teeScratchSize]byte)
		}
		t.reading = true
		t.mu.Unlock()
		n, err := t.orig.Read(t.scratch[:])
		t.mu.Lock()
		t.reading = false
		t.buf = append(t.buf, t.scratch[:n]...)
		t.total += int64(n)
		if err != nil {
			t.err = err
			// orig is not read again: the scratch buffer goes back.
			teeScratch.Put(t.scratch)
			t.scratch = nil
		}
		t.cond.Broadcast()
	}
}

// Close does nothing: the server closes the app's body.
func (r *teeReader) Close() error { return nil }

// Buffered reports whether the attempt's next read, and all of the rest,
// are served without waiting on the app: from the kept bytes, or from the
// app's body when it says so (internal/inmem). A gRPC call's body is
// read through a teeReader whenever retries are on, and an HTTP/2 client
// sends a whole one with the request's HEADERS.
func (r *teeReader) Buffered() (next, all bool) {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.gen != t.gen || t.err != nil {
		return true, true // a read fails or ends at once, or is served from buf
	}
	kept := r.pos < t.base+int64(len(t.buf))
	if t.reading {
		return kept, false
	}
	ob, ok := t.orig.(inmem.Buffered)
	if !ok {
		return kept, false
	}
	next, all = ob.Buffered()
	return kept || next, all
}

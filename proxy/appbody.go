package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
	"github.com/sidecar-proxy/sidecar/policy"
)

// appBody is the app's request body as the proxy reads it, wherever it
// reads it: buffered for replay, read by an upstream attempt, or read
// into the spool. It bounds every read with a read deadline on the app's
// connection: the route's overall deadline, and a pause of at most the
// listener's body_idle_timeout between two reads. A read that fails
// (deadline passed, malformed chunked framing, the connection broke) is
// recorded, so that the attempt loop blames the app, not the upstream
// (failure), and the blocked read that holds an attempt open returns.
type appBody struct {
	body     io.ReadCloser
	buf      bufferedBody            // body, when it tells what is buffered; or nil
	rc       http.ResponseController // a value: one allocation less per request
	idle     time.Duration           // 0: no pause bound
	deadline time.Time               // the route's overall deadline; zero: none
	err      atomic.Pointer[error]
	eof      atomic.Bool
	// closed is set by Close: a transport that gives up on an attempt
	// (the upstream reset the stream) closes the body under a read in
	// flight, and that read's error is not the app's.
	closed atomic.Bool
	// armed is set once a read deadline was set: the end of the body
	// clears it then.
	armed atomic.Bool
	// waiting counts reads in flight that wait on the app (not served
	// from the server's buffer): an attempt that times out meanwhile was
	// held up by the app, not the upstream (awaited).
	waiting atomic.Int32

	// mu orders deadline changes against finish: an upstream transport
	// may still read the body after the handler has returned, when the
	// app's writer must no longer be touched.
	mu   sync.Mutex
	done bool
}

// newAppBody wraps r.Body on a listener whose body_idle_timeout is idle.
// 0, or a gRPC call (whose streams may rightly pause), leaves no pause
// bound. It arms the first read deadline at once, so that a request
// refused before its body is read cannot hold its connection either: the
// server reads what is left of a body before it answers.
func newAppBody(w http.ResponseWriter, r *http.Request, idle time.Duration) *appBody {
	b := &appBody{body: r.Body, rc: *http.NewResponseController(w), idle: idle}
	b.buf, _ = r.Body.(bufferedBody)
	if isGRPC(r) {
		b.idle = 0
	}
	if b.idle > 0 && !b.allBuffered() {
		b.setReadDeadline(time.Now().Add(b.idle))
	}
	return b
}

// bufferedBody is a body that tells when its reads need no socket read:
// the app-facing servers'.
type bufferedBody = inmem.Buffered

// Buffered reports whether the body's next read, and all of it, are
// served without waiting on the app, for a client deciding whether to
// read it before sending the request's head (internal/inmem).
func (b *appBody) Buffered() (next, all bool) {
	if b.err.Load() != nil || b.eof.Load() {
		return true, true
	}
	if b.buf == nil {
		return false, false
	}
	return b.buf.Buffered()
}

// Buffered passes on the app's body's Buffered: ReverseProxy's wrapper
// hides it.
func (b *outBody) Buffered() (next, all bool) { return b.app.Buffered() }

// allBuffered reports whether the rest of the body is in the server's
// read buffer: no read of it can wait on the app, so none needs a
// deadline. Most small bodies arrive with their request's head.
func (b *appBody) allBuffered() bool {
	if b.buf == nil {
		return false
	}
	_, all := b.buf.Buffered()
	return all
}

// routed bounds the body's reads by rt's overall deadline, counted from
// now, as well.
func (b *appBody) routed(rt *Route, now time.Time) {
	if b == nil || rt.pol.timeout <= 0 {
		return
	}
	b.deadline = now.Add(rt.pol.timeout)
	if !b.allBuffered() {
		b.setReadDeadline(b.readDeadline())
	}
}

// finish ends the handler's use of the body: later reads no longer touch
// the app's connection.
func (b *appBody) finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

// setReadDeadline sets the read deadline of the app's connection, while
// the handler runs; a writer that cannot leaves reads unbounded.
func (b *appBody) setReadDeadline(t time.Time) {
	b.mu.Lock()
	if !b.done {
		_ = b.rc.SetReadDeadline(t)
		if !t.IsZero() {
			b.armed.Store(true)
		}
	}
	b.mu.Unlock()
}

// nextBuffered reports whether the next read is served from the server's
// read buffer.
func (b *appBody) nextBuffered() bool {
	if b.buf == nil {
		return false
	}
	next, _ := b.buf.Buffered()
	return next
}

func (b *appBody) Read(p []byte) (int, error) {
	if e := b.err.Load(); e != nil {
		return 0, *e
	}
	if b.eof.Load() {
		// The body is done. The server may have closed it meanwhile (it
		// does when the response starts with the body read to its end),
		// and a transport reads once more to check the end: that read
		// must see the end again, not "read on closed body", or the
		// transport drops the upstream connection mid-response.
		return 0, io.EOF
	}
	wait := !b.nextBuffered()
	if wait {
		if b.idle > 0 {
			// Each read may pause for idle; without it, the route's
			// deadline set by routed stays as it is.
			b.setReadDeadline(b.readDeadline())
		}
		b.waiting.Add(1)
		if b.closed.Load() {
			// Close may have missed this read (it looks at waiting
			// after it sets closed): it must not start.
			b.waiting.Add(-1)
			return 0, http.ErrBodyReadAfterClose
		}
	}
	n, err := b.body.Read(p)
	if wait {
		// After the failure is recorded below: settle relies on it.
		defer b.waiting.Add(-1)
	}
	switch {
	case err == io.EOF:
		if b.eof.CompareAndSwap(false, true) && b.armed.Load() {
			// The body is done; the connection's next reads (the server
			// watching for the app going away) must not time out.
			b.setReadDeadline(time.Time{})
		}
	case err != nil && !b.closed.Load():
		// The deadline stays in force: the connection is broken for
		// further requests, and the server must not wait on it.
		b.fail(err)
	}
	return n, err
}

// fail records err, the first failed read's. A function of its own: the
// pointer to err would otherwise move Read's err to the heap on every
// call.
func (b *appBody) fail(err error) {
	b.err.CompareAndSwap(nil, &err)
}

// Close closes the app's body. A read waiting on the app meanwhile (an
// attempt's body writer, its attempt over) holds the server's body until
// it returns: the read deadline, set to now, ends it at once, so that the
// handler's answer does not wait for the app's next bytes or the read's
// own deadline. Nothing reads the body after Close.
func (b *appBody) Close() error {
	b.closed.Store(true)
	if b.waiting.Load() > 0 {
		b.setReadDeadline(time.Now())
	}
	return b.body.Close()
}

// readDeadline is the deadline of the next read: now plus the idle bound,
// capped by the route's deadline; zero when neither applies.
func (b *appBody) readDeadline() time.Time {
	if b.idle <= 0 {
		return b.deadline
	}
	dl := time.Now().Add(b.idle)
	if !b.deadline.IsZero() && b.deadline.Before(dl) {
		return b.deadline
	}
	return dl
}

// failure is the outcome of a failed read of the body: request_timeout
// when the app paused past a deadline, bad_request when the body broke
// off or was malformed; OK when no read failed.
func (b *appBody) failure() policy.Outcome {
	if b == nil {
		return policy.OK
	}
	e := b.err.Load()
	switch {
	case e == nil:
		return policy.OK
	case errors.Is(*e, os.ErrDeadlineExceeded):
		return policy.RequestTimeout
	}
	return policy.BadRequest
}

// awaited reports whether a read of the body is waiting on the app: an
// attempt that times out meanwhile timed out on the app's upload.
func (b *appBody) awaited() bool {
	return b != nil && b.waiting.Load() > 0
}

// settle waits, for at most settleWait, for a read of the body in flight
// to return and record how it ended. The server cancels the request's
// context inside a read that fails (a deadline passed, the framing
// broke), before the read returns: an attempt loop that sees the
// cancellation first must not take the app for gone while the failure
// that explains it is about to be recorded.
func (b *appBody) settle() {
	if b == nil {
		return
	}
	for start := time.Now(); b.waiting.Load() > 0 && time.Since(start) < settleWait; {
		time.Sleep(50 * time.Microsecond)
	}
}

// settleWait bounds settle: a read that fails returns within
// microseconds; one still blocked is not a failed one.
const settleWait = 20 * time.Millisecond

// outBody is the outbound request's body on a route's ReverseProxy: the
// body ReverseProxy made of the app's, and the appBody within it, for the
// attempt loop (appBodyOf).
type outBody struct {
	io.ReadCloser
	app *appBody
}

// appBodyOf returns the appBody of an outbound request's body, or nil.
func appBodyOf(body io.ReadCloser) *appBody {
	switch b := body.(type) {
	case *appBody:
		return b // a delivery or a direct call: no ReverseProxy around it
	case *outBody:
		return b.app
	}
	return nil
}

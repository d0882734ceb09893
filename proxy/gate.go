package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// gateSize is how much of a response body a gate holds back: what the
// server's own write buffer holds anyway before anything is sent.
const gateSize = 4 << 10

// gate holds a proxied response back from the app until sending it is
// due: on the first flush, on a write past gateSize, or when the handler
// ends. Until then nothing of the response has reached the app, so an
// upstream that fails mid-body (a reset, a body shorter than its
// Content-Length, the route's timeout) can still be answered with the
// proxy's own error; without it the status and headers would be sent
// already, and only cutting the connection would be left. 1xx answers
// pass through at once.
type gate struct {
	w         http.ResponseWriter
	status    int // 0 until WriteHeader or Write
	n         int // bytes held in buf
	buf       *[gateSize]byte
	committed bool
}

var (
	_ http.ResponseWriter = (*gate)(nil)
	_ http.Flusher        = (*gate)(nil)
)

var gates = sync.Pool{New: func() any { return &gate{buf: new([gateSize]byte)} }}

// newGate returns a gate in front of w; release returns it.
func newGate(w http.ResponseWriter) *gate {
	g := gates.Get().(*gate)
	g.w = w
	return g
}

func (g *gate) release() {
	buf := g.buf
	*g = gate{buf: buf}
	gates.Put(g)
}

func (g *gate) Header() http.Header { return g.w.Header() }

func (g *gate) WriteHeader(code int) {
	switch {
	case g.committed:
		g.w.WriteHeader(code) // net/http reports the superfluous call
	case code < 200:
		g.w.WriteHeader(code)
	case g.status == 0:
		g.status = code
	}
}

func (g *gate) Write(p []byte) (int, error) {
	if g.committed {
		return g.w.Write(p)
	}
	if g.status == 0 {
		g.status = http.StatusOK
	}
	if g.n+len(p) <= gateSize {
		g.n += copy(g.buf[g.n:], p)
		return len(p), nil
	}
	if err := g.commit(); err != nil {
		return 0, err
	}
	return g.w.Write(p)
}

// Flush sends what is held and flushes it to the app.
func (g *gate) Flush() { _ = g.FlushError() }

// FlushError is Flush for http.ResponseController, with its error.
func (g *gate) FlushError() error {
	if err := g.commit(); err != nil {
		return err
	}
	return http.NewResponseController(g.w).Flush()
}

// Unwrap gives http.ResponseController the writer behind the gate.
func (g *gate) Unwrap() http.ResponseWriter { return g.w }

// commit passes the status and what is held on to the app's writer; from
// then on the gate is transparent.
func (g *gate) commit() error {
	if g.committed {
		return nil
	}
	g.committed = true
	if g.status == 0 {
		return nil // nothing was written: the server answers as it does
	}
	g.w.WriteHeader(g.status)
	if g.n > 0 {
		_, err := g.w.Write(g.buf[:g.n])
		return err
	}
	return nil
}

// failed takes back a response whose body failed before the gate let
// anything through: it drops the upstream's status, headers and held
// bytes, so that the caller can answer instead, and returns how the call
// ended (timeout when deadline, the route's overall deadline, has passed,
// else reset) and the attempts it made. ok is false when bytes were
// already sent: then only cutting the connection is left.
func (g *gate) failed(deadline time.Time) (o policy.Outcome, attempts int, ok bool) {
	if g.committed {
		return 0, 0, false
	}
	g.committed = true
	h := g.w.Header()
	attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	clear(h)
	o = policy.Reset
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		o = policy.Timeout
	}
	return o, attempts, true
}

// errBodyBroke is the Err of an *UpstreamError whose upstream answer broke
// off mid-body before anything of it reached the app.
var errBodyBroke = errors.New("upstream response body broke off")

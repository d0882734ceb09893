package h2server

import (
	"context"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/lnset"
)

// Server serves HTTP/2 with prior knowledge (h2c) on the listeners given
// to Serve. Set its fields before the first Serve; they must not change
// afterwards. Zero values take the defaults of RFC 9113 or net/http's.
type Server struct {
	// Handler answers every request.
	Handler http.Handler

	// ConnContext, if set, derives the base context of a connection's
	// requests from ctx, as http.Server.ConnContext does. c is the
	// connection as accepted; it runs before its first read.
	ConnContext func(ctx context.Context, c net.Conn) context.Context

	// ReadHeaderTimeout bounds the wait, from the accept, for the
	// client's preface and first SETTINGS frame. Zero: no bound.
	ReadHeaderTimeout time.Duration

	// IdleTimeout ends (GOAWAY, then close) a connection that has had no
	// stream open for this long. Zero: no bound.
	IdleTimeout time.Duration

	// MaxHeaderBytes bounds a request's header list (as
	// SETTINGS_MAX_HEADER_LIST_SIZE, with net/http's allowance for field
	// overhead); a longer one gets 431. Zero: http.DefaultMaxHeaderBytes.
	MaxHeaderBytes int

	// MaxConcurrentStreams is SETTINGS_MAX_CONCURRENT_STREAMS, and the
	// number of handlers that run at once per connection. Zero: 250.
	MaxConcurrentStreams uint32

	// HeaderTableSize is the HPACK dynamic table both ways. Zero: 4096.
	HeaderTableSize uint32

	// MaxReadFrameSize is SETTINGS_MAX_FRAME_SIZE. Zero: 16384.
	MaxReadFrameSize uint32

	// MaxReceiveBufferPerStream and MaxReceiveBufferPerConnection are the
	// flow-control windows a client may fill before handlers read.
	// Zero: 1 MiB and 1 MiB.
	MaxReceiveBufferPerStream     int32
	MaxReceiveBufferPerConnection int32

	// ErrorLog receives handler panics and connection errors. Nil: the
	// log package's standard logger.
	ErrorLog *log.Logger

	inShutdown atomic.Bool

	mu        sync.Mutex
	listeners lnset.Set
	conns     map[*conn]struct{}
	// changed is signalled, during a shutdown, when a connection ends.
	changed chan struct{}

	workers workerPool

	// testHookAfterFinish, when set by a test, runs after a handler's
	// last frames are written and before its stream leaves the table.
	testHookAfterFinish func()
}

func (s *Server) maxHeaderListSize() uint32 {
	n := s.MaxHeaderBytes
	if n <= 0 {
		n = http.DefaultMaxHeaderBytes
	}
	// As net/http's HTTP/2 server: room for ten fields' 32-byte overhead.
	return uint32(n + 10*32)
}

func (s *Server) maxStreams() uint32 {
	if s.MaxConcurrentStreams > 0 {
		return s.MaxConcurrentStreams
	}
	return 250
}

func (s *Server) headerTableSize() uint32 {
	if s.HeaderTableSize > 0 {
		return s.HeaderTableSize
	}
	return 4096
}

func (s *Server) maxReadFrameSize() uint32 {
	if v := s.MaxReadFrameSize; v >= 16<<10 && v <= 1<<24-1 {
		return v
	}
	return 16 << 10
}

func (s *Server) streamWindow() int32 {
	if s.MaxReceiveBufferPerStream > 0 {
		return s.MaxReceiveBufferPerStream
	}
	return 1 << 20
}

func (s *Server) connWindow() int32 {
	if s.MaxReceiveBufferPerConnection >= initialWindowSize {
		return s.MaxReceiveBufferPerConnection
	}
	return 1 << 20
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

func (s *Server) shuttingDown() bool { return s.inShutdown.Load() }

// Serve accepts connections on l and serves each on its own goroutine
// until Shutdown or Close. It always returns a non-nil error and closes
// l; after Shutdown or Close the error is http.ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	l = &lnset.OnceClose{Listener: l}
	defer l.Close()
	if !s.listeners.Track(&l, true, s.shuttingDown) {
		return http.ErrServerClosed
	}
	defer s.listeners.Track(&l, false, nil)
	// Requests carry an *http.Server under http.ServerContextKey, as
	// net/http's do, for the code that looks there (h1guard.ConnContext
	// reads MaxHeaderBytes from it). It describes this server and is
	// never served.
	base := context.WithValue(context.Background(), http.ServerContextKey, &http.Server{
		MaxHeaderBytes:    s.MaxHeaderBytes,
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		ErrorLog:          s.ErrorLog,
	})
	for {
		rw, err := lnset.Accept(l, s.shuttingDown, s.logf, "http2")
		if err != nil {
			return err
		}
		ctx := context.WithValue(base, http.LocalAddrContextKey, rw.LocalAddr())
		if s.ConnContext != nil {
			ctx = s.ConnContext(ctx, rw)
		}
		c := newConn(s, rw, ctx)
		if !s.trackConn(c, true) {
			rw.Close()
			continue
		}
		go c.serve()
	}
}

// Shutdown stops the server gracefully: it closes the listeners, sends
// every connection GOAWAY (NO_ERROR, naming the last stream it will
// serve), and waits until the connections have finished their streams
// and closed, or ctx ends: then it returns ctx's error, and the caller
// may Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	s.mu.Lock()
	lnerr := s.listeners.Close()
	if s.changed == nil {
		s.changed = make(chan struct{}, 1)
	}
	changed := s.changed
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.listeners.Wait()
	for _, c := range conns {
		c.startGracefulShutdown()
	}
	// Connections notify changed as they end; poll as well, as net/http
	// does, in case a notification raced with the count.
	base := time.Millisecond
	t := time.NewTimer(base)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			s.workers.close()
			return lnerr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-t.C:
			base = min(2*base, 500*time.Millisecond)
			t.Reset(base + time.Duration(rand.Int64N(int64(base/10)+1)))
		}
	}
}

// Close closes the listeners and every connection at once, streams in
// flight or not (their contexts are cancelled), as http.Server.Close
// does.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.mu.Lock()
	err := s.listeners.Close()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.listeners.Wait()
	for _, c := range conns {
		c.closeNow()
	}
	s.workers.close()
	return err
}

// trackConn adds or removes c; it refuses to add one once Close or
// Shutdown has begun.
func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	if add {
		if s.shuttingDown() {
			s.mu.Unlock()
			return false
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		return true
	}
	delete(s.conns, c)
	ch := s.changed
	s.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return true
}

// Handler goroutines are reused: a stream's handler runs on an idle
// worker of the server when there is one, so that the stack the last
// handler grew serves the next, and no goroutine starts per stream.
const (
	maxIdleWorkers    = 256
	idleWorkerTimeout = 10 * time.Second
)

type workerPool struct {
	mu      sync.Mutex
	idle    []*worker // most recently parked last
	closed  bool
	janitor *time.Timer
}

type worker struct {
	ch     chan *stream // nil: stop
	parked time.Time
}

// run runs st's handler, and then the streams the connection queued
// behind it, on an idle worker or a new goroutine.
func (p *workerPool) run(st *stream) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.ch <- st
		return
	}
	p.mu.Unlock()
	go p.work(&worker{ch: make(chan *stream, 1)}, st)
}

func (p *workerPool) work(w *worker, st *stream) {
	for st != nil {
		st = st.c.runHandler(st)
		if st != nil {
			continue
		}
		if !p.park(w) {
			return
		}
		st = <-w.ch
	}
}

func (p *workerPool) park(w *worker) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle) >= maxIdleWorkers {
		return false
	}
	w.parked = time.Now()
	p.idle = append(p.idle, w)
	if p.janitor == nil {
		p.janitor = time.AfterFunc(idleWorkerTimeout, p.sweep)
	}
	return true
}

// sweep stops the workers idle for idleWorkerTimeout.
func (p *workerPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.janitor = nil
	if p.closed {
		return
	}
	cut := time.Now().Add(-idleWorkerTimeout)
	n := 0
	for n < len(p.idle) && p.idle[n].parked.Before(cut) {
		p.idle[n].ch <- nil
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	clear(p.idle[len(p.idle):cap(p.idle)])
	if len(p.idle) > 0 {
		p.janitor = time.AfterFunc(idleWorkerTimeout, p.sweep)
	}
}

// close stops the idle workers; busy ones stop when their handler ends.
func (p *workerPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.janitor != nil {
		p.janitor.Stop()
		p.janitor = nil
	}
	for _, w := range p.idle {
		w.ch <- nil
	}
	p.idle = nil
}

package h1server

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

// Server serves HTTP/1.x on the listeners given to Serve. Set its fields
// before the first Serve; they must not change afterwards.
type Server struct {
	// Handler answers every request but "OPTIONS *", which the server
	// answers itself as net/http's does.
	Handler http.Handler

	// ReadHeaderTimeout bounds reading a request's head, counted from its
	// first byte (from the accept for a connection's first request).
	// Zero: no bound.
	ReadHeaderTimeout time.Duration

	// IdleTimeout closes a keep-alive connection that waited this long
	// for its next request. Zero: ReadHeaderTimeout.
	IdleTimeout time.Duration

	// MaxHeaderBytes bounds a request head: one longer than it plus 4 KiB
	// (net/http's slack) gets 431. Zero: http.DefaultMaxHeaderBytes.
	MaxHeaderBytes int

	// ConnContext, if set, derives the base context of a connection's
	// requests from ctx, as http.Server.ConnContext does. It runs before
	// the first read of c.
	ConnContext func(ctx context.Context, c net.Conn) context.Context

	// HandOff, if set, is given every connection that opens with the
	// HTTP/2 connection preface (h2c prior knowledge), as a net.Conn that
	// replays the bytes the server read of it; the connection is then no
	// longer the server's: Shutdown and Close leave it alone. See
	// ConnQueue to give them to another server.
	HandOff func(c net.Conn)

	// ErrorLog receives handler panics and handler mistakes (superfluous
	// WriteHeader, invalid Content-Length), as http.Server.ErrorLog does.
	// Nil: the log package's standard logger.
	ErrorLog *log.Logger

	inShutdown atomic.Bool

	mu        sync.Mutex
	listeners lnset.Set
	conns     map[*conn]struct{}
	// changed is signalled, during a shutdown, when a connection goes
	// idle or away, so that Shutdown looks again without waiting for
	// its next poll.
	changed chan struct{}
	// parkDelay, if set (tests), replaces parkDelay.
	parkDelay time.Duration
	// testHookIdle, when set by a test, is called each time a connection
	// of this server starts waiting for its next request; testHookPark
	// when one parks. Per server, so that a connection of another test's
	// server, still closing, never calls them.
	testHookIdle, testHookPark func(c *conn)
	// releaseParks, if set (tests), replaces releaseParks, and with it
	// releaseQuiet, releaseEvery and the hand-back (testHookRelease).
	releaseParks               int
	releaseQuiet, releaseEvery time.Duration
	testHookRelease            func()

	// watch is the disconnect watcher's (see watch_linux.go), under mu.
	watch serverWatch
}

func (s *Server) maxHeaderBytes() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return http.DefaultMaxHeaderBytes
}

// headLimit is the longest request head served: net/http's limit on what
// its server reads for a head (MaxHeaderBytes plus 4 KiB of bufio slack).
func (s *Server) headLimit() int { return s.maxHeaderBytes() + 4096 }

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout != 0 {
		return s.IdleTimeout
	}
	return s.ReadHeaderTimeout
}

func (s *Server) shuttingDown() bool { return s.inShutdown.Load() }

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

// Serve accepts connections on l and serves each on its own goroutine
// until Shutdown or Close. It always returns a non-nil error, and closes
// l; after Shutdown or Close the error is http.ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	l = &lnset.OnceClose{Listener: l}
	defer l.Close()
	if !s.listeners.Track(&l, true, s.shuttingDown) {
		return http.ErrServerClosed
	}
	defer s.listeners.Track(&l, false, nil)
	// Requests carry an *http.Server under http.ServerContextKey, as
	// net/http's do, for the code that looks there: ReverseProxy only
	// aborts a response whose upstream body broke off (panicking with
	// http.ErrAbortHandler, so that the connection is cut rather than
	// the response silently truncated) when it finds one, and
	// h1guard.ConnContext reads MaxHeaderBytes from it. It is a
	// description of this server, never served.
	base := context.WithValue(context.Background(), http.ServerContextKey, &http.Server{
		MaxHeaderBytes:    s.maxHeaderBytes(),
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		ErrorLog:          s.ErrorLog,
	})
	for {
		rw, err := lnset.Accept(l, s.shuttingDown, s.logf, "http")
		if err != nil {
			return err
		}
		ctx := base
		if s.ConnContext != nil {
			ctx = s.ConnContext(ctx, rw)
		}
		c := newConn(s, rw, ctx)
		s.trackConn(c, true)
		go c.serve()
	}
}

// Shutdown stops the server as http.Server.Shutdown does: it closes the
// listeners, then the idle connections, then waits for the connections
// with a request in flight to finish it (they close instead of going
// idle) until ctx ends, and returns ctx's error if it ended first.
// Connections taken over by Hijack or HandOff are not the server's and
// are left alone.
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	s.watchShutdown()
	s.mu.Lock()
	lnerr := s.listeners.Close()
	if s.changed == nil {
		s.changed = make(chan struct{}, 1)
	}
	changed := s.changed
	s.mu.Unlock()
	s.listeners.Wait()

	// Poll as net/http does (a connection not yet sent its first request
	// turns idle after 5 s), but wake up early when a connection changes.
	base := time.Millisecond
	next := func() time.Duration {
		d := base + time.Duration(rand.Int64N(int64(base/10)+1))
		base = min(2*base, 500*time.Millisecond)
		return d
	}
	t := time.NewTimer(next())
	defer t.Stop()
	for {
		if s.closeIdleConns() {
			return lnerr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-t.C:
			t.Reset(next())
		}
	}
}

// Close closes the listeners and every connection at once, requests in
// flight or not, as http.Server.Close does.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.watchShutdown()
	s.mu.Lock()
	err := s.listeners.Close()
	s.mu.Unlock()
	s.listeners.Wait()
	var parked []*conn
	s.mu.Lock()
	defer func() {
		s.mu.Unlock()
		for _, c := range parked {
			c.close()
		}
	}()
	for c := range s.conns {
		if c.takeParked() {
			parked = append(parked, c)
		}
		c.rwc.Close()
		// Its own close is no event to the watcher: cancel the request
		// in flight, as net/http's pending read, failing, does.
		if w := c.cur.Load(); w != nil {
			w.cancel()
		}
		delete(s.conns, c)
	}
	return err
}

// closeIdleConns closes the idle connections and reports whether none
// remain.
func (s *Server) closeIdleConns() bool {
	var parked []*conn
	defer func() {
		for _, c := range parked {
			c.close()
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	quiet := true
	now := time.Now().Unix()
	for c := range s.conns {
		st, since := c.getState()
		// As net/http: a connection that has not sent its first request
		// within 5 s counts as idle.
		if st == stateNew && since < now-5 {
			st = stateIdle
		}
		if st != stateIdle {
			quiet = false
			continue
		}
		if c.takeParked() {
			parked = append(parked, c) // no goroutine of its own to close it
		}
		c.rwc.Close()
		delete(s.conns, c)
	}
	return quiet
}

func (s *Server) trackConn(c *conn, add bool) {
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	if !add {
		s.notifyChanged()
	}
}

// notifyChanged wakes a Shutdown waiting for the connections.
func (s *Server) notifyChanged() {
	if !s.shuttingDown() {
		return
	}
	s.mu.Lock()
	ch := s.changed
	s.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

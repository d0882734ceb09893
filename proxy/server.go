package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
	"github.com/sidecar-proxy/sidecar/internal/h1server"
	"github.com/sidecar-proxy/sidecar/internal/h2server"
	"github.com/sidecar-proxy/sidecar/internal/stdlog"
	"github.com/sidecar-proxy/sidecar/spool"
)

// Limits of the app-facing listeners.
const (
	// MaxHeaderBytes bounds a request's header block; larger gets 431.
	MaxHeaderBytes    = 64 << 10
	readHeaderTimeout = 10 * time.Second
	// idleTimeout closes an idle connection, HTTP/1.1 keep-alive or
	// HTTP/2 alike: net/http applies it to both.
	idleTimeout = 120 * time.Second
)

// HTTP/2 limits of the app-facing listeners (h2c). internal/h2server
// carries net/http's protections: the rapid-reset mitigation
// (CVE-2023-44487: no more handlers than MaxConcurrentStreams run per
// connection, further streams queue, and a connection that queues too
// many is closed) and the CONTINUATION-flood one (CVE-2024-27316: headers
// past MaxHeaderBytes, which it advertises as
// SETTINGS_MAX_HEADER_LIST_SIZE, are not stored, and a peer that keeps
// sending them loses the connection); these settings bound the rest
// deliberately (docs/design.md, "HTTP/2 connections").
const (
	// h2MaxConcurrentStreams is per connection: one app may multiplex
	// many gRPC calls over one connection.
	h2MaxConcurrentStreams = 1000
	// h2HeaderTableSize is the HPACK dynamic table, both ways: RFC 9113's
	// default of 4 KiB, so a peer cannot make it cost more per connection.
	h2HeaderTableSize = 4 << 10
	// h2MaxReadFrameSize is RFC 9113's initial SETTINGS_MAX_FRAME_SIZE: what
	// HTTP/2 clients, gRPC's included, send anyway; a larger one would only
	// let a peer make the server hold larger frame buffers.
	h2MaxReadFrameSize = 16 << 10
	// h2MaxReceiveBufferPerStream and ...PerConnection are the flow-control
	// windows: what an app may send before the upstream reads.
	h2MaxReceiveBufferPerStream     = 1 << 20
	h2MaxReceiveBufferPerConnection = 4<<20 - 1
)

// Server runs the app-facing listeners of a snapshot. The snapshot is held
// in an atomic pointer, so a reload is a Swap (see Reload).
type Server struct {
	log  *slog.Logger
	snap atomic.Pointer[Snapshot]

	// spool is the async routes' store and their deliverers; nil without
	// WithSpool or AttachSpool: async routes are served synchronously.
	spool atomic.Pointer[spooler]

	mu      sync.Mutex // serializes Listen, Serve, Reload and Shutdown
	live    map[string]*boundListener
	serving bool // Serve has run
	closing bool // Shutdown has begun
	// retiring are the servers of listeners a reload removed or moved,
	// draining; Shutdown closes what remains of them.
	retiring map[engine]struct{}
	wg       sync.WaitGroup // Serve loops and drains

	// headerTimeout bounds reading a request's head (HTTP/1.1) or a
	// connection's preface and first SETTINGS (HTTP/2), counted from the
	// accept; readHeaderTimeout unless WithReadHeaderTimeout.
	headerTimeout time.Duration
}

// boundListener is a listener's socket and the server serving it.
type boundListener struct {
	name, address, protocol string
	ln                      net.Listener
	srv                     engine
	tunnels                 *tunnelSet // the server's CONNECT tunnels
}

// engine is the server of one listener: the sidecar's own HTTP/2 server
// (internal/h2server) for h2c, its own HTTP/1.1 server
// (internal/h1server) for http1, and both for auto (see autoEngine).
// Their Shutdown and Close mean what http.Server's do.
type engine interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// Option configures NewServer.
type Option func(*Server)

// WithSpool gives the server the store of its async routes: their requests
// are spooled to it and delivered from it in the background, by one
// deliverer per async route that Serve starts and Shutdown stops. The
// caller opens the store before and closes it after the Server's life.
// Without it, async routes are served synchronously.
func WithSpool(store spool.Store) Option {
	return func(s *Server) {
		sp := &spooler{store: store, group: newDeliveryGroup(), log: s.log}
		sp.dedupe, _ = store.(spool.Deduper)
		s.spool.Store(sp)
	}
}

// WithReadHeaderTimeout bounds the time an app-facing connection may take
// to send a request's head (HTTP/1.1: from the accept, or from the first
// byte of a later request's head) or its preface and first SETTINGS
// (HTTP/2); past it the connection is closed. The default, 10 s, is the
// listeners' fixed limit (docs/configuration.md, "listeners[]"); the
// configuration has no key for it. d <= 0 keeps the default.
func WithReadHeaderTimeout(d time.Duration) Option {
	return func(s *Server) {
		if d > 0 {
			s.headerTimeout = d
		}
	}
}

// AttachSpool is WithSpool on a running server, for a reload that brings
// the first async route: the caller opens the store, attaches it, then
// reloads. It fails if the server has a store already or is shutting
// down.
func (s *Server) AttachSpool(store spool.Store) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("the sidecar is shutting down")
	}
	if s.spool.Load() != nil {
		return errors.New("the server has a spool already")
	}
	WithSpool(store)(s)
	return nil
}

// NewServer returns a Server for snap; Listen binds it.
func NewServer(snap *Snapshot, logger *slog.Logger, opts ...Option) *Server {
	s := &Server{log: logger, live: map[string]*boundListener{}, retiring: map[engine]struct{}{}, headerTimeout: readHeaderTimeout}
	s.snap.Store(snap)
	for _, o := range opts {
		o(s)
	}
	// Start a round of breaker sweeps: a reload drops the breakers its
	// snapshot does not use.
	if snap.breakers != nil {
		snap.breakers.Sweep()
	}
	return s
}

// Spool returns the store given with WithSpool or AttachSpool, or nil.
func (s *Server) Spool() spool.Store {
	if sp := s.spool.Load(); sp != nil {
		return sp.store
	}
	return nil
}

// Deliveries returns the status of each async route's deliverer, by route
// name, while Serve runs them (empty before Serve and after Shutdown). It
// takes no lock on the delivery path: the figures are atomics.
func (s *Server) Deliveries() map[string]DeliveryStatus {
	if sp := s.spool.Load(); sp != nil {
		return sp.group.status()
	}
	return map[string]DeliveryStatus{}
}

// Snapshot returns the snapshot requests are served with now.
func (s *Server) Snapshot() *Snapshot { return s.snap.Load() }

// Listen binds every listener of the snapshot. On error nothing stays bound.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bound []*boundListener
	for _, l := range s.snap.Load().Listeners {
		b, err := s.bind(l)
		if err != nil {
			for _, b := range bound {
				b.ln.Close()
			}
			return err
		}
		bound = append(bound, b)
	}
	for _, b := range bound {
		s.live[b.name] = b
	}
	return nil
}

// bind opens l's socket and makes its http.Server, not yet serving.
func (s *Server) bind(l *Listener) (*boundListener, error) {
	ln, err := net.Listen("tcp", l.Address)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.Name, err)
	}
	tunnels := &tunnelSet{}
	return &boundListener{name: l.Name, address: l.Address, protocol: l.Protocol, ln: guardListen(ln), srv: s.newEngine(l, tunnels, ln.Addr()), tunnels: tunnels}, nil
}

// guardListen wraps a listener's socket in h1guard, for every protocol:
// the handler refuses a request whose connection it does not find (on
// an h2c connection the guard stops at the preface, and has nothing to
// judge); and in a socket, whose Close may be called twice.
func guardListen(ln net.Listener) net.Listener {
	return &socket{Listener: h1guard.Listen(ln)}
}

// socket is a listener's socket as the Server hands it to its engine.
// Only its first Close closes it and reports the error; a later one
// returns nil. bindAll closes the sockets of the listeners a reload
// retires, to free their addresses, while their engines may still have
// them: the engine's Shutdown, closing the socket again, must not report
// that as a failure of the shutdown.
type socket struct {
	net.Listener
	once sync.Once
}

func (s *socket) Close() error {
	var err error
	s.once.Do(func() { err = s.Listener.Close() })
	return err
}

// Addrs returns the bound addresses, by listener name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for name, b := range s.live {
		out[name] = b.ln.Addr()
	}
	return out
}

// newEngine makes the server of listener l, bound at addr: HTTP/1.1 by
// h1server, HTTP/2 with prior knowledge (h2c) by h2server; an auto
// listener's h1server hands the connections that open with the HTTP/2
// preface to its h2server.
func (s *Server) newEngine(l *Listener, tunnels *tunnelSet, addr net.Addr) engine {
	h := &handler{listener: l.Name, snap: &s.snap, log: s.log, spool: &s.spool, tunnels: tunnels}
	errorLog := s.errorLog()
	if l.Protocol == "h2c" {
		return newHTTP2Server(h, errorLog, s.headerTimeout)
	}
	h1 := &h1server.Server{
		Handler:           h,
		ReadHeaderTimeout: s.headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnContext:       h1guard.ConnContext,
		ErrorLog:          errorLog,
	}
	if l.Protocol == "http1" {
		return h1
	}
	q := h1server.NewConnQueue(addr)
	h1.HandOff = q.Put
	return &autoEngine{h1: h1, h2: newHTTP2Server(h, errorLog, s.headerTimeout), q: q}
}

// errorLog is the servers' ErrorLog: TLS handshake errors, panics, at
// debug level, escaped and cut short, since they can quote what a client
// sent.
func (s *Server) errorLog() *log.Logger {
	return log.New(stdlog.Writer{Log: s.log, Level: slog.LevelDebug, Msg: "http server"}, "", 0)
}

// newHTTP2Server is the server for h2c: HTTP/2 with prior knowledge;
// headerTimeout bounds the wait for a connection's preface.
func newHTTP2Server(h http.Handler, errorLog *log.Logger, headerTimeout time.Duration) *h2server.Server {
	return &h2server.Server{
		Handler:           h,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		// An auto listener's connections come through h1server, which
		// read their preface: h1guard's *Conn is beneath.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return h1guard.ConnContext(ctx, h1server.Unwrap(c))
		},
		MaxConcurrentStreams:          h2MaxConcurrentStreams,
		HeaderTableSize:               h2HeaderTableSize,
		MaxReadFrameSize:              h2MaxReadFrameSize,
		MaxReceiveBufferPerStream:     h2MaxReceiveBufferPerStream,
		MaxReceiveBufferPerConnection: h2MaxReceiveBufferPerConnection,
		ErrorLog:                      errorLog,
	}
}

// autoEngine serves an auto listener: h1server serves it, and hands the
// connections that open with the HTTP/2 preface to h2 through q, so
// that h2c is served exactly as on an h2c listener.
type autoEngine struct {
	h1   *h1server.Server
	h2   *h2server.Server
	q    *h1server.ConnQueue
	once sync.Once
	wg   sync.WaitGroup // h2's Serve
}

func (a *autoEngine) Serve(ln net.Listener) error {
	a.once.Do(func() {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.h2.Serve(a.q)
		}()
	})
	return a.h1.Serve(ln)
}

func (a *autoEngine) Shutdown(ctx context.Context) error {
	a.noServe()
	h2err := make(chan error, 1)
	go func() { h2err <- a.h2.Shutdown(ctx) }()
	err := a.h1.Shutdown(ctx)
	if e := <-h2err; err == nil {
		err = e
	}
	a.q.Close()
	a.wg.Wait()
	return err
}

// noServe keeps a Serve that has not started h2's goroutine yet from
// starting it, and waits for one starting it now: a.wg.Add then comes
// before a.wg.Wait, as it must (a Serve that ran just before Shutdown,
// after a reload, raced with it).
func (a *autoEngine) noServe() { a.once.Do(func() {}) }

func (a *autoEngine) Close() error {
	a.noServe()
	err := errors.Join(a.h1.Close(), a.h2.Close())
	a.q.Close()
	a.wg.Wait()
	return err
}

// Serve serves the bound listeners until Shutdown, and starts the
// deliverers of the async routes. It returns at once.
func (s *Server) Serve() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving || s.closing {
		return
	}
	s.serving = true
	if sp := s.spool.Load(); sp != nil {
		sp.group.reconcile(s.snap.Load(), sp.newDeliverer(s))
	}
	for _, b := range s.live {
		s.serveLocked(b)
	}
}

// newDeliverer returns the function that makes the deliverer of a
// route of s, for deliveryGroup.reconcile.
func (sp *spooler) newDeliverer(s *Server) func(route string) *deliverer {
	return func(route string) *deliverer {
		return &deliverer{route: route, store: sp.store, snap: s.snap.Load, log: s.log}
	}
}

// serveLocked serves b in the background until its server shuts down.
func (s *Server) serveLocked(b *boundListener) {
	// The socket now: rebind replaces b.ln, under s.mu, while this
	// goroutine may not have started yet.
	ln := b.ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := b.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener stopped", "listener", b.name, "address", ln.Addr().String(), "error", err)
		}
	}()
}

// Reload makes next the snapshot that requests are served with. next must
// be built from the current snapshot (Build(cfg, s.Snapshot(), ...)), so
// that what did not change keeps its state. In order:
//
//   - Listeners added, or whose address or protocol changed, are bound.
//     When an address is taken, the sockets of the listeners this reload
//     removes or changes are closed first and the binds tried again; if a
//     bind still fails, Reload restores the sockets it closed and returns
//     the error, and nothing has changed.
//   - next is swapped in: requests in flight finish on the snapshot they
//     started with; every new request gets next.
//   - The new sockets are served. The servers of listeners removed or
//     changed stop accepting and drain their requests in flight for up to
//     drain (then their connections are closed); unchanged listeners keep
//     their sockets and connections.
//   - Async routes added get deliverers; removed ones' deliverers stop
//     between messages, and their messages stay in the store until a
//     route of that name returns. A route whose async block changed gets
//     a new deliverer once the old one has returned.
//   - The pools next did not carry over drop their idle connections and
//     stop their DNS resolvers.
func (s *Server) Reload(next *Snapshot, drain time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("the sidecar is shutting down")
	}
	// What stays, and what needs a socket.
	keep := map[string]*boundListener{}
	var want []*Listener
	for _, l := range next.Listeners {
		if b := s.live[l.Name]; b != nil && b.address == l.Address && b.protocol == l.Protocol {
			keep[l.Name] = b
			continue
		}
		want = append(want, l)
	}
	var retire []*boundListener // removed or changed: their servers drain
	for name, b := range s.live {
		if keep[name] == nil {
			retire = append(retire, b)
		}
	}
	opened, err := s.bindAll(want, retire)
	if err != nil {
		return err
	}
	prev := s.snap.Swap(next)
	live := keep
	for _, b := range opened {
		live[b.name] = b
		if s.serving {
			s.serveLocked(b)
		}
	}
	s.live = live
	for _, b := range retire {
		s.retireLocked(b, drain)
	}
	if sp := s.spool.Load(); sp != nil && s.serving {
		sp.group.reconcile(next, sp.newDeliverer(s))
	}
	if next.breakers != nil {
		next.breakers.Sweep()
	}
	prev.Close(next)
	// Requests in flight on the pools left behind return their
	// connections to them when they end: close those too, once the
	// requests have had the drain's time.
	time.AfterFunc(drain, func() { prev.Close(s.snap.Load()) })
	return nil
}

// bindAll binds want. If an address is in use, it closes the sockets of
// retire (their servers keep the connections they have) and tries again;
// on failure it closes what it bound and re-binds what it closed.
func (s *Server) bindAll(want []*Listener, retire []*boundListener) ([]*boundListener, error) {
	var opened []*boundListener
	closeOpened := func() {
		for _, b := range opened {
			b.ln.Close()
		}
	}
	var busy []*Listener
	for _, l := range want {
		b, err := s.bind(l)
		if err != nil {
			if !errors.Is(err, syscall.EADDRINUSE) || len(retire) == 0 {
				closeOpened()
				return nil, err
			}
			busy = append(busy, l)
			continue
		}
		opened = append(opened, b)
	}
	if len(busy) == 0 {
		return opened, nil
	}
	// Free the addresses of the listeners going away, then try again.
	for _, b := range retire {
		b.ln.Close()
	}
	for _, l := range busy {
		b, err := s.bind(l)
		if err != nil {
			closeOpened()
			s.rebind(retire)
			return nil, err
		}
		opened = append(opened, b)
	}
	return opened, nil
}

// rebind re-opens the sockets of bs after bindAll closed them, and serves
// them again.
func (s *Server) rebind(bs []*boundListener) {
	for _, b := range bs {
		ln, err := net.Listen("tcp", b.ln.Addr().String())
		if err != nil {
			s.log.Error("listener lost its socket: a reload closed it and could not open it again", "listener", b.name, "address", b.ln.Addr().String(), "error", err)
			continue
		}
		b.ln = guardListen(ln)
		if s.serving {
			s.serveLocked(b)
		}
	}
}

// retireLocked stops b's server accepting and drains it in the background
// for up to drain, then closes what remains.
func (s *Server) retireLocked(b *boundListener, drain time.Duration) {
	s.retiring[b.srv] = struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		if err := b.srv.Shutdown(ctx); err != nil {
			b.srv.Close()
		}
		b.tunnels.closeAll() // once the requests have drained
		b.ln.Close()         // if Serve never ran
		s.mu.Lock()
		delete(s.retiring, b.srv)
		s.mu.Unlock()
	}()
}

// Shutdown stops accepting, waits for requests in flight until ctx ends,
// then closes what remains. The spool's deliverers stop likewise; one
// that the spool holds (a disk that stalls) is left running a second
// after ctx ends, and said so in the error. Shutdown does not close the
// spool: its opener does.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	var servers []engine
	var tunnels []*tunnelSet
	for _, b := range s.live {
		servers = append(servers, b.srv)
		tunnels = append(tunnels, b.tunnels)
		if !s.serving {
			b.ln.Close()
		}
	}
	for srv := range s.retiring {
		servers = append(servers, srv)
	}
	s.mu.Unlock()
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	// The CONNECT tunnels, which http.Server does not track, once the
	// requests have drained (or the grace is over).
	for _, t := range tunnels {
		t.closeAll()
	}
	s.wg.Wait()
	if sp := s.spool.Load(); sp != nil {
		errs = append(errs, sp.group.shutdown(ctx))
	}
	s.snap.Load().Close(nil)
	return errors.Join(errs...)
}

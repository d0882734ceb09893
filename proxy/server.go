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
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
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

// HTTP/2 limits of the app-facing listeners (h2c). Go 1.26's bundled
// HTTP/2 server carries the rapid-reset mitigation (CVE-2023-44487: no
// more handlers than MaxConcurrentStreams run per connection, further
// streams queue, and a connection that queues too many is closed) and the
// CONTINUATION-flood one (CVE-2023-45288: headers past MaxHeaderBytes,
// which it advertises as SETTINGS_MAX_HEADER_LIST_SIZE, are not stored,
// and a peer that keeps sending them loses the connection); these settings
// bound the rest deliberately.
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
// in an atomic pointer, so a reload is a Swap.
type Server struct {
	log  *slog.Logger
	snap atomic.Pointer[Snapshot]

	spool      *spooler       // nil without WithSpool
	deliveries *deliveryGroup // with a spool: the async routes' deliverers

	mu      sync.Mutex
	servers []*http.Server
	lns     []net.Listener
	serving bool // Serve has run
	wg      sync.WaitGroup
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
		s.spool = &spooler{store: store, wakes: map[string]chan struct{}{}, log: s.log}
	}
}

// NewServer returns a Server for snap; Listen binds it.
func NewServer(snap *Snapshot, logger *slog.Logger, opts ...Option) *Server {
	s := &Server{log: logger}
	s.snap.Store(snap)
	for _, o := range opts {
		o(s)
	}
	if s.spool != nil {
		s.deliveries = newDeliveryGroup()
		for _, rt := range snap.Routes {
			if rt.async != nil {
				s.spool.wakes[rt.Name] = make(chan struct{}, 1)
			}
		}
	}
	return s
}

// Spool returns the store given with WithSpool, or nil.
func (s *Server) Spool() spool.Store {
	if s.spool == nil {
		return nil
	}
	return s.spool.store
}

// Deliveries returns the status of each async route's deliverer, by route
// name, while Serve runs them (empty before Serve and after Shutdown). It
// takes no lock on the delivery path: the figures are atomics.
func (s *Server) Deliveries() map[string]DeliveryStatus {
	if s.deliveries == nil {
		return map[string]DeliveryStatus{}
	}
	return s.deliveries.status()
}

// Snapshot returns the snapshot requests are served with now.
func (s *Server) Snapshot() *Snapshot { return s.snap.Load() }

// Listen binds every listener of the snapshot. On error nothing stays bound.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.snap.Load().Listeners {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			for _, bound := range s.lns {
				bound.Close()
			}
			s.lns = nil
			return fmt.Errorf("listener %s: %w", l.Name, err)
		}
		s.lns = append(s.lns, h1guard.Listen(ln))
		s.servers = append(s.servers, s.newHTTPServer(l))
	}
	return nil
}

// Addrs returns the bound addresses, by listener name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for i, ln := range s.lns {
		out[s.snap.Load().Listeners[i].Name] = ln.Addr()
	}
	return out
}

func (s *Server) newHTTPServer(l *Listener) *http.Server {
	protos := new(http.Protocols)
	switch l.Protocol {
	case "http1":
		protos.SetHTTP1(true)
	case "h2c":
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
	}
	return &http.Server{
		Handler:           &handler{listener: l.Name, snap: &s.snap, log: s.log, spool: s.spool},
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnContext:       h1guard.ConnContext,
		Protocols:         protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          h2MaxConcurrentStreams,
			MaxDecoderHeaderTableSize:     h2HeaderTableSize,
			MaxEncoderHeaderTableSize:     h2HeaderTableSize,
			MaxReadFrameSize:              h2MaxReadFrameSize,
			MaxReceiveBufferPerStream:     h2MaxReceiveBufferPerStream,
			MaxReceiveBufferPerConnection: h2MaxReceiveBufferPerConnection,
		},
		// TLS handshake errors, panics: at debug level, escaped and cut
		// short, since they can quote what a client sent.
		ErrorLog: log.New(stdlog.Writer{Log: s.log, Level: slog.LevelDebug, Msg: "http server"}, "", 0),
	}
}

// Serve serves the bound listeners until Shutdown, and starts the
// deliverers of the async routes. It returns at once.
func (s *Server) Serve() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.spool != nil && !s.serving {
		for name, wake := range s.spool.wakes {
			s.deliveries.start(&deliverer{route: name, store: s.spool.store, snap: s.snap.Load, log: s.log, wake: wake})
		}
	}
	s.serving = true
	for i, srv := range s.servers {
		ln := s.lns[i]
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("listener stopped", "address", ln.Addr().String(), "error", err)
			}
		}()
	}
}

// Shutdown stops accepting, waits for requests in flight until ctx ends,
// then closes what remains.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
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
	s.wg.Wait()
	if s.deliveries != nil {
		errs = append(errs, s.deliveries.shutdown(ctx))
	}
	s.snap.Load().Close(nil)
	return errors.Join(errs...)
}

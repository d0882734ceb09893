package proxy

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"reflect"
	"sync"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/policy"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// Snapshot is the immutable runtime form of a validated Config: compiled
// routes per listener and upstream pools. A reload builds a new Snapshot
// and swaps it in whole; requests in flight finish on the one they started
// with.
type Snapshot struct {
	Config    *config.Config
	Listeners []*Listener      // in file order
	Routes    []*Route         // every route, in file order
	Pools     map[string]*Pool // by upstream name
	byName    map[string]*Listener
	routes    map[string]*Route
	breakers  *policy.BreakerSet // shared by every snapshot built from this one
	lookup    lookupFunc         // WithResolver's; nil: net.DefaultResolver

	clock     Clock            // of the pools Build creates; nil: the real one
	tel       *Telemetry       // nil: nothing recorded
	accessLog bool             // telemetry.access_log
	unrouted  *telemetry.Route // the metrics of requests no route took
}

// Listener is a listener's compiled routes.
type Listener struct {
	Name     string
	Address  string
	Protocol string
	// Mode is config.ModeReverseProxy or config.ModeForwardProxy.
	Mode   string
	Routes []*Route // matched in order, first match wins
	// forward is mode forward_proxy: routes are chosen by the target's
	// host, no_route is 403, Proxy-* headers are dropped and CONNECT is
	// tunnelled to routes with connect: true.
	forward bool
	// bodyIdle is body_idle_timeout: the longest pause in an app's
	// request body; 0: none.
	bodyIdle time.Duration
	// strictPaths is strict_paths: a path with ';' or '\' is refused.
	strictPaths bool
}

// Route is a compiled route: its match, upstream pool and policy, and the
// reverse proxy that forwards to it.
type Route struct {
	Name       string
	Listener   string
	Upstream   string
	PolicyName string // "" for the built-in defaults
	Pool       *Pool
	Policy     *config.Policy
	// MatchConfig is the route's match block as configured.
	MatchConfig config.Match
	// Connect is connect: true: CONNECT to the route's host is tunnelled
	// to its upstream.
	Connect bool

	match        *matcher
	pol          routePolicy
	preserveHost bool
	websocket    bool
	async        *asyncPolicy           // nil: not an async route
	asyncConfig  *config.Async          // what async was compiled from
	tel          *telemetry.Route       // the route's metrics; nil: none
	obs          *Telemetry             // the snapshot's; nil: none
	accessLog    bool                   // telemetry.access_log: attempts note their endpoint
	attempt      *attempter             // the sync path's attempt loop
	proxy        *httputil.ReverseProxy // the sync path of upgrades (WebSocket)
	// asyncAttempt is the upstream_down path's attempt loop of an async
	// route: it ends on an answer that spool_on lists. nil unless the
	// route is async.
	asyncAttempt *attempter
}

// Listener returns the listener named name, or nil.
func (s *Snapshot) Listener(name string) *Listener { return s.byName[name] }

// Route returns the route named name, or nil.
func (s *Snapshot) Route(name string) *Route { return s.routes[name] }

// Async reports whether the route is async (fire-and-forget).
func (rt *Route) Async() bool { return rt.async != nil }

// Build compiles cfg. Pools of prev whose upstream config is unchanged are
// carried over, keeping their connections, counters, resolver and
// endpoints. A new pool with resolve looks its names up before Build
// returns and starts its resolver; Close stops it when a snapshot no longer
// carries the pool.
//
// With WithTelemetry the routes record spans and metrics through it; a
// snapshot built from prev without it keeps prev's.
func Build(cfg *config.Config, prev *Snapshot, logger *slog.Logger, opts ...BuildOption) (snap *Snapshot, err error) {
	s := &Snapshot{Config: cfg, Pools: map[string]*Pool{}, byName: map[string]*Listener{}, routes: map[string]*Route{}}
	if prev != nil {
		s.tel, s.lookup, s.clock = prev.tel, prev.lookup, prev.clock
	}
	for _, o := range opts {
		o(s)
	}
	s.accessLog = cfg.Telemetry.AccessLog
	ins := s.tel.instruments()
	s.unrouted = ins.Route("")
	if prev != nil {
		s.breakers = prev.breakers
	} else {
		s.breakers = &policy.BreakerSet{OnChange: func(endpoint string, from, to policy.BreakerState) {
			logger.Warn("circuit breaker state changed", "endpoint", endpoint, "from", from.String(), "to", to.String())
			ins.BreakerTransition(endpoint, to.String())
		}}
	}
	defer func() {
		if err != nil {
			s.Close(prev) // the pools made here, and their resolvers
		}
	}()
	for name, u := range cfg.Upstreams {
		if prev != nil {
			if old := prev.Pools[name]; old != nil && reflect.DeepEqual(old.cfg, *u) {
				s.Pools[name] = old
				continue
			}
		}
		p, err := newPool(name, u, poolEnv{log: logger, ins: ins, lookup: s.lookup, breakers: s.breakers, clock: s.clock})
		if err != nil {
			return nil, err
		}
		if u.TLS.InsecureSkipVerify {
			logger.Warn("TLS certificate verification is OFF for this upstream: anyone on the path can impersonate it", "upstream", name)
		}
		s.Pools[name] = p
	}
	errLog := log.New(io.Discard, "", 0)
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		errLog = slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	}
	for _, lc := range cfg.Listeners {
		l := &Listener{Name: lc.Name, Address: lc.Address, Protocol: lc.Protocol, Mode: lc.Mode, bodyIdle: lc.BodyIdleTimeout.D(), strictPaths: lc.StrictPaths}
		l.forward = lc.Mode == config.ModeForwardProxy
		for _, rc := range lc.Routes {
			var old *Route
			if prev != nil {
				old = prev.routes[rc.Name]
			}
			r, err := newRoute(cfg, lc.Name, rc, s.Pools[rc.Upstream], old, s.breakers, logger, errLog)
			if err != nil {
				return nil, err
			}
			r.tel, r.obs, r.accessLog = ins.Route(r.Name), s.tel, s.accessLog
			s.routes[r.Name] = r
			l.Routes = append(l.Routes, r)
			s.Routes = append(s.Routes, r)
		}
		s.Listeners = append(s.Listeners, l)
		s.byName[l.Name] = l
	}
	return s, nil
}

// Close closes the pools that next does not carry over: their resolvers
// and health checkers stop and their idle connections are dropped. A
// snapshot built but never served (a reload that failed after Build) is
// closed with the snapshot it was built from as next.
func (s *Snapshot) Close(next *Snapshot) {
	for name, p := range s.Pools {
		if next == nil || next.Pools[name] != p {
			p.close()
		}
	}
}

func newRoute(cfg *config.Config, listener string, rc *config.Route, pool *Pool, prev *Route, breakers *policy.BreakerSet, logger *slog.Logger, errLog *log.Logger) (*Route, error) {
	if pool == nil {
		return nil, fmt.Errorf("route %s: unknown upstream %q", rc.Name, rc.Upstream)
	}
	pol, polName := cfg.RoutePolicy(rc)
	r := &Route{
		Name:         rc.Name,
		Listener:     listener,
		Upstream:     rc.Upstream,
		PolicyName:   polName,
		Pool:         pool,
		Policy:       pol,
		MatchConfig:  rc.Match,
		Connect:      rc.Connect,
		match:        compileMatch(rc.Match),
		pol:          compilePolicy(pol, pool, prev, breakers),
		preserveHost: pool.cfg.PreserveHost,
		websocket:    rc.WebSocket,
		async:        compileAsync(rc.Async),
		asyncConfig:  rc.Async,
	}
	r.attempt = &attempter{route: r}
	r.proxy = r.newReverseProxy(r.attempt, r.proxyError(logger), errLog)
	if r.async != nil {
		r.asyncAttempt = &attempter{route: r, spoolOn: r.async}
	}
	return r, nil
}

// newReverseProxy returns the ReverseProxy that forwards the route's
// requests through transport, its attempt loop.
func (rt *Route) newReverseProxy(transport *attempter, onError func(http.ResponseWriter, *http.Request, error), errLog *log.Logger) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      transport,
		ModifyResponse: modifyResponse,
		ErrorHandler:   onError,
		BufferPool:     bufferPool{},
		// FlushInterval 0: streams (text/event-stream, unknown length) are
		// flushed on every write by ReverseProxy itself; other bodies pass
		// through the server's 4 KiB write buffer without a timer each.
		ErrorLog: errLog,
	}
}

// bufferPool recycles the 32 KiB buffers ReverseProxy copies bodies with.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

func (bufferPool) Get() []byte  { return buffers.Get().(*[32 << 10]byte)[:] }
func (bufferPool) Put(b []byte) { buffers.Put((*[32 << 10]byte)(b)) }

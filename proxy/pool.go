package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/h1client"
	"github.com/sidecar-proxy/sidecar/internal/h2client"
	"github.com/sidecar-proxy/sidecar/internal/h2conn"
	"github.com/sidecar-proxy/sidecar/policy"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// Upstream connection limits that are not configurable.
const (
	maxResponseHeaderBytes = 1 << 20
	expectContinueTimeout  = time.Second
)

// Pool is an upstream's endpoints, their load balancer and the pooled
// keep-alive transport that reaches them. A Pool lives across reloads while
// its upstream's config is unchanged.
//
// The endpoints requests go to are the pool's endpoint set, read with one
// atomic load (endpoints). Without resolve the set is Endpoints and never
// changes; with resolve a resolver replaces it whenever the DNS answers
// change (docs/policies.md, "DNS re-resolution").
type Pool struct {
	Name string
	// Endpoints are the upstream's endpoints as configured, in order.
	// Without resolve they are the endpoint set; with resolve, an endpoint
	// whose host is a DNS name is replaced in the set by one endpoint per
	// address of the name.
	Endpoints []*Endpoint
	set       atomic.Pointer[endpointSet]
	cfg       config.Upstream
	pick      func(p *Pool, eps []*Endpoint) int
	rr        atomic.Uint64
	transport upstreamTransport
	rt        http.RoundTripper // transport, or a stand-in in benchmarks
	// newTransport returns a transport of its own for a resolved endpoint,
	// verifying TLS against serverName (the DNS name) unless tls.server_name
	// is set.
	newTransport func(serverName string) upstreamTransport
	res          *resolver // nil without resolve, or with no name to resolve
	// breakers is the breaker set the endpoints hold their keys in, so
	// that it keeps their breakers; nil: none.
	breakers *policy.BreakerSet

	// gated is set when health checks or outlier ejection can make the
	// balancer skip an endpoint (Endpoint.down); without either, pick
	// never looks.
	gated   bool
	health  *healthPolicy  // nil: no active health checks
	outlier *outlierPolicy // nil: no outlier ejection
	clock   Clock
	log     *slog.Logger

	mu        sync.Mutex     // ejection decisions (outlier.go)
	checkers  sync.WaitGroup // the endpoints' health checkers
	closeOnce sync.Once
}

// upstreamTransport is what reaches an upstream: net/http's transport or
// the sidecar's own clients.
type upstreamTransport interface {
	http.RoundTripper
	CloseIdleConnections()
}

// endpointSet is an immutable list of the endpoints requests go to. A new
// set replaces the whole of the old one.
type endpointSet struct {
	list []*Endpoint // never empty
	gen  uint64      // 0 for the first set, then one more per change
}

// Endpoint is one address of an upstream.
type Endpoint struct {
	URL *url.URL
	// host is the Host header a resolved endpoint sends (unless
	// preserve_host): the configured endpoint's host[:port], where URL
	// holds the address. Empty for a configured endpoint.
	host string
	// rt is a resolved endpoint's own transport, so that its connections
	// are pooled, verified and drained apart from the others'; nil: the
	// pool's.
	rt       upstreamTransport
	key      string // URL.String(): the endpoint's breakers are kept under it
	inFlight atomic.Int64
	// held is set while the endpoint holds its key in the breaker set
	// (BreakerSet.Hold): from when it joins the pool's set until it has
	// left it and been drained, or the pool closes. Guarded as the
	// pool's set changes are: by the resolver's mu, or by newPool and
	// close, which run alone.
	held bool

	// down is 0 while the endpoint takes traffic, else downUnhealthy
	// and/or downEjected: the one word Route.pick loads per endpoint.
	// An ejection's end is read lazily (outlier.go).
	down atomic.Uint32
	// health is its checker's state; nil without health_check. Atomic:
	// an address back in the DNS answers while it drained gets a new
	// checker while the admin API may still read the old one.
	health  atomic.Pointer[endpointHealth]
	outlier *endpointOutlier // nil without outlier
}

// The bits of Endpoint.down.
const (
	downUnhealthy uint32 = 1 << iota // failed its health checks
	downEjected                      // ejected until endpointOutlier.until
)

// InFlight returns the number of attempts in progress to e.
func (e *Endpoint) InFlight() int64 { return e.inFlight.Load() }

// poolEnv is what newPool needs beyond the upstream's config.
type poolEnv struct {
	log      *slog.Logger
	ins      *telemetry.Instruments // nil: no metrics
	lookup   lookupFunc             // nil: net.DefaultResolver's
	breakers *policy.BreakerSet     // the endpoints hold their keys in it; nil: none
	clock    Clock                  // nil: the real one
}

// newPool builds the pool of upstream name. Its endpoints' health checkers
// and its DNS resolver, if any, start at once and run until close.
func newPool(name string, u *config.Upstream, env poolEnv) (*Pool, error) {
	p := &Pool{Name: name, cfg: *u, clock: env.clock, log: env.log, breakers: env.breakers}
	if p.clock == nil {
		p.clock = realClock{}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.health = compileHealth(u.HealthCheck)
	p.outlier = compileOutlier(u.Outlier)
	p.gated = p.health != nil || p.outlier != nil
	for _, raw := range u.Endpoints {
		ep, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", name, err)
		}
		ep.Path = ""
		p.Endpoints = append(p.Endpoints, &Endpoint{URL: ep, key: ep.String()})
	}
	if err := p.setTransport(u); err != nil {
		return nil, fmt.Errorf("upstream %s: %w", name, err)
	}
	p.set.Store(&endpointSet{list: p.Endpoints})
	if u.Resolve != nil {
		if p.res = newResolver(p, u.Resolve.Every.D(), env); p.res != nil {
			p.set.Store(&endpointSet{list: p.res.list()})
		}
	}
	for _, ep := range p.endpoints().list {
		p.endpointAdded(ep)
	}
	if p.res != nil {
		p.res.start()
	}
	return p, nil
}

// endpointAdded holds ep's key in the breaker set, gives ep the
// per-endpoint state of the pool's health checks and outlier ejection,
// and starts its health checker. It runs before the endpoint takes
// traffic: for the first set, and for each address a DNS answer adds
// (again for one back in the answers while it drained).
func (p *Pool) endpointAdded(ep *Endpoint) {
	if p.breakers != nil && !ep.held {
		ep.held = true
		p.breakers.Hold(ep.key)
	}
	if p.outlier != nil && ep.outlier == nil {
		ep.outlier = &endpointOutlier{}
	}
	if h := ep.health.Load(); p.health != nil && (h == nil || h.ctx.Err() != nil) {
		// New, or an address back in the answers while it drained: a
		// checker of its own, healthy until it fails.
		ep.down.And(^downUnhealthy)
		p.startChecker(ep)
	}
}

// releaseBreakers lets go of ep's key in the breaker set: its breakers
// leave the set unless another endpoint, of this pool or another,
// holds the same key. It runs once ep has left the set and been drained,
// and when the pool closes.
func (p *Pool) releaseBreakers(ep *Endpoint) {
	if ep.held {
		ep.held = false
		p.breakers.Release(ep.key)
	}
}

// endpointRemoved stops ep's health checker and waits for it to return:
// when its address leaves the DNS answers, and when the pool closes. The
// endpoint keeps its last state for requests still holding it.
func (p *Pool) endpointRemoved(ep *Endpoint) {
	if h := ep.health.Load(); h != nil {
		h.stop()
		<-h.done
	}
}

// setTransport builds the transport of the pool's protocol, and the
// function that builds one for a resolved endpoint.
func (p *Pool) setTransport(u *config.Upstream) error {
	switch u.LoadBalancing {
	case "least_request":
		p.pick = pickLeastRequest
	case "random":
		p.pick = pickRandom
	default:
		p.pick = pickRoundRobin
	}
	switch u.Protocol {
	case "", "http1":
		tlsCfg, err := tlsConfig(u.TLS)
		if err != nil {
			return err
		}
		t := newH1Transport(u, tlsCfg)
		p.transport, p.rt = t, t
		p.newTransport = func(serverName string) upstreamTransport {
			return newH1Transport(u, withServerName(tlsCfg, serverName))
		}
	case "h2c", "grpc":
		t := newH2CTransport(u)
		p.transport, p.rt = t, t
		p.newTransport = func(string) upstreamTransport { return newH2CTransport(u) }
	default:
		tlsCfg, err := tlsConfig(u.TLS)
		if err != nil {
			return err
		}
		t := newTransport(u, tlsCfg)
		p.transport, p.rt = t, t
		p.newTransport = func(serverName string) upstreamTransport {
			return newTransport(u, withServerName(tlsCfg, serverName))
		}
	}
	return nil
}

// endpoints returns the pool's current endpoint set.
func (p *Pool) endpoints() *endpointSet { return p.set.Load() }

// next returns the load balancer's choice in the current set.
func (p *Pool) next() *Endpoint {
	eps := p.endpoints().list
	return eps[p.pick(p, eps)]
}

func pickRoundRobin(p *Pool, eps []*Endpoint) int {
	n := p.rr.Add(1) - 1
	return int(n % uint64(len(eps)))
}

func pickRandom(_ *Pool, eps []*Endpoint) int {
	return rand.IntN(len(eps))
}

// pickLeastRequest is the power of two choices: of two endpoints drawn at
// random, the one with fewer attempts in flight.
func pickLeastRequest(_ *Pool, eps []*Endpoint) int {
	n := len(eps)
	if n == 1 {
		return 0
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	if eps[j].inFlight.Load() < eps[i].inFlight.Load() {
		return j
	}
	return i
}

// LoadBalancing returns the pool's load-balancing policy name.
func (p *Pool) LoadBalancing() string { return p.cfg.LoadBalancing }

// close stops the pool's resolver and its endpoints' health checkers,
// waits for the checkers, lets go of its endpoints' keys in the breaker
// set, and drops the idle connections of the pool and of its endpoints. A snapshot closes a pool it no longer carries twice:
// at once, and after the reload's drain, to close the connections that
// requests still in flight returned meanwhile.
func (p *Pool) close() {
	p.closeOnce.Do(func() {
		if p.res != nil {
			p.res.stop()
		}
		eps := p.endpoints().list
		for _, ep := range eps {
			if h := ep.health.Load(); h != nil {
				h.stop() // all at once, then wait for each
			}
		}
		for _, ep := range eps {
			p.endpointRemoved(ep)
			p.releaseBreakers(ep)
		}
		p.checkers.Wait()
		if p.res != nil {
			p.res.releaseDraining()
		}
	})
	p.transport.CloseIdleConnections()
	for _, ep := range p.endpoints().list {
		if ep.rt != nil {
			ep.rt.CloseIdleConnections()
		}
	}
	if p.res != nil {
		p.res.closeDraining()
	}
}

// dialError marks an error from establishing a connection: the request was
// never sent, so the outcome is connect_error.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialFunc dials an upstream within connect_timeout; its errors are
// *dialError.
func dialFunc(u *config.Upstream) func(ctx context.Context, network, addr string) (net.Conn, error) {
	dialer := &net.Dialer{Timeout: u.ConnectTimeout.D(), KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err}
		}
		return c, nil
	}
}

// newH1Transport is the transport of an HTTP/1.1 upstream: the sidecar's
// own client (internal/h1client), which uses pooled connections on the
// calling goroutine; see docs/design.md, "The HTTP/1.1 engine".
func newH1Transport(u *config.Upstream, tlsCfg *tls.Config) *h1client.Transport {
	return &h1client.Transport{
		DialContext:            dialFunc(u),
		TLSClientConfig:        tlsCfg,
		TLSHandshakeTimeout:    u.ConnectTimeout.D(),
		MaxIdleConnsPerHost:    u.MaxIdleConns,
		IdleConnTimeout:        u.IdleConnTimeout.D(),
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		ExpectContinueTimeout:  expectContinueTimeout,
		ReadBufferSize:         16 << 10,
		WriteBufferSize:        16 << 10,
	}
}

// newH2CTransport is the transport of an h2c or gRPC upstream: the
// sidecar's own HTTP/2 client (internal/h2client), which multiplexes
// calls on pooled connections with one reader goroutine each; see
// docs/design.md, "The HTTP/2 upstream client".
func newH2CTransport(u *config.Upstream) *h2client.Transport {
	return &h2client.Transport{
		DialContext:            dialFunc(u),
		IdleConnTimeout:        u.IdleConnTimeout.D(),
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		ReadBufferSize:         16 << 10,
	}
}

// newTransport is net/http's transport, for h2 (HTTP/2 over TLS)
// upstreams.
func newTransport(u *config.Upstream, tlsCfg *tls.Config) *http.Transport {
	dial := dialFunc(u)
	t := &http.Transport{
		// HTTP/2 frames to an upstream leave in batches (internal/h2conn).
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return h2conn.Client(c), nil
		},
		MaxIdleConnsPerHost:    u.MaxIdleConns,
		IdleConnTimeout:        u.IdleConnTimeout.D(),
		TLSHandshakeTimeout:    u.ConnectTimeout.D(),
		ExpectContinueTimeout:  expectContinueTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		DisableCompression:     true, // pass encodings through untouched
		WriteBufferSize:        16 << 10,
		ReadBufferSize:         16 << 10,
	}
	t.TLSClientConfig = tlsCfg
	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	t.Protocols = protos
	return t
}

// withServerName returns cfg verifying name, unless cfg names one already
// (tls.server_name).
func withServerName(cfg *tls.Config, name string) *tls.Config {
	if cfg.ServerName != "" || name == "" {
		return cfg
	}
	c := cfg.Clone()
	c.ServerName = name
	return c
}

func tlsConfig(c config.TLS) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // opt-in, warned about at start
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file %s: no PEM certificates found", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

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
)

// Upstream connection limits that are not configurable.
const (
	maxResponseHeaderBytes = 1 << 20
	expectContinueTimeout  = time.Second
)

// Pool is an upstream's endpoints, their load balancer and the pooled
// keep-alive transport that reaches them. A Pool lives across reloads while
// its upstream's config is unchanged.
type Pool struct {
	Name      string
	Endpoints []*Endpoint
	cfg       config.Upstream
	pick      func(*Pool) *Endpoint
	rr        atomic.Uint64
	transport interface {
		http.RoundTripper
		CloseIdleConnections()
	}
	rt http.RoundTripper // transport, or a stand-in in benchmarks

	// gated is set when health checks or outlier ejection can make the
	// balancer skip an endpoint (Endpoint.down); without either, pick
	// never looks.
	gated   bool
	health  *healthPolicy  // nil: no active health checks
	outlier *outlierPolicy // nil: no outlier ejection
	clock   Clock
	log     *slog.Logger

	mu       sync.Mutex     // ejection decisions (outlier.go)
	checkers sync.WaitGroup // the endpoints' health checkers
	closed   sync.Once
}

// Endpoint is one address of an upstream.
type Endpoint struct {
	URL      *url.URL
	index    int // in Pool.Endpoints
	inFlight atomic.Int64

	// down is 0 while the endpoint takes traffic, else downUnhealthy
	// and/or downEjected: the one word Route.pick loads per endpoint.
	// An ejection's end is read lazily (outlier.go).
	down    atomic.Uint32
	health  *endpointHealth  // nil without health_check
	outlier *endpointOutlier // nil without outlier
}

// The bits of Endpoint.down.
const (
	downUnhealthy uint32 = 1 << iota // failed its health checks
	downEjected                      // ejected until endpointOutlier.until
)

// InFlight returns the number of attempts in progress to e.
func (e *Endpoint) InFlight() int64 { return e.inFlight.Load() }

// newPool builds the pool of upstream name. Its endpoints' health checkers,
// if any, start at once and run until close.
func newPool(name string, u *config.Upstream, clock Clock, logger *slog.Logger) (*Pool, error) {
	p := &Pool{Name: name, cfg: *u, clock: clock, log: logger}
	if p.clock == nil {
		p.clock = realClock{}
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
		p.Endpoints = append(p.Endpoints, &Endpoint{URL: ep, index: len(p.Endpoints)})
	}
	if err := p.setTransport(u); err != nil {
		return nil, fmt.Errorf("upstream %s: %w", name, err)
	}
	for _, ep := range p.Endpoints {
		p.endpointAdded(ep)
	}
	return p, nil
}

// endpointAdded gives ep the per-endpoint state of the pool's health
// checks and outlier ejection, and starts its health checker. It runs
// once per endpoint, before the endpoint takes traffic.
func (p *Pool) endpointAdded(ep *Endpoint) {
	if p.outlier != nil {
		ep.outlier = &endpointOutlier{}
	}
	if p.health != nil {
		p.startChecker(ep)
	}
}

// endpointRemoved stops ep's health checker and waits for it to return.
// The endpoint keeps its last state for requests still holding it.
func (p *Pool) endpointRemoved(ep *Endpoint) {
	if h := ep.health; h != nil {
		h.stop()
		<-h.done
	}
}

// setTransport builds the transport of the pool's protocol.
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
		t, err := newH1Transport(u)
		if err != nil {
			return err
		}
		p.transport, p.rt = t, t
		return nil
	case "h2c", "grpc":
		t := newH2CTransport(u)
		p.transport, p.rt = t, t
		return nil
	}
	t, err := newTransport(u)
	if err != nil {
		return err
	}
	p.transport, p.rt = t, t
	return nil
}

func pickRoundRobin(p *Pool) *Endpoint {
	n := p.rr.Add(1) - 1
	return p.Endpoints[n%uint64(len(p.Endpoints))]
}

func pickRandom(p *Pool) *Endpoint {
	return p.Endpoints[rand.IntN(len(p.Endpoints))]
}

// pickLeastRequest is the power of two choices: of two endpoints drawn at
// random, the one with fewer attempts in flight.
func pickLeastRequest(p *Pool) *Endpoint {
	n := len(p.Endpoints)
	if n == 1 {
		return p.Endpoints[0]
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := p.Endpoints[i], p.Endpoints[j]
	if b.inFlight.Load() < a.inFlight.Load() {
		return b
	}
	return a
}

// LoadBalancing returns the pool's load-balancing policy name.
func (p *Pool) LoadBalancing() string { return p.cfg.LoadBalancing }

// close stops the endpoints' health checkers, waits for them, and drops
// the pool's idle connections. It may run more than once.
func (p *Pool) close() {
	p.closed.Do(func() {
		for _, ep := range p.Endpoints {
			if h := ep.health; h != nil {
				h.stop() // all at once, then wait for each
			}
		}
		for _, ep := range p.Endpoints {
			p.endpointRemoved(ep)
		}
		p.checkers.Wait()
	})
	p.transport.CloseIdleConnections()
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
func newH1Transport(u *config.Upstream) (*h1client.Transport, error) {
	tlsCfg, err := tlsConfig(u.TLS)
	if err != nil {
		return nil, err
	}
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
	}, nil
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
func newTransport(u *config.Upstream) (*http.Transport, error) {
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
	tlsCfg, err := tlsConfig(u.TLS)
	if err != nil {
		return nil, err
	}
	t.TLSClientConfig = tlsCfg
	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	t.Protocols = protos
	return t, nil
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

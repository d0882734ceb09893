package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/sidecar-proxy/sidecar/telemetry"
)

// DNS re-resolution (docs/policies.md, "DNS re-resolution"): a pool with
// resolve looks up the DNS name of each of its configured endpoints every
// resolve.every, and each address becomes an endpoint of its own, with
// its own breaker, transport and pooled connections. An address that
// vanishes from the answers leaves the endpoint set at once (no new
// request goes to it), and its idle connections are closed once its
// requests in flight have ended: it is drained. A failed or empty answer
// keeps the name's last good addresses.

// Bounds of the resolver's work.
const (
	// maxLookup bounds one lookup of one name (and resolve.every, when
	// shorter).
	maxLookup = 5 * time.Second
	// drainCheck is how often the endpoints being drained are looked at
	// between two resolutions.
	drainCheck = time.Second
	// resolveJitter is the fraction of resolve.every by which each wait
	// is made longer or shorter at random, so that a fleet of sidecars
	// does not query in step.
	resolveJitter = 0.1
)

// lookupFunc returns the addresses of host, as net.Resolver.LookupNetIP
// with network "ip" does.
type lookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

// WithResolver makes the pools of the snapshot that resolve their
// endpoints (resolve.every) look names up with r instead of
// net.DefaultResolver. A snapshot built from a previous one keeps its
// resolver unless given another.
func WithResolver(r *net.Resolver) BuildOption {
	return func(s *Snapshot) {
		s.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		}
	}
}

// resolver re-resolves the names of a pool's endpoints and publishes the
// pool's endpoint set. Its goroutine is started by start and ended by
// stop; resolutions, from the goroutine or from Pool.Resolve, run one at
// a time under mu.
type resolver struct {
	pool   *Pool
	every  time.Duration
	lookup lookupFunc
	log    *slog.Logger
	ins    *telemetry.Instruments

	mu       sync.Mutex
	names    []resolvedName // one per configured endpoint, in order
	draining []*Endpoint    // out of the set, with requests in flight or idle connections
	stopped  bool

	ctx     context.Context // ends when the resolver stops
	cancel  context.CancelFunc
	done    chan struct{} // closed when run returns
	started bool
}

// resolvedName is a configured endpoint and what its name resolved to.
type resolvedName struct {
	ep   *Endpoint   // as configured
	host string      // the name to look up; "" for an IP address, kept as it is
	port string      // the configured port, or the scheme's
	eps  []*Endpoint // the last good answer's, by address; nil before one: ep is used
}

// newResolver returns the resolver of p, or nil when no endpoint of p has
// a name to resolve. It resolves every name once before returning; a name
// that does not resolve is dialed as it is (the transport resolves it at
// each connect) until it does.
func newResolver(p *Pool, every time.Duration, env poolEnv) *resolver {
	r := &resolver{pool: p, every: every, lookup: env.lookup, log: env.log, ins: env.ins, done: make(chan struct{})}
	if r.lookup == nil {
		r.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	hasName := false
	for _, ep := range p.Endpoints {
		n := resolvedName{ep: ep, host: ep.URL.Hostname(), port: ep.URL.Port()}
		if _, err := netip.ParseAddr(n.host); err == nil {
			n.host = ""
		}
		if n.port == "" {
			n.port = "80"
			if ep.URL.Scheme == "https" {
				n.port = "443"
			}
		}
		hasName = hasName || n.host != ""
		r.names = append(r.names, n)
	}
	if !hasName {
		return nil
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.resolveAll(r.ctx, true)
	return r
}

// start starts the resolver's goroutine.
func (r *resolver) start() {
	r.started = true
	go r.run()
}

// stop ends the resolver's goroutine and waits for it. Pool.Resolve does
// nothing afterwards.
func (r *resolver) stop() {
	r.cancel()
	if r.started {
		<-r.done
	}
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

// run resolves every resolve.every (jittered) and looks at the endpoints
// being drained every drainCheck while there are some, until stop.
func (r *resolver) run() {
	defer close(r.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	next := time.Now().Add(r.interval())
	for {
		wait := time.Until(next)
		r.mu.Lock()
		if len(r.draining) > 0 {
			wait = min(wait, drainCheck)
		}
		r.mu.Unlock()
		t.Reset(max(wait, 0))
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		if time.Now().Before(next) {
			r.mu.Lock()
			r.drain()
			r.mu.Unlock()
			continue
		}
		r.resolveAll(r.ctx, false)
		next = time.Now().Add(r.interval())
	}
}

// interval is resolve.every, made up to resolveJitter longer or shorter.
func (r *resolver) interval() time.Duration {
	f := 1 + resolveJitter*(2*rand.Float64()-1)
	return time.Duration(float64(r.every) * f)
}

// Resolve looks the DNS names of the pool's endpoints up now, as the pool
// does every resolve.every, updates its endpoint set from the answers, and
// closes the idle connections of removed endpoints that have no request in
// flight left. It returns the lookups' errors; a name whose lookup failed
// or found no address keeps its last good addresses. It does nothing for a
// pool without resolve, or once the pool is closed.
func (p *Pool) Resolve(ctx context.Context) error {
	if p.res == nil {
		return nil
	}
	return p.res.resolveAll(ctx, false)
}

// resolveAll looks up every name and publishes the endpoint set if an
// answer changed it (except at start, where newPool publishes it), then
// drains what it can.
func (r *resolver) resolveAll(ctx context.Context, first bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return nil
	}
	var errs []error
	changed := false
	for i := range r.names {
		n := &r.names[i]
		if n.host == "" {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, min(r.every, maxLookup))
		addrs, err := r.lookup(lctx, n.host)
		cancel()
		if err != nil && ctx.Err() != nil {
			return ctx.Err() // stopping: neither a failure nor an answer
		}
		if result := resolutionResult(addrs, err); result != "ok" {
			r.ins.DNSResolution(r.pool.Name, result)
			if err == nil {
				err = errNoAddresses
			}
			errs = append(errs, fmt.Errorf("%s: %w", n.host, err))
			switch {
			case n.eps != nil:
				r.log.Warn("DNS resolution failed: the upstream keeps the addresses of the last answer", "upstream", r.pool.Name, "name", n.host, "error", err)
			case first:
				r.log.Warn("DNS resolution failed at start: the endpoint's name is dialed as it is until it resolves", "upstream", r.pool.Name, "name", n.host, "error", err)
			}
			continue
		}
		r.ins.DNSResolution(r.pool.Name, "ok")
		if eps := r.endpointsOf(n, addrs); !sameEndpoints(n.eps, eps) {
			n.eps = eps
			changed = true
		}
	}
	if changed && !first {
		r.publish()
	}
	r.drain()
	return errors.Join(errs...)
}

// errNoAddresses is a lookup's answer that has no address.
var errNoAddresses = errors.New("no addresses")

// resolutionResult is the result label of a lookup: ok, empty (the name
// does not exist, or has no address) or error.
func resolutionResult(addrs []netip.Addr, err error) string {
	var de *net.DNSError
	switch {
	case err == nil && len(addrs) > 0:
		return "ok"
	case err == nil, errors.As(err, &de) && de.IsNotFound:
		return "empty"
	}
	return "error"
}

// endpointsOf returns the endpoints of n's addresses, sorted and without
// repeats, keeping the *Endpoint of an address n already had, or one being
// drained, so that its in-flight count, connections and breaker go on.
func (r *resolver) endpointsOf(n *resolvedName, addrs []netip.Addr) []*Endpoint {
	for i, a := range addrs {
		addrs[i] = a.Unmap().WithZone("")
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	eps := make([]*Endpoint, 0, len(addrs))
	for _, a := range addrs {
		u := &url.URL{Scheme: n.ep.URL.Scheme, Host: net.JoinHostPort(a.String(), n.port)}
		key := u.String()
		var ep *Endpoint
		for _, old := range n.eps {
			if old.key == key {
				ep = old
				break
			}
		}
		if ep == nil {
			for i, old := range r.draining {
				if old.key == key && old.host == n.ep.URL.Host {
					ep = old
					r.draining = slices.Delete(r.draining, i, i+1)
					break
				}
			}
		}
		if ep == nil {
			ep = &Endpoint{URL: u, host: n.ep.URL.Host, key: key, rt: r.pool.newTransport(n.ep.URL.Hostname())}
		}
		eps = append(eps, ep)
	}
	return eps
}

func sameEndpoints(a, b []*Endpoint) bool {
	return a != nil && slices.Equal(a, b)
}

// list is the endpoint set the answers make: each name's addresses in
// configured order, or the configured endpoint for an IP address and a
// name never resolved.
func (r *resolver) list() []*Endpoint {
	var list []*Endpoint
	for _, n := range r.names {
		if n.eps == nil {
			list = append(list, n.ep)
			continue
		}
		for _, ep := range n.eps {
			if !slices.Contains(list, ep) {
				list = append(list, ep)
			}
		}
	}
	return list
}

// publish replaces the pool's endpoint set with list(): endpoints that
// appear are announced before the set is published, those that vanish
// after it, and they are drained.
func (r *resolver) publish() {
	p := r.pool
	old := p.endpoints()
	list := r.list()
	var added, removed []string
	for _, ep := range list {
		if !slices.Contains(old.list, ep) {
			p.endpointAdded(ep)
			added = append(added, ep.key)
		}
	}
	p.set.Store(&endpointSet{list: list, gen: old.gen + 1})
	for _, ep := range old.list {
		if !slices.Contains(list, ep) {
			p.endpointRemoved(ep)
			r.draining = append(r.draining, ep)
			removed = append(removed, ep.key)
		}
	}
	r.log.Info("upstream endpoints changed", "upstream", p.Name, "endpoints", len(list), "added", added, "removed", removed)
}

// drain ends the drain of the removed endpoints with no request in flight
// left: their idle connections are closed, and they let go of their keys
// in the breaker set, whose breakers leave it unless an endpoint of this
// pool or of another upstream still has the same address. A request that
// took the endpoint from the set just before it changed may still start
// on it afterwards; its connection then closes after idle_conn_timeout,
// and its breaker, if the set no longer keeps one, is one of its own.
func (r *resolver) drain() {
	keep := r.draining[:0]
	for _, ep := range r.draining {
		if ep.inFlight.Load() > 0 {
			keep = append(keep, ep)
			continue
		}
		if ep.rt != nil {
			ep.rt.CloseIdleConnections()
		} else {
			// A configured name replaced by its addresses: its
			// connections are in the pool's transport.
			r.pool.transport.CloseIdleConnections()
		}
		r.pool.releaseBreakers(ep)
	}
	clear(r.draining[len(keep):])
	r.draining = keep
}

// releaseDraining lets go of the breaker set keys of the endpoints still
// being drained, when the pool closes.
func (r *resolver) releaseDraining() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ep := range r.draining {
		r.pool.releaseBreakers(ep)
	}
}

// closeDraining closes the idle connections of the endpoints still being
// drained, when the pool closes.
func (r *resolver) closeDraining() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ep := range r.draining {
		if ep.rt != nil {
			ep.rt.CloseIdleConnections()
		}
	}
}

package proxy

import (
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/policy"
)

// Outlier ejection (docs/policies.md, "Outlier ejection"): the attempt loop
// reports every attempt's result at header time (Pool.observe); an
// endpoint that answers consecutive_5xx 5xx or gateway failures in a row is
// ejected (downEjected) for eject_for, doubled on each repeat, unless that
// would eject more than max_ejected_percent of the pool's endpoints or
// leave none usable. An ejection ends by itself: pick compares its end
// with the clock, and the next ejection decision or result clears the bit.

// maxEjection is the longest an ejection lasts, unless eject_for is
// longer; it is also how long an endpoint must go without an ejection for
// the doubling to start again from eject_for.
const maxEjection = 5 * time.Minute

// outlierPolicy is an upstream's compiled outlier block.
type outlierPolicy struct {
	consecutive5xx int64
	ejectFor       time.Duration
	maxEjection    time.Duration // max(maxEjection, ejectFor)
	maxPercent     int
}

func compileOutlier(o *config.Outlier) *outlierPolicy {
	if o == nil {
		return nil
	}
	return &outlierPolicy{
		consecutive5xx: int64(o.Consecutive5xx),
		ejectFor:       o.EjectFor.D(),
		maxEjection:    max(maxEjection, o.EjectFor.D()),
		maxPercent:     o.MaxEjectedPercent,
	}
}

// endpointOutlier is an endpoint's outlier state.
type endpointOutlier struct {
	failures  atomic.Int64 // 5xx and gateway failures in a row
	until     atomic.Int64 // the current or last ejection's end, Unix ns
	ejections atomic.Int64 // since the pool was built

	// Under Pool.mu:
	streak  int       // ejections in a row: the next lasts eject_for << streak
	lastEnd time.Time // the last ejection's end
}

// serverFault reports whether an attempt's result counts towards
// consecutive_5xx: a 5xx answer, a gRPC code that blames the server
// (UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED,
// INTERNAL, UNAVAILABLE, DATA_LOSS), or a gateway failure: connect_error,
// reset or timeout.
func serverFault(o policy.Outcome, status, code int) bool {
	switch o {
	case policy.ConnectError, policy.Reset, policy.Timeout:
		return true
	case policy.Status:
		return status >= 500 || code > 0 && !grpcClientCode(code)
	}
	return false
}

// observe feeds an attempt's result at header time to outlier ejection;
// it does nothing without an outlier block.
func (p *Pool) observe(ep *Endpoint, o policy.Outcome, status, code int) {
	if p.outlier != nil {
		p.observeOutlier(ep, o, status, code)
	}
}

func (p *Pool) observeOutlier(ep *Endpoint, o policy.Outcome, status, code int) {
	eo := ep.outlier
	switch {
	case o.CallersFault():
		return // the app's doing: neither way
	case serverFault(o, status, code):
		if eo.failures.Add(1) >= p.outlier.consecutive5xx {
			p.eject(ep)
		}
	default:
		if eo.failures.Load() != 0 {
			eo.failures.Store(0)
		}
		if ep.down.Load()&downEjected != 0 {
			p.mu.Lock()
			ep.ejected(p.clock.Now()) // clears an ejection that has ended
			p.mu.Unlock()
		}
	}
}

// eject ejects ep unless it is ejected already, max_ejected_percent of the
// endpoints are, or no other endpoint would be left usable. It clears
// the ejections that have ended, on every endpoint.
func (p *Pool) eject(ep *Endpoint) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	eps := p.endpoints().list
	ejected, usableOthers := 0, 0
	for _, e := range eps {
		if e.ejected(now) {
			ejected++
		} else if e.down.Load() == 0 && e != ep {
			usableOthers++
		}
	}
	eo := ep.outlier
	switch {
	case ep.ejected(now):
		return false
	case (ejected+1)*100 > p.outlier.maxPercent*len(eps):
		return false // the ejection would pass max_ejected_percent
	case usableOthers == 0:
		return false // never the last usable endpoint
	}
	if !eo.lastEnd.IsZero() && now.Sub(eo.lastEnd) >= p.outlier.maxEjection {
		eo.streak = 0 // long enough without an ejection: start again
	}
	d := p.outlier.ejectFor << eo.streak
	if d >= p.outlier.maxEjection || d <= 0 {
		d = p.outlier.maxEjection
	} else {
		eo.streak++
	}
	eo.lastEnd = now.Add(d)
	eo.until.Store(eo.lastEnd.UnixNano())
	eo.ejections.Add(1)
	eo.failures.Store(0)
	ep.down.Or(downEjected)
	p.log.Warn("endpoint ejected: skipped by the load balancer", "upstream", p.Name, "endpoint", ep.URL.String(), "for", d.String(), "consecutive_5xx", p.outlier.consecutive5xx)
	return true
}

// ejected reports whether e is ejected at now. Under Pool.mu, it clears
// the bit of an ejection that has ended.
func (e *Endpoint) ejected(now time.Time) bool {
	if e.down.Load()&downEjected == 0 {
		return false
	}
	if now.UnixNano() < e.outlier.until.Load() {
		return true
	}
	e.down.And(^downEjected)
	return false
}

// usable reports whether the balancer may pick ep: neither unhealthy nor
// ejected. It reads one atomic word unless ep is ejected, when it compares
// the ejection's end with the clock.
func (p *Pool) usable(ep *Endpoint) bool {
	d := ep.down.Load()
	return d == 0 || p.usableDown(ep, d)
}

// usableDown is usable for an endpoint whose down word d is not 0: an
// ejection that has ended but is not cleared yet no longer counts.
func (p *Pool) usableDown(ep *Endpoint, d uint32) bool {
	if d&downUnhealthy != 0 {
		return false
	}
	return p.clock.Now().UnixNano() >= ep.outlier.until.Load()
}

package proxy

import (
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/policy"
)

// routePolicy is a route's compiled policy: plain values for the request
// path plus the long-lived state (budget, limiter, in-flight count,
// breakers) that a reload keeps while the route's policy is unchanged.
type routePolicy struct {
	timeout     time.Duration // whole call; 0 means none
	perTry      time.Duration // until response headers; 0 means none
	attempts    int           // 1 without a retry block
	backoff     policy.Backoff
	retryOn     policy.Conditions
	bufferLimit int64
	idemHeader  string // canonical; "" without a retry block
	failureOn   policy.Conditions

	hedge    *hedgePolicy        // nil: no hedging
	budget   *policy.Budget      // nil: no retries
	limiter  *policy.RateLimiter // nil: no rate limit
	inFlight *policy.InFlight    // always counts; caps when max_in_flight > 0
	breakers *routeBreakers      // nil: no breakers
	source   config.Policy       // what it was compiled from, to reuse state on reload
	brk      policy.BreakerSettings
}

// compilePolicy builds a route's policy. State of prev (the route of the
// same name in the previous snapshot) is kept when its policy is unchanged;
// breakers come from the shared set, keyed by endpoint and settings.
func compilePolicy(pc *config.Policy, pool *Pool, prev *Route, breakers *policy.BreakerSet) routePolicy {
	p := routePolicy{
		timeout:  pc.Timeout.D(),
		perTry:   pc.PerTryTimeout.D(),
		attempts: 1,
		source:   *pc,
	}
	if r := pc.Retry; r.Active() {
		p.attempts = r.Attempts
		p.backoff = policy.Backoff{Base: r.Backoff.Base.D(), Max: r.Backoff.Max.D()}
		p.retryOn, _ = policy.ParseConditions(r.On) // validated by config
		p.bufferLimit = int64(r.BufferLimit)
		p.idemHeader = http.CanonicalHeaderKey(r.IdempotencyHeader)
	}
	reuse := prev != nil && reflect.DeepEqual(prev.pol.source, p.source)
	if r := pc.Retry; r.Active() {
		if reuse && prev.pol.budget != nil {
			p.budget = prev.pol.budget
		} else {
			p.budget = policy.NewBudget(r.Budget.Ratio, r.Budget.MinPerSecond, r.Budget.Window.D(), nil)
		}
	}
	if h := pc.Hedge; h != nil && pc.Retry.Active() {
		if reuse && prev.pol.hedge != nil {
			p.hedge = prev.pol.hedge
		} else {
			p.hedge = &hedgePolicy{after: h.After.D(), maxExtra: h.MaxExtra, onPerTry: h.OnPerTryTimeout}
		}
	}
	if l := pc.RateLimit; l.Active() {
		if reuse && prev.pol.limiter != nil {
			p.limiter = prev.pol.limiter
		} else {
			p.limiter = policy.NewRateLimiter(l.RPS, l.Burst, l.MaxWait.D(), nil)
		}
	}
	if reuse {
		p.inFlight = prev.pol.inFlight
	} else {
		p.inFlight = policy.NewInFlight(int64(pc.MaxInFlight))
	}
	if b := pc.CircuitBreaker; b.Active() {
		p.failureOn, _ = policy.ParseConditions(b.FailureOn)
		p.brk = policy.BreakerSettings{
			ConsecutiveFailures: uint32(b.ConsecutiveFailures),
			FailureRatio:        b.FailureRatio,
			MinRequests:         uint32(b.MinRequests),
			Window:              b.Window.D(),
			OpenFor:             b.OpenFor.D(),
			HalfOpenRequests:    uint32(b.HalfOpenRequests),
		}
		p.breakers = newRouteBreakers(breakers, p.brk, pool.endpoints())
	}
	return p
}

// routeBreakers are a route's breakers, one per endpoint of its pool's
// endpoint set, taken from the shared breaker set by endpoint and
// settings. When a resolution changes the pool's set, the first request
// to see the new set builds its table (breakers of endpoints that stay
// are the same *Breaker); until then, reading the table is one atomic
// load. The breaker set keeps only the breakers of endpoints some pool
// holds, so a table built for a set that is stale already (a request
// that read it just before a change) has, for an address drained since,
// a breaker of its own that nobody keeps.
type routeBreakers struct {
	set      *policy.BreakerSet
	settings policy.BreakerSettings
	table    atomic.Pointer[breakerTable]
	mu       sync.Mutex // one table built at a time
}

// breakerTable holds brs[i], the breaker of eps.list[i].
type breakerTable struct {
	eps *endpointSet
	brs []*policy.Breaker
}

func newRouteBreakers(set *policy.BreakerSet, st policy.BreakerSettings, eps *endpointSet) *routeBreakers {
	r := &routeBreakers{set: set, settings: st}
	r.table.Store(r.build(eps))
	return r
}

func (r *routeBreakers) build(eps *endpointSet) *breakerTable {
	t := &breakerTable{eps: eps, brs: make([]*policy.Breaker, len(eps.list))}
	for i, ep := range eps.list {
		t.brs[i] = r.set.Get(ep.key, r.settings)
	}
	return t
}

// of returns the breakers of the endpoints of eps, in its order.
func (r *routeBreakers) of(eps *endpointSet) []*policy.Breaker {
	if t := r.table.Load(); t.eps == eps {
		return t.brs
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.table.Load()
	switch {
	case t.eps == eps:
	case eps.gen < t.eps.gen:
		// A request that read the set before it changed: its table,
		// without replacing the newer one (nor bringing a drained
		// address's breaker back into the set: BreakerSet.Get).
		return r.build(eps).brs
	default:
		t = r.build(eps)
		r.table.Store(t)
	}
	return t.brs
}

// RouteStats are a route's live policy figures, for the admin API.
type RouteStats struct {
	InFlight    int64               `json:"in_flight"`
	MaxInFlight int64               `json:"max_in_flight"` // 0: no cap
	Attempts    int                 `json:"attempts"`
	Budget      *policy.BudgetStats `json:"retry_budget,omitempty"`
	Hedge       *HedgeStats         `json:"hedge,omitempty"`
	RateTokens  *float64            `json:"rate_limit_tokens,omitempty"`
}

// EndpointStats are an endpoint's live figures as seen by a route.
type EndpointStats struct {
	URL string `json:"url"`
	// Name is the DNS name (with its port as configured) the address in
	// URL was resolved from; empty for an endpoint used as configured.
	Name     string        `json:"name,omitempty"`
	InFlight int64         `json:"in_flight"`
	Breaker  *BreakerStats `json:"circuit_breaker,omitempty"`
	// Health is the upstream's health checks' view; nil without
	// health_check.
	Health *HealthStats `json:"health_check,omitempty"`
	// Outlier is outlier ejection's view; nil without outlier.
	Outlier *OutlierStats `json:"outlier,omitempty"`
	// Skipped says why the load balancer passes the endpoint over now:
	// "unhealthy", "ejected", "breaker open", or several of them, comma
	// separated; "" when it does not. When every endpoint is unhealthy
	// or ejected, they take traffic anyway (docs/policies.md).
	Skipped string `json:"skipped,omitempty"`
}

// BreakerStats is a breaker's state and counts in its current window.
type BreakerStats struct {
	State   string               `json:"state"`
	RetryIn string               `json:"retry_in,omitempty"`
	Counts  policy.BreakerCounts `json:"counts"`
}

// Stats returns the route's live policy figures.
func (rt *Route) Stats() RouteStats {
	p := &rt.pol
	st := RouteStats{InFlight: p.inFlight.Current(), MaxInFlight: int64(p.source.MaxInFlight), Attempts: p.attempts}
	if p.budget != nil {
		b := p.budget.Stats()
		st.Budget = &b
	}
	if h := p.hedge; h != nil {
		st.Hedge = &HedgeStats{After: h.after.String(), MaxExtra: h.maxExtra, Sent: h.sent.Load(), Wins: h.wins.Load()}
	}
	if p.limiter != nil {
		tok := p.limiter.Tokens()
		st.RateTokens = &tok
	}
	return st
}

// EndpointStats returns the in-flight attempts of each endpoint of the
// pool's current set and, when the route has breakers, their state.
func (rt *Route) EndpointStats() []EndpointStats {
	set := rt.Pool.endpoints()
	var brs []*policy.Breaker
	if rt.pol.breakers != nil {
		brs = rt.pol.breakers.of(set)
	}
	out := make([]EndpointStats, len(set.list))
	now := rt.Pool.clock.Now()
	for i, ep := range set.list {
		out[i] = EndpointStats{URL: ep.key, Name: ep.host, InFlight: ep.InFlight(), Health: ep.healthStats(), Outlier: ep.outlierStats(now)}
		var skipped []string
		if h := out[i].Health; h != nil && h.State == healthNames[healthUnhealthy] {
			skipped = append(skipped, "unhealthy")
		}
		if o := out[i].Outlier; o != nil && o.Ejected {
			skipped = append(skipped, "ejected")
		}
		if brs != nil {
			b := brs[i]
			bs := &BreakerStats{State: b.State().String(), Counts: b.Counts()}
			if ri := b.RetryIn(); ri > 0 {
				bs.RetryIn = ri.String()
			}
			out[i].Breaker = bs
			if b.State() == policy.BreakerStateOpen {
				skipped = append(skipped, "breaker open")
			}
		}
		out[i].Skipped = strings.Join(skipped, ", ")
	}
	return out
}

// HealthStats are an endpoint's health-check figures.
type HealthStats struct {
	// State is unchecked (no check has ended yet: taken as healthy),
	// healthy or unhealthy.
	State  string `json:"state"`
	Passed int64  `json:"passed"` // checks since the pool was built
	Failed int64  `json:"failed"`
	// LastError is why the last check failed; "" when it passed.
	LastError string `json:"last_error,omitempty"`
}

// OutlierStats are an endpoint's outlier-ejection figures.
type OutlierStats struct {
	Ejected bool `json:"ejected"`
	// Until is when the current ejection ends (RFC 3339), and Left the
	// time until then; "" when not ejected.
	Until string `json:"ejected_until,omitempty"`
	Left  string `json:"ejected_for,omitempty"`
	// Ejections counts the endpoint's ejections since the pool was built.
	Ejections int64 `json:"ejections"`
	// Consecutive5xx is the 5xx answers and gateway failures in a row now.
	Consecutive5xx int64 `json:"consecutive_5xx"`
}

func (e *Endpoint) healthStats() *HealthStats {
	h := e.health.Load()
	if h == nil {
		return nil
	}
	st := &HealthStats{State: healthNames[h.state.Load()], Passed: h.passed.Load(), Failed: h.failed.Load()}
	if msg := h.lastError.Load(); msg != nil {
		st.LastError = *msg
	}
	return st
}

func (e *Endpoint) outlierStats(now time.Time) *OutlierStats {
	o := e.outlier
	if o == nil {
		return nil
	}
	st := &OutlierStats{Ejections: o.ejections.Load(), Consecutive5xx: o.failures.Load()}
	if e.down.Load()&downEjected != 0 {
		if until := time.Unix(0, o.until.Load()); now.Before(until) {
			st.Ejected, st.Until, st.Left = true, until.UTC().Format(time.RFC3339), until.Sub(now).Round(time.Millisecond).String()
		}
	}
	return st
}

// EndpointState is an endpoint's health and ejection, as the pool sees
// them whatever route uses it.
type EndpointState struct {
	URL     string
	Health  *HealthStats  // nil without health_check
	Outlier *OutlierStats // nil without outlier
}

// EndpointStates returns the health and ejection of the endpoints of the
// pool's current set.
func (p *Pool) EndpointStates() []EndpointState {
	now := p.clock.Now()
	eps := p.endpoints().list
	out := make([]EndpointState, len(eps))
	for i, ep := range eps {
		out[i] = EndpointState{URL: ep.key, Health: ep.healthStats(), Outlier: ep.outlierStats(now)}
	}
	return out
}

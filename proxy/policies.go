package proxy

import (
	"net/http"
	"reflect"
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
	breakers []*policy.Breaker   // per pool endpoint; nil: no breakers
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
		for _, ep := range pool.Endpoints {
			p.breakers = append(p.breakers, breakers.Get(ep.URL.String(), p.brk))
		}
	}
	return p
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
	URL      string        `json:"url"`
	InFlight int64         `json:"in_flight"`
	Breaker  *BreakerStats `json:"circuit_breaker,omitempty"`
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

// EndpointStats returns each endpoint's in-flight attempts and, when the
// route has breakers, their state.
func (rt *Route) EndpointStats() []EndpointStats {
	out := make([]EndpointStats, len(rt.Pool.Endpoints))
	for i, ep := range rt.Pool.Endpoints {
		out[i] = EndpointStats{URL: ep.URL.String(), InFlight: ep.InFlight()}
		if rt.pol.breakers != nil {
			b := rt.pol.breakers[i]
			bs := &BreakerStats{State: b.State().String(), Counts: b.Counts()}
			if ri := b.RetryIn(); ri > 0 {
				bs.RetryIn = ri.String()
			}
			out[i].Breaker = bs
		}
	}
	return out
}

package telemetry

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sidecar-proxy/sidecar/policy"
)

// Instruments are the synchronous instruments the proxy records through,
// in its handler and its attempt loop (docs/observability.md lists each).
// Attribute sets come precomputed from a Route, so recording allocates
// nothing.
type Instruments struct {
	serverDuration  metric.Float64Histogram
	clientDuration  metric.Float64Histogram
	active          metric.Int64UpDownCounter
	retries         metric.Int64Counter
	budgetExhausted metric.Int64Counter
	hedges          metric.Int64Counter
	hedgeWins       metric.Int64Counter
	rejected        metric.Int64Counter
	transitions     metric.Int64Counter
	resolutions     metric.Int64Counter
	fsync           metric.Float64Histogram
}

// NewInstruments creates the instruments on m.
func NewInstruments(m metric.Meter) (*Instruments, error) {
	var in Instruments
	var err error
	must := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
	in.serverDuration, e = m.Float64Histogram("http.server.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of the requests the apps make to the sidecar, from their headers to the end of the answer, by route, method, status class and outcome."))
	must(e)
	in.clientDuration, e = m.Float64Histogram("http.client.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of each attempt the sidecar makes to an upstream, retries and deliveries included, by route, method, status class and outcome."))
	must(e)
	in.active, e = m.Int64UpDownCounter("http.server.active_requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests the sidecar is serving, by route."))
	must(e)
	in.retries, e = m.Int64Counter("sidecar.retries",
		metric.WithDescription("Attempts made after a request's earlier attempts failed, by route (hedges are counted in sidecar.hedges)."))
	must(e)
	in.budgetExhausted, e = m.Int64Counter("sidecar.retry_budget.exhausted",
		metric.WithDescription("Retries the route's retry budget refused, by route."))
	must(e)
	in.hedges, e = m.Int64Counter("sidecar.hedges",
		metric.WithDescription("Hedges sent: attempts made while an earlier attempt of the same request still waited for its answer, by route."))
	must(e)
	in.hedgeWins, e = m.Int64Counter("sidecar.hedge.wins",
		metric.WithDescription("Requests whose answer came from a hedge rather than from the attempt it hedged, by route."))
	must(e)
	in.rejected, e = m.Int64Counter("sidecar.requests.rejected",
		metric.WithDescription("Requests refused before any attempt because the route's rate limit (rate_limited) or in-flight cap (overloaded) was reached, by route and reason."))
	must(e)
	in.transitions, e = m.Int64Counter("sidecar.breaker.transitions",
		metric.WithDescription("Circuit breaker changes of state, by endpoint and the state entered."))
	must(e)
	in.resolutions, e = m.Int64Counter("sidecar.dns.resolutions",
		metric.WithDescription("DNS lookups of the names of upstream endpoints (resolve.every), by upstream and result: ok, empty (no such name, or no address) or error."))
	must(e)
	in.fsync, e = m.Float64Histogram("sidecar.spool.fsync.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of each data fsync of the file spool."))
	must(e)
	if err != nil {
		return nil, err
	}
	return &in, nil
}

// BreakerTransition counts an endpoint's breaker entering state to.
func (in *Instruments) BreakerTransition(endpoint, to string) {
	if in == nil {
		return
	}
	in.transitions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("endpoint", endpoint), attribute.String("state", to)))
}

// DNSResolution counts one lookup of a name of upstream's endpoints, by
// result: ok, empty or error.
func (in *Instruments) DNSResolution(upstream, result string) {
	if in == nil {
		return
	}
	in.resolutions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("upstream", upstream), attribute.String("result", result)))
}

// Fsync records one spool fsync of duration d.
func (in *Instruments) Fsync(d time.Duration) {
	if in == nil {
		return
	}
	in.fsync.Record(context.Background(), d.Seconds())
}

// The label values of the request instruments.
var (
	methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER"}
	classes = [...]string{"", "1xx", "2xx", "3xx", "4xx", "5xx"}
)

const (
	numMethods  = len(methods)
	numClasses  = len(classes)
	numOutcomes = int(policy.NumOutcomes) + 1 // the last: spooled
)

// OutcomeSpooled is the outcome label of a request answered 202 because
// it was spooled; every other label is a policy.Outcome's name.
const OutcomeSpooled = "spooled"

func methodIndex(m string) int {
	switch m {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "DELETE":
		return 4
	case "CONNECT":
		return 5
	case "OPTIONS":
		return 6
	case "TRACE":
		return 7
	case "PATCH":
		return 8
	}
	return 9 // _OTHER, as the semantic conventions name it
}

func classIndex(status int) int {
	if status < 100 || status > 599 {
		return 0
	}
	return status / 100
}

// Route holds one route's precomputed attribute sets: the route alone,
// and one per method, status class and outcome, each built the first
// time it is used and kept.
type Route struct {
	in       *Instruments
	name     string
	add      []metric.AddOption // {route}
	rateLim  []metric.AddOption // {route, reason=rate_limited}
	overload []metric.AddOption // {route, reason=overloaded}
	server   attrTable
	client   attrTable
}

type attrTable [numMethods][numClasses][numOutcomes]atomic.Pointer[[]metric.RecordOption]

// Route returns the attribute sets of the route called name; nil (which
// records nothing) when in is nil.
func (in *Instruments) Route(name string) *Route {
	if in == nil {
		return nil
	}
	r := attribute.String("route", name)
	return &Route{
		in:       in,
		name:     name,
		add:      []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(r))},
		rateLim:  []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(r, attribute.String("reason", policy.RateLimited.String())))},
		overload: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(r, attribute.String("reason", policy.Overloaded.String())))},
	}
}

// opts returns the attribute set of (method, status, outcome) from t,
// building it once.
func (r *Route) opts(t *attrTable, method string, status int, outcome int) []metric.RecordOption {
	mi, ci := methodIndex(method), classIndex(status)
	if outcome < 0 || outcome >= numOutcomes {
		outcome = 0
	}
	slot := &t[mi][ci][outcome]
	if p := slot.Load(); p != nil {
		return *p
	}
	name := OutcomeSpooled
	if outcome < int(policy.NumOutcomes) {
		name = policy.Outcome(outcome).String()
	}
	o := []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(
		attribute.String("route", r.name),
		attribute.String("method", methods[mi]),
		attribute.String("status_class", classes[ci]),
		attribute.String("outcome", name),
	))}
	slot.CompareAndSwap(nil, &o)
	return *slot.Load()
}

// OutcomeIndex is the label index of a policy outcome, or of spooled.
func OutcomeIndex(o policy.Outcome, spooled bool) int {
	if spooled {
		return int(policy.NumOutcomes)
	}
	return int(o)
}

// Method is the method as the semantic conventions name it: one of the
// methods of RFC 9110 and PATCH, or _OTHER, so that an app cannot make
// label values or span names up.
func Method(m string) string { return methods[methodIndex(m)] }

// Start counts a request as active on the route.
func (r *Route) Start(ctx context.Context) {
	if r == nil {
		return
	}
	r.in.active.Add(ctx, 1, r.add...)
}

// End records a request that Start counted, which took d and ended with
// status (0: none) and the outcome index (OutcomeIndex), and counts it no
// longer active.
func (r *Route) End(ctx context.Context, method string, status, outcome int, d time.Duration) {
	if r == nil {
		return
	}
	r.in.active.Add(ctx, -1, r.add...)
	r.Record(ctx, method, status, outcome, d)
}

// Record records a request as End does, without counting it active
// before: one that no route took.
func (r *Route) Record(ctx context.Context, method string, status, outcome int, d time.Duration) {
	if r == nil {
		return
	}
	r.in.serverDuration.Record(ctx, d.Seconds(), r.opts(&r.server, method, status, outcome)...)
}

// Attempt records one attempt to an upstream that took d.
func (r *Route) Attempt(ctx context.Context, method string, status int, o policy.Outcome, d time.Duration) {
	if r == nil {
		return
	}
	r.in.clientDuration.Record(ctx, d.Seconds(), r.opts(&r.client, method, status, int(o))...)
}

// Retry counts an attempt after the first.
func (r *Route) Retry(ctx context.Context) {
	if r == nil {
		return
	}
	r.in.retries.Add(ctx, 1, r.add...)
}

// BudgetExhausted counts a retry the budget refused.
func (r *Route) BudgetExhausted(ctx context.Context) {
	if r == nil {
		return
	}
	r.in.budgetExhausted.Add(ctx, 1, r.add...)
}

// Hedge counts a hedge sent.
func (r *Route) Hedge(ctx context.Context) {
	if r == nil {
		return
	}
	r.in.hedges.Add(ctx, 1, r.add...)
}

// HedgeWin counts a request answered by a hedge.
func (r *Route) HedgeWin(ctx context.Context) {
	if r == nil {
		return
	}
	r.in.hedgeWins.Add(ctx, 1, r.add...)
}

// Rejected counts a request refused by the rate limit or the in-flight
// cap; other outcomes are not counted here.
func (r *Route) Rejected(ctx context.Context, o policy.Outcome) {
	if r == nil {
		return
	}
	switch o {
	case policy.RateLimited:
		r.in.rejected.Add(ctx, 1, r.rateLim...)
	case policy.Overloaded:
		r.in.rejected.Add(ctx, 1, r.overload...)
	}
}

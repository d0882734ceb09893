package examples_test

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
)

// config/load_test.go loads every examples/*.yaml. These tests hold the
// annotated examples to what their comments say, so that an edit of a
// value cannot leave its explanation wrong.

func load(t *testing.T, file string) *config.Config {
	t.Helper()
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return cfg
}

// route returns the named route and its policy.
func route(t *testing.T, cfg *config.Config, name string) (*config.Route, *config.Policy) {
	t.Helper()
	for _, l := range cfg.Listeners {
		for _, r := range l.Routes {
			if r.Name == name {
				p := cfg.Policies[r.Policy]
				if p == nil {
					t.Fatalf("route %s: policy %q not found", name, r.Policy)
				}
				return r, p
			}
		}
	}
	t.Fatalf("no route %s", name)
	return nil, nil
}

func TestReadHeavyAPI(t *testing.T) {
	cfg := load(t, "read-heavy-api.yaml")
	u := cfg.Upstreams["catalog"]
	if u.LoadBalancing != "least_request" || len(u.Endpoints) < 2 {
		t.Errorf("catalog: %s over %d endpoints, want least_request over the replicas", u.LoadBalancing, len(u.Endpoints))
	}
	r, p := route(t, cfg, "catalog-reads")
	if !slices.Equal(r.Match.Methods, []string{"GET", "HEAD"}) {
		t.Errorf("catalog-reads: methods %q, want only the idempotent GET and HEAD", r.Match.Methods)
	}
	if !p.Retry.Active() || !slices.Contains(p.Retry.On, "timeout") || !slices.Contains(p.Retry.On, "reset") {
		t.Errorf("reads: retry %+v, want reads retried on resets and timeouts", p.Retry)
	}
	if b := p.Retry.Budget; b.Ratio <= 0 || b.Ratio > 0.5 {
		t.Errorf("reads: retry budget ratio %v", b.Ratio)
	}
	if !p.CircuitBreaker.Active() || p.MaxInFlight == 0 {
		t.Errorf("reads: want a breaker and max_in_flight")
	}
	if 2*p.PerTryTimeout > p.Timeout {
		t.Errorf("reads: per_try_timeout %v leaves no room for a retry within timeout %v", p.PerTryTimeout.D(), p.Timeout.D())
	}
	_, w := route(t, cfg, "catalog-writes")
	if !w.Retry.Active() || !slices.Equal(w.Retry.On, []string{"connect_error"}) {
		t.Errorf("writes: retry on %q, want only connect_error", w.Retry.On)
	}
	// Equal settings share one breaker per endpoint.
	if !reflect.DeepEqual(w.CircuitBreaker, p.CircuitBreaker) {
		t.Errorf("writes: breaker %+v differs from the reads' %+v: they would not share it", w.CircuitBreaker, p.CircuitBreaker)
	}
}

func TestPayments(t *testing.T) {
	cfg := load(t, "payments.yaml")
	for _, name := range []string{"charges", "refunds"} {
		r, p := route(t, cfg, name)
		if r.Async != nil {
			t.Errorf("%s: async: the app needs the charge's result", name)
		}
		if !slices.Equal(r.Match.Methods, []string{"POST"}) {
			t.Errorf("%s: methods %q, want POST", name, r.Match.Methods)
		}
		if !p.Retry.Active() || p.Retry.IdempotencyHeader != "Idempotency-Key" {
			t.Errorf("%s: retry %+v, want retries with Idempotency-Key", name, p.Retry)
		}
		if slices.Contains(p.Retry.On, "500") || slices.Contains(p.Retry.On, "5xx") || slices.Contains(p.Retry.On, "429") {
			t.Errorf("%s: retry on %q: 500 and 429 are not retried", name, p.Retry.On)
		}
		if !p.RateLimit.Active() || p.RateLimit.RPS > 100 || p.RateLimit.MaxWait == 0 {
			t.Errorf("%s: rate limit %+v, want under the quota of 100/s, with a wait", name, p.RateLimit)
		}
		if !p.CircuitBreaker.Active() {
			t.Errorf("%s: no breaker", name)
		}
		if p.Retry.BufferLimit == 0 {
			t.Errorf("%s: buffer_limit 0: no body could be sent again", name)
		}
	}
}

func TestEventIngestion(t *testing.T) {
	cfg := load(t, "event-ingestion.yaml")
	if s := cfg.Spool; s.Backend != "file" || s.Fsync != "always" {
		t.Errorf("spool %s with fsync %s, want the file backend with fsync always", s.Backend, s.Fsync)
	}
	r, p := route(t, cfg, "events")
	a := r.Async
	if a == nil || a.When != "always" {
		t.Fatalf("events: async %+v, want when: always", a)
	}
	if a.Ordering != "none" || a.MaxInFlight < 2 {
		t.Errorf("events: ordering %s with %d in flight", a.Ordering, a.MaxInFlight)
	}
	if p.Retry.Active() {
		t.Errorf("delivery: retries in the policy: the spool retries")
	}
	// max_age, not max_attempts, decides during an outage: the tries one
	// max_age allows, at the shortest pace between them (the open
	// breaker's open_for, or the jittered back-off at its cap: max/2 on
	// average), stay below max_attempts.
	pace := a.Backoff.Max.D() / 2
	if b := p.CircuitBreaker; b.Active() && b.OpenFor.D() < pace {
		pace = b.OpenFor.D()
	}
	if tries := int(a.MaxAge.D() / pace); tries >= a.MaxAttempts {
		t.Errorf("events: about %d tries fit in max_age %v, at least max_attempts %d: max_attempts would dead-letter first", tries, a.MaxAge.D(), a.MaxAttempts)
	}
	if a.MaxAge.D() < 24*time.Hour {
		t.Errorf("events: max_age %v: shorter than an outage worth riding out", a.MaxAge.D())
	}
	if a.MaxBytes == 0 || a.MaxBytes >= cfg.Spool.MaxBytes {
		t.Errorf("events: async.max_bytes %v, want a share of spool.max_bytes %v", a.MaxBytes, cfg.Spool.MaxBytes)
	}
}

func TestGRPC(t *testing.T) {
	cfg := load(t, "grpc.yaml")
	if u := cfg.Upstreams["inventory"]; u.Protocol != "grpc" || len(u.Endpoints) < 2 {
		t.Errorf("inventory: protocol %s with %d endpoints, want grpc over the replicas", u.Protocol, len(u.Endpoints))
	}
	if l := cfg.Listeners[0]; l.Protocol != "h2c" {
		t.Errorf("listener %s: protocol %s, want h2c", l.Name, l.Protocol)
	}
	_, p := route(t, cfg, "inventory")
	if !p.Retry.Active() || !slices.Contains(p.Retry.On, "unavailable") {
		t.Errorf("unary: retry %+v, want retries on unavailable", p.Retry)
	}
	for _, c := range []string{"deadline_exceeded", "internal", "unknown"} {
		if slices.Contains(p.Retry.On, c) {
			t.Errorf("unary: retried on %s: the server may have run the call", c)
		}
	}
	if !p.CircuitBreaker.Active() || !slices.Contains(p.CircuitBreaker.FailureOn, "unavailable") {
		t.Errorf("unary: breaker %+v, want unavailable counted", p.CircuitBreaker)
	}
	if p.Timeout == 0 {
		t.Error("unary: no deadline")
	}
	r, s := route(t, cfg, "inventory-watch")
	if s.Timeout != 0 || s.Retry.Active() {
		t.Errorf("streams: timeout %v, retry %v: want neither", s.Timeout.D(), s.Retry.Active())
	}
	// The watch route must come first: the service's route matches it too.
	for _, rr := range cfg.Listeners[0].Routes {
		if rr == r {
			break
		}
		if rr.Match.GRPCService == r.Match.GRPCService && rr.Match.GRPCMethod == "" {
			t.Errorf("route %s comes before %s and takes its calls", rr.Name, r.Name)
		}
	}
}

func TestEgressForwardProxy(t *testing.T) {
	cfg := load(t, "egress-forward-proxy.yaml")
	if len(cfg.Listeners) != 1 || cfg.Listeners[0].Mode != config.ModeForwardProxy || cfg.Listeners[0].Address != "127.0.0.1:3128" {
		t.Fatalf("listeners: want one forward_proxy listener on 127.0.0.1:3128, the port the comments give")
	}
	connect := map[string]bool{}
	for _, r := range cfg.Listeners[0].Routes {
		connect[r.Name] = r.Connect
		if r.Match.Host == "" {
			t.Errorf("route %s has no match.host", r.Name)
		}
	}
	if !connect["payments-tls"] || connect["inventory"] || connect["events"] {
		t.Errorf("connect: %v, want only payments-tls to tunnel", connect)
	}
	r, p := route(t, cfg, "payments-tls")
	if r.Match.Host != "payments.example.com:443" || p.MaxInFlight == 0 {
		t.Errorf("payments-tls: host %q, max_in_flight %d; want the :443 host and a cap on tunnels", r.Match.Host, p.MaxInFlight)
	}
	if eps := cfg.Upstreams[r.Upstream].Endpoints; len(eps) != 1 || eps[0] != "https://payments.example.com:443" {
		t.Errorf("payments endpoints %q, want the one the tunnel goes to", eps)
	}
	for _, rr := range cfg.Listeners[0].Routes {
		if rr.Name == "events" && (rr.Async == nil || rr.Async.When != "upstream_down") {
			t.Errorf("events: async %+v, want when: upstream_down", rr.Async)
		}
	}
	if d := cfg.Policies["default"]; d == nil || !d.Retry.Active() || !d.CircuitBreaker.Active() {
		t.Errorf("default policy %+v, want retries and a breaker for the routed calls", d)
	}
}

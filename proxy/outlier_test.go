package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// outlierConfig is a config with route "all" to upstream up, whose
// endpoints are UPSTREAM0..n-1, under the outlier block given.
func outlierConfig(n int, outlier string) string {
	eps := make([]string, n)
	for i := range eps {
		eps[i] = fmt.Sprintf("%q", fmt.Sprintf("UPSTREAM%d", i))
	}
	return `
version: 1
upstreams:
  up:
    endpoints: [` + strings.Join(eps, ", ") + `]
    outlier: ` + outlier + `
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`
}

func failing(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }

// ejected returns the indexes of route all's ejected endpoints.
func ejected(sc *sidecar) []int {
	var out []int
	for i, st := range endpointStats(sc, "all") {
		if st.Outlier != nil && st.Outlier.Ejected {
			out = append(out, i)
		}
	}
	return out
}

// TestOutlierMaxEjectedPercent: of 4 endpoints, 3 answer 503; with
// max_ejected_percent 50 only 2 are ejected, at any time, and the healthy
// one never is.
func TestOutlierMaxEjectedPercent(t *testing.T) {
	ups := []*upstream{newUpstream(t, nil), newUpstream(t, failing), newUpstream(t, failing), newUpstream(t, failing)}
	sc := startSidecarBuilt(t, outlierConfig(4, "{consecutive_5xx: 2, eject_for: 1h, max_ejected_percent: 50}"), []BuildOption{WithClock(newFakeClock())}, nil, ups...)
	for i := range 40 {
		get(t, sc.url("/x"))
		if ej := ejected(sc); len(ej) > 2 || len(ej) > 0 && ej[0] == 0 {
			t.Fatalf("after request %d: ejected endpoints %v, want at most 2 and never 0", i+1, ej)
		}
	}
	if ej := ejected(sc); len(ej) != 2 {
		t.Fatalf("after 40 requests: ejected endpoints %v, want 2 of the 3 failing", ej)
	}
	sts := endpointStats(sc, "all")
	for _, i := range ejected(sc) {
		if sts[i].Skipped != "ejected" || sts[i].Outlier.Ejections != 1 || sts[i].Outlier.Left != "1h0m0s" {
			t.Errorf("endpoint %d: %+v %+v, want skipped ejected, 1 ejection, 1h left", i, sts[i], *sts[i].Outlier)
		}
	}
}

// TestOutlierNeverTheLast: with both endpoints failing and
// max_ejected_percent 100, one is ejected and the other keeps taking
// traffic.
func TestOutlierNeverTheLast(t *testing.T) {
	a, b := newUpstream(t, failing), newUpstream(t, failing)
	sc := startSidecarBuilt(t, outlierConfig(2, "{consecutive_5xx: 1, max_ejected_percent: 100}"), []BuildOption{WithClock(newFakeClock())}, nil, a, b)
	for range 20 {
		if resp, _ := get(t, sc.url("/x")); resp.StatusCode != 503 {
			t.Fatalf("GET /x = %d, want the upstream's 503", resp.StatusCode)
		}
	}
	if ej := ejected(sc); len(ej) != 1 {
		t.Fatalf("ejected endpoints %v, want exactly 1", ej)
	}
}

// TestOutlierEjectionDoubles: on the injected clock, a repeat ejection
// lasts twice the one before, up to the 5m cap, and after 5m without an
// ejection the doubling starts again from eject_for. Traffic avoids an
// ejected endpoint and returns when the ejection ends.
func TestOutlierEjectionDoubles(t *testing.T) {
	good, bad := newUpstream(t, nil), newUpstream(t, failing)
	clock := newFakeClock()
	sc := startSidecarBuilt(t, outlierConfig(2, "{consecutive_5xx: 3, eject_for: 40s}"), []BuildOption{WithClock(clock)}, nil, good, bad)
	// ejectNow sends requests until endpoint 1 is ejected, and returns the
	// ejection's length.
	ejectNow := func() time.Duration {
		t.Helper()
		for range 10 {
			get(t, sc.url("/x"))
			if st := endpointStats(sc, "all")[1]; st.Outlier.Ejected {
				d, err := time.ParseDuration(st.Outlier.Left)
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
		}
		t.Fatal("10 requests, 5 of them 503 from endpoint 1: not ejected")
		return 0
	}
	for i, want := range []time.Duration{40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute} {
		if got := ejectNow(); got != want {
			t.Fatalf("ejection %d lasts %v, want %v", i+1, got, want)
		}
		before := bad.count.Load()
		for range 10 {
			get(t, sc.url("/x"))
		}
		if n := bad.count.Load() - before; n != 0 {
			t.Fatalf("ejection %d: the ejected endpoint got %d of 10 requests, want 0", i+1, n)
		}
		clock.Advance(want)
		if ej := ejected(sc); len(ej) != 0 {
			t.Fatalf("ejection %d over: still ejected %v", i+1, ej)
		}
	}
	clock.Advance(5 * time.Minute)
	if got := ejectNow(); got != 40*time.Second {
		t.Fatalf("after 5m without an ejection: ejection lasts %v, want 40s again", got)
	}
	if n := endpointStats(sc, "all")[1].Outlier.Ejections; n != 6 {
		t.Fatalf("ejections = %d, want 6", n)
	}
}

func TestServerFault(t *testing.T) {
	tests := []struct {
		name         string
		o            policy.Outcome
		status, code int
		want         bool
	}{
		{"ok", policy.OK, 200, -1, false},
		{"404", policy.Status, 404, -1, false},
		{"503", policy.Status, 503, -1, true},
		{"500", policy.Status, 500, -1, true},
		{"connect_error", policy.ConnectError, 0, -1, true},
		{"reset", policy.Reset, 0, -1, true},
		{"timeout", policy.Timeout, 0, -1, true},
		{"canceled", policy.Canceled, 0, -1, false},
		{"grpc_unavailable", policy.Status, 200, policy.GRPCUnavailable, true},
		{"grpc_not_found", policy.Status, 200, policy.GRPCNotFound, false},
	}
	for _, tt := range tests {
		if got := serverFault(tt.o, tt.status, tt.code); got != tt.want {
			t.Errorf("%s: serverFault(%v, %d, %d) = %v, want %v", tt.name, tt.o, tt.status, tt.code, got, tt.want)
		}
	}
}

// BenchmarkRoutePick is the balancer's pick of one of four endpoints,
// without and with breakers, outlier ejection and health checks (none
// down, and one of four ejected): the cost per request of the endpoint
// state.
func BenchmarkRoutePick(b *testing.B) {
	for _, bc := range []struct{ name, upstream, policy string }{
		{"no_breaker/plain", "", "{}"},
		{"no_breaker/outlier_none_down", "outlier: {}", "{}"},
		{"no_breaker/outlier_one_ejected", "outlier: {consecutive_5xx: 1, eject_for: 1h}", "{}"},
		{"breaker/plain", "", "{circuit_breaker: {}}"},
		{"breaker/outlier_none_down", "outlier: {}", "{circuit_breaker: {}}"},
		{"breaker/health_none_down", "health_check: {interval: 1h}", "{circuit_breaker: {}}"},
		{"breaker/outlier_one_ejected", "outlier: {consecutive_5xx: 1, eject_for: 1h}", "{circuit_breaker: {}}"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			clock := newFakeClock()
			_, snap := newHandler(b, `
version: 1
upstreams:
  up:
    endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", "http://127.0.0.1:4"]
    `+bc.upstream+`
policies:
  p: `+bc.policy+`
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up, policy: p}
`, nil, WithClock(clock))
			b.Cleanup(func() { snap.Close(nil) })
			rt := snap.Route("all")
			if strings.HasSuffix(bc.name, "one_ejected") {
				rt.Pool.observe(rt.Pool.Endpoints[0], policy.Status, 503, -1)
				if !rt.EndpointStats()[0].Outlier.Ejected {
					b.Fatal("endpoint 0 not ejected")
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				ep, ticket, _ := rt.pick(nil)
				if ep == nil {
					b.Fatal("no endpoint")
				}
				ticket.Done(policy.BreakerSuccess)
			}
		})
	}
}

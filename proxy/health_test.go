package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sidecar-proxy/sidecar/config"
)

// healthUpstream is a loopback upstream whose /healthz answers 503 while
// sick is set, and which counts the other requests it serves.
type healthUpstream struct {
	*upstream
	sick    atomic.Bool
	traffic atomic.Int64
}

func newHealthUpstream(t *testing.T) *healthUpstream {
	h := &healthUpstream{}
	h.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if h.sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		h.traffic.Add(1)
		io.WriteString(w, "ok")
	})
	return h
}

// endpointStats returns route all's view of its endpoints.
func endpointStats(sc *sidecar, route string) []EndpointStats {
	return sc.srv.Snapshot().Route(route).EndpointStats()
}

// TestHealthCheckHTTP: an endpoint whose /healthz starts answering 503 is
// taken out after unhealthy failed checks, traffic avoids it, and it
// comes back after healthy passes. Checks run on the injected clock: one
// tick is one check of each endpoint.
func TestHealthCheckHTTP(t *testing.T) {
	a, b := newHealthUpstream(t), newHealthUpstream(t)
	clock := newFakeClock()
	sc := startSidecarBuilt(t, `
version: 1
upstreams:
  up:
    endpoints: ["UPSTREAM0", "UPSTREAM1"]
    health_check: {path: /healthz, interval: 10s, timeout: 5s, healthy: 2, unhealthy: 3}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`, []BuildOption{WithClock(clock)}, nil, a.upstream, b.upstream)
	tick := func() {
		t.Helper()
		clock.waitArmed(t, 2)
		clock.Advance(12 * time.Second) // past interval + 15%: each checker fires once
		clock.waitArmed(t, 2)           // and has checked, and armed its timer again
	}
	state := func(i int) string {
		st := endpointStats(sc, "all")[i]
		if st.Health == nil {
			t.Fatalf("endpoint %d: no health_check in its stats", i)
		}
		return st.Health.State
	}
	if got := state(1); got != "unchecked" {
		t.Fatalf("before any check: state = %q, want unchecked", got)
	}
	tick()
	if got := state(1); got != "healthy" {
		t.Fatalf("after a passing check: state = %q, want healthy", got)
	}

	b.sick.Store(true)
	for i := 1; i <= 3; i++ {
		tick()
		want := "healthy"
		if i == 3 {
			want = "unhealthy"
		}
		if got := state(1); got != want {
			t.Fatalf("after %d failed checks: state = %q, want %q", i, got, want)
		}
	}
	st := endpointStats(sc, "all")[1]
	if st.Skipped != "unhealthy" || st.Health.LastError != "status 503" || st.Health.Failed != 3 {
		t.Fatalf("unhealthy endpoint's stats = %+v %+v, want skipped unhealthy, last error status 503, 3 failed", st, *st.Health)
	}
	before := b.traffic.Load()
	for range 20 {
		if resp, _ := get(t, sc.url("/x")); resp.StatusCode != 200 {
			t.Fatalf("GET /x = %d, want 200", resp.StatusCode)
		}
	}
	if n := b.traffic.Load() - before; n != 0 {
		t.Fatalf("the unhealthy endpoint got %d of 20 requests, want 0", n)
	}

	b.sick.Store(false)
	tick()
	if got := state(1); got != "unhealthy" {
		t.Fatalf("after 1 passing check of healthy: 2: state = %q, want unhealthy", got)
	}
	tick()
	if got := state(1); got != "healthy" {
		t.Fatalf("after 2 passing checks: state = %q, want healthy", got)
	}
	before = b.traffic.Load()
	for range 20 {
		get(t, sc.url("/x"))
	}
	if n := b.traffic.Load() - before; n != 10 {
		t.Fatalf("the endpoint back in got %d of 20 round-robin requests, want 10", n)
	}
}

// TestHealthCheckAllUnhealthy: when every endpoint is unhealthy, they all
// take traffic anyway rather than none.
func TestHealthCheckAllUnhealthy(t *testing.T) {
	a := newHealthUpstream(t)
	a.sick.Store(true)
	clock := newFakeClock()
	sc := startSidecarBuilt(t, `
version: 1
upstreams:
  up:
    endpoints: ["UPSTREAM0"]
    health_check: {interval: 10s, unhealthy: 1}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`, []BuildOption{WithClock(clock)}, nil, a.upstream)
	clock.waitArmed(t, 1)
	clock.Advance(12 * time.Second)
	clock.waitArmed(t, 1)
	if st := endpointStats(sc, "all")[0]; st.Health.State != "unhealthy" {
		t.Fatalf("state = %q, want unhealthy", st.Health.State)
	}
	if resp, body := get(t, sc.url("/x")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET /x with the only endpoint unhealthy = %d %q, want 200 ok", resp.StatusCode, body)
	}
}

// TestHealthCheckGRPC: grpc: true checks with grpc.health.v1 against a real
// grpc-go health server; NOT_SERVING takes the endpoint out, SERVING
// brings it back.
func TestHealthCheckGRPC(t *testing.T) {
	hs := health.NewServer()
	s := grpc.NewServer()
	healthgrpc.RegisterHealthServer(s, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	clock := newFakeClock()
	sc := startSidecarBuilt(t, `
version: 1
upstreams:
  up:
    endpoints: ["http://`+ln.Addr().String()+`", "http://127.0.0.1:1"]
    protocol: grpc
    health_check: {grpc: true, interval: 10s, timeout: 5s, healthy: 1, unhealthy: 2}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: rpc, match: {path_prefix: /}, upstream: up}
`, []BuildOption{WithClock(clock)}, nil)
	tick := func() {
		t.Helper()
		clock.waitArmed(t, 2)
		clock.Advance(12 * time.Second)
		clock.waitArmed(t, 2)
	}
	state := func() (string, string) {
		st := endpointStats(sc, "rpc")
		return st[0].Health.State, st[1].Health.State
	}
	tick()
	if s0, s1 := state(); s0 != "healthy" || s1 != "healthy" {
		t.Fatalf("after one check: states = %s, %s; want healthy (SERVING), healthy (1 of unhealthy: 2 refused connects)", s0, s1)
	}
	tick()
	if s0, s1 := state(); s0 != "healthy" || s1 != "unhealthy" {
		t.Fatalf("after two checks: states = %s, %s; want healthy, unhealthy (nothing listens)", s0, s1)
	}
	hs.SetServingStatus("", healthgrpc.HealthCheckResponse_NOT_SERVING)
	tick()
	tick()
	st := endpointStats(sc, "rpc")[0]
	if st.Health.State != "unhealthy" || !strings.Contains(st.Health.LastError, "not SERVING") {
		t.Fatalf("NOT_SERVING twice: health = %+v, want unhealthy, last error not SERVING", *st.Health)
	}
	hs.SetServingStatus("", healthgrpc.HealthCheckResponse_SERVING)
	tick()
	if s0, _ := state(); s0 != "healthy" {
		t.Fatalf("SERVING again: state = %s, want healthy", s0)
	}
}

// TestHealthCheckersFollowThePool: a rebuild with the upstream unchanged
// keeps the pool, its checkers and their state, and closing the old
// snapshot does not stop them; a changed upstream's old checkers stop.
// goleak (TestMain) checks that none outlives the test.
func TestHealthCheckersFollowThePool(t *testing.T) {
	a := newHealthUpstream(t)
	a.sick.Store(true)
	clock := newFakeClock()
	build := func(prev *Snapshot, interval string) *Snapshot {
		t.Helper()
		cfg, err := config.Parse("t.yaml", []byte(strings.ReplaceAll(`
version: 1
upstreams:
  up:
    endpoints: ["`+a.URL+`"]
    health_check: {interval: INTERVAL, timeout: 1s, unhealthy: 1}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`, "INTERVAL", interval)), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		s, err := Build(cfg, prev, slog.New(slog.NewTextHandler(io.Discard, nil)), WithClock(clock))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s1 := build(nil, "10s")
	clock.waitArmed(t, 1)
	clock.Advance(12 * time.Second)
	clock.waitArmed(t, 1)
	s2 := build(s1, "10s")
	s1.Close(s2)
	if s2.Pools["up"] != s1.Pools["up"] {
		t.Fatal("rebuilt with the upstream unchanged: a new pool, want the same")
	}
	if got := s2.Route("all").EndpointStats()[0].Health.State; got != "unhealthy" {
		t.Fatalf("after the rebuild: state = %q, want unhealthy (kept)", got)
	}
	clock.Advance(12 * time.Second)
	clock.waitArmed(t, 1) // the checker still runs
	if got := s2.Route("all").EndpointStats()[0].Health.Failed; got != 2 {
		t.Fatalf("failed checks = %d, want 2", got)
	}
	s3 := build(s2, "20s")
	clock.waitArmed(t, 2) // the new pool's checker, and the old one's
	s2.Close(s3)
	clock.waitArmed(t, 1) // the old one stopped
	if got := s3.Route("all").EndpointStats()[0].Health.State; got != "unchecked" {
		t.Fatalf("changed upstream: state = %q, want unchecked (new pool)", got)
	}
	s3.Close(nil)
	clock.waitArmed(t, 0)
}

// TestBuildErrorStopsCheckers: a Build that fails after making a pool
// with health checks stops its checkers (goleak would catch them).
func TestBuildErrorStopsCheckers(t *testing.T) {
	cfg, err := config.Parse("t.yaml", []byte(`
version: 1
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"], health_check: {}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listeners[0].Routes[0].Upstream = "gone" // past validation: Build's own error
	clock := newFakeClock()
	if _, err := Build(cfg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), WithClock(clock)); err == nil {
		t.Fatal("Build with an unknown upstream = nil error")
	}
	clock.waitArmed(t, 0)
}

func TestGRPCHealthAnswer(t *testing.T) {
	frame := func(msg ...byte) string {
		return string(append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...))
	}
	tests := []struct {
		name    string
		body    string
		trailer string
		wantErr string
	}{
		{"serving", frame(0x08, 0x01), "0", ""},
		{"not_serving", frame(0x08, 0x02), "0", "not SERVING"},
		{"unknown_field_skipped", frame(0x12, 0x01, 'x', 0x08, 0x01), "0", ""},
		{"empty_message_is_unknown", frame(), "0", "not SERVING"},
		{"error_status", "", "14", "grpc-status"},
		{"truncated", frame(0x08, 0x01)[:6], "0", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tt.body)), Trailer: http.Header{"Grpc-Status": {tt.trailer}}}
			err := grpcHealthAnswer(resp)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("grpcHealthAnswer(%q, grpc-status %s) = %v, want %q", tt.body, tt.trailer, err, tt.wantErr)
			}
		})
	}
}

// TestJitter: check intervals spread over ±15% of the interval.
func TestJitter(t *testing.T) {
	const d = 10 * time.Second
	lo, hi := d, time.Duration(0)
	for range 2000 {
		j := jitter(d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < 8500*time.Millisecond || hi > 11500*time.Millisecond || hi-lo < 2500*time.Millisecond {
		t.Fatalf("jitter(%v) over 2000 draws spans [%v, %v], want within [8.5s, 11.5s] and spread over most of it", d, lo, hi)
	}
}

// TestHealthStateSurvivesReload: Server.Reload with the upstream unchanged
// (a route changed) keeps the endpoint's unhealthy state and its running
// checker.
func TestHealthStateSurvivesReload(t *testing.T) {
	a, b := newHealthUpstream(t), newHealthUpstream(t)
	b.sick.Store(true)
	clock := newFakeClock()
	const yaml = `
version: 1
upstreams:
  up:
    endpoints: ["UPSTREAM0", "UPSTREAM1"]
    health_check: {interval: 10s, unhealthy: 1}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: PREFIX}, upstream: up}
`
	sc := startSidecarBuilt(t, strings.Replace(yaml, "PREFIX", "/", 1), []BuildOption{WithClock(clock)}, nil, a.upstream, b.upstream)
	clock.waitArmed(t, 2)
	clock.Advance(12 * time.Second)
	clock.waitArmed(t, 2)
	if st := endpointStats(sc, "all")[1]; st.Health.State != "unhealthy" {
		t.Fatalf("before the reload: state = %q, want unhealthy", st.Health.State)
	}
	y := strings.NewReplacer("PREFIX", "/x", "UPSTREAM0", a.URL, "UPSTREAM1", b.URL).Replace(yaml)
	next := buildFrom(t, y, sc.srv.Snapshot())
	if err := sc.srv.Reload(next, 0); err != nil {
		t.Fatal(err)
	}
	if st := endpointStats(sc, "all")[1]; st.Health.State != "unhealthy" {
		t.Fatalf("after the reload: state = %q, want unhealthy (kept)", st.Health.State)
	}
	before := b.traffic.Load()
	for range 10 {
		get(t, sc.url("/x"))
	}
	if n := b.traffic.Load() - before; n != 0 {
		t.Fatalf("after the reload the unhealthy endpoint got %d of 10 requests, want 0", n)
	}
	b.sick.Store(false)
	clock.Advance(12 * time.Second) // the same checkers, still running
	clock.waitArmed(t, 2)
	clock.Advance(12 * time.Second) // healthy: 2 (the default)
	clock.waitArmed(t, 2)
	if st := endpointStats(sc, "all")[1]; st.Health.State != "healthy" {
		t.Fatalf("after two passing checks: state = %q, want healthy", st.Health.State)
	}
}

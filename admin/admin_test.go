package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

type fixedSource struct{ snap *proxy.Snapshot }

func (f fixedSource) Snapshot() *proxy.Snapshot { return f.snap }

func newTestAdmin(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	snap := proxytest.Snapshot(t, `
version: 1
spool: {jetstream: {password: hunter2}}
upstreams:
  inv: {endpoints: ["http://127.0.0.1:8080", "http://127.0.0.1:8081"], load_balancing: least_request}
policies:
  default: {timeout: 3s, per_try_timeout: 1s, retry: {}, hedge: {after: 1s}, circuit_breaker: {}, rate_limit: {rps: 10, burst: 5}, max_in_flight: 7}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: reads, match: {path_prefix: /items, methods: [GET], headers: {authorization: Bearer-secret}}, upstream: inv}
`)
	return newMetricsAdmin(t, fixedSource{snap})
}

func call(t *testing.T, ts *httptest.Server, path, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.URL+path, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHealthAndReadiness(t *testing.T) {
	s, ts := newTestAdmin(t)
	if code, _ := call(t, ts, "/healthz", ""); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := call(t, ts, "/readyz", ""); code != 503 {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	s.SetReady(true)
	if code, _ := call(t, ts, "/readyz", ""); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	s.SetReady(false)
	if code, _ := call(t, ts, "/readyz", ""); code != 503 {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
}

func TestConfigIsRedacted(t *testing.T) {
	_, ts := newTestAdmin(t)
	code, body := call(t, ts, "/v1/config", "")
	if code != 200 {
		t.Fatalf("/v1/config = %d", code)
	}
	for _, secret := range []string{"hunter2", "Bearer-secret"} {
		if strings.Contains(body, secret) {
			t.Errorf("/v1/config shows secret %q:\n%s", secret, body)
		}
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["shutdown_grace"] != "15s" || cfg["version"] != 1.0 {
		t.Errorf("/v1/config lacks effective defaults: %v %v", cfg["shutdown_grace"], cfg["version"])
	}
}

func TestRoutes(t *testing.T) {
	_, ts := newTestAdmin(t)
	code, body := call(t, ts, "/v1/routes", "")
	var got struct {
		Routes []struct {
			Name, Listener, Upstream, Policy string
			Mode                             string `json:"listener_mode"`
			Connect                          *bool  `json:"connect"`
			Timeout                          string `json:"timeout"`
			PerTry                           string `json:"per_try_timeout"`
			LB                               string `json:"load_balancing"`
			Match                            map[string]any
			Stats                            struct {
				InFlight    *int64         `json:"in_flight"`
				MaxInFlight int64          `json:"max_in_flight"`
				Attempts    int            `json:"attempts"`
				Budget      map[string]any `json:"retry_budget"`
				Hedge       map[string]any `json:"hedge"`
				Tokens      *float64       `json:"rate_limit_tokens"`
			}
			Endpoints []struct {
				URL      string `json:"url"`
				InFlight int64  `json:"in_flight"`
				Breaker  struct {
					State  string         `json:"state"`
					Counts map[string]any `json:"counts"`
				} `json:"circuit_breaker"`
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || len(got.Routes) != 1 {
		t.Fatalf("/v1/routes = %d %s (%v)", code, body, err)
	}
	r := got.Routes[0]
	if r.Name != "reads" || r.Listener != "app" || r.Upstream != "inv" || r.Policy != "default" || r.Timeout != "3s" || r.PerTry != "1s" || r.LB != "least_request" || len(r.Endpoints) != 2 || r.Match["path_prefix"] != "/items" || r.Mode != "reverse_proxy" || r.Connect == nil || *r.Connect {
		t.Errorf("/v1/routes route = %+v", r)
	}
	if st := r.Stats; st.InFlight == nil || st.MaxInFlight != 7 || st.Attempts != 3 || st.Budget == nil || st.Tokens == nil || *st.Tokens != 5 {
		t.Errorf("/v1/routes stats = %+v, want in-flight, cap 7, 3 attempts, budget and 5 tokens", st)
	}
	if h := r.Stats.Hedge; h["after"] != "1s" || h["max_extra"] != 1.0 || h["sent"] != 0.0 || h["wins"] != 0.0 {
		t.Errorf("/v1/routes stats.hedge = %v, want after 1s, max_extra 1, none sent or won", h)
	}
	for _, ep := range r.Endpoints {
		if ep.Breaker.State != "closed" || ep.Breaker.Counts == nil {
			t.Errorf("/v1/routes endpoint %s breaker = %+v, want closed with counts", ep.URL, ep.Breaker)
		}
	}
	if strings.Contains(body, "Bearer-secret") {
		t.Errorf("/v1/routes shows a credential header's value: %s", body)
	}
}

// TestConfigAndRoutesHideMatchHeadersAndEnv checks that neither
// /v1/config nor /v1/routes shows a match header's value, whatever the
// header's name, or any value that came from ${NAME}.
func TestConfigAndRoutesHideMatchHeadersAndEnv(t *testing.T) {
	env := map[string]string{"INTERNAL_AUTH": "leak-SECRET-1", "PREFIX": "/leak-SECRET-2", "NATS_URL": "nats://svc:leak-SECRET-3@127.0.0.1:4222"}
	cfg, err := config.Parse("h.yaml", []byte(`
version: 1
spool: {jetstream: {url: "${NATS_URL}"}}
upstreams: {inv: {endpoints: ["http://127.0.0.1:8080"]}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: plain, upstream: inv, match: {path_prefix: /plain, headers: {x-internal-auth: literal-SECRET-4, x-tenant: acme-SECRET-5}}}
      - {name: fromenv, upstream: inv, match: {path_prefix: "${PREFIX}", methods: [GET], headers: {x-internal-auth: "${INTERNAL_AUTH}"}}}
`), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	snap, err := proxy.Build(cfg, nil, proxytest.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(New(fixedSource{snap}, proxytest.Discard).Handler())
	defer ts.Close()
	for _, path := range []string{"/v1/config", "/v1/routes"} {
		code, body := call(t, ts, path, "")
		if code != 200 {
			t.Fatalf("%s = %d %s", path, code, body)
		}
		if strings.Contains(body, "SECRET") {
			t.Errorf("%s shows a secret:\n%s", path, body)
		}
		for _, want := range []string{`"x-internal-auth": "[redacted]"`, `"x-tenant": "[redacted]"`, `"path_prefix": "/plain"`, `"path_prefix": "[redacted]"`} {
			if !strings.Contains(body, want) {
				t.Errorf("%s lacks %s:\n%s", path, want, body)
			}
		}
	}
}

func TestLoopbackHostOnly(t *testing.T) {
	_, ts := newTestAdmin(t)
	for _, host := range []string{"evil.example", "evil.example:9901", "10.0.0.1", "[::2]", "[evil.example]", "[]"} {
		if code, _ := call(t, ts, "/v1/config", host); code != 403 {
			t.Errorf("/v1/config with Host %q = %d, want 403", host, code)
		}
	}
	for _, host := range []string{"localhost:9901", "127.0.0.1", "[::1]:9901", "[::1]", "localhost"} {
		if code, _ := call(t, ts, "/healthz", host); code != 200 {
			t.Errorf("/healthz with Host %q = %d, want 200", host, code)
		}
	}
}

type spoolSource struct {
	fixedSource
	st spool.Store
}

func (s spoolSource) Spool() spool.Store { return s.st }

func TestSpoolStats(t *testing.T) {
	snap := proxytest.Snapshot(t, `
version: 1
spool: {dir: ./unused}
upstreams:
  up: {endpoints: ["http://127.0.0.1:8080"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /ev}, upstream: up, async: {}}
      - {name: idle, match: {path_prefix: /idle}, upstream: up, async: {}}
`)
	logger := proxytest.Discard
	st, err := spool.OpenFile(t.TempDir(), spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for range 3 {
		if err := st.Append(ctx, &spool.Message{Route: "ev", Method: "POST", Target: "/ev", Arrived: time.Now().Add(-time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	m, _, _ := st.Next("ev", time.Now())
	if err := st.DeadLetter(m.ID, "test"); err != nil {
		t.Fatal(err)
	}

	ts := httptest.NewServer(New(spoolSource{fixedSource{snap}, st}, logger).Handler())
	t.Cleanup(ts.Close)
	code, body := call(t, ts, "/v1/spool", "")
	var got struct {
		Routes map[string]struct {
			Depth, Dead, Bytes int64
			OldestAgeSeconds   float64 `json:"oldest_age_seconds"`
		}
	}
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("GET /v1/spool = %d %s (%v), want 200 JSON", code, body, err)
	}
	ev, idle := got.Routes["ev"], got.Routes["idle"]
	if ev.Depth != 2 || ev.Dead != 1 || ev.Bytes <= 0 || ev.OldestAgeSeconds < 59 {
		t.Errorf("route ev = %+v, want depth 2, dead 1, bytes > 0, oldest age about 60s", ev)
	}
	if _, ok := got.Routes["idle"]; !ok || idle.Depth != 0 {
		t.Errorf("route idle = %+v (listed %v), want listed with depth 0", idle, ok)
	}

	_, ts2 := newTestAdmin(t)
	if code, _ := call(t, ts2, "/v1/spool", ""); code != http.StatusNotFound {
		t.Errorf("GET /v1/spool without a spool = %d, want 404", code)
	}
}

// checkedStore is a store that reports whether it can store messages, as
// a JetStream store does while its server is unreachable.
type checkedStore struct {
	spool.Store
	down atomic.Bool
}

func (c *checkedStore) Ready() error {
	if c.down.Load() {
		return errors.New("spool: not connected to the server")
	}
	return nil
}

func TestReadinessFollowsTheSpool(t *testing.T) {
	st, err := spool.OpenFile(t.TempDir(), spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cs := &checkedStore{Store: st}
	s, ts := newMetricsAdmin(t, spoolSource{fixedSource{newTestSnapshot(t)}, cs})
	s.SetReady(true)
	if code, _ := call(t, ts, "/readyz", ""); code != 200 {
		t.Errorf("/readyz with the spool up = %d, want 200", code)
	}
	cs.down.Store(true)
	if code, body := call(t, ts, "/readyz", ""); code != 503 || !strings.Contains(body, "not connected") {
		t.Errorf("/readyz with the spool down = %d %s, want 503 with the reason", code, body)
	}
	if v := value(t, scrape(t, ts.URL), "sidecar_ready"); v != 0 {
		t.Errorf("/metrics with the spool down: sidecar_ready = %v, want 0", v)
	}
	cs.down.Store(false)
	if code, _ := call(t, ts, "/readyz", ""); code != 200 {
		t.Errorf("/readyz with the spool back = %d, want 200", code)
	}
}

// Unknown paths and methods get JSON errors too.
func TestUnknownPathsAnswerJSON(t *testing.T) {
	_, ts := newTestAdmin(t)
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/nope", 404},
		{"GET", "/v1/spool/messages/x/y/z", 404},
		{"DELETE", "/v1/config", 405},
		{"PUT", "/v1/reload", 405},
	} {
		code, body := do(t, ts, c.method, c.path, "") // do checks the JSON content type
		if code != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s = %d %s, want %d with a JSON error", c.method, c.path, code, body, c.want)
		}
	}
}

// /v1/routes names every figure in snake_case, the budget's and the
// breaker counts' too.
func TestRoutesKeysSnakeCase(t *testing.T) {
	_, ts := newTestAdmin(t)
	code, body := do(t, ts, "GET", "/v1/routes", "")
	if code != 200 {
		t.Fatalf("GET /v1/routes = %d", code)
	}
	for _, key := range []string{`"retry_budget"`, `"available"`, `"retries"`, `"consecutive_failures"`, `"successes"`} {
		if !strings.Contains(body, key) {
			t.Errorf("GET /v1/routes has no %s:\n%s", key, body)
		}
	}
	for _, key := range []string{`"Available"`, `"ConsecutiveFailures"`, `"Requests"`} {
		if strings.Contains(body, key) {
			t.Errorf("GET /v1/routes has %s, want snake_case", key)
		}
	}
}

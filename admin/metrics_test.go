package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry"
	"github.com/sidecar-proxy/sidecar/telemetry/telemetrytest"
)

// metricsConfig is a config with async routes ev and idle (ordering
// fifo) to UPSTREAM, and the spool and telemetry blocks given (YAML flow
// mapping bodies).
func metricsConfig(upstream, spoolBlock, telemetryBlock string) string {
	return `
version: 1
spool: {dir: ./unused, ` + spoolBlock + `}
telemetry: {` + telemetryBlock + `}
upstreams:
  up: {endpoints: ["` + upstream + `"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /ev}, upstream: up, async: {when: always, backoff: {base: 5ms, max: 20ms}, rate: {per_second: 10000, burst: 100}, dedupe_window: 1m}}
      - {name: idle, match: {path_prefix: /idle}, upstream: up, async: {}}
`
}

// wantTypes is the TYPE of every family the admin API observes.
var wantTypes = map[string]string{
	"sidecar_ready":                            "gauge",
	"sidecar_goroutines":                       "gauge",
	"sidecar_route_in_flight":                  "gauge",
	"sidecar_spool_messages":                   "gauge",
	"sidecar_spool_bytes":                      "gauge",
	"sidecar_spool_oldest_pending_age_seconds": "gauge",
	"sidecar_spool_orphaned_messages":          "gauge",
	"sidecar_spool_appends_total":              "counter",
	"sidecar_spool_fsyncs_total":               "counter",
	"sidecar_spool_write_errors_total":         "counter",
	"sidecar_spool_fsync_errors_total":         "counter",
	"sidecar_spool_failed":                     "gauge",
	"sidecar_spool_reopens_total":              "counter",
	"sidecar_spool_corrupt_records_total":      "counter",
	"sidecar_spool_torn_tail_truncated":        "gauge",
	"sidecar_spool_segments":                   "gauge",
	"sidecar_spool_fsync_loss_window_seconds":  "gauge",
	"sidecar_spool_deliveries_total":           "counter",
	"sidecar_spool_head_blocked":               "gauge",
	"sidecar_spool_head_attempts":              "gauge",
	"sidecar_spool_head_next_attempt_seconds":  "gauge",
	"sidecar_async_deduplicated_total":         "counter",
	"sidecar_spool_deliveries_paced_total":     "counter",
	"sidecar_spool_delivery_rate_per_second":   "gauge",
}

// checkTypes checks that e has every family of wantTypes with its TYPE,
// and no other.
func checkTypes(t *testing.T, e *telemetrytest.Exposition) {
	t.Helper()
	for name, typ := range wantTypes {
		if e.Types[name] != typ {
			t.Errorf("TYPE of %s = %q, want %s", name, e.Types[name], typ)
		}
	}
	for name := range e.Types {
		if _, ok := wantTypes[name]; !ok {
			t.Errorf("unexpected family %s (%s) in the scrape", name, e.Types[name])
		}
	}
}

// newProvider returns a telemetry provider built from cfg, shut down
// when the test ends.
func newProvider(t *testing.T, cfg config.Telemetry, opts ...telemetry.Option) *telemetry.Provider {
	t.Helper()
	p, err := telemetry.New(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatalf("telemetry.New = %v", err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	return p
}

// newMetricsAdmin returns an admin Server for src with a telemetry
// provider built from src's configuration, served by a test server; the
// Server is shut down (its observations unregistered) when the test ends.
func newMetricsAdmin(t *testing.T, src Source) (*Server, *httptest.Server) {
	t.Helper()
	p := newProvider(t, src.Snapshot().Config.Telemetry)
	s := New(src, proxytest.Discard, WithTelemetry(p))
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		s.Shutdown(context.Background())
	})
	return s, ts
}

// scrape GETs /metrics, checks the answer's format and returns it parsed.
func scrape(t *testing.T, url string) *telemetrytest.Exposition {
	t.Helper()
	return telemetrytest.Scrape(t, url+"/metrics")
}

// value returns a sample of e, failing t when it is missing.
func value(t *testing.T, e *telemetrytest.Exposition, name string, labels ...string) float64 {
	t.Helper()
	v, ok := e.Value(name, labels...)
	if !ok {
		t.Fatalf("no sample %s in the scrape", telemetrytest.Key(name, labels...))
	}
	return v
}

func openTestStore(t *testing.T, opts spool.FileOptions) *spool.FileStore {
	t.Helper()
	st, err := spool.OpenFile(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("OpenFile = %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestMetricsSpoolDepth(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", ""))
	st := openTestStore(t, spool.FileOptions{})
	s, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})

	e := scrape(t, ts.URL)
	for _, name := range []string{
		"sidecar_ready", "sidecar_route_in_flight", "sidecar_spool_messages", "sidecar_spool_bytes",
		"sidecar_spool_oldest_pending_age_seconds", "sidecar_spool_failed", "sidecar_spool_torn_tail_truncated",
		"sidecar_spool_segments", "sidecar_spool_fsync_loss_window_seconds",
	} {
		if e.Types[name] != "gauge" {
			t.Errorf("TYPE of %s = %q, want gauge", name, e.Types[name])
		}
	}
	for _, name := range []string{
		"sidecar_spool_appends_total", "sidecar_spool_fsyncs_total", "sidecar_spool_write_errors_total",
		"sidecar_spool_fsync_errors_total", "sidecar_spool_corrupt_records_total", "sidecar_spool_reopens_total",
	} {
		if e.Types[name] != "counter" {
			t.Errorf("TYPE of %s = %q, want counter", name, e.Types[name])
		}
	}
	for _, route := range []string{"ev", "idle"} {
		if v := value(t, e, "sidecar_spool_messages", "route", route, "state", "pending"); v != 0 {
			t.Errorf("empty spool: %s pending = %v, want 0", route, v)
		}
	}

	ctx := context.Background()
	for range 3 {
		m := &spool.Message{Route: "ev", Method: "POST", Target: "/ev", Body: []byte("x"), Arrived: time.Now().Add(-time.Minute)}
		if err := st.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// A message of a route the configuration does not have: orphaned.
	if err := st.Append(ctx, &spool.Message{Route: "gone", Method: "POST", Target: "/gone"}); err != nil {
		t.Fatal(err)
	}
	e = scrape(t, ts.URL)
	if v := value(t, e, "sidecar_spool_orphaned_messages", "route", "gone"); v != 1 {
		t.Errorf("a removed route's message: orphaned_messages = %v, want 1", v)
	}
	if v := value(t, e, "sidecar_spool_orphaned_messages", "route", "ev"); v != 0 {
		t.Errorf("an async route's messages: orphaned_messages = %v, want 0", v)
	}
	if v := value(t, e, "sidecar_spool_messages", "route", "ev", "state", "pending"); v != 3 {
		t.Errorf("after 3 appends: ev pending = %v, want 3", v)
	}
	if v := value(t, e, "sidecar_spool_appends_total"); v != 4 {
		t.Errorf("after 4 appends: appends_total = %v, want 4", v)
	}
	if v := value(t, e, "sidecar_spool_fsyncs_total"); v < 1 {
		t.Errorf("after 3 appends with fsync always: fsyncs_total = %v, want at least 1", v)
	}
	if v := value(t, e, "sidecar_spool_bytes", "route", "ev"); v <= 0 {
		t.Errorf("after 3 appends: ev bytes = %v, want > 0", v)
	}
	if v := value(t, e, "sidecar_spool_oldest_pending_age_seconds", "route", "ev"); v < 59 {
		t.Errorf("oldest pending age = %v, want about 60s", v)
	}
	if v := value(t, e, "sidecar_spool_segments"); v < 1 {
		t.Errorf("segments = %v, want at least 1", v)
	}

	m, _, _ := st.Next("ev", time.Now())
	if err := st.Ack(m.ID); err != nil {
		t.Fatal(err)
	}
	m, _, _ = st.Next("ev", time.Now())
	if err := st.DeadLetter(m.ID, "test"); err != nil {
		t.Fatal(err)
	}
	e = scrape(t, ts.URL)
	if p, d := value(t, e, "sidecar_spool_messages", "route", "ev", "state", "pending"), value(t, e, "sidecar_spool_messages", "route", "ev", "state", "dead"); p != 1 || d != 1 {
		t.Errorf("after an ack and a dead letter: ev pending %v dead %v, want 1 and 1", p, d)
	}
	if v := value(t, e, "sidecar_spool_messages", "route", "idle", "state", "pending"); v != 0 {
		t.Errorf("idle pending = %v, want 0", v)
	}
	if v := value(t, e, "sidecar_goroutines"); v < 1 {
		t.Errorf("sidecar_goroutines = %v, want the process's count", v)
	}
	if v := value(t, e, "sidecar_ready"); v != 0 {
		t.Errorf("sidecar_ready before SetReady = %v, want 0", v)
	}
	s.SetReady(true)
	if v := value(t, scrape(t, ts.URL), "sidecar_ready"); v != 1 {
		t.Errorf("sidecar_ready after SetReady(true) = %v, want 1", v)
	}
}

func TestMetricsFsyncLossWindow(t *testing.T) {
	tests := []struct {
		name   string
		spool  string
		opts   spool.FileOptions
		window float64
	}{
		{"always", "fsync: always", spool.FileOptions{}, 0},
		{"default is always", "", spool.FileOptions{}, 0},
		{"interval", "fsync: interval, fsync_interval: 200ms", spool.FileOptions{Fsync: spool.FsyncInterval, Interval: 200 * time.Millisecond}, 0.2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", tt.spool, ""))
			st := openTestStore(t, tt.opts)
			_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
			if v := value(t, scrape(t, ts.URL), "sidecar_spool_fsync_loss_window_seconds"); v != tt.window {
				t.Errorf("spool {%s}: fsync_loss_window_seconds = %v, want %v", tt.spool, v, tt.window)
			}
		})
	}
}

// TestMetricsLossWindowUnknownOnJetStream: with the JetStream backend the
// servers' sync_interval decides the window, so the gauge is left out
// rather than claiming 0.
func TestMetricsLossWindowUnknownOnJetStream(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", `backend: jetstream, jetstream: {url: "nats://127.0.0.1:4222"}`, ""))
	st := openTestStore(t, spool.FileOptions{})
	_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
	e := scrape(t, ts.URL)
	if v, ok := e.Value("sidecar_spool_fsync_loss_window_seconds"); ok {
		t.Errorf("jetstream: fsync_loss_window_seconds = %v, want it left out", v)
	}
	value(t, e, "sidecar_spool_appends_total")
}

// failingFS is the real file system whose file syncs fail once failing
// is set, like a disk that has gone bad.
type failingFS struct {
	spool.OSFS
	failing atomic.Bool
}

func (f *failingFS) OpenFile(name string, flag int, perm fs.FileMode) (spool.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &failingFile{File: file, fs: f}, nil
}

type failingFile struct {
	spool.File
	fs *failingFS
}

func (f *failingFile) Sync() error {
	if f.fs.failing.Load() {
		return errors.New("injected: input/output error")
	}
	return f.File.Sync()
}

func TestMetricsSpoolFailed(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", ""))
	ffs := &failingFS{}
	st := openTestStore(t, spool.FileOptions{FS: ffs, ReopenDelay: -1}) // stays failed
	_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
	ctx := context.Background()
	if err := st.Append(ctx, &spool.Message{Route: "ev", Method: "POST", Target: "/ev"}); err != nil {
		t.Fatal(err)
	}
	e := scrape(t, ts.URL)
	if v := value(t, e, "sidecar_spool_failed"); v != 0 {
		t.Errorf("healthy store: sidecar_spool_failed = %v, want 0", v)
	}
	ffs.failing.Store(true)
	if err := st.Append(ctx, &spool.Message{Route: "ev", Method: "POST", Target: "/ev"}); err == nil {
		t.Fatal("Append with failing fsync = nil, want an error")
	}
	e = scrape(t, ts.URL)
	if v := value(t, e, "sidecar_spool_failed"); v != 1 {
		t.Errorf("after a failed fsync: sidecar_spool_failed = %v, want 1", v)
	}
	if v := value(t, e, "sidecar_spool_fsync_errors_total"); v < 1 {
		t.Errorf("after a failed fsync: fsync_errors_total = %v, want at least 1", v)
	}
	if v := value(t, e, "sidecar_spool_appends_total"); v != 1 {
		t.Errorf("appends_total = %v, want 1 (the failed append is not counted)", v)
	}
}

func TestMetricsSpoolReopened(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", ""))
	ffs := &failingFS{}
	st := openTestStore(t, spool.FileOptions{FS: ffs, ReopenDelay: 10 * time.Millisecond})
	_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
	ffs.failing.Store(true)
	if err := st.Append(context.Background(), &spool.Message{Route: "ev", Method: "POST", Target: "/ev"}); err == nil {
		t.Fatal("Append with failing fsync = nil, want an error")
	}
	ffs.failing.Store(false)
	poll.Until(t, 10*time.Second, "the spool to reopen itself", func() bool {
		e := scrape(t, ts.URL)
		return value(t, e, "sidecar_spool_failed") == 0 && value(t, e, "sidecar_spool_reopens_total") >= 1
	})
}

func TestMetricsOff(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", "metrics: {prometheus: false}"))
	_, off := newMetricsAdmin(t, fixedSource{snap})
	on := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", ""))
	without := httptest.NewServer(New(fixedSource{on}, proxytest.Discard).Handler())
	t.Cleanup(without.Close)
	for _, tt := range []struct {
		name string
		ts   *httptest.Server
	}{
		{"telemetry.metrics.prometheus false", off},
		{"no WithTelemetry", without},
	} {
		resp, err := http.Get(tt.ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" || err != nil ||
			body.Error != "metrics are off: telemetry.metrics.prometheus is false" {
			t.Errorf("GET /metrics with %s = %d %q %+v (%v), want 404 with the JSON error", tt.name, resp.StatusCode, resp.Header.Get("Content-Type"), body, err)
		}
	}
}

// TestMetricsUnregisteredAtShutdown: once the admin Server has shut down,
// a collection no longer runs its callback.
func TestMetricsUnregisteredAtShutdown(t *testing.T) {
	snap := proxytest.Snapshot(t, metricsConfig("http://127.0.0.1:8080", "", ""))
	reader := sdkmetric.NewManualReader()
	p := newProvider(t, snap.Config.Telemetry, telemetry.WithMetricReader(reader))
	s := New(fixedSource{snap}, proxytest.Discard, WithTelemetry(p))
	names := func() []string {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				out = append(out, m.Name)
			}
		}
		return out
	}
	if got := names(); !slices.Contains(got, "sidecar.ready") {
		t.Fatalf("collection before Shutdown = %v, want sidecar.ready", got)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown = %v", err)
	}
	if got := names(); slices.Contains(got, "sidecar.ready") {
		t.Errorf("collection after Shutdown = %v, want no sidecar.ready", got)
	}
}

func TestMetricsWithoutSpool(t *testing.T) {
	_, ts := newTestAdmin(t)
	e := scrape(t, ts.URL)
	if _, ok := e.Types["sidecar_spool_messages"]; ok {
		t.Errorf("no spool: the scrape has spool metrics: %v", e.Types)
	}
	if v := value(t, e, "sidecar_route_in_flight", "route", "reads"); v != 0 {
		t.Errorf("idle route: in_flight = %v, want 0", v)
	}
}

// sidecarWithAdmin serves cfg with a real file store, and its admin API;
// it returns the app listener's and the admin API's base URLs.
func sidecarWithAdmin(t *testing.T, cfg string) (app, adm string) {
	t.Helper()
	snap := proxytest.Snapshot(t, cfg)
	// The route ev of metricsConfig de-duplicates within 1m.
	st := openTestStore(t, spool.FileOptions{Routes: map[string]spool.Limits{"ev": {DedupeWindow: time.Minute}}})
	srv := proxy.NewServer(snap, proxytest.Discard, proxy.WithSpool(st))
	return serveWithAdmin(t, srv, New(srv, proxytest.Discard, WithTelemetry(newProvider(t, snap.Config.Telemetry))))
}

// serveWithAdmin binds and serves srv and its admin API a until
// the test ends, and returns the app's and the admin API's base URLs.
func serveWithAdmin(t *testing.T, srv *proxy.Server, a *Server) (app, adm string) {
	t.Helper()
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	if err := a.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	a.Serve(func() { close(done) })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.Shutdown(ctx)
		<-done
		srv.Shutdown(ctx)
	})
	return "http://" + srv.Addrs()["app"].String(), "http://" + a.Addr().String()
}

func TestMetricsFIFOHeadBlocked(t *testing.T) {
	var up atomic.Bool
	var hits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(upstream.Close)
	app, adm := sidecarWithAdmin(t, metricsConfig(upstream.URL, "", ""))

	for i := range 2 {
		resp, err := http.Post(fmt.Sprintf("%s/ev/%d", app, i), "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /ev/%d = %d, want 202", i, resp.StatusCode)
		}
	}
	var e *telemetrytest.Exposition
	poll.Until(t, 10*time.Second, "head_blocked 1", func() bool {
		e = scrape(t, adm)
		v, _ := e.Value("sidecar_spool_head_blocked", "route", "ev")
		r, _ := e.Value("sidecar_spool_deliveries_total", "route", "ev", "result", "retried")
		return v == 1 && r >= 2
	})
	checkTypes(t, e)
	if v := value(t, e, "sidecar_spool_head_attempts", "route", "ev"); v < 1 {
		t.Errorf("blocked head: head_attempts = %v, want at least 1", v)
	}
	if v := value(t, e, "sidecar_spool_messages", "route", "ev", "state", "pending"); v != 2 {
		t.Errorf("blocked head: ev pending = %v, want 2", v)
	}
	if v := value(t, e, "sidecar_spool_head_blocked", "route", "idle"); v != 0 {
		t.Errorf("idle route: head_blocked = %v, want 0", v)
	}
	if v := value(t, e, "sidecar_spool_deliveries_total", "route", "ev", "result", "delivered"); v != 0 {
		t.Errorf("upstream down: delivered = %v, want 0", v)
	}

	sv := spoolView(t, adm)
	ev := sv.Routes["ev"]
	if ev.Depth != 2 || ev.Delivery == nil || !ev.Delivery.HeadBlocked || ev.Delivery.HeadID == "" ||
		ev.Delivery.HeadAttempts < 1 || ev.Delivery.HeadNextAttempt == "" || ev.Delivery.Retried < 2 || ev.Delivery.Delivered != 0 {
		t.Errorf("GET /v1/spool route ev with a blocked head = %+v delivery %+v, want depth 2, head_blocked with id, attempts, next attempt, retries", ev, ev.Delivery)
	}

	up.Store(true)
	// A delivery is counted when the upstream took it, and leaves the
	// pending gauge when its ack is committed, a moment later: wait for
	// both.
	poll.Until(t, 10*time.Second, "delivery after recovery, acked", func() bool {
		e = scrape(t, adm)
		b, _ := e.Value("sidecar_spool_head_blocked", "route", "ev")
		d, _ := e.Value("sidecar_spool_deliveries_total", "route", "ev", "result", "delivered")
		p, _ := e.Value("sidecar_spool_messages", "route", "ev", "state", "pending")
		return b == 0 && d == 2 && p == 0
	})
	if v := value(t, e, "sidecar_spool_head_next_attempt_seconds", "route", "ev"); v != 0 {
		t.Errorf("after recovery: head_next_attempt_seconds = %v, want 0", v)
	}
	if d := spoolView(t, adm).Routes["ev"].Delivery; d == nil || d.HeadBlocked || d.HeadID != "" || d.Delivered != 2 {
		t.Errorf("GET /v1/spool route ev after recovery: delivery %+v, want not blocked, no head, 2 delivered", d)
	}

	// A request repeating an idempotency key is counted, and the rate
	// shown.
	for range 2 {
		req, _ := http.NewRequest("POST", app+"/ev/k", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", "metrics-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	e = scrape(t, adm)
	if v := value(t, e, "sidecar_async_deduplicated_total", "route", "ev"); v != 1 {
		t.Errorf("sidecar_async_deduplicated_total{route=ev} = %v, want 1", v)
	}
	if v := value(t, e, "sidecar_spool_delivery_rate_per_second", "route", "ev"); v != 10000 {
		t.Errorf("sidecar_spool_delivery_rate_per_second{route=ev} = %v, want 10000", v)
	}
	if d := spoolView(t, adm).Routes["ev"].Delivery; d == nil || d.Deduplicated != 1 || d.RatePerSecond != 10000 || d.RateBurst != 100 {
		t.Errorf("GET /v1/spool route ev: delivery %+v, want deduplicated 1, rate 10000 burst 100", d)
	}
}

// spoolAnswer is GET /v1/spool as a client decodes it.
type spoolAnswer struct {
	Routes map[string]struct {
		Depth    int64 `json:"depth"`
		Delivery *struct {
			Delivered       int64   `json:"delivered"`
			Retried         int64   `json:"retried"`
			DeadLettered    int64   `json:"dead_lettered"`
			HeadBlocked     bool    `json:"head_blocked"`
			HeadID          string  `json:"head_id"`
			HeadAttempts    int     `json:"head_attempts"`
			HeadNextAttempt string  `json:"head_next_attempt"`
			Deduplicated    int64   `json:"deduplicated"`
			RatePerSecond   float64 `json:"rate_per_second"`
			RateBurst       int     `json:"rate_burst"`
		} `json:"delivery"`
	} `json:"routes"`
}

func spoolView(t *testing.T, adm string) spoolAnswer {
	t.Helper()
	resp, err := http.Get(adm + "/v1/spool")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got spoolAnswer
	if err := json.NewDecoder(resp.Body).Decode(&got); resp.StatusCode != 200 || err != nil {
		t.Fatalf("GET /v1/spool = %d (%v), want 200 JSON", resp.StatusCode, err)
	}
	return got
}

// TestMetricsEndpointHealth: an upstream with health_check and outlier
// has its endpoints' health and ejection in /metrics and /v1/routes; an
// endpoint that answers 503 is ejected, and both show it.
func TestMetricsEndpointHealth(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(ok.Close)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(bad.Close)
	snap := proxytest.Snapshot(t, `
version: 1
upstreams:
  up:
    endpoints: ["`+ok.URL+`", "`+bad.URL+`"]
    health_check: {interval: 1h}
    outlier: {consecutive_5xx: 1, eject_for: 1h}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up}
`)
	srv := proxy.NewServer(snap, proxytest.Discard)
	app, adm := serveWithAdmin(t, srv, New(srv, proxytest.Discard, WithTelemetry(newProvider(t, snap.Config.Telemetry))))
	for range 2 { // round robin: one of them reaches bad
		resp, err := http.Get(app + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	e := scrape(t, adm)
	for name, typ := range map[string]string{
		"sidecar_endpoint_healthy":        "gauge",
		"sidecar_health_checks_total":     "counter",
		"sidecar_endpoint_ejected":        "gauge",
		"sidecar_outlier_ejections_total": "counter",
	} {
		if e.Types[name] != typ {
			t.Errorf("TYPE of %s = %q, want %s", name, e.Types[name], typ)
		}
	}
	for _, tt := range []struct {
		name, endpoint string
		want           float64
	}{
		{"sidecar_endpoint_healthy", ok.URL, 1},
		{"sidecar_endpoint_healthy", bad.URL, 1},
		{"sidecar_endpoint_ejected", ok.URL, 0},
		{"sidecar_endpoint_ejected", bad.URL, 1},
		{"sidecar_outlier_ejections_total", bad.URL, 1},
	} {
		if v := value(t, e, tt.name, "endpoint", tt.endpoint, "upstream", "up"); v != tt.want {
			t.Errorf("%s{endpoint=%s} = %v, want %v", tt.name, tt.endpoint, v, tt.want)
		}
	}
	resp, err := http.Get(adm + "/v1/routes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Routes []struct {
			Endpoints []proxy.EndpointStats `json:"endpoints"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	eps := got.Routes[0].Endpoints
	if len(eps) != 2 || eps[1].Skipped != "ejected" || eps[1].Outlier == nil || !eps[1].Outlier.Ejected || eps[1].Outlier.Until == "" ||
		eps[1].Health == nil || eps[1].Health.State == "" || eps[0].Skipped != "" {
		t.Errorf("/v1/routes endpoints = %+v, want the second ejected (with until) and skipped, both with a health state", eps)
	}
}

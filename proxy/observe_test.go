package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// observed is a sidecar recording its spans in memory and its metrics
// through a manual reader.
type observed struct {
	*sidecar
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
}

// startObserved starts cfgYAML with tracing (every span kept) and metrics
// on.
func startObserved(t *testing.T, cfgYAML string, opts []Option, ups ...*upstream) *observed {
	t.Helper()
	return startSampled(t, 1, cfgYAML, opts, ups...)
}

// startSampled is startObserved sampling ratio of the root spans.
func startSampled(t *testing.T, ratio float64, cfgYAML string, opts []Option, ups ...*upstream) *observed {
	t.Helper()
	return startObservedBuilt(t, ratio, cfgYAML, nil, opts, ups...)
}

// startObservedBuilt is startSampled with options for Build too.
func startObservedBuilt(t *testing.T, ratio float64, cfgYAML string, bopts []BuildOption, opts []Option, ups ...*upstream) *observed {
	t.Helper()
	o := &observed{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	p, err := telemetry.New(t.Context(), config.Telemetry{ServiceName: "test", Traces: config.Traces{Exporter: "stdout", SampleRatio: ratio}},
		telemetry.WithSpanExporter(o.spans), telemetry.WithSyncSpans(), telemetry.WithMetricReader(o.reader))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	tel, err := TelemetryFrom(p)
	if err != nil {
		t.Fatal(err)
	}
	o.sidecar = startSidecarBuilt(t, cfgYAML, append([]BuildOption{WithTelemetry(tel)}, bopts...), opts, ups...)
	reg, err := o.srv.RegisterMetrics(p.Meter())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Unregister() })
	return o
}

// spansOf returns the ended spans of kind k.
func (o *observed) spansOf(k trace.SpanKind) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range o.spans.GetSpans().Snapshots() {
		if s.SpanKind() == k {
			out = append(out, s)
		}
	}
	return out
}

// waitSpans waits until n spans of kind k have ended and returns them: a
// SERVER span ends after the app has its answer.
func (o *observed) waitSpans(t *testing.T, k trace.SpanKind, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	poll.Until(t, 5*time.Second, "spans", func() bool { return len(o.spansOf(k)) >= n })
	s := o.spansOf(k)
	if len(s) != n {
		t.Fatalf("%d %v spans ended, want %d", len(s), k, n)
	}
	return s
}

func (o *observed) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := o.reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// attrsMatch reports whether set holds every name=value of want.
func attrsMatch(set attribute.Set, want map[string]string) bool {
	for k, v := range want {
		got, ok := set.Value(attribute.Key(k))
		if !ok || got.String() != v {
			return false
		}
	}
	return true
}

// histCount is the count of the histogram name's points whose attributes
// hold want.
func histCount(rm metricdata.ResourceMetrics, name string, want map[string]string) uint64 {
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == name {
				for _, dp := range h.DataPoints {
					if attrsMatch(dp.Attributes, want) {
						n += dp.Count
					}
				}
			}
		}
	}
	return n
}

// intValue is the sum of the int64 counter or gauge name's points whose
// attributes hold want.
func intValue(rm metricdata.ResourceMetrics, name string, want map[string]string) int64 {
	var v int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var pts []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				pts = d.DataPoints
			case metricdata.Gauge[int64]:
				pts = d.DataPoints
			}
			for _, dp := range pts {
				if attrsMatch(dp.Attributes, want) {
					v += dp.Value
				}
			}
		}
	}
	return v
}

// wantHist checks the count of the histogram name's points whose
// attributes hold labels.
func wantHist(t *testing.T, rm metricdata.ResourceMetrics, name string, labels map[string]string, want uint64) {
	t.Helper()
	if n := histCount(rm, name, labels); n != want {
		t.Errorf("%s %v: count = %d, want %d", name, labels, n, want)
	}
}

// wantInt checks the int64 counter or gauge name's value over the points
// whose attributes hold labels.
func wantInt(t *testing.T, rm metricdata.ResourceMetrics, name string, labels map[string]string, want int64) {
	t.Helper()
	if v := intValue(rm, name, labels); v != want {
		t.Errorf("%s %v = %d, want %d", name, labels, v, want)
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func attrString(s sdktrace.ReadOnlySpan, key string) string {
	v, _ := attr(s, key)
	return v.String()
}

const appTraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestTraceRetriedRequest: a request retried once is one SERVER span,
// continuing the app's trace, and two CLIENT spans, its children; the
// upstream receives the attempt's span as its parent; the metrics count
// the request once, the attempts twice and the retry once.
func TestTraceRetriedRequest(t *testing.T) {
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		if n == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	o := startObserved(t, oneRoute(`{retry: {attempts: 2, on: ["503"], backoff: {base: 1ms, max: 1ms}}}`), nil, rec.upstream)
	resp, body := get(t, o.url("/items/1?card=4111111111111111"), "Traceparent", appTraceParent, "Authorization", "Bearer secret-token", "Cookie", "session=secret-cookie")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET = %d %q, want 200 ok", resp.StatusCode, body)
	}
	srv := o.waitSpans(t, trace.SpanKindServer, 1)[0]
	clients := o.waitSpans(t, trace.SpanKindClient, 2)
	if got := srv.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("SERVER span trace id = %s, want the app's", got)
	}
	if got := srv.Parent().SpanID().String(); got != "00f067aa0ba902b7" || !srv.Parent().IsRemote() {
		t.Errorf("SERVER span parent = %s (remote %v), want the app's span 00f067aa0ba902b7", got, srv.Parent().IsRemote())
	}
	if srv.Name() != "GET all" {
		t.Errorf("SERVER span name = %q, want %q", srv.Name(), "GET all")
	}
	for k, want := range map[string]string{"http.request.method": "GET", "url.path": "/items/1", "sidecar.route": "all", "http.response.status_code": "200", "sidecar.outcome": "ok", "sidecar.attempts": "2"} {
		if got := attrString(srv, k); got != want {
			t.Errorf("SERVER span %s = %q, want %q", k, got, want)
		}
	}
	got := rec.got()
	for i, c := range clients {
		if c.Parent().SpanID() != srv.SpanContext().SpanID() || c.SpanContext().TraceID() != srv.SpanContext().TraceID() {
			t.Errorf("CLIENT span %d is not a child of the SERVER span", i)
		}
		wantParent := "00-" + c.SpanContext().TraceID().String() + "-" + c.SpanContext().SpanID().String() + "-01"
		if got[i].traceparent != wantParent {
			t.Errorf("upstream request %d traceparent = %q, want the attempt's span %q", i, got[i].traceparent, wantParent)
		}
	}
	if got := attrString(clients[0], "http.response.status_code"); got != "503" {
		t.Errorf("first CLIENT span status = %q, want 503", got)
	}
	if _, ok := attr(clients[0], "http.request.resend_count"); ok {
		t.Errorf("first CLIENT span has http.request.resend_count")
	}
	if got := attrString(clients[1], "http.request.resend_count"); got != "1" {
		t.Errorf("second CLIENT span http.request.resend_count = %q, want 1", got)
	}
	// Never a header value or the query in a span.
	for _, s := range o.spans.GetSpans().Snapshots() {
		for _, kv := range s.Attributes() {
			if v := kv.Value.String(); strings.Contains(v, "secret") || strings.Contains(v, "4111") {
				t.Errorf("span %q attribute %s = %q carries a header value or the query", s.Name(), kv.Key, v)
			}
		}
	}

	rm := o.collect(t)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "all", "method": "GET", "status_class": "2xx", "outcome": "ok"}, 1)
	wantHist(t, rm, "http.client.request.duration", map[string]string{"route": "all", "status_class": "5xx", "outcome": "status"}, 1)
	wantHist(t, rm, "http.client.request.duration", map[string]string{"route": "all", "status_class": "2xx", "outcome": "ok"}, 1)
	wantInt(t, rm, "sidecar.retries", map[string]string{"route": "all"}, 1)
	wantInt(t, rm, "http.server.active_requests", map[string]string{"route": "all"}, 0)
}

// TestTraceFreshWithoutParent: requests without a traceparent get a new
// trace each, and the upstream sees it.
func TestTraceFreshWithoutParent(t *testing.T) {
	rec := newRecorder(t, nil)
	o := startObserved(t, oneRoute(`{}`), nil, rec.upstream)
	get(t, o.url("/a"))
	get(t, o.url("/b"))
	srvs := o.waitSpans(t, trace.SpanKindServer, 2)
	if srvs[0].SpanContext().TraceID() == srvs[1].SpanContext().TraceID() {
		t.Errorf("two requests without a parent share trace %s", srvs[0].SpanContext().TraceID())
	}
	got := rec.got()
	for i, s := range srvs {
		if s.Parent().IsValid() {
			t.Errorf("SERVER span %d has parent %v, want a root", i, s.Parent())
		}
		if !strings.Contains(got[i].traceparent, s.SpanContext().TraceID().String()) {
			t.Errorf("upstream request %d traceparent = %q, want trace %s", i, got[i].traceparent, s.SpanContext().TraceID())
		}
	}
}

// TestTraceNotSampled: with sample_ratio 0 a request without a parent
// records no span, yet the upstream gets a traceparent that says so; a
// request whose parent is sampled is traced.
func TestTraceNotSampled(t *testing.T) {
	rec := newRecorder(t, nil)
	o := startSampled(t, 0, oneRoute(`{}`), nil, rec.upstream)
	get(t, o.url("/a"))
	get(t, o.url("/b"), "Traceparent", appTraceParent)
	o.waitSpans(t, trace.SpanKindServer, 1)
	o.waitSpans(t, trace.SpanKindClient, 1)
	var parents []string
	for _, r := range rec.got() {
		parents = append(parents, r.traceparent)
	}
	if len(parents) != 2 || !strings.HasSuffix(parents[0], "-00") || len(parents[0]) != len(appTraceParent) {
		t.Errorf("upstream traceparents = %q, want first a not-sampled one (flags 00)", parents)
	}
	if !strings.Contains(parents[1], "4bf92f3577b34da6a3ce929d0e0e4736") || !strings.HasSuffix(parents[1], "-01") {
		t.Errorf("upstream traceparent of the sampled request = %q, want the app's trace, sampled", parents[1])
	}
	if s := o.spansOf(trace.SpanKindServer)[0]; attrString(s, "url.path") != "/b" {
		t.Errorf("the one SERVER span recorded is for %q, want /b", attrString(s, "url.path"))
	}
}

// TestTracingOffPassesTraceparent: with no tracer the sidecar builds no
// span and the app's traceparent reaches the upstream unchanged.
func TestTracingOffPassesTraceparent(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute(`{}`), up)
	get(t, sc.url("/a"), "Traceparent", appTraceParent)
	if got := up.lastRequest().Header.Get("Traceparent"); got != appTraceParent {
		t.Errorf("upstream traceparent = %q, want the app's %q", got, appTraceParent)
	}
	if tel := sc.srv.Snapshot().tel; tel != nil {
		t.Errorf("snapshot telemetry = %v, want nil without WithTelemetry", tel)
	}
}

// TestMetricsBreakerAndRateLimit: a breaker rejection and a rate-limited
// request are labelled with their outcomes; the breaker's transition and
// state and the rejection are counted.
func TestMetricsBreakerAndRateLimit(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	cfg := `
version: 1
upstreams:
  up: {endpoints: ["UPSTREAM0"]}
policies:
  brk: {circuit_breaker: {consecutive_failures: 1, open_for: 1h}}
  lim: {rate_limit: {rps: 1, burst: 1}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: brk, match: {path_prefix: /brk}, upstream: up, policy: brk}
      - {name: lim, match: {path_prefix: /lim}, upstream: up, policy: lim}
`
	o := startObserved(t, cfg, nil, up)
	if resp, _ := get(t, o.url("/brk")); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("first GET /brk = %d, want the upstream's 502", resp.StatusCode)
	}
	if resp, _ := get(t, o.url("/brk")); resp.Header.Get(HeaderOutcome) != "breaker_open" {
		t.Fatalf("second GET /brk = %d %s=%q, want breaker_open", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
	}
	get(t, o.url("/lim"))
	if resp, _ := get(t, o.url("/lim")); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second GET /lim = %d, want 429", resp.StatusCode)
	}
	if resp, _ := get(t, o.url("/nope")); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nope = %d, want 404", resp.StatusCode)
	}
	srvs := o.waitSpans(t, trace.SpanKindServer, 5)
	if got := attrString(srvs[1], "sidecar.outcome"); got != "breaker_open" {
		t.Errorf("SERVER span of the rejected call: sidecar.outcome = %q, want breaker_open", got)
	}
	if got := attrString(srvs[1], "error.type"); got != "breaker_open" {
		t.Errorf("SERVER span of the rejected call: error.type = %q, want breaker_open", got)
	}

	rm := o.collect(t)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "brk", "outcome": "breaker_open", "status_class": "5xx"}, 1)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "brk", "outcome": "status", "status_class": "5xx"}, 1)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "lim", "outcome": "rate_limited", "status_class": "4xx"}, 1)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "", "outcome": "no_route", "status_class": "4xx"}, 1)
	wantInt(t, rm, "http.server.active_requests", map[string]string{"route": ""}, 0)
	wantInt(t, rm, "sidecar.requests.rejected", map[string]string{"route": "lim", "reason": "rate_limited"}, 1)
	ep := up.URL
	wantInt(t, rm, "sidecar.breaker.transitions", map[string]string{"endpoint": ep, "state": "open"}, 1)
	wantInt(t, rm, "sidecar.breaker.state", map[string]string{"endpoint": ep, "state": "open"}, 1)
	wantInt(t, rm, "sidecar.breaker.state", map[string]string{"endpoint": ep, "state": "closed"}, 0)
}

// TestTraceGRPC: a gRPC call's spans carry the RPC attributes and the
// call's status code.
func TestTraceGRPC(t *testing.T) {
	url := grpcUpstream(t, newInteropServer(t))
	o := startObserved(t, grpcConfig(url, `{}`, ""), nil)
	cc := dialSidecar(t, o.sidecar)
	if _, err := testgrpc.NewTestServiceClient(cc).EmptyCall(t.Context(), &testgrpc.Empty{}); err != nil {
		t.Fatalf("EmptyCall = %v", err)
	}
	srv := o.waitSpans(t, trace.SpanKindServer, 1)[0]
	cl := o.waitSpans(t, trace.SpanKindClient, 1)[0]
	for _, s := range []sdktrace.ReadOnlySpan{srv, cl} {
		for k, want := range map[string]string{"rpc.system": "grpc", "rpc.service": "grpc.testing.TestService", "rpc.method": "EmptyCall"} {
			if got := attrString(s, k); got != want {
				t.Errorf("%v span %s = %q, want %q", s.SpanKind(), k, got, want)
			}
		}
	}
	if got := attrString(srv, "rpc.grpc.status_code"); got != "0" {
		t.Errorf("SERVER span rpc.grpc.status_code = %q, want 0", got)
	}
	if cl.Name() != "grpc.testing.TestService/EmptyCall" {
		t.Errorf("CLIENT span name = %q, want the full method", cl.Name())
	}
	// A gRPC error comes as HTTP 200: its code makes the outcome status.
	if _, err := testgrpc.NewTestServiceClient(cc).UnimplementedCall(t.Context(), &testgrpc.Empty{}); status.Code(err) != grpccodes.Unimplemented {
		t.Fatalf("UnimplementedCall = %v, want Unimplemented", err)
	}
	srv = o.waitSpans(t, trace.SpanKindServer, 2)[1]
	if got := attrString(srv, "rpc.grpc.status_code"); got != "12" {
		t.Errorf("SERVER span of UnimplementedCall rpc.grpc.status_code = %q, want 12", got)
	}
	rm := o.collect(t)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "rpc", "outcome": "status", "status_class": "2xx", "method": "POST"}, 1)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "rpc", "outcome": "ok"}, 1)
}

// TestTraceSpooledThenDelivered: a request spooled while its upstream is
// down has a SERVER span with its spool id; its delivery is a CLIENT span
// in the same trace that links to that span and carries the spool id and
// the delivery attempt; the upstream receives the delivery's span.
func TestTraceSpooledThenDelivered(t *testing.T) {
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		if n == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	o := startObserved(t, asyncRoute(`spool_on: ["503"], backoff: {base: 1ms, max: 5ms}`), []Option{WithSpool(st)}, rec.upstream)
	req, _ := http.NewRequest("POST", o.url("/events"), strings.NewReader("payload"))
	req.Header.Set("Traceparent", appTraceParent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := spooled(t, resp, string(b))
	poll.Until(t, 10*time.Second, "delivery", func() bool { return len(rec.got()) >= 2 && depth(st) == 0 })

	srv := o.waitSpans(t, trace.SpanKindServer, 1)[0]
	if got := attrString(srv, "sidecar.spool.id"); got != id {
		t.Errorf("SERVER span sidecar.spool.id = %q, want %q", got, id)
	}
	if got := attrString(srv, "sidecar.outcome"); got != "spooled" {
		t.Errorf("SERVER span sidecar.outcome = %q, want spooled", got)
	}
	clients := o.waitSpans(t, trace.SpanKindClient, 2) // the synchronous attempt, then the delivery
	del := clients[1]
	if got := attrString(del, "sidecar.spool.id"); got != id {
		t.Errorf("delivery span sidecar.spool.id = %q, want %q", got, id)
	}
	if got := attrString(del, "sidecar.delivery.attempt"); got != "2" {
		t.Errorf("delivery span sidecar.delivery.attempt = %q, want 2 (after the synchronous attempt)", got)
	}
	if l := del.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != srv.SpanContext().SpanID() || l[0].SpanContext.TraceID() != srv.SpanContext().TraceID() {
		t.Errorf("delivery span links = %v, want one link to the SERVER span %v", l, srv.SpanContext())
	}
	if del.SpanContext().TraceID() != srv.SpanContext().TraceID() {
		t.Errorf("delivery span trace = %s, want the request's %s", del.SpanContext().TraceID(), srv.SpanContext().TraceID())
	}
	if want := "00-" + del.SpanContext().TraceID().String() + "-" + del.SpanContext().SpanID().String() + "-01"; rec.got()[1].traceparent != want {
		t.Errorf("delivery's traceparent = %q, want its span %q", rec.got()[1].traceparent, want)
	}
	rm := o.collect(t)
	wantHist(t, rm, "http.server.request.duration", map[string]string{"route": "ev", "outcome": "spooled", "status_class": "2xx"}, 1)
}

// TestAccessLog: one line per request with what happened, never a
// header value, the query or the body.
func TestAccessLog(t *testing.T) {
	up := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute(`{}`), "version: 1", "version: 1\ntelemetry: {access_log: true}", 1)
	sc := startSidecar(t, cfg, up)
	req, _ := http.NewRequest("POST", sc.url("/items/7?token=secret-query"), strings.NewReader("secret-body"))
	req.Header.Set("Authorization", "Bearer secret-token")
	req.Header.Set("Cookie", "session=secret-cookie")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var line string
	poll.Until(t, 5*time.Second, "access log line", func() bool {
		for _, l := range strings.Split(sc.logs.String(), "\n") {
			if strings.Contains(l, "msg=access") {
				line = l
				return true
			}
		}
		return false
	})
	for _, want := range []string{"listener=app", "route=all", "method=POST", "path=/items/7", "status=200", "outcome=ok", "attempts=1", "endpoint=" + strings.TrimPrefix(up.URL, "http://"), "bytes=", "duration="} {
		if !strings.Contains(line, want) {
			t.Errorf("access log line %q lacks %q", line, want)
		}
	}
	if strings.Contains(line, "secret") {
		t.Errorf("access log line %q carries a header value, the query or the body", line)
	}
}

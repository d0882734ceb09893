package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/telemetry/telemetrytest"
)

// otlpReceiver is an OTLP/HTTP trace receiver on loopback that decodes
// each export's protobuf and keeps its spans with their resources.
type otlpReceiver struct {
	*httptest.Server
	mu      sync.Mutex
	spans   []*tracepb.Span
	service []string // service.name of each span's resource
	bad     []string // what was wrong with a request
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			rc.bad = append(rc.bad, fmt.Sprintf("%s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type")))
		}
		if err := proto.Unmarshal(body, &req); err != nil {
			rc.bad = append(rc.bad, "undecodable export: "+err.Error())
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, rs := range req.GetResourceSpans() {
			svc := attrValue(rs.GetResource().GetAttributes(), "service.name")
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					rc.spans = append(rc.spans, s)
					rc.service = append(rc.service, svc)
				}
			}
		}
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// got returns the spans received so far, with their services.
func (rc *otlpReceiver) got() ([]*tracepb.Span, []string, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*tracepb.Span(nil), rc.spans...), append([]string(nil), rc.service...), append([]string(nil), rc.bad...)
}

func attrValue(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			v := kv.GetValue()
			if s, ok := v.GetValue().(*commonpb.AnyValue_StringValue); ok {
				return s.StringValue
			}
			if i, ok := v.GetValue().(*commonpb.AnyValue_IntValue); ok {
				return fmt.Sprint(i.IntValue)
			}
			return v.String()
		}
	}
	return ""
}

// TestTracesExportedOverOTLP runs the binary with the otlp exporter
// against a receiver that decodes what it gets: a request spooled while
// its upstream answers 503, then delivered, is a SERVER span continuing
// the app's trace, a CLIENT span for the first attempt (its child) and a
// CLIENT span for the delivery that links to the SERVER span; all are
// flushed by the time the process has exited after SIGTERM.
func TestTracesExportedOverOTLP(t *testing.T) {
	rc := newOTLPReceiver(t)
	var mu sync.Mutex
	var parents []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		n := len(parents)
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer up.Close()
	cfg := writeConfig(t, fmt.Sprintf(`
version: 1
admin: {address: "127.0.0.1:0"}
telemetry:
  service_name: e2e-sidecar
  traces: {exporter: otlp, sample_ratio: 1}
  access_log: true
spool: {dir: %q}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: events, upstream: up, async: {spool_on: ["503"], backoff: {base: 10ms, max: 10ms}}}
`, t.TempDir()+"/spool", up.URL))
	cmd, s, _, lines := startBinaryLogs(t, cfg,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+rc.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=60000", // nothing is sent before the shutdown flush
	)
	var logs bytes.Buffer
	var logsMu sync.Mutex
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		for l := range lines {
			logsMu.Lock()
			logs.WriteString(l + "\n")
			logsMu.Unlock()
		}
	}()
	addr := strings.TrimPrefix(s.Listeners, "app=")
	const appTrace, appSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest("POST", "http://"+addr+"/orders?secret=query", strings.NewReader(`{"order": 1}`))
	req.Header.Set("Traceparent", "00-"+appTrace+"-"+appSpan+"-01")
	req.Header.Set("Authorization", "Bearer secret-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Header.Get("Sidecar-Spool-Id")
	if resp.StatusCode != http.StatusAccepted || id == "" {
		t.Fatalf("POST = %d (spool id %q), want 202 with a spool id", resp.StatusCode, id)
	}
	poll.Until(t, 10*time.Second, "the delivery", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(parents) >= 2
	})
	// The metrics of the same request, from the Prometheus exporter.
	e := telemetrytest.Scrape(t, "http://"+s.Admin+"/metrics")
	if v, _ := e.Value("http_server_request_duration_seconds_count", "route", "events", "method", "POST", "status_class", "2xx", "outcome", "spooled"); v != 1 {
		t.Errorf("http_server_request_duration_seconds_count{events,POST,2xx,spooled} = %v, want 1", v)
	}
	if v, _ := e.Value("http_client_request_duration_seconds_count", "route", "events", "method", "POST", "status_class", "5xx", "outcome", "status"); v != 1 {
		t.Errorf("http_client_request_duration_seconds_count{events,POST,5xx,status} = %v, want 1", v)
	}
	if typ := e.Types["http_server_request_duration_seconds"]; typ != "histogram" {
		t.Errorf("http_server_request_duration_seconds TYPE = %q, want histogram", typ)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exit after SIGTERM = %v, want 0", err)
	}
	<-logsDone

	spans, services, bad := rc.got()
	if len(bad) > 0 {
		t.Errorf("receiver got bad exports: %v", bad)
	}
	var server *tracepb.Span
	var clients []*tracepb.Span
	for i, sp := range spans {
		if services[i] != "e2e-sidecar" {
			t.Errorf("span %q service.name = %q, want e2e-sidecar", sp.GetName(), services[i])
		}
		switch sp.GetKind() {
		case tracepb.Span_SPAN_KIND_SERVER:
			server = sp
		case tracepb.Span_SPAN_KIND_CLIENT:
			clients = append(clients, sp)
		}
		for _, kv := range sp.GetAttributes() {
			if v := kv.GetValue().String(); strings.Contains(v, "secret") {
				t.Errorf("span %q attribute %s = %s carries a header value or the query", sp.GetName(), kv.GetKey(), v)
			}
		}
	}
	if server == nil || len(clients) != 2 {
		t.Fatalf("got %d spans (server %v, %d client), want 1 SERVER and 2 CLIENT spans flushed by exit", len(spans), server != nil, len(clients))
	}
	if got := hex.EncodeToString(server.GetTraceId()); got != appTrace {
		t.Errorf("SERVER span trace = %s, want the app's %s", got, appTrace)
	}
	if got := hex.EncodeToString(server.GetParentSpanId()); got != appSpan {
		t.Errorf("SERVER span parent = %s, want the app's span %s", got, appSpan)
	}
	if got := attrValue(server.GetAttributes(), "sidecar.spool.id"); got != id {
		t.Errorf("SERVER span sidecar.spool.id = %q, want %q", got, id)
	}
	if got := attrValue(server.GetAttributes(), "sidecar.route"); got != "events" {
		t.Errorf("SERVER span sidecar.route = %q, want events", got)
	}
	first, delivery := clients[0], clients[1]
	if attrValue(first.GetAttributes(), "sidecar.spool.id") != "" {
		first, delivery = delivery, first
	}
	if !bytes.Equal(first.GetParentSpanId(), server.GetSpanId()) {
		t.Errorf("first attempt's parent = %x, want the SERVER span %x", first.GetParentSpanId(), server.GetSpanId())
	}
	if got := attrValue(first.GetAttributes(), "http.response.status_code"); got != "503" {
		t.Errorf("first attempt's http.response.status_code = %q, want 503", got)
	}
	if got := attrValue(delivery.GetAttributes(), "sidecar.spool.id"); got != id {
		t.Errorf("delivery span sidecar.spool.id = %q, want %q", got, id)
	}
	if got := attrValue(delivery.GetAttributes(), "sidecar.delivery.attempt"); got != "2" {
		t.Errorf("delivery span sidecar.delivery.attempt = %q, want 2", got)
	}
	if l := delivery.GetLinks(); len(l) != 1 || !bytes.Equal(l[0].GetSpanId(), server.GetSpanId()) || !bytes.Equal(l[0].GetTraceId(), server.GetTraceId()) {
		t.Errorf("delivery span links = %v, want one link to the SERVER span", l)
	}
	mu.Lock()
	wantParent := "00-" + hex.EncodeToString(delivery.GetTraceId()) + "-" + hex.EncodeToString(delivery.GetSpanId()) + "-01"
	if parents[1] != wantParent {
		t.Errorf("the delivery's traceparent = %q, want its span %q", parents[1], wantParent)
	}
	mu.Unlock()

	logsMu.Lock()
	defer logsMu.Unlock()
	if !strings.Contains(logs.String(), `"msg":"access"`) || !strings.Contains(logs.String(), `"trace_id":"`+appTrace+`"`) {
		t.Errorf("no access log line with the app's trace id in:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "secret") {
		t.Errorf("the log carries a header value or the query:\n%s", logs.String())
	}
}

// grpcTraceReceiver is an OTLP/gRPC trace service that keeps the spans it
// is sent.
type grpcTraceReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (g *grpcTraceReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			g.spans = append(g.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TestTracesExportedOverOTLPGRPC: with OTEL_EXPORTER_OTLP_PROTOCOL=grpc
// the spans of a proxied request reach an OTLP/gRPC receiver.
func TestTracesExportedOverOTLPGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc := &grpcTraceReceiver{}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, rc)
	go gs.Serve(ln)
	defer gs.Stop()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	cfg := writeConfig(t, fmt.Sprintf(`
version: 1
admin: {address: "127.0.0.1:0"}
telemetry: {traces: {exporter: otlp}}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, upstream: up}
`, up.URL))
	cmd, s, _, lines := startBinaryLogs(t, cfg,
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+ln.Addr().String(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_INSECURE=true",
	)
	go func() {
		for range lines {
		}
	}()
	resp, err := http.Get("http://" + strings.TrimPrefix(s.Listeners, "app=") + "/x")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exit after SIGTERM = %v, want 0", err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	kinds := map[tracepb.Span_SpanKind]int{}
	for _, sp := range rc.spans {
		kinds[sp.GetKind()]++
	}
	if kinds[tracepb.Span_SPAN_KIND_SERVER] != 1 || kinds[tracepb.Span_SPAN_KIND_CLIENT] != 1 {
		t.Errorf("OTLP/gRPC receiver got span kinds %v, want one SERVER and one CLIENT", kinds)
	}
}

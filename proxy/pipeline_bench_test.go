package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// cannedTransport answers every round trip at once with a fixed 200, so a
// benchmark measures the sidecar's own request path and nothing of the
// network.
type cannedTransport struct{}

var cannedBody = strings.Repeat("x", 64)

func (cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader(cannedBody)),
		ContentLength: int64(len(cannedBody)),
		Request:       r,
	}, nil
}

// BenchmarkPipeline is the per-request cost of routing and the whole policy
// pipeline on a request that succeeds at once: "none" with no deadline at
// all, "off" with the built-in default policy (the 15s overall deadline and
// no policy block), "on" with every policy on (rate limit, in-flight cap,
// overall and per-try deadlines, retry with budget, breaker). Run with
// -cpu 1,2.
func BenchmarkPipeline(b *testing.B) {
	for _, bc := range []struct{ name, policy string }{
		{"none", `{timeout: 0s}`},
		{"off", `{}`},
		{"on", `{timeout: 10s, per_try_timeout: 2s, max_in_flight: 1000000,
      retry: {attempts: 3}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			benchHandler(b, oneRoute(bc.policy))
		})
	}
}

// benchHandler measures GETs served by cfgYAML's listener "app", built
// with bopts, whose upstream answers at once (cannedTransport).
func benchHandler(b *testing.B, cfgYAML string, bopts ...BuildOption) {
	h, snap := newHandler(b, cfgYAML, nil, bopts...)
	snap.Pools["up"].rt = cannedTransport{}
	ctx := guardedContext(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequestWithContext(ctx, "GET", "http://app.local/items/1", nil)
		req.RemoteAddr = "127.0.0.1:5555"
		for pb.Next() {
			w := &discardWriter{h: http.Header{}}
			h.ServeHTTP(w, req)
			if w.status != 200 {
				b.Fatalf("status %d", w.status)
			}
		}
	})
}

// discardWriter is a minimal http.ResponseWriter.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int) {
	if w.status == 0 {
		w.status = s
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(200)
	return len(p), nil
}

// BenchmarkTelemetry is BenchmarkPipeline "on" with telemetry: "off" with
// none (no exchange, no span), "metrics" with the request metrics read by
// the Prometheus exporter, "traces" with metrics and every request traced
// through the batch span processor to an exporter that drops the spans
// (what encoding and sending cost is measured end to end by bench/),
// "traces-unsampled" with metrics and tracing on but sample_ratio 0.
func BenchmarkTelemetry(b *testing.B) {
	policy := `{timeout: 10s, per_try_timeout: 2s, max_in_flight: 1000000,
      retry: {attempts: 3}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`
	for _, bc := range []struct {
		name string
		cfg  config.Telemetry
	}{
		{"off", config.Telemetry{Traces: config.Traces{Exporter: "none"}}},
		{"metrics", config.Telemetry{Traces: config.Traces{Exporter: "none"}, Metrics: config.Metrics{Prometheus: true}}},
		{"traces", config.Telemetry{Traces: config.Traces{Exporter: "stdout", SampleRatio: 1}, Metrics: config.Metrics{Prometheus: true}}},
		{"traces-unsampled", config.Telemetry{Traces: config.Traces{Exporter: "stdout", SampleRatio: 0}, Metrics: config.Metrics{Prometheus: true}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var bopts []BuildOption
			if bc.name != "off" {
				p, err := telemetry.New(b.Context(), bc.cfg, telemetry.WithSpanExporter(dropSpans{}))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { p.Shutdown(context.Background()) })
				tel, err := TelemetryFrom(p)
				if err != nil {
					b.Fatal(err)
				}
				bopts = append(bopts, WithTelemetry(tel))
			}
			benchHandler(b, oneRoute(policy), bopts...)
		})
	}
}

// dropSpans is a span exporter that drops what it is given.
type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

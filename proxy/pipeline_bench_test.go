package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/encoding/protowire"

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
// overall and per-try deadlines, retry with budget, breaker), "hedged"
// with hedging on as well (the GETs race in the hedged loop, though no
// hedge is ever due). Run with -cpu 1,2.
func BenchmarkPipeline(b *testing.B) {
	for _, bc := range []struct{ name, policy string }{
		{"none", `{timeout: 0s}`},
		{"off", `{}`},
		{"on", `{timeout: 10s, per_try_timeout: 2s, max_in_flight: 1000000,
      retry: {attempts: 3}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`},
		{"hedged", `{timeout: 10s, per_try_timeout: 2s, max_in_flight: 1000000,
      retry: {attempts: 3}, hedge: {after: 1s}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`},
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

// BenchmarkTelemetryOTLP is BenchmarkTelemetry "traces" with the spans
// really exported over OTLP/HTTP to a loopback receiver in the same
// process (which reads each body into a reused buffer and counts its
// spans without decoding them): "sdk" through the SDK's otlptracehttp exporter, "otlpwire"
// through the sidecar's own (telemetry/otlpwire, what exporter otlp uses
// for http/protobuf); "off" is the same loop with no telemetry. Run with
// -cpu 1: the batch span processor's exports, the receiver and the GC
// then share the one P with the requests, so ns/op, B/op and allocs/op
// include them. The loop yields after each request, as a sidecar waiting
// on its sockets does, or the batch span processor would rarely run, and
// the queue is deeper than the default so that none overflows; the last
// spans are flushed within the timing.
// spans/op is what the receiver counted: 2 when none was dropped;
// cpu-ns/op the process's CPU time per request (steadier than ns/op when
// the machine is shared).
func BenchmarkTelemetryOTLP(b *testing.B) {
	policy := `{timeout: 10s, per_try_timeout: 2s, max_in_flight: 1000000,
      retry: {attempts: 3}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`
	for _, name := range []string{"off", "sdk", "otlpwire"} {
		b.Run(name, func(b *testing.B) {
			var spans atomic.Int64
			var mu sync.Mutex
			var body bytes.Buffer // reused: the receiver's own garbage is not the exporter's
			sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				body.Reset()
				body.ReadFrom(r.Body)
				spans.Add(int64(countSpans(body.Bytes())))
				mu.Unlock()
				w.Header().Set("Content-Type", "application/x-protobuf")
			}))
			defer sink.Close()
			var bopts []BuildOption
			var p *telemetry.Provider
			if name != "off" {
				b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.URL)
				b.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
				// With one P, the receiver's goroutine may wait for the
				// scheduler's next network poll (up to 10 ms) while the
				// requests go on; a deeper queue holds their spans meanwhile.
				b.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "65536")
				cfg := config.Telemetry{Traces: config.Traces{Exporter: "otlp", SampleRatio: 1}, Metrics: config.Metrics{Prometheus: true}}
				var topts []telemetry.Option
				if name == "sdk" {
					exp, err := otlptracehttp.New(b.Context())
					if err != nil {
						b.Fatal(err)
					}
					topts = append(topts, telemetry.WithSpanExporter(exp))
				}
				var err error
				p, err = telemetry.New(b.Context(), cfg, topts...)
				if err != nil {
					b.Fatal(err)
				}
				tel, err := TelemetryFrom(p)
				if err != nil {
					b.Fatal(err)
				}
				bopts = append(bopts, WithTelemetry(tel))
			}
			h, snap := newHandler(b, oneRoute(policy), nil, bopts...)
			snap.Pools["up"].rt = cannedTransport{}
			req := httptest.NewRequestWithContext(guardedContext(b), "GET", "http://app.local/items/1", nil)
			req.RemoteAddr = "127.0.0.1:5555"
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for range b.N {
				w := &discardWriter{h: http.Header{}}
				h.ServeHTTP(w, req)
				if w.status != 200 {
					b.Fatalf("status %d", w.status)
				}
				runtime.Gosched()
			}
			if p != nil {
				if err := p.Shutdown(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(spans.Load())/float64(b.N), "spans/op")
		})
	}
}

// cpuTime is the CPU time the process has used, user and system, in ns:
// unlike ns/op, it does not grow while other processes hold the core.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// countSpans counts the spans of an OTLP ExportTraceServiceRequest by
// walking its protobuf without decoding it: field 1 (ResourceSpans),
// then 2 (ScopeSpans), then 2 (Span).
func countSpans(b []byte) int {
	return countField(b, []protowire.Number{1, 2, 2})
}

func countField(b []byte, path []protowire.Number) int {
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n
		}
		b = b[l:]
		if num == path[0] && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return n
			}
			if len(path) == 1 {
				n++
			} else {
				n += countField(v, path[1:])
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return n
		}
		b = b[m:]
	}
	return n
}

// dropSpans is a span exporter that drops what it is given.
type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

package otlpwire

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// recorder keeps the spans it is given.
type recorder struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

func (r *recorder) ExportSpans(_ context.Context, s []sdktrace.ReadOnlySpan) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, s...)
	return nil
}
func (r *recorder) Shutdown(context.Context) error { return nil }

// proxySpans returns n spans shaped like the ones proxy/observe.go
// builds: pairs of a SERVER span (the app's request, child of a remote
// parent) and its CLIENT span (the attempt), with their attributes.
func proxySpans(tb testing.TB, n int) []sdktrace.ReadOnlySpan {
	res, err := resource.New(context.Background(), resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName("bench-sidecar")))
	if err != nil {
		tb.Fatal(err)
	}
	rec := &recorder{}
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSyncer(rec))
	tr := tp.Tracer("github.com/sidecar-proxy/sidecar")
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	for i := 0; i < n; i += 2 {
		ctx, srv := tr.Start(trace.ContextWithRemoteSpanContext(context.Background(), parent), "GET",
			trace.WithSpanKind(trace.SpanKindServer))
		srv.SetName("GET items")
		_, cl := tr.Start(ctx, "GET", trace.WithSpanKind(trace.SpanKindClient))
		cl.SetAttributes(
			attribute.String("http.request.method", "GET"),
			attribute.String("server.address", "127.0.0.1"),
			attribute.String("url.path", "/items/1"),
			attribute.String("sidecar.route", "items"),
			attribute.Int("server.port", 18081),
			attribute.String("sidecar.outcome", "ok"),
			attribute.Int("http.response.status_code", 200),
		)
		cl.End()
		srv.SetAttributes(
			attribute.String("http.request.method", "GET"),
			attribute.String("url.path", "/items/1"),
			attribute.String("network.protocol.version", "1.1"),
			attribute.String("server.address", "127.0.0.1"),
			attribute.Int("server.port", 18080),
			attribute.String("sidecar.outcome", "ok"),
			attribute.Int("sidecar.attempts", 1),
			attribute.String("sidecar.route", "items"),
			attribute.Int("http.response.status_code", 200),
		)
		if i%64 == 0 {
			srv.SetStatus(codes.Error, "upstream_error")
		}
		srv.End()
	}
	tp.Shutdown(context.Background())
	return rec.spans[:n]
}

// sink is a loopback OTLP/HTTP receiver that reads and drops each body.
func sink(tb testing.TB) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	tb.Cleanup(s.Close)
	return s
}

// BenchmarkEncode is AppendRequest alone on a batch of 512 proxy spans.
func BenchmarkEncode(b *testing.B) {
	spans := proxySpans(b, 512)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendRequest(buf[:0], spans)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(spans)), "ns/span")
	b.ReportMetric(float64(len(buf))/float64(len(spans)), "B/span")
}

// BenchmarkExport exports batches of 512 spans shaped like the proxy's
// (proxySpans) to a loopback sink; ns/op and allocs/op are per batch,
// ns/span per span. docs/BENCHMARKS.md, "Telemetry cost".
func BenchmarkExport(b *testing.B) {
	const batch = 512
	spans := proxySpans(b, batch)
	for _, bc := range []struct {
		name string
		new  func(url string) (sdktrace.SpanExporter, error)
	}{
		{"otlptracehttp", func(url string) (sdktrace.SpanExporter, error) {
			return otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(url+"/v1/traces"))
		}},
		{"otlpwire", func(url string) (sdktrace.SpanExporter, error) {
			return New(Config{URL: url + "/v1/traces"})
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := sink(b)
			exp, err := bc.new(s.URL)
			if err != nil {
				b.Fatal(err)
			}
			defer exp.Shutdown(context.Background())
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := exp.ExportSpans(ctx, spans); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/span")
		})
	}
}

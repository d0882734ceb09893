package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

// BenchmarkSDKSpan is what the SDK costs per CLIENT span, shaped like
// proxy/observe.go's, before any export (a batch span processor whose
// exporter drops the spans): "as-is" sets its 7 attributes at its end,
// as the proxy does; "4-attrs" drops the 3 its SERVER parent already
// carries (http.request.method, url.path, sidecar.route); "at-start"
// passes the 7 to Start instead; "no-attrs" sets none.
// docs/BENCHMARKS.md, "Telemetry cost".
func BenchmarkSDKSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(dropSpans{}))
	defer tp.Shutdown(context.Background())
	tr := tp.Tracer("bench")
	ctx, parent := tr.Start(context.Background(), "GET items", trace.WithSpanKind(trace.SpanKindServer))
	defer parent.End()
	kind := trace.WithSpanKind(trace.SpanKindClient)
	seven := func() []attribute.KeyValue {
		return []attribute.KeyValue{
			attribute.String("http.request.method", "GET"),
			attribute.String("server.address", "127.0.0.1"),
			attribute.String("url.path", "/items/1"),
			attribute.String("sidecar.route", "items"),
			attribute.Int("server.port", 18081),
			attribute.String("sidecar.outcome", "ok"),
			attribute.Int("http.response.status_code", 200),
		}
	}
	for _, bc := range []struct {
		name string
		run  func()
	}{
		{"as-is", func() {
			_, s := tr.Start(ctx, "GET", kind)
			s.SetAttributes(seven()...)
			s.End()
		}},
		{"4-attrs", func() {
			_, s := tr.Start(ctx, "GET", kind)
			s.SetAttributes(
				attribute.String("server.address", "127.0.0.1"),
				attribute.Int("server.port", 18081),
				attribute.String("sidecar.outcome", "ok"),
				attribute.Int("http.response.status_code", 200),
			)
			s.End()
		}},
		{"at-start", func() {
			_, s := tr.Start(ctx, "GET", kind, trace.WithAttributes(seven()...))
			s.End()
		}},
		{"no-attrs", func() {
			_, s := tr.Start(ctx, "GET", kind)
			s.End()
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bc.run()
			}
		})
	}
}

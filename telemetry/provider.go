package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/telemetry/otlpwire"
)

// ScopeName is the instrumentation scope of every span and instrument.
const ScopeName = "github.com/sidecar-proxy/sidecar"

// Provider owns the OpenTelemetry SDK of one sidecar process: the tracer
// provider (none when telemetry.traces.exporter is none), the meter
// provider and the Prometheus registry that /metrics serves. Build it
// once at start; Shutdown flushes spans on the way out.
type Provider struct {
	tp       *sdktrace.TracerProvider // nil: tracing off
	tracer   trace.Tracer             // nil: tracing off
	mp       *sdkmetric.MeterProvider // nil: metrics off
	meter    metric.Meter             // a no-op meter when metrics are off
	registry *prometheus.Registry
	prop     propagation.TextMapPropagator
}

// Option adds to what New builds; tests use them to record spans and
// metrics in memory.
type Option func(*options)

type options struct {
	spanExporter sdktrace.SpanExporter
	syncSpans    bool
	readers      []sdkmetric.Reader
	stdout       io.Writer
}

// WithSpanExporter sends spans to e instead of the configured exporter,
// whatever telemetry.traces.exporter says other than none.
func WithSpanExporter(e sdktrace.SpanExporter) Option {
	return func(o *options) { o.spanExporter = e }
}

// WithSyncSpans exports each span as it ends instead of in batches, so
// that a test sees a span once it has ended.
func WithSyncSpans() Option {
	return func(o *options) { o.syncSpans = true }
}

// WithMetricReader adds a reader beside the Prometheus one, such as a
// manual reader in tests.
func WithMetricReader(r sdkmetric.Reader) Option {
	return func(o *options) { o.readers = append(o.readers, r) }
}

// WithStdout sets where the stdout exporter writes. Default os.Stdout.
func WithStdout(w io.Writer) Option {
	return func(o *options) { o.stdout = w }
}

// New builds the SDK from cfg and the standard OTEL_* environment
// variables (docs/observability.md):
//   - traces: exporter otlp (OTEL_EXPORTER_OTLP_PROTOCOL grpc or
//     http/protobuf, the default, through package otlpwire; endpoint,
//     headers and TLS from their OTEL_EXPORTER_OTLP_* variables), stdout
//     or none; a batch span
//     processor that honours OTEL_BSP_*; parent-based sampling with
//     sample_ratio for roots; service.name from service_name and the
//     rest of the resource from OTEL_RESOURCE_ATTRIBUTES.
//   - metrics: a meter provider whose Prometheus exporter fills the
//     registry that MetricsHandler serves, when metrics.prometheus is on.
//
// W3C trace context and baggage are the propagators.
func New(ctx context.Context, cfg config.Telemetry, opts ...Option) (*Provider, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	p := &Provider{
		prop:  propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		meter: noop.NewMeterProvider().Meter(ScopeName),
	}
	res, err := resource.New(ctx,
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	if cfg.Metrics.Prometheus || len(o.readers) > 0 {
		var mopts []sdkmetric.Option
		// No exemplars: /metrics serves the text format, which has none,
		// and offering each measurement to a reservoir costs on every
		// traced request.
		mopts = append(mopts, sdkmetric.WithResource(res), sdkmetric.WithView(durationView),
			sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
		if cfg.Metrics.Prometheus {
			p.registry = prometheus.NewRegistry()
			exp, err := otelprom.New(
				otelprom.WithRegisterer(p.registry),
				otelprom.WithoutScopeInfo(),
				otelprom.WithoutTargetInfo(),
			)
			if err != nil {
				return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
			}
			mopts = append(mopts, sdkmetric.WithReader(exp))
		}
		for _, r := range o.readers {
			mopts = append(mopts, sdkmetric.WithReader(r))
		}
		p.mp = sdkmetric.NewMeterProvider(mopts...)
		p.meter = p.mp.Meter(ScopeName)
	}
	if cfg.Traces.Exporter == "none" || cfg.Traces.Exporter == "" {
		return p, nil
	}
	exp := o.spanExporter
	if exp == nil {
		exp, err = spanExporter(ctx, cfg.Traces.Exporter, o.stdout)
		if err != nil {
			p.Shutdown(ctx)
			return nil, err
		}
	}
	var sp sdktrace.SpanProcessor
	if o.syncSpans {
		sp = sdktrace.NewSimpleSpanProcessor(exp)
	} else {
		sp = sdktrace.NewBatchSpanProcessor(exp) // OTEL_BSP_* honoured
	}
	p.tp = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.Traces.SampleRatio))),
		sdktrace.WithSpanProcessor(sp),
	)
	p.tracer = p.tp.Tracer(ScopeName)
	return p, nil
}

// spanExporter builds the exporter telemetry.traces.exporter names.
func spanExporter(ctx context.Context, name string, stdout io.Writer) (sdktrace.SpanExporter, error) {
	switch name {
	case "stdout":
		if stdout == nil {
			stdout = os.Stdout
		}
		return stdouttrace.New(stdouttrace.WithWriter(stdout))
	case "otlp":
		proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if proto == "" {
			proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch strings.TrimSpace(proto) {
		case "", "http/protobuf":
			// Our own exporter, not the SDK's otlptracehttp: it encodes
			// each batch straight to protobuf, at a fraction of the CPU
			// (docs/BENCHMARKS.md, "Telemetry cost").
			return otlpwire.NewFromEnv()
		case "grpc":
			return otlptracegrpc.New(ctx)
		default:
			return nil, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", proto)
		}
	}
	return nil, fmt.Errorf("telemetry: unknown traces exporter %q", name)
}

// durationView gives every histogram in seconds the proxy's boundaries.
var durationView = sdkmetric.NewView(
	sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram, Unit: "s"},
	sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: DurationBuckets}},
)

// DurationBuckets are the histogram boundaries, in seconds, of every
// duration the sidecar records: 100 µs to 30 s.
var DurationBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
}

// Tracer returns the tracer, or nil when tracing is off: callers build no
// span at all then.
func (p *Provider) Tracer() trace.Tracer { return p.tracer }

// MetricsOn reports whether anything reads the metrics: the Prometheus
// exporter or a reader given with WithMetricReader.
func (p *Provider) MetricsOn() bool { return p.mp != nil }

// Meter returns the meter; a no-op one when metrics are off.
func (p *Provider) Meter() metric.Meter { return p.meter }

// Propagator is W3C trace context and baggage.
func (p *Provider) Propagator() propagation.TextMapPropagator { return p.prop }

// MetricsHandler serves the Prometheus exposition of every instrument, or
// nil when telemetry.metrics.prometheus is off.
func (p *Provider) MetricsHandler() http.Handler {
	if p.registry == nil {
		return nil
	}
	return promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Shutdown flushes the spans still batched and stops the providers.
func (p *Provider) Shutdown(ctx context.Context) error {
	var errs []error
	if p.tp != nil {
		errs = append(errs, p.tp.Shutdown(ctx))
	}
	if p.mp != nil {
		errs = append(errs, p.mp.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/sidecar-proxy/sidecar/config"
)

func traces(exporter string, ratio float64) config.Telemetry {
	return config.Telemetry{ServiceName: "svc", Traces: config.Traces{Exporter: exporter, SampleRatio: ratio}}
}

func TestNoneBuildsNoTracer(t *testing.T) {
	p, err := New(t.Context(), traces("none", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if p.Tracer() != nil {
		t.Errorf("Tracer() with exporter none = %v, want nil", p.Tracer())
	}
	if p.MetricsOn() || p.MetricsHandler() != nil {
		t.Errorf("MetricsOn() = %v, MetricsHandler() = %v with metrics off, want false and nil", p.MetricsOn(), p.MetricsHandler())
	}
}

// TestStdoutExporter: the stdout exporter writes each span, flushed by
// Shutdown, with the service name as its resource.
func TestStdoutExporter(t *testing.T) {
	var out bytes.Buffer
	p, err := New(t.Context(), traces("stdout", 1), WithStdout(&out))
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.Tracer().Start(t.Context(), "GET all", trace.WithSpanKind(trace.SpanKindServer))
	span.End()
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name     string
		Resource []struct {
			Key   string
			Value struct{ Value any }
		}
	}
	if err := json.NewDecoder(&out).Decode(&got); err != nil {
		t.Fatalf("stdout exporter wrote %q: %v", out.String(), err)
	}
	if got.Name != "GET all" {
		t.Errorf("exported span name = %q, want %q", got.Name, "GET all")
	}
	service := ""
	for _, kv := range got.Resource {
		if kv.Key == "service.name" {
			service, _ = kv.Value.Value.(string)
		}
	}
	if service != "svc" {
		t.Errorf("exported resource service.name = %q, want svc", service)
	}
}

// TestSamplingIsParentBased: with sample_ratio 0 a root is not sampled,
// but a span whose remote parent is sampled is.
func TestSamplingIsParentBased(t *testing.T) {
	p, err := New(t.Context(), traces("stdout", 0), WithStdout(&bytes.Buffer{}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	_, root := p.Tracer().Start(t.Context(), "root")
	if root.SpanContext().IsSampled() {
		t.Errorf("a root span with sample_ratio 0 is sampled")
	}
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1},
		SpanID:     trace.SpanID{2},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	_, child := p.Tracer().Start(trace.ContextWithRemoteSpanContext(t.Context(), parent), "child")
	if !child.SpanContext().IsSampled() {
		t.Errorf("a span whose remote parent is sampled is not sampled with sample_ratio 0")
	}
}

func TestOTLPProtocol(t *testing.T) {
	tests := []struct {
		protocol string
		wantErr  string
	}{
		{"", ""},
		{"http/protobuf", ""},
		{"grpc", ""},
		{"http/json", `OTEL_EXPORTER_OTLP_PROTOCOL "http/json": want grpc or http/protobuf`},
	}
	for _, tt := range tests {
		t.Run(tt.protocol, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tt.protocol)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			p, err := New(t.Context(), traces("otlp", 1))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(otlp, protocol %q) = %v, want an error with %q", tt.protocol, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(otlp, protocol %q) = %v", tt.protocol, err)
			}
			if p.Tracer() == nil {
				t.Errorf("New(otlp).Tracer() = nil")
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // nothing listens: do not wait to flush
			p.Shutdown(ctx)
		})
	}
}

// TestOTLPHTTPEnvErrors: a bad OTEL_EXPORTER_OTLP_* setting for
// http/protobuf stops New with an error naming the variable.
func TestOTLPHTTPEnvErrors(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")
	_, err := New(t.Context(), traces("otlp", 1))
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_ENDPOINT") {
		t.Errorf("New(otlp) with an endpoint without a scheme = %v, want an error naming OTEL_EXPORTER_OTLP_ENDPOINT", err)
	}
}

package otlpwire

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// richSpans returns spans that use every field OTLP carries: attributes
// of every type, events, links with attributes and trace state, status,
// remote and local parents, trace state, dropped counts; from two
// resources and, in the first, two scopes.
func richSpans(t *testing.T) []sdktrace.ReadOnlySpan {
	rec := &recorder{}
	limits := sdktrace.NewSpanLimits()
	limits.AttributeCountLimit = 16
	limits.EventCountLimit = 2
	limits.LinkCountLimit = 2
	limits.AttributePerEventCountLimit = 2
	limits.AttributePerLinkCountLimit = 2
	res1 := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.40.0",
		attribute.String("service.name", "one"), attribute.Int("pid", 42), attribute.Bool("ok", true),
		attribute.Float64("ratio", 0.25), attribute.StringSlice("tags", []string{"a", "b"}))
	res2 := resource.NewSchemaless(attribute.String("service.name", "two"))
	tp1 := sdktrace.NewTracerProvider(sdktrace.WithResource(res1), sdktrace.WithSyncer(rec), sdktrace.WithRawSpanLimits(limits))
	tp2 := sdktrace.NewTracerProvider(sdktrace.WithResource(res2), sdktrace.WithSyncer(rec))
	a := tp1.Tracer("scope.a", trace.WithInstrumentationVersion("1.2.3"), trace.WithSchemaURL("https://example.com/schema"),
		trace.WithInstrumentationAttributes(attribute.String("lib", "x")))
	b := tp1.Tracer("scope.b")
	c := tp2.Tracer("scope.c")

	ts, err := trace.ParseTraceState("vendor=abc,other=1")
	if err != nil {
		t.Fatal(err)
	}
	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, SpanID: trace.SpanID{1, 1, 1, 1, 1, 1, 1, 1},
		TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true,
	})
	linked := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}, SpanID: trace.SpanID{2, 2, 2, 2, 2, 2, 2, 2},
		TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true,
	})
	start := time.Unix(1_700_000_000, 123456789)
	ctx, root := a.Start(trace.ContextWithRemoteSpanContext(context.Background(), remote), "root",
		trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
		trace.WithLinks(
			trace.Link{SpanContext: linked}, // the oldest, dropped over the limit
			trace.Link{SpanContext: remote},
			trace.Link{SpanContext: linked, Attributes: []attribute.KeyValue{attribute.String("l1", "v"), attribute.Int("l2", -7), attribute.Bool("l3", false)}},
		))
	root.SetAttributes(
		attribute.String("s", "string"), attribute.String("empty", ""),
		attribute.Bool("t", true), attribute.Bool("f", false),
		attribute.Int64("i", -1234567890123), attribute.Int("zero", 0),
		attribute.Float64("pi", 3.14159), attribute.Float64("fzero", 0),
		attribute.StringSlice("ss", []string{"x", "", "z"}), attribute.BoolSlice("bs", []bool{true, false}),
		attribute.Int64Slice("is", []int64{1, -2, 1 << 40}), attribute.Float64Slice("fs", []float64{0.5, -1e300}),
		attribute.ByteSlice("raw", []byte{0, 1, 255}),
		attribute.Slice("mixed", attribute.StringValue("a"), attribute.IntValue(1), attribute.SliceValue(attribute.BoolValue(true)), attribute.Value{}),
		attribute.Map("m", attribute.String("k", "v"), attribute.Map("inner", attribute.Float64("x", 1.5))),
		attribute.KeyValue{Key: "empty.value"},
		attribute.String("over.limit", "dropped"), attribute.String("over.limit.2", "dropped"),
	)
	root.AddEvent("ev1") // the oldest, dropped over the limit
	root.AddEvent("ev2", trace.WithTimestamp(start.Add(2*time.Millisecond)))
	root.AddEvent("ev3", trace.WithTimestamp(start.Add(time.Millisecond)),
		trace.WithAttributes(attribute.String("e1", "v"), attribute.Int("e2", 2), attribute.Bool("e3", true)))
	root.SetStatus(codes.Error, "upstream_timeout")
	_, child := b.Start(ctx, "child", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(start.Add(time.Microsecond)))
	child.SetAttributes(attribute.String("long", string(bytes.Repeat([]byte("y"), 300))))
	child.SetStatus(codes.Ok, "ignored for Ok")
	child.End(trace.WithTimestamp(start.Add(5 * time.Millisecond)))
	root.End(trace.WithTimestamp(start.Add(6 * time.Millisecond)))
	for _, k := range []trace.SpanKind{trace.SpanKindInternal, trace.SpanKindProducer, trace.SpanKindConsumer} {
		_, s := c.Start(context.Background(), "", trace.WithSpanKind(k))
		s.End()
	}
	_, s := a.Start(context.Background(), "a again")
	s.End()
	return rec.spans
}

// officialRequest is what the SDK's otlptracehttp exporter sends for
// spans, as decoded by a loopback receiver.
func officialRequest(t *testing.T, spans []sdktrace.ReadOnlySpan) *coltracepb.ExportTraceServiceRequest {
	var mu sync.Mutex
	var body []byte
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		body = b
		mu.Unlock()
	}))
	defer s.Close()
	exp, err := otlptracehttp.New(t.Context(), otlptracehttp.WithEndpointURL(s.URL+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	if err := exp.ExportSpans(t.Context(), spans); err != nil {
		t.Fatal(err)
	}
	exp.Shutdown(context.Background())
	var req coltracepb.ExportTraceServiceRequest
	mu.Lock()
	defer mu.Unlock()
	if err := proto.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	return &req
}

// TestEncodeAsOfficial: AppendRequest's bytes decode to what the SDK's
// own OTLP exporter sends for the same spans, field for field, except
// the links' trace state, which only AppendRequest carries.
func TestEncodeAsOfficial(t *testing.T) {
	spans := richSpans(t)
	var got coltracepb.ExportTraceServiceRequest
	b := AppendRequest([]byte("prefix"), spans)
	if string(b[:6]) != "prefix" {
		t.Fatalf("AppendRequest did not append")
	}
	if err := proto.Unmarshal(b[6:], &got); err != nil {
		t.Fatalf("AppendRequest's bytes do not decode: %v", err)
	}
	want := officialRequest(t, spans)

	// The official exporter orders resources at random (a map).
	for _, r := range []*coltracepb.ExportTraceServiceRequest{&got, want} {
		sort.SliceStable(r.ResourceSpans, func(i, j int) bool {
			return r.ResourceSpans[i].GetSchemaUrl() > r.ResourceSpans[j].GetSchemaUrl()
		})
	}
	// Links' trace state, carried by AppendRequest only.
	var linkStates []string
	for _, rs := range got.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				for _, l := range sp.GetLinks() {
					linkStates = append(linkStates, l.GetTraceState())
					l.TraceState = ""
				}
			}
		}
	}
	if len(linkStates) != 2 || linkStates[0] != "vendor=abc,other=1" || linkStates[1] != "vendor=abc,other=1" {
		t.Errorf("links' trace states = %q, want the linked contexts' vendor=abc,other=1 twice", linkStates)
	}
	if !proto.Equal(&got, want) {
		t.Errorf("AppendRequest:\n%s\nthe SDK's exporter:\n%s", prototext.Format(&got), prototext.Format(want))
	}

	// And what the spans should carry, spelled out for the parts above
	// that compare equal only if both are right.
	rs := got.GetResourceSpans()
	if len(rs) != 2 || len(rs[0].GetScopeSpans()) != 2 || len(rs[1].GetScopeSpans()) != 1 {
		t.Fatalf("got %d resources, want 2: the first with 2 scopes, the second with 1", len(rs))
	}
	var sa *tracepb.ScopeSpans
	for _, ss := range rs[0].GetScopeSpans() {
		if ss.GetScope().GetName() == "scope.a" {
			sa = ss
		}
	}
	if sc := sa.GetScope(); sc.GetName() != "scope.a" || sc.GetVersion() != "1.2.3" || len(sc.GetAttributes()) != 1 || sa.GetSchemaUrl() != "https://example.com/schema" {
		t.Errorf("scope = %v (schema %q), want scope.a 1.2.3 with lib=x and its schema", sc, sa.GetSchemaUrl())
	}
	var root *tracepb.Span
	for _, sp := range sa.GetSpans() {
		if sp.GetName() == "root" {
			root = sp
		}
	}
	if root == nil {
		t.Fatal("no span root in scope.a")
	}
	if root.GetTraceState() != "vendor=abc,other=1" || !bytes.Equal(root.GetParentSpanId(), []byte{1, 1, 1, 1, 1, 1, 1, 1}) ||
		root.GetFlags() != 0x301 || root.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("root: trace state %q, parent %x, flags %#x, kind %v", root.GetTraceState(), root.GetParentSpanId(), root.GetFlags(), root.GetKind())
	}
	if root.GetDroppedAttributesCount() != 2 || root.GetDroppedEventsCount() != 1 || root.GetDroppedLinksCount() != 1 ||
		root.GetEvents()[1].GetDroppedAttributesCount() != 1 || root.GetLinks()[1].GetDroppedAttributesCount() != 1 {
		t.Errorf("root's dropped counts: attributes %d, events %d, links %d, ev3's attributes %d, the last link's attributes %d; want 2, 1, 1, 1, 1",
			root.GetDroppedAttributesCount(), root.GetDroppedEventsCount(), root.GetDroppedLinksCount(),
			root.GetEvents()[1].GetDroppedAttributesCount(), root.GetLinks()[1].GetDroppedAttributesCount())
	}
	if st := root.GetStatus(); st.GetCode() != tracepb.Status_STATUS_CODE_ERROR || st.GetMessage() != "upstream_timeout" {
		t.Errorf("root status = %v", st)
	}
	if root.GetStartTimeUnixNano() != 1_700_000_000_123_456_789 || root.GetEndTimeUnixNano() != 1_700_000_000_129_456_789 {
		t.Errorf("root times = %d, %d", root.GetStartTimeUnixNano(), root.GetEndTimeUnixNano())
	}
}

// TestEncodeEmpty: no spans, no bytes; nil spans are skipped.
func TestEncodeEmpty(t *testing.T) {
	if b := AppendRequest(nil, nil); len(b) != 0 {
		t.Errorf("AppendRequest(nil) = %x, want nothing", b)
	}
	if b := AppendRequest(nil, []sdktrace.ReadOnlySpan{nil}); len(b) != 0 {
		t.Errorf("AppendRequest([nil]) = %x, want nothing", b)
	}
}

// TestEncodeProxySpans: a batch shaped like the proxy's, in the common
// path (one resource, one scope), decodes as the official one.
func TestEncodeProxySpans(t *testing.T) {
	spans := proxySpans(t, 64)
	var got coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(AppendRequest(nil, spans), &got); err != nil {
		t.Fatal(err)
	}
	if want := officialRequest(t, spans); !proto.Equal(&got, want) {
		t.Errorf("AppendRequest:\n%s\nthe SDK's exporter:\n%s", prototext.Format(&got), prototext.Format(want))
	}
	if n := len(got.GetResourceSpans()[0].GetScopeSpans()[0].GetSpans()); n != 64 {
		t.Errorf("got %d spans, want 64", n)
	}
}

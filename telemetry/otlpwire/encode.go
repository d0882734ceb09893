package otlpwire

import (
	"math"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the OTLP messages written here
// (opentelemetry/proto/collector/trace/v1/trace_service.proto and the
// trace, resource and common protos it includes).
const (
	reqResourceSpans = 1 // ExportTraceServiceRequest.resource_spans

	rsResource   = 1 // ResourceSpans
	rsScopeSpans = 2
	rsSchemaURL  = 3

	resAttributes = 1 // Resource

	ssScope     = 1 // ScopeSpans
	ssSpans     = 2
	ssSchemaURL = 3

	scopeName       = 1 // InstrumentationScope
	scopeVersion    = 2
	scopeAttributes = 3

	spanTraceID         = 1 // Span
	spanSpanID          = 2
	spanTraceState      = 3
	spanParentSpanID    = 4
	spanName            = 5
	spanKind            = 6
	spanStart           = 7
	spanEnd             = 8
	spanAttributes      = 9
	spanDroppedAttrs    = 10
	spanEvents          = 11
	spanDroppedEvents   = 12
	spanLinks           = 13
	spanDroppedLinks    = 14
	spanStatus          = 15
	spanFlags           = 16
	eventTime           = 1 // Span.Event
	eventName           = 2
	eventAttributes     = 3
	eventDroppedAttrs   = 4
	linkTraceID         = 1 // Span.Link
	linkSpanID          = 2
	linkTraceState      = 3
	linkAttributes      = 4
	linkDroppedAttrs    = 5
	linkFlags           = 6
	statusMessage       = 2 // Status
	statusCode          = 3
	kvKey               = 1 // KeyValue
	kvValue             = 2
	anyString           = 1 // AnyValue, a oneof: a member is written even when zero
	anyBool             = 2
	anyInt              = 3
	anyDouble           = 4
	anyArray            = 5
	anyKvlist           = 6
	anyBytes            = 7
	arrayValues         = 1 // ArrayValue
	kvlistValues        = 1 // KeyValueList
	flagHasIsRemote     = 0x100
	flagIsRemote        = 0x200
	statusCodeOK        = 1
	statusCodeError     = 2
	maxVarintLen        = 10
	oneByteLengthLimit  = 0x80
	spanKindUnspecified = 0
)

// AppendRequest appends to b the protobuf encoding of the OTLP
// ExportTraceServiceRequest that carries spans, and returns it. The
// spans are grouped by resource, then by instrumentation scope, each
// group written once, in the order they first appear. It carries what
// the OpenTelemetry Go SDK's own OTLP transform carries, plus each link's
// trace state (docs/observability.md).
func AppendRequest(b []byte, spans []sdktrace.ReadOnlySpan) []byte {
	e := encoder{b: b}
	e.request(spans)
	return e.b
}

// encoder appends protobuf to b. A nested message's length is written
// after its content: begin reserves one byte for it, end writes it there,
// moving the content up when the length takes more than one byte.
type encoder struct{ b []byte }

var zeros [maxVarintLen]byte

// begin starts the nested message of field num; end(begin(num)) ends it.
func (e *encoder) begin(num protowire.Number) int {
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = append(e.b, 0)
	return len(e.b)
}

func (e *encoder) end(start int) {
	n := len(e.b) - start
	if n < oneByteLengthLimit {
		e.b[start-1] = byte(n)
		return
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	e.b = append(e.b, zeros[:extra]...)
	copy(e.b[start+extra:], e.b[start:start+n])
	protowire.AppendVarint(e.b[:start-1], uint64(n))
}

func (e *encoder) str(num protowire.Number, s string) {
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendString(e.b, s)
}

// strOpt writes s unless it is empty, as proto3 does for a plain field.
func (e *encoder) strOpt(num protowire.Number, s string) {
	if s != "" {
		e.str(num, s)
	}
}

func (e *encoder) bytes(num protowire.Number, p []byte) {
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendBytes(e.b, p)
}

func (e *encoder) varint(num protowire.Number, v uint64) {
	if v != 0 {
		e.b = protowire.AppendTag(e.b, num, protowire.VarintType)
		e.b = protowire.AppendVarint(e.b, v)
	}
}

func (e *encoder) fixed64(num protowire.Number, v uint64) {
	if v != 0 {
		e.b = protowire.AppendTag(e.b, num, protowire.Fixed64Type)
		e.b = protowire.AppendFixed64(e.b, v)
	}
}

func (e *encoder) fixed32(num protowire.Number, v uint32) {
	if v != 0 {
		e.b = protowire.AppendTag(e.b, num, protowire.Fixed32Type)
		e.b = protowire.AppendFixed32(e.b, v)
	}
}

// group is the spans of one resource and scope.
type group struct {
	res   *resource.Resource
	key   attribute.Distinct
	scope instrumentation.Scope
}

func (e *encoder) request(spans []sdktrace.ReadOnlySpan) {
	// The usual batch: one resource, one scope (the tracer provider's and
	// the sidecar's tracer); checked without building any group.
	var first sdktrace.ReadOnlySpan
	same := true
	for _, s := range spans {
		if s == nil {
			continue
		}
		if first == nil {
			first = s
			continue
		}
		if s.Resource() != first.Resource() || s.InstrumentationScope() != first.InstrumentationScope() {
			same = false
			break
		}
	}
	if first == nil {
		return
	}
	if same {
		rs := e.begin(reqResourceSpans)
		e.resource(first.Resource())
		e.scopeSpans(spans, group{res: first.Resource(), scope: first.InstrumentationScope()}, false)
		e.strOpt(rsSchemaURL, first.Resource().SchemaURL())
		e.end(rs)
		return
	}
	// Several: each resource once, with each of its scopes once.
	var groups []group
	for _, s := range spans {
		if s == nil {
			continue
		}
		g := group{res: s.Resource(), key: s.Resource().Equivalent(), scope: s.InstrumentationScope()}
		found := false
		for _, h := range groups {
			if h.key == g.key && h.scope == g.scope {
				found = true
				break
			}
		}
		if !found {
			groups = append(groups, g)
		}
	}
	for i, g := range groups {
		seen := false
		for _, h := range groups[:i] {
			if h.key == g.key {
				seen = true
				break
			}
		}
		if seen {
			continue // written with the first group of its resource
		}
		rs := e.begin(reqResourceSpans)
		e.resource(g.res)
		for _, h := range groups[i:] {
			if h.key == g.key {
				e.scopeSpans(spans, h, true)
			}
		}
		e.strOpt(rsSchemaURL, g.res.SchemaURL())
		e.end(rs)
	}
}

func (e *encoder) resource(r *resource.Resource) {
	if r == nil {
		return
	}
	m := e.begin(rsResource)
	for it := r.Iter(); it.Next(); {
		e.keyValue(resAttributes, it.Attribute())
	}
	e.end(m)
}

// scopeSpans writes g's ScopeSpans: all of spans, or with filter only
// those of g's resource and scope.
func (e *encoder) scopeSpans(spans []sdktrace.ReadOnlySpan, g group, filter bool) {
	ss := e.begin(rsScopeSpans)
	if g.scope != (instrumentation.Scope{}) {
		m := e.begin(ssScope)
		e.strOpt(scopeName, g.scope.Name)
		e.strOpt(scopeVersion, g.scope.Version)
		for it := g.scope.Attributes.Iter(); it.Next(); {
			e.keyValue(scopeAttributes, it.Attribute())
		}
		e.end(m)
	}
	for _, s := range spans {
		if s == nil {
			continue
		}
		if filter && (s.Resource().Equivalent() != g.key || s.InstrumentationScope() != g.scope) {
			continue
		}
		e.span(s)
	}
	e.strOpt(ssSchemaURL, g.scope.SchemaURL)
	e.end(ss)
}

func (e *encoder) span(s sdktrace.ReadOnlySpan) {
	m := e.begin(ssSpans)
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	e.bytes(spanTraceID, tid[:])
	e.bytes(spanSpanID, sid[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		e.str(spanTraceState, ts.String())
	}
	parent := s.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		e.bytes(spanParentSpanID, psid[:])
	}
	e.strOpt(spanName, s.Name())
	e.varint(spanKind, uint64(kind(s.SpanKind())))
	e.fixed64(spanStart, unixNano(s.StartTime().UnixNano()))
	e.fixed64(spanEnd, unixNano(s.EndTime().UnixNano()))
	for _, kv := range s.Attributes() {
		e.keyValue(spanAttributes, kv)
	}
	e.varint(spanDroppedAttrs, clampUint32(s.DroppedAttributes()))
	for _, ev := range s.Events() {
		m := e.begin(spanEvents)
		e.fixed64(eventTime, unixNano(ev.Time.UnixNano()))
		e.strOpt(eventName, ev.Name)
		for _, kv := range ev.Attributes {
			e.keyValue(eventAttributes, kv)
		}
		e.varint(eventDroppedAttrs, clampUint32(ev.DroppedAttributeCount))
		e.end(m)
	}
	e.varint(spanDroppedEvents, clampUint32(s.DroppedEvents()))
	for _, l := range s.Links() {
		m := e.begin(spanLinks)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		e.bytes(linkTraceID, ltid[:])
		e.bytes(linkSpanID, lsid[:])
		if ts := l.SpanContext.TraceState(); ts.Len() > 0 {
			e.str(linkTraceState, ts.String())
		}
		for _, kv := range l.Attributes {
			e.keyValue(linkAttributes, kv)
		}
		e.varint(linkDroppedAttrs, clampUint32(l.DroppedAttributeCount))
		e.fixed32(linkFlags, flags(l.SpanContext.TraceFlags(), l.SpanContext.IsRemote()))
		e.end(m)
	}
	e.varint(spanDroppedLinks, clampUint32(s.DroppedLinks()))
	// The status is always present, as in the SDK's transform, even unset.
	st := s.Status()
	sm := e.begin(spanStatus)
	e.strOpt(statusMessage, st.Description)
	switch st.Code {
	case codes.Ok:
		e.varint(statusCode, statusCodeOK)
	case codes.Error:
		e.varint(statusCode, statusCodeError)
	}
	e.end(sm)
	e.fixed32(spanFlags, flags(sc.TraceFlags(), parent.IsRemote()))
	e.end(m)
}

// flags are the span's W3C trace flags and whether its parent (a link's
// context, for a link) is remote, as OTLP's SpanFlags carry them.
func flags(tf trace.TraceFlags, remote bool) uint32 {
	f := uint32(tf) | flagHasIsRemote
	if remote {
		f |= flagIsRemote
	}
	return f
}

// kind maps the API's span kinds (1 internal to 5 consumer) to OTLP's,
// which number them the same.
func kind(k trace.SpanKind) int {
	if k < trace.SpanKindInternal || k > trace.SpanKindConsumer {
		return spanKindUnspecified
	}
	return int(k)
}

func unixNano(n int64) uint64 { return uint64(max(0, n)) }

func clampUint32(v int) uint64 {
	return uint64(min(max(v, 0), math.MaxUint32))
}

// keyValue writes kv as the KeyValue field num.
func (e *encoder) keyValue(num protowire.Number, kv attribute.KeyValue) {
	m := e.begin(num)
	e.str(kvKey, string(kv.Key))
	e.value(kvValue, kv.Value)
	e.end(m)
}

// value writes v as the AnyValue field num.
func (e *encoder) value(num protowire.Number, v attribute.Value) {
	m := e.begin(num)
	switch v.Type() {
	case attribute.STRING:
		e.str(anyString, v.AsString())
	case attribute.INT64:
		e.b = protowire.AppendTag(e.b, anyInt, protowire.VarintType)
		e.b = protowire.AppendVarint(e.b, uint64(v.AsInt64()))
	case attribute.BOOL:
		e.b = protowire.AppendTag(e.b, anyBool, protowire.VarintType)
		e.b = protowire.AppendVarint(e.b, protowire.EncodeBool(v.AsBool()))
	case attribute.FLOAT64:
		e.b = protowire.AppendTag(e.b, anyDouble, protowire.Fixed64Type)
		e.b = protowire.AppendFixed64(e.b, math.Float64bits(v.AsFloat64()))
	case attribute.BYTESLICE:
		e.bytes(anyBytes, v.AsByteSlice())
	case attribute.STRINGSLICE:
		a := e.begin(anyArray)
		for _, s := range v.AsStringSlice() {
			x := e.begin(arrayValues)
			e.str(anyString, s)
			e.end(x)
		}
		e.end(a)
	case attribute.INT64SLICE:
		a := e.begin(anyArray)
		for _, n := range v.AsInt64Slice() {
			x := e.begin(arrayValues)
			e.b = protowire.AppendTag(e.b, anyInt, protowire.VarintType)
			e.b = protowire.AppendVarint(e.b, uint64(n))
			e.end(x)
		}
		e.end(a)
	case attribute.BOOLSLICE:
		a := e.begin(anyArray)
		for _, t := range v.AsBoolSlice() {
			x := e.begin(arrayValues)
			e.b = protowire.AppendTag(e.b, anyBool, protowire.VarintType)
			e.b = protowire.AppendVarint(e.b, protowire.EncodeBool(t))
			e.end(x)
		}
		e.end(a)
	case attribute.FLOAT64SLICE:
		a := e.begin(anyArray)
		for _, f := range v.AsFloat64Slice() {
			x := e.begin(arrayValues)
			e.b = protowire.AppendTag(e.b, anyDouble, protowire.Fixed64Type)
			e.b = protowire.AppendFixed64(e.b, math.Float64bits(f))
			e.end(x)
		}
		e.end(a)
	case attribute.SLICE:
		a := e.begin(anyArray)
		for _, x := range v.AsSlice() {
			e.value(arrayValues, x)
		}
		e.end(a)
	case attribute.MAP:
		a := e.begin(anyKvlist)
		for _, kv := range v.AsMap() {
			e.keyValue(kvlistValues, kv)
		}
		e.end(a)
	case attribute.EMPTY:
		// An AnyValue with no member set.
	default:
		e.str(anyString, "INVALID")
	}
	e.end(m)
}

package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidecar-proxy/sidecar/policy"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// Telemetry is what the proxy records through: spans, metrics and the
// access log (docs/observability.md). Its hooks are in the handler
// (ServeHTTP, one SERVER span and the request metrics) and in the attempt
// loop (one CLIENT span and the attempt metrics per attempt), never in
// library middleware. A nil *Telemetry, or nil fields, record nothing.
type Telemetry struct {
	// Tracer builds the spans; nil: tracing is off and no span is built.
	Tracer trace.Tracer
	// Propagator extracts the app's trace context and baggage and
	// injects them into each attempt. Used only with a Tracer.
	Propagator propagation.TextMapPropagator
	// Instruments records the request metrics; nil: none.
	Instruments *telemetry.Instruments
}

// BuildOption configures Build.
type BuildOption func(*Snapshot)

// WithTelemetry makes the snapshot's routes record through t. A snapshot
// built from a previous one keeps its Telemetry unless given another.
func WithTelemetry(t *Telemetry) BuildOption {
	return func(s *Snapshot) { s.tel = t }
}

// TelemetryFrom returns the Telemetry that records through p: its tracer
// (nil when tracing is off) and, when p has metrics on, the instruments.
func TelemetryFrom(p *telemetry.Provider) (*Telemetry, error) {
	t := &Telemetry{Tracer: p.Tracer(), Propagator: p.Propagator()}
	if p.MetricsOn() {
		ins, err := telemetry.NewInstruments(p.Meter())
		if err != nil {
			return nil, err
		}
		t.Instruments = ins
	}
	return t, nil
}

func (t *Telemetry) tracer() trace.Tracer {
	if t == nil {
		return nil
	}
	return t.Tracer
}

func (t *Telemetry) instruments() *telemetry.Instruments {
	if t == nil {
		return nil
	}
	return t.Instruments
}

// exchange is one request's telemetry: the app's writer, wrapped to see
// the status and the bytes written, when it began, the route it took and
// its SERVER span. Exchanges are pooled.
type exchange struct {
	w      http.ResponseWriter
	status int
	bytes  int64
	start  time.Time
	route  *Route
	span   trace.Span // nil when not tracing
	// endpoint is the last attempt's endpoint, for the access log.
	endpoint string
	// attrs is scratch space for the span's attributes, set in one call
	// at its end (the SDK copies them); kept with the pooled exchange.
	attrs []attribute.KeyValue
}

var (
	_ http.ResponseWriter = (*exchange)(nil)
	_ http.Flusher        = (*exchange)(nil)
)

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

type exchangeKey struct{}

// exchangeOf returns the exchange of a request's context, or nil.
func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

func (x *exchange) Header() http.Header { return x.w.Header() }

func (x *exchange) WriteHeader(code int) {
	if x.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		x.status = code
	}
	x.w.WriteHeader(code)
}

func (x *exchange) Write(p []byte) (int, error) {
	if x.status == 0 {
		x.status = http.StatusOK
	}
	n, err := x.w.Write(p)
	x.bytes += int64(n)
	return n, err
}

// WriteString writes s as Write does, without converting it to bytes
// when the app's writer takes strings.
func (x *exchange) WriteString(s string) (int, error) {
	if x.status == 0 {
		x.status = http.StatusOK
	}
	n, err := io.WriteString(x.w, s)
	x.bytes += int64(n)
	return n, err
}

// Flush flushes the app's writer.
func (x *exchange) Flush() { _ = x.FlushError() }

// FlushError is Flush for http.ResponseController, with its error.
func (x *exchange) FlushError() error { return http.NewResponseController(x.w).Flush() }

// Unwrap gives http.ResponseController the writer behind the exchange.
func (x *exchange) Unwrap() http.ResponseWriter { return x.w }

// observe starts the telemetry of a request served with snap, when
// snap records any: it returns the exchange to write the answer through
// and the request to serve, with the span in its context when tracing;
// nil when nothing is recorded.
func observe(snap *Snapshot, w http.ResponseWriter, r *http.Request) (*exchange, *http.Request) {
	tr := snap.tel.tracer()
	if tr == nil && snap.tel.instruments() == nil && !snap.accessLog {
		return nil, r
	}
	x := exchanges.Get().(*exchange)
	x.w, x.start = w, time.Now()
	if tr == nil && !snap.accessLog {
		return x, r
	}
	ctx := r.Context()
	if tr != nil {
		ctx = snap.tel.Propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
		ctx, x.span = tr.Start(ctx, telemetry.Method(r.Method), serverKind)
	}
	if snap.accessLog {
		// The attempt loop notes its endpoint for the access log.
		ctx = context.WithValue(ctx, exchangeKey{}, x)
	}
	return x, r.WithContext(ctx)
}

// serverAttrs appends to a the attributes of a SERVER span that come from
// its request. Never a header value or the query.
func serverAttrs(a []attribute.KeyValue, r *http.Request) []attribute.KeyValue {
	a = append(a,
		attribute.String("http.request.method", telemetry.Method(r.Method)),
		attribute.String("url.path", r.URL.Path),
		attribute.String("network.protocol.version", protoVersion(r)),
	)
	if host, port, err := net.SplitHostPort(r.Host); err == nil {
		a = append(a, attribute.String("server.address", host))
		if p, err := strconv.Atoi(port); err == nil {
			a = append(a, attribute.Int("server.port", p))
		}
	} else if r.Host != "" {
		a = append(a, attribute.String("server.address", r.Host))
	}
	if isGRPC(r) {
		a = rpcAttrs(a, r.URL.Path)
	}
	return a
}

// rpcAttrs appends to a the RPC attributes of a gRPC call to path
// /service/method.
func rpcAttrs(a []attribute.KeyValue, path string) []attribute.KeyValue {
	a = append(a, attribute.String("rpc.system", "grpc"))
	if svc, method, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/"); ok {
		a = append(a, attribute.String("rpc.service", svc), attribute.String("rpc.method", method))
	}
	return a
}

func protoVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMinor == 0:
		return "1.0"
	}
	return "1.1"
}

// routed tells the exchange which route serves its request and counts it
// active there.
func (x *exchange) routed(rt *Route, method string) {
	if x == nil {
		return
	}
	x.route = rt
	rt.tel.Start(context.Background())
	if x.span != nil && x.span.IsRecording() {
		x.span.SetName(telemetry.Method(method) + " " + rt.Name) // sidecar.route is set by finish, with the rest
	}
}

// finish ends the request's telemetry: the request metrics, the SERVER
// span and the access log line. It reads how the request ended from what
// was written: the proxy's own answers carry Sidecar-Outcome, a spooled
// request Sidecar-Spool-Id, an upstream's answer neither.
func (x *exchange) finish(snap *Snapshot, l string, r *http.Request, logger *slog.Logger) {
	d := time.Since(x.start)
	h := x.w.Header()
	outcome, spoolID := policy.OK, ""
	if v := h[HeaderOutcome]; len(v) > 0 {
		outcome, _ = policy.ParseOutcome(v[0])
	} else if v := h[HeaderSpoolID]; len(v) > 0 {
		spoolID = v[0]
	} else if x.status >= 400 {
		outcome = policy.Status
	}
	if x.status == 0 && r.Context().Err() != nil {
		outcome = policy.Canceled
	}
	grpcCode, isRPC := 0, false
	if isGRPC(r) {
		// A gRPC error comes as HTTP 200: its code decides.
		if grpcCode, isRPC = grpcStatusCode(h); isRPC && grpcCode != 0 && outcome == policy.OK {
			outcome = policy.Status
		}
	}
	oi := telemetry.OutcomeIndex(outcome, spoolID != "")
	outcomeName := outcome.String()
	if spoolID != "" {
		outcomeName = telemetry.OutcomeSpooled
	}
	rt := x.route
	if rt != nil {
		rt.tel.End(context.Background(), r.Method, x.status, oi, d)
	} else {
		snap.unrouted.Record(context.Background(), r.Method, x.status, oi, d)
	}
	attempts := 0
	if v := h[HeaderAttempts]; len(v) > 0 {
		attempts, _ = strconv.Atoi(v[0])
	}
	if x.span != nil && x.span.IsRecording() { // a span not sampled keeps nothing
		a := serverAttrs(x.attrs[:0], r)
		a = append(a, attribute.String("sidecar.outcome", outcomeName), attribute.Int("sidecar.attempts", attempts))
		if rt != nil {
			a = append(a, attribute.String("sidecar.route", rt.Name))
		}
		if x.status > 0 {
			a = append(a, attribute.Int("http.response.status_code", x.status))
		}
		if spoolID != "" {
			a = append(a, attribute.String("sidecar.spool.id", spoolID))
		}
		if isRPC {
			a = append(a, attribute.Int("rpc.grpc.status_code", grpcCode))
		}
		if outcome != policy.OK && outcome != policy.Status {
			a = append(a, attribute.String("error.type", outcomeName))
		} else if x.status >= 500 {
			a = append(a, attribute.String("error.type", strconv.Itoa(x.status)))
		}
		x.span.SetAttributes(a...)
		if x.status >= 500 || x.status == 0 && outcome != policy.OK {
			x.span.SetStatus(codes.Error, outcomeName)
		}
		x.span.End()
		clear(a)
		x.attrs = a[:0]
	}
	if snap.accessLog {
		route := ""
		if rt != nil {
			route = rt.Name
		}
		traceID := ""
		if x.span != nil {
			if sc := x.span.SpanContext(); sc.HasTraceID() {
				traceID = sc.TraceID().String()
			}
		}
		logger.LogAttrs(context.Background(), slog.LevelInfo, "access",
			slog.String("trace_id", traceID),
			slog.String("listener", l),
			slog.String("route", route),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", x.status),
			slog.String("outcome", outcomeName),
			slog.Int("attempts", attempts),
			slog.String("endpoint", x.endpoint),
			slog.Int64("bytes", x.bytes),
			slog.Duration("duration", d),
		)
	}
	*x = exchange{attrs: x.attrs}
	exchanges.Put(x)
}

// grpcStatusCode reads grpc-status from an answer's headers or trailers.
func grpcStatusCode(h http.Header) (int, bool) {
	v := h["Grpc-Status"]
	if len(v) == 0 {
		v = h[http.TrailerPrefix+"Grpc-Status"]
	}
	if len(v) == 0 {
		return 0, false
	}
	c, err := strconv.Atoi(v[0])
	return c, err == nil
}

// delivery is what a deliverer tells the attempt loop about the message
// it delivers, for the attempts' spans: the message's id, which delivery
// of it this is, and the span context of the request that spooled it.
type delivery struct {
	id      string
	attempt int
	origin  trace.SpanContext
}

type deliveryKey struct{}

// The span kinds as start options, made once: an option made per span
// is an allocation.
var (
	serverKind = trace.WithSpanKind(trace.SpanKindServer)
	clientKind = trace.WithSpanKind(trace.SpanKindClient)
)

// attemptSpan starts the CLIENT span of attempt n of a call to ep, and
// injects its context into out's headers. On a retry those are cloned
// first, as out shares them with the earlier attempts, unless cloned says
// they already are; the first attempt's are the call's own. It returns nil when not tracing. The span's attributes are kept in
// c.attrs and set with the rest when the attempt ends (endAttemptSpan).
func (c *call) attemptSpan(out *http.Request, ep *Endpoint, n int, cloned bool) trace.Span {
	tel := c.route.obs
	tr := tel.tracer()
	if tr == nil {
		return nil
	}
	name := telemetry.Method(out.Method)
	if c.grpc {
		name = strings.TrimPrefix(out.URL.Path, "/")
	}
	ctx := c.app
	var span trace.Span
	d, _ := ctx.Value(deliveryKey{}).(*delivery)
	if d != nil {
		ctx, span = tr.Start(ctx, name, clientKind, trace.WithLinks(trace.Link{SpanContext: d.origin}))
	} else {
		ctx, span = tr.Start(ctx, name, clientKind)
	}
	switch {
	case out.Header == nil:
		out.Header = http.Header{}
	case n > 1 && !cloned:
		// A retry: the earlier attempt's request had these headers.
		out.Header = out.Header.Clone()
	}
	tel.Propagator.Inject(ctx, propagation.HeaderCarrier(out.Header))
	if !span.IsRecording() {
		return nil // not sampled: its context is sent on, nothing else
	}
	a := append(c.attrs[:0],
		attribute.String("http.request.method", telemetry.Method(out.Method)),
		attribute.String("server.address", ep.URL.Hostname()),
		attribute.String("url.path", out.URL.Path),
		attribute.String("sidecar.route", c.route.Name),
	)
	if p := ep.URL.Port(); p != "" {
		if pn, err := strconv.Atoi(p); err == nil {
			a = append(a, attribute.Int("server.port", pn))
		}
	}
	if n > 1 {
		a = append(a, attribute.Int("http.request.resend_count", n-1))
	}
	if c.grpc {
		a = rpcAttrs(a, out.URL.Path)
	}
	if d != nil {
		a = append(a, attribute.String("sidecar.spool.id", d.id), attribute.Int("sidecar.delivery.attempt", d.attempt))
	}
	c.attrs = a
	return span
}

// endAttemptSpan ends the current attempt's span with how the attempt
// ended, setting all its attributes in one call.
func (c *call) endAttemptSpan() {
	span, status, o, code := c.span, c.tryStatus, c.tryResult, c.tryCode
	a := append(c.attrs, attribute.String("sidecar.outcome", o.String()))
	if status > 0 {
		a = append(a, attribute.Int("http.response.status_code", status))
	}
	if code >= 0 {
		a = append(a, attribute.Int("rpc.grpc.status_code", code))
	}
	switch {
	case o != policy.OK && o != policy.Status:
		a = append(a, attribute.String("error.type", o.String()))
		span.SetStatus(codes.Error, o.String())
	case status >= 400:
		a = append(a, attribute.String("error.type", strconv.Itoa(status)))
		span.SetStatus(codes.Error, strconv.Itoa(status))
	case code > 0:
		span.SetStatus(codes.Error, "grpc status "+strconv.Itoa(code))
	}
	span.SetAttributes(a...)
	span.End()
	clear(a)
	c.attrs, c.span = a[:0], nil
}

// traceParent formats a span context as a W3C traceparent value.
func traceParent(sc trace.SpanContext) string {
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// RegisterMetrics registers the server's observable instruments on m:
// sidecar.breaker.state, 1 for the state each endpoint's breaker is in
// (the worst when routes keep breakers of different settings for one
// endpoint) and 0 for the others; sidecar.upstream.endpoints, the size of
// each upstream's endpoint set. Unregister the result before dropping the
// server.
func (s *Server) RegisterMetrics(m metric.Meter) (metric.Registration, error) {
	g, err := m.Int64ObservableGauge("sidecar.breaker.state",
		metric.WithDescription("Circuit breaker state of each endpoint: 1 for the state it is in (closed, open or half_open), 0 for the others."))
	if err != nil {
		return nil, err
	}
	eg, err := m.Int64ObservableGauge("sidecar.upstream.endpoints",
		metric.WithDescription("Endpoints requests may go to, by upstream: the configured ones, or with resolve the addresses of the last good DNS answers."))
	if err != nil {
		return nil, err
	}
	states := [...]policy.BreakerState{policy.BreakerStateClosed, policy.BreakerStateHalfOpen, policy.BreakerStateOpen} // best to worst
	rank := func(st policy.BreakerState) int {
		for i, x := range states {
			if x == st {
				return i
			}
		}
		return 0
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		snap := s.snap.Load()
		for name, p := range snap.Pools {
			o.ObserveInt64(eg, int64(len(p.endpoints().list)), metric.WithAttributes(attribute.String("upstream", name)))
		}
		worst := map[string]int{}
		snap.breakers.Range(func(endpoint string, _ policy.BreakerSettings, b *policy.Breaker) bool {
			if r := rank(b.State()); r >= worst[endpoint] {
				worst[endpoint] = r
			}
			return true
		})
		for endpoint, r := range worst {
			for i, st := range states {
				v := int64(0)
				if i == r {
					v = 1
				}
				o.ObserveInt64(g, v, metric.WithAttributes(attribute.String("endpoint", endpoint), attribute.String("state", st.String())))
			}
		}
		return nil
	}, g, eg)
}

package admin

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// DeliverySource is implemented by a Source whose async routes are
// delivered in the background (proxy.Server is one): /metrics and GET
// /v1/spool show each route's deliverer.
type DeliverySource interface {
	Deliveries() map[string]proxy.DeliveryStatus
}

// WithTelemetry makes the Server observe its figures (readiness, routes
// in flight, the spool, the deliverers) through p's meter, at each
// collection, and serve p's Prometheus exposition at /metrics. Without it,
// or when p serves no exposition (telemetry.metrics.prometheus false),
// /metrics answers 404. Shutdown unregisters the observations.
func WithTelemetry(p *telemetry.Provider) Option {
	return func(s *Server) { s.telemetry = p }
}

// fsyncLossWindow is how long an acknowledged message may be only in the
// page cache under the spool configuration cfg: 0 with fsync always, the
// sync period with fsync interval. A machine crash (not a process crash)
// can lose the messages acknowledged within it.
// It is negative, unknown, for a JetStream spool: the NATS servers'
// sync_interval decides it.
func fsyncLossWindow(cfg config.Spool) time.Duration {
	if cfg.Backend == "jetstream" {
		return -1
	}
	if cfg.Fsync != "interval" {
		return 0
	}
	if d := cfg.FsyncInterval.D(); d > 0 {
		return d
	}
	return 50 * time.Millisecond // spool.FileOptions' default
}

// metricsHandler serves GET /metrics: 404 unless a telemetry provider
// with a Prometheus exposition was given (WithTelemetry).
func (s *Server) metricsHandler() http.Handler {
	var serve http.Handler
	if s.telemetry != nil {
		serve = s.telemetry.MetricsHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if serve == nil {
			writeJSON(w, http.StatusNotFound, map[string]any{"error": "metrics are off: telemetry.metrics.prometheus is false"})
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		serve.ServeHTTP(w, r)
	})
}

// instruments are the admin API's observable instruments. The Prometheus
// exporter names each series from the instrument's name and unit
// (docs/operations.md lists the series): dots become underscores,
// counters gain _total and the unit "s" gains _seconds.
type instruments struct {
	ready      metric.Int64ObservableGauge
	inFlight   metric.Int64ObservableGauge
	goroutines metric.Int64ObservableGauge

	messages    metric.Int64ObservableGauge
	bytes       metric.Int64ObservableGauge
	oldest      metric.Float64ObservableGauge
	orphaned    metric.Int64ObservableGauge
	appends     metric.Int64ObservableCounter
	fsyncs      metric.Int64ObservableCounter
	writeErrors metric.Int64ObservableCounter
	fsyncErrors metric.Int64ObservableCounter
	failed      metric.Int64ObservableGauge
	reopens     metric.Int64ObservableCounter
	corrupt     metric.Int64ObservableCounter
	tornTail    metric.Int64ObservableGauge
	segments    metric.Int64ObservableGauge
	lossWindow  metric.Float64ObservableGauge

	deliveries   metric.Int64ObservableCounter
	headBlocked  metric.Int64ObservableGauge
	headAttempts metric.Int64ObservableGauge
	headNext     metric.Float64ObservableGauge

	healthy      metric.Int64ObservableGauge
	healthChecks metric.Int64ObservableCounter
	ejected      metric.Int64ObservableGauge
	ejections    metric.Int64ObservableCounter
	deduplicated metric.Int64ObservableCounter
	paced        metric.Int64ObservableCounter
	rate         metric.Float64ObservableGauge
}

// register creates the instruments on m and registers the one callback
// that observes them all at collection time.
func (s *Server) register(m metric.Meter) (metric.Registration, error) {
	var in instruments
	var errs []error
	i64g := func(name, unit, help string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(help))
		errs = append(errs, err)
		return g
	}
	f64g := func(name, unit, help string) metric.Float64ObservableGauge {
		g, err := m.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(help))
		errs = append(errs, err)
		return g
	}
	i64c := func(name, unit, help string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(help))
		errs = append(errs, err)
		return c
	}
	in.ready = i64g("sidecar.ready", "", "1 while /readyz answers 200: configuration loaded, listeners bound, spool open, not draining.")
	in.inFlight = i64g("sidecar.route.in_flight", "{request}", "Requests in flight on each route.")
	in.goroutines = i64g("sidecar.goroutines", "{goroutine}", "Goroutines of the process now: one per busy connection and stream, per deliverer and per timer at work; a count that keeps growing under a steady load is a leak.")

	in.messages = i64g("sidecar.spool.messages", "{message}", "Stored messages per route: state pending (waiting for delivery) or dead (dead letters).")
	in.bytes = i64g("sidecar.spool.bytes", "By", "Encoded size in bytes of a route's pending and dead messages.")
	in.oldest = f64g("sidecar.spool.oldest_pending_age", "s", "Age of a route's oldest pending message; 0 when none waits.")
	in.orphaned = i64g("sidecar.spool.orphaned_messages", "{message}", "Stored messages (pending and dead) of a route the running configuration has no async route for, after a reload removed it: kept, and delivered again once an async route of that name returns. 0 for the configured async routes.")
	in.appends = i64c("sidecar.spool.appends", "{message}", "Messages appended durably since the spool was opened.")
	in.fsyncs = i64c("sidecar.spool.fsyncs", "{fsync}", "Data fsyncs since the spool was opened (concurrent appends share one).")
	in.writeErrors = i64c("sidecar.spool.write_errors", "{error}", "Failed spool writes since the spool was opened.")
	in.fsyncErrors = i64c("sidecar.spool.fsync_errors", "{error}", "Failed spool fsyncs since the spool was opened.")
	in.failed = i64g("sidecar.spool.failed", "", "1 after a write or fsync failed, until the spool has reopened itself: meanwhile it refuses writes (async routes answer 503 spool_error).")
	in.reopens = i64c("sidecar.spool.reopens", "{reopen}", "Times the spool reopened itself after a failed write or fsync.")
	in.corrupt = i64c("sidecar.spool.corrupt_records", "{region}", "Damaged regions the spool skipped when it was opened.")
	in.tornTail = i64g("sidecar.spool.torn_tail_truncated", "", "1 when opening the spool truncated an incomplete last record (a crash mid-write).")
	in.segments = i64g("sidecar.spool.segments", "{segment}", "Spool log segment files.")
	in.lossWindow = f64g("sidecar.spool.fsync_loss_window", "s", "How long an acknowledged message may be on no disk: 0 with spool.fsync always, spool.fsync_interval with fsync interval. A machine crash can lose what was acknowledged within it.")

	in.deliveries = i64c("sidecar.spool.deliveries", "{delivery}", "Background deliveries per route by result: delivered (2xx), retried (failed, due again later), dead_lettered.")
	in.headBlocked = i64g("sidecar.spool.head_blocked", "", "1 while an ordering fifo route's head message has failed a delivery and waits for its retry; later messages wait behind it.")
	in.headAttempts = i64g("sidecar.spool.head_attempts", "{attempt}", "Delivery attempts made on an ordering fifo route's head message; 0 when none is held.")
	in.headNext = f64g("sidecar.spool.head_next_attempt", "s", "Seconds until the next delivery attempt of an ordering fifo route's head message; 0 when due or none is held.")

	in.healthy = i64g("sidecar.endpoint.healthy", "", "1 while the endpoint passes its upstream's active health checks (or none has ended yet), 0 while it is unhealthy and skipped. Only for upstreams with health_check.")
	in.healthChecks = i64c("sidecar.health_checks", "{check}", "Active health checks of the endpoint by result: passed or failed.")
	in.ejected = i64g("sidecar.endpoint.ejected", "", "1 while outlier ejection keeps the endpoint out of the load balancer. Only for upstreams with outlier.")
	in.ejections = i64c("sidecar.outlier.ejections", "{ejection}", "Outlier ejections of the endpoint.")
	in.deduplicated = i64c("sidecar.async.deduplicated", "{request}", "Requests of an async route with async.dedupe_window that repeated an idempotency key within the window: answered with the first request's 202 and spool ID, not stored again.")
	in.paced = i64c("sidecar.spool.deliveries_paced", "{delivery}", "Delivery attempts of an async route with async.rate that waited for the rate.")
	in.rate = f64g("sidecar.spool.delivery_rate", "{delivery}/s", "The async.rate.per_second a route's deliveries are paced at; absent when not paced.")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s.observe(o, &in)
		return nil
	},
		in.ready, in.inFlight, in.goroutines,
		in.messages, in.bytes, in.oldest, in.orphaned, in.appends, in.fsyncs, in.writeErrors, in.fsyncErrors,
		in.failed, in.reopens, in.corrupt, in.tornTail, in.segments, in.lossWindow,
		in.deliveries, in.headBlocked, in.headAttempts, in.headNext,
		in.healthy, in.healthChecks, in.ejected, in.ejections,
		in.deduplicated, in.paced, in.rate,
	)
}

// observe records snapshots of the store, the deliverers, the routes and
// readiness, taken at collection time.
func (s *Server) observe(o metric.Observer, in *instruments) {
	snap := s.src.Snapshot()
	ok, _ := s.readiness()
	o.ObserveInt64(in.ready, boolValue(ok))
	o.ObserveInt64(in.goroutines, int64(runtime.NumGoroutine()))
	for _, rt := range snap.Routes {
		o.ObserveInt64(in.inFlight, rt.Stats().InFlight, routeAttr(rt.Name))
	}
	for name, p := range snap.Pools {
		observeEndpoints(o, in, name, p.EndpointStates())
	}
	if st := s.spoolStore(); st != nil {
		s.observeSpool(o, in, snap, st.Stats())
	}
	if ds, ok := s.src.(DeliverySource); ok {
		s.observeDeliveries(o, in, ds.Deliveries())
	}
}

// spoolStore returns the store, or nil when there is none.
func (s *Server) spoolStore() spool.Store {
	if ss, ok := s.src.(SpoolSource); ok {
		return ss.Spool()
	}
	return nil
}

// spoolRoutes returns the names of the async routes of snap and of every
// other route with stored messages, sorted.
func spoolRoutes(snap *proxy.Snapshot, stats spool.Stats) []string {
	var names []string
	for _, rt := range snap.Routes {
		if rt.Async() {
			names = append(names, rt.Name)
		}
	}
	for name := range stats.Routes {
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func routeAttr(route string, kv ...attribute.KeyValue) metric.ObserveOption {
	return metric.WithAttributes(append([]attribute.KeyValue{attribute.String("route", route)}, kv...)...)
}

func (s *Server) observeSpool(o metric.Observer, in *instruments, snap *proxy.Snapshot, st spool.Stats) {
	now := s.now()
	for _, name := range spoolRoutes(snap, st) {
		rs := st.Routes[name]
		o.ObserveInt64(in.messages, rs.Pending, routeAttr(name, attribute.String("state", "pending")))
		o.ObserveInt64(in.messages, rs.Dead, routeAttr(name, attribute.String("state", "dead")))
		o.ObserveInt64(in.bytes, rs.Bytes, routeAttr(name))
		age := 0.0
		if !rs.Oldest.IsZero() {
			age = max(now.Sub(rs.Oldest), 0).Seconds()
		}
		o.ObserveFloat64(in.oldest, age, routeAttr(name))
		var orphaned int64
		if rt := snap.Route(name); rt == nil || !rt.Async() {
			orphaned = rs.Pending + rs.Dead
		}
		o.ObserveInt64(in.orphaned, orphaned, routeAttr(name))
	}
	o.ObserveInt64(in.appends, st.Appends)
	o.ObserveInt64(in.fsyncs, st.Syncs)
	o.ObserveInt64(in.writeErrors, st.WriteErrors)
	o.ObserveInt64(in.fsyncErrors, st.FsyncErrors)
	o.ObserveInt64(in.failed, boolValue(st.Failed))
	o.ObserveInt64(in.reopens, st.Reopens)
	o.ObserveInt64(in.corrupt, st.CorruptRecords)
	o.ObserveInt64(in.tornTail, boolValue(st.TornTail))
	o.ObserveInt64(in.segments, int64(st.Segments))
	// The running configuration's spool keys are those the spool was
	// opened with: a reload cannot change them while it is open.
	if snap.Config != nil {
		if lw := fsyncLossWindow(snap.Config.Spool); lw >= 0 { // unknown for JetStream: left out
			o.ObserveFloat64(in.lossWindow, lw.Seconds())
		}
	}
}

func (s *Server) observeDeliveries(o metric.Observer, in *instruments, ds map[string]proxy.DeliveryStatus) {
	now := s.now()
	for name, d := range ds {
		o.ObserveInt64(in.deliveries, d.Delivered, routeAttr(name, attribute.String("result", "delivered")))
		o.ObserveInt64(in.deliveries, d.Retried, routeAttr(name, attribute.String("result", "retried")))
		o.ObserveInt64(in.deliveries, d.DeadLettered, routeAttr(name, attribute.String("result", "dead_lettered")))
		var b, a int64
		var n float64
		if h := d.Head; h != nil {
			b, a = boolValue(h.Blocked), int64(h.Attempts)
			if !h.NextAttempt.IsZero() {
				n = max(h.NextAttempt.Sub(now), 0).Seconds()
			}
		}
		o.ObserveInt64(in.deduplicated, d.Deduplicated, routeAttr(name))
		o.ObserveInt64(in.paced, d.Paced, routeAttr(name))
		if d.RatePerSecond > 0 {
			o.ObserveFloat64(in.rate, d.RatePerSecond, routeAttr(name))
		}
		o.ObserveInt64(in.headBlocked, b, routeAttr(name))
		o.ObserveInt64(in.headAttempts, a, routeAttr(name))
		o.ObserveFloat64(in.headNext, n, routeAttr(name))
	}
}

// observeEndpoints records the health and ejection of the endpoints of
// upstream, for the upstreams with health_check or outlier.
func observeEndpoints(o metric.Observer, in *instruments, upstream string, eps []proxy.EndpointState) {
	for _, ep := range eps {
		attrs := []attribute.KeyValue{attribute.String("upstream", upstream), attribute.String("endpoint", ep.URL)}
		if h := ep.Health; h != nil {
			o.ObserveInt64(in.healthy, boolValue(h.State != "unhealthy"), metric.WithAttributes(attrs...))
			o.ObserveInt64(in.healthChecks, h.Passed, metric.WithAttributes(append(attrs, attribute.String("result", "passed"))...))
			o.ObserveInt64(in.healthChecks, h.Failed, metric.WithAttributes(append(attrs, attribute.String("result", "failed"))...))
		}
		if ej := ep.Outlier; ej != nil {
			o.ObserveInt64(in.ejected, boolValue(ej.Ejected), metric.WithAttributes(attrs...))
			o.ObserveInt64(in.ejections, ej.Ejections, metric.WithAttributes(attrs...))
		}
	}
}

func boolValue(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

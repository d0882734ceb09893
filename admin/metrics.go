package admin

import (
	"net/http"
	"slices"
	"time"

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

// metricsHandler serves GET /metrics: 404 unless metrics are on.
func (s *Server) metricsHandler() http.Handler {
	serve := telemetry.Handler(s.collect)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.metrics {
			writeJSON(w, http.StatusNotFound, map[string]any{"error": "metrics are off: telemetry.metrics.prometheus is false"})
			return
		}
		serve.ServeHTTP(w, r)
	})
}

// collect gathers the metric families from snapshots of the store, the
// deliverers and the routes, at scrape time.
func (s *Server) collect() []telemetry.Family {
	snap := s.src.Snapshot()
	ready := telemetry.Family{Name: "sidecar_ready", Help: "1 while /readyz answers 200: configuration loaded, listeners bound, spool open, not draining.", Type: telemetry.Gauge}
	ok, _ := s.readiness()
	ready.Add(boolValue(ok))
	inFlight := telemetry.Family{Name: "sidecar_route_in_flight", Help: "Requests in flight on each route.", Type: telemetry.Gauge}
	for _, rt := range snap.Routes {
		inFlight.Add(float64(rt.Stats().InFlight), "route", rt.Name)
	}
	fams := []telemetry.Family{ready, inFlight}
	if st := s.spoolStore(); st != nil {
		fams = append(fams, s.spoolFamilies(snap, st.Stats())...)
	}
	if ds, ok := s.src.(DeliverySource); ok {
		fams = append(fams, s.deliveryFamilies(ds.Deliveries())...)
	}
	return fams
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

func (s *Server) spoolFamilies(snap *proxy.Snapshot, st spool.Stats) []telemetry.Family {
	now := s.now()
	msgs := telemetry.Family{Name: "sidecar_spool_messages", Help: "Stored messages per route: state pending (waiting for delivery) or dead (dead letters).", Type: telemetry.Gauge}
	bytes := telemetry.Family{Name: "sidecar_spool_bytes", Help: "Encoded size in bytes of a route's pending and dead messages.", Type: telemetry.Gauge}
	oldest := telemetry.Family{Name: "sidecar_spool_oldest_pending_age_seconds", Help: "Age of a route's oldest pending message; 0 when none waits.", Type: telemetry.Gauge}
	for _, name := range spoolRoutes(snap, st) {
		rs := st.Routes[name]
		msgs.Add(float64(rs.Pending), "route", name, "state", "pending")
		msgs.Add(float64(rs.Dead), "route", name, "state", "dead")
		bytes.Add(float64(rs.Bytes), "route", name)
		age := 0.0
		if !rs.Oldest.IsZero() {
			age = max(now.Sub(rs.Oldest), 0).Seconds()
		}
		oldest.Add(age, "route", name)
	}
	one := func(name, help string, typ telemetry.Type, v float64) telemetry.Family {
		f := telemetry.Family{Name: name, Help: help, Type: typ}
		f.Add(v)
		return f
	}
	fams := []telemetry.Family{
		msgs, bytes, oldest,
		one("sidecar_spool_appends_total", "Messages appended durably since the spool was opened.", telemetry.Counter, float64(st.Appends)),
		one("sidecar_spool_fsyncs_total", "Data fsyncs since the spool was opened (concurrent appends share one).", telemetry.Counter, float64(st.Syncs)),
		one("sidecar_spool_write_errors_total", "Failed spool writes since the spool was opened.", telemetry.Counter, float64(st.WriteErrors)),
		one("sidecar_spool_fsync_errors_total", "Failed spool fsyncs since the spool was opened.", telemetry.Counter, float64(st.FsyncErrors)),
		one("sidecar_spool_failed", "1 after a write or fsync failed, until the spool has reopened itself: meanwhile it refuses writes (async routes answer 503 spool_error).", telemetry.Gauge, boolValue(st.Failed)),
		one("sidecar_spool_reopens_total", "Times the spool reopened itself after a failed write or fsync.", telemetry.Counter, float64(st.Reopens)),
		one("sidecar_spool_corrupt_records_total", "Damaged regions the spool skipped when it was opened.", telemetry.Counter, float64(st.CorruptRecords)),
		one("sidecar_spool_torn_tail_truncated", "1 when opening the spool truncated an incomplete last record (a crash mid-write).", telemetry.Gauge, boolValue(st.TornTail)),
		one("sidecar_spool_segments", "Spool log segment files.", telemetry.Gauge, float64(st.Segments)),
	}
	if s.lossWindow >= 0 { // unknown for JetStream: left out
		fams = append(fams, one("sidecar_spool_fsync_loss_window_seconds", "How long an acknowledged message may be on no disk: 0 with spool.fsync always, spool.fsync_interval with fsync interval. A machine crash can lose what was acknowledged within it.", telemetry.Gauge, s.lossWindow.Seconds()))
	}
	return fams
}

func (s *Server) deliveryFamilies(ds map[string]proxy.DeliveryStatus) []telemetry.Family {
	now := s.now()
	total := telemetry.Family{Name: "sidecar_spool_deliveries_total", Help: "Background deliveries per route by result: delivered (2xx), retried (failed, due again later), dead_lettered.", Type: telemetry.Counter}
	blocked := telemetry.Family{Name: "sidecar_spool_head_blocked", Help: "1 while an ordering fifo route's head message has failed a delivery and waits for its retry; later messages wait behind it.", Type: telemetry.Gauge}
	attempts := telemetry.Family{Name: "sidecar_spool_head_attempts", Help: "Delivery attempts made on an ordering fifo route's head message; 0 when none is held.", Type: telemetry.Gauge}
	next := telemetry.Family{Name: "sidecar_spool_head_next_attempt_seconds", Help: "Seconds until the next delivery attempt of an ordering fifo route's head message; 0 when due or none is held.", Type: telemetry.Gauge}
	names := make([]string, 0, len(ds))
	for name := range ds {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		d := ds[name]
		total.Add(float64(d.Delivered), "route", name, "result", "delivered")
		total.Add(float64(d.Retried), "route", name, "result", "retried")
		total.Add(float64(d.DeadLettered), "route", name, "result", "dead_lettered")
		var b, a, n float64
		if h := d.Head; h != nil {
			b, a = boolValue(h.Blocked), float64(h.Attempts)
			if !h.NextAttempt.IsZero() {
				n = max(h.NextAttempt.Sub(now), 0).Seconds()
			}
		}
		blocked.Add(b, "route", name)
		attempts.Add(a, "route", name)
		next.Add(n, "route", name)
	}
	return []telemetry.Family{total, blocked, attempts, next}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

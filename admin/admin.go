// Package admin serves the sidecar's admin API on a loopback listener:
// health and readiness, the effective configuration (secrets redacted),
// the routes with their live figures, the spool's depth and its messages
// (list, show, replay, delete, purge), metrics for Prometheus at
// /metrics, and a status page at / (status.go). Mutating calls (POST,
// DELETE) must come from a program or the status page, never from a page
// of another origin (see sameOriginOnly and RequestHeader), and need
// "Authorization: Bearer <token>" when the Server has a token (WithToken).
package admin

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/stdlog"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/reload"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// Source gives the admin API the snapshot being served.
type Source interface {
	Snapshot() *proxy.Snapshot
}

// SpoolSource is implemented by a Source with a spool (proxy.Server is
// one); Spool returns nil when no route is async.
type SpoolSource interface {
	Spool() spool.Store
}

// Server is the admin API.
type Server struct {
	src   Source
	log   *slog.Logger
	ready atomic.Bool
	srv   *http.Server
	ln    net.Listener
	// probe is the read-only probe listener (ListenProbe); nil without.
	probe   *http.Server
	probeLn net.Listener
	// tokenSum is the SHA-256 of the admin token; zero when there is none.
	tokenSum [sha256.Size]byte
	hasToken bool
	// telemetry observes the admin figures and serves /metrics; nil
	// without WithTelemetry.
	telemetry *telemetry.Provider
	// reg is the registration of the observations on telemetry's meter;
	// Shutdown unregisters it, once.
	reg        metric.Registration
	unregister sync.Once
	now        func() time.Time
	// reloader serves POST /v1/reload and last_reload; nil without
	// WithReloader.
	reloader Reloader
}

// Reloader applies reloads: reload.Reloader is one.
type Reloader interface {
	Reload(ctx context.Context, trigger string) reload.Status
	Last() *reload.Status
}

// WithReloader serves POST /v1/reload with r, and shows its last reload
// in /v1/config as last_reload.
func WithReloader(r Reloader) Option {
	return func(s *Server) { s.reloader = r }
}

// Option configures a Server.
type Option func(*Server)

// WithToken makes mutating calls (POST, DELETE) require
// "Authorization: Bearer <token>". An empty token requires nothing. The
// Server keeps only the token's SHA-256 and never logs it.
func WithToken(token string) Option {
	return func(s *Server) {
		if token != "" {
			s.tokenSum = sha256.Sum256([]byte(token))
			s.hasToken = true
		}
	}
}

// New returns an admin Server for src. It is not ready until SetReady(true).
// With WithTelemetry, New registers the metric observations on the
// provider's meter; call Shutdown to unregister them.
func New(src Source, logger *slog.Logger, opts ...Option) *Server {
	s := &Server{src: src, log: logger, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.telemetry != nil {
		reg, err := s.register(s.telemetry.Meter())
		if err != nil {
			s.log.Error("admin metrics not registered", "error", err)
		}
		s.reg = reg
	}
	s.srv = s.newHTTPServer(s.Handler(), "admin http server")
	return s
}

// newHTTPServer returns the http.Server of the admin or the probe
// listener: small headers, short timeouts, its errors logged at debug
// level as msg.
func (s *Server) newHTTPServer(h http.Handler, msg string) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(stdlog.Writer{Log: s.log, Level: slog.LevelDebug, Msg: msg}, "", 0),
	}
}

// TokenRequired reports whether mutating calls need a bearer token.
func (s *Server) TokenRequired() bool { return s.hasToken }

// SetReady sets what /readyz reports.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Listen binds addr, which config has checked is loopback.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	return nil
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// ListenProbe binds the probe listener at addr (admin.probe_address): a
// second, read-only listener for kubelet probes and scrapes that reach
// the pod on its own IP. It serves GET /healthz, /readyz and /metrics and
// nothing else (404), without the admin API's loopback Host check. Serve
// serves it too.
func (s *Server) ListenProbe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.probeLn = ln
	s.probe = s.newHTTPServer(s.ProbeHandler(), "probe http server")
	return nil
}

// ProbeAddr returns the probe listener's bound address, or nil without one.
func (s *Server) ProbeAddr() net.Addr {
	if s.probeLn == nil {
		return nil
	}
	return s.probeLn.Addr()
}

// ProbeHandler returns the probe listener's routes: GET /healthz, /readyz
// and /metrics, as on the admin API; every other path is 404.
func (s *Server) ProbeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "the probe listener serves only GET /healthz, /readyz and /metrics"})
	})
	return mux
}

// Serve serves the bound listener in the background until Shutdown (or a
// listener error, which it logs), then calls done; it returns at once.
func (s *Server) Serve(done func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener stopped", "error", err)
		}
	}()
	if s.probe != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.probe.Serve(s.probeLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("probe listener stopped", "error", err)
			}
		}()
	}
	go func() {
		wg.Wait()
		done()
	}()
}

// Shutdown stops the admin API and unregisters its metric observations.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if s.probe != nil {
		err = errors.Join(err, s.probe.Shutdown(ctx))
	}
	s.unregister.Do(func() {
		if s.reg != nil {
			err = errors.Join(err, s.reg.Unregister())
		}
	})
	return err
}

// readiness reports whether the sidecar is ready: started, not draining,
// and its spool, if it has one that can tell (spool.Checker), able to
// store messages. reason says why not, when it is the spool.
func (s *Server) readiness() (bool, string) {
	if !s.ready.Load() {
		return false, ""
	}
	if c, ok := s.spoolStore().(spool.Checker); ok {
		if err := c.Ready(); err != nil {
			return false, err.Error()
		}
	}
	return true, ""
}

// Handler returns the admin API's routes, and the status page at /, behind
// the loopback Host check and, for mutating calls, the web-page guard
// (sameOriginOnly).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.statusHandler()) // the status page (status.go)
	mux.HandleFunc("GET /static/{file}", statusStatic)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, r *http.Request) {
		v := config.Public(s.src.Snapshot().Config)
		if m, ok := v.(map[string]any); ok && s.reloader != nil {
			if last := s.reloader.Last(); last != nil {
				m["last_reload"] = last
			} else {
				m["last_reload"] = nil
			}
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"routes": routes(s.src.Snapshot())})
	})
	mux.HandleFunc("GET /v1/spool", s.spoolStats)
	mux.HandleFunc("GET /v1/spool/messages", s.spoolList)
	mux.HandleFunc("GET /v1/spool/messages/{id}", s.spoolShow)
	mux.Handle("POST /v1/spool/messages/{id}/replay", s.authorized(s.spoolReplay))
	mux.Handle("DELETE /v1/spool/messages/{id}", s.authorized(s.spoolDelete))
	mux.Handle("POST /v1/spool/purge", s.authorized(s.spoolPurge))
	mux.Handle("POST /v1/reload", s.authorized(s.reload))
	return loopbackOnly(sameOriginOnly(jsonNotFound(mux)))
}

// jsonNotFound answers what mux has no route for, or no route for with
// the request's method, with a JSON error, as every other answer of the
// admin API is JSON (but /metrics).
func jsonNotFound(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			// ServeMux reports a path served for other methods with 405.
			rec := &statusOnly{header: http.Header{}}
			h, _ := mux.Handler(r)
			h.ServeHTTP(rec, r)
			if rec.status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", rec.header.Get("Allow"))
				writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"error": r.Method + " is not allowed on " + r.URL.Path})
				return
			}
			writeJSON(w, http.StatusNotFound, map[string]any{"error": "no such endpoint: " + r.URL.Path})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// statusOnly records the status and headers a handler answers with, and
// drops its body.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.status = code }

// healthz serves GET /healthz: 200 while the process runs.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// readyz serves GET /readyz: 200 when ready, else 503 with the reason
// when there is one.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if ok, reason := s.readiness(); !ok {
		body := map[string]any{"ready": false}
		if reason != "" {
			body["reason"] = reason
		}
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

// RequestHeader is the header that every mutating admin call (any method
// but GET, HEAD and OPTIONS) must carry, with any non-empty value ("1" by
// convention); "sidecar spool" sends it. A web page cannot send it to
// another origin: an HTML form sets no header, a no-cors fetch only
// CORS-safelisted ones, and a cors fetch with it first sends a preflight
// OPTIONS that the admin API never grants.
const RequestHeader = "Sidecar-Admin"

// safeMethod reports whether method is one the admin API never mutates on.
func safeMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// sameOriginOnly refuses, with 403, a mutating request that a browser
// sent for a page of another origin: one whose Origin is not the admin
// API's own (http:// and the Host it was addressed to), whose
// Sec-Fetch-Site is not same-origin or none, or that lacks RequestHeader.
// The loopback Host check alone lets a cross-site form POST through: the
// browser addresses it to 127.0.0.1.
func sameOriginOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if safeMethod(r.Method) {
			next.ServeHTTP(w, r)
			return
		}
		var reason string
		origin := r.Header.Get("Origin")
		site := r.Header.Get("Sec-Fetch-Site")
		switch {
		case origin != "" && !strings.EqualFold(origin, "http://"+r.Host):
			reason = "a mutating call from another origin (Origin: " + origin + ") is refused"
		case site != "" && site != "same-origin" && site != "none":
			reason = "a mutating call from a web page (Sec-Fetch-Site: " + site + ") is refused"
		case r.Header.Get(RequestHeader) == "":
			reason = "a mutating call needs the header " + RequestHeader + ": 1 (sidecar spool sends it)"
		default:
			next.ServeHTTP(w, r)
			return
		}
		writeJSON(w, http.StatusForbidden, map[string]any{"error": reason})
	})
}

// loopbackOnly refuses requests whose Host is not a loopback name or
// address, so a DNS-rebinding web page cannot drive the admin API.
func loopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		} else if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1] // "[::1]": an IPv6 address without a port
		}
		if !config.IsLoopback(host) {
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "the admin API answers only requests addressed to a loopback host"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type routeView struct {
	Name          string                `json:"name"`
	Listener      string                `json:"listener"`
	ListenerMode  string                `json:"listener_mode"`
	Connect       bool                  `json:"connect"`
	Upstream      string                `json:"upstream"`
	Policy        string                `json:"policy"`
	Match         any                   `json:"match"`
	Timeout       string                `json:"timeout"`
	PerTryTimeout string                `json:"per_try_timeout"`
	LoadBalancing string                `json:"load_balancing"`
	Stats         proxy.RouteStats      `json:"stats"`
	Endpoints     []proxy.EndpointStats `json:"endpoints"`
}

// matchPaths returns the key path of each route's match block in cfg, by
// route name (unique across listeners), for config.PublicAt.
func matchPaths(cfg *config.Config) map[string]string {
	paths := map[string]string{}
	if cfg == nil {
		return paths
	}
	for i, l := range cfg.Listeners {
		for j, r := range l.Routes {
			paths[r.Name] = fmt.Sprintf("listeners[%d].routes[%d].match", i, j)
		}
	}
	return paths
}

func routes(snap *proxy.Snapshot) []routeView {
	out := make([]routeView, 0, len(snap.Routes))
	paths := matchPaths(snap.Config)
	for _, r := range snap.Routes {
		v := routeView{
			Name:          r.Name,
			Listener:      r.Listener,
			Connect:       r.Connect,
			Upstream:      r.Upstream,
			Policy:        r.PolicyName,
			Match:         config.PublicAt(snap.Config, paths[r.Name], r.MatchConfig),
			Timeout:       r.Policy.Timeout.D().String(),
			PerTryTimeout: r.Policy.PerTryTimeout.D().String(),
			LoadBalancing: r.Pool.LoadBalancing(),
			Stats:         r.Stats(),
			Endpoints:     r.EndpointStats(),
		}
		if l := snap.Listener(r.Listener); l != nil {
			v.ListenerMode = l.Mode
		}
		out = append(out, v)
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// spoolRouteView is one route's spool figures: messages waiting for
// delivery (depth), dead letters, their encoded size in bytes, and the
// age of the oldest waiting message ("" and 0 when none waits).
type spoolRouteView struct {
	Depth            int64   `json:"depth"`
	Dead             int64   `json:"dead"`
	Bytes            int64   `json:"bytes"`
	OldestAge        string  `json:"oldest_age,omitempty"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// Orphaned is true for a route the running configuration has no
	// async route for (a reload removed it): its messages are kept, and
	// delivered again once an async route of that name returns.
	Orphaned bool `json:"orphaned"`
	// Delivery is the route's background deliverer; absent from the
	// total, and for a route no deliverer serves.
	Delivery *deliveryView `json:"delivery,omitempty"`
}

// deliveryView is a route's deliverer: its counts since start and, for
// ordering fifo, the head message every later one waits behind.
// HeadBlocked is true while the head has failed a delivery and waits for
// (or is in) its retry; HeadID and HeadNextAttempt are absent, and the
// other head figures 0, when no head is held. Deduplicated counts the
// requests answered with an earlier request's 202 (async.dedupe_window);
// Paced the delivery attempts that waited for async.rate, whose figures
// RatePerSecond and RateBurst are (0 when the route is not paced).
type deliveryView struct {
	Delivered              int64   `json:"delivered"`
	Retried                int64   `json:"retried"`
	DeadLettered           int64   `json:"dead_lettered"`
	HeadBlocked            bool    `json:"head_blocked"`
	HeadID                 string  `json:"head_id,omitempty"`
	HeadAttempts           int     `json:"head_attempts"`
	HeadNextAttempt        string  `json:"head_next_attempt,omitempty"`
	HeadNextAttemptSeconds float64 `json:"head_next_attempt_in_seconds"`
	Deduplicated           int64   `json:"deduplicated"`
	Paced                  int64   `json:"paced"`
	RatePerSecond          float64 `json:"rate_per_second"`
	RateBurst              int     `json:"rate_burst"`
}

func newDeliveryView(d proxy.DeliveryStatus, now time.Time) *deliveryView {
	v := &deliveryView{Delivered: d.Delivered, Retried: d.Retried, DeadLettered: d.DeadLettered,
		Deduplicated: d.Deduplicated, Paced: d.Paced, RatePerSecond: d.RatePerSecond, RateBurst: d.RateBurst}
	if h := d.Head; h != nil {
		v.HeadBlocked, v.HeadID, v.HeadAttempts = h.Blocked, h.ID, h.Attempts
		if !h.NextAttempt.IsZero() {
			v.HeadNextAttempt = h.NextAttempt.UTC().Format(time.RFC3339Nano)
			v.HeadNextAttemptSeconds = max(h.NextAttempt.Sub(now), 0).Seconds()
		}
	}
	return v
}

func newSpoolRouteView(rs spool.RouteStats, now time.Time) spoolRouteView {
	v := spoolRouteView{Depth: rs.Pending, Dead: rs.Dead, Bytes: rs.Bytes}
	if !rs.Oldest.IsZero() {
		age := max(now.Sub(rs.Oldest), 0)
		v.OldestAge = age.Round(time.Millisecond).String()
		v.OldestAgeSeconds = age.Seconds()
	}
	return v
}

// spoolStats serves GET /v1/spool: per route (every async route, and any
// other route with stored messages) and in total, with the store's health.
func (s *Server) spoolStats(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	stats := st.Stats()
	now := s.now()
	routes := map[string]spoolRouteView{}
	snap := s.src.Snapshot()
	for _, rt := range snap.Routes {
		if rt.Async() {
			routes[rt.Name] = spoolRouteView{}
		}
	}
	for name, rs := range stats.Routes {
		v := newSpoolRouteView(rs, now)
		rt := snap.Route(name)
		v.Orphaned = rt == nil || !rt.Async()
		routes[name] = v
	}
	if ds, ok := s.src.(DeliverySource); ok {
		for name, d := range ds.Deliveries() {
			v := routes[name]
			v.Delivery = newDeliveryView(d, now)
			routes[name] = v
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"routes":          routes,
		"total":           newSpoolRouteView(stats.Total, now),
		"segments":        stats.Segments,
		"failed":          stats.Failed,
		"corrupt_records": stats.CorruptRecords,
		"torn_tail":       stats.TornTail,
	})
}

// reload serves POST /v1/reload: it reloads the configuration file and
// answers with the result, 200 when applied, 422 when rejected (the
// running configuration keeps serving), 501 when this server cannot reload.
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.reloader == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]any{"error": "this sidecar cannot reload"})
		return
	}
	// A caller hanging up does not cut a reload short.
	st := s.reloader.Reload(context.WithoutCancel(r.Context()), reload.TriggerAPI)
	code := http.StatusOK
	if st.Result != reload.Applied {
		code = http.StatusUnprocessableEntity
	}
	writeJSON(w, code, st)
}

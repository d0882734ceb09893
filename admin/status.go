package admin

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/spool"
)

// The status page: GET / renders it (html/template), GET /static/{file}
// serves its script and style sheet. All three are embedded, with no
// build step. The page shows the routes, the spool and its dead letters
// as they are when it is rendered; its script then refreshes them every
// 2 s from the JSON API (GET /v1/routes, /v1/spool, /v1/spool/messages)
// and computes per-route request and error rates from two successive
// scrapes of GET /metrics. Its buttons call the JSON API's replay and
// purge with fetch, from the page's own origin, with RequestHeader and
// the token typed into the page, so sameOriginOnly and authorized apply
// to them as to any other client (docs/operations.md, "Status page").
//
//go:embed status
var statusFiles embed.FS

var statusTemplate = template.Must(template.ParseFS(statusFiles, "status/index.html"))

// statusCSP is the page's Content-Security-Policy: its own script and
// style sheet only (no inline script or style), fetch to its own origin
// only, no forms, no framing.
const statusCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// staticTypes are the files GET /static/{file} serves, with their types.
var staticTypes = map[string]string{
	"status.js":  "text/javascript; charset=utf-8",
	"status.css": "text/css; charset=utf-8",
}

// deadListLimit is how many dead letters of each route the page lists.
// The page passes it to status.js (data-dead-limit).
const deadListLimit = 20

// pageHeaders sets the headers of every answer of the status page.
func pageHeaders(w http.ResponseWriter, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// statusStatic serves GET /static/{file}: the page's script and style.
func statusStatic(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	typ, ok := staticTypes[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no such file"})
		return
	}
	b, err := statusFiles.ReadFile("status/" + name)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
		return
	}
	pageHeaders(w, typ)
	w.Write(b)
}

// statusPage is what index.html renders.
type statusPage struct {
	Rendered      string
	Ready         string // "ready", or "not ready" and the reason
	ReadyClass    string
	TokenRequired bool
	MetricsOn     bool
	DeadLimit     int
	Routes        []statusRoute
	// Spool is nil when there is no spool (no route is async).
	Spool *statusSpool
}

type statusRoute struct {
	Name, Sub string
	InFlight  string
	Budget    string
	Limiter   string
	Endpoints []statusEndpoint
}

type statusEndpoint struct {
	URL   string
	State string // a breaker state, or "no breaker"
	Class string // the badge's CSS class
	Flags []statusFlag
	Note  string
}

// statusFlag is a badge after the breaker's: unhealthy, ejected.
type statusFlag struct{ Text, Class string }

type statusSpool struct {
	Summary string
	Routes  []statusSpoolRoute
	Dead    []statusDead
	More    string
}

type statusSpoolRoute struct {
	Name       string
	Pending    int64
	Oldest     string
	Dead       int64
	Size       string
	Deliveries string
}

type statusDead struct {
	ID, Route, Arrived, Reason string
	Attempts                   int
}

// statusHandler serves GET /: the page, rendered from the figures of now.
func (s *Server) statusHandler() http.HandlerFunc {
	metricsOn := s.telemetry != nil && s.telemetry.MetricsHandler() != nil
	return func(w http.ResponseWriter, r *http.Request) {
		now := s.now()
		page := statusPage{
			Rendered:      clockText(now),
			TokenRequired: s.hasToken,
			MetricsOn:     metricsOn,
			DeadLimit:     deadListLimit,
		}
		page.Ready, page.ReadyClass = readyText(s.readiness())
		snap := s.src.Snapshot()
		for _, v := range routes(snap) {
			page.Routes = append(page.Routes, newStatusRoute(v))
		}
		if st := s.spoolStore(); st != nil {
			page.Spool = s.statusSpool(snap, st, now)
		}
		var buf bytes.Buffer
		if err := statusTemplate.Execute(&buf, page); err != nil {
			s.log.Error("status page not rendered", "error", err)
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": "the status page could not be rendered"})
			return
		}
		pageHeaders(w, "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", statusCSP)
		w.Header().Set("X-Frame-Options", "DENY")
		w.Write(buf.Bytes())
	}
}

func (s *Server) statusSpool(snap *proxy.Snapshot, st spool.Store, now time.Time) *statusSpool {
	stats := st.Stats()
	var ds map[string]proxy.DeliveryStatus
	if src, ok := s.src.(DeliverySource); ok {
		ds = src.Deliveries()
	}
	out := &statusSpool{Summary: spoolSummary(stats.Total.Pending, stats.Total.Dead, stats.Segments, stats.Failed)}
	var more []string
	for _, name := range spoolRoutes(snap, stats) {
		v := newSpoolRouteView(stats.Routes[name], now)
		rt := snap.Route(name)
		v.Orphaned = rt == nil || !rt.Async()
		var dv *deliveryView
		if d, ok := ds[name]; ok {
			dv = newDeliveryView(d, now)
		}
		out.Routes = append(out.Routes, statusSpoolRoute{
			Name:       name,
			Pending:    v.Depth,
			Oldest:     ageText(v.OldestAgeSeconds),
			Dead:       v.Dead,
			Size:       bytesText(v.Bytes),
			Deliveries: deliveriesText(dv, v.Orphaned),
		})
		if v.Dead == 0 {
			continue
		}
		infos, err := st.List(name, spool.Dead, "", deadListLimit)
		if err != nil {
			s.log.Warn("status page: dead letters not listed", "route", name, "error", err)
			continue
		}
		for _, in := range infos {
			out.Dead = append(out.Dead, statusDead{
				ID:       in.ID,
				Route:    in.Route,
				Arrived:  in.Arrived.UTC().Format("2006-01-02 15:04:05Z"),
				Reason:   in.DeadReason,
				Attempts: in.Attempts,
			})
		}
		if v.Dead > int64(len(infos)) {
			more = append(more, fmt.Sprintf("%s (%d)", name, v.Dead))
		}
	}
	out.More = moreText(more)
	return out
}

func newStatusRoute(v routeView) statusRoute {
	r := statusRoute{
		Name:     v.Name,
		Sub:      routeSub(v.Listener, v.Upstream, v.Policy),
		InFlight: inFlightText(v.Stats.InFlight, v.Stats.MaxInFlight),
		Budget:   "—",
		Limiter:  "—",
	}
	if b := v.Stats.Budget; b != nil {
		r.Budget = fmt.Sprintf("%.1f left (%d retries / %d req)", b.Available, b.Retries, b.Requests)
	}
	if t := v.Stats.RateTokens; t != nil {
		r.Limiter = fmt.Sprintf("%.1f tokens", *t)
	}
	for _, ep := range v.Endpoints {
		e := statusEndpoint{URL: ep.URL, State: "no breaker", Class: "badge st-none"}
		var notes []string
		if ep.Name != "" {
			notes = append(notes, "from "+ep.Name) // resolve: the name this address came from
		}
		if ep.InFlight > 0 {
			notes = append(notes, fmt.Sprintf("%d in flight", ep.InFlight))
		}
		if b := ep.Breaker; b != nil {
			e.State, e.Class = b.State, "badge "+breakerClass(b.State)
			if n := b.Counts.ConsecutiveFailures; n > 0 {
				notes = append(notes, fmt.Sprintf("%d failing", n))
			}
			if d, err := time.ParseDuration(b.RetryIn); err == nil && d > 0 {
				notes = append(notes, "probe in "+ageText(d.Seconds()))
			}
		}
		if h := ep.Health; h != nil && h.State == "unhealthy" {
			e.Flags = append(e.Flags, statusFlag{"unhealthy", "badge st-unhealthy"})
			if h.LastError != "" {
				notes = append(notes, "health check: "+h.LastError)
			}
		}
		if o := ep.Outlier; o != nil && o.Ejected {
			e.Flags = append(e.Flags, statusFlag{"ejected", "badge st-ejected"})
			if d, err := time.ParseDuration(o.Left); err == nil && d > 0 {
				notes = append(notes, "back in "+ageText(d.Seconds()))
			}
		}
		e.Note = strings.Join(notes, " · ")
		r.Endpoints = append(r.Endpoints, e)
	}
	return r
}

// The formats below are status.js's too: the script redraws what the
// server rendered, and the two must agree.

func routeSub(listener, upstream, policy string) string {
	s := listener + " → " + upstream
	if policy != "" {
		s += " · policy " + policy
	}
	return s
}

func inFlightText(n, max int64) string {
	if max > 0 {
		return fmt.Sprintf("%d / %d", n, max)
	}
	return fmt.Sprint(n)
}

func breakerClass(state string) string {
	switch state {
	case "closed", "open", "half-open":
		return "st-" + state
	}
	return "st-other"
}

// ageText writes an age in seconds: "—" for none, "12.3s", "4m 5s",
// "3h 2m" or "2d 5h".
func ageText(sec float64) string {
	switch {
	case sec <= 0:
		return "—"
	case sec < 60:
		return fmt.Sprintf("%.1fs", sec)
	case sec < 3600:
		return fmt.Sprintf("%dm %ds", int(sec)/60, int(sec)%60)
	case sec < 86400:
		return fmt.Sprintf("%dh %dm", int(sec)/3600, int(sec)%3600/60)
	}
	return fmt.Sprintf("%dd %dh", int(sec)/86400, int(sec)%86400/3600)
}

func bytesText(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func deliveriesText(d *deliveryView, orphaned bool) string {
	var s string
	switch {
	case d != nil:
		s = fmt.Sprintf("%d delivered · %d retried · %d dead-lettered", d.Delivered, d.Retried, d.DeadLettered)
		if d.HeadBlocked {
			s += fmt.Sprintf(" · head blocked after %d attempts", d.HeadAttempts)
		}
	case orphaned:
		s = "orphaned: no async route of this name"
	default:
		s = "—"
	}
	return s
}

func spoolSummary(pending, dead int64, segments int, failed bool) string {
	s := fmt.Sprintf("%d pending · %d dead", pending, dead)
	switch {
	case segments == 1:
		s += " · 1 segment"
	case segments > 1:
		s += fmt.Sprintf(" · %d segments", segments)
	}
	if failed {
		s += " · FAILED: refusing writes until it reopens"
	}
	return s
}

func moreText(more []string) string {
	if len(more) == 0 {
		return ""
	}
	s := fmt.Sprintf("Only the first %d dead letters of each route are listed; more in ", deadListLimit)
	for i, m := range more {
		if i > 0 {
			s += ", "
		}
		s += m
	}
	return s + ". sidecar spool list -state dead -route NAME lists them all."
}

// readyText is what /readyz says, as the page's badge shows it.
func readyText(ready bool, reason string) (text, class string) {
	switch {
	case ready:
		return "ready", "badge st-closed"
	case reason != "":
		return "not ready: " + reason, "badge st-open"
	}
	return "not ready", "badge st-open"
}

// clockText is the time of day the page shows as "updated".
func clockText(t time.Time) string { return t.Format("15:04:05") }

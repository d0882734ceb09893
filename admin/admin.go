// Package admin serves the sidecar's admin API on a loopback listener:
// health and readiness, the effective configuration (secrets redacted) and
// the routes with their live figures.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
)

// Source gives the admin API the snapshot being served.
type Source interface {
	Snapshot() *proxy.Snapshot
}

// Server is the admin API.
type Server struct {
	src   Source
	log   *slog.Logger
	ready atomic.Bool
	srv   *http.Server
	ln    net.Listener
}

// New returns an admin Server for src. It is not ready until SetReady(true).
func New(src Source, logger *slog.Logger) *Server {
	s := &Server{src: src, log: logger}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	return s
}

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

// Serve serves the bound listener until Shutdown; it returns at once.
func (s *Server) Serve(done func()) {
	go func() {
		defer done()
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener stopped", "error", err)
		}
	}()
}

// Shutdown stops the admin API.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Handler returns the admin API's routes behind the loopback Host check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true})
	})
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, config.Public(s.src.Snapshot().Config))
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"routes": routes(s.src.Snapshot())})
	})
	return loopbackOnly(mux)
}

// loopbackOnly refuses requests whose Host is not a loopback name or
// address, so a DNS-rebinding web page cannot drive the admin API.
func loopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
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
	Upstream      string                `json:"upstream"`
	Policy        string                `json:"policy"`
	Match         any                   `json:"match"`
	Timeout       string                `json:"timeout"`
	PerTryTimeout string                `json:"per_try_timeout"`
	LoadBalancing string                `json:"load_balancing"`
	Stats         proxy.RouteStats      `json:"stats"`
	Endpoints     []proxy.EndpointStats `json:"endpoints"`
}

func routes(snap *proxy.Snapshot) []routeView {
	out := make([]routeView, 0, len(snap.Routes))
	for _, r := range snap.Routes {
		v := routeView{
			Name:          r.Name,
			Listener:      r.Listener,
			Upstream:      r.Upstream,
			Policy:        r.PolicyName,
			Match:         config.Public(r.MatchConfig),
			Timeout:       r.Policy.Timeout.D().String(),
			PerTryTimeout: r.Policy.PerTryTimeout.D().String(),
			LoadBalancing: r.Pool.LoadBalancing(),
			Stats:         r.Stats(),
			Endpoints:     r.EndpointStats(),
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

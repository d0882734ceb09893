package proxy

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
	"github.com/sidecar-proxy/sidecar/policy"
)

// handler serves one listener: it checks framing, matches a route in the
// current snapshot and hands the request to the route's reverse proxy, or,
// on an async route when the server has a spool, to serveAsync (gRPC calls
// and upgrades on an async route are served synchronously).
type handler struct {
	listener string
	snap     *atomic.Pointer[Snapshot]
	log      *slog.Logger
	spool    *atomic.Pointer[spooler] // holds nil without a store: async routes are served synchronously
	// tunnels are the CONNECT tunnels this listener's server has open
	// (a forward_proxy listener's); the server closes them when it
	// retires. nil in tests that call the handler directly: no tunnel.
	tunnels *tunnelSet
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := h.snap.Load()
	x, r := observe(snap, w, r)
	if x == nil {
		h.serve(snap, w, r, nil)
		return
	}
	defer x.finish(snap, h.listener, r, h.log)
	h.serve(snap, x, r, x)
}

// serve serves r with snap; x, when not nil, is its telemetry and w
// writes through it.
func (h *handler) serve(snap *Snapshot, w http.ResponseWriter, r *http.Request, x *exchange) {
	// The guard fails closed: a request that did not come through
	// h1guard.Listen and ConnContext (ErrNoConn) is refused too.
	if err := h1guard.FromContext(r.Context()).Next(); err != nil {
		w.Header().Set("Connection", "close")
		writeError(w, r, policy.BadRequest, "", 0, "ambiguous request framing: "+err.Error(), 0)
		return
	}
	l := snap.byName[h.listener]
	if l == nil {
		// A reload removed the listener while this connection was open:
		// its server drains, and no route serves the request.
		w.Header().Set("Connection", "close")
		writeError(w, r, policy.NoRoute, "", 0, "listener removed by a reload", 0)
		return
	}
	var body *appBody
	if r.Body != nil && r.Body != http.NoBody && r.Header["Upgrade"] == nil {
		// Every read of the app's body is bounded from here on: by the
		// listener's body_idle_timeout, and once admitted by the route's
		// deadline as well.
		body = newAppBody(w, r, l.bodyIdle)
		r.Body = body
		defer body.finish()
	}
	if l.forward {
		// Addressed to this proxy, and never forwarded: the sidecar asks
		// no proxy credentials, and an upstream must not see the app's.
		dropProxyHeaders(r.Header)
	}
	if r.Method == http.MethodConnect {
		if l.forward {
			h.serveConnect(l, w, r, x)
			return
		}
		writeError(w, r, policy.BadRequest, "", 0, "CONNECT is not proxied", 0)
		return
	}
	if l.strictPaths && strings.ContainsAny(r.URL.Path, ";\\") {
		writeError(w, r, policy.BadRequest, "", 0, `path holds ';' or '\' (strict_paths)`, 0)
		return
	}
	route := l.route(r, cleanPath(r.URL.Path))
	if route == nil {
		if l.forward {
			// The target host chose no route, and is never dialed.
			writeErrorStatus(w, r, policy.NoRoute, http.StatusForbidden, "", 0, "no route for this host: a forward_proxy listener reaches only the hosts its routes name", 0)
			return
		}
		writeError(w, r, policy.NoRoute, "", 0, "", 0)
		return
	}
	x.routed(route, r.Method)
	if up := r.Header["Upgrade"]; up != nil && !(route.websocket && isWebSocket(r)) {
		writeError(w, r, policy.BadRequest, route.Name, 0, "protocol upgrade refused", 0)
		return
	}
	// Admission, in this order: rate limit, then the in-flight cap. The
	// overall deadline and the attempt loop run in the route's transport.
	if !route.admitRate(w, r) {
		return
	}
	if !route.pol.inFlight.Acquire() {
		route.tel.Rejected(r.Context(), policy.Overloaded)
		writeError(w, r, policy.Overloaded, route.Name, 0, "", time.Second)
		return
	}
	defer route.pol.inFlight.Release()
	start := time.Now()
	body.routed(route, start)
	switch {
	case r.Header["Upgrade"] != nil:
		// Tunnels go straight through; an async route serves them
		// synchronously.
		route.proxy.ServeHTTP(w, r)
	case route.async != nil && h.spool.Load() != nil && !isGRPC(r):
		// gRPC calls on an async route are served synchronously.
		h.serveAsync(h.spool.Load(), w, r, route, start)
	default:
		route.serveForward(w, r, start, h.log)
	}
}

// admitRate applies the route's rate limit: a request over it gets 429 with
// Retry-After, or waits up to max_wait for a token. It reports whether the
// request may go on.
func (rt *Route) admitRate(w http.ResponseWriter, r *http.Request) bool {
	lim := rt.pol.limiter
	if lim == nil {
		return true
	}
	res, ok, retryAfter := lim.Reserve()
	if !ok {
		rt.tel.Rejected(r.Context(), policy.RateLimited)
		writeError(w, r, policy.RateLimited, rt.Name, 0, "", retryAfter)
		return false
	}
	if d := res.Delay(); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			res.Cancel()
			return false
		}
	}
	return true
}

// route returns the first route of l matching r, or nil.
func (l *Listener) route(r *http.Request, path string) *Route {
	for _, rt := range l.Routes {
		if rt.match.matches(r, path) {
			return rt
		}
	}
	return nil
}

func isWebSocket(r *http.Request) bool {
	return len(r.Header["Upgrade"]) == 1 && strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// rewrite turns the inbound request into the outbound one. The URL's
// scheme and host are set per attempt by the attempter; whatever Host or
// absolute URI the app sent, the request only ever goes to the route's
// upstream.
func (rt *Route) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	if ab, ok := in.Body.(*appBody); ok && out.Body != nil {
		// ReverseProxy has wrapped the app's body; keep the wrapper and
		// let the attempt loop find the appBody.
		out.Body = &outBody{ReadCloser: out.Body, app: ab}
	}
	if xff := in.Header["X-Forwarded-For"]; xff != nil {
		out.Header["X-Forwarded-For"] = xff
	}
	pr.SetXForwarded()
	if fwd := in.Header["Forwarded"]; fwd != nil {
		out.Header["Forwarded"] = append(fwd[:len(fwd):len(fwd)], forwardedFor(in))
	}
	if p := cleanPath(in.URL.Path); p != in.URL.Path {
		out.URL.Path, out.URL.RawPath = p, ""
	}
	out.URL.User = nil
	if rt.preserveHost {
		out.Host = in.Host
	} else {
		out.Host = ""
	}
}

// forwardedFor is the RFC 7239 element this hop appends.
func forwardedFor(r *http.Request) string {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	if strings.Contains(ip, ":") {
		ip = `"[` + ip + `]"`
	}
	return "for=" + ip + ";proto=http"
}

func modifyResponse(resp *http.Response) error {
	delete(resp.Header, HeaderOutcome) // only the proxy speaks for itself
	return nil
}

// proxyError is the sync path's ReverseProxy.ErrorHandler: it answers a
// request whose attempt loop ended without an answer to pass on with the
// proxy's own error, or nothing if the app went away.
func (rt *Route) proxyError(logger *slog.Logger) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		rt.answerError(w, r, rt.upstreamError(r, err), logger)
	}
}

// answerError answers a request whose call ended as ue with the proxy's
// own error, or with nothing if the app went away.
func (rt *Route) answerError(w http.ResponseWriter, r *http.Request, ue *UpstreamError, logger *slog.Logger) {
	logger.Debug("upstream request failed", "route", rt.Name, "outcome", ue.Outcome.String(), "error", ue.Err)
	if ue.Outcome == policy.Canceled {
		return // the app went away; there is no one to answer
	}
	writeError(w, r, ue.Outcome, rt.Name, ue.Attempts, "", ue.RetryAfter)
}

// upstreamError is how the attempt loop ended, from the error ReverseProxy
// hands its ErrorHandler: the loop's own *UpstreamError, or, for an error
// of ReverseProxy's (a failed upgrade, say), reset, or canceled when the
// app went away.
func (rt *Route) upstreamError(r *http.Request, err error) *UpstreamError {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue
	}
	outcome := policy.Reset
	if r.Context().Err() != nil {
		outcome = policy.Canceled
	}
	return &UpstreamError{Route: rt.Name, Outcome: outcome, Attempts: 1, Err: err}
}

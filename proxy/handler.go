package proxy

import (
	"context"
	"errors"
	"io"
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
// current snapshot and hands the request to the route's reverse proxy.
type handler struct {
	listener string
	snap     *atomic.Pointer[Snapshot]
	log      *slog.Logger
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if c := h1guard.FromContext(r.Context()); c != nil {
		if err := c.Next(); err != nil {
			w.Header().Set("Connection", "close")
			writeError(w, policy.BadRequest, "", 0, "ambiguous request framing: "+err.Error())
			return
		}
	}
	if r.Method == http.MethodConnect {
		writeError(w, policy.BadRequest, "", 0, "CONNECT is not proxied")
		return
	}
	l := h.snap.Load().byName[h.listener]
	route := l.route(r, cleanPath(r.URL.Path))
	if route == nil {
		writeError(w, policy.NoRoute, "", 0, "")
		return
	}
	if up := r.Header["Upgrade"]; up != nil && !(route.websocket && isWebSocket(r)) {
		writeError(w, policy.BadRequest, route.Name, 0, "protocol upgrade refused")
		return
	}
	route.proxy.ServeHTTP(w, r)
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

var attemptsOne = []string{"1"}

func modifyResponse(resp *http.Response) error {
	resp.Header[HeaderAttempts] = attemptsOne
	delete(resp.Header, HeaderOutcome) // only the proxy speaks for itself
	return nil
}

func (rt *Route) proxyError(logger *slog.Logger) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		var ue *UpstreamError
		if !errors.As(err, &ue) {
			outcome := policy.Reset
			if r.Context().Err() != nil {
				outcome = policy.Canceled
			}
			ue = &UpstreamError{Route: rt.Name, Outcome: outcome, Attempts: 1, Err: err}
		}
		logger.Debug("upstream request failed", "route", rt.Name, "outcome", ue.Outcome.String(), "error", ue.Err)
		if ue.Outcome == policy.Canceled {
			return // the app went away; there is no one to answer
		}
		writeError(w, ue.Outcome, rt.Name, ue.Attempts, "")
	}
}

// attempter is the route's transport: it picks an endpoint and makes the
// attempt under the route's deadlines. The overall timeout covers the whole
// call, response body included; per_try_timeout covers an attempt until
// its response headers arrive.
type attempter struct{ route *Route }

var _ http.RoundTripper = (*attempter)(nil)

func (a *attempter) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := a.route
	app := req.Context()
	ctx, cancel := app, context.CancelFunc(nil)
	if rt.timeout > 0 {
		ctx, cancel = context.WithTimeout(app, rt.timeout)
	}
	attemptCtx, cancelTry := ctx, context.CancelCauseFunc(nil)
	var tryTimer *time.Timer
	if rt.perTry > 0 && (rt.timeout == 0 || rt.perTry < rt.timeout) {
		attemptCtx, cancelTry = context.WithCancelCause(ctx)
		tryTimer = time.AfterFunc(rt.perTry, func() { cancelTry(errPerTryTimeout) })
	}
	ep := rt.Pool.pick(rt.Pool)
	out := req.WithContext(attemptCtx)
	u := *req.URL
	u.Scheme, u.Host = ep.URL.Scheme, ep.URL.Host
	out.URL = &u

	ep.inFlight.Add(1)
	resp, err := rt.Pool.transport.RoundTrip(out)
	if tryTimer != nil && !tryTimer.Stop() && err == nil {
		// The per-try deadline passed as the headers came in: the body
		// would fail anyway, so call it a timeout now.
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}
	if err != nil {
		outcome := classify(err, app, attemptCtx)
		release(ep, cancel, cancelTry)
		return nil, &UpstreamError{Route: rt.Name, Outcome: outcome, Attempts: 1, Err: err}
	}
	body := &attemptBody{ReadCloser: resp.Body, ep: ep, cancel: cancel, cancelTry: cancelTry}
	if rw, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedBody{attemptBody: body, w: rw}
	} else {
		resp.Body = body
	}
	return resp, nil
}

// release ends an attempt: it frees the endpoint's in-flight slot and the
// attempt's contexts.
func release(ep *Endpoint, cancel context.CancelFunc, cancelTry context.CancelCauseFunc) {
	ep.inFlight.Add(-1)
	if cancelTry != nil {
		cancelTry(context.Canceled)
	}
	if cancel != nil {
		cancel()
	}
}

// attemptBody ends the attempt when the proxy closes the response body.
type attemptBody struct {
	io.ReadCloser
	ep        *Endpoint
	cancel    context.CancelFunc
	cancelTry context.CancelCauseFunc
	closed    atomic.Bool
}

func (b *attemptBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.closed.Swap(true) {
		release(b.ep, b.cancel, b.cancelTry)
	}
	return err
}

// upgradedBody keeps a 101 response's body writable, as ReverseProxy needs
// to splice an upgraded (WebSocket) connection.
type upgradedBody struct {
	*attemptBody
	w io.Writer
}

func (b *upgradedBody) Write(p []byte) (int, error) { return b.w.Write(p) }

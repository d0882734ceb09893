package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
	"github.com/sidecar-proxy/sidecar/policy"
)

// A forward_proxy listener (mode: forward_proxy) is what apps use as
// their HTTP_PROXY. A request in absolute form is routed like any other,
// by its target's host (r.Host, which Go's server takes from the absolute
// URI), and forwarded to the route's upstream endpoints: the target only
// chooses the route, never the destination. A CONNECT is tunnelled here,
// to an endpoint of the first route with connect: true whose host (and
// port) the CONNECT names.

// dropProxyHeaders deletes every Proxy-* header (Proxy-Authorization,
// Proxy-Connection, ...): on a forward_proxy listener they are addressed
// to the sidecar, which ignores them, and never go upstream.
func dropProxyHeaders(h http.Header) {
	for k := range h {
		if len(k) > 6 && strings.EqualFold(k[:6], "Proxy-") {
			delete(h, k)
		}
	}
}

// connectRoute returns the first route of l with connect: true whose
// match.host (and port, if it names one) is the CONNECT's authority, or
// nil. Its other match conditions are for requests with a path: a CONNECT
// has none.
func (l *Listener) connectRoute(r *http.Request) *Route {
	for _, rt := range l.Routes {
		if rt.Connect && rt.match.host != "" && rt.match.hostMatches(r) {
			return rt
		}
	}
	return nil
}

// serveConnect serves a CONNECT on a forward_proxy listener: it finds the
// route, dials one endpoint of the route's upstream within its
// connect_timeout, answers 200 and splices the bytes both ways until
// either side ends. The tunnel holds one of the route's max_in_flight
// slots while it lasts. Nothing else of the route's policy applies: the
// sidecar cannot see into the tunnel, so it neither retries, nor times
// out, nor reports to a breaker. A CONNECT that no such route takes is
// refused with 403 no_route and nothing is dialed.
func (h *handler) serveConnect(l *Listener, w http.ResponseWriter, r *http.Request, x *exchange) {
	route := l.connectRoute(r)
	if route == nil {
		writeErrorStatus(w, r, policy.NoRoute, http.StatusForbidden, "", 0, "CONNECT is tunnelled only to a host that a route with connect: true names", 0)
		return
	}
	x.routed(route, r.Method)
	if r.ProtoMajor != 1 || h.tunnels == nil {
		writeError(w, r, policy.BadRequest, route.Name, 0, "CONNECT is tunnelled over HTTP/1.1 only", 0)
		return
	}
	if r.ContentLength != 0 || r.TransferEncoding != nil {
		// Bytes framed as a body would go into the tunnel.
		writeError(w, r, policy.BadRequest, route.Name, 0, "CONNECT with a body", 0)
		return
	}
	if !route.pol.inFlight.Acquire() {
		route.tel.Rejected(r.Context(), policy.Overloaded)
		writeError(w, r, policy.Overloaded, route.Name, 0, "", time.Second)
		return
	}
	defer route.pol.inFlight.Release()

	ep := route.Pool.next()
	if x != nil {
		x.endpoint = ep.URL.Host
	}
	ep.inFlight.Add(1)
	defer ep.inFlight.Add(-1)
	start := time.Now()
	up, err := route.Pool.dialTunnel(r.Context(), ep)
	outcome := policy.OK
	if err != nil {
		outcome = policy.ConnectError
		if r.Context().Err() != nil {
			outcome = policy.Canceled
		}
	}
	route.tel.Attempt(r.Context(), r.Method, 0, outcome, time.Since(start))
	if err != nil {
		h.log.Debug("CONNECT: dial failed", "route", route.Name, "endpoint", ep.URL.Host, "error", err)
		if outcome != policy.Canceled {
			writeError(w, r, outcome, route.Name, 1, "", 0)
		}
		return
	}
	app, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		writeError(w, r, policy.BadRequest, route.Name, 1, "CONNECT: the connection cannot be taken over", 0)
		return
	}
	if gc, ok := app.(*h1guard.Conn); ok {
		// The guard has nothing to judge in a tunnel: read past it.
		app = gc.Conn
	}
	if !h.tunnels.add(app, up) {
		// The listener is being retired: no new tunnel.
		app.Close()
		up.Close()
		return
	}
	defer h.tunnels.remove(app, up)
	app.SetDeadline(time.Time{}) // the server's read and write deadlines end with the request
	if _, err := io.WriteString(app, "HTTP/1.1 200 Connection established\r\n"+HeaderAttempts+": 1\r\n\r\n"); err != nil {
		return
	}
	if x != nil {
		// For the telemetry, which reads the answer's status and headers.
		x.status = http.StatusOK
		w.Header().Set(HeaderAttempts, "1")
	}
	// Bytes the app sent after its CONNECT head, which the server read
	// ahead (a TLS ClientHello sent without waiting for the 200).
	if n := buf.Reader.Buffered(); n > 0 {
		b, _ := buf.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	down := splice(app, up)
	if x != nil {
		x.bytes = down
	}
}

// dialTunnel connects to ep's host and port (the scheme's default port
// when the endpoint names none) within the upstream's connect_timeout.
// The tunnel carries the app's own bytes, TLS included: the upstream's
// tls settings do not apply to it.
func (p *Pool) dialTunnel(ctx context.Context, ep *Endpoint) (net.Conn, error) {
	port := ep.URL.Port()
	if port == "" {
		port = "80"
		if ep.URL.Scheme == "https" {
			port = "443"
		}
	}
	d := net.Dialer{Timeout: p.cfg.ConnectTimeout.D(), KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, "tcp", net.JoinHostPort(ep.URL.Hostname(), port))
}

// splice copies bytes both ways between the app's connection and the
// upstream's until both directions have ended, and closes both. The end
// of one direction (EOF) is passed on as a half-close, so that the other
// may finish; an error in either direction closes both at once. It
// returns the bytes the app received.
func splice(app, up net.Conn) int64 {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			app.Close()
			up.Close()
		})
	}
	defer closeBoth()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(up, app); err != nil {
			closeBoth()
			return
		}
		closeWrite(up)
	}()
	down, err := io.Copy(app, up)
	if err != nil {
		closeBoth()
	} else {
		closeWrite(app)
	}
	<-done
	return down
}

// closeWrite half-closes c when it can, else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	c.Close()
}

// tunnelSet is the open tunnels of one listener's server. http.Server
// does not track hijacked connections, so its Shutdown neither waits for
// nor closes them: the Server closes them once the listener's requests
// have drained (closeAll).
type tunnelSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// add records a tunnel's two connections; false once closeAll has run.
func (t *tunnelSet) add(cs ...net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = map[net.Conn]struct{}{}
	}
	for _, c := range cs {
		t.conns[c] = struct{}{}
	}
	return true
}

func (t *tunnelSet) remove(cs ...net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range cs {
		delete(t.conns, c)
	}
}

// closeAll closes every open tunnel and refuses new ones.
func (t *tunnelSet) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	clear(t.conns)
}

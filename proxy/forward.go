package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sidecar-proxy/sidecar/policy"
)

// serveForward is the sync path of a plain HTTP request (neither gRPC nor
// an upgrade): forward behind a gate, and the proxy's own error when the
// attempt loop, or the answer's body before any of it reached the app,
// failed. It does what httputil.ReverseProxy did for this path, with the
// same header rules (docs/design.md, "Headers"), but builds the outbound
// request without cloning the inbound one: headers are copied once,
// without the hop-by-hop fields, and value slices are shared.
func (rt *Route) serveForward(w http.ResponseWriter, r *http.Request, start time.Time, logger *slog.Logger) {
	g := newGate(w)
	defer g.release()
	if ue := rt.forward(rt.attempt, g, r, start); ue != nil {
		rt.answerError(g, r, ue, logger)
	}
	_ = g.commit()
}

// forward sends r through the attempt loop a and passes the answer to g.
// It returns how the call ended when nothing of an answer reached the
// app, having written nothing; once bytes were sent, a broken body aborts
// the connection (panic http.ErrAbortHandler, as net/http's server
// expects).
func (rt *Route) forward(a *attempter, g *gate, r *http.Request, start time.Time) *UpstreamError {
	fw := &forwarding{g: g}
	fw.trace.Got1xxResponse = fw.got1xx
	out := rt.outbound(r.WithContext(httptrace.WithClientTrace(r.Context(), &fw.trace)), r)
	if out.Body != nil {
		defer out.Body.Close()
	}

	resp, err := a.RoundTrip(out)
	if err != nil {
		return rt.upstreamError(r, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// No upgrade was asked for on this path.
		resp.Body.Close()
		return &UpstreamError{Route: rt.Name, Outcome: policy.Reset, Attempts: attemptsOf(resp), Err: errUnaskedUpgrade}
	}
	removeHopByHop(resp.Header)
	delete(resp.Header, HeaderOutcome) // only the proxy speaks for itself

	dst := g.Header()
	for k, vv := range resp.Header {
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
		} else {
			dst[k] = vv
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		dst["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	g.WriteHeader(resp.StatusCode)

	if err := copyBody(g, resp.Body, streams(resp)); err != nil {
		resp.Body.Close()
		var deadline time.Time
		if rt.pol.timeout > 0 {
			deadline = start.Add(rt.pol.timeout)
		}
		if o, attempts, ok := g.failed(deadline); ok {
			if r.Context().Err() != nil {
				o = policy.Canceled
			}
			return &UpstreamError{Route: rt.Name, Outcome: o, Attempts: attempts, Err: errBodyBroke}
		}
		if isGRPC(r) && r.Context().Err() == nil {
			// A gRPC call's status comes in its trailers, so a call
			// whose answer broke off after it started still ends with
			// the proxy's own status: UNAVAILABLE for reset,
			// DEADLINE_EXCEEDED for timeout (docs/grpc.md, "Errors the
			// sidecar makes"), not a reset stream.
			o := policy.Reset
			if c, ok := resp.Body.(*call); ok && c.tryResult != policy.OK {
				o = c.tryResult // how the attempt loop judged the body's end
			}
			grpcTrailerError(dst, o, rt.Name)
			return nil
		}
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close()

	if len(resp.Trailer) > 0 {
		_ = g.FlushError() // trailers follow a body sent chunked
		if len(resp.Trailer) == announced {
			for k, vv := range resp.Trailer {
				dst[k] = vv
			}
		} else {
			for k, vv := range resp.Trailer {
				dst[http.TrailerPrefix+k] = vv
			}
		}
	}
	return nil
}

// forwarding is one forward's state that the transport reaches.
type forwarding struct {
	g     *gate
	trace httptrace.ClientTrace
}

// got1xx passes an informational answer (103 Early Hints, say) on to the
// app at once, with its own header fields only.
func (fw *forwarding) got1xx(code int, header textproto.MIMEHeader) error {
	dst := fw.g.Header()
	saved := make(http.Header, len(dst))
	for k, vv := range dst {
		saved[k] = vv
	}
	for k, vv := range header {
		dst[k] = vv
	}
	fw.g.WriteHeader(code)
	clear(dst)
	for k, vv := range saved {
		dst[k] = vv
	}
	return nil
}

var (
	errUnaskedUpgrade = errUpstream("upstream switched protocols unasked")
	emptyValue        = []string{""}
	protoHTTP         = []string{"http"}
	protoHTTPS        = []string{"https"}
	teTrailers        = []string{"trailers"}
)

type errUpstream string

func (e errUpstream) Error() string { return string(e) }

// attemptsOf is a response's Sidecar-Attempts count.
func attemptsOf(resp *http.Response) int {
	if v := resp.Header[HeaderAttempts]; len(v) > 0 {
		n := 0
		for _, c := range v[0] {
			if c < '0' || c > '9' {
				return 0
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	return 0
}

// outbound is the request sent upstream for r: r's fields, its headers
// without hop-by-hop fields and with the X-Forwarded-* and Forwarded
// fields of this hop, the path cleaned (cleanPath) and the query cleaned
// as net/http's ReverseProxy does (parameters that Go's parser would drop
// are dropped, so that the upstream cannot read another query than the
// one the routes saw). Scheme and host are the attempt loop's.
// out is a shallow copy of r (r.WithContext) that outbound fills in.
func (rt *Route) outbound(out, r *http.Request) *http.Request {
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil
	}
	h := make(http.Header, len(r.Header)+4)
	for k, vv := range r.Header {
		h[k] = vv
	}
	removeHopByHop(h)
	if httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers") {
		h["Te"] = teTrailers
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = emptyValue // no transport's default
	}
	// This hop's X-Forwarded-* (as ReverseProxy's SetXForwarded) and
	// Forwarded element.
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	} else {
		delete(h, "X-Forwarded-For")
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	if r.TLS == nil {
		h["X-Forwarded-Proto"] = protoHTTP
	} else {
		h["X-Forwarded-Proto"] = protoHTTPS
	}
	if fwd := r.Header["Forwarded"]; fwd != nil {
		h["Forwarded"] = append(fwd[:len(fwd):len(fwd)], forwardedFor(r))
	}
	out.Header = h

	p := cleanPath(r.URL.Path)
	q := cleanQuery(r.URL.RawQuery)
	if p != r.URL.Path || q != r.URL.RawQuery || r.URL.User != nil {
		u := *r.URL
		if p != u.Path {
			u.Path, u.RawPath = p, ""
		}
		u.RawQuery = q
		u.User = nil
		out.URL = &u
	}
	if rt.preserveHost {
		out.Host = r.Host
	} else {
		out.Host = ""
	}
	return out
}

// cleanQuery is net/http's ReverseProxy rule: a query Go's url.ParseQuery
// would not take whole (a ';', a bad escape) is re-encoded from what it
// takes.
func cleanQuery(s string) string {
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencodeQuery(s)
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return reencodeQuery(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func reencodeQuery(s string) string {
	v, _ := url.ParseQuery(s)
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// streams reports whether an answer is sent on as it comes, flushed after
// every read: an event stream, or a body of unknown length (as
// ReverseProxy does).
func streams(resp *http.Response) bool {
	if resp.ContentLength == -1 {
		return true
	}
	ct := ""
	if v := resp.Header["Content-Type"]; len(v) > 0 {
		ct = v[0]
	}
	const es = "text/event-stream"
	return len(ct) >= len(es) && strings.EqualFold(ct[:len(es)], es) && (len(ct) == len(es) || ct[len(es)] == ';' || ct[len(es)] == ' ')
}

// copyBody copies an answer's body to g with a pooled buffer, flushing
// after each write when flush is set. A read error is returned (the gate
// decides what the app gets); a write error means the app went away, and
// aborts the handler.
func copyBody(g *gate, body io.Reader, flush bool) error {
	buf := buffers.Get().(*[32 << 10]byte)
	defer buffers.Put(buf)
	for {
		n, rerr := body.Read(buf[:])
		if n > 0 {
			if _, werr := g.Write(buf[:n]); werr != nil {
				panic(http.ErrAbortHandler)
			}
			if flush {
				if werr := g.FlushError(); werr != nil {
					panic(http.ErrAbortHandler)
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
)

// forwardConfig has one forward_proxy listener "app": inventory.internal
// goes to UPSTREAM0 with retries, other.internal to UPSTREAM1, and
// tls.internal, which allows CONNECT, to UPSTREAM2 with at most one
// request (or tunnel) in flight.
const forwardConfig = `
version: 1
telemetry: {access_log: true}
upstreams:
  inv: {endpoints: ["UPSTREAM0"]}
  other: {endpoints: ["UPSTREAM1"]}
  tls: {endpoints: ["UPSTREAM2"], connect_timeout: 2s}
policies:
  retrying: {timeout: 5s, retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}}}
  one: {max_in_flight: 1}
listeners:
  - name: app
    address: 127.0.0.1:0
    mode: forward_proxy
    routes:
      - {name: inventory, match: {host: inventory.internal}, upstream: inv, policy: retrying}
      - {name: other-api, match: {host: other.internal, path_prefix: /api}, upstream: other}
      - {name: tls, match: {host: tls.internal}, upstream: tls, policy: one, connect: true}
      - {name: tls-8443, match: {host: "tls8443.internal:8443"}, upstream: tls, connect: true}
`

// proxyClient is an http.Client that uses addr as its HTTP proxy, the
// way HTTP_PROXY=http://addr makes Go's default transport do.
func proxyClient(t *testing.T, addr string, base *http.Transport) *http.Client {
	t.Helper()
	u, err := url.Parse("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	tr := base
	if tr == nil {
		tr = &http.Transport{}
	}
	tr.Proxy = http.ProxyURL(u)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func doGet(t *testing.T, c *http.Client, target string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// acceptCounter is a loopback listener that counts the connections made
// to it and accepts them only to close them: an address that must never
// be dialed.
func acceptCounter(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), n
}

// tunnelUpstream is a TLS test server (its certificate is for example.com
// and 127.0.0.1) that answers with its path.
func tunnelUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count.Add(1)
		u.mu.Lock()
		u.last = r.Clone(context.Background())
		u.mu.Unlock()
		fmt.Fprintf(w, "tls hello from %s", r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

func TestForwardProxyRoutesByTargetHost(t *testing.T) {
	var n atomic.Int64
	inv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "inventory %s", r.URL.Path)
	})
	other := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "other %s", r.URL.Path) })
	sc := startSidecar(t, forwardConfig, inv, other, tunnelUpstream(t))
	c := proxyClient(t, sc.addr["app"], nil)

	// The retrying policy applies: the first answer, 503, is retried.
	resp, body := doGet(t, c, "http://inventory.internal/items?x=1")
	if resp.StatusCode != 200 || body != "inventory /items" || resp.Header.Get(HeaderAttempts) != "2" {
		t.Fatalf("GET inventory = %d %q attempts %q, want 200 %q after 2 attempts", resp.StatusCode, body, resp.Header.Get(HeaderAttempts), "inventory /items")
	}
	r := inv.lastRequest()
	if r.URL.RequestURI() != "/items?x=1" || r.Host != strings.TrimPrefix(inv.URL, "http://") {
		t.Errorf("upstream got %s with Host %q, want origin form /items?x=1 and the endpoint's Host", r.URL.RequestURI(), r.Host)
	}
	if got := r.Header.Get("X-Forwarded-Host"); got != "inventory.internal" {
		t.Errorf("X-Forwarded-Host = %q, want the target inventory.internal", got)
	}
	// Any port of a host without one; the host's case does not matter.
	resp, body = doGet(t, c, "http://Inventory.Internal:8080/a/../b")
	if resp.StatusCode != 200 || body != "inventory /b" {
		t.Errorf("GET inventory.internal:8080 = %d %q, want 200 %q", resp.StatusCode, body, "inventory /b")
	}
	// Path conditions hold on the origin-form path.
	resp, body = doGet(t, c, "http://other.internal/api/v1")
	if resp.StatusCode != 200 || body != "other /api/v1" {
		t.Errorf("GET other.internal/api/v1 = %d %q, want 200 from the other upstream", resp.StatusCode, body)
	}
	// A request in origin form is routed by its Host header.
	resp, body = get(t, "http://"+sc.addr["app"]+"/api/x", "Host", "other.internal")
	if resp.StatusCode != 200 || body != "other /api/x" {
		t.Errorf("origin-form GET with Host other.internal = %d %q, want 200 from the other upstream", resp.StatusCode, body)
	}
	// The access log and the metrics' route label name the route.
	poll.Until(t, 5*time.Second, "the access log", func() bool {
		return strings.Contains(sc.logs.String(), "route=inventory") && strings.Contains(sc.logs.String(), "route=other-api")
	})
}

func TestForwardProxyUnknownHostIsRefusedAndNeverDialed(t *testing.T) {
	never, accepts := acceptCounter(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tunnelUpstream(t))
	c := proxyClient(t, sc.addr["app"], nil)
	for _, target := range []string{
		"http://" + never + "/x",                                                       // an address that listens
		"http://nowhere.invalid/x",                                                     // a name that resolves nowhere
		"http://other.internal/elsewhere",                                              // a known host, no route for the path
		"http://inventory.internal.evil/x",                                             // a suffix is not the host
		"http://inventory.internal@" + never + "/x",                                    // userinfo does not name the host
		"http://" + strings.Replace(never, "127.0.0.1", "[::ffff:127.0.0.1]", 1) + "/", // another spelling
	} {
		resp, body := doGet(t, c, target)
		var e struct{ Error, Route, Outcome string }
		if err := json.Unmarshal([]byte(body), &e); resp.StatusCode != 403 || resp.Header.Get(HeaderOutcome) != "no_route" || err != nil || e.Outcome != "no_route" {
			t.Errorf("GET %s = %d %s %q, want 403 no_route with a JSON error", target, resp.StatusCode, resp.Header.Get(HeaderOutcome), body)
		}
	}
	// An origin-form request for an unknown Host too.
	resp, _ := get(t, "http://"+sc.addr["app"]+"/x", "Host", never)
	if resp.StatusCode != 403 {
		t.Errorf("origin-form GET with Host %s = %d, want 403", never, resp.StatusCode)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the unknown host was dialed %d times, want never", n)
	}
	if n := inv.count.Load(); n != 0 {
		t.Errorf("the upstreams saw %d requests, want none", n)
	}
}

func TestForwardProxyStripsProxyHeaders(t *testing.T) {
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tunnelUpstream(t))
	// Proxy credentials in the proxy URL become Proxy-Authorization.
	u, _ := url.Parse("http://app:s3cret@" + sc.addr["app"])
	tr := &http.Transport{Proxy: http.ProxyURL(u)}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	resp, _ := doGet(t, c, "http://inventory.internal/x", "Proxy-Foo", "bar", "Proxy-Connection", "keep-alive", "X-Kept", "yes")
	if resp.StatusCode != 200 {
		t.Fatalf("GET = %d, want 200", resp.StatusCode)
	}
	r := inv.lastRequest()
	for k := range r.Header {
		if strings.HasPrefix(k, "Proxy-") {
			t.Errorf("upstream got %s, want no Proxy-* header", k)
		}
	}
	if r.Header.Get("X-Kept") != "yes" {
		t.Errorf("upstream lost the end-to-end header X-Kept")
	}
	// The raw request, as curl -x sends it.
	resp, _, _ = rawRequest(t, sc.addr["app"], "GET http://inventory.internal/raw HTTP/1.1\r\nHost: inventory.internal\r\nProxy-Authorization: Basic YXBwOnMzY3JldA==\r\nProxy-Connection: Keep-Alive\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("raw GET = %d, want 200", resp.StatusCode)
	}
	if r := inv.lastRequest(); r.URL.Path != "/raw" || r.Header.Get("Proxy-Authorization") != "" || r.Header.Get("Proxy-Connection") != "" {
		t.Errorf("upstream got %s with Proxy-Authorization %q, Proxy-Connection %q; want neither", r.URL.Path, r.Header.Get("Proxy-Authorization"), r.Header.Get("Proxy-Connection"))
	}
}

func TestForwardProxyCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tunnelUpstream(t))
	proxy := "http://" + sc.addr["app"]
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append([]string{"-sS", "--noproxy", "", "-x", proxy, "-D", "-"}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("http://inventory.internal/items")
	if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, "hello from /items") {
		t.Errorf("curl -x %s http://inventory.internal/items =\n%s\nwant 200 from the upstream", proxy, out)
	}
	out = run("http://nowhere.invalid/items")
	if !strings.HasPrefix(out, "HTTP/1.1 403") || !strings.Contains(out, `"outcome":"no_route"`) {
		t.Errorf("curl -x %s http://nowhere.invalid/items =\n%s\nwant 403 no_route", proxy, out)
	}
}

func TestForwardProxyConnectTunnels(t *testing.T) {
	tlsUp := tunnelUpstream(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tlsUp)
	// An HTTPS client through the proxy: it sends CONNECT tls.internal:443,
	// which the route sends to its upstream's endpoint, and speaks TLS
	// with it end to end. The test certificate is for example.com.
	base := tlsUp.Client().Transport.(*http.Transport).Clone()
	base.TLSClientConfig.ServerName = "example.com"
	c := proxyClient(t, sc.addr["app"], base)
	resp, body := doGet(t, c, "https://tls.internal/secure")
	if resp.StatusCode != 200 || body != "tls hello from /secure" {
		t.Fatalf("GET https://tls.internal/secure = %d %q, want 200 from the TLS upstream", resp.StatusCode, body)
	}
	if resp.Header.Get(HeaderAttempts) != "" {
		t.Errorf("a tunnelled answer has %s, want none: the sidecar cannot see into the tunnel", HeaderAttempts)
	}
	// The tunnel, kept alive by the client's pool, holds the route's one
	// in-flight slot: another CONNECT is refused as overloaded.
	req := "CONNECT tls.internal:443 HTTP/1.1\r\nHost: tls.internal:443\r\n\r\n"
	resp2, _ := rawConnect(t, sc.addr["app"], "tls.internal:443")
	if resp2.StatusCode != 503 || resp2.Header.Get(HeaderOutcome) != "overloaded" {
		t.Errorf("a second CONNECT while the first tunnel is open = %d %s, want 503 overloaded", resp2.StatusCode, resp2.Header.Get(HeaderOutcome))
	}
	// Once the client drops its connection, the tunnel ends and frees it.
	c.Transport.(*http.Transport).CloseIdleConnections()
	poll.Until(t, 5*time.Second, "the tunnel to end", func() bool {
		return sc.srv.Snapshot().Route("tls").Stats().InFlight == 0
	})
	// A raw CONNECT: the 200, then the bytes go through as they are.
	conn, err := net.Dial("tcp", sc.addr["app"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	io.WriteString(conn, req)
	resp3, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp3.StatusCode != 200 || resp3.Header.Get(HeaderAttempts) != "1" {
		t.Fatalf("CONNECT = %v %v, want 200 with %s: 1", resp3, err, HeaderAttempts)
	}
	tc := tls.Client(&bufConn{Conn: conn, r: br}, base.TLSClientConfig)
	if _, err := io.WriteString(tc, "GET /raw HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatalf("TLS through the tunnel: %v", err)
	}
	got, _ := io.ReadAll(tc)
	if !strings.Contains(string(got), "tls hello from /raw") {
		t.Errorf("through the tunnel: %q, want the TLS upstream's answer", got)
	}
	if n := tlsUp.count.Load(); n != 2 {
		t.Errorf("the TLS upstream saw %d requests, want 2", n)
	}
	// The access log names the route of the tunnel.
	poll.Until(t, 5*time.Second, "the tunnel's access log line", func() bool {
		return strings.Contains(sc.logs.String(), "method=CONNECT path=\"\" status=200")
	})
	if !strings.Contains(sc.logs.String(), "route=tls method=CONNECT") || !strings.Contains(sc.logs.String(), "outcome=ok attempts=1") {
		t.Errorf("access log =\n%s\nwant a CONNECT line for route tls", sc.logs.String())
	}
}

// rawConnect sends CONNECT target on a new connection and returns the
// answer, with its body unless it is a 2xx (a tunnel), then hangs up.
func rawConnect(t *testing.T, addr, target string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	body := ""
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
	}
	return resp, body
}

// bufConn reads what a bufio.Reader holds before the connection.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestForwardProxyConnectRefused(t *testing.T) {
	never, accepts := acceptCounter(t)
	tlsUp := tunnelUpstream(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tlsUp)
	tests := []struct {
		name, target string
		want         int
		outcome      string
	}{
		{"unknown host", never, 403, "no_route"},
		{"unknown name", "nowhere.invalid:443", 403, "no_route"},
		{"route without connect: true", "inventory.internal:443", 403, "no_route"},
		{"route names another port", "tls8443.internal:443", 403, "no_route"},
		{"a port-specific route", "tls8443.internal:8443", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawConnect(t, sc.addr["app"], tt.target)
			if resp.StatusCode != tt.want || resp.Header.Get(HeaderOutcome) != tt.outcome {
				t.Errorf("CONNECT %s = %d %s %q, want %d %s", tt.target, resp.StatusCode, resp.Header.Get(HeaderOutcome), body, tt.want, tt.outcome)
			}
		})
	}
	resp, _, _ := rawRequest(t, sc.addr["app"], "CONNECT tls.internal:443 HTTP/1.1\r\nHost: tls.internal:443\r\nContent-Length: 5\r\n\r\nhello")
	if resp.StatusCode != 400 || resp.Header.Get(HeaderOutcome) != "bad_request" {
		t.Errorf("CONNECT with a body = %d %s, want 400 bad_request", resp.StatusCode, resp.Header.Get(HeaderOutcome))
	}
	if n := tlsUp.count.Load(); n != 0 {
		t.Errorf("the TLS upstream saw %d requests, want none", n)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the CONNECT target was dialed %d times, want never", n)
	}
	if n := inv.count.Load(); n != 0 {
		t.Errorf("inventory's upstream saw %d requests, want none", n)
	}
}

func TestForwardProxyConnectFailsToDial(t *testing.T) {
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, deadUpstream(t))
	resp, body := rawConnect(t, sc.addr["app"], "tls.internal:443")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderOutcome) != "connect_error" || !strings.Contains(body, `"route":"tls"`) {
		t.Errorf("CONNECT to a dead upstream = %d %s %q, want 502 connect_error for route tls", resp.StatusCode, resp.Header.Get(HeaderOutcome), body)
	}
}

func TestForwardProxyConnectOverHTTP2IsRefused(t *testing.T) {
	tlsUp := tunnelUpstream(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tlsUp)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	for _, tt := range []struct {
		authority string
		want      int
	}{{"tls.internal:443", 400}, {"nowhere.invalid:443", 403}} {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("CONNECT", "http://"+sc.addr["app"], pr)
		req.Host = tt.authority
		resp, err := tr.RoundTrip(req)
		pw.Close()
		if err != nil {
			t.Fatalf("h2c CONNECT %s: %v", tt.authority, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want || resp.ProtoMajor != 2 {
			t.Errorf("h2c CONNECT %s = %d over HTTP/%d, want %d over HTTP/2", tt.authority, resp.StatusCode, resp.ProtoMajor, tt.want)
		}
	}
	if n := tlsUp.count.Load(); n != 0 {
		t.Errorf("the TLS upstream saw %d requests, want none", n)
	}
}

func TestForwardProxyAsyncRouteSpoolsAndDelivers(t *testing.T) {
	rec := newRecorder(t, nil)
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, `
version: 1
spool: {dir: ./unused}
upstreams:
  events: {endpoints: ["UPSTREAM0"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    mode: forward_proxy
    routes:
      - {name: events, match: {host: events.internal, methods: [POST]}, upstream: events, async: {when: always, backoff: {base: 1ms, max: 5ms}}}
`, []Option{WithSpool(st)}, rec.upstream)
	c := proxyClient(t, sc.addr["app"], nil)
	resp, err := c.Post("http://events.internal/orders?id=7", "application/json", strings.NewReader(`{"order":7}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	spooled(t, resp, string(b))
	poll.Until(t, 5*time.Second, "the delivery", func() bool { return len(rec.got()) == 1 })
	got := rec.got()[0]
	if got.path != "/orders?id=7" || got.body != `{"order":7}` || got.key == "" {
		t.Errorf("delivered %+v, want POST /orders?id=7 with the body and an idempotency key", got)
	}
	if r := rec.lastRequest(); r.Header.Get("Proxy-Connection") != "" {
		t.Errorf("the delivery carries Proxy-Connection")
	}
}

func TestForwardProxyModeChangesOnReload(t *testing.T) {
	inv := newUpstream(t, nil)
	sc := startSidecar(t, `
version: 1
upstreams:
  inv: {endpoints: ["UPSTREAM0"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: inventory, match: {host: inventory.internal}, upstream: inv}
`, inv)
	addr := sc.addr["app"]
	connect := func() int {
		resp, _ := rawConnect(t, addr, "inventory.internal:443")
		return resp.StatusCode
	}
	if got := connect(); got != 400 {
		t.Fatalf("CONNECT on a reverse_proxy listener = %d, want 400", got)
	}
	// The same address and protocol: the socket stays, the mode applies
	// to the next request.
	next := buildFrom(t, `
version: 1
upstreams:
  inv: {endpoints: ["`+inv.URL+`"]}
listeners:
  - name: app
    address: `+addr+`
    mode: forward_proxy
    routes:
      - {name: inventory, match: {host: inventory.internal}, upstream: inv, connect: true}
`, sc.srv.Snapshot())
	if err := sc.srv.Reload(next, time.Second); err != nil {
		t.Fatal(err)
	}
	if got := connect(); got != 200 {
		t.Errorf("CONNECT after the reload to forward_proxy = %d, want 200", got)
	}
	resp, _ := doGet(t, proxyClient(t, addr, nil), "http://elsewhere.internal/")
	if resp.StatusCode != 403 {
		t.Errorf("an unknown host after the reload = %d, want 403", resp.StatusCode)
	}
}

func TestForwardProxyShutdownClosesTunnels(t *testing.T) {
	tlsUp := tunnelUpstream(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tlsUp)
	conn, err := net.Dial("tcp", sc.addr["app"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	io.WriteString(conn, "CONNECT tls.internal:443 HTTP/1.1\r\nHost: tls.internal:443\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT = %v, %v; want 200", resp, err)
	}
	// An idle tunnel, as a client's pool keeps one: the shutdown closes
	// it once the listener's requests have drained, not after the grace.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := sc.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v with an idle tunnel open, want it closed at once", d)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel is still open after Shutdown")
	}
}

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/testnet"
)

func TestForwardsAndAddsHeaders(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute("{timeout: 5s}"), up)

	resp, body := get(t, sc.url("/a/b?q=1"), "X-Forwarded-For", "203.0.113.7", "Host", "app.example")
	if resp.StatusCode != 200 || body != "hello from /a/b" {
		t.Fatalf("GET = %d %q, want 200 %q", resp.StatusCode, body, "hello from /a/b")
	}
	if got := resp.Header.Get(HeaderAttempts); got != "1" {
		t.Errorf("%s = %q, want 1", HeaderAttempts, got)
	}
	if got := resp.Header.Get(HeaderOutcome); got != "" {
		t.Errorf("%s = %q on a proxied response, want none", HeaderOutcome, got)
	}
	r := up.lastRequest()
	if got := r.URL.RequestURI(); got != "/a/b?q=1" {
		t.Errorf("upstream saw %q, want /a/b?q=1", got)
	}
	if got := r.Header.Get("X-Forwarded-For"); got != "203.0.113.7, 127.0.0.1" {
		t.Errorf("upstream X-Forwarded-For = %q, want the app's value with 127.0.0.1 appended", got)
	}
	if got := r.Header.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("upstream X-Forwarded-Proto = %q, want http", got)
	}
	if want := strings.TrimPrefix(up.URL, "http://"); r.Host != want {
		t.Errorf("upstream Host = %q, want the endpoint's %q", r.Host, want)
	}
}

func TestPreserveHost(t *testing.T) {
	up := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute("{}"), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["UPSTREAM0"], preserve_host: true}`, 1)
	sc := startSidecar(t, cfg, up)
	get(t, sc.url("/"), "Host", "app.example:8443")
	if got := up.lastRequest().Host; got != "app.example:8443" {
		t.Errorf("upstream Host = %q, want the app's app.example:8443", got)
	}
}

func TestRouteMatching(t *testing.T) {
	ups := make([]*upstream, 8)
	for i := range ups {
		name := fmt.Sprint(i)
		ups[i] = newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	}
	sc := startSidecar(t, `
version: 1
upstreams:
  u0: {endpoints: ["UPSTREAM0"]}
  u1: {endpoints: ["UPSTREAM1"]}
  u2: {endpoints: ["UPSTREAM2"]}
  u3: {endpoints: ["UPSTREAM3"]}
  u4: {endpoints: ["UPSTREAM4"]}
  u5: {endpoints: ["UPSTREAM5"]}
  u6: {endpoints: ["UPSTREAM6"]}
  u7: {endpoints: ["UPSTREAM7"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: exact, match: {path: /exact}, upstream: u0}
      - {name: tenant, match: {path_prefix: /api, headers: {x-tenant: acme}}, upstream: u1}
      - {name: api-writes, match: {path_prefix: /api, methods: [POST, PUT]}, upstream: u2}
      - {name: api, match: {path_prefix: /api}, upstream: u3}
      - {name: files, match: {path_prefix: /files/}, upstream: u4}
      - {name: regex, match: {path_regex: "/v[0-9]+/users"}, upstream: u5}
      - {name: host, match: {host: internal.example}, upstream: u6}
      - {name: grpc, match: {grpc_service: pkg.Greeter, grpc_method: Hello}, upstream: u7}
`, ups...)
	tests := []struct {
		name, method, path string
		hdr                []string
		want               string // upstream index, or "404"
	}{
		{"exact", "GET", "/exact", nil, "0"},
		{"exact is exact", "GET", "/exact/more", nil, "404"},
		{"header condition", "GET", "/api/x", []string{"X-Tenant", "acme"}, "1"},
		{"header value must equal", "GET", "/api/x", []string{"X-Tenant", "other"}, "3"},
		{"method condition", "POST", "/api/x", nil, "2"},
		{"prefix itself", "GET", "/api", nil, "3"},
		{"prefix with slash", "GET", "/api/", nil, "3"},
		{"prefix whole segments only", "GET", "/apix", nil, "404"},
		{"slash prefix is a plain prefix", "GET", "/files/a/b", nil, "4"},
		{"slash prefix needs the slash", "GET", "/files", nil, "404"},
		{"regex whole path", "GET", "/v2/users", nil, "5"},
		{"regex anchored", "GET", "/v2/users/7", nil, "404"},
		{"host, port ignored, any case", "GET", "/whatever", []string{"Host", "Internal.Example:9001"}, "6"},
		{"grpc service and method", "POST", "/pkg.Greeter/Hello", nil, "7"},
		{"grpc other method", "POST", "/pkg.Greeter/Bye", nil, "404"},
		{"dot segments cannot escape a prefix", "GET", "/api/../exact", nil, "0"},
		{"encoded slash cannot escape a prefix", "GET", "/api%2F..%2Fexact", nil, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://"+sc.addr["app"]+"/", nil)
			req.URL.Opaque = tt.path // send the path exactly as written
			for i := 0; i+1 < len(tt.hdr); i += 2 {
				if tt.hdr[i] == "Host" {
					req.Host = tt.hdr[i+1]
				} else {
					req.Header.Set(tt.hdr[i], tt.hdr[i+1])
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := string(body)
			if resp.StatusCode == 404 {
				got = "404"
				if o := resp.Header.Get(HeaderOutcome); o != "no_route" {
					t.Errorf("404 %s = %q, want no_route", HeaderOutcome, o)
				}
			}
			if got != tt.want {
				t.Errorf("%s %s went to %q, want %q", tt.method, tt.path, got, tt.want)
			}
		})
	}
}

func TestCleanedPathIsForwarded(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute("{}"), up)
	resp, _, _ := rawRequest(t, sc.addr["app"], "GET /a/../b//c HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	if got := up.lastRequest().URL.Path; got != "/b/c" {
		t.Errorf("upstream path = %q, want the cleaned /b/c that was matched", got)
	}
}

func TestNoRouteJSON(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, strings.Replace(oneRoute("{}"), "path_prefix: /", "path_prefix: /only", 1), up)
	resp, body := get(t, sc.url("/elsewhere"))
	var got map[string]string
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("body %q is not JSON: %v", body, err)
	}
	if resp.StatusCode != 404 || got["outcome"] != "no_route" || got["error"] == "" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("no route = %d %v %q, want 404 with a JSON error and outcome no_route", resp.StatusCode, resp.Header, body)
	}
	if up.count.Load() != 0 {
		t.Errorf("upstream saw %d requests, want 0", up.count.Load())
	}
}

func TestLoadBalancing(t *testing.T) {
	for _, lb := range []string{"round_robin", "random", "least_request"} {
		t.Run(lb, func(t *testing.T) {
			a, b := newUpstream(t, nil), newUpstream(t, nil)
			cfg := strings.Replace(oneRoute("{}"), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["UPSTREAM0", "UPSTREAM1"], load_balancing: `+lb+`}`, 1)
			sc := startSidecar(t, cfg, a, b)
			for range 40 {
				get(t, sc.url("/"))
			}
			ca, cb := a.count.Load(), b.count.Load()
			if ca+cb != 40 || ca == 0 || cb == 0 {
				t.Errorf("%s spread 40 requests as %d/%d, want both endpoints used", lb, ca, cb)
			}
			if lb == "round_robin" && ca != 20 {
				t.Errorf("round_robin spread 40 requests as %d/%d, want 20/20", ca, cb)
			}
		})
	}
}

func TestLeastRequestAvoidsBusyEndpoint(t *testing.T) {
	release := make(chan struct{})
	busyStarted := make(chan struct{}, 1)
	busy := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		busyStarted <- struct{}{}
		<-release
	})
	idle := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute("{}"), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["UPSTREAM0", "UPSTREAM1"], load_balancing: least_request}`, 1)
	sc := startSidecar(t, cfg, busy, idle)
	done := make(chan struct{})
	defer func() { close(release); <-done }()
	// Park one request on the busy endpoint: with two endpoints, power of
	// two choices always compares both, so every later pick avoids it.
	go func() {
		defer close(done)
		for busy.count.Load() == 0 {
			resp, err := http.Get(sc.url("/"))
			if err != nil {
				return
			}
			resp.Body.Close()
		}
	}()
	<-busyStarted
	for range 20 {
		get(t, sc.url("/"))
	}
	if got := busy.count.Load(); got != 1 {
		t.Errorf("busy endpoint got %d requests, want only the parked one", got)
	}
}

func TestHopByHopHeadersStripped(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Upstream-Hop")
		w.Header().Set("X-Upstream-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End-To-End", "kept")
	})
	sc := startSidecar(t, oneRoute("{}"), up)
	resp, _, _ := rawRequest(t, sc.addr["app"], "GET / HTTP/1.1\r\nHost: x\r\n"+
		"Connection: keep-alive, X-App-Hop\r\nX-App-Hop: secret\r\nKeep-Alive: timeout=5\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	r := up.lastRequest()
	for _, h := range []string{"X-App-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection"} {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("upstream received hop-by-hop %s: %q", h, v)
		}
	}
	if r.Header.Get("X-Kept") != "yes" {
		t.Errorf("upstream lost end-to-end header X-Kept")
	}
	for _, h := range []string{"X-Upstream-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("app received hop-by-hop %s: %q", h, v)
		}
	}
	if resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("app lost end-to-end header X-End-To-End")
	}
}

func TestNeverAnOpenProxy(t *testing.T) {
	up := newUpstream(t, nil)
	// A decoy that must never be reached: its address is what the
	// requests below ask for.
	decoy := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute("{}"), "path_prefix: /", "path_prefix: /, host: api.internal", 1)
	sc := startSidecar(t, cfg, up)
	decoyHost := strings.TrimPrefix(decoy.URL, "http://")
	tests := []struct {
		name, req string
		want      int
	}{
		{"absolute URI to a foreign host", "GET " + decoy.URL + "/x HTTP/1.1\r\nHost: " + decoyHost + "\r\n\r\n", 404},
		{"Host header of a foreign host", "GET /x HTTP/1.1\r\nHost: " + decoyHost + "\r\n\r\n", 404},
		{"CONNECT", "CONNECT " + decoyHost + " HTTP/1.1\r\nHost: " + decoyHost + "\r\n\r\n", 400},
		{"absolute URI with a matching host goes to the route's upstream", "GET http://api.internal/x HTTP/1.1\r\nHost: api.internal\r\n\r\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, _ := rawRequest(t, sc.addr["app"], tt.req)
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	if n := decoy.count.Load(); n != 0 {
		t.Errorf("decoy saw %d requests, want 0", n)
	}
	if r := up.lastRequest(); r == nil || r.Host != strings.TrimPrefix(up.URL, "http://") {
		t.Errorf("upstream request = %v, want one with the endpoint's Host", r)
	}
}

func TestMalformedRequestsNeverReachUpstream(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute("{}"), up)
	tests := []struct {
		name, req  string
		want       int
		wantClosed bool
	}{
		{"Content-Length and Transfer-Encoding", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true},
		{"Transfer-Encoding and Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400, true},
		{"Transfer-Encoding not chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, true},
		{"Upgrade refused", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n", 400, false},
		{"WebSocket not allowed on the route", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 400, false},
		{"oversized headers", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", MaxHeaderBytes+8192) + "\r\n\r\n", 431, true},
		{"bad request line", "GET /x HTTP/1.1 junk\r\nHost: x\r\n\r\n", 400, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, closed := rawRequest(t, sc.addr["app"], tt.req)
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d %q, want %d", resp.StatusCode, body, tt.want)
			}
			if tt.wantClosed && !closed {
				t.Errorf("connection left open, want it closed")
			}
		})
	}
	if n := up.count.Load(); n != 0 {
		t.Errorf("upstream saw %d requests, want 0", n)
	}
}

func TestLargeBodiesBothWays(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("X-Request-Sum", fmt.Sprintf("%x", h.Sum(nil)))
		w.Header().Set("X-Request-Len", fmt.Sprint(n))
		// Answer 8 MiB of deterministic bytes.
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		for range 128 {
			w.Write(chunk)
		}
	})
	sc := startSidecar(t, oneRoute("{timeout: 0s}"), up) // no deadline: a loaded -race run may take long
	body := make([]byte, 8<<20)
	rand.Read(body)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			var rd io.Reader = bytes.NewReader(body)
			if chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked
			}
			resp, err := http.Post(sc.url("/upload"), "application/octet-stream", rd)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			want := fmt.Sprintf("%x", sha256.Sum256(body))
			if got := resp.Header.Get("X-Request-Sum"); got != want {
				t.Errorf("upstream got a request body of %s bytes with sum %s, want %d bytes with %s", resp.Header.Get("X-Request-Len"), got, len(body), want)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil || n != 8<<20 {
				t.Fatalf("response body = %d bytes, %v; want %d", n, err, 8<<20)
			}
			if got, want := fmt.Sprintf("%x", h.Sum(nil)), fmt.Sprintf("%x", sha256.Sum256(bytes.Repeat([]byte("0123456789abcdef"), 4096*128))); got != want {
				t.Errorf("response body sum = %s, want %s", got, want)
			}
		})
	}
}

func TestStreamingResponseIsFlushed(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: second\n\n")
	})
	sc := startSidecar(t, oneRoute("{timeout: 30s}"), up)
	resp, err := http.Get(sc.url("/events"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event = %q, %v; want it before the upstream finishes", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: second") {
		t.Errorf("rest of stream = %q, want the second event", rest)
	}
}

func TestUpstreamFailures(t *testing.T) {
	deadAddr := testnet.RefusedAddr(t)

	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	slow := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	})
	reset := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	midBody := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	})

	tests := []struct {
		name     string
		endpoint string
		policy   string
		want     int
		outcome  string
	}{
		{"connection refused", "http://" + deadAddr, "{timeout: 5s}", 502, "connect_error"},
		{"per-try timeout", slow.URL, "{timeout: 5s, per_try_timeout: 50ms}", 504, "timeout"},
		{"overall timeout", slow.URL, "{timeout: 50ms}", 504, "timeout"},
		{"reset after sending", reset.URL, "{timeout: 5s}", 502, "reset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := strings.Replace(oneRoute(tt.policy), `"UPSTREAM0"`, `"`+tt.endpoint+`"`, 1)
			sc := startSidecar(t, cfg)
			resp, body := get(t, sc.url("/"))
			var got map[string]string
			json.Unmarshal([]byte(body), &got)
			if resp.StatusCode != tt.want || resp.Header.Get(HeaderOutcome) != tt.outcome || got["outcome"] != tt.outcome || got["route"] != "all" {
				t.Errorf("GET = %d %s=%q %q, want %d with outcome %s", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), body, tt.want, tt.outcome)
			}
			if got := resp.Header.Get(HeaderAttempts); got != "1" {
				t.Errorf("%s = %q, want 1", HeaderAttempts, got)
			}
		})
	}

	t.Run("overall timeout during a stalled body", func(t *testing.T) {
		// Nothing of the answer reached the app before the deadline (the
		// partial body was still held back), so the app gets the
		// proxy's 504, not a cut connection (see also hardening_test.go).
		cfg := strings.Replace(oneRoute("{timeout: 100ms}"), `"UPSTREAM0"`, `"`+midBody.URL+`"`, 1)
		sc := startSidecar(t, cfg)
		start := time.Now()
		resp, body := get(t, sc.url("/"))
		if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(HeaderOutcome) != "timeout" {
			t.Errorf("GET = %d %s=%q %q, want 504 timeout", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), body)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("GET took %v, want the 100ms deadline to end it", time.Since(start))
		}
	})
}

func TestUpstreamCannotForgeOutcome(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderOutcome, "breaker_open")
		w.WriteHeader(503)
	})
	sc := startSidecar(t, oneRoute("{}"), up)
	resp, _ := get(t, sc.url("/"))
	if resp.StatusCode != 503 || resp.Header.Get(HeaderOutcome) != "" {
		t.Errorf("GET = %d %s=%q, want the upstream's 503 without %s", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), HeaderOutcome)
	}
}

// TestUnguardedRequestRefused: the framing guard fails closed: a request
// that did not come through h1guard.Listen and ConnContext is refused with
// 400 and a closed connection, and never reaches the upstream.
func TestUnguardedRequestRefused(t *testing.T) {
	h, snap := newHandler(t, oneRoute("{}"), nil)
	var sent atomic.Int32
	snap.Pools["up"].rt = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent.Add(1)
		return nil, errors.New("must not be called")
	})
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want int
	}{
		{"unguarded", context.Background(), http.StatusBadRequest},
		{"guarded", guardedContext(t), http.StatusBadGateway},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequestWithContext(tt.ctx, "GET", "http://app.local/items/1", nil))
		if w.Code != tt.want {
			t.Errorf("%s: ServeHTTP = %d %q, want %d", tt.name, w.Code, w.Body, tt.want)
		}
	}
	if got := sent.Load(); got != 1 {
		t.Errorf("upstream round trips = %d, want 1 (the guarded request only)", got)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

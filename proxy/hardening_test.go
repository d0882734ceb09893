package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
)

// Reproductions of defects found by probing the proxy as a hostile or
// broken app would. Each failed on the code before its fix.

// stallUpload opens a connection, sends the head of a POST declaring a
// 10-byte body and 5 of its bytes, and holds. It returns the connection
// and a reader of its answers.
func stallUpload(t *testing.T, addr, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// expectStallAnswer reads the 408 request_timeout a stalled upload gets and
// checks that the connection is then closed.
func expectStallAnswer(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("stalled upload got no answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(HeaderOutcome) != "request_timeout" {
		t.Fatalf("stalled upload = %d %s=%q, want 408 request_timeout", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the 408, reading the connection = %v, want EOF (closed)", err)
	}
}

// TestStalledUploadEndsAtRouteDeadline: an app that sends part of a
// declared body and holds gets 408 once the route's timeout passes, its
// in-flight slot is freed, and the breaker does not count it against the
// upstream.
func TestStalledUploadEndsAtRouteDeadline(t *testing.T) {
	arrived := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/items/x" {
			close(arrived)
		}
		io.Copy(io.Discard, r.Body)
	})
	sc := startSidecar(t, oneRoute(`{timeout: 1s, max_in_flight: 1,
      circuit_breaker: {consecutive_failures: 1, open_for: 1m}}`), up)
	_, br := stallUpload(t, sc.addr["app"], "/items/x")
	// Once forwarded, the stalled upload holds the route's only slot. (A
	// probe sent before that could take the slot first.)
	select {
	case <-arrived:
	case <-time.After(900 * time.Millisecond):
		t.Fatal("the stalled upload did not reach the upstream within its timeout")
	}
	if resp, _ := get(t, sc.url("/items/busy")); resp.Header.Get(HeaderOutcome) != "overloaded" {
		t.Fatalf("GET while the stalled upload holds the only slot = %d %s=%q, want 503 overloaded", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
	}
	expectStallAnswer(t, br)
	if resp, _ := get(t, sc.url("/items/y")); resp.StatusCode != http.StatusOK {
		t.Errorf("GET after the stalled upload = %d %s, want 200: slot freed, breaker closed", resp.StatusCode, resp.Header.Get(HeaderOutcome))
	}
}

// TestStalledUploadEndsAtPerTryTimeout: an attempt whose per-try timeout
// passes while the app is still sending its body (the upstream already
// has the request's head) ends as the app's 408 request_timeout, at the
// per-try timeout, not the route's, and is not counted by the breaker.
func TestStalledUploadEndsAtPerTryTimeout(t *testing.T) {
	var heads atomic.Int32
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/items/x" {
			heads.Add(1)
		}
		io.Copy(io.Discard, r.Body)
	})
	// One attempt: with retries on, a body this small is read whole, for
	// replay, before the first attempt starts (bounded by the route's
	// timeout and body_idle_timeout instead).
	sc := startSidecar(t, oneRoute(`{timeout: 20s, per_try_timeout: 300ms,
      circuit_breaker: {consecutive_failures: 1, open_for: 1m}}`), up)
	start := time.Now()
	_, br := stallUpload(t, sc.addr["app"], "/items/x")
	expectStallAnswer(t, br)
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("answered after %v, want about the 300ms per-try timeout, not the 20s route timeout", el)
	}
	if n := heads.Load(); n != 1 {
		t.Errorf("the upstream saw the stalled request's head %d times, want once", n)
	}
	if resp, _ := get(t, sc.url("/items/y")); resp.StatusCode != http.StatusOK {
		t.Errorf("GET after the stalled upload = %d %s, want 200: the breaker must not open", resp.StatusCode, resp.Header.Get(HeaderOutcome))
	}
}

// TestStalledUploadEndsAtBodyIdleTimeout: with no route timeout, the
// listener's body_idle_timeout ends a paused upload.
func TestStalledUploadEndsAtBodyIdleTimeout(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	cfg := strings.Replace(oneRoute(`{timeout: 0s}`), "address: 127.0.0.1:0", "address: 127.0.0.1:0\n    body_idle_timeout: 200ms", 1)
	sc := startSidecar(t, cfg, up)
	start := time.Now()
	_, br := stallUpload(t, sc.addr["app"], "/items/x")
	expectStallAnswer(t, br)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("answered after %v, want about the 200ms idle timeout", el)
	}
}

// TestStalledUploadOnAsyncRoute: reading an async request's body into the
// spool is bounded too.
func TestStalledUploadOnAsyncRoute(t *testing.T) {
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	cfg := strings.Replace(asyncRoute(`when: always`), "p: {timeout: 5s}", "p: {timeout: 300ms}", 1)
	sc := startSidecarWith(t, cfg, []Option{WithSpool(st)}, deadUpstream(t))
	_, br := stallUpload(t, sc.addr["app"], "/events")
	expectStallAnswer(t, br)
	if d := depth(st); d != 0 {
		t.Errorf("spool depth = %d, want nothing stored of a body that never came", d)
	}
}

// TestMalformedChunkIsTheAppsFault: a chunked body whose framing breaks
// off is the app's bad_request: never retried, never counted by the
// breaker, and the other apps keep the upstream.
func TestMalformedChunkIsTheAppsFault(t *testing.T) {
	var got atomic.Int32
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		io.Copy(io.Discard, r.Body)
	})
	sc := startSidecar(t, oneRoute(`{retry: {attempts: 3, on: [reset, connect_error, "5xx"]},
      circuit_breaker: {consecutive_failures: 2, open_for: 1m}}`), up)
	for i := range 3 {
		resp, body, closed := rawRequest(t, sc.addr["app"], "PUT /items/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(HeaderOutcome) != "bad_request" || !closed {
			t.Fatalf("request %d with a malformed chunk = %d %s=%q closed=%v (%q), want 400 bad_request and the connection closed",
				i, resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), closed, body)
		}
	}
	if n := got.Load(); n > 3 {
		t.Errorf("upstream saw %d requests for 3 malformed ones, want no retries", n)
	}
	if resp, _ := get(t, sc.url("/items/ok")); resp.StatusCode != http.StatusOK {
		t.Errorf("GET after the malformed bodies = %d %s, want 200: the breaker must not open", resp.StatusCode, resp.Header.Get(HeaderOutcome))
	}
}

// TestStalledUploadRefusedUnread: a request refused before its body is
// read (here: no route) is answered once the body idle timeout passes,
// rather than holding its connection while the server waits for the rest
// of the body.
func TestStalledUploadRefusedUnread(t *testing.T) {
	cfg := strings.Replace(oneRoute(`{}`), "address: 127.0.0.1:0", "address: 127.0.0.1:0\n    body_idle_timeout: 200ms", 1)
	cfg = strings.Replace(cfg, "match: {path_prefix: /}", "match: {path_prefix: /items}", 1)
	sc := startSidecar(t, cfg, newUpstream(t, nil))
	_, br := stallUpload(t, sc.addr["app"], "/nowhere")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("stalled upload to no route got no answer: %v", err)
	}
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("stalled upload to no route = %d, want 404", resp.StatusCode)
	}
}

// TestUpstreamBodyFailsBeforeAnythingSent: when the upstream's answer
// breaks off before any byte of it reached the app, the app gets the
// proxy's error, not a cut connection; once bytes were sent, the
// connection is cut.
func TestUpstreamBodyFailsBeforeAnythingSent(t *testing.T) {
	raw := func(answer string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			brw.WriteString(answer)
			brw.Flush()
		}
	}
	big := strings.Repeat("x", 3*gateSize)
	tests := []struct {
		name        string
		policy      string
		upstream    http.HandlerFunc
		wantStatus  int // 0: the connection is cut
		wantOutcome string
	}{
		{"reset_mid_body", `{}`, raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst ten!"), http.StatusBadGateway, "reset"},
		{"body_shorter_than_length", `{}`, raw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"), http.StatusBadGateway, "reset"},
		{"timeout_during_slow_body", `{timeout: 300ms}`, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}, http.StatusGatewayTimeout, "timeout"},
		{"reset_after_bytes_sent", `{}`, raw("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + big), 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, oneRoute(tt.policy), newUpstream(t, tt.upstream))
			resp, err := http.Get(sc.url("/items/x"))
			if tt.wantStatus == 0 {
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				if err == nil {
					t.Fatalf("GET = %d with its whole body, want the connection cut mid-body", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("GET: %v, want %d %s", err, tt.wantStatus, tt.wantOutcome)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(HeaderOutcome) != tt.wantOutcome {
				t.Errorf("GET = %d %s=%q (%q), want %d %s", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), body, tt.wantStatus, tt.wantOutcome)
			}
			if got := resp.Header.Get(HeaderAttempts); got != "1" {
				t.Errorf("%s = %q, want 1", HeaderAttempts, got)
			}
			if resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length = %q for a %d-byte body: the upstream's headers leaked", resp.Header.Get("Content-Length"), len(body))
			}
		})
	}
}

// TestPathSyntaxOtherUpstreamsRead: ';' and '\' are not path syntax to
// the sidecar, so "/items/..;/admin" stays within /items when matched, and
// is forwarded as it came. An upstream such as Tomcat reads "..;" as "..":
// strict_paths refuses such paths, in plain and percent-encoded form,
// before they reach any route.
func TestPathSyntaxOtherUpstreamsRead(t *testing.T) {
	cfg := `
version: 1
upstreams:
  up: {endpoints: ["UPSTREAM0"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    STRICT
    routes:
      - {name: items, match: {path_prefix: /items}, upstream: up}
`
	paths := []string{"/items/..;/admin", "/items/..%3B/admin", `/items/..\admin`, "/items/..%5Cadmin", "/items/x;jsessionid=1"}
	t.Run("default", func(t *testing.T) {
		up := newUpstream(t, nil)
		sc := startSidecar(t, strings.Replace(cfg, "STRICT", "strict_paths: false", 1), up)
		for _, p := range paths {
			resp, _, _ := rawRequest(t, sc.addr["app"], "GET "+p+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s = %d, want 200 (forwarded)", p, resp.StatusCode)
			}
		}
		if n := up.count.Load(); n != int64(len(paths)) {
			t.Errorf("upstream saw %d requests, want %d", n, len(paths))
		}
	})
	t.Run("strict_paths", func(t *testing.T) {
		up := newUpstream(t, nil)
		sc := startSidecar(t, strings.Replace(cfg, "STRICT", "strict_paths: true", 1), up)
		for _, p := range paths {
			resp, _, _ := rawRequest(t, sc.addr["app"], "GET "+p+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(HeaderOutcome) != "bad_request" {
				t.Errorf("GET %s = %d %s=%q, want 400 bad_request", p, resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
			}
		}
		if resp, _, _ := rawRequest(t, sc.addr["app"], "GET /items/ok HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /items/ok = %d, want 200", resp.StatusCode)
		}
		if n := up.count.Load(); n != 1 {
			t.Errorf("upstream saw %d requests, want 1 (only the clean path)", n)
		}
	})
}

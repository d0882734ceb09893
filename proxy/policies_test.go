package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/testnet"
)

// scripted is an upstream whose answers are scripted: each request takes
// the next step, and when the script runs out it answers 200 "ok". It
// counts requests and records their headers and body sums.
type scripted struct {
	*upstream
	mu      sync.Mutex
	steps   []step
	headers []http.Header
	sums    []string
}

type step struct {
	status     int
	retryAfter string
	stall      chan struct{} // wait for this (or the request's end) before answering
	reset      bool          // cut the connection without an answer
}

func newScripted(t testing.TB, steps ...step) *scripted {
	s := &scripted{steps: steps}
	s.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.headers = append(s.headers, r.Header.Clone())
		s.sums = append(s.sums, fmt.Sprintf("%x", sha256.Sum256(body)))
		st := step{status: 200}
		if len(s.steps) > 0 {
			st, s.steps = s.steps[0], s.steps[1:]
		}
		s.mu.Unlock()
		if st.stall != nil {
			select {
			case <-st.stall:
			case <-r.Context().Done():
				return
			}
		}
		if st.reset {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return
		}
		if st.status == 0 {
			st.status = 200
		}
		if st.retryAfter != "" {
			w.Header().Set("Retry-After", st.retryAfter)
		}
		w.WriteHeader(st.status)
		fmt.Fprintf(w, "status %d", st.status)
	})
	return s
}

// always returns n steps answering status.
func always(n, status int) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = step{status: status}
	}
	return out
}

func send(t *testing.T, method, url string, body []byte, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

const retry3 = `{timeout: 10s, retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}}`

func TestRetryRules(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 2048)
	small := bytes.Repeat([]byte("y"), 512)
	tests := []struct {
		name         string
		policy       string
		steps        []step
		method       string
		body         []byte
		hdr          []string
		wantStatus   int
		wantAttempts string
		wantUpstream int64
	}{
		{"idempotent GET retried until success", retry3, always(2, 503), "GET", nil, nil, 200, "3", 3},
		{"attempts bound retries; the last real answer is passed on", retry3, always(5, 503), "GET", nil, nil, 503, "3", 3},
		{"POST is not retried", retry3, always(2, 503), "POST", small, nil, 503, "1", 1},
		{"POST with the idempotency header is retried", retry3, always(1, 503), "POST", small, []string{"Idempotency-Key", "k1"}, 200, "2", 2},
		{"custom idempotency header", `{retry: {attempts: 2, backoff: {base: 1ms}, idempotency_header: X-Once}}`, always(1, 503), "PATCH", small, []string{"X-Once", "1"}, 200, "2", 2},
		{"body over buffer_limit is streamed, not retried", `{retry: {attempts: 3, backoff: {base: 1ms}, buffer_limit: 1KiB}}`, always(1, 503), "PUT", big, nil, 503, "1", 1},
		{"status not in on is not retried", `{retry: {attempts: 3, backoff: {base: 1ms}, on: ["502"]}}`, always(1, 503), "GET", nil, nil, 503, "1", 1},
		{"status class in on", `{retry: {attempts: 3, backoff: {base: 1ms}, on: ["4xx"]}}`, always(1, 429), "GET", nil, nil, 200, "2", 2},
		{"reset is retried", retry3, []step{{reset: true}}, "GET", nil, nil, 200, "2", 2},
		{"reset on POST is not retried", retry3, []step{{reset: true}}, "POST", small, nil, 502, "1", 1},
		{"Retry-After 0 overrides a long back-off", `{timeout: 30s, retry: {attempts: 2, backoff: {base: 20s, max: 20s}}}`, []step{{status: 503, retryAfter: "0"}}, "GET", nil, nil, 200, "2", 2},
		{"Retry-After past the deadline stops retries", `{timeout: 2s, retry: {attempts: 3, backoff: {base: 1ms}}}`, []step{{status: 503, retryAfter: "60"}}, "GET", nil, nil, 503, "1", 1},
		{"no retry block means one attempt", `{}`, always(1, 503), "GET", nil, nil, 503, "1", 1},
		{"enabled false turns retries off", `{retry: {enabled: false}}`, always(1, 503), "GET", nil, nil, 503, "1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newScripted(t, tt.steps...)
			sc := startSidecar(t, oneRoute(tt.policy), up.upstream)
			resp, body := send(t, tt.method, sc.url("/r"), tt.body, tt.hdr...)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(HeaderAttempts) != tt.wantAttempts {
				t.Errorf("%s = %d %s=%q %q, want %d with %s attempts", tt.method, resp.StatusCode, HeaderAttempts, resp.Header.Get(HeaderAttempts), body, tt.wantStatus, tt.wantAttempts)
			}
			if resp.StatusCode == 503 && body != "status 503" {
				t.Errorf("body = %q, want the upstream's own answer", body)
			}
			if got := up.count.Load(); got != tt.wantUpstream {
				t.Errorf("upstream saw %d attempts, want %d", got, tt.wantUpstream)
			}
			want := fmt.Sprintf("%x", sha256.Sum256(tt.body))
			up.mu.Lock()
			defer up.mu.Unlock()
			for i, sum := range up.sums {
				if tt.body != nil && sum != want && !(resp.StatusCode == 503 && strings.Contains(tt.name, "streamed")) {
					t.Errorf("attempt %d carried a body with sum %s, want the app's %s", i+1, sum, want)
				}
			}
		})
	}
}

func TestConnectErrorRetriedForAnyMethod(t *testing.T) {
	up := newScripted(t)
	dead := "http://" + testnet.RefusedAddr(t)
	cfg := strings.Replace(oneRoute(retry3), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["`+dead+`", "UPSTREAM0"]}`, 1)
	sc := startSidecar(t, cfg, up.upstream)
	// Round robin starts at the dead endpoint.
	big := bytes.Repeat([]byte("z"), 256<<10) // over buffer_limit: streamed
	resp, body := send(t, "POST", sc.url("/c"), big)
	if resp.StatusCode != 200 || resp.Header.Get(HeaderAttempts) != "2" {
		t.Errorf("POST = %d attempts %q %q, want 200 after 2 attempts", resp.StatusCode, resp.Header.Get(HeaderAttempts), body)
	}
	if want := fmt.Sprintf("%x", sha256.Sum256(big)); len(up.sums) != 1 || up.sums[0] != want {
		t.Errorf("upstream got bodies %v, want one with sum %s", up.sums, want)
	}
}

func TestIdempotencyHeaderKeptAcrossAttempts(t *testing.T) {
	up := newScripted(t, always(2, 503)...)
	sc := startSidecar(t, oneRoute(retry3), up.upstream)
	send(t, "POST", sc.url("/p"), []byte("x"), "Idempotency-Key", "abc")
	if len(up.headers) != 3 {
		t.Fatalf("upstream saw %d attempts, want 3", len(up.headers))
	}
	for i, h := range up.headers {
		if h.Get("Idempotency-Key") != "abc" {
			t.Errorf("attempt %d Idempotency-Key = %q, want abc", i+1, h.Get("Idempotency-Key"))
		}
	}
}

func TestNoRetryOnceResponseStarted(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
	})
	sc := startSidecar(t, oneRoute(retry3), up)
	// Nothing of the answer reached the app before the cut (the partial
	// body was still held back): the app gets the proxy's 502.
	if resp, body := get(t, sc.url("/")); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(HeaderOutcome) != "reset" {
		t.Errorf("GET of a body cut upstream = %d %s=%q %q, want 502 reset", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), body)
	}
	if n := up.count.Load(); n != 1 {
		t.Errorf("upstream saw %d attempts, want 1: no retry after response bytes", n)
	}
}

func TestPerTryDeadlineWithinOverall(t *testing.T) {
	stall := make(chan struct{})
	defer close(stall)
	up := newScripted(t, step{stall: stall}, step{stall: stall}, step{stall: stall}, step{stall: stall})
	sc := startSidecar(t, oneRoute(`{timeout: 300ms, per_try_timeout: 100ms, retry: {attempts: 4, backoff: {base: 1ms, max: 1ms}}}`), up.upstream)
	start := time.Now()
	resp, _ := send(t, "GET", sc.url("/"), nil)
	if resp.StatusCode != 504 || resp.Header.Get(HeaderOutcome) != "timeout" {
		t.Errorf("GET = %d %s=%q, want 504 timeout", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
	}
	if n := up.count.Load(); n < 2 || n > 3 {
		t.Errorf("upstream saw %d attempts, want 2 or 3 per-try timeouts inside the 300ms deadline", n)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("request took %v, want it ended near the 300ms deadline", d)
	}
}

func TestRetryBudgetPreventsStorm(t *testing.T) {
	const requests = 200
	up := newScripted(t, always(100000, 503)...)
	sc := startSidecar(t, oneRoute(`{retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0.2, min_per_second: 1, window: 10s}}}`), up.upstream)
	start := time.Now()
	for range requests {
		resp, _ := send(t, "GET", sc.url("/"), nil)
		if resp.StatusCode != 503 {
			t.Fatalf("status = %d, want the upstream's 503", resp.StatusCode)
		}
	}
	secs := time.Since(start).Seconds()
	// (1 + ratio) × requests + min_per_second × window, as the window never
	// slides in this test's few seconds.
	limit := int64(1.2*requests + 10 + secs)
	if n := up.count.Load(); n > limit || n < requests {
		t.Errorf("upstream saw %d attempts for %d requests, want at most %d (no retry storm)", n, requests, limit)
	}
}

func TestBreakerLifecycle(t *testing.T) {
	var healthy atomic.Bool
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(503)
		}
	})
	sc := startSidecar(t, oneRoute(`{circuit_breaker: {consecutive_failures: 3, open_for: 300ms, half_open_requests: 1}}`), up)
	for i := range 3 {
		if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 503 || resp.Header.Get(HeaderOutcome) != "" {
			t.Fatalf("request %d = %d %s=%q, want the upstream's 503", i, resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
		}
	}
	// Open: fail fast, zero upstream traffic, Retry-After until the probe.
	for range 5 {
		resp, body := send(t, "GET", sc.url("/"), nil)
		if resp.StatusCode != 503 || resp.Header.Get(HeaderOutcome) != "breaker_open" || resp.Header.Get("Retry-After") != "1" {
			t.Fatalf("open breaker answer = %d %v %q, want 503 breaker_open with Retry-After 1", resp.StatusCode, resp.Header, body)
		}
	}
	if n := up.count.Load(); n != 3 {
		t.Errorf("upstream saw %d requests, want 3: none while open", n)
	}
	healthy.Store(true)
	time.Sleep(350 * time.Millisecond) // open_for passing is the behaviour under test
	// Half-open: one probe goes through and closes the breaker.
	if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
		t.Fatalf("probe = %d, want 200", resp.StatusCode)
	}
	for range 5 {
		if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
			t.Fatalf("after close = %d, want 200", resp.StatusCode)
		}
	}
	if n := up.count.Load(); n != 9 {
		t.Errorf("upstream saw %d requests, want 9", n)
	}
	logs := sc.logs.String()
	for _, change := range []string{"from=closed to=open", "from=open to=half_open", "from=half_open to=closed"} {
		if !strings.Contains(logs, "circuit breaker state changed") || !strings.Contains(logs, change) {
			t.Errorf("logs lack the breaker change %q:\n%s", change, logs)
		}
	}
}

func TestBreakerSkipsOpenEndpoint(t *testing.T) {
	bad := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(502) })
	good := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute(`{circuit_breaker: {consecutive_failures: 2, open_for: 1m}}`), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["UPSTREAM0", "UPSTREAM1"]}`, 1)
	sc := startSidecar(t, cfg, bad, good)
	for range 20 {
		send(t, "GET", sc.url("/"), nil)
	}
	if n := bad.count.Load(); n != 2 {
		t.Errorf("failing endpoint saw %d requests, want 2 (then its breaker opened and it was skipped)", n)
	}
	if n := good.count.Load(); n != 18 {
		t.Errorf("healthy endpoint saw %d requests, want 18", n)
	}
}

func TestBreakerIgnores4xx(t *testing.T) {
	up := newScripted(t, always(10, 404)...)
	sc := startSidecar(t, oneRoute(`{circuit_breaker: {consecutive_failures: 2}}`), up.upstream)
	for range 10 {
		send(t, "GET", sc.url("/"), nil)
	}
	if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
		t.Errorf("after ten 404s = %d, want 200: a 4xx never trips a breaker", resp.StatusCode)
	}
}

func TestRateLimit(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute(`{rate_limit: {rps: 0.5, burst: 2}}`), up)
	for i := range 2 {
		if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
			t.Fatalf("request %d within burst = %d, want 200", i, resp.StatusCode)
		}
	}
	resp, body := send(t, "GET", sc.url("/"), nil)
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || resp.Header.Get(HeaderOutcome) != "rate_limited" || ra < 1 || ra > 2 {
		t.Errorf("over the limit = %d %v %q, want 429 rate_limited with Retry-After 1-2", resp.StatusCode, resp.Header, body)
	}
	if n := up.count.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

func TestRateLimitMaxWaitQueues(t *testing.T) {
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute(`{rate_limit: {rps: 20, burst: 1, max_wait: 1s}}`), up)
	for i := range 4 {
		if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
			t.Fatalf("request %d = %d, want 200 after queueing", i, resp.StatusCode)
		}
	}
}

func TestMaxInFlight(t *testing.T) {
	release := make(chan struct{})
	parked := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/park" {
			parked <- struct{}{}
			<-release
		}
	})
	sc := startSidecar(t, oneRoute(`{max_in_flight: 1}`), up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(sc.url("/park"))
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-parked
	resp, _ := send(t, "GET", sc.url("/second"), nil)
	if resp.StatusCode != 503 || resp.Header.Get(HeaderOutcome) != "overloaded" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over max_in_flight = %d %v, want 503 overloaded with Retry-After", resp.StatusCode, resp.Header)
	}
	close(release)
	<-done
	if resp, _ := send(t, "GET", sc.url("/third"), nil); resp.StatusCode != 200 {
		t.Errorf("after the slot freed = %d, want 200", resp.StatusCode)
	}
}

func TestRetryAvoidsTheFailedEndpoint(t *testing.T) {
	bad := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	good := newUpstream(t, nil)
	cfg := strings.Replace(oneRoute(`{retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}, budget: {min_per_second: 1000}}}`),
		`up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["UPSTREAM0", "UPSTREAM1"], load_balancing: random}`, 1)
	sc := startSidecar(t, cfg, bad, good)
	for i := range 40 {
		if resp, _ := send(t, "GET", sc.url("/"), nil); resp.StatusCode != 200 {
			t.Fatalf("request %d = %d, want 200: a retry must not go back to the endpoint that failed", i, resp.StatusCode)
		}
	}
}

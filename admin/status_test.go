package admin

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// get GETs path from ts with Host host ("" for ts's own) and returns the
// answer with its body read.
func get(t *testing.T, ts *httptest.Server, path, host string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.URL+path, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// statusConfig has a sync route and, when async, an async route "ev"; a
// route and an upstream named with HTML metacharacters; and the telemetry
// block given (a YAML flow mapping's body).
func statusConfig(async bool, telemetryBlock string) string {
	ev := ""
	if async {
		ev = "\n      - {name: ev, match: {path_prefix: /ev}, upstream: up, async: {}}"
	}
	return `
version: 1
spool: {dir: ./unused}
telemetry: {` + telemetryBlock + `}
upstreams:
  up: {endpoints: ["http://127.0.0.1:8080"]}
  "<b>up</b>": {endpoints: ["http://127.0.0.1:8081"]}
policies:
  guarded: {retry: {}, circuit_breaker: {}, rate_limit: {rps: 10, burst: 5}, max_in_flight: 7}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: orders, match: {path_prefix: /orders}, upstream: up, policy: guarded}
      - {name: "<script>alert('route')</script>", match: {path_prefix: /x}, upstream: "<b>up</b>"}` + ev + `
`
}

func TestStatusPageHeaders(t *testing.T) {
	_, ts := newMetricsAdmin(t, fixedSource{proxytest.Snapshot(t, statusConfig(false, ""))})
	resp, body := get(t, ts, "/", "")
	if resp.StatusCode != 200 {
		t.Fatalf("GET / = %d %s", resp.StatusCode, body)
	}
	want := map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Cache-Control":           "no-store",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("GET / %s = %q, want %q", k, got, v)
		}
	}
	for _, s := range []string{`<script src="/static/status.js" defer></script>`, `href="/static/status.css"`, `data-key="orders"`, `id="token"`, `type="password"`} {
		if !strings.Contains(body, s) {
			t.Errorf("GET / lacks %s", s)
		}
	}
	// The policy allows no inline script or style: every script is a
	// file, and no element has a style attribute or block.
	for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		if !strings.Contains(m, ` src="/static/`) {
			t.Errorf("inline script %s: the CSP blocks it", m)
		}
	}
	if regexp.MustCompile(`(?i)<style|\sstyle=|\son[a-z]+=|javascript:`).MatchString(body) {
		t.Errorf("GET / has an inline style or handler, which the CSP blocks:\n%s", body)
	}
	// Nothing else under / is the page.
	if resp, _ := get(t, ts, "/index.html", ""); resp.StatusCode != 404 {
		t.Errorf("GET /index.html = %d, want 404", resp.StatusCode)
	}
}

func TestStatusStatic(t *testing.T) {
	_, ts := newTestAdmin(t)
	for file, typ := range map[string]string{
		"status.js":  "text/javascript; charset=utf-8",
		"status.css": "text/css; charset=utf-8",
	} {
		resp, body := get(t, ts, "/static/"+file, "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != typ || resp.Header.Get("X-Content-Type-Options") != "nosniff" ||
			resp.Header.Get("Cache-Control") != "no-store" || len(body) < 100 {
			t.Errorf("GET /static/%s = %d, Content-Type %q, nosniff %q, Cache-Control %q, %d bytes; want 200 %s, nosniff, no-store",
				file, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("X-Content-Type-Options"), resp.Header.Get("Cache-Control"), len(body), typ)
		}
	}
	for _, path := range []string{"/static/index.html", "/static/nope.js", "/static/", "/static/..%2fstatus.go", "/static/status/status.js"} {
		if resp, _ := get(t, ts, path, ""); resp.StatusCode != 404 {
			t.Errorf("GET %s = %d, want 404", path, resp.StatusCode)
		}
	}
}

// TestStatusScriptBuildsNoHTML guards status.js's rule: nodes are built
// with textContent and attributes, never from HTML strings.
func TestStatusScriptBuildsNoHTML(t *testing.T) {
	js, err := statusFiles.ReadFile("status/status.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage", "location.hash", "location.search"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("status.js uses %s", bad)
		}
	}
}

func TestStatusPageLoopbackOnly(t *testing.T) {
	_, ts := newTestAdmin(t)
	for _, path := range []string{"/", "/static/status.js", "/static/status.css"} {
		for _, host := range []string{"evil.example", "evil.example:9901", "10.0.0.1:9901"} {
			resp, body := get(t, ts, path, host)
			if resp.StatusCode != 403 || strings.Contains(body, "<html") || strings.Contains(body, "function") {
				t.Errorf("GET %s with Host %s = %d, want 403 without the page", path, host, resp.StatusCode)
			}
		}
		if resp, _ := get(t, ts, path, "localhost:9901"); resp.StatusCode != 200 {
			t.Errorf("GET %s with Host localhost:9901 = %d, want 200", path, resp.StatusCode)
		}
	}
}

func TestStatusPageEscapes(t *testing.T) {
	snap := proxytest.Snapshot(t, statusConfig(true, ""))
	st := openTestStore(t, spool.FileOptions{})
	ctx := context.Background()
	m := &spool.Message{Route: "ev", Method: "POST", Target: "/ev"}
	if err := st.Append(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Next("ev", m.Arrived); err != nil {
		t.Fatal(err)
	}
	if err := st.DeadLetter(m.ID, `upstream said <img src=x onerror="alert(1)">`); err != nil {
		t.Fatal(err)
	}
	// A message of a route the configuration lacks, named with markup.
	if err := st.Append(ctx, &spool.Message{Route: `"><svg onload=alert(2)>`, Method: "POST", Target: "/"}); err != nil {
		t.Fatal(err)
	}
	_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
	resp, body := get(t, ts, "/", "")
	if resp.StatusCode != 200 {
		t.Fatalf("GET / = %d %s", resp.StatusCode, body)
	}
	for _, raw := range []string{"<script>alert", "<b>up", "<img src=x", "<svg"} {
		if strings.Contains(body, raw) {
			t.Errorf("GET / shows %q unescaped", raw)
		}
	}
	for _, esc := range []string{
		"&lt;script&gt;alert(&#39;route&#39;)&lt;/script&gt;",            // the route's name, as text
		`data-key="&lt;script&gt;alert(&#39;route&#39;)&lt;/script&gt;"`, // and as an attribute
		"app → &lt;b&gt;up&lt;/b&gt;",                                    // the upstream
		"upstream said &lt;img src=x onerror=&#34;alert(1)&#34;&gt;",     // a dead letter's reason
		`data-route="&#34;&gt;&lt;svg onload=alert(2)&gt;"`,              // an orphaned route's purge buttons
		`data-id="` + m.ID + `"`,                                         // the dead letter's replay button
	} {
		if !strings.Contains(body, esc) {
			t.Errorf("GET / lacks %s", esc)
		}
	}
}

// TestStatusPageSpoolAndMetrics checks the sections the page shows with a
// spool and metrics, without a spool, and with metrics off.
func TestStatusPageSpoolAndMetrics(t *testing.T) {
	spoolHidden := regexp.MustCompile(`<section id="spool-section"\s+hidden>`)
	deadHidden := regexp.MustCompile(`<section id="dead-section"\s+hidden>`)
	const ratesOff = "Rates unavailable: metrics are off"

	t.Run("spool and metrics", func(t *testing.T) {
		snap := proxytest.Snapshot(t, statusConfig(true, ""))
		st := openTestStore(t, spool.FileOptions{})
		_, ts := newMetricsAdmin(t, spoolSource{fixedSource{snap}, st})
		_, body := get(t, ts, "/", "")
		if spoolHidden.MatchString(body) || deadHidden.MatchString(body) {
			t.Errorf("with a spool, its sections are hidden")
		}
		if !strings.Contains(body, `data-metrics="true"`) || strings.Contains(body, ratesOff) {
			t.Errorf("with metrics on, the page says they are off")
		}
		if !strings.Contains(body, "No dead letters.") || !strings.Contains(body, `data-route="ev" data-state="pending" disabled`) {
			t.Errorf("an empty spool: no 'No dead letters.' or purge not disabled")
		}
	})
	t.Run("no spool", func(t *testing.T) {
		_, ts := newMetricsAdmin(t, fixedSource{proxytest.Snapshot(t, statusConfig(false, ""))})
		resp, body := get(t, ts, "/", "")
		if resp.StatusCode != 200 || !spoolHidden.MatchString(body) || !deadHidden.MatchString(body) {
			t.Errorf("without a spool: GET / = %d, want 200 with the spool sections hidden", resp.StatusCode)
		}
		if resp, _ := get(t, ts, "/v1/spool", ""); resp.StatusCode != 404 {
			t.Errorf("without a spool: GET /v1/spool = %d, want the 404 the page reads as no spool", resp.StatusCode)
		}
	})
	t.Run("metrics off", func(t *testing.T) {
		_, ts := newMetricsAdmin(t, fixedSource{proxytest.Snapshot(t, statusConfig(false, "metrics: {prometheus: false}"))})
		resp, body := get(t, ts, "/", "")
		if resp.StatusCode != 200 || !strings.Contains(body, ratesOff) || !strings.Contains(body, `data-metrics="false"`) {
			t.Errorf("metrics off: GET / = %d, want 200 saying rates are unavailable", resp.StatusCode)
		}
		if resp, _ := get(t, ts, "/metrics", ""); resp.StatusCode != 404 {
			t.Errorf("metrics off: GET /metrics = %d, want 404", resp.StatusCode)
		}
	})
	t.Run("no telemetry", func(t *testing.T) {
		ts := httptest.NewServer(New(fixedSource{proxytest.Snapshot(t, statusConfig(false, ""))}, proxytest.Discard).Handler())
		t.Cleanup(ts.Close)
		if resp, body := get(t, ts, "/", ""); resp.StatusCode != 200 || !strings.Contains(body, ratesOff) {
			t.Errorf("without telemetry: GET / = %d, want 200 saying rates are unavailable", resp.StatusCode)
		}
	})
	t.Run("token", func(t *testing.T) {
		src := fixedSource{proxytest.Snapshot(t, statusConfig(false, ""))}
		for _, c := range []struct {
			opts []Option
			want string
		}{{nil, "not required"}, {[]Option{WithToken("s3cret-token")}, "required for the buttons"}} {
			ts := httptest.NewServer(New(src, proxytest.Discard, c.opts...).Handler())
			_, body := get(t, ts, "/", "")
			ts.Close()
			if !strings.Contains(body, `placeholder="`+c.want+`"`) || strings.Contains(body, "s3cret") {
				t.Errorf("token field: want placeholder %q and no token in the page", c.want)
			}
		}
	})
}

// TestStatusPageCalls sends the calls the page's buttons make, as a
// browser sends them from the page (same Origin, Sec-Fetch-Site
// same-origin, Sidecar-Admin), and checks that the guards treat them as
// any other client's: allowed with the token, 401 without.
func TestStatusPageCalls(t *testing.T) {
	_, ts, ids, _ := spoolAdmin(t, WithToken("tok"))
	send := func(path, auth string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", ts.URL+path, nil)
		req.Header.Set("Origin", ts.URL)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		req.Header.Set("Sec-Fetch-Mode", "cors")
		req.Header.Set(RequestHeader, "1")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	replay := "/v1/spool/messages/" + ids[0] + "/replay"
	if code := send(replay, ""); code != 401 {
		t.Errorf("the page's replay without the token = %d, want 401", code)
	}
	if code := send(replay, "Bearer wrong"); code != 401 {
		t.Errorf("the page's replay with a wrong token = %d, want 401", code)
	}
	if code := send(replay, "Bearer tok"); code != 200 {
		t.Errorf("the page's replay with the token = %d, want 200", code)
	}
	if code := send(replay, "Bearer tok"); code != 409 {
		t.Errorf("the page's replay of a pending message = %d, want 409", code)
	}
	if code := send("/v1/spool/purge?route=ev&state=pending", "Bearer tok"); code != 200 {
		t.Errorf("the page's purge with the token = %d, want 200", code)
	}
}

// TestStatusEndpointFlags: an unhealthy and an ejected endpoint get their
// badges after the breaker's, with why and for how long in the note; a
// resolved address names the DNS name it came from.
func TestStatusEndpointFlags(t *testing.T) {
	r := newStatusRoute(routeView{Endpoints: []proxy.EndpointStats{
		{URL: "http://a", Health: &proxy.HealthStats{State: "unhealthy", LastError: "status 503"}},
		{URL: "http://b", Health: &proxy.HealthStats{State: "healthy"}, Outlier: &proxy.OutlierStats{Ejected: true, Left: "1m30s"}},
		{URL: "http://c", Health: &proxy.HealthStats{State: "healthy"}, Outlier: &proxy.OutlierStats{}},
		{URL: "http://10.0.0.7:8080", Name: "inv.svc:8080", InFlight: 2},
	}})
	want := []statusEndpoint{
		{URL: "http://a", State: "no breaker", Class: "badge st-none", Flags: []statusFlag{{"unhealthy", "badge st-unhealthy"}}, Note: "health check: status 503"},
		{URL: "http://b", State: "no breaker", Class: "badge st-none", Flags: []statusFlag{{"ejected", "badge st-ejected"}}, Note: "back in 1m 30s"},
		{URL: "http://c", State: "no breaker", Class: "badge st-none"},
		{URL: "http://10.0.0.7:8080", State: "no breaker", Class: "badge st-none", Note: "from inv.svc:8080 · 2 in flight"},
	}
	if !reflect.DeepEqual(r.Endpoints, want) {
		t.Errorf("newStatusRoute endpoints =\n%+v\nwant\n%+v", r.Endpoints, want)
	}
}

package proxy

import (
	"io"
	"net/http"
	"testing"

	"github.com/sidecar-proxy/sidecar/internal/testnet"
)

// TestSilentH2UpstreamConnectionIsLeft: an HTTP/2 upstream connection
// that goes silent (no reset, no answer) costs the attempts that time out
// on it, not every request after them: the client PINGs it after a
// timeout, new attempts go to a new connection, and the unanswered one is
// closed (docs/design.md, "HTTP/2 to upstreams").
func TestSilentH2UpstreamConnectionIsLeft(t *testing.T) {
	up := grpcUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	relay := testnet.NewSilencer(t, up[len("http://"):])
	sc := startSidecar(t, `
version: 1
upstreams:
  up: {endpoints: ["http://`+relay.Addr()+`"], protocol: h2c, connect_timeout: 1s}
policies:
  p:
    timeout: 10s
    per_try_timeout: 300ms
    retry: {attempts: 10, backoff: {base: 10ms, max: 50ms}, on: [timeout]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: r, match: {path_prefix: /}, upstream: up, policy: p}
`)
	if resp, body := send(t, "GET", sc.url("/before"), nil); resp.StatusCode != 200 || body != "ok /before" {
		t.Fatalf("GET /before = %d %q", resp.StatusCode, body)
	}
	relay.Silence()
	// The first attempt times out on the silent connection; the client
	// PINGs it, and once the PING has waited a moment (250 ms) the next
	// attempts take a new connection. Without the PING every attempt
	// would go to the silent connection until the route's timeout.
	resp, body := send(t, "GET", sc.url("/during"), nil)
	if resp.StatusCode != 200 || body != "ok /during" {
		t.Fatalf("GET /during after the connection went silent = %d %q (Sidecar-Attempts %s), want 200 on a new connection",
			resp.StatusCode, body, resp.Header.Get(HeaderAttempts))
	}
	if n := resp.Header.Get(HeaderAttempts); n == "1" || n == "" {
		t.Errorf("Sidecar-Attempts = %q, want the timed-out attempts counted", n)
	}
	for i := range 5 {
		if resp, _ := send(t, "GET", sc.url("/after"), nil); resp.StatusCode != 200 || resp.Header.Get(HeaderAttempts) != "1" {
			t.Fatalf("GET /after %d = %d (Sidecar-Attempts %s), want 200 at the first attempt", i, resp.StatusCode, resp.Header.Get(HeaderAttempts))
		}
	}
}

package admin

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/reload"
)

// countingReloader applies every reload and counts them.
type countingReloader struct {
	n    atomic.Int64
	last atomic.Pointer[reload.Status]
}

func (c *countingReloader) Reload(_ context.Context, trigger string) reload.Status {
	c.n.Add(1)
	st := reload.Status{Trigger: trigger, Result: reload.Applied}
	c.last.Store(&st)
	return st
}

func (c *countingReloader) Last() *reload.Status { return c.last.Load() }

func TestReloadNeedsTheToken(t *testing.T) {
	const token = "s3cr3t-admin-token"
	snap := proxytest.Snapshot(t, "version: 1\nupstreams:\n  u: {endpoints: [\"http://127.0.0.1:1\"]}\nlisteners:\n  - {name: app, address: 127.0.0.1:0, routes: [{name: r, upstream: u}]}\n")
	r := &countingReloader{}
	s := New(fixedSource{snap}, slog.New(slog.DiscardHandler), WithToken(token), WithReloader(r))
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	if code, body := do(t, ts, "GET", "/v1/config", ""); code != 200 || !strings.Contains(body, `"last_reload": null`) {
		t.Errorf("GET /v1/config before any reload = %d, want last_reload null in %s", code, body)
	}
	for _, auth := range []string{"", "Bearer wrong"} {
		if code, _ := do(t, ts, "POST", "/v1/reload", auth); code != 401 {
			t.Errorf("POST /v1/reload with Authorization %q = %d, want 401", auth, code)
		}
	}
	if r.n.Load() != 0 {
		t.Fatalf("refused calls reloaded %d times", r.n.Load())
	}
	if code, body := do(t, ts, "POST", "/v1/reload", "Bearer "+token); code != 200 || !strings.Contains(body, `"trigger": "api"`) {
		t.Errorf("POST /v1/reload with the token = %d %s, want 200 trigger api", code, body)
	}
	if code, body := do(t, ts, "GET", "/v1/config", ""); code != 200 || !strings.Contains(body, `"trigger": "api"`) {
		t.Errorf("GET /v1/config after a reload = %d, want its last_reload in %s", code, body)
	}
}

func TestReloadWithoutReloader(t *testing.T) {
	_, ts := newTestAdmin(t)
	if code, _ := do(t, ts, "POST", "/v1/reload", ""); code != 501 {
		t.Errorf("POST /v1/reload on an admin API without a reloader = %d, want 501", code)
	}
}

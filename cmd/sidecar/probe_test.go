package main

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

func TestProbeListenerAndHealthcheck(t *testing.T) {
	up := echoUpstream(t)
	cfg := writeConfig(t, strings.Replace(routesConfig(up.URL, "a"),
		`admin: {address: "127.0.0.1:0"}`, `admin: {address: "127.0.0.1:0", probe_address: "127.0.0.1:0"}`+"\nshutdown_delay: 10s", 1))
	cmd, s, _ := startBinary(t, cfg)
	if s.Probe == "" {
		t.Fatalf("sidecar started without a probe address in its start line")
	}
	probeGet := func(method, path, host string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+s.Probe+path, nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The three read-only endpoints, whatever the Host: a kubelet sends
	// the pod's IP.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := probeGet("GET", path, "10.1.2.3:9902"); code != 200 {
			t.Errorf("GET %s on the probe listener with a pod-IP Host = %d, want 200", path, code)
		}
	}
	if _, body := probeGet("GET", "/metrics", ""); !strings.Contains(body, "sidecar_ready 1") {
		t.Errorf("probe /metrics does not show sidecar_ready 1")
	}
	// Nothing else.
	for _, c := range []struct{ method, path string }{{"GET", "/v1/config"}, {"GET", "/v1/spool"}, {"POST", "/v1/reload"}, {"GET", "/"}} {
		if code, _ := probeGet(c.method, c.path, ""); code != 404 {
			t.Errorf("%s %s on the probe listener = %d, want 404", c.method, c.path, code)
		}
	}
	if code, _ := probeGet("POST", "/healthz", ""); code != 404 {
		t.Errorf("POST /healthz on the probe listener = %d, want 404: it is read-only", code)
	}

	// sidecar healthcheck, against the admin API and the probe listener.
	for _, args := range [][]string{
		{"healthcheck", "-admin", s.Admin},
		{"healthcheck", "-admin", s.Admin, "-ready"},
		{"healthcheck", "-admin", s.Probe, "-ready"},
	} {
		if code, stdout, stderr := runCLI(t, args...); code != 0 || !strings.Contains(stdout, ": ok") {
			t.Errorf("sidecar %v = exit %d, %q %q; want 0 ok", args, code, stdout, stderr)
		}
	}
	start := time.Now()
	if code, _, stderr := runCLI(t, "healthcheck", "-admin", freePort(t), "-timeout", "1s"); code != 3 {
		t.Errorf("healthcheck against nothing = exit %d (%q), want 3", code, stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("healthcheck against nothing took %v", d)
	}
	if code, _, _ := runCLI(t, "healthcheck", "-nope"); code != 2 {
		t.Errorf("healthcheck -nope = exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "healthcheck", "-h"); code != 0 {
		t.Errorf("healthcheck -h = exit %d, want 0", code)
	}

	// Draining (within shutdown_delay): alive, not ready.
	cmd.Process.Signal(syscall.SIGTERM)
	poll.Until(t, 10*time.Second, "/readyz turns 503 after SIGTERM", func() bool { return readyzCode(s.Admin) == 503 })
	if code, _, stderr := runCLI(t, "healthcheck", "-admin", s.Probe, "-ready"); code != 1 || !strings.Contains(stderr, "503") {
		t.Errorf("healthcheck -ready while draining = exit %d (%q), want 1 naming 503", code, stderr)
	}
	if code, _, _ := runCLI(t, "healthcheck", "-admin", s.Probe); code != 0 {
		t.Errorf("healthcheck (alive) while draining = exit %d, want 0", code)
	}
}

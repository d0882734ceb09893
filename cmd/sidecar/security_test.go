package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// TestWarnBeyondLoopback: the start-up warning for the admin API's
// listeners bound beyond loopback without an admin token
// (docs/operations.md, "Probe listener and sidecar healthcheck").
func TestWarnBeyondLoopback(t *testing.T) {
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 9902} }
	loopback := tcp("127.0.0.1")
	tests := []struct {
		name         string
		token        bool
		admin, probe net.Addr
		want         []string // substrings of the warnings, one each
	}{
		{"admin on loopback, no probe", false, loopback, nil, nil},
		{"probe on loopback", false, loopback, tcp("127.0.0.1"), nil},
		{"probe on IPv6 loopback", false, loopback, tcp("::1"), nil},
		{"probe on every interface", false, loopback, tcp("0.0.0.0"), []string{"probe listener listens beyond loopback"}},
		{"probe on every IPv6 interface", false, loopback, tcp("::"), []string{"probe listener listens beyond loopback"}},
		{"probe on the pod's IP", false, loopback, tcp("10.1.2.3"), []string{"probe listener listens beyond loopback"}},
		{"probe on the pod's IP, with a token", true, loopback, tcp("10.1.2.3"), nil},
		{"admin beyond loopback", false, tcp("10.1.2.3"), nil, []string{"admin API listens beyond loopback"}},
		{"admin beyond loopback, with a token", true, tcp("10.1.2.3"), nil, nil},
		{"both beyond loopback", false, tcp("0.0.0.0"), tcp("0.0.0.0"), []string{"admin API", "probe listener"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			warnBeyondLoopback(slog.New(slog.NewTextHandler(&b, nil)), tt.token, "SIDECAR_ADMIN_TOKEN", tt.admin, tt.probe)
			var lines []string
			if b.Len() > 0 {
				lines = strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("warnBeyondLoopback logged %d lines, want %d:\n%s", len(lines), len(tt.want), b.String())
			}
			for i, w := range tt.want {
				if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], w) || !strings.Contains(lines[i], "token_env=SIDECAR_ADMIN_TOKEN") {
					t.Errorf("warning %d = %q, want a WARN line saying %q and naming token_env", i, lines[i], w)
				}
			}
		})
	}
}

// TestSecretsStayOut: secrets the app sends (an Authorization header, a
// cookie, an API key, a query token, a body), the admin token and a value
// from the environment never reach the logs (debug level, access log on),
// the spans (stdout exporter), /metrics (admin and probe), /v1/config,
// /v1/routes or the spool listing (docs/design.md, "Security defaults").
// A message the async route spools holds them, as it must to deliver
// them, and shows them only with the token.
func TestSecretsStayOut(t *testing.T) {
	secrets := map[string]string{
		"authorization": "authz-SECRET-1f2e",
		"cookie":        "cookie-SECRET-3d4c",
		"api key":       "apikey-SECRET-5b6a",
		"query token":   "query-SECRET-7988",
		"body":          "body-SECRET-a1b2",
		"admin token":   "admin-SECRET-c3d4",
		"env value":     "env-SECRET-e5f6",
	}
	up := echoUpstream(t)
	dir := t.TempDir()
	cfg := writeConfig(t, `
version: 1
shutdown_grace: 5s
admin: {address: "127.0.0.1:0", token_env: SC_TEST_ADMIN_TOKEN, probe_address: "127.0.0.1:0"}
telemetry:
  access_log: true
  traces: {exporter: stdout, sample_ratio: 1.0}
  metrics: {prometheus: true}
spool: {dir: "`+dir+`/spool"}
upstreams:
  up: {endpoints: ["`+up.URL+`"]}
  dead: {endpoints: ["http://127.0.0.1:1"], connect_timeout: 200ms}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: events, match: {path_prefix: /events}, upstream: dead, async: {when: always}}
      - {name: tenant, match: {path_prefix: /tenant, headers: {x-tenant-key: "${SC_TEST_MATCH}"}}, upstream: up}
      - {name: all, upstream: up}
`)
	cmd := exec.Command(binary, "run", "-config", cfg, "-log-format", "json", "-log-level", "debug")
	cmd.Env = append(os.Environ(), "SC_TEST_ADMIN_TOKEN="+secrets["admin token"], "SC_TEST_MATCH="+secrets["env value"])
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var s started
	poll.Until(t, 30*time.Second, "the sidecar to start", func() bool {
		for line := range strings.SplitSeq(stderr.String(), "\n") {
			if json.Unmarshal([]byte(line), &s) == nil && s.Msg == "sidecar started" {
				return true
			}
		}
		return false
	})
	app := "http://" + strings.TrimPrefix(s.Listeners, "app=")

	send := func(method, path, body string, hdr ...string) int {
		t.Helper()
		req, _ := http.NewRequest(method, app+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secrets["authorization"])
		req.Header.Set("Cookie", "session="+secrets["cookie"])
		req.Header.Set("X-Api-Key", secrets["api key"])
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send("GET", "/items?token="+secrets["query token"], ""); code != 200 {
		t.Errorf("GET /items = %d, want 200", code)
	}
	if code := send("GET", "/tenant/x", "", "X-Tenant-Key", secrets["env value"]); code != 200 {
		t.Errorf("GET /tenant/x = %d, want 200", code)
	}
	if code := send("POST", "/events?token="+secrets["query token"], secrets["body"]); code != 202 {
		t.Errorf("POST /events = %d, want 202 (spooled)", code)
	}
	if code := send("GET", "/nowhere/../missing?token="+secrets["query token"], "", "Proxy-Authorization", "Basic "+secrets["authorization"]); code != 200 {
		t.Errorf("GET /missing = %d, want 200", code)
	}

	outputs := map[string]string{}
	read := func(name, url, token string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s = %d %s", url, resp.StatusCode, b)
		}
		outputs[name] = string(b)
	}
	admin := "http://" + s.Admin
	read("/v1/config", admin+"/v1/config", "")
	read("/v1/routes", admin+"/v1/routes", "")
	read("/v1/spool", admin+"/v1/spool", "")
	read("/v1/spool/messages", admin+"/v1/spool/messages?route=events", "")
	read("/metrics", admin+"/metrics", "")
	read("probe /metrics", "http://"+s.Probe+"/metrics", "")
	var list struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	if err := json.Unmarshal([]byte(outputs["/v1/spool/messages"]), &list); err != nil || len(list.Messages) != 1 {
		t.Fatalf("spool listing = %s (%v), want one message", outputs["/v1/spool/messages"], err)
	}
	read("/v1/spool/messages/{id} without the token", admin+"/v1/spool/messages/"+list.Messages[0].ID, "")
	// With the token, the message shows its target and body (the sidecar
	// must keep them to deliver it), but not its credentials.
	read("/v1/spool/messages/{id} with the token", admin+"/v1/spool/messages/"+list.Messages[0].ID, secrets["admin token"])
	if !strings.Contains(outputs["/v1/spool/messages/{id} with the token"], secrets["body"]) {
		t.Errorf("the spooled message shown with the token lacks its body:\n%s", outputs["/v1/spool/messages/{id} with the token"])
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exit: %v\n%s", err, stderr.String())
	}
	outputs["logs (stderr)"] = stderr.String()
	outputs["spans (stdout)"] = stdout.String()
	if !strings.Contains(outputs["logs (stderr)"], `"msg":"access"`) || !strings.Contains(outputs["spans (stdout)"], "sidecar.route") {
		t.Fatalf("want access log lines and spans to search; logs:\n%s\nspans:\n%.2000s", outputs["logs (stderr)"], outputs["spans (stdout)"])
	}
	for where, out := range outputs {
		for what, secret := range secrets {
			if (what == "body" || what == "query token") && where == "/v1/spool/messages/{id} with the token" {
				continue // the message as the token's holder may replay it
			}
			if strings.Contains(out, secret) {
				t.Errorf("%s shows the %s (%s):\n%.4000s", where, what, secret, out)
			}
		}
	}
}

// syncBuffer is a strings.Builder safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

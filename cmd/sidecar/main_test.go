package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry/telemetrytest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidecar-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "sidecar")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		// -race needs cgo; fall back to a plain build.
		if out2, err2 := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err2 != nil {
			fmt.Fprintf(os.Stderr, "go build: %v\n%s\n%s", err2, out, out2)
			os.Exit(1)
		}
	}
	// The race runtime sleeps 1 s at exit by default, so that reports
	// from other threads can finish; every test here starts and stops the
	// binary at least once. 50 ms is plenty for a report already begun.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=50")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// oneRouteConfig writes a config with an admin listener on a free port and
// one listener at addr forwarding everything to upstream.
func oneRouteConfig(t *testing.T, upstream, addr, grace string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: %s
admin: {address: "127.0.0.1:0"}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: %s
    routes:
      - {name: all, upstream: up}
`, grace, upstream, addr))
}

// validate's help lists only the flags validate reads.
func TestValidateHelpListsItsOwnFlags(t *testing.T) {
	code, stdout, stderr := runCLI(t, "validate", "-h")
	if code != 0 || strings.Contains(stdout+stderr, "-log-format") || strings.Contains(stdout+stderr, "-watch") {
		t.Errorf("validate -h = exit %d, %q; want 0 and no run-only flags", code, stdout+stderr)
	}
}

func TestCLIExitCodes(t *testing.T) {
	bad := writeConfig(t, "version: 1\nlisteners:\n  - name: a\n    adress: x\n")
	tests := []struct {
		name       string
		args       []string
		want       int
		wantOutput string
	}{
		{"version", []string{"version"}, 0, "sidecar "},
		{"run -h", []string{"run", "-h"}, 0, "-watch"},
		{"validate --help", []string{"validate", "--help"}, 0, "-config"},
		{"healthcheck -h", []string{"healthcheck", "-h"}, 0, "-ready"},
		{"spool -h", []string{"spool", "-h"}, 0, "sidecar spool stats"},
		{"version shows the Go version", []string{"version"}, 0, "\ngo      go1."},
		{"version shows the commit", []string{"version"}, 0, "\ncommit  "},
		{"no command", nil, 2, "usage:"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"validate", "-nope"}, 2, "flag provided but not defined"},
		{"validate ok", []string{"validate", "-config", "../../examples/quickstart.yaml"}, 0, "quickstart.yaml: ok"},
		{"validate every example", []string{"validate", "-config", "../../examples/full.yaml"}, 0, "ok"},
		{"validate the forward-proxy example", []string{"validate", "-config", "../../examples/egress-forward-proxy.yaml"}, 0, "egress-forward-proxy.yaml: ok"},
		{"validate bad", []string{"validate", "-config", bad}, 1, bad + `:4:5: listeners[0].adress: unknown key (did you mean "address"?)`},
		{"validate missing file", []string{"validate", "-config", filepath.Join(t.TempDir(), "none.yaml")}, 1, "no such file"},
		{"run bad config", []string{"run", "-config", bad}, 1, "unknown key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.want || !strings.Contains(stdout+stderr, tt.wantOutput) {
				t.Errorf("sidecar %v = exit %d, stdout %q, stderr %q; want exit %d with %q", tt.args, code, stdout, stderr, tt.want, tt.wantOutput)
			}
		})
	}
}

// started is the JSON log line the sidecar prints once it serves.
type started struct {
	Msg       string `json:"msg"`
	Listeners string `json:"listeners"`
	Admin     string `json:"admin"`
	Probe     string `json:"probe"`
}

// startBinary runs "sidecar run" and waits for its "sidecar started" line.
func startBinary(t *testing.T, cfgPath string) (*exec.Cmd, started, *bufio.Scanner) {
	t.Helper()
	cmd, s, sc, lines := startBinaryLogs(t, cfgPath)
	go func() {
		for range lines {
		}
	}()
	return cmd, s, sc
}

// startBinaryLogs is startBinary that also returns the log lines after
// "sidecar started"; the caller must read them until the channel closes.
// env, NAME=value each, is added to the environment.
func startBinaryLogs(t *testing.T, cfgPath string, env ...string) (*exec.Cmd, started, *bufio.Scanner, <-chan string) {
	t.Helper()
	return startBinaryEnvArgs(t, cfgPath, env, nil)
}

// startBinaryArgs is startBinaryLogs with more arguments for "run".
func startBinaryArgs(t *testing.T, cfgPath string, args []string) (*exec.Cmd, started, *bufio.Scanner, <-chan string) {
	t.Helper()
	return startBinaryEnvArgs(t, cfgPath, nil, args)
}

func startBinaryEnvArgs(t *testing.T, cfgPath string, env, args []string) (*exec.Cmd, started, *bufio.Scanner, <-chan string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"run", "-config", cfgPath, "-log-format", "json"}, args...)...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	lines := make(chan string)
	go func() {
		defer close(lines)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("sidecar exited before starting")
			}
			var s started
			if json.Unmarshal([]byte(line), &s) == nil && s.Msg == "sidecar started" {
				return cmd, s, sc, lines
			}
		case <-timeout:
			t.Fatalf("sidecar did not start within 30s")
		}
	}
}

// readyzCode is the status of GET /readyz on the admin API at admin, or
// 0 when the request fails.
func readyzCode(admin string) int {
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRunServesAndStopsOnSIGTERM(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream says hi")
	}))
	defer up.Close()
	cfg := oneRouteConfig(t, up.URL, "127.0.0.1:0", "5s")
	cmd, s, _ := startBinary(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")

	resp, err := http.Get("http://" + s.Admin + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /readyz = %v, %v; want 200", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "upstream says hi" {
		t.Errorf("GET through the sidecar = %d %q, want 200 %q", resp.StatusCode, body, "upstream says hi")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	if err != nil {
		t.Errorf("sidecar exit after SIGTERM = %v, want 0", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Errorf("listener %s still accepts after shutdown", addr)
	}
}

func TestRunFailsWhenAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := oneRouteConfig(t, "http://127.0.0.1:1", taken.Addr().String(), "15s")
	code, _, stderr := runCLI(t, "run", "-config", cfg)
	if code != 3 || !strings.Contains(stderr, "address already in use") {
		t.Errorf("run on a taken address = exit %d, stderr %q; want exit 3 naming the problem", code, stderr)
	}
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "finished")
	}))
	defer up.Close()
	defer close(release)
	cfg := oneRouteConfig(t, up.URL, "127.0.0.1:0", "20s")
	cmd, s, _ := startBinary(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/slow")
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{string(b), err}
	}()
	<-started
	cmd.Process.Signal(syscall.SIGTERM)

	// Draining: readiness turns 503 while the request is still in flight.
	poll.Until(t, 10*time.Second, "/readyz to turn 503 after SIGTERM", func() bool {
		return readyzCode(s.Admin) == http.StatusServiceUnavailable
	})
	release <- struct{}{}
	r := <-got
	if r.err != nil || r.body != "finished" {
		t.Errorf("in-flight request during shutdown = %q, %v; want it to finish", r.body, r.err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after draining = %v, want 0", err)
	}
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	started := make(chan struct{}, 1)
	stall := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-stall
	}))
	defer up.Close()
	defer close(stall) // before up.Close, which waits for the handler
	cfg := oneRouteConfig(t, up.URL, "127.0.0.1:0", "60s")
	cmd, s, _ := startBinary(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")
	go func() {
		if resp, err := http.Get("http://" + addr + "/stuck"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The first signal is handled once /readyz answers 503: only then is
	// the next one a second signal.
	poll.Until(t, 10*time.Second, "/readyz to turn 503 after SIGTERM", func() bool {
		select {
		case err := <-done:
			t.Fatalf("sidecar exited (%v) while a request was draining; want it to wait", err)
		default:
		}
		return readyzCode(s.Admin) == http.StatusServiceUnavailable
	})
	// Still up 200 ms into the drain: this wait is the check, not a
	// synchronisation.
	select {
	case err := <-done:
		t.Fatalf("sidecar exited (%v) while a request was draining; want it to wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Errorf("exit after a second signal = %v, want exit code 3", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar did not exit after a second signal")
	}
}

// asyncConfig writes a config with one async route and the given spool
// block (YAML flow mapping body).
func asyncConfig(t *testing.T, spoolBlock string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
version: 1
admin: {address: "127.0.0.1:0"}
spool: {%s}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, upstream: up, async: {when: always}}
`, spoolBlock))
}

func TestRunFailsWhenSpoolLocked(t *testing.T) {
	dir := t.TempDir()
	st, err := spool.OpenFile(dir, spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	code, _, stderr := runCLI(t, "run", "-config", asyncConfig(t, fmt.Sprintf("dir: %q", dir)))
	if code != 3 || !strings.Contains(stderr, "cannot open the spool") || !strings.Contains(stderr, "locked") {
		t.Errorf("sidecar run on a locked spool dir = exit %d, stderr %q; want exit 3 saying the spool is locked", code, stderr)
	}
}

// TestRunFailsWhenTelemetryCannotStart: an OTLP protocol the exporter
// does not know stops the start with exit 3 and says why.
func TestRunFailsWhenTelemetryCannotStart(t *testing.T) {
	cfg := writeConfig(t, `
version: 1
admin: {address: "127.0.0.1:0"}
telemetry: {traces: {exporter: otlp}}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, upstream: up}
`)
	cmd := exec.Command(binary, "run", "-config", cfg)
	cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=", "OTEL_EXPORTER_OTLP_PROTOCOL=carrier-pigeon")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	code := -1
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 3 || !strings.Contains(stderr.String(), "cannot start telemetry") || !strings.Contains(stderr.String(), "carrier-pigeon") {
		t.Errorf("sidecar run with OTEL_EXPORTER_OTLP_PROTOCOL=carrier-pigeon = %v, stderr %q; want exit 3 saying telemetry cannot start", err, stderr.String())
	}
}

func TestRunSpoolsAndClosesTheStoreOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	cmd, s, _ := startBinary(t, asyncConfig(t, fmt.Sprintf("dir: %q", dir)))
	addr := strings.TrimPrefix(s.Listeners, "app=")
	resp, err := http.Post("http://"+addr+"/e", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Sidecar-Spool-Id") == "" {
		t.Fatalf("POST to an async route = %d, spool id %q; want 202 with an id", resp.StatusCode, resp.Header.Get("Sidecar-Spool-Id"))
	}
	// The binary serves the spool's metrics on its admin listener.
	e := telemetrytest.Scrape(t, "http://"+s.Admin+"/metrics")
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"sidecar_spool_messages", []string{"route", "ev", "state", "pending"}, 1},
		{"sidecar_spool_appends_total", nil, 1},
		{"sidecar_spool_fsync_loss_window_seconds", nil, 0},
		{"sidecar_spool_failed", nil, 0},
	} {
		if v, ok := e.Value(want.name, want.labels...); !ok || v != want.value {
			t.Errorf("GET /metrics: %s = %v (present %t), want %v", telemetrytest.Key(want.name, want.labels...), v, ok, want.value)
		}
	}
	for name, typ := range map[string]string{
		"sidecar_spool_messages": "gauge", "sidecar_spool_appends_total": "counter",
		"sidecar_spool_fsync_loss_window_seconds": "gauge", "sidecar_spool_failed": "gauge",
	} {
		if e.Types[name] != typ {
			t.Errorf("GET /metrics: TYPE of %s = %q, want %s", name, e.Types[name], typ)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exit after SIGTERM = %v, want 0", err)
	}
	// The store was closed (its lock released) and keeps the message.
	st, err := spool.OpenFile(dir, spool.FileOptions{})
	if err != nil {
		t.Fatalf("OpenFile after the sidecar stopped = %v", err)
	}
	defer st.Close()
	if _, _, err := st.Get(resp.Header.Get("Sidecar-Spool-Id")); err != nil {
		t.Errorf("Get(spooled message) after restart = %v, want it pending", err)
	}
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// configTemplate is the sidecar's configuration. WebTimeout is what the
// reloads change. Every key is described in docs/configuration.md.
var configTemplate = template.Must(template.New("sidecar.yaml").Parse(`# Written by bench/soak: see bench/README.md ("Soak with faults").
version: 1
shutdown_grace: 2s
admin: {address: "{{.Admin}}"}
telemetry: {metrics: {prometheus: true}, access_log: true}
spool: {dir: "{{.SpoolDir}}", fsync: always}
upstreams:
  web: {endpoints: ["http://{{.WebProxy}}"], connect_timeout: 250ms, idle_conn_timeout: 2s}
  rpc: {endpoints: ["http://{{.RPCProxy}}"], protocol: grpc, connect_timeout: 250ms, idle_conn_timeout: 2s}
  sink: {endpoints: ["http://{{.SinkProxy}}"], connect_timeout: 250ms, idle_conn_timeout: 2s}
policies:
  web:
    timeout: {{.WebTimeout}}
    per_try_timeout: 600ms
    retry: {attempts: 3, backoff: {base: 20ms, max: 200ms}, budget: {ratio: 0.5, min_per_second: 20, window: 10s}}
    circuit_breaker: {consecutive_failures: 20, failure_ratio: 0.6, min_requests: 50, window: 5s, open_for: 2s, half_open_requests: 2}
    max_in_flight: 256
  rpc:
    timeout: {{.RPCTimeout}}
    per_try_timeout: 600ms
    retry: {attempts: 3, backoff: {base: 20ms, max: 200ms}, budget: {ratio: 0.5, min_per_second: 20, window: 10s}}
    circuit_breaker: {consecutive_failures: 20, failure_ratio: 0.6, min_requests: 50, window: 5s, open_for: 2s, half_open_requests: 2}
    max_in_flight: 256
  sink:
    timeout: {{.SinkTimeout}}
    per_try_timeout: 800ms
    retry: {attempts: 2, backoff: {base: 20ms, max: 200ms}}
    circuit_breaker: {consecutive_failures: 10, open_for: 1s}
listeners:
  - name: app
    address: "{{.App}}"
    routes:
      - {name: web, match: {path_prefix: /web}, upstream: web, policy: web}
      - name: events-always
        match: {path_prefix: /events/always, methods: [POST]}
        upstream: sink
        policy: sink
        async: {when: always, ordering: none, max_in_flight: 8, backoff: {base: 50ms, max: 1s}, max_attempts: 1000000, max_age: 1h}
      - name: events-fallback
        match: {path_prefix: /events/fallback, methods: [POST]}
        upstream: sink
        policy: sink
        async: {when: upstream_down, ordering: fifo, backoff: {base: 50ms, max: 1s}, max_attempts: 1000000, max_age: 1h}
  - name: grpc
    address: "{{.GRPC}}"
    protocol: h2c
    routes:
      - {name: rpc, upstream: rpc, policy: rpc}
`))

// sidecarConfig fills configTemplate.
type sidecarConfig struct {
	Admin, App, GRPC              string
	WebProxy, RPCProxy, SinkProxy string
	SpoolDir                      string
	WebTimeout                    time.Duration
	RPCTimeout, SinkTimeout       time.Duration
}

// sidecar runs the sidecar binary as a child process.
type sidecar struct {
	bin     string
	cfgPath string
	logPath string
	cfg     sidecarConfig

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	status error         // cmd.Wait's result, set before exited closes
	starts int
}

// writeConfig renders s.cfg into s.cfgPath by writing a temporary file and
// renaming it over the old one, as an editor does.
func (s *sidecar) writeConfig() error {
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, s.cfg); err != nil {
		return err
	}
	tmp := s.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.cfgPath)
}

// start runs "sidecar run" with its stderr appended to s.logPath and waits
// up to 30 s for /readyz to answer 200.
func (s *sidecar) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.starts++
	fmt.Fprintf(logf, "--- soak: start %d at %s\n", s.starts, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(s.bin, "run", "-config", s.cfgPath, "-log-format", "json")
	cmd.Stdout = logf
	cmd.Stderr = logf
	// No admin token: the soak drives the admin API without one.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDECAR_ADMIN_TOKEN=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// If the soak itself dies, the sidecar goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	exited := make(chan struct{})
	s.exited = exited
	go func() {
		s.status = cmd.Wait()
		close(exited)
	}()
	ready := poll.Within(30*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		code, _, _ := adminGet(s.cfg.Admin, "/readyz")
		return code == http.StatusOK
	})
	select {
	case <-exited:
		return fmt.Errorf("sidecar exited at start: %v (log: %s)", s.status, s.logPath)
	default:
	}
	if !ready {
		return fmt.Errorf("sidecar not ready within 30s (log: %s)", s.logPath)
	}
	return nil
}

// pid is the running sidecar's process id.
func (s *sidecar) pid() int { return s.cmd.Process.Pid }

// kill sends SIGKILL and waits for the process to be gone.
func (s *sidecar) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// stop sends SIGTERM and waits up to d for a clean exit; it kills the
// process if d passes. It returns the exit status (nil for exit 0).
func (s *sidecar) stop(d time.Duration) error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.exited:
		return s.status
	case <-t.C:
		s.kill()
		return fmt.Errorf("no exit within %v of SIGTERM: killed", d)
	}
}

// alive reports whether the child is still running.
func (s *sidecar) alive() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// adminClient keeps no idle connection, so the soak's own admin calls do
// not show up in the sidecar's descriptor counts.
var adminClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// adminGet GETs path on the admin API: status, body, error.
func adminGet(admin, path string) (int, []byte, error) {
	resp, err := adminClient.Get("http://" + admin + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

// adminReload is POST /v1/reload (docs/operations.md, "Reload").
func adminReload(admin string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+admin+"/v1/reload", nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Sidecar-Admin", "1")
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// spoolState is the part of GET /v1/spool the soak reads.
type spoolState struct {
	Total struct {
		Depth int64 `json:"depth"`
		Dead  int64 `json:"dead"`
	} `json:"total"`
	Failed         bool  `json:"failed"`
	CorruptRecords int64 `json:"corrupt_records"`
	TornTail       bool  `json:"torn_tail"`
	Segments       int64 `json:"segments"`
}

func getSpool(admin string) (spoolState, error) {
	var st spoolState
	code, b, err := adminGet(admin, "/v1/spool")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("GET /v1/spool = %d %s", code, b)
	}
	return st, json.Unmarshal(b, &st)
}

// appliedConfig is the part of GET /v1/config a reload check reads.
type appliedConfig struct {
	Policies map[string]struct {
		Timeout string `json:"timeout"`
	} `json:"policies"`
	LastReload *struct {
		Time    string `json:"time"`
		Trigger string `json:"trigger"`
		Result  string `json:"result"`
		Error   string `json:"error"`
	} `json:"last_reload"`
}

func getConfig(admin string) (appliedConfig, error) {
	var c appliedConfig
	code, b, err := adminGet(admin, "/v1/config")
	if err != nil {
		return c, err
	}
	if code != http.StatusOK {
		return c, fmt.Errorf("GET /v1/config = %d", code)
	}
	return c, json.Unmarshal(b, &c)
}

// procStats are a process's resources from /proc.
type procStats struct {
	FDs     int   `json:"fds"`
	RSSKiB  int64 `json:"rss_kib"`
	Threads int   `json:"threads"`
}

func readProc(pid int) (procStats, error) {
	var ps procStats
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return ps, err
	}
	ps.FDs = len(ents)
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return ps, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			ps.RSSKiB, _ = strconv.ParseInt(fields[0], 10, 64)
		case "Threads":
			ps.Threads, _ = strconv.Atoi(fields[0])
		}
	}
	return ps, sc.Err()
}

// goGoroutines reads the sidecar_goroutines gauge from the admin
// /metrics; ok is false when the sidecar does not export it.
func goGoroutines(admin string) (n int, ok bool) {
	code, b, err := adminGet(admin, "/metrics")
	if err != nil || code != http.StatusOK {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "sidecar_goroutines "); found {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(f), true
			}
		}
	}
	return 0, false
}

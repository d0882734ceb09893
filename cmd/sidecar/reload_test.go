package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/admin"
	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/reload"
	"github.com/sidecar-proxy/sidecar/telemetry/telemetrytest"
)

// logTail collects a running sidecar's JSON log lines, so that the
// sidecar never blocks on a full pipe, and lets a test wait for a line.
type logTail struct {
	mu    sync.Mutex
	cond  *sync.Cond
	lines []map[string]any
	done  bool
}

func tailLogs(lines <-chan string) *logTail {
	lt := &logTail{}
	lt.cond = sync.NewCond(&lt.mu)
	go func() {
		for line := range lines {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				m = map[string]any{"msg": line}
			}
			lt.mu.Lock()
			lt.lines = append(lt.lines, m)
			lt.cond.Broadcast()
			lt.mu.Unlock()
		}
		lt.mu.Lock()
		lt.done = true
		lt.cond.Broadcast()
		lt.mu.Unlock()
	}()
	return lt
}

// mark returns the index of the next line, for wait's from.
func (lt *logTail) mark() int {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return len(lt.lines)
}

// wait returns the first line at index from or later for which match is
// true, waiting up to 20 s for it.
func (lt *logTail) wait(t *testing.T, from int, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	timer := time.AfterFunc(20*time.Second, func() {
		lt.mu.Lock()
		lt.cond.Broadcast()
		lt.mu.Unlock()
	})
	defer timer.Stop()
	lt.mu.Lock()
	defer lt.mu.Unlock()
	for i := from; ; {
		for ; i < len(lt.lines); i++ {
			if match(lt.lines[i]) {
				return lt.lines[i]
			}
		}
		if lt.done || time.Now().After(deadline) {
			t.Fatalf("no log line %s within 20s (sidecar exited: %v); lines since: %v", what, lt.done, lt.lines[from:])
		}
		lt.cond.Wait()
	}
}

// reloaded matches the log line of an applied reload by trigger.
func reloaded(trigger string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == "configuration reloaded" && m["trigger"] == trigger }
}

// rejected matches the log line of a rejected reload by trigger.
func rejected(trigger string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		return strings.HasPrefix(fmt.Sprint(m["msg"]), "configuration reload rejected") && m["trigger"] == trigger
	}
}

// rewrite replaces the file at path with body the way editors and
// ConfigMaps do: a new file renamed over the old one.
func rewrite(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// running is a sidecar started for a reload test.
type running struct {
	cmd   *exec.Cmd
	admin string
	addrs map[string]string // bound listeners by name
	logs  *logTail
}

func startRunning(t *testing.T, cfgPath string, args ...string) *running {
	t.Helper()
	cmd, s, _, lines := startBinaryArgs(t, cfgPath, args)
	r := &running{cmd: cmd, admin: s.Admin, addrs: parseListeners(s.Listeners), logs: tailLogs(lines)}
	return r
}

// parseListeners parses "name=addr,name=addr".
func parseListeners(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if name, addr, ok := strings.Cut(kv, "="); ok {
			out[name] = addr
		}
	}
	return out
}

// reloadAPI calls POST /v1/reload and returns the status code and result.
func (r *running) reloadAPI(t *testing.T) (int, reload.Status) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+r.admin+"/v1/reload", nil)
	req.Header.Set(admin.RequestHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st reload.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("POST /v1/reload: decoding the answer: %v", err)
	}
	return resp.StatusCode, st
}

// mustReload reloads through the API and fails the test unless applied.
func (r *running) mustReload(t *testing.T) reload.Status {
	t.Helper()
	code, st := r.reloadAPI(t)
	if code != 200 || st.Result != reload.Applied {
		t.Fatalf("POST /v1/reload = %d %+v, want 200 applied", code, st)
	}
	return st
}

// get sends GET url and returns the status, the sidecar-outcome header
// and the body; status 0 when the request failed.
func get(url string) (int, string, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Sidecar-Outcome"), string(b)
}

// echoUpstream answers every request with its path.
func echoUpstream(t *testing.T) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "up:"+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	return up
}

// routesConfig is a config with one listener "app" and a route per name
// in routes, each matching /<name>, all to upstream.
func routesConfig(upstream string, routes ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
version: 1
shutdown_grace: 5s
admin: {address: "127.0.0.1:0"}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
`, upstream)
	for _, r := range routes {
		fmt.Fprintf(&b, "      - {name: %s, match: {path_prefix: /%s}, upstream: up}\n", r, r)
	}
	return b.String()
}

func TestReloadAddsARouteByEachTrigger(t *testing.T) {
	up := echoUpstream(t)
	cfg := writeConfig(t, routesConfig(up.URL, "a"))
	r := startRunning(t, cfg)
	app := "http://" + r.addrs["app"]
	if code, outcome, _ := get(app + "/b"); code != 404 || outcome != "no_route" {
		t.Fatalf("GET /b before any reload = %d %s, want 404 no_route", code, outcome)
	}

	// SIGHUP.
	from := r.logs.mark()
	rewrite(t, cfg, routesConfig(up.URL, "a", "b"))
	r.cmd.Process.Signal(syscall.SIGHUP)
	r.logs.wait(t, from, "reloaded by the signal", reloaded(reload.TriggerSignal))
	if code, _, body := get(app + "/b"); code != 200 || body != "up:/b" {
		t.Errorf("GET /b after SIGHUP = %d %q, want 200 up:/b", code, body)
	}

	// POST /v1/reload: the route serves when the call returns.
	rewrite(t, cfg, routesConfig(up.URL, "a", "b", "c"))
	st := r.mustReload(t)
	if code, _, body := get(app + "/c"); code != 200 || body != "up:/c" {
		t.Errorf("GET /c after POST /v1/reload = %d %q, want 200 up:/c", code, body)
	}
	if st.Trigger != reload.TriggerAPI || st.Time.IsZero() {
		t.Errorf("POST /v1/reload answered %+v, want trigger api and a time", st)
	}

	// A change of the file, seen by the watcher.
	from = r.logs.mark()
	rewrite(t, cfg, routesConfig(up.URL, "a", "b", "c", "d"))
	r.logs.wait(t, from, "reloaded by the watcher adding route d", func(m map[string]any) bool {
		return reloaded(reload.TriggerFile)(m) && strings.Contains(fmt.Sprint(m["routes_added"]), "d")
	})
	if code, _, body := get(app + "/d"); code != 200 || body != "up:/d" {
		t.Errorf("GET /d after the file changed = %d %q, want 200 up:/d", code, body)
	}
	for _, p := range []string{"/a", "/b", "/c"} {
		if code, _, body := get(app + p); code != 200 || body != "up:"+p {
			t.Errorf("GET %s after three reloads = %d %q, want 200", p, code, body)
		}
	}
}

func TestReloadListenerAddedMovedRemoved(t *testing.T) {
	up := echoUpstream(t)
	base := routesConfig(up.URL, "a")
	withExtra := base + `
  - name: extra
    address: 127.0.0.1:0
    protocol: http1
    routes:
      - {name: x, match: {path_prefix: /x}, upstream: up}
`
	cfg := writeConfig(t, base)
	r := startRunning(t, cfg, "-watch=false")
	app := "http://" + r.addrs["app"]

	// A keep-alive connection to the listener that every reload but the
	// last leaves alone: it must survive them.
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	reused := func(url string) bool {
		t.Helper()
		var got bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { got = ci.Reused },
		})
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "up:") {
			t.Errorf("GET %s = %d %q, want 200", url, resp.StatusCode, b)
		}
		return got
	}
	reused(app + "/a")

	// Added: it serves at once.
	rewrite(t, cfg, withExtra)
	st := r.mustReload(t)
	extra := st.Listeners["extra"]
	if extra == "" || st.Changes == nil || !slices.Equal(st.Changes.ListenersAdded, []string{"extra"}) {
		t.Fatalf("reload adding a listener = %+v, want listeners_added [extra] and its address", st)
	}
	if code, _, body := get("http://" + extra + "/x"); code != 200 || body != "up:/x" {
		t.Errorf("GET /x on the added listener = %d %q, want 200", code, body)
	}

	// Removed: its port closes; the other listener keeps serving, on the
	// same connection.
	rewrite(t, cfg, base)
	st = r.mustReload(t)
	if !slices.Equal(st.Changes.ListenersRemoved, []string{"extra"}) {
		t.Errorf("reload removing a listener = %+v, want listeners_removed [extra]", st)
	}
	poll.Until(t, 10*time.Second, "the removed listener's port closes", func() bool {
		c, err := net.DialTimeout("tcp", extra, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if !reused(app + "/a") {
		t.Errorf("the kept listener's keep-alive connection did not survive two reloads")
	}

	// Moved to another address: the new one serves, the old one closes.
	port := freePort(t)
	movedConf := strings.Replace(base, "address: 127.0.0.1:0\n", "address: "+port+"\n", 1)
	rewrite(t, cfg, movedConf)
	st = r.mustReload(t)
	if !slices.Equal(st.Changes.ListenersChanged, []string{"app"}) || st.Listeners["app"] != port {
		t.Fatalf("reload moving a listener = %+v, want listeners_changed [app] at %s", st, port)
	}
	if code, _, body := get("http://" + port + "/a"); code != 200 || body != "up:/a" {
		t.Errorf("GET /a at the new address = %d %q, want 200", code, body)
	}
	poll.Until(t, 10*time.Second, "the old address closes", func() bool {
		c, err := net.DialTimeout("tcp", r.addrs["app"], time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})

	// The protocol changed, the address not: the socket is re-opened on
	// the same address.
	rewrite(t, cfg, strings.Replace(movedConf, "name: app\n", "name: app\n    protocol: http1\n", 1))
	st = r.mustReload(t)
	if !slices.Equal(st.Changes.ListenersChanged, []string{"app"}) || st.Listeners["app"] != port {
		t.Fatalf("reload changing the protocol = %+v, want listeners_changed [app] at %s", st, port)
	}
	if code, _, body := get("http://" + port + "/a"); code != 200 || body != "up:/a" {
		t.Errorf("GET /a after the protocol change = %d %q, want 200", code, body)
	}
}

// freePort returns a loopback address with a port that was free a moment
// ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// getJSON decodes the JSON answer of GET url into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// scrapeMetrics parses the admin API's /metrics.
func scrapeMetrics(t *testing.T, admin string) *telemetrytest.Exposition {
	t.Helper()
	return telemetrytest.Scrape(t, "http://"+admin+"/metrics")
}

func TestReloadRejectedKeepsServing(t *testing.T) {
	up := echoUpstream(t)
	good := routesConfig(up.URL, "a")
	cfg := writeConfig(t, good)
	r := startRunning(t, cfg, "-watch=false")
	app := "http://" + r.addrs["app"]

	// An invalid file: 422 with every error, and the old config serves.
	rewrite(t, cfg, good+"      - {name: b, match: {path_prefix: /b}, upstream: nowhere, timout: 1s}\n")
	code, st := r.reloadAPI(t)
	if code != 422 || st.Result != reload.Rejected || !strings.Contains(st.Error, "nowhere") || !strings.Contains(st.Error, "timout") {
		t.Errorf("POST /v1/reload with an invalid file = %d %+v, want 422 rejected naming both errors", code, st)
	}
	if code, _, body := get(app + "/a"); code != 200 || body != "up:/a" {
		t.Errorf("GET /a after a rejected reload = %d %q, want 200", code, body)
	}
	// The same by SIGHUP: logged, and the process stays.
	from := r.logs.mark()
	r.cmd.Process.Signal(syscall.SIGHUP)
	line := r.logs.wait(t, from, "rejected by the signal", rejected(reload.TriggerSignal))
	if !strings.Contains(fmt.Sprint(line["error"]), "nowhere") {
		t.Errorf("rejected reload log line = %v, want the error", line)
	}
	if code, _, _ := get(app + "/a"); code != 200 {
		t.Errorf("GET /a after a rejected SIGHUP = %d, want 200", code)
	}

	// /v1/config and the metrics tell.
	var c struct {
		LastReload *reload.Status `json:"last_reload"`
	}
	getJSON(t, "http://"+r.admin+"/v1/config", &c)
	if c.LastReload == nil || c.LastReload.Result != reload.Rejected || c.LastReload.Trigger != reload.TriggerSignal || c.LastReload.Error == "" {
		t.Errorf("/v1/config last_reload = %+v, want the rejected SIGHUP reload with its error", c.LastReload)
	}
	e := scrapeMetrics(t, r.admin)
	if v, _ := e.Value("sidecar_config_reloads_total", "result", "rejected"); v != 2 {
		t.Errorf("sidecar_config_reloads_total{result=rejected} = %v, want 2", v)
	}
	if v, _ := e.Value("sidecar_config_last_reload_success"); v != 0 {
		t.Errorf("sidecar_config_last_reload_success = %v, want 0", v)
	}

	// A key that cannot change live.
	rewrite(t, cfg, strings.Replace(good, `admin: {address: "127.0.0.1:0"}`, `admin: {address: "127.0.0.1:1"}`, 1))
	code, st = r.reloadAPI(t)
	if code != 422 || !slices.Equal(st.RestartNeeded, []string{"admin.address"}) || !strings.Contains(st.Error, "restart needed") {
		t.Errorf("POST /v1/reload changing admin.address = %d %+v, want 422 restart needed [admin.address]", code, st)
	}

	// Fixed: applied, and the gauge says so.
	rewrite(t, cfg, good)
	r.mustReload(t)
	e = scrapeMetrics(t, r.admin)
	if v, _ := e.Value("sidecar_config_last_reload_success"); v != 1 {
		t.Errorf("sidecar_config_last_reload_success after a good reload = %v, want 1", v)
	}
	if v, _ := e.Value("sidecar_config_reloads_total", "result", "applied"); v != 1 {
		t.Errorf("sidecar_config_reloads_total{result=applied} = %v, want 1", v)
	}
}

func TestReloadKeepsAnOpenBreaker(t *testing.T) {
	var failing sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := failing.Load(r.URL.Path); ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	failing.Store("/a", true)
	conf := func(extra string) string {
		return fmt.Sprintf(`
version: 1
admin: {address: "127.0.0.1:0"}
upstreams:
  up: {endpoints: [%q]}
policies:
  brittle:
    circuit_breaker: {enabled: true, consecutive_failures: 1, open_for: 10m, failure_on: ["5xx"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: a, match: {path_prefix: /a}, upstream: up, policy: brittle}
%s`, up.URL, extra)
	}
	cfg := writeConfig(t, conf(""))
	r := startRunning(t, cfg, "-watch=false")
	app := "http://" + r.addrs["app"]
	if code, _, _ := get(app + "/a"); code != 503 {
		t.Fatalf("GET /a against a failing upstream = %d, want its 503", code)
	}
	if code, outcome, _ := get(app + "/a"); code != 503 || outcome != "breaker_open" {
		t.Fatalf("GET /a after a failure = %d %s, want 503 breaker_open", code, outcome)
	}
	rewrite(t, cfg, conf("      - {name: b, match: {path_prefix: /b}, upstream: up}\n"))
	r.mustReload(t)
	if code, _, _ := get(app + "/b"); code != 200 {
		t.Errorf("GET /b added by the reload = %d, want 200", code)
	}
	if code, outcome, _ := get(app + "/a"); code != 503 || outcome != "breaker_open" {
		t.Errorf("GET /a after a reload that left its upstream and policy alone = %d %s, want 503 breaker_open: the open breaker survives", code, outcome)
	}
}

func TestReloadUnderLoadFailsNoRequest(t *testing.T) {
	up := echoUpstream(t)
	confA := routesConfig(up.URL, "a", "b")
	// B changes a route's policy, removes one and adds another: every
	// reload swaps the snapshot under the load.
	confB := strings.Replace(routesConfig(up.URL, "a", "c"), "listeners:", "policies:\n  default: {timeout: 7s}\nlisteners:", 1)
	cfg := writeConfig(t, confA)
	r := startRunning(t, cfg, "-watch=false")
	app := "http://" + r.addrs["app"]

	const clients, reloads = 4, 8
	const duration = 5 * time.Second
	stop := make(chan struct{})
	type tally struct{ ok, failed int }
	results := make(chan tally, clients)
	var firstErr sync.Once
	for range clients {
		go func() {
			var n tally
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-stop:
					results <- n
					return
				default:
				}
				resp, err := client.Get(app + "/a")
				if err != nil {
					n.failed++
					firstErr.Do(func() { t.Errorf("a request during reloads failed: %v", err) })
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != "up:/a" {
					n.failed++
					firstErr.Do(func() { t.Errorf("a request during reloads = %d %q, want 200 up:/a", resp.StatusCode, b) })
					continue
				}
				n.ok++
			}
			results <- n
		}()
	}
	tick := time.NewTicker(duration / reloads)
	for i := range reloads {
		<-tick.C
		body := confA
		if i%2 == 0 {
			body = confB
		}
		rewrite(t, cfg, body)
		r.mustReload(t)
	}
	tick.Stop()
	close(stop)
	var total tally
	for range clients {
		n := <-results
		total.ok += n.ok
		total.failed += n.failed
	}
	t.Logf("%d requests across %d reloads, %d failed", total.ok+total.failed, reloads, total.failed)
	if total.failed != 0 || total.ok == 0 {
		t.Errorf("%d of %d requests failed across %d reloads, want none", total.failed, total.ok+total.failed, reloads)
	}
}

func TestReloadConfigMapSymlinkSwap(t *testing.T) {
	up := echoUpstream(t)
	// The kubelet's layout: sidecar.yaml -> ..data/sidecar.yaml, ..data ->
	// a timestamped directory, replaced by renaming a new symlink over it.
	dir := t.TempDir()
	version := func(name, body string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "sidecar.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_12_05_09_00_00.1", routesConfig(up.URL, "a"))
	if err := os.Symlink("..2026_12_05_09_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sidecar.yaml")
	if err := os.Symlink("..data/sidecar.yaml", cfg); err != nil {
		t.Fatal(err)
	}
	r := startRunning(t, cfg)
	app := "http://" + r.addrs["app"]

	from := r.logs.mark()
	version("..2026_12_05_09_01_00.2", routesConfig(up.URL, "a", "b"))
	if err := os.Symlink("..2026_12_05_09_01_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_12_05_09_00_00.1")); err != nil {
		t.Fatal(err)
	}
	r.logs.wait(t, from, "reloaded by the watcher after the ConfigMap swap", reloaded(reload.TriggerFile))
	if code, _, body := get(app + "/b"); code != 200 || body != "up:/b" {
		t.Errorf("GET /b after the ConfigMap swap = %d %q, want 200", code, body)
	}
}

// asyncRoutesConfig is a config whose listener "app" has an async route
// (when: always) per name in async, matching /<name>, and a sync route
// "s"; the spool lives in dir.
func asyncRoutesConfig(upstream, dir string, async ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
version: 1
admin: {address: "127.0.0.1:0"}
spool: {dir: %q}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: s, match: {path_prefix: /s}, upstream: up}
`, dir, upstream)
	for _, r := range async {
		fmt.Fprintf(&b, "      - {name: %s, match: {path_prefix: /%s}, upstream: up, async: {when: always, backoff: {base: 10ms, max: 50ms}}}\n", r, r)
	}
	return b.String()
}

func TestReloadAsyncRoutesAddedRemovedReturned(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{} // deliveries by path
	var down sync.Map       // paths answered 503
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := down.Load(r.URL.Path); ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		got[r.URL.Path]++
		mu.Unlock()
	}))
	defer up.Close()
	delivered := func(path string) int {
		mu.Lock()
		defer mu.Unlock()
		return got[path]
	}
	dir := filepath.Join(t.TempDir(), "spool")
	cfg := writeConfig(t, asyncRoutesConfig(up.URL, dir, "ev"))
	r := startRunning(t, cfg, "-watch=false")
	app := "http://" + r.addrs["app"]
	post := func(path string) {
		t.Helper()
		resp, err := http.Post(app+path, "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %s = %d, want 202", path, resp.StatusCode)
		}
	}

	// An async route added by a reload gets a deliverer.
	rewrite(t, cfg, asyncRoutesConfig(up.URL, dir, "ev", "new"))
	r.mustReload(t)
	post("/new/1")
	poll.Until(t, 10*time.Second, "the added async route delivers", func() bool { return delivered("/new/1") == 1 })

	// A removed route's message stays, orphaned, and is delivered when
	// a route of that name returns.
	down.Store("/ev/1", true)
	post("/ev/1")
	poll.Until(t, 10*time.Second, "a failed delivery of /ev/1", func() bool {
		var sp struct {
			Routes map[string]struct {
				Delivery *struct{ Retried int64 } `json:"delivery"`
			} `json:"routes"`
		}
		getJSON(t, "http://"+r.admin+"/v1/spool", &sp)
		d := sp.Routes["ev"].Delivery
		return d != nil && d.Retried > 0
	})
	rewrite(t, cfg, asyncRoutesConfig(up.URL, dir, "new"))
	st := r.mustReload(t)
	if !slices.Equal(st.Changes.RoutesRemoved, []string{"ev"}) {
		t.Fatalf("reload removing route ev = %+v", st)
	}
	down.Delete("/ev/1")
	var sp struct {
		Routes map[string]struct {
			Depth    int64 `json:"depth"`
			Orphaned bool  `json:"orphaned"`
		} `json:"routes"`
	}
	getJSON(t, "http://"+r.admin+"/v1/spool", &sp)
	if ev := sp.Routes["ev"]; ev.Depth != 1 || !ev.Orphaned || sp.Routes["new"].Orphaned {
		t.Errorf("/v1/spool after removing route ev = %+v, want ev depth 1 orphaned, new not orphaned", sp.Routes)
	}
	if v, _ := scrapeMetrics(t, r.admin).Value("sidecar_spool_orphaned_messages", "route", "ev"); v != 1 {
		t.Errorf("sidecar_spool_orphaned_messages{route=ev} = %v, want 1", v)
	}
	// No deliverer runs for it: the upstream is up now, and nothing
	// comes while the route is gone, for longer than the back-off.
	if poll.Within(300*time.Millisecond, func() bool { return delivered("/ev/1") > 0 }) {
		t.Fatalf("a removed route's message was delivered")
	}
	rewrite(t, cfg, asyncRoutesConfig(up.URL, dir, "new", "ev"))
	r.mustReload(t)
	poll.Until(t, 10*time.Second, "the returned route delivers its message", func() bool { return delivered("/ev/1") == 1 })
	// The upstream answers before the sidecar acknowledges the message.
	poll.Until(t, 10*time.Second, "route ev's depth back to 0, not orphaned", func() bool {
		getJSON(t, "http://"+r.admin+"/v1/spool", &sp)
		ev := sp.Routes["ev"]
		return ev.Depth == 0 && !ev.Orphaned
	})
}

func TestReloadFirstAsyncRouteOpensTheSpool(t *testing.T) {
	var hits sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Store(r.URL.Path, true)
	}))
	defer up.Close()
	dir := filepath.Join(t.TempDir(), "spool")
	cfg := writeConfig(t, asyncRoutesConfig(up.URL, dir))
	r := startRunning(t, cfg, "-watch=false")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("spool dir with no async route: stat = %v, want not there (the spool opens only for async routes)", err)
	}
	rewrite(t, cfg, asyncRoutesConfig(up.URL, dir, "ev"))
	r.mustReload(t)
	resp, err := http.Post("http://"+r.addrs["app"]+"/ev/1", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Sidecar-Spool-Id") == "" {
		t.Fatalf("POST /ev/1 on the first async route = %d (spool id %q), want 202 spooled", resp.StatusCode, resp.Header.Get("Sidecar-Spool-Id"))
	}
	poll.Until(t, 10*time.Second, "the message is delivered", func() bool { _, ok := hits.Load("/ev/1"); return ok })
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("spool dir after the first async route: %v", err)
	}
}

// dedupeWindowConfig is an async route "ev" (when: always) on the file
// spool in dir, with dedupe_window set to window unless it is empty.
func dedupeWindowConfig(upstream, dir, window string) string {
	c := fmt.Sprintf(`
version: 1
admin: {address: "127.0.0.1:0"}
spool: {dir: %q}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - name: ev
        upstream: up
        async:
          when: always
          backoff: {base: 10ms, max: 50ms}
`, dir, upstream)
	if window != "" {
		c += "          dedupe_window: " + window + "\n"
	}
	return c
}

// A reload that removes dedupe_window and one that sets it again keep the
// keys seen before: a repeat gets the first 202's ID. While the window is
// off the repeat is stored.
func TestReloadDedupeWindowOffAndOn(t *testing.T) {
	up := &keyUpstream{delivered: map[string]int{}, calls: map[string]int{}, hold: map[string]bool{}}
	ups := httptest.NewServer(up)
	defer ups.Close()
	dir := filepath.Join(t.TempDir(), "spool")
	cfg := writeConfig(t, dedupeWindowConfig(ups.URL, dir, "10m"))
	r := startRunning(t, cfg, "-watch=false")
	first, _ := postKey(t, r.addrs["app"], "k")

	rewrite(t, cfg, dedupeWindowConfig(ups.URL, dir, ""))
	r.mustReload(t)
	if id, _ := postKey(t, r.addrs["app"], "k"); id == first {
		t.Errorf("POST key k with dedupe_window removed = %s, the first request's ID; want a new message", id)
	}

	rewrite(t, cfg, dedupeWindowConfig(ups.URL, dir, "10m"))
	r.mustReload(t)
	if id, _ := postKey(t, r.addrs["app"], "k"); id != first {
		t.Errorf("POST key k with dedupe_window set again = %s, want the first request's ID %s", id, first)
	}
	poll.Until(t, 10*time.Second, "the two messages of key k delivered", func() bool { return up.count("k") == 2 })
}

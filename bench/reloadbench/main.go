// Command reloadbench measures live reload on a running sidecar: how long
// from SIGHUP (or POST /v1/reload, or a change of the file) until a route
// the reload adds serves, and what reloads under a fixed-rate load do to
// its latency and errors, against the same load without reloads.
//
//	go run ./bench/reloadbench -sidecar BIN -loadgen BIN -upstream http://127.0.0.1:18080
//
// It writes the sidecar's config in a temp dir, starts the sidecar
// (pinned with -cpu through taskset when given), and for each of -rounds:
// runs loadgen at -rate for -duration without reloads, then again with
// -reloads SIGHUPs spread over the run, each alternating between two
// configs that differ in a route and a policy; then it times -serve
// reloads by each trigger. The result is a markdown report on stdout.
// Loopback only.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

type loadResult struct {
	Scheduled  int     `json:"scheduled"`
	OK         int     `json:"ok"`
	Errors     int64   `json:"errors"`
	Failed     int64   `json:"failed"`
	P50        float64 `json:"p50_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
	FirstError string  `json:"first_error,omitempty"`
}

type bench struct {
	sidecar, loadgen, upstream, cpu string
	dir, cfg                        string
	cmd                             *exec.Cmd
	app, admin                      string
	reloads                         chan string // "configuration reloaded" lines' triggers
}

// config is the sidecar's file: routes /a (under load) and /b, and, with
// alt, a policy change on /a and a route /c instead of /b; extra adds a
// route /<extra>.
func (b *bench) config(alt bool, extra string) string {
	timeout := "10s"
	second := "b"
	if alt {
		timeout, second = "9s", "c"
	}
	s := fmt.Sprintf(`version: 1
admin: {address: "127.0.0.1:0"}
telemetry: {metrics: {prometheus: true}}
upstreams:
  up: {endpoints: [%q]}
policies:
  default: {timeout: %s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: a, match: {path_prefix: /a}, upstream: up}
      - {name: %s, match: {path_prefix: /%s}, upstream: up}
`, b.upstream, timeout, second, second)
	if extra != "" {
		s += fmt.Sprintf("      - {name: %s, match: {path_prefix: /%s}, upstream: up}\n", extra, extra)
	}
	return s
}

func (b *bench) write(body string) error {
	tmp := b.cfg + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.cfg)
}

func (b *bench) start(watch bool) error {
	args := []string{"run", "-config", b.cfg, "-log-format", "json", "-watch=" + fmt.Sprint(watch)}
	name := b.sidecar
	if b.cpu != "" {
		args = append([]string{"-c", b.cpu, b.sidecar}, args...)
		name = "taskset"
	}
	b.cmd = exec.Command(name, args...)
	stderr, err := b.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := b.cmd.Start(); err != nil {
		return err
	}
	started := make(chan error, 1)
	b.reloads = make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			switch m["msg"] {
			case "sidecar started":
				b.admin = fmt.Sprint(m["admin"])
				b.app = strings.TrimPrefix(fmt.Sprint(m["listeners"]), "app=")
				started <- nil
				sent = true
			case "configuration reloaded":
				select {
				case b.reloads <- fmt.Sprint(m["trigger"]):
				default:
				}
			default:
				if lvl := m["level"]; lvl == "ERROR" {
					fmt.Fprintln(os.Stderr, "sidecar:", sc.Text())
				}
			}
		}
		if !sent {
			started <- errors.New("the sidecar exited before it started")
		}
	}()
	select {
	case err := <-started:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("the sidecar did not start within 30s")
	}
}

func (b *bench) stop() {
	if b.cmd != nil && b.cmd.Process != nil {
		b.cmd.Process.Signal(syscall.SIGTERM)
		b.cmd.Wait()
	}
}

// load runs loadgen against /a; with reloads > 0 it sends that many
// SIGHUPs, evenly spread, alternating the configs, and counts the
// applied ones.
func (b *bench) load(rate int, d time.Duration, reloads int) (loadResult, int, error) {
	lg := exec.Command(b.loadgen, "-url", "http://"+b.app+"/a", "-rate", fmt.Sprint(rate), "-duration", d.String(), "-warmup", "1s", "-conns", "16")
	var out strings.Builder
	lg.Stdout, lg.Stderr = &out, os.Stderr
	if err := lg.Start(); err != nil {
		return loadResult{}, 0, err
	}
	applied := 0
	if reloads > 0 {
		time.Sleep(time.Second) // loadgen's warm-up
		every := d / time.Duration(reloads+1)
		for i := range reloads {
			time.Sleep(every)
			if err := b.write(b.config(i%2 == 0, "")); err != nil {
				return loadResult{}, 0, err
			}
			b.cmd.Process.Signal(syscall.SIGHUP)
			select {
			case <-b.reloads:
				applied++
			case <-time.After(5 * time.Second):
				return loadResult{}, applied, errors.New("a reload was not applied within 5s")
			}
		}
	}
	if err := lg.Wait(); err != nil {
		return loadResult{}, applied, fmt.Errorf("loadgen: %w", err)
	}
	var r loadResult
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
		return r, applied, fmt.Errorf("loadgen output %q: %w", out.String(), err)
	}
	return r, applied, nil
}

// serveTime adds route name by trigger and returns how long from the
// trigger until GET /name answers 200 through the sidecar.
func (b *bench) serveTime(trigger, name string, alt bool) (time.Duration, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + b.app + "/" + name
	body := b.config(alt, name)
	var t0 time.Time
	switch trigger {
	case "signal":
		if err := b.write(body); err != nil {
			return 0, err
		}
		t0 = time.Now()
		b.cmd.Process.Signal(syscall.SIGHUP)
	case "api":
		if err := b.write(body); err != nil {
			return 0, err
		}
		t0 = time.Now()
		req, _ := http.NewRequest("POST", "http://"+b.admin+"/v1/reload", nil)
		req.Header.Set("Sidecar-Admin", "1")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("POST /v1/reload = %d", resp.StatusCode)
		}
	case "file":
		t0 = time.Now()
		if err := b.write(body); err != nil {
			return 0, err
		}
	}
	deadline := t0.Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				d := time.Since(t0)
				// Wait for the reload's log line, so that the next
				// trigger does not overlap this reload.
				timeout := time.After(5 * time.Second)
				for {
					select {
					case t := <-b.reloads:
						if t != trigger {
							continue
						}
					case <-timeout:
					}
					return d, nil
				}
			}
		}
		time.Sleep(50 * time.Microsecond)
	}
	return 0, fmt.Errorf("route /%s did not serve within 10s of the %s trigger", name, trigger)
}

func main() {
	b := &bench{}
	flag.StringVar(&b.sidecar, "sidecar", "", "sidecar binary")
	flag.StringVar(&b.loadgen, "loadgen", "", "loadgen binary (bench/loadgen)")
	flag.StringVar(&b.upstream, "upstream", "", "upstream URL (loopback)")
	flag.StringVar(&b.cpu, "cpu", "", "pin the sidecar to this CPU with taskset")
	rate := flag.Int("rate", 2000, "requests per second of the load")
	duration := flag.Duration("duration", 10*time.Second, "measured duration of each load run")
	rounds := flag.Int("rounds", 3, "rounds of (no reload, reloads)")
	reloads := flag.Int("reloads", 10, "SIGHUPs during each reload run")
	serve := flag.Int("serve", 20, "timed reloads per trigger")
	flag.Parse()
	if b.sidecar == "" || b.loadgen == "" || !strings.HasPrefix(b.upstream, "http://127.0.0.1:") {
		fmt.Fprintln(os.Stderr, "reloadbench: -sidecar, -loadgen and a loopback -upstream are required")
		os.Exit(2)
	}
	if err := run(b, *rate, *duration, *rounds, *reloads, *serve); err != nil {
		b.stop()
		fmt.Fprintln(os.Stderr, "reloadbench:", err)
		os.Exit(1)
	}
}

func run(b *bench, rate int, d time.Duration, rounds, reloads, serve int) error {
	dir, err := os.MkdirTemp("", "reloadbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b.dir, b.cfg = dir, filepath.Join(dir, "sidecar.yaml")
	if err := b.write(b.config(false, "")); err != nil {
		return err
	}
	if err := b.start(false); err != nil {
		return err
	}
	fmt.Printf("## Reload under load (%d req/s open loop over 16 connections to /a, %s per run after 1 s warm-up; %d SIGHUPs per reload run)\n\n", rate, d, reloads)
	fmt.Println("| round | run | requests | failed | p50 µs | p99 µs | p99.9 µs | max µs | reloads applied |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	var base, with []float64
	failed := int64(0)
	for i := range rounds {
		r, _, err := b.load(rate, d, 0)
		if err != nil {
			return err
		}
		fmt.Printf("| %d | no reload | %d | %d | %.0f | %.0f | %.0f | %.0f | — |\n", i+1, r.Scheduled, r.Errors+r.Failed, r.P50, r.P99, r.P999, r.Max)
		base = append(base, r.P99)
		failed += r.Errors + r.Failed
		r, n, err := b.load(rate, d, reloads)
		if err != nil {
			return err
		}
		fmt.Printf("| %d | reloads | %d | %d | %.0f | %.0f | %.0f | %.0f | %d |\n", i+1, r.Scheduled, r.Errors+r.Failed, r.P50, r.P99, r.P999, r.Max, n)
		with = append(with, r.P99)
		failed += r.Errors + r.Failed
	}
	mb, mw := median(base), median(with)
	fmt.Printf("\nMedian p99: %.0f µs without reloads, %.0f µs with: %+.0f µs. Failed requests in all runs: %d.\n\n", mb, mw, mw-mb, failed)
	b.stop()

	// Time to serve, by trigger: the file watch is off for SIGHUP and the
	// API (their file writes would trigger it too), on for the file.
	fmt.Printf("## Time from the trigger to a new route serving (%d reloads per trigger, idle sidecar)\n\n", serve)
	fmt.Println("| trigger | min µs | median µs | p90 µs | max µs |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, trigger := range []string{"signal", "api", "file"} {
		if err := b.write(b.config(false, "")); err != nil {
			return err
		}
		if err := b.start(trigger == "file"); err != nil {
			return err
		}
		var ds []time.Duration
		for i := range serve {
			dd, err := b.serveTime(trigger, fmt.Sprintf("%s%d", trigger, i), i%2 == 0)
			if err != nil {
				return err
			}
			ds = append(ds, dd)
		}
		b.stop()
		slices.Sort(ds)
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %.0f |\n", trigger, stats.Micros(ds[0]), stats.Pct(ds, 0.5), stats.Pct(ds, 0.9), stats.Micros(ds[len(ds)-1]))
	}
	fmt.Println("\nThe file trigger includes the watcher's 200 ms debounce.")
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

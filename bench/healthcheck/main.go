// Command healthcheck measures what active health checks cost the
// sidecar: it starts -n loopback HTTP endpoints in a child process (so
// that their CPU is not counted), builds an upstream of them with
// health_check (interval -interval, GET /healthz) through proxy.Build as
// the sidecar does, lets the checkers run for -duration after -warmup,
// and prints one JSON line with the checking process's CPU and
// allocations:
//
//	go run ./bench/healthcheck -n 100 -interval 1s -duration 30s
//
//	{"endpoints":100,"interval_s":1,"duration_s":30,"checks":3001,
//	 "failed":0,"checks_per_s":100.0,"cpu_percent":0.9,
//	 "cpu_us_per_check":90,"allocs_per_check":60,"bytes_per_check":5400,
//	 "goroutines":104}
//
// cpu_percent is of one core: user and system time of the process
// (getrusage) over the measured wall time. The process does nothing else
// but the Go runtime's own work, which is counted too.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
)

// profile is -cpuprofile.
var profile string

type result struct {
	Endpoints      int     `json:"endpoints"`
	IntervalS      float64 `json:"interval_s"`
	DurationS      float64 `json:"duration_s"`
	Checks         int64   `json:"checks"`
	Failed         int64   `json:"failed"`
	ChecksPerS     float64 `json:"checks_per_s"`
	CPUPercent     float64 `json:"cpu_percent"`
	CPUMicrosCheck float64 `json:"cpu_us_per_check"`
	AllocsPerCheck float64 `json:"allocs_per_check"`
	BytesPerCheck  float64 `json:"bytes_per_check"`
	Goroutines     int     `json:"goroutines"`
}

func main() {
	n := flag.Int("n", 100, "endpoints")
	interval := flag.Duration("interval", time.Second, "health_check.interval")
	duration := flag.Duration("duration", 30*time.Second, "measured time")
	warmup := flag.Duration("warmup", 3*time.Second, "time before measuring: every checker has made its first check")
	serve := flag.Bool("serve", false, "child mode: serve -n endpoints, print their addresses, run until stdin closes")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the measured time to this file")
	flag.Parse()
	profile = *cpuProfile
	var err error
	if *serve {
		err = serveEndpoints(*n)
	} else {
		err = run(*n, *interval, *duration, *warmup)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(2)
	}
}

// serveEndpoints is the child: n listeners on loopback answering 200, one
// address per line on stdout, then "ready"; it exits when stdin closes.
func serveEndpoints(n int) error {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go http.Serve(ln, h)
		fmt.Println(ln.Addr().String())
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return nil
}

func run(n int, interval, duration, warmup time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, "-serve", "-n", fmt.Sprint(n))
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		child.Wait()
	}()
	var eps []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		eps = append(eps, `"http://`+sc.Text()+`"`)
	}
	if len(eps) != n {
		return fmt.Errorf("the child served %d endpoints, want %d", len(eps), n)
	}

	yaml := fmt.Sprintf(`
version: 1
upstreams:
  fleet:
    endpoints: [%s]
    health_check: {path: /healthz, interval: %s, timeout: %s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: fleet}
`, strings.Join(eps, ", "), interval, interval/2)
	cfg, err := config.Parse("healthcheck.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		return err
	}
	snap, err := proxy.Build(cfg, nil, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return err
	}
	defer snap.Close(nil)
	pool := snap.Pools["fleet"]
	counts := func() (passed, failed int64) {
		for _, st := range pool.EndpointStates() {
			passed += st.Health.Passed
			failed += st.Health.Failed
		}
		return passed, failed
	}

	time.Sleep(warmup)
	p0, f0 := counts()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	cpu0, start := cpuTime(), time.Now()
	time.Sleep(duration)
	cpu1, wall := cpuTime(), time.Since(start)
	if profile != "" {
		pprof.StopCPUProfile()
	}
	runtime.ReadMemStats(&ms1)
	p1, f1 := counts()

	checks := (p1 - p0) + (f1 - f0)
	if checks == 0 {
		return fmt.Errorf("no check ran in %v", duration)
	}
	cpu := cpu1 - cpu0
	r := result{
		Endpoints:      n,
		IntervalS:      interval.Seconds(),
		DurationS:      wall.Seconds(),
		Checks:         checks,
		Failed:         f1 - f0,
		ChecksPerS:     float64(checks) / wall.Seconds(),
		CPUPercent:     100 * cpu.Seconds() / wall.Seconds(),
		CPUMicrosCheck: float64(cpu.Microseconds()) / float64(checks),
		AllocsPerCheck: float64(ms1.Mallocs-ms0.Mallocs) / float64(checks),
		BytesPerCheck:  float64(ms1.TotalAlloc-ms0.TotalAlloc) / float64(checks),
		Goroutines:     runtime.NumGoroutine(),
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

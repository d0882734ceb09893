// Command loadgen is an open-loop, fixed-rate HTTP/1.1 latency generator
// (wrk has no fixed-rate mode and Debian ships no wrk2).
//
//	go run ./bench/loadgen -url http://127.0.0.1:18001/ -rate 2000 -duration 10s -conns 16
//
// Requests are sent on a fixed schedule: request i is due at
// start + i/rate, regardless of how earlier requests fared. Each request's
// latency is measured from its scheduled send time, not from when it was
// actually written, so a stall in the target (or in the generator) shows up
// in the percentiles instead of silently lowering the offered rate
// (coordinated omission). The uncorrected service time (from actual send) is
// reported as well, as svc_*.
//
// The run is bounded by -duration and by -max requests, whichever comes
// first; stragglers get -timeout to finish and then count as errors. Only
// loopback targets are accepted. The result is one JSON line on stdout.
//
// With -closed it is a closed-loop generator instead: -conns producers each
// send the next request as soon as the previous one was answered, for
// -duration after an unrecorded -warmup, and it reports the answers with
// status -expect per second and their latency:
//
//	go run ./bench/loadgen -closed -method POST -body-size 1024 -expect 202 \
//	    -url http://127.0.0.1:18401/events -conns 16 -duration 10s
//
// -method, -body-size (a body of that many bytes, Content-Type
// application/octet-stream) and -expect (the status that counts as OK,
// default 200) apply to both modes.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

// sleepUntil blocks until t. With gosleep it uses time.Sleep (1 ms
// granularity when idle); otherwise nanosleep(2), retried on EINTR.
func sleepUntil(t time.Time, gosleep bool) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		if gosleep {
			time.Sleep(d)
			continue
		}
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil)
	}
}

type result struct {
	URL         string  `json:"url"`
	Rate        float64 `json:"rate"`
	DurationS   float64 `json:"duration_s"`
	WarmupS     float64 `json:"warmup_s"`
	Conns       int     `json:"conns"`
	Scheduled   int     `json:"scheduled"`
	OK          int     `json:"ok"`
	Errors      int64   `json:"errors"`
	Failed      int64   `json:"failed"`
	AchievedRPS float64 `json:"achieved_rps"`
	P50         float64 `json:"p50_us"`
	P90         float64 `json:"p90_us"`
	P99         float64 `json:"p99_us"`
	P999        float64 `json:"p999_us"`
	Max         float64 `json:"max_us"`
	Mean        float64 `json:"mean_us"`
	SvcP50      float64 `json:"svc_p50_us"`
	SvcP99      float64 `json:"svc_p99_us"`
	LagP99      float64 `json:"send_lag_p99_us"`
	FirstError  string  `json:"first_error,omitempty"`
	// Closed-loop mode only.
	Mode     string         `json:"mode,omitempty"`
	Method   string         `json:"method,omitempty"`
	BodySize int            `json:"body_size,omitempty"`
	Expect   int            `json:"expect,omitempty"`
	Statuses map[string]int `json:"statuses,omitempty"` // answers other than -expect, by status
}

// reqSpec is the request every worker sends.
type reqSpec struct {
	url    string
	method string
	body   []byte
	expect int
}

func (r reqSpec) new() (*http.Request, error) {
	var body io.Reader
	if len(r.body) > 0 {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, r.url, body)
	if err != nil {
		return nil, err
	}
	if len(r.body) > 0 {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	return req, nil
}

func main() {
	rawURL := flag.String("url", "", "target URL (loopback only)")
	rate := flag.Float64("rate", 2000, "requests per second (fixed schedule)")
	duration := flag.Duration("duration", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", 0, "run at the same rate for this long first, not recorded")
	conns := flag.Int("conns", 16, "keep-alive connections (one worker each)")
	maxReq := flag.Int("max", 1_000_000, "upper bound on measured requests")
	timeout := flag.Duration("timeout", 2*time.Second, "per-request timeout; also the drain time after the schedule ends")
	goSleep := flag.Bool("gosleep", false, "pace with time.Sleep instead of nanosleep(2) (coarser; for comparison)")
	closed := flag.Bool("closed", false, "closed loop: each connection sends its next request when the previous one is answered (-rate is ignored)")
	method := flag.String("method", http.MethodGet, "request method")
	bodySize := flag.Int("body-size", 0, "request body size in bytes (0: no body)")
	expect := flag.Int("expect", http.StatusOK, "the answer status that counts as OK")
	flag.Parse()

	if *bodySize < 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -body-size must not be negative")
		os.Exit(2)
	}
	body := make([]byte, *bodySize)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	spec := reqSpec{url: *rawURL, method: *method, body: body, expect: *expect}
	var err error
	if *closed {
		err = runClosed(spec, *duration, *warmup, *conns, *maxReq, *timeout)
	} else {
		err = run(spec, *rate, *duration, *warmup, *conns, *maxReq, *timeout, *goSleep)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}

func checkLoopback(u *url.URL) error {
	if u.Scheme != "http" {
		return fmt.Errorf("only http:// URLs are supported, got %q", u.Scheme)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing non-loopback target %q", host)
	}
	return nil
}

func parseTarget(rawURL string) (*url.URL, error) {
	if rawURL == "" {
		return nil, fmt.Errorf("-url is required")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	return u, checkLoopback(u)
}

func newTransport(conns int, timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: timeout}).DialContext,
		MaxIdleConns:           conns,
		MaxIdleConnsPerHost:    conns,
		MaxConnsPerHost:        conns,
		IdleConnTimeout:        time.Minute,
		ResponseHeaderTimeout:  timeout,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

func run(spec reqSpec, rate float64, duration, warmup time.Duration, conns, maxReq int, timeout time.Duration, gosleep bool) error {
	u, err := parseTarget(spec.url)
	if err != nil {
		return err
	}
	if rate <= 0 || duration <= 0 || conns <= 0 || maxReq <= 0 || timeout <= 0 {
		return fmt.Errorf("-rate, -duration, -conns, -max and -timeout must be positive")
	}

	n := int(math.Min(rate*duration.Seconds(), float64(maxReq)))
	w := int(math.Min(rate*warmup.Seconds(), float64(maxReq)))
	if n < 1 {
		return fmt.Errorf("schedule has no requests (rate*duration < 1)")
	}
	// Request i is due at start + i*nsPerReq (computed per request, so
	// rounding never accumulates).
	nsPerReq := float64(time.Second) / rate

	tr := newTransport(conns, timeout)
	defer tr.CloseIdleConnections()
	// Without a body one request is shared by every send, as before
	// -body-size existed; with one each send needs its own reader.
	shared, err := spec.new()
	if err != nil {
		return err
	}

	lat := make([]time.Duration, n) // from scheduled time; 0 = not completed OK
	svc := make([]time.Duration, n) // from actual send
	lag := make([]time.Duration, n) // actual send - scheduled
	var errCount atomic.Int64
	var firstErr atomic.Value
	// mu guards lat/svc/lag and stopped: after a hard stop the main goroutine
	// reads the slices while stragglers may still be finishing.
	var mu sync.Mutex
	stopped := false

	// Each connection has its own slice of the fixed schedule (wrk2 style):
	// worker k sends requests k, k+conns, k+2*conns, ... each due at
	// start + i/rate. A stalled connection therefore sends late, and the
	// lateness is charged to the requests' latency, since it is measured
	// from the due time. Go's timers only have 1 ms resolution when the
	// process is idle (netpoll waits in whole milliseconds), far too coarse
	// for a 500 µs schedule, so workers sleep with nanosleep(2) instead;
	// GOMAXPROCS is raised so that workers sleeping in the syscall never hold
	// the only P.
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), conns+2))
	total := w + n
	start := time.Now().Add(20 * time.Millisecond)
	var wg sync.WaitGroup
	for k := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := k; i < total; i += conns {
				due := start.Add(time.Duration(float64(i) * nsPerReq))
				sleepUntil(due, gosleep)
				mu.Lock()
				halt := stopped
				mu.Unlock()
				if halt {
					return
				}
				req := shared
				if len(spec.body) > 0 {
					req, _ = spec.new() // checked above
				}
				t0 := time.Now()
				resp, err := tr.RoundTrip(req)
				if err == nil {
					_, err = io.CopyBuffer(io.Discard, resp.Body, buf)
					resp.Body.Close()
					if err == nil && resp.StatusCode != spec.expect {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				end := time.Now()
				if i < w {
					continue
				}
				k := i - w
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mu.Lock()
				if !stopped {
					lat[k] = end.Sub(due)
					svc[k] = end.Sub(t0)
					lag[k] = t0.Sub(due)
				}
				mu.Unlock()
			}
		}()
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	hardStop := warmup + duration + timeout + time.Second + 20*time.Millisecond
	drained := true
	select {
	case <-done:
	case <-time.After(time.Until(start.Add(hardStop))):
		drained = false
	}
	mu.Lock()
	stopped = true
	mu.Unlock()
	elapsed := time.Since(start) - warmup

	res := result{URL: u.String(), Rate: rate, DurationS: duration.Seconds(), WarmupS: warmup.Seconds(), Conns: conns, Scheduled: n}
	okLat := make([]time.Duration, 0, n)
	okSvc := make([]time.Duration, 0, n)
	okLag := make([]time.Duration, 0, n)
	for k := range n {
		if lat[k] > 0 {
			okLat = append(okLat, lat[k])
			okSvc = append(okSvc, svc[k])
			okLag = append(okLag, lag[k])
		}
	}
	res.OK = len(okLat)
	// Everything scheduled that did not complete OK is an error: failed
	// requests, and ones still outstanding at the hard stop.
	res.Errors = int64(n - res.OK)
	res.Failed = errCount.Load()
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	} else if !drained {
		res.FirstError = "requests still outstanding at the hard stop"
	}
	if elapsed > 0 {
		res.AchievedRPS = stats.Round1(float64(res.OK) / elapsed.Seconds())
	}
	if res.OK > 0 {
		slices.Sort(okLat)
		slices.Sort(okSvc)
		slices.Sort(okLag)
		res.P50 = stats.Pct(okLat, 0.50)
		res.P90 = stats.Pct(okLat, 0.90)
		res.P99 = stats.Pct(okLat, 0.99)
		res.P999 = stats.Pct(okLat, 0.999)
		res.Max = stats.Micros(okLat[len(okLat)-1])
		var sum time.Duration
		for _, d := range okLat {
			sum += d
		}
		res.Mean = stats.Round1(float64(sum) / float64(len(okLat)) / 1e3)
		res.SvcP50 = stats.Pct(okSvc, 0.50)
		res.SvcP99 = stats.Pct(okSvc, 0.99)
		res.LagP99 = stats.Pct(okLag, 0.99)
	}
	return printResult(res)
}

// runClosed is the closed-loop mode: conns workers send back to back; the
// requests answered spec.expect within the measured window count.
func runClosed(spec reqSpec, duration, warmup time.Duration, conns, maxReq int, timeout time.Duration) error {
	u, err := parseTarget(spec.url)
	if err != nil {
		return err
	}
	if duration <= 0 || conns <= 0 || maxReq <= 0 || timeout <= 0 || warmup < 0 {
		return fmt.Errorf("-duration, -conns, -max and -timeout must be positive")
	}
	if _, err := spec.new(); err != nil {
		return err
	}
	tr := newTransport(conns, timeout)
	defer tr.CloseIdleConnections()

	type worker struct {
		lat      []time.Duration
		statuses map[int]int
		errs     int64
		firstErr string
	}
	ws := make([]*worker, conns)
	var measured atomic.Int64 // requests started in the measured window
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(duration)
	var wg sync.WaitGroup
	for k := range conns {
		w := &worker{statuses: map[int]int{}}
		ws[k] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				inWindow := !t0.Before(measureFrom)
				if inWindow && measured.Add(1) > int64(maxReq) {
					return
				}
				req, _ := spec.new() // checked above
				resp, err := tr.RoundTrip(req)
				status := 0
				if err == nil {
					status = resp.StatusCode
					_, err = io.CopyBuffer(io.Discard, resp.Body, buf)
					resp.Body.Close()
				}
				d := time.Since(t0)
				if !inWindow {
					continue
				}
				switch {
				case err != nil:
					w.errs++
					if w.firstErr == "" {
						w.firstErr = err.Error()
					}
				case status != spec.expect:
					w.statuses[status]++
				default:
					w.lat = append(w.lat, d)
				}
			}
		}()
	}
	wg.Wait()
	// Requests started before the end and answered after it count, so
	// the window runs until the last one is answered.
	elapsed := time.Since(measureFrom)

	res := result{URL: u.String(), DurationS: duration.Seconds(), WarmupS: warmup.Seconds(), Conns: conns,
		Mode: "closed", Method: spec.method, BodySize: len(spec.body), Expect: spec.expect}
	var lat []time.Duration
	for _, w := range ws {
		lat = append(lat, w.lat...)
		res.Errors += w.errs
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
		for st, n := range w.statuses {
			if res.Statuses == nil {
				res.Statuses = map[string]int{}
			}
			res.Statuses[fmt.Sprint(st)] += n
			res.Failed += int64(n)
		}
	}
	res.OK = len(lat)
	res.Scheduled = res.OK + int(res.Errors+res.Failed)
	if elapsed > 0 {
		res.AchievedRPS = stats.Round1(float64(res.OK) / elapsed.Seconds())
	}
	if res.OK > 0 {
		slices.Sort(lat)
		res.P50 = stats.Pct(lat, 0.50)
		res.P90 = stats.Pct(lat, 0.90)
		res.P99 = stats.Pct(lat, 0.99)
		res.P999 = stats.Pct(lat, 0.999)
		res.Max = stats.Micros(lat[len(lat)-1])
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		res.Mean = stats.Round1(float64(sum) / float64(len(lat)) / 1e3)
		res.SvcP50, res.SvcP99 = res.P50, res.P99
	}
	return printResult(res)
}

func printResult(res result) error {
	return stats.PrintJSON(res)
}

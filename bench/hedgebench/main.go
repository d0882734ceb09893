// Command hedgebench measures what hedged requests do to tail latency: a
// sidecar in this process forwards GETs to an upstream of two loopback
// endpoints, A always fast and B slow (by -slow) on one request in
// -every, once with the route's policy hedging (hedge.after -after) and
// once without, in interleaved rounds.
//
//	go run ./bench/hedgebench -rate 400 -duration 5s -rounds 2
//
// The load is open loop: request i is due at start + i/rate whatever
// became of earlier ones, and its latency counts from then, so a stall
// shows in the percentiles (no coordinated omission). Each mode's
// requests of every round are pooled; the report is a markdown table of
// p50, p90, p99, p99.9 and max, each round's p99 (a loaded machine's
// stalls hit one round, not all), and the upstream requests made per app
// request (the hedges' extra load). Bounded: rounds × 2 × (warmup +
// duration), plus a 5 s drain per run at most.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
)

func main() {
	rate := flag.Int("rate", 400, "requests per second")
	duration := flag.Duration("duration", 5*time.Second, "recorded load per round and mode")
	warmup := flag.Duration("warmup", time.Second, "unrecorded load before each run")
	rounds := flag.Int("rounds", 2, "rounds; each runs both modes")
	after := flag.Duration("after", 10*time.Millisecond, "hedge.after")
	slow := flag.Duration("slow", 50*time.Millisecond, "added to B's slow answers")
	every := flag.Int("every", 20, "one request in this many to B is slow (20: 5%)")
	flag.Parse()
	if *rate <= 0 || *duration <= 0 || *rounds <= 0 || *every <= 0 {
		fmt.Fprintln(os.Stderr, "hedgebench: -rate, -duration, -rounds and -every must be positive")
		os.Exit(2)
	}

	var upstreamCalls atomic.Int64
	fast := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		io.WriteString(w, "ok")
	}))
	var bCalls atomic.Int64
	slowB := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		if bCalls.Add(1)%int64(*every) == 0 {
			t := time.NewTimer(*slow)
			select {
			case <-t.C:
			case <-r.Context().Done(): // a hedge won: the sidecar closed the connection
				t.Stop()
				return
			}
		}
		io.WriteString(w, "ok")
	}))

	modes := []struct{ name, policy string }{
		{"no hedge", `{timeout: 5s, retry: {attempts: 2}}`},
		{"hedge after " + after.String(), `{timeout: 5s, retry: {attempts: 2}, hedge: {after: ` + after.String() + `}}`},
	}
	lat := make([][]time.Duration, len(modes))
	calls := make([]int64, len(modes))
	sent := make([]int64, len(modes))
	errs := make([]int64, len(modes))
	roundP99 := make([][]string, len(modes))
	for round := range *rounds {
		for i, m := range modes {
			addr, stop := sidecar(m.policy, fast, slowB)
			run(addr, *rate, *warmup, nil)
			before := upstreamCalls.Load()
			r := run(addr, *rate, *duration, &errs[i])
			calls[i] += upstreamCalls.Load() - before
			sent[i] += int64(len(r))
			lat[i] = append(lat[i], r...)
			sorted := slices.Clone(r)
			slices.Sort(sorted)
			roundP99[i] = append(roundP99[i], ms(pct(sorted, 99)))
			stop()
			fmt.Fprintf(os.Stderr, "round %d, %s: %d requests\n", round+1, m.name, len(r))
		}
	}

	fmt.Printf("Two endpoints, round robin; B is slow by %v on one request in %d; %d/s open loop, %d × %v per mode.\n\n", *slow, *every, *rate, *rounds, *duration)
	fmt.Println("| mode | requests | errors | p50 | p90 | p99 | p99.9 | max | p99 of each round | upstream requests per request |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for i, m := range modes {
		l := lat[i]
		slices.Sort(l)
		fmt.Printf("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %.3f |\n", m.name, len(l), errs[i],
			ms(pct(l, 50)), ms(pct(l, 90)), ms(pct(l, 99)), ms(pct(l, 99.9)), ms(pct(l, 100)), strings.Join(roundP99[i], ", "), float64(calls[i])/float64(max(sent[i], 1)))
	}
}

// serve serves h on a loopback port and returns its URL.
func serve(h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	go http.Serve(ln, h)
	return "http://" + ln.Addr().String()
}

// sidecar starts a sidecar whose route "all" sends GETs under policy to
// an upstream of the endpoints a and b, and returns its address and how
// to stop it.
func sidecar(policy, a, b string) (string, func()) {
	cfg, err := config.Parse("hedgebench.yaml", []byte(`
version: 1
upstreams:
  up: {load_balancing: round_robin, endpoints: ["`+a+`", "`+b+`"]}
policies:
  p: `+policy+`
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up, policy: p}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	snap, err := proxy.Build(cfg, nil, logger)
	if err != nil {
		fatal(err)
	}
	srv := proxy.NewServer(snap, logger)
	if err := srv.Listen(); err != nil {
		fatal(err)
	}
	srv.Serve()
	return srv.Addrs()["app"].String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
}

// run sends GETs to addr at rate for d and returns their latencies, each
// from its scheduled time; failed requests are counted in errs (nil: not
// counted).
func run(addr string, rate int, d time.Duration, errs *int64) []time.Duration {
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256},
	}
	defer client.CloseIdleConnections()
	n := int(d.Seconds() * float64(rate))
	out := make([]time.Duration, n)
	failed := make([]bool, n)
	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Go(func() {
			resp, err := client.Get("http://" + addr + "/items")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			out[i] = time.Since(due)
			failed[i] = err != nil
		})
	}
	wg.Wait()
	kept := out[:0]
	for i, l := range out {
		if failed[i] {
			if errs != nil {
				*errs++
			}
			continue
		}
		kept = append(kept, l)
	}
	return kept
}

// pct is the p-th percentile of the sorted l (nearest rank).
func pct(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(p/100*float64(len(l))+0.5) - 1
	return l[min(max(i, 0), len(l)-1)]
}

func ms(d time.Duration) string {
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(d.Microseconds())/1000), ".0") + " ms"
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hedgebench:", err)
	os.Exit(1)
}

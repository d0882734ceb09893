package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/spool"
)

// crashConfig writes the config of one start of the file spool's crash
// tests (TestKill9LosesNothingAcknowledged,
// TestCrashDeliveryLosesNothingAcknowledged): one async route "ev" on a
// file spool in dir, to the upstream at upstream.
func crashConfig(t *testing.T, dir, upstream, when, ordering string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: 1s
admin: {address: "127.0.0.1:0"}
spool: {dir: %q, fsync: always}
upstreams:
  up: {endpoints: ["http://%s"], connect_timeout: 200ms}
policies:
  default: {timeout: 2s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - name: ev
        upstream: up
        async:
          when: %s
          ordering: %s
          max_in_flight: 16
          backoff: {base: 10ms, max: 100ms}
          max_attempts: 1000000
          max_age: 1h
`, dir, upstream, when, ordering))
}

// spoolTotal is the "total" object of the admin GET /v1/spool answer, plus
// the recovery counters.
type spoolTotal struct {
	Total struct {
		Depth int64 `json:"depth"`
		Dead  int64 `json:"dead"`
	} `json:"total"`
	CorruptRecords int64 `json:"corrupt_records"`
	TornTail       bool  `json:"torn_tail"`
	Failed         bool  `json:"failed"`
}

func getSpool(admin string) (spoolTotal, error) {
	var st spoolTotal
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/v1/spool")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return st, fmt.Errorf("GET /v1/spool = %d %s", resp.StatusCode, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// acked is a request that got a 202: the sidecar promised to deliver it.
type acked struct {
	loop    int
	spoolID string
	body    string
}

// crashLoops returns how many loops a crash test runs, def unless the
// environment variable loopsEnv says otherwise, and its random source,
// seeded from SIDECAR_CRASH_SEED or the clock; it logs the seed so that
// a run can be replayed.
func crashLoops(t *testing.T, loopsEnv string, def int) (loops int, seed int64, rng *rand.Rand) {
	t.Helper()
	loops = def
	if v := os.Getenv(loopsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive integer", loopsEnv, v)
		}
		loops = n
	}
	seed = time.Now().UnixNano()
	if v := os.Getenv("SIDECAR_CRASH_SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("SIDECAR_CRASH_SEED=%q: want an integer", v)
		}
		seed = n
	}
	t.Logf("seed %d (SIDECAR_CRASH_SEED=%d replays the random choices), %d loops", seed, seed, loops)
	return loops, seed, rand.New(rand.NewSource(seed))
}

// TestKill9LosesNothingAcknowledged runs the real binary with an async
// route whose upstream is down, puts concurrent load on it, SIGKILLs it at
// a random instant, and repeats on the same spool directory. A last start
// with the upstream up must deliver every request that was ever answered
// 202 (at least once: duplicates are counted, not failed).
//
// SIDECAR_CRASH_LOOPS sets the number of kills (default 20, 3 with -short);
// SIDECAR_CRASH_SEED replays a run's random kill instants.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	loops := 20
	if testing.Short() {
		loops = 3
	}
	loops, seed, rng := crashLoops(t, "SIDECAR_CRASH_LOOPS", loops)

	dir := t.TempDir()
	// The upstream: a port held without listening, so deliveries and
	// synchronous tries get connection refused until the last start.
	upAddr, releaseUp := testnet.Refused(t)

	const (
		workers      = 16
		perWorkerMax = 5000             // bounds one loop's requests per worker
		loadMax      = 10 * time.Second // bounds one loop's load in time
	)
	var (
		mu      sync.Mutex
		ackedBy = map[string]acked{} // Idempotency-Key -> what got a 202
	)
	torn, corrupt := 0, int64(0)
	start := time.Now()
	for loop := 0; loop < loops; loop++ {
		when := "upstream_down"
		if loop%2 == 1 {
			when = "always"
		}
		cmd, s, _ := startBinary(t, crashConfig(t, dir, upAddr, when, "fifo"))
		addr := strings.TrimPrefix(s.Listeners, "app=")

		// Recovery kept everything acknowledged so far: nothing could be
		// delivered (the upstream is down) and nothing dead-letters.
		st, err := getSpool(s.Admin)
		if err != nil {
			t.Fatalf("loop %d: %v", loop, err)
		}
		mu.Lock()
		ackedSoFar := len(ackedBy)
		mu.Unlock()
		if st.TornTail {
			torn++
		}
		corrupt += st.CorruptRecords
		if st.Total.Depth+st.Total.Dead < int64(ackedSoFar) {
			t.Errorf("loop %d: after restart the spool holds %d pending + %d dead, but %d requests were acknowledged before: messages lost in recovery (torn_tail %v, corrupt_records %d)",
				loop, st.Total.Depth, st.Total.Dead, ackedSoFar, st.TornTail, st.CorruptRecords)
		}
		if st.Failed {
			t.Errorf("loop %d: the store reports failed at start", loop)
		}

		tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var nAcked, nErr int
		other := map[int]int{}
		deadline := time.Now().Add(loadMax)
		firstAck := make(chan struct{})
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 0; seq < perWorkerMax && time.Now().Before(deadline); seq++ {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("k-%d-%d-%d", loop, w, seq)
					body := fmt.Sprintf("loop %d worker %d seq %d", loop, w, seq)
					req, err := http.NewRequest("POST", "http://"+addr+"/events", strings.NewReader(body))
					if err != nil {
						panic(err)
					}
					req.Header.Set("Content-Type", "text/plain")
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if err != nil {
						mu.Lock()
						nErr++
						mu.Unlock()
						continue // not acknowledged (the sidecar died under it)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					id := resp.Header.Get("Sidecar-Spool-Id")
					mu.Lock()
					if resp.StatusCode == http.StatusAccepted && id != "" {
						if nAcked++; nAcked == 1 {
							close(firstAck)
						}
						ackedBy[key] = acked{loop: loop, spoolID: id, body: body}
					} else {
						other[resp.StatusCode]++
					}
					mu.Unlock()
				}
			}()
		}
		// The load is under way once a request is acknowledged (on a busy
		// machine the first one can take a while); the kill comes at a
		// random instant after that.
		select {
		case <-firstAck:
		case <-time.After(loadMax):
		}
		delay := time.Duration(50+rng.Intn(351)) * time.Millisecond
		time.Sleep(delay) // the random kill instant is the point of the test
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("loop %d: SIGKILL: %v", loop, err)
		}
		_ = cmd.Wait()
		close(stop)
		wg.Wait()
		tr.CloseIdleConnections()
		t.Logf("loop %d (%s): killed after %v: %d acknowledged, %d errors, other answers %v; at start: depth %d dead %d torn_tail %v corrupt %d",
			loop, when, delay, nAcked, nErr, other, st.Total.Depth, st.Total.Dead, st.TornTail, st.CorruptRecords)
		if nAcked == 0 {
			t.Errorf("loop %d: no request was acknowledged in %v of load", loop, loadMax)
		}
	}
	t.Logf("%d loops in %v: %d requests acknowledged; %d restarts found a torn tail, %d corrupt records skipped",
		loops, time.Since(start).Round(time.Millisecond), len(ackedBy), torn, corrupt)

	// The upstream comes back, on the same address if it is still free.
	type delivery struct {
		n    int
		body string
	}
	var (
		umu  sync.Mutex
		seen = map[string]*delivery{}
	)
	releaseUp()
	upLn, err := net.Listen("tcp", upAddr)
	if err != nil {
		t.Logf("upstream address %s taken (%v); using a new port", upAddr, err)
		if upLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		upAddr = upLn.Addr().String()
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "short body", http.StatusBadRequest)
			return
		}
		key := r.Header.Get("Idempotency-Key")
		umu.Lock()
		d := seen[key]
		if d == nil {
			d = &delivery{body: string(b)}
			seen[key] = d
		}
		d.n++
		umu.Unlock()
		w.WriteHeader(http.StatusOK)
	})}
	go up.Serve(upLn)
	defer up.Close()

	// Delivery order is the route's setting of this start: one at a time
	// (fifo) or 16 in parallel (none), drawn from the seed.
	ordering := []string{"fifo", "none"}[rng.Intn(2)]
	deliverStart := time.Now()
	cmd, s, _ := startBinary(t, crashConfig(t, dir, upAddr, "upstream_down", ordering))
	st, err := getSpool(s.Admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final start (ordering %s): depth %d, dead %d, torn_tail %v, corrupt %d", ordering, st.Total.Depth, st.Total.Dead, st.TornTail, st.CorruptRecords)
	// (No depth check here: deliveries start before this GET.)
	// 60 s, or 4 ms a message for long soaks (fifo delivered ~0.9-1.3k/s
	// with -race on 2 cores).
	drainMax := max(60*time.Second, time.Duration(st.Total.Depth)*4*time.Millisecond)
	drained := poll.Within(drainMax, func() bool {
		st, err = getSpool(s.Admin)
		return err == nil && st.Total.Depth == 0
	})
	t.Logf("delivery took %v; spool now: depth %d, dead %d (err %v)", time.Since(deliverStart).Round(time.Millisecond), st.Total.Depth, st.Total.Dead, err)
	if !drained {
		t.Errorf("the spool did not drain within %v: depth %d", drainMax, st.Total.Depth)
	}
	if st.Total.Dead != 0 {
		t.Errorf("%d messages were dead-lettered", st.Total.Dead)
	}

	umu.Lock()
	var missing, badBody []string
	dups, extra := 0, 0
	for key, a := range ackedBy {
		d := seen[key]
		switch {
		case d == nil:
			missing = append(missing, key)
		case d.body != a.body:
			badBody = append(badBody, fmt.Sprintf("%s: got %q, want %q", key, d.body, a.body))
		}
		if d != nil && d.n > 1 {
			dups++
			extra += d.n - 1
		}
	}
	unacked := 0
	for key := range seen {
		if _, ok := ackedBy[key]; !ok {
			unacked++
		}
	}
	umu.Unlock()
	t.Logf("upstream got %d distinct keys: %d acknowledged ones delivered, %d delivered more than once (%d extra deliveries), %d never acknowledged (durable before the kill, answer lost)",
		len(seen), len(ackedBy)-len(missing), dups, extra, unacked)
	sort.Strings(badBody)
	for _, b := range badBody {
		t.Errorf("delivered body differs: %s", b)
	}
	if len(missing) == 0 {
		return
	}

	// Lost messages: say what the spool still knows of each.
	sort.Strings(missing)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	store, err := spool.OpenFile(dir, spool.FileOptions{})
	if err != nil {
		t.Logf("cannot reopen the spool for diagnosis: %v", err)
	} else {
		defer store.Close()
	}
	lines := []string{}
	for _, key := range missing {
		a := ackedBy[key]
		line := fmt.Sprintf("%s (loop %d, spool id %s)", key, a.loop, a.spoolID)
		if store != nil {
			if _, info, err := store.Get(a.spoolID); err != nil {
				line += fmt.Sprintf(": not in the spool (%v)", err)
			} else {
				line += fmt.Sprintf(": in the spool, %s, attempts %d, next %v, reason %q", info.State, info.Attempts, info.NextAttempt, info.DeadReason)
			}
		}
		lines = append(lines, line)
	}
	t.Errorf("%d of %d acknowledged requests never reached the upstream (seed %d):\n%s", len(missing), len(ackedBy), seed, strings.Join(lines, "\n"))
}

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
)

// jsCrashConfig writes the config of one start of
// TestKill9JetStreamLosesNothingAcknowledged: one async route "ev" on the
// JetStream stream CRASH at natsURL, to the upstream at upstream.
func jsCrashConfig(t *testing.T, natsURL, upstream, when, ordering string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: 1s
admin: {address: "127.0.0.1:0"}
spool: {backend: jetstream, jetstream: {url: %q, stream: CRASH, ack_wait: 3s}}
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
`, natsURL, upstream, when, ordering))
}

// TestKill9JetStreamLosesNothingAcknowledged is the kill -9 test of the
// file backend (TestKill9LosesNothingAcknowledged) with the JetStream
// backend: the real binary, an async route whose upstream is down,
// concurrent load, SIGKILL at a random instant, repeated against the same
// embedded NATS server. A last start with the upstream up must deliver
// every request that was answered 202. Messages leased at a kill come
// back after the consumer's ack wait (spool.jetstream.ack_wait, 3s here),
// so the drain takes at least that long.
//
// SIDECAR_CRASH_LOOPS sets the number of kills (default 5);
// SIDECAR_CRASH_SEED replays a run's random kill instants.
func TestKill9JetStreamLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the JetStream ack wait after the kills")
	}
	loops := 5
	loops, seed, rng := crashLoops(t, "SIDECAR_CRASH_LOOPS", loops)
	ns := startNATS(t)

	upAddr, releaseUp := testnet.Refused(t) // refuses connections until released

	const workers = 16
	var (
		mu      sync.Mutex
		ackedBy = map[string]acked{} // Idempotency-Key -> what got a 202
	)
	for loop := range loops {
		when := []string{"upstream_down", "always"}[loop%2]
		cmd, s, _ := startBinary(t, jsCrashConfig(t, ns.ClientURL(), upAddr, when, "fifo"))
		addr := strings.TrimPrefix(s.Listeners, "app=")
		st, err := getSpool(s.Admin)
		if err != nil {
			t.Fatalf("loop %d: %v", loop, err)
		}
		mu.Lock()
		ackedSoFar := len(ackedBy)
		mu.Unlock()
		if st.Total.Depth+st.Total.Dead < int64(ackedSoFar) {
			t.Errorf("loop %d: after restart the stream holds %d pending + %d dead, but %d requests were acknowledged before", loop, st.Total.Depth, st.Total.Dead, ackedSoFar)
		}

		tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var nAcked int
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 0; seq < 5000; seq++ {
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
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if err != nil {
						continue // not acknowledged (the sidecar died under it)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if id := resp.Header.Get("Sidecar-Spool-Id"); resp.StatusCode == http.StatusAccepted && id != "" {
						mu.Lock()
						nAcked++
						ackedBy[key] = acked{loop: loop, spoolID: id, body: body}
						mu.Unlock()
					}
				}
			}()
		}
		delay := time.Duration(100+rng.Intn(401)) * time.Millisecond
		time.Sleep(delay) // the random kill instant is the point of the test
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("loop %d: SIGKILL: %v", loop, err)
		}
		_ = cmd.Wait()
		close(stop)
		wg.Wait()
		tr.CloseIdleConnections()
		t.Logf("loop %d (%s): killed after %v: %d acknowledged", loop, when, delay, nAcked)
		if nAcked == 0 {
			t.Errorf("loop %d: no request was acknowledged in %v of load", loop, delay)
		}
	}

	var (
		umu  sync.Mutex
		seen = map[string]string{}
	)
	releaseUp()
	upLn, err := net.Listen("tcp", upAddr)
	if err != nil {
		if upLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		upAddr = upLn.Addr().String()
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		umu.Lock()
		seen[r.Header.Get("Idempotency-Key")] = string(b)
		umu.Unlock()
	})}
	go up.Serve(upLn)
	defer up.Close()

	ordering := []string{"fifo", "none"}[rng.Intn(2)]
	start := time.Now()
	cmd, s, _ := startBinary(t, jsCrashConfig(t, ns.ClientURL(), upAddr, "upstream_down", ordering))
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	missing := func() []string {
		umu.Lock()
		defer umu.Unlock()
		var out []string
		for key, a := range ackedBy {
			if body, ok := seen[key]; !ok || body != a.body {
				out = append(out, key)
			}
		}
		return out
	}
	// Ack wait 3s, plus delivery, on a loaded machine; the check below
	// reports what is still missing.
	poll.Within(60*time.Second, func() bool { return len(missing()) == 0 })
	st, _ := getSpool(s.Admin)
	t.Logf("final start (ordering %s): delivery took %v; stream now: depth %d, dead %d", ordering, time.Since(start).Round(time.Millisecond), st.Total.Depth, st.Total.Dead)
	if m := missing(); len(m) > 0 {
		t.Errorf("%d of %d acknowledged requests never reached the upstream intact (seed %d), e.g. %v", len(m), len(ackedBy), seed, m[:min(len(m), 5)])
	}
}

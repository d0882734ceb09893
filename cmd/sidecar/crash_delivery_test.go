package main

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// deliveryLog is what the test's upstream saw of one message, by the
// message's own id (header X-Crash-Msg), whoever chose its idempotency key.
type deliveryLog struct {
	n        int      // 2xx answers given for it (deliveries)
	attempts int      // requests received, 503s included
	keys     []string // distinct Idempotency-Key values seen, in order
	body     string   // body of the first request
	badBody  bool     // a later request carried another body
	firstSeq int64    // global order of its first 2xx delivery
	lastLoop int      // loop of its last 2xx delivery
}

// crashUpstream is a loopback HTTP server that answers after a short random
// delay, fails a fraction of requests with 503 (so deliveries are retried),
// and records every request by message id.
type crashUpstream struct {
	failPct  int
	maxDelay time.Duration

	mu       sync.Mutex
	seen     map[string]*deliveryLog
	loop     int
	first    chan struct{} // closed at the loop's first 2xx delivery
	arrived  chan struct{} // given a token, if it has room, as each request arrives
	inFlight atomic.Int64
	seq      atomic.Int64
	requests atomic.Int64
	failed   atomic.Int64
}

func (u *crashUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.inFlight.Add(1)
	defer u.inFlight.Add(-1)
	select {
	case u.arrived <- struct{}{}:
	default:
	}
	u.requests.Add(1)
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "short body", http.StatusBadRequest)
		return
	}
	if u.maxDelay > 0 {
		// The answer is slow, so a kill often finds deliveries in flight.
		delay := time.NewTimer(time.Duration(rand.Int63n(int64(u.maxDelay))))
		select {
		case <-delay.C:
		case <-r.Context().Done(): // the sidecar died under the delivery
			delay.Stop()
			return
		}
	}
	id := r.Header.Get("X-Crash-Msg")
	key := r.Header.Get("Idempotency-Key")
	fail := rand.Intn(100) < u.failPct
	u.mu.Lock()
	d := u.seen[id]
	if d == nil {
		d = &deliveryLog{body: string(b), firstSeq: -1}
		u.seen[id] = d
	}
	d.attempts++
	if string(b) != d.body {
		d.badBody = true
	}
	if !slicesContains(d.keys, key) {
		d.keys = append(d.keys, key)
	}
	if !fail {
		d.n++
		if d.firstSeq < 0 {
			d.firstSeq = u.seq.Add(1)
		}
		d.lastLoop = u.loop
		if u.first != nil {
			close(u.first)
			u.first = nil
		}
	}
	u.mu.Unlock()
	if fail {
		u.failed.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// newLoop starts recording loop's deliveries and returns a channel closed
// at its first 2xx delivery.
func (u *crashUpstream) newLoop(loop int) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.loop = loop
	ch := make(chan struct{})
	u.first = ch
	return ch
}

// sentMsg is one request the app sent during a loop.
type sentMsg struct {
	id      string
	loop    int
	worker  int
	seq     int
	appKey  string // Idempotency-Key the app set; "" = the sidecar stamps one
	body    string
	spoolID string // from the 202; "" = not acknowledged
}

// TestCrashDeliveryLosesNothingAcknowledged runs the real binary with an
// async route (when: always) whose upstream is UP but slow and flaky (a
// random delay, some 503s), puts concurrent load on it, and SIGKILLs it at a
// random instant while deliveries are in flight: 0-200 ms after the loop's
// first delivery reached the upstream, and on most loops once the upstream
// is answering a delivery. It then restarts the binary on the same
// spool, lets it drain and checks that every request answered 202 reached
// the upstream at least once with one idempotency key (the app's when it set
// one), that with ordering: fifo each producer's messages were first
// delivered in the order it sent them, and that the spool ends empty (no
// pending, no dead). Duplicates are counted and reported, not failed.
// Loops alternate ordering fifo and none.
//
// SIDECAR_CRASH_DELIVERY_LOOPS sets the number of loops (default 10, 4 with
// -short); SIDECAR_CRASH_SEED replays a run's random choices.
func TestCrashDeliveryLosesNothingAcknowledged(t *testing.T) {
	loops := 10
	if testing.Short() {
		loops = 4
	}
	loops, seed, rng := crashLoops(t, "SIDECAR_CRASH_DELIVERY_LOOPS", loops)

	const (
		workers      = 8
		perWorkerMax = 60               // bounds one loop's requests per worker
		loadMax      = 5 * time.Second  // bounds one loop's load in time
		firstMax     = 10 * time.Second // wait for the first delivery
		drainMax     = 30 * time.Second // wait for the spool to drain
	)
	budget := time.Duration(loops) * 6 * time.Second // no new loop starts after this

	up := &crashUpstream{failPct: 10, maxDelay: 3 * time.Millisecond, seen: map[string]*deliveryLog{}, arrived: make(chan struct{}, 1)}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: up}
	go srv.Serve(upLn)
	defer srv.Close()
	upAddr := upLn.Addr().String()

	dir := t.TempDir()
	var all []*sentMsg
	start := time.Now()
	done := 0
	for loop := 0; loop < loops; loop++ {
		if time.Since(start) > budget {
			t.Logf("time budget %v spent after %d loops; stopping", budget, loop)
			break
		}
		ordering := []string{"fifo", "none"}[loop%2]
		cfg := crashConfig(t, dir, upAddr, "always", ordering)
		first := up.newLoop(loop)
		cmd, s, _ := startBinary(t, cfg)
		addr := strings.TrimPrefix(s.Listeners, "app=")

		tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		stop := make(chan struct{})
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			sent  []*sentMsg
			nErr  int
			other = map[int]int{}
		)
		deadline := time.Now().Add(loadMax)
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
					m := &sentMsg{id: fmt.Sprintf("m-%d-%d-%d", loop, w, seq), loop: loop, worker: w, seq: seq}
					m.body = fmt.Sprintf("loop %d worker %d seq %d %s", loop, w, seq, strings.Repeat("x", 200))
					if seq%2 == 0 {
						m.appKey = "k-" + m.id
					}
					req, err := http.NewRequest("POST", "http://"+addr+"/events?m="+m.id, strings.NewReader(m.body))
					if err != nil {
						panic(err)
					}
					req.Header.Set("Content-Type", "text/plain")
					req.Header.Set("X-Crash-Msg", m.id)
					if m.appKey != "" {
						req.Header.Set("Idempotency-Key", m.appKey)
					}
					resp, err := client.Do(req)
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					mu.Lock()
					switch {
					case err != nil:
						nErr++ // not acknowledged (the sidecar died under it)
					case resp.StatusCode == http.StatusAccepted && resp.Header.Get("Sidecar-Spool-Id") != "":
						m.spoolID = resp.Header.Get("Sidecar-Spool-Id")
					default:
						other[resp.StatusCode]++
					}
					sent = append(sent, m)
					mu.Unlock()
					if err != nil {
						return // the sidecar is gone: nothing more to send
					}
				}
			}()
		}

		// Kill at a random instant once deliveries are flowing.
		firstTimer := time.NewTimer(firstMax)
		select {
		case <-first:
			firstTimer.Stop()
		case <-firstTimer.C:
			close(stop)
			wg.Wait()
			t.Fatalf("loop %d (%s): no delivery reached the upstream within %v", loop, ordering, firstMax)
		}
		delay := time.Duration(rng.Intn(200)) * time.Millisecond
		time.Sleep(delay) // the random kill instant is the point of the test
		// On most loops, aim the kill at a delivery the upstream is
		// answering (a fifo route has at most one): wait up to 100 ms for
		// the next one to arrive if none is in flight.
		if rng.Intn(4) != 0 && up.inFlight.Load() == 0 {
			select {
			case <-up.arrived: // an earlier arrival, maybe answered by now
			default:
			}
			if up.inFlight.Load() == 0 {
				aim := time.NewTimer(100 * time.Millisecond)
				select {
				case <-up.arrived:
				case <-aim.C:
				}
				aim.Stop()
			}
		}
		inFlightAtKill := up.inFlight.Load()
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("loop %d: SIGKILL: %v", loop, err)
		}
		_ = cmd.Wait()
		close(stop)
		wg.Wait()
		tr.CloseIdleConnections()
		nAcked := 0
		for _, m := range sent {
			if m.spoolID != "" {
				nAcked++
			}
		}
		up.mu.Lock()
		deliveredAtKill := 0
		for _, m := range sent {
			if d := up.seen[m.id]; d != nil && d.n > 0 {
				deliveredAtKill++
			}
		}
		up.mu.Unlock()

		// Restart on the same spool with the upstream up: it must drain.
		drainStart := time.Now()
		cmd2, s2, _ := startBinary(t, cfg)
		st0, err := getSpool(s2.Admin)
		if err != nil {
			t.Fatalf("loop %d: %v", loop, err)
		}
		var st spoolTotal
		ended := poll.Within(drainMax, func() bool {
			st, err = getSpool(s2.Admin)
			// Dead letters never leave by themselves: stop at the first.
			return err == nil && (st.Total.Depth == 0 || st.Total.Dead > 0)
		})
		drained := ended && st.Total.Depth == 0 && st.Total.Dead == 0
		drainTook := time.Since(drainStart)
		if st.Failed || st0.Failed {
			t.Errorf("loop %d: the store reports failed after the restart", loop)
		}

		// Check this loop's messages.
		up.mu.Lock()
		var missing, problems []string
		dups, extra, unacked := 0, 0, 0
		for _, m := range sent {
			d := up.seen[m.id]
			if d == nil || d.n == 0 {
				if m.spoolID != "" {
					missing = append(missing, fmt.Sprintf("%s (spool id %s, app key %q)", m.id, m.spoolID, m.appKey))
				}
				continue
			}
			if m.spoolID == "" {
				unacked++
			}
			if d.n > 1 {
				dups++
				extra += d.n - 1
			}
			if len(d.keys) != 1 {
				problems = append(problems, fmt.Sprintf("%s: idempotency key changed between deliveries: %q", m.id, d.keys))
			} else if m.appKey != "" && d.keys[0] != m.appKey {
				problems = append(problems, fmt.Sprintf("%s: delivered with key %q, the app sent %q", m.id, d.keys[0], m.appKey))
			} else if d.keys[0] == "" {
				problems = append(problems, fmt.Sprintf("%s: delivered without an idempotency key", m.id))
			}
			if d.body != m.body || d.badBody {
				problems = append(problems, fmt.Sprintf("%s: delivered body differs from the one sent", m.id))
			}
		}
		if ordering == "fifo" {
			// Each producer waits for its 202 before sending the next
			// message, so its messages are appended in seq order, and fifo
			// must first-deliver them in that order, across the crash too.
			last := map[int]*sentMsg{}
			sort.Slice(sent, func(i, j int) bool {
				if sent[i].worker != sent[j].worker {
					return sent[i].worker < sent[j].worker
				}
				return sent[i].seq < sent[j].seq
			})
			for _, m := range sent {
				d := up.seen[m.id]
				if d == nil || d.firstSeq < 0 {
					continue
				}
				if p := last[m.worker]; p != nil && up.seen[p.id].firstSeq > d.firstSeq {
					problems = append(problems, fmt.Sprintf("fifo order broken: %s first delivered after %s", p.id, m.id))
				}
				last[m.worker] = m
			}
		}
		up.mu.Unlock()

		t.Logf("loop %d (%s): killed %v after the first delivery with %d deliveries in flight at the upstream; %d sent, %d acknowledged, %d errors, other answers %v, %d delivered before the kill; restart: depth %d dead %d torn_tail %v corrupt %d; drained in %v; %d delivered more than once (%d extra), %d delivered but never acknowledged",
			loop, ordering, delay, inFlightAtKill, len(sent), nAcked, nErr, other, deliveredAtKill,
			st0.Total.Depth, st0.Total.Dead, st0.TornTail, st0.CorruptRecords, drainTook.Round(time.Millisecond), dups, extra, unacked)
		if nAcked == 0 {
			t.Errorf("loop %d: no request was acknowledged", loop)
		}
		if !drained {
			t.Errorf("loop %d: the spool did not end empty within %v: depth %d, dead %d (err %v)", loop, drainMax, st.Total.Depth, st.Total.Dead, err)
		}
		for _, p := range problems {
			t.Errorf("loop %d: %s", loop, p)
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			t.Errorf("loop %d: %d of %d acknowledged requests never reached the upstream (seed %d):\n%s", loop, len(missing), nAcked, seed, strings.Join(missing, "\n"))
		}
		all = append(all, sent...)
		// Stop the drained instance with SIGKILL too: the next start must
		// not find anything pending (a redelivery would count as a
		// duplicate below).
		_ = cmd2.Process.Signal(syscall.SIGKILL)
		_ = cmd2.Wait()
		done++
		if t.Failed() {
			break
		}
	}

	// Totals, redeliveries in later loops included.
	up.mu.Lock()
	defer up.mu.Unlock()
	nAcked, dups, extra, later := 0, 0, 0, 0
	for _, m := range all {
		if m.spoolID != "" {
			nAcked++
		}
		if d := up.seen[m.id]; d != nil && d.n > 1 {
			dups++
			extra += d.n - 1
			if d.lastLoop > m.loop {
				later++
			}
		}
	}
	t.Logf("%d loops in %v: %d requests sent, %d acknowledged; upstream: %d requests, %d answered 503, %d distinct messages delivered; %d delivered more than once (%d extra deliveries; %d of them redelivered in a later loop, after the drained instance was killed)",
		done, time.Since(start).Round(time.Millisecond), len(all), nAcked, up.requests.Load(), up.failed.Load(), len(up.seen), dups, extra, later)
}

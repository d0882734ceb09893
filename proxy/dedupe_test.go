package proxy

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
)

// dedupeStore is a file store whose route ev de-duplicates within window.
func dedupeStore(t *testing.T, window time.Duration) *spool.FileStore {
	return openStore(t, t.TempDir(), spool.FileOptions{Routes: map[string]spool.Limits{"ev": {DedupeWindow: window}}})
}

// Two POSTs with one key, one after the other: one delivery, one ID, the
// same answer.
func TestAsyncDedupeSequential(t *testing.T) {
	rec := newRecorder(t, nil)
	st := dedupeStore(t, time.Minute)
	sc := startSidecarWith(t, asyncRoute(`when: always, dedupe_window: 1m`), []Option{WithSpool(st)}, rec.upstream)
	resp1, body1 := send(t, "POST", sc.url("/a"), []byte("one"), "Idempotency-Key", "k-1")
	id := spooled(t, resp1, body1)
	poll.Until(t, 10*time.Second, "first delivery", func() bool { return len(rec.got()) == 1 && depth(st) == 0 })
	resp2, body2 := send(t, "POST", sc.url("/a"), []byte("one again"), "Idempotency-Key", "k-1")
	if got := spooled(t, resp2, body2); got != id || body2 != body1 {
		t.Fatalf("repeat answered %s %q, want the first answer %s %q", got, body2, id, body1)
	}
	// A request without a key, and one with another key, are stored.
	for _, kv := range [][]string{nil, {"Idempotency-Key", "k-2"}} {
		resp, body := send(t, "POST", sc.url("/a"), []byte("x"), kv...)
		if got := spooled(t, resp, body); got == id {
			t.Fatalf("request with key %v answered with the ID of k-1", kv)
		}
	}
	poll.Until(t, 10*time.Second, "deliveries", func() bool { return len(rec.got()) == 3 && depth(st) == 0 })
	if n := sc.srv.Deliveries()["ev"].Deduplicated; n != 1 {
		t.Errorf("Deliveries()[ev].Deduplicated = %d, want 1", n)
	}
	for _, r := range rec.got() {
		if r.key == "k-1" && r.body != "one" {
			t.Errorf("delivered k-1 with body %q, want the first request's", r.body)
		}
	}
}

// Concurrent POSTs with one key store one message and all get its ID.
func TestAsyncDedupeConcurrent(t *testing.T) {
	rec := newRecorder(t, nil)
	st := dedupeStore(t, time.Minute)
	sc := startSidecarWith(t, asyncRoute(`when: always, dedupe_window: 1m`), []Option{WithSpool(st)}, rec.upstream)
	const n = 16
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", sc.url("/c"), nil)
			req.Header.Set("Idempotency-Key", "same")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("status %d, want 202", resp.StatusCode)
			}
			ids[i] = resp.Header.Get(HeaderSpoolID)
		})
	}
	wg.Wait()
	for i := range ids {
		if ids[i] == "" || ids[i] != ids[0] {
			t.Fatalf("request %d got ID %q, request 0 %q: want one ID", i, ids[i], ids[0])
		}
	}
	poll.Until(t, 10*time.Second, "delivery", func() bool { return len(rec.got()) >= 1 && depth(st) == 0 })
	if s := st.Stats(); s.Appends != 1 {
		t.Fatalf("%d messages appended, want 1", s.Appends)
	}
	if got := len(rec.got()); got != 1 {
		t.Fatalf("%d deliveries, want 1", got)
	}
}

// With when: upstream_down, a repeat of a spooled request is answered
// with its 202 without another call upstream.
func TestAsyncDedupeUpstreamDown(t *testing.T) {
	calls := 0
	var mu sync.Mutex
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		mu.Lock()
		calls++
		mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	st := dedupeStore(t, time.Minute)
	sc := startSidecarWith(t, asyncRoute(`when: upstream_down, dedupe_window: 1m, backoff: {base: 1h, max: 1h}`), []Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "POST", sc.url("/d"), []byte("x"), "Idempotency-Key", "down-1")
	id := spooled(t, resp, body)
	mu.Lock()
	before := calls
	mu.Unlock()
	resp, body = send(t, "POST", sc.url("/d"), []byte("x"), "Idempotency-Key", "down-1")
	if got := spooled(t, resp, body); got != id {
		t.Fatalf("repeat answered %s, want %s", got, id)
	}
	mu.Lock()
	after := calls
	mu.Unlock()
	// The deliverer may have made its first delivery meanwhile; the
	// repeat itself calls nobody.
	if after-before > 1 {
		t.Fatalf("the repeat made %d upstream calls, want none", after-before)
	}
	if s := st.Stats(); s.Appends != 1 {
		t.Fatalf("%d messages appended, want 1", s.Appends)
	}
}

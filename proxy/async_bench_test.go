package proxy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
)

// BenchmarkAsyncEnqueue is the sidecar's own cost of accepting a 1 KiB
// POST on a when: always route: reading the body, building the message,
// encoding and appending it, and writing the 202. The store syncs on a
// long interval, so the benchmark measures CPU, not the disk.
func BenchmarkAsyncEnqueue(b *testing.B) {
	st, err := spool.OpenFile(b.TempDir(), spool.FileOptions{Fsync: spool.FsyncInterval, Interval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	h, _ := newHandler(b, asyncRoute(`when: always`), st)
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	ctx := guardedContext(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequestWithContext(ctx, "POST", "http://127.0.0.1/events", bytes.NewReader(body))
			r.RemoteAddr = "127.0.0.1:5000"
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusAccepted {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

// BenchmarkAsyncEnqueueDedupe is BenchmarkAsyncEnqueue on a route with
// dedupe_window, every request with a key of its own: each is looked up,
// stored and its key kept (async.dedupe_window's cost when nothing
// repeats).
func BenchmarkAsyncEnqueueDedupe(b *testing.B) {
	st, err := spool.OpenFile(b.TempDir(), spool.FileOptions{Fsync: spool.FsyncInterval, Interval: time.Hour,
		Routes: map[string]spool.Limits{"ev": {DedupeWindow: time.Hour}}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	h, _ := newHandler(b, asyncRoute(`when: always, dedupe_window: 1h`), st)
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	ctx := guardedContext(b)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequestWithContext(ctx, "POST", "http://127.0.0.1/events", bytes.NewReader(body))
			r.RemoteAddr = "127.0.0.1:5000"
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("Idempotency-Key", strconv.FormatInt(n.Add(1), 36))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusAccepted {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/spool"
)

// BenchmarkAsyncEnqueue is the sidecar's own cost of accepting a 1 KiB
// POST on a when: always route: reading the body, building the message,
// encoding and appending it, and writing the 202. The store syncs on a
// long interval, so the benchmark measures CPU, not the disk.
func BenchmarkAsyncEnqueue(b *testing.B) {
	yaml := strings.Replace(asyncRoute(`when: always`), "UPSTREAM0", "http://127.0.0.1:1", 1)
	cfg, err := config.Parse("b.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		b.Fatal(err)
	}
	snap, err := Build(cfg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	st, err := spool.OpenFile(b.TempDir(), spool.FileOptions{Fsync: spool.FsyncInterval, Interval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var cur atomic.Pointer[Snapshot]
	cur.Store(snap)
	h := &handler{listener: "app", snap: &cur, spool: &spooler{store: st, wakes: map[string]chan struct{}{}}}
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequest("POST", "http://127.0.0.1/events", bytes.NewReader(body))
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

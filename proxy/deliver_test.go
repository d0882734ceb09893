package proxy

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
)

func TestDeliveriesHeadBlockedUntilDelivered(t *testing.T) {
	var up atomic.Bool
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, backoff: {base: 5ms, max: 20ms}`), []Option{WithSpool(st)}, rec.upstream)
	if got := sc.srv.Deliveries(); len(got) != 1 {
		t.Fatalf("Deliveries() = %v, want one entry, for route ev", got)
	}
	var ids []string
	for _, p := range []string{"/1", "/2"} {
		resp, body := send(t, "POST", sc.url(p), nil)
		ids = append(ids, spooled(t, resp, body))
	}
	var ds DeliveryStatus
	poll.Until(t, 10*time.Second, "a blocked head", func() bool {
		ds = sc.srv.Deliveries()["ev"]
		return ds.Head != nil && ds.Head.Blocked && ds.Retried >= 2
	})
	if ds.Head.ID != ids[0] || ds.Head.Attempts < 1 || ds.Head.NextAttempt.IsZero() || ds.Delivered != 0 {
		t.Errorf("Deliveries()[ev] while down = %+v head %+v, want head %s blocked with attempts and a due time, none delivered", ds, *ds.Head, ids[0])
	}
	up.Store(true)
	poll.Until(t, 10*time.Second, "delivery of both", func() bool {
		ds = sc.srv.Deliveries()["ev"]
		return ds.Delivered == 2 && ds.Head == nil && depth(st) == 0
	})
	if ds.DeadLettered != 0 {
		t.Errorf("Deliveries()[ev] after recovery = %+v, want nothing dead-lettered", ds)
	}
}

func TestDeliveriesCountsDeadLetters(t *testing.T) {
	rec := newRecorder(t, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusBadRequest) })
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, ordering: none, max_in_flight: 2`), []Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "POST", sc.url("/bad"), nil)
	spooled(t, resp, body)
	poll.Until(t, 10*time.Second, "a dead letter counted", func() bool { return sc.srv.Deliveries()["ev"].DeadLettered == 1 })
	if ds := sc.srv.Deliveries()["ev"]; ds.Delivered != 0 || ds.Retried != 0 || ds.Head != nil {
		t.Errorf("Deliveries()[ev] = %+v, want only one dead letter and no head (ordering none)", ds)
	}
}

// TestParallelRetryHonoursBackoff: with ordering none a retry comes after
// its back-off, not after the deliverer's idle poll (1s) or the next
// append.
func TestParallelRetryHonoursBackoff(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		if n == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, ordering: none, max_in_flight: 2, backoff: {base: 10ms, max: 20ms}`),
		[]Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "POST", sc.url("/once"), nil)
	spooled(t, resp, body)
	poll.Until(t, 10*time.Second, "the retry delivered", func() bool { return sc.srv.Deliveries()["ev"].Delivered == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 2 {
		t.Fatalf("upstream saw %d requests, want 2", len(at))
	}
	// The back-off is at most 20ms; the idle poll this must not wait for
	// is maxIdle.
	if gap := at[1].Sub(at[0]); gap >= maxIdle*9/10 {
		t.Errorf("retry came %v after the 503, want about the 20ms back-off, well under %v", gap, maxIdle)
	}
}

// TestShutdownCancelsDeliveryInFlight: Shutdown lets a delivery in flight
// run until its context ends, then cancels it; the message stays pending
// with no attempt counted, and no deliverer runs afterwards.
func TestShutdownCancelsDeliveryInFlight(t *testing.T) {
	arrived := make(chan struct{}, 1)
	canceled := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
		close(canceled)
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always`), []Option{WithSpool(st)}, up)
	resp, body := send(t, "POST", sc.url("/slow"), nil)
	id := spooled(t, resp, body)
	<-arrived

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := sc.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a delivery in flight = %v, want it to name the deadline", err)
	}
	<-canceled
	if got := sc.srv.Deliveries(); len(got) != 0 {
		t.Errorf("Deliveries() after Shutdown = %v, want none", got)
	}
	_, info, err := st.Get(id)
	if err != nil || info.Attempts != 0 || info.State != spool.Pending {
		t.Errorf("Get(%s) after Shutdown = %+v, %v; want pending with no attempt counted", id, info, err)
	}
}

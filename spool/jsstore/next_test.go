package jsstore_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestFIFOHoldsRoute checks that a fifo route's head, retried later,
// holds back the rest of the route until it is due, as the deliverer's
// Next(route, far future) expects.
func TestFIFOHoldsRoute(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Routes: map[string]jsstore.RouteOptions{"f": {FIFO: true}}})
	var ids []string
	for i := range 3 {
		m := message("f", i)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append() = %v", err)
		}
		ids = append(ids, m.ID)
	}
	head := next(t, s, "f")
	if head.ID != ids[0] {
		t.Fatalf("Next() = %s, want the head %s", head.ID, ids[0])
	}
	if m, ok, _ := s.Next("f", time.Now()); ok {
		t.Fatalf("Next() while the head is leased = %s, want nothing", m.ID)
	}
	due := time.Now().Add(300 * time.Millisecond)
	if err := s.RetryLater(head.ID, due, 1); err != nil {
		t.Fatalf("RetryLater() = %v", err)
	}
	if m, ok, _ := s.Next("f", time.Now()); ok {
		t.Fatalf("Next() while the head waits = %s, want nothing", m.ID)
	}
	if at, ok := s.NextDue("f"); !ok || !at.Equal(due) {
		t.Errorf("NextDue(f) = %v, %v, want %v, true", at, ok, due)
	}
	// The deliverer leases the head whatever its due time and reads it.
	again := next(t, s, "f") // polls with time.Now: returns once due
	if again.ID != ids[0] || again.Attempts != 1 || time.Now().Before(due) {
		t.Fatalf("Next() = %s (%d attempts) at %v, want %s (1 attempt) after %v", again.ID, again.Attempts, time.Now(), ids[0], due)
	}
	if _, info, err := s.Get(again.ID); err != nil || !info.NextAttempt.Equal(due) || !info.Leased {
		t.Errorf("Get(head) = %+v, %v, want leased with NextAttempt %v", info, err, due)
	}
	// The deliverer's fifo step asks for the head whatever its due time
	// (Next with a far now) and reads its due time with Get.
	due = time.Now().Add(time.Hour)
	if err := s.RetryLater(again.ID, due, 2); err != nil {
		t.Fatalf("RetryLater() = %v", err)
	}
	// The server may keep the head until it is due, or hand it out
	// early; never another message of the route.
	var (
		early *spool.Message
		ok    bool
		err   error
	)
	poll.Within(300*time.Millisecond, func() bool {
		early, ok, err = s.Next("f", time.Unix(0, math.MaxInt64))
		return ok || err != nil
	})
	if err != nil {
		t.Fatalf("Next(far future) = %v", err)
	}
	if ok && (early.ID != ids[0] || early.Attempts != 2) {
		t.Fatalf("Next(far future) = %s (%d attempts), want %s (2)", early.ID, early.Attempts, ids[0])
	}
	if _, info, err := s.Get(again.ID); err != nil || !info.NextAttempt.Equal(due) || info.Attempts != 2 {
		t.Errorf("Get(head) = %+v, %v, want NextAttempt %v, 2 attempts", info, err, due)
	}
	// Settling the waiting head (here unleased: it is deleted) frees the
	// route.
	if err := s.Ack(again.ID); err != nil {
		t.Fatalf("Ack() = %v", err)
	}
	for _, want := range ids[1:] {
		m := next(t, s, "f")
		if m.ID != want {
			t.Fatalf("Next() = %s, want %s (arrival order)", m.ID, want)
		}
		if m, ok, _ := s.Next("f", time.Now()); ok {
			t.Fatalf("Next() while %s is leased = %s, want nothing", want, m.ID)
		}
		if err := s.Ack(m.ID); err != nil {
			t.Fatalf("Ack() = %v", err)
		}
	}
}

// TestConsumerDeletedBehindTheStore: an operator deleting a route's
// consumer costs one failed Next; the store creates it again.
func TestConsumerDeletedBehindTheStore(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Stream: "CDEL", Routes: map[string]jsstore.RouteOptions{"r": {}}})
	m := message("r", 1)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := js.DeleteConsumer(t.Context(), "CDEL", "sidecar_r72"); err != nil {
		t.Fatalf("DeleteConsumer() = %v", err)
	}
	_, _, _ = s.Next("r", time.Now()) // may fail once
	if got := next(t, s, "r"); got.ID != m.ID {
		t.Errorf("Next() after the consumer was deleted = %s, want %s", got.ID, m.ID)
	}
}

// TestNextDueForgetsOthersDeliveries: a message this store retried and
// another store sharing the stream delivered must not stay in NextDue
// (the deliverer would poll every millisecond for it).
func TestNextDueForgetsOthersDeliveries(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "NEXTDUE", AckWait: 2 * time.Second}
	a := openStore(t, srv, opts)
	b := openStore(t, srv, opts)
	m := message("r", 1)
	if err := a.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	next(t, a, "r")
	due := time.Now().Add(200 * time.Millisecond)
	if err := a.RetryLater(m.ID, due, 1); err != nil {
		t.Fatalf("RetryLater() = %v", err)
	}
	got, ok := nextWithin(t, b, "r", 10*time.Second)
	if !ok || got.ID != m.ID {
		t.Fatalf("Next() on the second store = %v, %v, want %s once due", got, ok, m.ID)
	}
	if err := b.Ack(m.ID); err != nil {
		t.Fatalf("Ack() = %v", err)
	}
	var at time.Time
	if !poll.Within(20*time.Second, func() bool {
		var waiting bool
		at, waiting = a.NextDue("r")
		return !waiting
	}) {
		t.Fatalf("NextDue(r) = %v, true %v after the message was delivered elsewhere; want it forgotten after AckWait", at, time.Since(at))
	}
}

// TestNextDuringClose closes the store while Next has fetched a message:
// Next returns ErrClosed and the message is handed back at once, not
// after AckWait.
func TestNextDuringClose(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "NEXTCLOSE", AckWait: 20 * time.Second}
	a := openStore(t, srv, opts)
	b := openStore(t, srv, opts)
	m := message("r", 1)
	if err := a.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	closed := make(chan struct{})
	a.SetFetchedHook(func() {
		go func() { _ = a.Close(); close(closed) }()
		// Runs in the test's goroutine, inside Next: wait for Close to
		// begin, which no signal announces.
		poll.Until(t, 10*time.Second, "Close to begin", func() bool { return errors.Is(a.Ready(), spool.ErrClosed) })
	})
	var (
		during *spool.Message
		ok     bool
		err    error
	)
	if !poll.Within(10*time.Second, func() bool {
		during, ok, err = a.Next("r", time.Now())
		return ok || err != nil
	}) {
		t.Fatal("Next() fetched nothing for 10s")
	}
	if ok {
		t.Fatalf("Next() during Close = %s, want %v", during.ID, spool.ErrClosed)
	}
	if !errors.Is(err, spool.ErrClosed) {
		t.Fatalf("Next() during Close = %v, want %v", err, spool.ErrClosed)
	}
	<-closed
	start := time.Now()
	got, ok := nextWithin(t, b, "r", 10*time.Second)
	if !ok || got.ID != m.ID {
		t.Fatalf("Next() on a second store = %v, %v; want %s handed back at once (took %v)", got, ok, m.ID, time.Since(start))
	}
}

// TestUnparseableSubject: a message published around the store on a
// route's pending subjects with an ID token that does not decode is
// moved to the dead letters, not deleted, and does not block the route.
func TestUnparseableSubject(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Stream: "FOREIGN", Routes: map[string]jsstore.RouteOptions{"r": {FIFO: true}}})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(t.Context(), "FOREIGN.~zz.pending.r72", []byte("foreign")); err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	ok := message("r", 1)
	if err := s.Append(t.Context(), ok); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	if _, _, err := s.Next("r", time.Now()); err == nil || !strings.Contains(err.Error(), "does not parse") {
		t.Errorf("Next() on the foreign message = %v, want an error about the subject", err)
	}
	// Its data is not an envelope: Get reports it damaged, and dead.
	_, info, err := s.Get("~zz")
	var de *spool.DamagedError
	if (err != nil && !errors.As(err, &de)) || info.State != spool.Dead || !strings.Contains(info.DeadReason, "does not parse") {
		t.Errorf("Get(~zz) = %+v, %v, want a dead letter kept (not deleted)", info, err)
	}
	if got := next(t, s, "r"); got.ID != ok.ID {
		t.Errorf("Next() after the foreign message = %s, want %s", got.ID, ok.ID)
	}
}

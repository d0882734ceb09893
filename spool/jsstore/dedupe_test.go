package jsstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

func keyedMessage(route, key string) *spool.Message {
	m := message(route, 0)
	m.IdempotencyKey = key
	return m
}

// appendKeyed appends a keyed message and returns the ID it was answered
// with and whether it was a duplicate.
func appendKeyed(t *testing.T, s spool.Deduper, route, key string) (string, bool) {
	t.Helper()
	m := keyedMessage(route, key)
	err := s.AppendOnce(t.Context(), m)
	switch {
	case err == nil:
		return m.ID, false
	case errors.Is(err, spool.ErrDuplicate):
		return m.ID, true
	}
	t.Fatalf("Append(key %s) = %v", key, err)
	return "", false
}

// A repeated key gets the first message's ID, whether the message is
// pending, delivered (gone from the stream: the stream's duplicate
// window answers) or appended by another store sharing the stream, and
// whether the repeats come one after the other or at once.
func TestDedupeByKey(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "DEDUPE", Routes: map[string]jsstore.RouteOptions{"r": {DedupeWindow: 10 * time.Minute}}}
	s := openStore(t, srv, opts)
	first, dup := appendKeyed(t, s, "r", "k1")
	if dup {
		t.Fatal("first Append is a duplicate")
	}
	if id, dup := appendKeyed(t, s, "r", "k1"); !dup || id != first {
		t.Fatalf("repeat while pending = %s, duplicate %v; want %s, true", id, dup, first)
	}
	if id, ok, err := s.Duplicate(t.Context(), "r", "k1"); err != nil || !ok || id != first {
		t.Fatalf("Duplicate(r, k1) = %s, %v, %v; want %s, true, nil", id, ok, err, first)
	}
	// Another route: stored.
	if id, dup := appendKeyed(t, s, "other", "k1"); dup || id == first {
		t.Fatalf("route other, key k1 = %s, duplicate %v; want a new message", id, dup)
	}
	// Delivered: gone from the work-queue stream, still a duplicate.
	m := next(t, s, "r")
	if m.ID != first {
		t.Fatalf("Next = %s, want %s", m.ID, first)
	}
	if err := s.Ack(m.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(first); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("Get(acked) = %v, want ErrNotFound", err)
	}
	if id, dup := appendKeyed(t, s, "r", "k1"); !dup || id != first {
		t.Fatalf("repeat after delivery = %s, duplicate %v; want %s, true", id, dup, first)
	}
	// A second store on the stream (another sidecar, or this one after a
	// restart) answers alike.
	s2 := openStore(t, srv, opts)
	if id, dup := appendKeyed(t, s2, "r", "k1"); !dup || id != first {
		t.Fatalf("repeat through a second store = %s, duplicate %v; want %s, true", id, dup, first)
	}
	// Concurrent Appends of a new key: one stores.
	var stored atomic.Int32
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		st := spool.Deduper(s)
		if i%2 == 1 {
			st = s2
		}
		wg.Go(func() {
			m := keyedMessage("r", "k2")
			err := st.AppendOnce(t.Context(), m)
			if err == nil {
				stored.Add(1)
			} else if !errors.Is(err, spool.ErrDuplicate) {
				t.Errorf("Append = %v", err)
			}
			ids[i] = m.ID
		})
	}
	wg.Wait()
	if stored.Load() != 1 {
		t.Fatalf("%d concurrent Appends stored, want 1", stored.Load())
	}
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("Append %d got %s, Append 0 %s; want one ID", i, ids[i], ids[0])
		}
	}
	infos, err := s.List("r", spool.Pending, "", 0)
	if err != nil || len(infos) != 1 || infos[0].ID != ids[0] {
		t.Fatalf("List(r) = %v, %v; want only %s", infos, err, ids[0])
	}
}

// A route's window turned off by a reload and on again: while off nothing
// is de-duplicated; on again, a key seen before is answered with its first
// ID, whether its message is still stored or was delivered (the stream's
// duplicate window, which the sidecar's reload does not touch, answers).
func TestDedupeWindowOffAndOnAgain(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	on := map[string]jsstore.RouteOptions{"r": {DedupeWindow: 10 * time.Minute}}
	s := openStore(t, srv, jsstore.Options{Stream: "TOGGLE", Routes: on})
	delivered, _ := appendKeyed(t, s, "r", "k1")
	if m := next(t, s, "r"); m.ID != delivered {
		t.Fatalf("Next = %s, want %s", m.ID, delivered)
	} else if err := s.Ack(m.ID); err != nil {
		t.Fatal(err)
	}
	pending, _ := appendKeyed(t, s, "r", "k2")

	s.SetRoutes(map[string]jsstore.RouteOptions{"r": {}})
	for key, first := range map[string]string{"k1": delivered, "k2": pending} {
		if id, dup := appendKeyed(t, s, "r", key); dup || id == first {
			t.Errorf("AppendOnce(%s) with the window off = %s, duplicate %v; want a new message", key, id, dup)
		}
		if id, ok, err := s.Duplicate(t.Context(), "r", key); err != nil || ok {
			t.Errorf("Duplicate(%s) with the window off = %s, %v, %v; want not found", key, id, ok, err)
		}
	}

	s.SetRoutes(on)
	for key, first := range map[string]string{"k1": delivered, "k2": pending} {
		if id, dup := appendKeyed(t, s, "r", key); !dup || id != first {
			t.Errorf("AppendOnce(%s) on again = %s, duplicate %v; want %s, true", key, id, dup, first)
		}
	}
}

// The stream's duplicate window is made as long as the longest dedupe
// window with create; without, a shorter one makes Open fail.
func TestDedupeWindowSetsStreamDuplicates(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	routes := map[string]jsstore.RouteOptions{"r": {DedupeWindow: time.Hour}}
	openStore(t, srv, jsstore.Options{Stream: "DUPW", Routes: routes})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	str, err := js.Stream(t.Context(), "DUPW")
	if err != nil {
		t.Fatal(err)
	}
	if d := str.CachedInfo().Config.Duplicates; d != time.Hour {
		t.Fatalf("stream duplicate window = %v, want 1h", d)
	}
	_, err = jsstore.Open(t.Context(), jsstore.Options{URL: srv.ClientURL(), Stream: "DUPW", Create: false,
		Routes: map[string]jsstore.RouteOptions{"r": {DedupeWindow: 2 * time.Hour}}})
	if err == nil || !strings.Contains(err.Error(), "dedupe_window") {
		t.Fatalf("Open(create false, window 2h over the stream's 1h) = %v, want an error naming dedupe_window", err)
	}
	s, err := jsstore.Open(t.Context(), jsstore.Options{URL: srv.ClientURL(), Stream: "DUPW", Create: false, Routes: routes})
	if err != nil {
		t.Fatalf("Open(create false, window 1h) = %v", err)
	}
	s.Close()
}

// lockedBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A reload that lengthens a route's dedupe window past the stream's
// duplicate window makes the stream's as long with create; one that
// shortens it leaves the stream's. Without create the stream is left as
// it is and the shortfall is logged, naming dedupe_window.
func TestDedupeReloadLengthensStreamDuplicates(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	routes := func(w time.Duration) map[string]jsstore.RouteOptions {
		return map[string]jsstore.RouteOptions{"r": {DedupeWindow: w}}
	}
	s := openStore(t, srv, jsstore.Options{Stream: "RELOADW", Routes: routes(10 * time.Minute)})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	duplicates := func() time.Duration {
		t.Helper()
		str, err := js.Stream(t.Context(), "RELOADW")
		if err != nil {
			t.Fatal(err)
		}
		return str.CachedInfo().Config.Duplicates
	}
	if d := duplicates(); d != 10*time.Minute {
		t.Fatalf("stream duplicate window at open = %v, want 10m", d)
	}
	s.SetRoutes(routes(time.Hour))
	if d := duplicates(); d != time.Hour {
		t.Fatalf("stream duplicate window after a reload to 1h = %v, want 1h", d)
	}
	s.SetRoutes(routes(5 * time.Minute))
	if d := duplicates(); d != time.Hour {
		t.Fatalf("stream duplicate window after a reload to 5m = %v, want 1h (not shortened)", d)
	}

	var logs lockedBuffer
	fixed, err := jsstore.Open(t.Context(), jsstore.Options{URL: srv.ClientURL(), Stream: "RELOADW", Create: false,
		Routes: routes(time.Hour), Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		ConnectTimeout: 5 * time.Second, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("Open(create false) = %v", err)
	}
	defer fixed.Close()
	fixed.SetRoutes(routes(2 * time.Hour))
	if d := duplicates(); d != time.Hour {
		t.Fatalf("stream duplicate window after a reload to 2h without create = %v, want 1h", d)
	}
	if got := logs.String(); !strings.Contains(got, "dedupe_window") || !strings.Contains(got, "level=ERROR") {
		t.Fatalf("log after a reload to 2h without create = %q, want an error naming dedupe_window", got)
	}
}

// dedupeIDs differ per route and key.
func TestDedupeIDsPerRouteAndKey(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Routes: map[string]jsstore.RouteOptions{"a": {DedupeWindow: time.Minute}, "b": {DedupeWindow: time.Minute}}})
	seen := map[string]string{}
	for _, rk := range [][2]string{{"a", "x"}, {"a", "y"}, {"b", "x"}} {
		id, dup := appendKeyed(t, s, rk[0], rk[1])
		if dup {
			t.Fatalf("route %s key %s: duplicate", rk[0], rk[1])
		}
		if prev, ok := seen[id]; ok {
			t.Fatalf("route %s key %s got the ID of %s", rk[0], rk[1], prev)
		}
		seen[id] = fmt.Sprint(rk)
	}
}

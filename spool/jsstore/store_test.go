package jsstore_test

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
	"github.com/sidecar-proxy/sidecar/spool/spooltest"
)

// startServer starts an embedded JetStream server on a random loopback
// port (or port, if not 0) with its data in dir, and shuts it down at the
// end of the test.
func startServer(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("server.NewServer() = %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("NATS server not ready within 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

var streams atomic.Int64

// openStore opens a store on srv with a stream of its own.
func openStore(t *testing.T, srv *server.Server, opts jsstore.Options) *jsstore.Store {
	t.Helper()
	if opts.Stream == "" {
		opts.Stream = fmt.Sprintf("T%d", streams.Add(1))
	}
	opts.URL = srv.ClientURL()
	opts.Create = true
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second // generous: many stores open at once on a loaded CI machine
	}
	s, err := jsstore.Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("jsstore.Open(%s) = %v, want nil", opts.Stream, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	spooltest.Run(t, spooltest.Harness{
		Open: func(t *testing.T, lim spooltest.Limits) (spool.Store, func() spool.Store) {
			opts := jsstore.Options{
				Stream:      fmt.Sprintf("T%d", streams.Add(1)),
				MaxMessages: lim.MaxMessages,
				MaxBytes:    lim.MaxBytes,
			}
			return openStore(t, srv, opts), func() spool.Store { return openStore(t, srv, opts) }
		},
		ServerSideDelays: true,
		LeaseRequired:    true,
		ReplayRequeues:   true,
		Parallel:         true,
	})
}

func message(route string, n int) *spool.Message {
	return &spool.Message{
		Route:  route,
		Method: http.MethodPost,
		Target: "/e",
		Header: http.Header{"Content-Type": {"text/plain"}},
		Body:   fmt.Appendf(nil, "m%d", n),
	}
}

// next polls Next until it returns a message or 5s pass.
func next(t *testing.T, s spool.Store, route string) *spool.Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, ok, err := s.Next(route, time.Now())
		if err != nil {
			t.Fatalf("Next(%s) = %v", route, err)
		}
		if ok {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("Next(%s) returned nothing for 5s", route)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		m, ok, err := s.Next("f", time.Unix(0, math.MaxInt64))
		if err != nil {
			t.Fatalf("Next(far future) = %v", err)
		}
		if ok {
			if m.ID != ids[0] || m.Attempts != 2 {
				t.Fatalf("Next(far future) = %s (%d attempts), want %s (2)", m.ID, m.Attempts, ids[0])
			}
			break
		}
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

// TestDisconnect shuts the server down under a store: Append fails at once
// and never reports success; a new server on the same data and port takes
// over and the earlier messages are still there.
func TestDisconnect(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	p := srv.Addr().(*net.TCPAddr).Port
	s := openStore(t, srv, jsstore.Options{Stream: "DISC"})
	before := message("r", 1)
	if err := s.Append(t.Context(), before); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	deadline := time.Now().Add(5 * time.Second)
	for s.Connected() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Ready(); !errors.Is(err, jsstore.ErrDisconnected) {
		t.Errorf("Ready(disconnected) = %v, want %v", err, jsstore.ErrDisconnected)
	}
	start := time.Now()
	err := s.Append(t.Context(), message("r", 2))
	if err == nil || !errors.Is(err, jsstore.ErrDisconnected) {
		t.Errorf("Append(disconnected) = %v, want %v", err, jsstore.ErrDisconnected)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Append(disconnected) took %v, want it to fail fast", d)
	}

	startServer(t, dir, p)
	deadline = time.Now().Add(15 * time.Second)
	for !s.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("store did not reconnect within 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Ready(); err != nil {
		t.Errorf("Ready(reconnected) = %v, want nil", err)
	}
	after := message("r", 3)
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := s.Append(t.Context(), after)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Append(after reconnect) = %v, want nil", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{before.ID, after.ID} {
		if m := next(t, s, "r"); m.ID != want {
			t.Errorf("Next() after restart = %s, want %s", m.ID, want)
		}
	}
}

// TestDeduplication publishes a message ID twice, as a publish retried
// after a lost acknowledgement does: the stream keeps one.
func TestDeduplication(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Stream: "DEDUP"})
	m := message("r", 1)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	// Publish the same Nats-Msg-Id directly, around the store.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("nats.Connect() = %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ack, err := js.Publish(t.Context(), "DEDUP."+m.ID+".pending.r72", []byte("again"), jetstream.WithMsgID(m.ID))
	if err != nil || !ack.Duplicate {
		t.Fatalf("Publish(same Nats-Msg-Id) = %+v, %v, want a duplicate", ack, err)
	}
	infos, err := s.List("r", spool.Pending, "", 0)
	if err != nil || len(infos) != 1 || infos[0].ID != m.ID {
		t.Errorf("List() = %v, %v, want only %s", infos, err, m.ID)
	}
	// Acked, the ID is still in the duplicate window: a new Append of it
	// is refused rather than stored again.
	next(t, s, "r")
	if err := s.Ack(m.ID); err != nil {
		t.Fatalf("Ack() = %v", err)
	}
	dup := message("r", 2)
	dup.ID = m.ID
	if err := s.Append(t.Context(), dup); !errors.Is(err, spool.ErrExists) {
		t.Errorf("Append(ID in the duplicate window) = %v, want %v", err, spool.ErrExists)
	}
}

// TestFull fills a stream: Append returns spool.ErrFull, never a success
// for a message the stream dropped.
func TestFull(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{MaxMessages: 2})
	for i := range 2 {
		if err := s.Append(t.Context(), message("r", i)); err != nil {
			t.Fatalf("Append(#%d) = %v", i, err)
		}
	}
	if err := s.Append(t.Context(), message("r", 3)); !errors.Is(err, spool.ErrFull) {
		t.Errorf("Append(full) = %v, want %v", err, spool.ErrFull)
	}
	if st := s.Stats(); st.Total.Pending != 2 {
		t.Errorf("Stats().Total.Pending = %d, want 2", st.Total.Pending)
	}
}

// TestOpenErrors checks the errors at start.
func TestOpenErrors(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	openStore(t, srv, jsstore.Options{Stream: "THREE"}) // replicas 1
	tests := []struct {
		name string
		opts jsstore.Options
		want string
	}{
		{"unreachable", jsstore.Options{URL: "nats://u:secret@127.0.0.1:1", Create: true}, "connect to nats://REDACTED@127.0.0.1:1"},
		{"unreachable, token", jsstore.Options{URL: "nats://s3cr3t@127.0.0.1:1", Create: true}, "connect to nats://REDACTED@127.0.0.1:1"},
		{"missing, create false", jsstore.Options{URL: srv.ClientURL(), Stream: "MISSING"}, "does not exist"},
		{"conflicting replicas", jsstore.Options{URL: srv.ClientURL(), Stream: "THREE", Replicas: 3, Create: true}, "replicas"},
		{"bad name", jsstore.Options{URL: srv.ClientURL(), Stream: "A.B", Create: true}, "stream name"},
	}
	for _, tt := range tests {
		tt.opts.ConnectTimeout = 5 * time.Second
		tt.opts.RequestTimeout = 5 * time.Second
		s, err := jsstore.Open(t.Context(), tt.opts)
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Open() = %v, want an error about %q", tt.name, err, tt.want)
		}
	}
}

// TestLeaseOutlivesAckWait: a store extends its leases, so a delivery
// longer than AckWait is not handed to another sidecar; Close hands the
// message back at once.
func TestLeaseOutlivesAckWait(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	// AckWait 3s: extensions every second, so a loaded machine that
	// delays one by a second or more still keeps the lease.
	opts := jsstore.Options{Stream: "LEASE", AckWait: 3 * time.Second}
	a := openStore(t, srv, opts)
	b := openStore(t, srv, opts)
	m := message("r", 1)
	if err := a.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	if got := next(t, a, "r"); got.ID != m.ID {
		t.Fatalf("Next() = %s, want %s", got.ID, m.ID)
	}
	for end := time.Now().Add(2 * opts.AckWait); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got, ok, err := b.Next("r", time.Now()); err != nil || ok {
			t.Fatalf("Next() on a second store while the first holds the lease = %v, %v, %v; want nothing", got, ok, err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	start := time.Now()
	if got := next(t, b, "r"); got.ID != m.ID || got.Attempts != 1 {
		t.Errorf("Next() after the holder closed = %s (%d attempts), want %s (1)", got.ID, got.Attempts, m.ID)
	}
	if d := time.Since(start); d > opts.AckWait {
		t.Errorf("the closed store's lease came back after %v, want at once", d)
	}
}

// TestTooLarge: a message over the server's max_payload is refused with
// spool.ErrTooLarge.
func TestTooLarge(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), MaxPayload: 4 << 10, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	s := openStore(t, srv, jsstore.Options{})
	m := message("r", 1)
	m.Body = make([]byte, 8<<10)
	if err := s.Append(t.Context(), m); !errors.Is(err, spool.ErrTooLarge) {
		t.Errorf("Append(8 KiB, max_payload 4 KiB) = %v, want %v", err, spool.ErrTooLarge)
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

// TestRouteMaxMessages: a route's own bound refuses its appends with
// ErrFull once it holds that many pending messages, other routes go on,
// and acknowledging one makes room again (after the count is read anew).
func TestRouteMaxMessages(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Routes: map[string]jsstore.RouteOptions{"small": {MaxMessages: 2}}})
	for i := range 2 {
		if err := s.Append(t.Context(), message("small", i)); err != nil {
			t.Fatalf("Append %d = %v", i, err)
		}
	}
	if err := s.Append(t.Context(), message("small", 3)); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("third Append to small = %v, want ErrFull", err)
	}
	for i := range 5 {
		if err := s.Append(t.Context(), message("other", i)); err != nil {
			t.Fatalf("Append to other = %v", err)
		}
	}
	m, ok, err := s.Next("small", time.Now())
	if !ok || err != nil {
		t.Fatalf("Next = %v, %v", ok, err)
	}
	if err := s.Ack(m.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Append(t.Context(), message("small", 4))
		if err == nil {
			break
		}
		if !errors.Is(err, spool.ErrFull) || time.Now().After(deadline) {
			t.Fatalf("Append after an Ack = %v, want room again", err)
		}
		time.Sleep(50 * time.Millisecond) // the count is read anew every 250ms
	}
}

package jsstore_test

import (
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

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

// TestStreamMaxMsgSize: a stream with a max_msg_size refuses a larger
// message with spool.ErrTooLarge.
func TestStreamMaxMsgSize(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "MSGSIZE", Subjects: []string{"MSGSIZE.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, MaxMsgSize: 1 << 10,
	}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, srv, jsstore.Options{Stream: "MSGSIZE"})
	m := message("r", 1)
	m.Body = make([]byte, 2<<10)
	if err := s.Append(t.Context(), m); !errors.Is(err, spool.ErrTooLarge) {
		t.Errorf("Append(2 KiB, max_msg_size 1 KiB) = %v, want %v", err, spool.ErrTooLarge)
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
	// The count is read anew every 250ms; until then the route is full.
	poll.Within(10*time.Second, func() bool {
		err = s.Append(t.Context(), message("small", 4))
		return !errors.Is(err, spool.ErrFull)
	})
	if err != nil {
		t.Fatalf("Append after an Ack = %v, want room again", err)
	}
}

// TestPublishTimeoutIsUnconfirmed: a publish whose acknowledgement never
// comes (the connection to the server gone silent, as in a partition)
// ends in spool.ErrUnconfirmed after the request timeout, tried twice:
// the server may have stored the message, and the proxy says so.
func TestPublishTimeoutIsUnconfirmed(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	u, err := url.Parse(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	relay := testnet.NewSilencer(t, u.Host)
	s, err := jsstore.Open(t.Context(), jsstore.Options{URL: "nats://" + relay.Addr(), Stream: "UNCONFIRMED", Create: true,
		ConnectTimeout: 5 * time.Second, RequestTimeout: time.Second})
	if err != nil {
		t.Fatalf("jsstore.Open = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() }) // after the relay's cleanup, which closes its connections
	// The route's consumer is made by a first Append, while the
	// connection still answers (retried: one second may not be enough
	// on a loaded machine).
	poll.Until(t, 30*time.Second, "a first Append", func() bool { return s.Append(t.Context(), message("r", 1)) == nil })
	relay.Silence()
	err = s.Append(t.Context(), message("r", 2))
	if !errors.Is(err, spool.ErrUnconfirmed) {
		t.Fatalf("Append with its acknowledgement lost = %v, want spool.ErrUnconfirmed", err)
	}
}

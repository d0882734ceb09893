package jsstore_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

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
	deadline := time.Now().Add(20 * time.Second)
	for {
		at, ok := a.NextDue("r")
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("NextDue(r) = %v, true %v after the message was delivered elsewhere; want it forgotten after AckWait", at, time.Since(at))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// progressMsg is a leased message whose InProgress sends the extension
// the way the client library does (check, then publish), with the test
// able to hold it in between, where a concurrent settlement can slip in.
type progressMsg struct {
	jetstream.Msg
	nc   *nats.Conn
	hold func()
}

func (m *progressMsg) InProgress() error {
	m.hold()
	return m.nc.Publish(m.Reply(), []byte("+WPI"))
}

// TestExtensionAfterRetryLater holds an extension of the lease keeper
// while RetryLater sends its delayed negative acknowledgement: the
// extension must not land after it (the server would hand the message
// out again after AckWait instead of at the requested time).
func TestExtensionAfterRetryLater(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	ackWait := 9 * time.Second
	s := openStore(t, srv, jsstore.Options{Stream: "EXTRACE", AckWait: ackWait})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.SetMsgWrapper(func(m jetstream.Msg) jetstream.Msg {
		return &progressMsg{Msg: m, nc: nc, hold: func() {
			once.Do(func() {
				close(reached)
				<-release
			})
		}}
	})
	m := message("r", 1)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	next(t, s, "r")
	select {
	case <-reached:
	case <-time.After(20 * time.Second):
		t.Fatal("the lease keeper did not extend the lease within 20s")
	}
	retried := make(chan error, 1)
	go func() { retried <- s.RetryLater(m.ID, time.Now().Add(200*time.Millisecond), 1) }()
	// Give an unordered RetryLater the time to send its negative
	// acknowledgement before the held extension; an ordered one waits
	// for the extension (the wait only matters for the failure).
	select {
	case err := <-retried:
		retried <- err
	case <-time.After(time.Second):
	}
	close(release)
	if err := <-retried; err != nil {
		t.Fatalf("RetryLater() = %v", err)
	}
	if got, ok := nextWithin(t, s, "r", ackWait/2); !ok || got.ID != m.ID {
		t.Fatalf("Next() = %v, %v within %v of RetryLater(in 200ms), want %s: an extension reset the delay to AckWait", got, ok, ackWait/2, m.ID)
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
		deadline := time.Now().Add(10 * time.Second)
		for !errors.Is(a.Ready(), spool.ErrClosed) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, ok, err := a.Next("r", time.Now())
		if ok {
			t.Fatalf("Next() during Close = %s, want %v", got.ID, spool.ErrClosed)
		}
		if err != nil {
			if !errors.Is(err, spool.ErrClosed) {
				t.Fatalf("Next() during Close = %v, want %v", err, spool.ErrClosed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Next() fetched nothing for 10s")
		}
		time.Sleep(10 * time.Millisecond)
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

// TestRedactURLs: a user, password or token in a URL never shows.
func TestRedactURLs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://s3cr3t-token@127.0.0.1:4222", "nats://REDACTED@127.0.0.1:4222"},
		{"nats://alice:pa/ss@127.0.0.1:4222", "nats://REDACTED@127.0.0.1:4222"},
		{"nats://alice@a:1, tls://bob:pw@b:2", "nats://REDACTED@a:1, tls://REDACTED@b:2"},
		{"tok@127.0.0.1:4222", "REDACTED@127.0.0.1:4222"},
	}
	for _, tt := range tests {
		if got := jsstore.RedactURLs(tt.in); got != tt.want {
			t.Errorf("redactURLs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

package jsstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

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
	var (
		got *spool.Message
		ok  bool
		err error
	)
	if poll.Within(2*opts.AckWait, func() bool {
		got, ok, err = b.Next("r", time.Now())
		return err != nil || ok
	}) {
		t.Fatalf("Next() on a second store while the first holds the lease = %v, %v, %v; want nothing", got, ok, err)
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

// TestMaxLease: a lease that is never settled is extended for MaxLease
// only; then the server hands the message out again.
func TestMaxLease(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "MAXLEASE", AckWait: 2 * time.Second, MaxLease: time.Second}
	a := openStore(t, srv, opts)
	b := openStore(t, srv, opts)
	m := message("r", 1)
	if err := a.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	if got := next(t, a, "r"); got.ID != m.ID {
		t.Fatalf("Next() = %s, want %s", got.ID, m.ID)
	}
	got, ok := nextWithin(t, b, "r", 30*time.Second)
	if !ok || got.ID != m.ID {
		t.Fatalf("Next() on a second store = %v, %v; want %s handed out again once the lease outlived MaxLease", got, ok, m.ID)
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

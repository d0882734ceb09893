package jsstore_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestDeadLetterWhenFull fills a fifo route's stream and dead-letters its
// head: the dead copy goes to the dead-letter stream, so DeadLetter works
// on a full stream and the pending stream has room again.
func TestDeadLetterWhenFull(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{
		Stream:      "DEADFULL",
		MaxMessages: 2,
		Routes:      map[string]jsstore.RouteOptions{"f": {FIFO: true}},
	})
	var ids []string
	for i := range 2 {
		m := message("f", i)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append(#%d) = %v", i, err)
		}
		ids = append(ids, m.ID)
	}
	if err := s.Append(t.Context(), message("f", 9)); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Append(3rd of 2) = %v, want %v", err, spool.ErrFull)
	}
	head := next(t, s, "f")
	if head.ID != ids[0] {
		t.Fatalf("Next() = %s, want %s", head.ID, ids[0])
	}
	if err := s.DeadLetter(head.ID, "gave up"); err != nil {
		t.Fatalf("DeadLetter(head of a full stream) = %v, want nil", err)
	}
	var err error
	poll.Within(10*time.Second, func() bool {
		err = s.Append(t.Context(), message("f", 10))
		return !errors.Is(err, spool.ErrFull)
	})
	if err != nil {
		t.Fatalf("Append(after the head was dead-lettered) = %v, want nil", err)
	}
	_, info, err := s.Get(head.ID)
	if err != nil || info.State != spool.Dead || info.DeadReason != "gave up" {
		t.Errorf("Get(dead head) = %+v, %v, want dead with reason %q", info, err, "gave up")
	}
	if dead, err := s.List("f", spool.Dead, "", 0); err != nil || len(dead) != 1 || dead[0].ID != head.ID {
		t.Errorf("List(dead) = %v, %v, want only %s", dead, err, head.ID)
	}
	if m := next(t, s, "f"); m.ID != ids[1] {
		t.Errorf("Next() after the dead head = %s, want %s", m.ID, ids[1])
	}
	if st := s.Stats(); st.Total.Dead != 1 || st.Routes["f"].Dead != 1 {
		t.Errorf("Stats() dead = %d (route %d), want 1", st.Total.Dead, st.Routes["f"].Dead)
	}
	// The dead letter lives in the dead-letter stream.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ds, err := js.Stream(t.Context(), "DEADFULL"+jsstore.DeadSuffix)
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	if n := ds.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("dead-letter stream holds %d messages, want 1", n)
	}
	// Replay moves it back (the pending stream has room for it after the
	// second message is settled), and Purge works on both streams.
	if err := s.Ack(ids[1]); err != nil {
		t.Fatalf("Ack() = %v", err)
	}
	if err := s.Replay(head.ID); err != nil {
		t.Fatalf("Replay() = %v", err)
	}
	if _, info, err := s.Get(head.ID); err != nil || info.State != spool.Pending {
		t.Errorf("Get(replayed) = %+v, %v, want pending", info, err)
	}
	if n, err := s.Purge("f", spool.Pending); err != nil || n != 2 {
		t.Errorf("Purge(pending) = %d, %v, want 2", n, err)
	}
}

// TestDeadStreamAtOpen: create false needs both streams, and the
// dead-letter stream's settings are checked like the stream's.
func TestDeadStreamAtOpen(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "ONLYPENDING", Subjects: []string{"ONLYPENDING.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "BADDEAD", Subjects: []string{"BADDEAD.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "BADDEAD_DEAD", Subjects: []string{"BADDEAD_DEAD.>"}, Retention: jetstream.LimitsPolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardOld,
	}); err != nil {
		t.Fatal(err)
	}
	pending := func(name string, edit func(*jetstream.StreamConfig)) {
		cfg := jetstream.StreamConfig{
			Name: name, Subjects: []string{name + ".>"}, Retention: jetstream.WorkQueuePolicy,
			Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
		}
		edit(&cfg)
		if _, err := js.CreateStream(t.Context(), cfg); err != nil {
			t.Fatalf("CreateStream(%s) = %v", name, err)
		}
	}
	pending("DENYDEL", func(c *jetstream.StreamConfig) { c.DenyDelete = true })
	pending("DENYPURGE", func(c *jetstream.StreamConfig) { c.DenyPurge = true })
	pending("SHORTDUP", func(c *jetstream.StreamConfig) { c.Duplicates = time.Second })
	pending("SMALLDEAD", func(c *jetstream.StreamConfig) { c.MaxMsgSize = 8 << 10 })
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "SMALLDEAD_DEAD", Subjects: []string{"SMALLDEAD_DEAD.>"}, Retention: jetstream.LimitsPolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, MaxMsgSize: 8 << 10,
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts jsstore.Options
		want string
	}{
		{"dead stream missing, create false", jsstore.Options{Stream: "ONLYPENDING"}, "ONLYPENDING_DEAD does not exist"},
		{"dead stream discards old", jsstore.Options{Stream: "BADDEAD", Create: true}, "discard"},
		{"deny delete", jsstore.Options{Stream: "DENYDEL", Create: true}, "deny_delete"},
		{"deny purge", jsstore.Options{Stream: "DENYPURGE", Create: true}, "deny_purge"},
		{"short duplicate window", jsstore.Options{Stream: "SHORTDUP", Create: true}, "duplicate window"},
		{"dead stream max_msg_size", jsstore.Options{Stream: "SMALLDEAD", Create: true}, "max_msg_size"},
	}
	for _, tt := range tests {
		tt.opts.URL = srv.ClientURL()
		tt.opts.ConnectTimeout = 5 * time.Second
		tt.opts.RequestTimeout = 10 * time.Second
		s, err := jsstore.Open(t.Context(), tt.opts)
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Open() = %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	// With create true the missing dead-letter stream is made.
	s, err := jsstore.Open(t.Context(), jsstore.Options{URL: srv.ClientURL(), Stream: "ONLYPENDING", Create: true})
	if err != nil {
		t.Fatalf("Open(create true) = %v", err)
	}
	s.Close()
	if _, err := js.Stream(t.Context(), "ONLYPENDING_DEAD"); err != nil {
		t.Errorf("dead-letter stream after Open(create true): %v", err)
	}
}

// TestDeadLetterTwiceFrozenClock dead-letters, replays and dead-letters a
// message again with a clock that does not move: the second dead letter
// must not be taken for a duplicate of the first (and the message lost).
func TestDeadLetterTwiceFrozenClock(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	frozen := time.Now()
	s := openStore(t, srv, jsstore.Options{Stream: "FROZEN", Now: func() time.Time { return frozen }})
	m := message("r", 1)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	next(t, s, "r")
	if err := s.DeadLetter(m.ID, "first"); err != nil {
		t.Fatalf("DeadLetter(#1) = %v", err)
	}
	if err := s.Replay(m.ID); err != nil {
		t.Fatalf("Replay() = %v", err)
	}
	if got := next(t, s, "r"); got.ID != m.ID {
		t.Fatalf("Next() after Replay = %s, want %s", got.ID, m.ID)
	}
	if err := s.DeadLetter(m.ID, "second"); err != nil {
		t.Fatalf("DeadLetter(#2) = %v", err)
	}
	_, info, err := s.Get(m.ID)
	if err != nil || info.State != spool.Dead || info.DeadReason != "second" {
		t.Fatalf("Get() after the second dead letter = %+v, %v; want dead with reason %q (message lost?)", info, err, "second")
	}
}

// TestOldDeadLettersMoved: dead letters an earlier version kept in the
// stream itself are moved to the dead-letter stream at Open.
func TestOldDeadLettersMoved(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "OLDDEAD"}
	s := openStore(t, srv, opts)
	m := message("r", 1)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	next(t, s, "r")
	if err := s.DeadLetter(m.ID, "old"); err != nil {
		t.Fatalf("DeadLetter() = %v", err)
	}
	_, want, err := s.Get(m.ID)
	if err != nil {
		t.Fatalf("Get() = %v", err)
	}
	s.Close()
	// Put it back where an earlier version kept it.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ds, _ := js.Stream(t.Context(), "OLDDEAD_DEAD")
	raw, err := ds.GetLastMsgForSubject(t.Context(), "OLDDEAD_DEAD."+m.ID+".dead.r72")
	if err != nil {
		t.Fatalf("read the dead letter: %v", err)
	}
	old := nats.NewMsg("OLDDEAD." + m.ID + ".dead.r72")
	for _, k := range []string{"Sidecar-Attempts", "Sidecar-Dead-Reason"} {
		old.Header.Set(k, raw.Header.Get(k))
	}
	old.Data = raw.Data
	if _, err := js.PublishMsg(t.Context(), old); err != nil {
		t.Fatalf("publish in the old layout: %v", err)
	}
	if err := ds.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, srv, opts)
	_, got, err := s.Get(m.ID)
	if err != nil || got.State != spool.Dead || got.DeadReason != "old" || got.Arrived != want.Arrived {
		t.Errorf("Get() after reopening = %+v, %v, want %+v", got, err, want)
	}
	if st := s.Stats(); st.Total.Dead != 1 {
		t.Errorf("Stats().Total.Dead = %d, want 1", st.Total.Dead)
	}
	ps, _ := js.Stream(t.Context(), "OLDDEAD")
	if n := ps.CachedInfo().State.Msgs; n != 0 {
		t.Errorf("the stream holds %d messages after the move, want 0", n)
	}
}

// TestDeadLetterCopyReplaced: a second dead copy of a message (left when
// a DeadLetter's delete of the pending message failed) replaces the
// first: the message is counted and listed once.
func TestDeadLetterCopyReplaced(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	s := openStore(t, srv, jsstore.Options{Stream: "DEADTWICE"})
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
	ps, _ := js.Stream(t.Context(), "DEADTWICE")
	raw, err := ps.GetLastMsgForSubject(t.Context(), "DEADTWICE."+m.ID+".pending.r72")
	if err != nil {
		t.Fatal(err)
	}
	// A dead copy as if an earlier DeadLetter had stopped after its
	// publish.
	early := nats.NewMsg("DEADTWICE_DEAD." + m.ID + ".dead.r72")
	early.Header.Set("Sidecar-Dead-Reason", "first try")
	early.Data = raw.Data
	if _, err := js.PublishMsg(t.Context(), early); err != nil {
		t.Fatal(err)
	}
	next(t, s, "r")
	if err := s.DeadLetter(m.ID, "second try"); err != nil {
		t.Fatalf("DeadLetter() = %v", err)
	}
	if st := s.Stats(); st.Total.Dead != 1 {
		t.Errorf("Stats().Total.Dead = %d, want 1", st.Total.Dead)
	}
	if _, info, err := s.Get(m.ID); err != nil || info.DeadReason != "second try" {
		t.Errorf("Get() = %+v, %v, want the second dead letter", info, err)
	}
}

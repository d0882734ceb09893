package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// appendParallel appends n messages of route with store-generated IDs from
// 16 goroutines and returns their IDs.
func appendParallel(t *testing.T, s *FileStore, route string, n int) []string {
	t.Helper()
	out := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				m := &Message{Route: route, Method: "POST", Target: fmt.Sprint("/e/", i), Body: []byte("x")}
				if err := s.Append(context.Background(), m); err != nil {
					errs <- err
					return
				}
				out[i] = m.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("Append = %v", err)
	}
	return out
}

// TestIndexChunks spans several index chunks: generated IDs from
// concurrent producers come out in key order, settled chunks at the front
// are dropped, a sparse index is compacted, and all of it survives a
// reopen.
func TestIndexChunks(t *testing.T) {
	opts := FileOptions{Fsync: FsyncInterval, Interval: time.Hour, SegmentSize: 256 << 10}
	s := open(t, t.TempDir(), opts)
	n := 3*chunkSize + 100
	appendParallel(t, s, "a", n)
	appendParallel(t, s, "b", 50)

	// Next hands out route a's messages in key (= ID) order.
	var order []string
	for range chunkSize + 10 {
		m, ok, err := s.Next("a", time.Now())
		if err != nil || !ok {
			t.Fatalf("Next = %v, %v", ok, err)
		}
		order = append(order, m.ID)
	}
	for i := 1; i < len(order); i++ {
		if order[i] <= order[i-1] {
			t.Fatalf("Next gave %s after %s", order[i], order[i-1])
		}
	}
	// Acking them drops the front chunk.
	for _, id := range order {
		if err := s.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(s.slab.chunks); got != 3 {
		t.Errorf("after acking the first %d: %d chunks, want 3", len(order), got)
	}
	// Acking every other remaining message compacts.
	rest := ids(t, s, Pending)
	var kept []string
	for i, id := range rest {
		if i%2 == 0 && i < len(rest)-200 {
			if err := s.Ack(id); err != nil {
				t.Fatal(err)
			}
			continue
		}
		kept = append(kept, id)
	}
	if s.slab.tombstones > s.slab.len()-s.slab.tombstones {
		t.Errorf("%d tombstones of %d slots: not compacted", s.slab.tombstones, s.slab.len())
	}
	for _, id := range kept {
		if _, _, err := s.Get(id); err != nil {
			t.Fatalf("Get(%s) after compaction = %v", id, err)
		}
	}
	s = reopen(t, s, opts)
	if got := ids(t, s, Pending); fmt.Sprint(got) != fmt.Sprint(kept) {
		t.Fatalf("after reopen: %d pending, want %d", len(got), len(kept))
	}
	st := s.Stats()
	if st.Routes["b"].Pending != 50 || st.Total.Pending != int64(len(kept)) {
		t.Errorf("Stats = %+v, want b 50, total %d", st.Routes, len(kept))
	}
	// Messages appended after the reopen sort after the recovered ones.
	newer := appendParallel(t, s, "a", 10)
	all := ids(t, s, Pending)
	if all[len(all)-1] < newer[0] {
		t.Errorf("new ID %s sorts before recovered ones", newer[0])
	}
}

// TestNextDueOrder: Next returns the earliest appended due message whether
// it was never tried, retried or replayed, and skips leased ones.
func TestNextDueOrder(t *testing.T) {
	s := open(t, t.TempDir(), FileOptions{})
	ids := appendN(t, s, "r", 5, 1)
	now := testEpoch.Add(time.Hour)
	next := func(want string) {
		t.Helper()
		m, ok, err := s.Next("r", now)
		got := ""
		if ok {
			got = m.ID
		}
		if err != nil || got != want {
			t.Fatalf("Next = %q, %v, want %q", got, err, want)
		}
	}
	next(ids[0])
	next(ids[1])
	if err := s.RetryLater(ids[0], now.Add(time.Minute), 1); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryLater(ids[1], now.Add(-time.Minute), 1); err != nil {
		t.Fatal(err)
	}
	next(ids[1]) // due again, and before 2
	next(ids[2])
	if err := s.DeadLetter(ids[2], "gone"); err != nil {
		t.Fatal(err)
	}
	if err := s.Replay(ids[2]); err != nil {
		t.Fatal(err)
	}
	next(ids[2])
	next(ids[3])
	now = now.Add(2 * time.Minute)
	next(ids[0]) // its retry is due now
	next(ids[4])
	next("")
}

func TestRouteLimits(t *testing.T) {
	opts := FileOptions{Routes: map[string]Limits{"small": {MaxMessages: 2}, "tiny": {MaxBytes: 300}}}
	s := open(t, t.TempDir(), opts)
	appendN(t, s, "small", 2, 10)
	if err := s.Append(t.Context(), testMessage("small", 10, 10)); !errors.Is(err, ErrFull) {
		t.Fatalf("third Append to small = %v, want ErrFull", err)
	}
	// Other routes are not bounded by small's limit.
	for i := range 5 {
		if err := s.Append(t.Context(), testMessage("other", 100+i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Append(t.Context(), testMessage("tiny", 20, 500)); !errors.Is(err, ErrFull) {
		t.Fatalf("500-byte Append to tiny = %v, want ErrFull", err)
	}
	m := &Message{Route: "small"}
	if err := s.Append(t.Context(), m); !errors.Is(err, ErrFull) || m.ID != "" {
		t.Fatalf("Append = %v with ID %q, want ErrFull and no ID", err, m.ID)
	}
	// Dead messages count until they are deleted.
	l, _ := s.List("small", Pending, "", 0)
	if err := s.DeadLetter(l[0].ID, "x"); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(t.Context(), testMessage("small", 30, 10)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append with a dead message = %v, want ErrFull", err)
	}
	if err := s.Delete(l[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(t.Context(), testMessage("small", 31, 10)); err != nil {
		t.Fatalf("Append after Delete = %v", err)
	}
}

func TestParseID(t *testing.T) {
	for _, id := range []string{"0123456789abcdef01234567", "ffffffffffffffffffffffff"} {
		key, lo, ok := parseID(id)
		if !ok || formatID(key, lo) != id {
			t.Errorf("parseID(%s) = %x %x %v", id, key, lo, ok)
		}
	}
	for _, id := range []string{"", "0123456789ABCDEF01234567", "0123456789abcdef0123456", "0123456789abcdef0123456g"} {
		if _, _, ok := parseID(id); ok {
			t.Errorf("parseID(%q) ok, want not", id)
		}
	}
}

// gateFS holds every fsync at a gate while it is on.
type gateFS struct {
	OSFS
	on      atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func (g *gateFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := g.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &gateFile{f, g}, nil
}

type gateFile struct {
	File
	g *gateFS
}

func (f *gateFile) Sync() error {
	if f.g.on.Load() {
		f.g.entered <- struct{}{}
		<-f.g.gate
	}
	return f.File.Sync()
}

// TestNextDuringCommit: a Next that runs while a message's record is being
// committed (its key given, not yet indexed) must not move the route's
// cursor past it.
func TestNextDuringCommit(t *testing.T) {
	g := &gateFS{entered: make(chan struct{}, 10), gate: make(chan struct{})}
	s := open(t, t.TempDir(), FileOptions{FS: g})
	if err := s.Append(t.Context(), &Message{Route: "ev", Method: "POST", Target: "/a"}); err != nil {
		t.Fatal(err)
	}
	a, ok, err := s.Next("ev", time.Now())
	if !ok || err != nil {
		t.Fatalf("Next = %v, %v", ok, err)
	}
	g.on.Store(true)
	done := make(chan error)
	go func() { done <- s.Append(context.Background(), &Message{Route: "ev", Method: "POST", Target: "/b"}) }()
	<-g.entered // /b has its ID; its record waits for the fsync
	if m, ok, _ := s.Next("ev", time.Now()); ok {
		t.Fatalf("Next during the commit = %s, want none (/a is leased)", m.Target)
	}
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g.on.Store(false)
	if err := s.Ack(a.ID); err != nil {
		t.Fatal(err)
	}
	if m, ok, err := s.Next("ev", time.Now()); !ok || err != nil || m.Target != "/b" {
		t.Fatalf("Next after the commit = %v, %v, want /b", ok, err)
	}
}

package spool

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock is a settable clock for FileOptions.Now.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(testEpoch.UnixNano())
	return c
}

func (c *testClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func dedupeOpts(c *testClock, w time.Duration) FileOptions {
	return FileOptions{Now: c.now, Routes: map[string]Limits{"r": {DedupeWindow: w}}, SegmentSize: 4 << 10}
}

// keyed is a message of route with the app's key.
func keyed(route, key string, body string) *Message {
	return &Message{Route: route, Method: "POST", Target: "/e", IdempotencyKey: key, Body: []byte(body)}
}

// appendID appends m with AppendOnce and returns the ID it was answered
// with, and whether it was a duplicate.
func appendID(t *testing.T, s *FileStore, m *Message) (string, bool) {
	t.Helper()
	err := s.AppendOnce(t.Context(), m)
	switch {
	case err == nil:
		return m.ID, false
	case errors.Is(err, ErrDuplicate):
		return m.ID, true
	}
	t.Fatalf("Append(key %q) = %v, want nil or ErrDuplicate", m.IdempotencyKey, err)
	return "", false
}

func TestDedupeWithinWindow(t *testing.T) {
	c := newTestClock()
	s := open(t, t.TempDir(), dedupeOpts(c, time.Minute))
	first, dup := appendID(t, s, keyed("r", "k1", "one"))
	if dup {
		t.Fatal("first Append is a duplicate")
	}
	c.advance(59 * time.Second)
	again, dup := appendID(t, s, keyed("r", "k1", "two"))
	if !dup || again != first {
		t.Fatalf("repeat within the window = %s, duplicate %v; want %s, true", again, dup, first)
	}
	if n := s.Stats().Total.Pending; n != 1 {
		t.Fatalf("pending = %d, want 1", n)
	}
	// Not de-duplicated: another key, a route without a window, a plain
	// Append.
	for _, m := range []*Message{keyed("r", "k2", "x"), keyed("other", "k1", "x")} {
		if id, dup := appendID(t, s, m); dup || id == first {
			t.Fatalf("AppendOnce(route %s, key %s) = %s, duplicate %v; want a new message", m.Route, m.IdempotencyKey, id, dup)
		}
	}
	if m := keyed("r", "k1", "plain"); s.Append(t.Context(), m) != nil || m.ID == first {
		t.Fatalf("Append(key k1) = %s, want a new message", m.ID)
	}
	// Past the window the key stores a new message.
	c.advance(2 * time.Second)
	if id, dup := appendID(t, s, keyed("r", "k1", "three")); dup || id == first {
		t.Fatalf("repeat after the window = %s, duplicate %v; want a new message", id, dup)
	}
	if n := s.Stats().Total.Pending; n != 5 {
		t.Fatalf("pending = %d, want 5", n)
	}
}

// Concurrent Appends with one key store one message, and all get its ID.
func TestDedupeConcurrent(t *testing.T) {
	c := newTestClock()
	s := open(t, t.TempDir(), dedupeOpts(c, time.Minute))
	const n = 32
	got := make([]string, n)
	var stored atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := keyed("r", "same", fmt.Sprint(i))
			err := s.AppendOnce(t.Context(), m)
			if err == nil {
				stored.Add(1)
			} else if !errors.Is(err, ErrDuplicate) {
				t.Errorf("Append = %v", err)
			}
			got[i] = m.ID
		})
	}
	wg.Wait()
	if stored.Load() != 1 {
		t.Fatalf("%d Appends stored, want 1", stored.Load())
	}
	for i, id := range got {
		if id != got[0] || id == "" {
			t.Fatalf("Append %d got ID %q, Append 0 %q; want one ID", i, id, got[0])
		}
	}
	if p := s.Stats().Total.Pending; p != 1 {
		t.Fatalf("pending = %d, want 1", p)
	}
}

// The keys survive a reopen, and a delivered message's key still
// de-duplicates within the window although every message of its segment
// is settled; the segment goes once the window has passed.
func TestDedupeAcrossReopenAndAck(t *testing.T) {
	c := newTestClock()
	dir := t.TempDir()
	opts := dedupeOpts(c, time.Minute)
	s := open(t, dir, opts)
	first, _ := appendID(t, s, keyed("r", "k", "body"))
	if err := s.Ack(first); err != nil {
		t.Fatal(err)
	}
	// Fill segments so that the first one would be collected.
	for i := range 20 {
		id, _ := appendID(t, s, keyed("r", fmt.Sprint("fill", i), string(make([]byte, 1000))))
		if err := s.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	if segs := segmentFiles(t, dir); len(segs) < 3 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	s = reopen(t, s, opts)
	c.advance(30 * time.Second)
	if id, dup := appendID(t, s, keyed("r", "k", "again")); !dup || id != first {
		t.Fatalf("repeat after reopen = %s, duplicate %v; want %s, true", id, dup, first)
	}
	if id, ok, _ := s.Duplicate(t.Context(), "r", "k"); !ok || id != first {
		t.Fatalf("Duplicate(r, k) = %s, %v; want %s, true", id, ok, first)
	}
	// Past the window, the next commit deletes the settled segments.
	c.advance(31 * time.Second)
	id, dup := appendID(t, s, keyed("r", "k", "new"))
	if dup {
		t.Fatalf("repeat after the window = %s, duplicate; want a new message", id)
	}
	if segs := segmentFiles(t, dir); len(segs) != 1 {
		t.Fatalf("%d segments after the window, want 1: %v", len(segs), segs)
	}
	s = reopen(t, s, opts)
	if got, dup := appendID(t, s, keyed("r", "k", "again")); !dup || got != id {
		t.Fatalf("repeat after the second reopen = %s, duplicate %v; want %s, true", got, dup, id)
	}
}

// A failed commit releases the key: a later Append stores.
func TestDedupeFailedAppendReleasesKey(t *testing.T) {
	c := newTestClock()
	fsys := &faultFS{}
	opts := dedupeOpts(c, time.Minute)
	opts.FS, opts.ReopenDelay, opts.noAIO = fsys, -1, true
	dir := t.TempDir()
	s := open(t, dir, opts)
	fsys.fail(errors.New("disk full"), nil)
	if err := s.AppendOnce(t.Context(), keyed("r", "k", "x")); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append on a failing disk = %v, want ErrFailed", err)
	}
	fsys.fail(nil, nil)
	s.Close()
	s = open(t, dir, opts)
	if id, dup := appendID(t, s, keyed("r", "k", "y")); dup {
		t.Fatalf("Append after a failed one = %s, duplicate; want stored", id)
	}
	// A full route refuses at reserve time: the key is released too.
	opts.Routes = map[string]Limits{"r": {DedupeWindow: time.Minute, MaxMessages: 1}}
	s.SetRouteLimits(opts.Routes)
	if err := s.AppendOnce(t.Context(), keyed("r", "k2", "z")); !errors.Is(err, ErrFull) {
		t.Fatalf("Append over max_messages = %v, want ErrFull", err)
	}
	s.SetRouteLimits(map[string]Limits{"r": {DedupeWindow: time.Minute}})
	if id, dup := appendID(t, s, keyed("r", "k2", "z")); dup {
		t.Fatalf("Append after a refused one = %s, duplicate; want stored", id)
	}
}

// The keys of a window are dropped once it has passed: a route holds the
// keys of its last window only.
func TestDedupeKeysExpire(t *testing.T) {
	c := newTestClock()
	s := open(t, t.TempDir(), dedupeOpts(c, time.Minute))
	for i := range 1000 {
		appendID(t, s, keyed("r", fmt.Sprint("k", i), "x"))
		c.advance(time.Millisecond)
	}
	keys := func() (int, int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		k := s.routeList[s.routeIdx["r"]].keys
		return len(k.byKey), len(k.queue) - k.head
	}
	if n, q := keys(); n != 1000 || q != 1000 {
		t.Fatalf("keys within the window: %d in the map, %d queued; want 1000", n, q)
	}
	c.advance(time.Minute)
	appendID(t, s, keyed("r", "late", "x"))
	if n, q := keys(); n != 1 || q != 1 {
		t.Fatalf("keys after the window: %d in the map, %d queued; want 1", n, q)
	}
}

// A window turned off by a reload and on again keeps the keys seen
// before: within their window a repeat is still answered with the first
// ID. While it is off nothing is de-duplicated, and no key is kept.
func TestDedupeWindowOffAndOnAgain(t *testing.T) {
	c := newTestClock()
	s := open(t, t.TempDir(), dedupeOpts(c, time.Minute))
	first, _ := appendID(t, s, keyed("r", "k1", "one"))

	s.SetRouteLimits(map[string]Limits{"r": {}})
	c.advance(10 * time.Second)
	if id, dup := appendID(t, s, keyed("r", "k1", "off")); dup || id == first {
		t.Errorf("AppendOnce(k1) with the window off = %s, duplicate %v; want a new message", id, dup)
	}
	if id, ok, err := s.Duplicate(t.Context(), "r", "k1"); err != nil || ok {
		t.Errorf("Duplicate(k1) with the window off = %s, %v, %v; want not found", id, ok, err)
	}
	offID, _ := appendID(t, s, keyed("r", "k2", "off"))

	s.SetRouteLimits(map[string]Limits{"r": {DedupeWindow: time.Minute}})
	c.advance(10 * time.Second)
	if id, dup := appendID(t, s, keyed("r", "k1", "on again")); !dup || id != first {
		t.Errorf("AppendOnce(k1) on again within its window = %s, duplicate %v; want %s, true", id, dup, first)
	}
	if id, ok, err := s.Duplicate(t.Context(), "r", "k1"); err != nil || !ok || id != first {
		t.Errorf("Duplicate(k1) on again within its window = %s, %v, %v; want %s, true", id, ok, err, first)
	}
	// k2 was appended while the window was off: not kept.
	if id, dup := appendID(t, s, keyed("r", "k2", "on again")); dup || id == offID {
		t.Errorf("AppendOnce(k2), first seen while off = %s, duplicate %v; want a new message", id, dup)
	}
	if n := s.Stats().Total.Pending; n != 4 {
		t.Errorf("pending = %d, want 4 (k1, k1 while off, k2 while off, k2)", n)
	}
	// Past the window k1 stores a new message again.
	c.advance(41 * time.Second)
	if id, dup := appendID(t, s, keyed("r", "k1", "late")); dup || id == first {
		t.Errorf("AppendOnce(k1) past its window = %s, duplicate %v; want a new message", id, dup)
	}
}

// While a route's window is off its keys expire by the window they were
// added under: a route left off ends up holding none, and a key past that
// window is not answered when the window is turned on again, even a
// longer one.
func TestDedupeKeysExpireWhileOff(t *testing.T) {
	c := newTestClock()
	s := open(t, t.TempDir(), dedupeOpts(c, time.Minute))
	for i := range 100 {
		appendID(t, s, keyed("r", fmt.Sprint("k", i), "x"))
	}
	held := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		k := s.routeList[s.routeIdx["r"]].keys
		if k == nil {
			return 0
		}
		return len(k.byKey) + len(k.queue) - k.head
	}
	s.SetRouteLimits(map[string]Limits{"r": {}})
	if n := held(); n != 200 {
		t.Fatalf("keys held once the window is off = %d (map and queue), want 200", n)
	}
	c.advance(30 * time.Second)
	for i := range 100 { // no key is added while off
		appendID(t, s, keyed("r", fmt.Sprint("off", i), "x"))
	}
	s.SetRouteLimits(map[string]Limits{"r": {}})
	if n := held(); n != 200 {
		t.Fatalf("keys held within their window, off = %d, want 200", n)
	}
	c.advance(31 * time.Second)
	s.SetRouteLimits(map[string]Limits{"r": {}}) // a reload while off
	if n := held(); n != 0 {
		t.Fatalf("keys held past their window, off = %d, want 0", n)
	}

	// Off past the key's window, with no reload in between, then on with
	// a longer window: the key is not answered.
	s.SetRouteLimits(map[string]Limits{"r": {DedupeWindow: time.Minute}})
	first, _ := appendID(t, s, keyed("r", "a", "x"))
	s.SetRouteLimits(map[string]Limits{"r": {}})
	c.advance(2 * time.Minute)
	s.SetRouteLimits(map[string]Limits{"r": {DedupeWindow: 10 * time.Minute}})
	if id, dup := appendID(t, s, keyed("r", "a", "y")); dup || id == first {
		t.Errorf("AppendOnce(a) on again past its 1m window = %s, duplicate %v; want a new message", id, dup)
	}
}

// TestDedupeRepeatOnStalledDisk: the app's retry of a message its route's
// AppendWait gave up on, with the same key, is bounded by AppendWait too
// while the first copy still waits for the disk: it must not hold the
// app for as long as the disk stalls (docs/spool.md, "A disk that
// stalls").
func TestDedupeRepeatOnStalledDisk(t *testing.T) {
	ffs := &faultFS{}
	c := newTestClock()
	s := open(t, t.TempDir(), FileOptions{FS: ffs, Now: c.now,
		Routes: map[string]Limits{"r": {DedupeWindow: time.Minute, AppendWait: 50 * time.Millisecond}}})
	stalled, release := ffs.stallSyncs()
	defer release()
	first := keyed("r", "k", "one")
	if err := s.AppendOnce(t.Context(), first); !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("AppendOnce on a stalled disk = %v, want ErrUnconfirmed", err)
	}
	<-stalled
	errc := make(chan error, 1)
	go func() { errc <- s.AppendOnce(t.Context(), keyed("r", "k", "two")) }()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrUnconfirmed) {
			t.Fatalf("repeat of an unconfirmed key on a stalled disk = %v, want ErrUnconfirmed", err)
		}
	case <-time.After(10 * time.Second):
		release()
		t.Fatalf("repeat of an unconfirmed key still waits 10s into the stall, past the route's AppendWait (50ms); returned %v once released", <-errc)
	}
	release()
	id, dup := appendID(t, s, keyed("r", "k", "three"))
	if !dup || id != first.ID {
		t.Fatalf("repeat once the disk answered = %s, duplicate %v; want %s, true", id, dup, first.ID)
	}
}

// fillSettled appends and acks n messages without a key, about 1 KB each,
// so that every earlier segment whose messages are settled would be
// collected.
func fillSettled(t *testing.T, s *FileStore, n int) {
	t.Helper()
	for i := range n {
		m := &Message{Route: "r", Method: "POST", Target: "/e", Body: make([]byte, 1000)}
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append(fill %d) = %v", i, err)
		}
		if err := s.Ack(m.ID); err != nil {
			t.Fatalf("Ack(fill %d) = %v", i, err)
		}
	}
}

// A window lengthened by a reload keeps the keys within the old window
// until the new one has passed, on disk as in memory: a reopen after the
// old window, with every message settled, still answers their repeats. A
// key already past the old window when the reload comes is not brought
// back.
func TestDedupeLengthenedWindowSurvivesReopen(t *testing.T) {
	c := newTestClock()
	dir := t.TempDir()
	s := open(t, dir, dedupeOpts(c, time.Minute))
	past, _ := appendID(t, s, keyed("r", "past", "x"))
	c.advance(50 * time.Second)
	first, _ := appendID(t, s, keyed("r", "k", "one"))
	for _, id := range []string{past, first} {
		if err := s.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	c.advance(20 * time.Second) // "past" has left its 1m window, k has not

	long := dedupeOpts(c, 10*time.Minute)
	s.SetRouteLimits(long.Routes)
	if id, dup := appendID(t, s, keyed("r", "past", "y")); dup || id == past {
		t.Errorf("AppendOnce(past) after a reload that lengthens the window, the key 70s old = %s, duplicate %v; want a new message", id, dup)
	}
	c.advance(2 * time.Minute) // past the old window, within the new one
	fillSettled(t, s, 20)
	if id, dup := appendID(t, s, keyed("r", "k", "two")); !dup || id != first {
		t.Fatalf("AppendOnce(k) within the lengthened window = %s, duplicate %v; want %s, true", id, dup, first)
	}
	s = reopen(t, s, long)
	if id, dup := appendID(t, s, keyed("r", "k", "three")); !dup || id != first {
		t.Fatalf("AppendOnce(k) after a reopen within the lengthened window = %s, duplicate %v; want %s, true", id, dup, first)
	}
	// Past the new window the segment goes.
	c.advance(8 * time.Minute)
	fillSettled(t, s, 20)
	if id, dup := appendID(t, s, keyed("r", "k", "four")); dup || id == first {
		t.Fatalf("AppendOnce(k) past the lengthened window = %s, duplicate %v; want a new message", id, dup)
	}
	s = reopen(t, s, long)
	if id, ok, _ := s.Duplicate(t.Context(), "r", "k"); !ok || id == first {
		t.Fatalf("Duplicate(k) after the last reopen = %s, %v; want the new message's ID", id, ok)
	}
}

// A window turned off and on again with a longer one keeps the keys seen
// before for the new window, on disk as in memory.
func TestDedupeOnAgainLongerSurvivesReopen(t *testing.T) {
	c := newTestClock()
	dir := t.TempDir()
	s := open(t, dir, dedupeOpts(c, time.Minute))
	first, _ := appendID(t, s, keyed("r", "k", "one"))
	if err := s.Ack(first); err != nil {
		t.Fatal(err)
	}
	s.SetRouteLimits(map[string]Limits{"r": {}})
	c.advance(30 * time.Second)
	long := dedupeOpts(c, 10*time.Minute)
	s.SetRouteLimits(long.Routes)
	c.advance(2 * time.Minute)
	fillSettled(t, s, 20)
	s = reopen(t, s, long)
	if id, dup := appendID(t, s, keyed("r", "k", "two")); !dup || id != first {
		t.Fatalf("AppendOnce(k) after a reopen, on again with a longer window = %s, duplicate %v; want %s, true", id, dup, first)
	}
}

// An AppendOnce being committed while a reload turns the window off keeps
// its key, in memory and on disk, for the window it was added under:
// turned on again, its repeat is answered with its ID, after a reopen
// too, although every message was settled while the window was off.
func TestDedupeCommitWhileTurnedOff(t *testing.T) {
	ffs := &faultFS{}
	c := newTestClock()
	dir := t.TempDir()
	opts := dedupeOpts(c, time.Minute)
	opts.FS = ffs
	s := open(t, dir, opts)
	stalled, release := ffs.stallSyncs()
	defer release()
	first := keyed("r", "k", "one")
	errc := make(chan error, 1)
	go func() { errc <- s.AppendOnce(t.Context(), first) }()
	<-stalled // being committed
	s.SetRouteLimits(map[string]Limits{"r": {}})
	release()
	if err := <-errc; err != nil {
		t.Fatalf("AppendOnce while the window was turned off = %v", err)
	}
	if err := s.Ack(first.ID); err != nil {
		t.Fatal(err)
	}
	c.advance(10 * time.Second)
	fillSettled(t, s, 20)
	s.SetRouteLimits(opts.Routes)
	if id, dup := appendID(t, s, keyed("r", "k", "two")); !dup || id != first.ID {
		t.Fatalf("AppendOnce(k) on again = %s, duplicate %v; want %s, true", id, dup, first.ID)
	}
	s = reopen(t, s, opts)
	if id, dup := appendID(t, s, keyed("r", "k", "three")); !dup || id != first.ID {
		t.Fatalf("AppendOnce(k) after a reopen, on again = %s, duplicate %v; want %s, true", id, dup, first.ID)
	}
}

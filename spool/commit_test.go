package spool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

func TestWriteFailures(t *testing.T) {
	tests := []struct {
		name     string
		writeErr error
		syncErr  error
	}{
		{"failing write", errors.New("injected write error"), nil},
		{"failing fsync", nil, errors.New("injected fsync error")},
		{"disk full", syscall.ENOSPC, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ffs := &faultFS{}
			s := open(t, dir, FileOptions{FS: ffs, ReopenDelay: -1})
			good := appendN(t, s, "r", 2, 100)

			ffs.fail(tt.writeErr, tt.syncErr)
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range errs {
				wg.Go(func() { errs[i] = s.Append(t.Context(), testMessage("r", 10+i, 100)) })
			}
			wg.Wait()
			for i, err := range errs {
				if !errors.Is(err, ErrFailed) {
					t.Errorf("Append(%d) with %s = %v, want %v", i, tt.name, err, ErrFailed)
				}
			}
			ffs.fail(nil, nil)
			if err := s.Append(t.Context(), testMessage("r", 50, 100)); !errors.Is(err, ErrFailed) {
				t.Errorf("Append() after failure = %v, want %v (fail closed)", err, ErrFailed)
			}
			if err := s.Ack(good[0]); !errors.Is(err, ErrFailed) {
				t.Errorf("Ack() after failure = %v, want %v", err, ErrFailed)
			}
			if st := s.Stats(); !st.Failed || st.WriteErrors+st.FsyncErrors == 0 || st.Appends != 2 {
				t.Errorf("Stats() = %+v, want failed, errors counted, 2 appends", st)
			}
			if _, ok, err := s.Next("r", testEpoch); !ok || err != nil {
				t.Errorf("Next() after failure = %v, %v, want true, nil (reads still work)", ok, err)
			}

			s = reopen(t, s, FileOptions{FS: ffs})
			got := ids(t, s, Pending)
			for _, g := range good {
				if !slices.Contains(got, g) {
					t.Errorf("after reopen: List() = %v, want it to hold acknowledged %s", got, g)
				}
			}
			if err := s.Append(t.Context(), testMessage("r", 60, 100)); err != nil {
				t.Errorf("Append() after reopen = %v, want nil", err)
			}
		})
	}
}

// TestReopenAfterFailure: after a failed write or fsync the store reopens
// itself once the disk works again. What was acknowledged is kept, what
// the failed batches wrote is cut (none of it was acknowledged), leases
// survive, and writes go to a new segment.
func TestReopenAfterFailure(t *testing.T) {
	for _, tt := range []struct {
		name              string
		writeErr, syncErr error
	}{
		{"failing write", errors.New("injected write error"), nil},
		{"failing fsync", nil, errors.New("injected fsync error")},
		{"disk full", syscall.ENOSPC, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ffs := &faultFS{}
			s := open(t, t.TempDir(), FileOptions{FS: ffs, ReopenDelay: 5 * time.Millisecond})
			good := appendN(t, s, "r", 3, 100)
			leased, ok, err := s.Next("r", testEpoch)
			if !ok || err != nil || leased.ID != good[0] {
				t.Fatalf("Next = %v, %v", ok, err)
			}
			segsBefore := s.Stats().Segments

			ffs.fail(tt.writeErr, tt.syncErr)
			var failed []string
			for i := range 4 {
				m := testMessage("r", 20+i, 100)
				if err := s.Append(t.Context(), m); !errors.Is(err, ErrFailed) {
					t.Fatalf("Append during failure = %v, want ErrFailed", err)
				}
				failed = append(failed, m.ID)
			}
			ffs.fail(nil, nil)
			// Both reopens below within 10s, polling the store's own timer.
			end := time.Now().Add(10 * time.Second)
			var st Stats
			if !poll.Within(time.Until(end), func() bool { st = s.Stats(); return !st.Failed && st.Reopens > 0 }) {
				t.Fatalf("store did not reopen: %+v", st)
			}
			got := ids(t, s, Pending)
			if !slices.Equal(got, good) {
				t.Errorf("after reopen: pending %v, want the acknowledged %v (failed: %v)", got, good, failed)
			}
			if st := s.Stats(); st.Segments <= segsBefore && st.Segments < 2 {
				t.Errorf("after reopen: %d segments, want writes in a new one", st.Segments)
			}
			// good[0] is still leased: Next skips it.
			if m, ok, err := s.Next("r", testEpoch); !ok || err != nil || m.ID != good[1] {
				t.Errorf("Next after reopen = %v, %v, want %s", ok, err, good[1])
			}
			m := testMessage("r", 60, 100)
			if err := s.Append(t.Context(), m); err != nil {
				t.Fatalf("Append after reopen = %v", err)
			}
			if err := s.Ack(good[0]); err != nil {
				t.Fatalf("Ack of the leased message after reopen = %v", err)
			}
			// A leased message whose Ack failed is released by the
			// reopen: its holder gave up on it.
			ffs.fail(tt.writeErr, tt.syncErr)
			if err := s.Ack(good[1]); !errors.Is(err, ErrFailed) {
				t.Fatalf("Ack during a failure = %v, want ErrFailed", err)
			}
			ffs.fail(nil, nil)
			if !poll.Within(time.Until(end), func() bool { st = s.Stats(); return !st.Failed && st.Reopens >= 2 }) {
				t.Fatalf("store did not reopen a second time: %+v", st)
			}
			if m, ok, err := s.Next("r", testEpoch); !ok || err != nil || m.ID != good[1] {
				t.Errorf("Next after the second reopen = %v, %v, want the released %s", ok, err, good[1])
			}
			s = reopen(t, s, FileOptions{FS: ffs})
			if got, want := ids(t, s, Pending), []string{good[1], good[2], m.ID}; !slices.Equal(got, want) {
				t.Errorf("after a clean reopen: pending %v, want %v", got, want)
			}
		})
	}
}

func TestGroupCommit(t *testing.T) {
	const producers, each = 64, 20
	ffs := &faultFS{}
	s := open(t, t.TempDir(), FileOptions{FS: ffs})
	before := ffs.syncs.Load()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				if err := s.Append(t.Context(), &Message{Route: "r", Body: make([]byte, 1024)}); err != nil {
					t.Errorf("Append(producer %d, %d) = %v, want nil", p, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	syncs := ffs.syncs.Load() - before
	if appends := int64(producers * each); syncs*4 > appends {
		t.Errorf("%d concurrent Appends took %d syncs, want at most %d", appends, syncs, appends/4)
	}
	if n := len(ids(t, s, Pending)); n != producers*each {
		t.Errorf("List() = %d messages, want %d", n, producers*each)
	}
	t.Logf("%d appends, %d syncs", producers*each, syncs)
}

// TestAppendOnStalledDisk: an Append whose fsync does not end gives up
// when its context does, with ErrUnconfirmed; the writer still commits
// the message once the disk answers, and the store goes on.
func TestAppendOnStalledDisk(t *testing.T) {
	ffs := &faultFS{}
	s := open(t, t.TempDir(), FileOptions{FS: ffs})
	stalled, release := ffs.stallSyncs()
	defer release()
	ctx, cancel := context.WithCancelCause(t.Context())
	errc := make(chan error, 1)
	m := &Message{Route: "r", Body: []byte("stalled")}
	go func() { errc <- s.Append(ctx, m) }()
	<-stalled // the writer waits for the disk with the message
	cause := errors.New("the route's timeout")
	cancel(cause)
	err := <-errc
	if !errors.Is(err, ErrUnconfirmed) || !errors.Is(err, cause) {
		t.Fatalf("Append on a stalled disk = %v, want ErrUnconfirmed and the context's cause", err)
	}
	if got := ids(t, s, Pending); len(got) != 0 {
		t.Errorf("pending while the disk stalls = %v, want none", got)
	}
	release()
	// The next Append is committed after the stalled one: both are
	// stored once it returns.
	if err := s.Append(t.Context(), &Message{Route: "r", Body: []byte("after")}); err != nil {
		t.Fatalf("Append after the stall = %v, want nil", err)
	}
	got := ids(t, s, Pending)
	if len(got) != 2 || !slices.Contains(got, m.ID) {
		t.Fatalf("pending after the stall = %v, want 2 with the unconfirmed %s", got, m.ID)
	}
	stored, _, err := s.Get(m.ID)
	if err != nil || string(stored.Body) != "stalled" {
		t.Fatalf("Get(%s) = %v, %v; want the unconfirmed message's body", m.ID, stored, err)
	}
}

// TestAppendWaitBound: a route's AppendWait bounds an Append's wait for a
// stalled disk without any deadline on the context; other routes wait.
func TestAppendWaitBound(t *testing.T) {
	ffs := &faultFS{}
	s := open(t, t.TempDir(), FileOptions{FS: ffs, Routes: map[string]Limits{"bounded": {AppendWait: 50 * time.Millisecond}}})
	stalled, release := ffs.stallSyncs()
	defer release()
	unbounded := make(chan error, 1)
	go func() { unbounded <- s.Append(t.Context(), &Message{Route: "other", Body: []byte("o")}) }()
	<-stalled
	m := &Message{Route: "bounded", Body: []byte("b")}
	if err := s.Append(t.Context(), m); !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("Append on a route with AppendWait, disk stalled = %v, want ErrUnconfirmed", err)
	}
	select {
	case err := <-unbounded:
		t.Fatalf("Append on a route without AppendWait returned %v while the disk stalls, want it to wait", err)
	default:
	}
	release()
	if err := <-unbounded; err != nil {
		t.Fatalf("Append on the route without AppendWait = %v once the disk answers, want nil", err)
	}
	poll.Until(t, 10*time.Second, "the unconfirmed message stored", func() bool { return len(ids(t, s, Pending)) == 2 })
	if _, _, err := s.Get(m.ID); err != nil {
		t.Errorf("Get(%s) = %v, want the unconfirmed message stored", m.ID, err)
	}
}

func TestFsyncInterval(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	opts := FileOptions{FS: ffs, Fsync: FsyncInterval, Interval: time.Hour}
	s := open(t, dir, opts)
	before := ffs.syncs.Load()
	id := appendN(t, s, "r", 10, 100)
	if got := ffs.syncs.Load() - before; got != 0 {
		t.Errorf("syncs after 10 Appends with a 1h interval = %d, want 0", got)
	}
	s = reopen(t, s, FileOptions{FS: ffs})
	if got := ffs.syncs.Load() - before; got < 1 {
		t.Errorf("syncs after Close = %d, want >= 1", got)
	}
	if got := ids(t, s, Pending); !slices.Equal(got, id) {
		t.Errorf("List() after reopen = %v, want %v", got, id)
	}
	s.Close()

	// A failing periodic sync fails the store closed.
	s = open(t, dir, FileOptions{FS: ffs, Fsync: FsyncInterval, Interval: time.Millisecond})
	ffs.fail(nil, errors.New("injected fsync error"))
	if err := s.Append(t.Context(), testMessage("r", 20, 10)); err != nil {
		t.Fatalf("Append() = %v, want nil (written, not yet synced)", err)
	}
	poll.Until(t, 5*time.Second, "the failed periodic sync to fail the store", func() bool { return s.Stats().Failed })
	ffs.fail(nil, nil)
	if err := s.Append(t.Context(), testMessage("r", 21, 10)); !errors.Is(err, ErrFailed) {
		t.Errorf("Append() after failed periodic sync = %v, want %v", err, ErrFailed)
	}
}

// TestFailuresUnderLoad: producers append and settle while the disk
// fails and recovers again and again; the store reopens itself each time.
// After a clean reopen every message whose Append returned nil is there,
// unless its Ack returned nil too, in which case it is gone.
func TestFailuresUnderLoad(t *testing.T) {
	ffs := &faultFS{}
	opts := FileOptions{FS: ffs, ReopenDelay: time.Millisecond, SegmentSize: 64 << 10}
	s := open(t, t.TempDir(), opts)
	var (
		mu      sync.Mutex
		kept    = map[string]bool{} // appended; value: acknowledged as delivered
		settles int
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := &Message{Route: fmt.Sprint("r", w%2), Method: "POST", Target: "/", Body: make([]byte, 200)}
				err := s.Append(t.Context(), m)
				if err != nil {
					if !errors.Is(err, ErrFailed) {
						t.Errorf("Append = %v, want nil or ErrFailed", err)
						return
					}
					continue
				}
				// Settle most messages, as deliveries would, so the spool
				// stays small and each reopen quick.
				acked := i%4 != 0 && s.Ack(m.ID) == nil
				mu.Lock()
				kept[m.ID] = acked
				settles++
				mu.Unlock()
			}
		})
	}
	progress := func() int { mu.Lock(); defer mu.Unlock(); return settles }
	// Faults come and go, bounded in count; each clean spell lasts until
	// the store has reopened and taken more appends.
	faults := []struct{ write, sync error }{
		{nil, errors.New("injected fsync error")},
		{syscall.ENOSPC, nil},
		{errors.New("injected write error"), nil},
	}
	// All nine cycles within 60s.
	end := time.Now().Add(60 * time.Second)
	finished := true
	wait := func(cond func() bool) {
		if finished && !poll.Within(time.Until(end), cond) {
			finished = false
		}
	}
	for i := range 9 {
		f := faults[i%len(faults)]
		ffs.fail(f.write, f.sync)
		wait(func() bool { return s.Stats().Failed }) // until a commit hits the fault
		ffs.fail(nil, nil)
		wait(func() bool { return !s.Stats().Failed }) // the store's own retry timer
		n := progress()
		wait(func() bool { return progress() >= n+50 }) // appends go on after the reopen
	}
	close(stop)
	wg.Wait()
	if !finished {
		t.Fatalf("the fault cycles did not finish within 60s: %+v", s.Stats())
	}
	reopens := s.Stats().Reopens
	if reopens < 9 {
		t.Errorf("Stats().Reopens = %d, want at least 9", reopens)
	}
	s = reopen(t, s, FileOptions{})
	got := map[string]bool{}
	for _, id := range ids(t, s, Pending) {
		got[id] = true
	}
	for id, acked := range kept {
		if got[id] == acked {
			t.Fatalf("message %s: stored %v after a reopen, though its Ack returned nil: %v", id, got[id], acked)
		}
	}
	t.Logf("%d messages appended, %d stored after %d failures and reopens", len(kept), len(got), reopens)
}

// A full disk that stays full: the writer reopens the store again and
// again, and every reopen succeeds (it needs no room) while every write
// after it fails. The reopens write on in the empty segment the first one
// made instead of adding one, and one open file, per reopen, and what was
// acknowledged before the outage survives it.
func TestLongOutageAddsNoSegments(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	s := open(t, dir, FileOptions{FS: ffs, ReopenDelay: time.Millisecond})
	good := appendN(t, s, "r", 3, 100)
	segsBefore := s.Stats().Segments

	ffs.fail(syscall.ENOSPC, nil)
	const reopens = 8
	start := time.Now()
	end := start.Add(20 * time.Second)
	for i := 0; s.Stats().Reopens < reopens; i++ {
		if time.Now().After(end) {
			t.Fatalf("after %d appends in 20s: %+v, want %d reopens", i, s.Stats(), reopens)
		}
		// Refused at once while the store is failed; after a reopen,
		// written, and failed by the full disk.
		if err := s.Append(t.Context(), testMessage("r", 100+i, 100)); !errors.Is(err, ErrFailed) {
			t.Fatalf("Append on a full disk = %v, want ErrFailed", err)
		}
		time.Sleep(time.Millisecond) // pacing the load, not synchronising
	}
	// The delay doubles with each reopen, since none was followed by a
	// successful write: 1+2+...+64 ms before the 8th (a timer never fires
	// early, so this bound holds on any machine).
	if took := time.Since(start); took < 127*time.Millisecond {
		t.Errorf("%d reopens took %v, want at least 127ms: the back-off did not grow", reopens, took)
	}
	st := s.Stats()
	if st.Segments > segsBefore+1 {
		t.Errorf("after %d reopens: %d segments, want at most %d (one new one)", st.Reopens, st.Segments, segsBefore+1)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) > segsBefore+1 {
		t.Errorf("after %d reopens: %d segment files in the spool dir (%v), want at most %d", st.Reopens, len(files), files, segsBefore+1)
	}

	ffs.fail(nil, nil)
	if !poll.Within(time.Until(end), func() bool { return !s.Stats().Failed }) {
		t.Fatalf("store did not reopen after the disk had room again: %+v", s.Stats())
	}
	m := testMessage("r", 1000, 100)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append once the disk has room = %v", err)
	}
	if got, want := ids(t, s, Pending), append(good, m.ID); !slices.Equal(got, want) {
		t.Errorf("pending after the outage = %v, want %v", got, want)
	}
}

// TestShutdownOnStalledDisk: Shutdown gives up on a stalled fsync when
// its context ends, with a *StalledError naming the directory and the
// unconfirmed message; the directory stays locked while the writer
// waits for the disk, and once the disk answers a reopen recovers every
// acknowledged message, and the unconfirmed one that was written.
func TestShutdownOnStalledDisk(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	s, err := OpenFile(dir, FileOptions{FS: ffs})
	if err != nil {
		t.Fatalf("OpenFile(%q) = %v, want nil", dir, err)
	}
	acked := appendN(t, s, "r", 3, 100)
	stalled, release := ffs.stallSyncs()
	defer release()
	m := &Message{Route: "r", Body: []byte("unconfirmed")}
	appended := make(chan error, 1)
	go func() { appended <- s.Append(context.Background(), m) }()
	<-stalled // the writer waits for the disk with m

	const bound = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	start := time.Now()
	err = s.Shutdown(ctx)
	took := time.Since(start)
	var se *StalledError
	if !errors.As(err, &se) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown(%v) on a stalled disk = %v, want a *StalledError wrapping the deadline", bound, err)
	}
	if se.Dir != dir || se.Unconfirmed != 1 || !strings.Contains(err.Error(), dir) {
		t.Errorf("Shutdown(%v) = %+v (%q), want Dir %s and 1 unconfirmed message", bound, se, err, dir)
	}
	if took > bound+5*time.Second {
		t.Errorf("Shutdown(%v) on a stalled disk took %v, want about its bound", bound, took)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("Close() after Shutdown = %v, want ErrClosed", err)
	}
	// The writer may still write: the directory is not free yet.
	if s2, err := OpenFile(dir, FileOptions{}); !errors.Is(err, ErrLocked) {
		if err == nil {
			s2.Close()
		}
		t.Fatalf("OpenFile(%q) while the writer waits for the disk = %v, want ErrLocked", dir, err)
	}
	select {
	case err := <-appended:
		t.Fatalf("Append during the stall returned %v before the disk answered, want it to wait (no AppendWait)", err)
	default:
	}

	release()
	if err := <-appended; err != nil {
		t.Fatalf("Append once the disk answers = %v, want nil: the writer commits it", err)
	}
	var s2 *FileStore
	poll.Until(t, 10*time.Second, "the writer to release the directory", func() bool {
		s2, err = OpenFile(dir, FileOptions{})
		if err != nil && !errors.Is(err, ErrLocked) {
			t.Fatalf("OpenFile(%q) after the stall = %v, want nil", dir, err)
		}
		return err == nil
	})
	defer s2.Close()
	got := ids(t, s2, Pending)
	for _, id := range append(acked, m.ID) {
		if !slices.Contains(got, id) {
			t.Errorf("reopened store lacks %s; pending = %v, want the 3 acknowledged messages and %s", id, got, m.ID)
		}
	}
}

// TestShutdownWhileReadStalls: a read of a stalled disk holds the store
// (Next reads the body under its lock); Shutdown still returns at its
// bound, with the unconfirmed count unknown.
func TestShutdownWhileReadStalls(t *testing.T) {
	ffs := &faultFS{}
	s, err := OpenFile(t.TempDir(), FileOptions{FS: ffs})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "r", 1, 10)
	stalled, release := ffs.stallReads()
	defer release()
	nexted := make(chan error, 1)
	go func() {
		_, _, err := s.Next("r", time.Now())
		nexted <- err
	}()
	<-stalled
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err = s.Shutdown(ctx)
	var se *StalledError
	if !errors.As(err, &se) || se.Unconfirmed != -1 || !strings.Contains(err.Error(), "unknown number") {
		t.Fatalf("Shutdown while a read stalls = %v, want a *StalledError with Unconfirmed -1", err)
	}
	release()
	if err := <-nexted; err != nil {
		t.Errorf("Next once the disk answers = %v, want nil", err)
	}
}

// TestShutdownInTime: on a disk that answers, Shutdown with a bound is
// Close: it returns nil, and everything appended is there on reopen.
func TestShutdownInTime(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFile(dir, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	acked := appendN(t, s, "r", 5, 10)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown() = %v, want nil", err)
	}
	if err := s.Shutdown(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("second Shutdown() = %v, want ErrClosed", err)
	}
	s2 := open(t, dir, FileOptions{})
	if got := ids(t, s2, Pending); !slices.Equal(got, acked) {
		t.Errorf("reopened pending = %v, want %v", got, acked)
	}
}

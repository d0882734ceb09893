package spool

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// fileSize is the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestZeroAhead: with FileOptions.ZeroAhead the segment's file grows by
// that many zeros at a time, not with each batch; no segment grows past
// SegmentSize; and recovery takes the zeros for the end of the records,
// with or without ZeroAhead after the reopen, and goes on writing over
// them.
func TestZeroAhead(t *testing.T) {
	const ahead, segSize = 32 << 10, 256 << 10
	dir := t.TempDir()
	s := open(t, dir, FileOptions{SegmentSize: segSize, ZeroAhead: ahead})
	want := appendN(t, s, "r", 1, 1000)
	seg := segmentFiles(t, dir)[0]
	first := fileSize(t, seg)
	if first < ahead || first > ahead+2000 {
		t.Fatalf("file size after one append = %d, want the record and %d bytes of zeros", first, ahead)
	}
	for i := 1; i <= 5; i++ {
		m := testMessage("r", i, 1000)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatal(err)
		}
		want = append(want, m.ID)
	}
	if got := fileSize(t, seg); got != first {
		t.Errorf("file size after 5 appends into the zeros = %d, want %d (unchanged)", got, first)
	}
	for i := 6; len(segmentFiles(t, dir)) < 3; i++ {
		m := testMessage("r", i, 1000)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatal(err)
		}
		want = append(want, m.ID)
	}
	for _, p := range segmentFiles(t, dir)[:2] {
		if got := fileSize(t, p); got > segSize {
			t.Errorf("%s: size %d, want at most SegmentSize %d", p, got, segSize)
		}
	}
	// Reopened without ZeroAhead: the records end where the zeros begin,
	// and a new record goes there.
	s = reopen(t, s, FileOptions{SegmentSize: segSize})
	if st := s.Stats(); st.TornTail || st.CorruptRecords != 0 {
		t.Errorf("reopened: torn tail %v, %d corrupt records, want none", st.TornTail, st.CorruptRecords)
	}
	if got := ids(t, s, Pending); !slices.Equal(got, want) {
		t.Fatalf("reopened: %d messages, want %d", len(got), len(want))
	}
	m := testMessage("r", len(want), 1000)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	want = append(want, m.ID)
	s = reopen(t, s, FileOptions{SegmentSize: segSize, ZeroAhead: ahead})
	if got := ids(t, s, Pending); !slices.Equal(got, want) {
		t.Errorf("appended after the reopen, reopened again: %d messages, want %d", len(got), len(want))
	}
	if st := s.Stats(); st.TornTail || st.CorruptRecords != 0 {
		t.Errorf("reopened again: torn tail %v, %d corrupt records, want none", st.TornTail, st.CorruptRecords)
	}
}

// TestZeroAheadTornRecord: a record cut off by a crash, written over the
// zeros ahead, is a torn tail: the records before it are recovered, and
// the next Append and reopen keep them all.
func TestZeroAheadTornRecord(t *testing.T) {
	const ahead = 32 << 10
	dir := t.TempDir()
	s := open(t, dir, FileOptions{ZeroAhead: ahead})
	want := appendN(t, s, "r", 5, 1000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	seg := segmentFiles(t, dir)[0]
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	end := len(bytes.TrimRight(data, "\x00")) // the records' bodies end in letters
	if end == len(data) || end == 0 {
		t.Fatalf("no zeros after the records: %d of %d bytes", end, len(data))
	}
	// The first 40 bytes of the first record, as if the crash cut the
	// sixth record there.
	copy(data[end:], data[:40])
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, FileOptions{ZeroAhead: ahead})
	if got := ids(t, s, Pending); !slices.Equal(got, want) {
		t.Fatalf("after a torn record: %v, want %v", got, want)
	}
	if st := s.Stats(); !st.TornTail || st.CorruptRecords != 0 {
		t.Errorf("after a torn record: torn tail %v, %d corrupt records, want true, 0", st.TornTail, st.CorruptRecords)
	}
	m := testMessage("r", 5, 1000)
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	want = append(want, m.ID)
	s = reopen(t, s, FileOptions{ZeroAhead: ahead})
	if got := ids(t, s, Pending); !slices.Equal(got, want) {
		t.Errorf("appended after the torn tail, reopened: %v, want %v", got, want)
	}
	if st := s.Stats(); st.TornTail || st.CorruptRecords != 0 {
		t.Errorf("reopened: torn tail %v, %d corrupt records, want none", st.TornTail, st.CorruptRecords)
	}
}

// TestZeroAheadOnFullDisk: a disk that refuses the zeros written ahead
// (full) does not fail the batch whose records it took: the records go
// into the zeros left, and are refused only when the disk refuses them.
func TestZeroAheadOnFullDisk(t *testing.T) {
	const ahead = 64 << 10
	ffs := &faultFS{}
	dir := t.TempDir()
	s := open(t, dir, FileOptions{FS: ffs, ZeroAhead: ahead, ReopenDelay: -1})
	want := appendN(t, s, "r", 1, 1000) // the segment now holds 64 KiB of zeros
	ffs.failZeros.Store(true)           // and the disk refuses more of them
	for i := 1; ; i++ {
		m := testMessage("r", i, 1000)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append %d into the zeros left = %v, want nil", i, err)
		}
		want = append(want, m.ID)
		if int64(len(want))*1100 > ahead*3/4 {
			break // past the point where the zeros are extended
		}
	}
	s = reopen(t, s, FileOptions{})
	if got := ids(t, s, Pending); !slices.Equal(got, want) {
		t.Errorf("reopened: %d messages, want %d", len(got), len(want))
	}
}

// TestZeroAheadFailures: failed writes and fsyncs in segments with zeros
// written ahead, the writer reopening the store after each: a batch that
// extends the zeros and fails its fsync, a record write cut short inside
// or past the zeros, a disk that refuses the zeros. After the last
// reopen, and after a clean close and open, the pending messages are
// exactly those whose Append returned nil: the reopen cuts each segment
// back to what was synced, and nothing acknowledged is behind zeros.
func TestZeroAheadFailures(t *testing.T) {
	for seed := range uint64(3) {
		rng := rand.New(rand.NewPCG(seed, 15))
		ffs := &faultFS{}
		opts := FileOptions{FS: ffs, ZeroAhead: 8 << 10, SegmentSize: 32 << 10, ReopenDelay: time.Millisecond}
		s := open(t, t.TempDir(), opts)
		var want []string
		failures := 0
		for i := range 200 {
			switch rng.IntN(16) {
			case 0:
				ffs.fail(syscall.ENOSPC, nil) // half of each write, then ENOSPC
			case 1:
				ffs.fail(nil, errors.New("injected fsync error"))
			case 2:
				ffs.failZeros.Store(!ffs.failZeros.Load())
			}
			m := testMessage("r", i, 100+rng.IntN(3000))
			err := s.Append(t.Context(), m)
			ffs.fail(nil, nil)
			if err == nil {
				want = append(want, m.ID)
				continue
			}
			if !errors.Is(err, ErrFailed) {
				t.Fatalf("seed %d: Append %d = %v, want nil or ErrFailed", seed, i, err)
			}
			failures++
			var st Stats
			if !poll.Within(10*time.Second, func() bool { st = s.Stats(); return !st.Failed && st.Reopens == int64(failures) }) {
				t.Fatalf("seed %d: store did not reopen after failure %d: %+v", seed, failures, st)
			}
			if got := ids(t, s, Pending); !slices.Equal(got, want) {
				t.Fatalf("seed %d: after reopen %d: %d pending, want the %d acknowledged", seed, failures, len(got), len(want))
			}
		}
		if failures == 0 {
			t.Fatalf("seed %d: no failure injected", seed)
		}
		ffs.failZeros.Store(false)
		s = reopen(t, s, opts)
		if got := ids(t, s, Pending); !slices.Equal(got, want) {
			t.Errorf("seed %d: closed and opened: %d pending, want the %d acknowledged", seed, len(got), len(want))
		}
		if st := s.Stats(); st.TornTail || st.CorruptRecords != 0 {
			t.Errorf("seed %d: closed and opened: torn tail %v, %d corrupt records, want none", seed, st.TornTail, st.CorruptRecords)
		}
	}
}

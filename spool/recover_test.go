package spool

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestRecoverState(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, FileOptions{})
	id := appendN(t, s, "r", 5, 50)
	later := testEpoch.Add(time.Hour)
	steps := []struct {
		name string
		err  error
	}{
		{"RetryLater(1)", s.RetryLater(id[1], later, 4)},
		{"DeadLetter(2)", s.DeadLetter(id[2], "410 Gone")},
		{"Ack(3)", s.Ack(id[3])},
		{"RetryLater(4)", s.RetryLater(id[4], later, 9)},
		{"DeadLetter(4)", s.DeadLetter(id[4], "too many")},
		{"Replay(4)", s.Replay(id[4])},
	}
	for _, st := range steps {
		if st.err != nil {
			t.Fatalf("%s = %v, want nil", st.name, st.err)
		}
	}
	before, _ := s.List("", Pending, "", 0)
	deadBefore, _ := s.List("", Dead, "", 0)
	s = reopen(t, s, FileOptions{})
	after, _ := s.List("", Pending, "", 0)
	deadAfter, _ := s.List("", Dead, "", 0)
	for i := range before {
		before[i].Arrived, before[i].NextAttempt = before[i].Arrived.UTC(), before[i].NextAttempt.UTC()
	}
	for i := range after {
		after[i].Arrived, after[i].NextAttempt = after[i].Arrived.UTC(), after[i].NextAttempt.UTC()
	}
	if !reflect.DeepEqual(after, before) {
		t.Errorf("List(Pending) after reopen = %+v, want %+v", after, before)
	}
	if len(deadAfter) != 1 || deadAfter[0].ID != id[2] || deadAfter[0].DeadReason != "410 Gone" || !reflect.DeepEqual(len(deadBefore), 1) {
		t.Errorf("List(Dead) after reopen = %+v, want %s with reason", deadAfter, id[2])
	}
	tests := []struct {
		id       string
		state    State
		attempts int
		next     time.Time
	}{
		{id[0], Pending, 0, time.Time{}},
		{id[1], Pending, 4, later},
		{id[2], Dead, 0, time.Time{}},
		{id[4], Pending, 0, time.Time{}},
	}
	for _, tt := range tests {
		m, in, err := s.Get(tt.id)
		if err != nil || in.State != tt.state || in.Attempts != tt.attempts || !in.NextAttempt.Equal(tt.next) || m.Attempts != tt.attempts {
			t.Errorf("Get(%s) = %+v, %v, want state %v, attempts %d, next %v", tt.id, in, err, tt.state, tt.attempts, tt.next)
		}
	}
	if _, _, err := s.Get(id[3]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(acked) = %v, want %v", err, ErrNotFound)
	}
	// id[1] is not due before later.
	var got []string
	for {
		m, ok, err := s.Next("r", testEpoch)
		if err != nil || !ok {
			break
		}
		got = append(got, m.ID)
	}
	if want := []string{id[0], id[4]}; !slices.Equal(got, want) {
		t.Errorf("Next() before due = %v, want %v", got, want)
	}
	if m, ok, _ := s.Next("r", later); !ok || m.ID != id[1] {
		t.Errorf("Next(at due time) = %v, %v, want %s", m, ok, id[1])
	}
}

func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, FileOptions{})
	id := appendN(t, s, "r", 4, 40)
	seg := segmentFiles(t, dir)[0]
	fi, _ := os.Stat(seg)
	start := fi.Size()
	last := testMessage("r", 4, 40)
	if err := s.Append(t.Context(), last); err != nil {
		t.Fatal(err)
	}
	s.Close()
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	for cut := start; cut < int64(len(data)); cut++ {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, filepath.Base(seg)), data[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenFile(d, FileOptions{})
		if err != nil {
			t.Fatalf("OpenFile(cut at %d) = %v, want nil", cut, err)
		}
		if got := ids(t, s, Pending); !slices.Equal(got, id) {
			t.Errorf("OpenFile(cut at %d): List() = %v, want %v", cut, got, id)
		}
		st := s.Stats()
		if st.TornTail != (cut > start) || st.CorruptRecords != 0 {
			t.Errorf("OpenFile(cut at %d): Stats() = torn %v, corrupt %d, want torn %v, 0 corrupt", cut, st.TornTail, st.CorruptRecords, cut > start)
		}
		if err := s.Append(t.Context(), testMessage("r", 4, 40)); err != nil {
			t.Errorf("OpenFile(cut at %d): Append() = %v, want nil", cut, err)
		}
		s.Close()
		s, err = OpenFile(d, FileOptions{})
		if err != nil {
			t.Fatalf("OpenFile(cut at %d, again) = %v, want nil", cut, err)
		}
		if got, want := ids(t, s, Pending), append(slices.Clone(id), last.ID); !slices.Equal(got, want) || s.Stats().TornTail {
			t.Errorf("OpenFile(cut at %d, appended, reopened): List() = %v, torn %v, want %v, false", cut, got, s.Stats().TornTail, want)
		}
		s.Close()
	}
}

func TestCorruptionMidFile(t *testing.T) {
	const n = 40
	tests := []struct {
		name    string
		damage  func(b []byte)
		maxLost int
	}{
		{"zeroed sector", func(b []byte) { clear(b[4096 : 4096+512]) }, 4},
		{"flipped bit", func(b []byte) { b[len(b)/2] ^= 0x04 }, 1},
		{"flipped bit in header", func(b []byte) {
			// The length field of the 20th record.
			b[20*len(b)/n+5] ^= 0x80
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, FileOptions{})
			id := appendN(t, s, "r", n, 200)
			s.Close()
			seg := segmentFiles(t, dir)[0]
			data, err := os.ReadFile(seg)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(data)
			if err := os.WriteFile(seg, data, 0o600); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, FileOptions{})
			got := ids(t, s, Pending)
			if lost := n - len(got); lost < 1 || lost > tt.maxLost {
				t.Errorf("List() after damage = %d messages, want %d to %d", len(got), n-tt.maxLost, n-1)
			}
			for _, g := range got {
				if !slices.Contains(id, g) {
					t.Errorf("List() after damage has %s, which was never appended", g)
				}
				if _, _, err := s.Get(g); err != nil {
					t.Errorf("Get(%s) = %v, want nil", g, err)
				}
			}
			if !slices.Contains(got, id[0]) || !slices.Contains(got, id[n-1]) {
				t.Errorf("List() after damage = %v, want first and last intact", got)
			}
			if st := s.Stats(); st.CorruptRecords < 1 || st.TornTail {
				t.Errorf("Stats() = corrupt %d, torn %v, want >= 1, false", st.CorruptRecords, st.TornTail)
			}
			if err := s.Append(t.Context(), testMessage("r", n, 10)); err != nil {
				t.Errorf("Append() after damage = %v, want nil", err)
			}
		})
	}
}

func TestRotationAndDeletion(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	opts := FileOptions{SegmentSize: 1024, FS: ffs}
	s := open(t, dir, opts)
	id := appendN(t, s, "r", 30, 200) // about 4 records per segment
	if n := len(segmentFiles(t, dir)); n < 6 {
		t.Fatalf("segments after 30 appends = %d, want >= 6", n)
	}
	// One dead letter early on pins its segment, but not the others.
	if err := s.DeadLetter(id[1], "gone"); err != nil {
		t.Fatal(err)
	}
	snapshot := copyDir(t, dir)
	for _, x := range id[:25] {
		if x == id[1] {
			continue
		}
		if err := s.Ack(x); err != nil {
			t.Fatalf("Ack(%s) = %v, want nil", x, err)
		}
	}
	files := segmentFiles(t, dir)
	if st := s.Stats(); st.Segments != len(files) || len(files) > 5 {
		t.Errorf("after acks: Stats().Segments = %d, files %d, want equal and <= 5", st.Segments, len(files))
	}
	if len(ffs.removed) == 0 {
		t.Fatalf("no segment was deleted")
	}
	wantPending, wantDead := id[25:], []string{id[1]}
	check := func(s *FileStore, what string) {
		t.Helper()
		if got := ids(t, s, Pending); !slices.Equal(got, wantPending) {
			t.Errorf("%s: List(Pending) = %v, want %v", what, got, wantPending)
		}
		if got := ids(t, s, Dead); !slices.Equal(got, wantDead) {
			t.Errorf("%s: List(Dead) = %v, want %v", what, got, wantDead)
		}
	}
	s = reopen(t, s, opts)
	check(s, "reopen")
	s.Close()

	// A crash after any number of the removals: the later ones never
	// happened, their files are still there as they were when removed.
	for k := range ffs.removed {
		d := copyDir(t, dir)
		for _, r := range ffs.removed[k:] {
			if err := os.WriteFile(filepath.Join(d, filepath.Base(r.path)), r.data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		check(open(t, d, FileOptions{SegmentSize: 1024}), "crash before removal "+filepath.Base(ffs.removed[k].path))
	}
	// Older data never resurrects settled messages: the snapshot before the
	// acks still recovers everything.
	s = open(t, snapshot, FileOptions{})
	if got := len(ids(t, s, Pending)); got != 29 {
		t.Errorf("snapshot: pending = %d, want 29", got)
	}
}

func TestDamagedAfterOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, FileOptions{})
	id := appendN(t, s, "r", 3, 100)
	seg := segmentFiles(t, dir)[0]
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a bit in the first record's body while the store is open.
	f, err := os.OpenFile(seg, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[100] ^ 1}, 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, _, err = s.Next("r", testEpoch)
	var de *DamagedError
	if !errors.As(err, &de) || de.ID != id[0] {
		t.Fatalf("Next() over a damaged record = %v, want *DamagedError for %s", err, id[0])
	}
	if err := s.DeadLetter(id[0], "damaged"); err != nil {
		t.Fatalf("DeadLetter(damaged) = %v, want nil", err)
	}
	if m, ok, err := s.Next("r", testEpoch); !ok || err != nil || m.ID != id[1] {
		t.Errorf("Next() after dead-lettering the damaged one = %v, %v, %v, want %s", m, ok, err, id[1])
	}
}

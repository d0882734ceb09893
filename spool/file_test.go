package spool

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestAppendNextAck(t *testing.T) {
	s := open(t, t.TempDir(), FileOptions{})
	want := testMessage("events", 1, 100)
	want.IdempotencyKey, want.TraceParent, want.Attempts = "k1", "00-t-s-01", 0
	if err := s.Append(t.Context(), want); err != nil {
		t.Fatalf("Append() = %v, want nil", err)
	}
	auto := &Message{Route: "events", Body: []byte("x")}
	if err := s.Append(t.Context(), auto); err != nil || len(auto.ID) != 24 || auto.Arrived.IsZero() {
		t.Fatalf("Append(no ID) = %v, ID %q, Arrived %v; want nil, 24 hex digits, set", err, auto.ID, auto.Arrived)
	}
	if err := s.Append(t.Context(), &Message{ID: want.ID}); !errors.Is(err, ErrExists) {
		t.Errorf("Append(duplicate ID) = %v, want %v", err, ErrExists)
	}

	got, ok, err := s.Next("events", testEpoch)
	if err != nil || !ok {
		t.Fatalf("Next() = _, %v, %v, want true, nil", ok, err)
	}
	want.Arrived = want.Arrived.Local()
	got.Arrived = got.Arrived.Local()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Next() = %+v, want %+v", got, want)
	}
	second, ok, _ := s.Next("events", testEpoch)
	if !ok || second.ID != auto.ID {
		t.Errorf("Next() again = %v, %v, want %s (first is leased)", second, ok, auto.ID)
	}
	if _, ok, _ := s.Next("events", testEpoch); ok {
		t.Errorf("Next() third = true, want false (all leased)")
	}
	if _, ok, _ := s.Next("other", testEpoch); ok {
		t.Errorf("Next(other) = true, want false")
	}
	if err := s.Ack(want.ID); err != nil {
		t.Fatalf("Ack() = %v, want nil", err)
	}
	if _, _, err := s.Get(want.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(acked) = %v, want %v", err, ErrNotFound)
	}
	if err := s.Ack(want.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Ack(acked) = %v, want %v", err, ErrNotFound)
	}
	if err := s.Replay(auto.ID); !errors.Is(err, ErrState) {
		t.Errorf("Replay(pending) = %v, want %v", err, ErrState)
	}
	st := s.Stats()
	if st.Total.Pending != 1 || st.Routes["events"].Pending != 1 || st.Appends != 2 {
		t.Errorf("Stats() = %+v, want 1 pending in events, 2 appends", st)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v, want nil", err)
	}
	if err := s.Append(t.Context(), &Message{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Append(after Close) = %v, want %v", err, ErrClosed)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("Close() again = %v, want %v", err, ErrClosed)
	}
}

func TestLimits(t *testing.T) {
	size := int64(len(encodeRecord(&record{typ: recMessage, msg: testMessage("r", 0, 100)})))
	tests := []struct {
		name string
		opts FileOptions
		ok   int
	}{
		{"max messages", FileOptions{MaxMessages: 3}, 3},
		{"max bytes", FileOptions{MaxBytes: 2*size + size/2}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, t.TempDir(), tt.opts)
			id := appendN(t, s, "r", tt.ok, 100)
			m := testMessage("r", 99, 100)
			if err := s.Append(t.Context(), m); !errors.Is(err, ErrFull) {
				t.Fatalf("Append(over limit) = %v, want %v", err, ErrFull)
			}
			if st := s.Stats(); st.Total.Pending != int64(tt.ok) {
				t.Errorf("Stats().Total.Pending = %d, want %d", st.Total.Pending, tt.ok)
			}
			if err := s.Ack(id[0]); err != nil {
				t.Fatal(err)
			}
			if err := s.Append(t.Context(), m); err != nil {
				t.Errorf("Append(after Ack) = %v, want nil", err)
			}
		})
	}
}

func TestAppendTooLarge(t *testing.T) {
	big := make([]byte, maxField+1)
	tests := []struct {
		name string
		m    *Message
	}{
		{"body", &Message{Route: "r", Body: big}},
		{"header value", &Message{Route: "r", Header: map[string][]string{"X": {string(big)}}}},
	}
	s := open(t, t.TempDir(), FileOptions{})
	for _, tt := range tests {
		if err := s.Append(t.Context(), tt.m); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Append(%s over 64 MiB) = %v, want %v", tt.name, err, ErrTooLarge)
		}
	}
	if st := s.Stats(); st.Total.Pending != 0 {
		t.Errorf("Stats().Total.Pending = %d, want 0", st.Total.Pending)
	}
}

func TestLockAndPermissions(t *testing.T) {
	dir := t.TempDir() + "/spool"
	s := open(t, dir, FileOptions{})
	appendN(t, s, "r", 1, 10)
	if _, err := OpenFile(dir, FileOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("OpenFile(locked dir) = %v, want %v", err, ErrLocked)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("Stat(dir) mode = %v, %v, want 0700", fi.Mode().Perm(), err)
	}
	for _, p := range segmentFiles(t, dir) {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("Stat(%s) mode = %v, %v, want 0600", p, fi.Mode().Perm(), err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, lockName), 0o666); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, FileOptions{})
	if fi, err := os.Stat(filepath.Join(dir, lockName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("Stat(LOCK left 0666, after OpenFile) mode = %v, %v, want 0600", fi.Mode().Perm(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("Stat(too-open dir after OpenFile) mode = %v, %v, want 0700", fi.Mode().Perm(), err)
	}
	if n := len(ids(t, s, Pending)); n != 1 {
		t.Errorf("List() after reopen = %d messages, want 1", n)
	}
}

func TestListPaging(t *testing.T) {
	s := open(t, t.TempDir(), FileOptions{})
	a := appendN(t, s, "a", 5, 10)
	b := &Message{ID: a[4] + "z", Route: "b"}
	if err := s.Append(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(a[2], "x"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		route string
		state State
		after string
		limit int
		want  []string
	}{
		{"", Pending, "", 0, []string{a[0], a[1], a[3], a[4], b.ID}},
		{"a", Pending, "", 0, []string{a[0], a[1], a[3], a[4]}},
		{"a", Pending, "", 2, []string{a[0], a[1]}},
		{"a", Pending, a[1], 2, []string{a[3], a[4]}},
		{"a", Pending, a[4], 2, nil},
		{"a", Dead, "", 0, []string{a[2]}},
		{"b", Dead, "", 0, nil},
		{"none", Pending, "", 0, nil},
	}
	for _, tt := range tests {
		infos, err := s.List(tt.route, tt.state, tt.after, tt.limit)
		var got []string
		for _, in := range infos {
			got = append(got, in.ID)
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("List(%q, %v, %q, %d) = %v, %v, want %v", tt.route, tt.state, tt.after, tt.limit, got, err, tt.want)
		}
	}
	if n, err := s.Purge("a", Pending); n != 4 || err != nil {
		t.Errorf("Purge(a, pending) = %d, %v, want 4, nil", n, err)
	}
	st := s.Stats()
	if st.Routes["a"].Dead != 1 || st.Routes["a"].Pending != 0 || st.Routes["b"].Pending != 1 || st.Total.Oldest.IsZero() {
		t.Errorf("Stats() after Purge = %+v, want a: 1 dead, b: 1 pending", st)
	}
}

func TestOnFsyncTimesEachFsync(t *testing.T) {
	var n atomic.Int64
	s := open(t, t.TempDir(), FileOptions{OnFsync: func(d time.Duration) {
		if d < 0 {
			t.Errorf("OnFsync(%v): negative duration", d)
		}
		n.Add(1)
	}})
	appendN(t, s, "r", 3, 10)
	if got, syncs := n.Load(), s.Stats().Syncs; got == 0 || got != int64(syncs) {
		t.Errorf("OnFsync called %d times for %d fsyncs, want as many and at least 1", got, syncs)
	}
}

package spool

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// modelMsg is the model's view of one message.
type modelMsg struct {
	id       string
	route    string
	state    State
	attempts int
	next     time.Time
	leased   bool
	reason   string
	body     int // body length; the bytes are checked by TestAppendNextAck
}

// model is a plain in-memory spool: messages in append order.
type model struct{ msgs []*modelMsg }

func (m *model) find(id string) *modelMsg {
	for _, x := range m.msgs {
		if x.id == id {
			return x
		}
	}
	return nil
}

func (m *model) remove(id string) {
	m.msgs = slices.DeleteFunc(m.msgs, func(x *modelMsg) bool { return x.id == id })
}

func TestModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runModel(t, seed, 1500) })
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 42))
	dir := t.TempDir()
	opts := FileOptions{SegmentSize: 2048}
	s := open(t, dir, opts)
	var md model
	now := testEpoch
	routes := []string{"a", "b", "c"}
	n := 0
	pick := func() string {
		if len(md.msgs) == 0 || rng.IntN(10) == 0 {
			return "unknown"
		}
		return md.msgs[rng.IntN(len(md.msgs))].id
	}
	wantErr := func(op string, got, want error) {
		t.Helper()
		if (want == nil) != (got == nil) || (want != nil && !errors.Is(got, want)) {
			t.Fatalf("seed %d: %s = %v, want %v", seed, op, got, want)
		}
	}
	for step := range steps {
		now = now.Add(time.Duration(rng.IntN(100)) * time.Millisecond)
		switch op := rng.IntN(20); {
		case op < 6: // append
			n++
			msg := testMessage(routes[rng.IntN(len(routes))], n, rng.IntN(300))
			wantErr("Append", s.Append(t.Context(), msg), nil)
			md.msgs = append(md.msgs, &modelMsg{id: msg.ID, route: msg.Route, body: len(msg.Body)})
		case op < 10: // next
			r := routes[rng.IntN(len(routes))]
			got, ok, err := s.Next(r, now)
			wantErr("Next", err, nil)
			var want *modelMsg
			for _, x := range md.msgs {
				if x.route == r && x.state == Pending && !x.leased && !x.next.After(now) {
					want = x
					break
				}
			}
			if ok != (want != nil) || (ok && (got.ID != want.id || got.Attempts != want.attempts || len(got.Body) != want.body)) {
				t.Fatalf("seed %d step %d: Next(%s) = %+v, %v, want %+v", seed, step, r, got, ok, want)
			}
			if ok {
				want.leased = true
			}
		case op < 12: // ack
			id := pick()
			var want error
			if md.find(id) == nil {
				want = ErrNotFound
			} else {
				md.remove(id)
			}
			wantErr("Ack("+id+")", s.Ack(id), want)
		case op < 14: // retry later
			id := pick()
			at, attempts := now.Add(time.Duration(rng.IntN(500))*time.Millisecond), rng.IntN(10)
			var want error
			switch x := md.find(id); {
			case x == nil:
				want = ErrNotFound
			case x.state != Pending:
				want = ErrState
			default:
				x.next, x.attempts, x.leased = at, attempts, false
			}
			wantErr("RetryLater("+id+")", s.RetryLater(id, at, attempts), want)
		case op < 16: // dead letter
			id := pick()
			reason := fmt.Sprint("reason ", step)
			var want error
			switch x := md.find(id); {
			case x == nil:
				want = ErrNotFound
			case x.state != Pending:
				want = ErrState
			default:
				x.state, x.reason, x.leased, x.next = Dead, reason, false, time.Time{}
			}
			wantErr("DeadLetter("+id+")", s.DeadLetter(id, reason), want)
		case op < 17: // replay
			id := pick()
			var want error
			switch x := md.find(id); {
			case x == nil:
				want = ErrNotFound
			case x.state != Dead:
				want = ErrState
			default:
				x.state, x.reason, x.attempts, x.next = Pending, "", 0, time.Time{}
			}
			wantErr("Replay("+id+")", s.Replay(id), want)
		case op < 18: // delete
			id := pick()
			var want error
			if md.find(id) == nil {
				want = ErrNotFound
			} else {
				md.remove(id)
			}
			wantErr("Delete("+id+")", s.Delete(id), want)
		case op < 19: // purge
			r, st := routes[rng.IntN(len(routes))], State(rng.IntN(2))
			if rng.IntN(4) == 0 {
				r = ""
			}
			want := 0
			md.msgs = slices.DeleteFunc(md.msgs, func(x *modelMsg) bool {
				match := (r == "" || x.route == r) && x.state == st
				if match {
					want++
				}
				return match
			})
			got, err := s.Purge(r, st)
			if err != nil || got != want {
				t.Fatalf("seed %d: Purge(%q, %v) = %d, %v, want %d, nil", seed, r, st, got, err, want)
			}
		default: // close and reopen: leases are not durable
			s = reopen(t, s, opts)
			for _, x := range md.msgs {
				x.leased = false
			}
		}
		if step%50 == 0 || step == steps-1 {
			checkModel(t, s, &md, seed, step)
		}
	}
	s = reopen(t, s, opts)
	for _, x := range md.msgs {
		x.leased = false
	}
	checkModel(t, s, &md, seed, steps)
	files := segmentFiles(t, dir)
	if last, _ := parseSegmentName(filepath.Base(files[len(files)-1])); int(last) <= len(files) {
		t.Errorf("seed %d: last segment %d with %d files, want some segments deleted", seed, last, len(files))
	}
}

func checkModel(t *testing.T, s *FileStore, md *model, seed uint64, step int) {
	t.Helper()
	var want []Info
	for _, st := range []State{Pending, Dead} {
		for _, x := range md.msgs {
			if x.state == st {
				want = append(want, Info{ID: x.id, Route: x.route, State: x.state, Attempts: x.attempts, Leased: x.leased, DeadReason: x.reason, NextAttempt: x.next})
			}
		}
	}
	var got []Info
	for _, st := range []State{Pending, Dead} {
		l, err := s.List("", st, "", 0)
		if err != nil {
			t.Fatalf("List() = %v", err)
		}
		got = append(got, l...)
	}
	if len(got) != len(want) {
		t.Fatalf("seed %d step %d: List() = %d messages, want %d", seed, step, len(got), len(want))
	}
	slices.SortStableFunc(want, func(a, b Info) int {
		if a.State != b.State {
			return int(a.State) - int(b.State)
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for i := range got {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Route != w.Route || g.State != w.State || g.Attempts != w.Attempts ||
			g.Leased != w.Leased || g.DeadReason != w.DeadReason || !g.NextAttempt.Equal(w.NextAttempt) {
			t.Fatalf("seed %d step %d: List()[%d] = %+v, want %+v", seed, step, i, g, w)
		}
	}
	st := s.Stats()
	if st.Total.Pending+st.Total.Dead != int64(len(want)) {
		t.Fatalf("seed %d step %d: Stats().Total = %+v, want %d messages", seed, step, st.Total, len(want))
	}
	if files := len(segmentFiles(t, s.dir)); files != st.Segments {
		t.Fatalf("seed %d step %d: %d segment files, Stats().Segments = %d", seed, step, files, st.Segments)
	}
}

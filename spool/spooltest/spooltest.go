// Package spooltest is the conformance suite of spool.Store backends,
// written once and run against each of them: Run drives a backend only
// through the public spool.Store API, with real time (short delays, and
// polling with bounded deadlines where a backend delivers asynchronously).
//
// A backend's test file calls Run with a Harness that opens its stores;
// documented differences between backends are flags of the Harness, so a
// case that a backend cannot honour is skipped by name rather than
// weakened for everyone.
package spooltest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
)

// Limits bounds a store opened by a Harness; a zero field means no bound.
type Limits struct {
	MaxMessages int64
	MaxBytes    int64
	// DedupeWindow is the dedupe window of route DedupeRoute; 0 means
	// none.
	DedupeWindow time.Duration
}

// DedupeRoute is the route Limits.DedupeWindow applies to.
const DedupeRoute = "once"

// Harness opens the stores of one backend.
type Harness struct {
	// Open opens a store on fresh, empty storage with lim. reopen opens
	// the same storage again; the suite calls it only after closing the
	// store. Open registers its own cleanup with t.
	Open func(t *testing.T, lim Limits) (s spool.Store, reopen func() spool.Store)

	// ServerSideDelays reports that Next ignores its now argument and a
	// message made due later by RetryLater is held back by the backend
	// until then: Next(route, far future) does not return it early.
	ServerSideDelays bool
	// LeaseRequired reports that RetryLater works only on a message the
	// store leased with Next (and returns spool.ErrState otherwise).
	LeaseRequired bool
	// ReplayRequeues reports that Replay puts a message at the end of its
	// route's queue instead of back in arrival order.
	ReplayRequeues bool
	// Parallel runs the cases in parallel.
	Parallel bool
}

// wait bounds how long the suite polls for something a backend does
// asynchronously; quiet is how long it watches for something that must not
// happen.
const (
	wait  = 5 * time.Second
	quiet = 150 * time.Millisecond
)

// farFuture makes a Next whose backend honours now return any pending head.
var farFuture = time.Unix(0, math.MaxInt64)

// Run runs the conformance suite against h.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		{"AppendNextAck", testAppendNextAck},
		{"RouteIsolation", testRouteIsolation},
		{"ArrivalOrder", testArrivalOrder},
		{"RetryLater", testRetryLater},
		{"DeadLetterReplay", testDeadLetterReplay},
		{"DeleteAndPurge", testDeleteAndPurge},
		{"ListPaging", testListPaging},
		{"NotFound", testNotFound},
		{"WrongState", testWrongState},
		{"FullMessages", testFullMessages},
		{"FullBytes", testFullBytes},
		{"Stats", testStats},
		{"Durability", testDurability},
		{"CallerID", testCallerID},
		{"Closed", testClosed},
		{"AppendOnce", testAppendOnce},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h.Parallel {
				t.Parallel()
			}
			tt.run(t, h)
		})
	}
}

// newMessage returns a message of route with every field set but ID.
func newMessage(route string, n int) *spool.Message {
	return &spool.Message{
		Route:          route,
		Method:         http.MethodPost,
		Target:         fmt.Sprintf("/v1/events?n=%d", n),
		Header:         http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
		Body:           fmt.Appendf(nil, `{"n":%d}`, n),
		IdempotencyKey: fmt.Sprintf("key-%d", n),
		TraceParent:    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
}

// appendN appends n messages to route and returns their IDs in order.
func appendN(t *testing.T, s spool.Store, route string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		m := newMessage(route, i)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append(%s #%d) = %v, want nil", route, i, err)
		}
		ids[i] = m.ID
	}
	return ids
}

// next polls Next(route, now) until it returns a message or wait passes.
func next(t *testing.T, s spool.Store, route string) *spool.Message {
	t.Helper()
	var (
		m   *spool.Message
		ok  bool
		err error
	)
	if !poll.Within(wait, func() bool {
		m, ok, err = s.Next(route, time.Now())
		return ok || err != nil
	}) {
		t.Fatalf("Next(%s) returned nothing for %v, want a message", route, wait)
	}
	if err != nil {
		t.Fatalf("Next(%s) = %v, want nil", route, err)
	}
	return m
}

// none checks that Next(route, at()) returns nothing for quiet.
func none(t *testing.T, s spool.Store, route string, at func() time.Time) {
	t.Helper()
	var (
		m   *spool.Message
		ok  bool
		err error
	)
	if !poll.Within(quiet, func() bool {
		m, ok, err = s.Next(route, at())
		return ok || err != nil
	}) {
		return
	}
	if err != nil {
		t.Fatalf("Next(%s) = %v, want nil", route, err)
	}
	t.Fatalf("Next(%s) = %s, want nothing", route, m.ID)
}

func ids(infos []spool.Info) []string {
	out := make([]string, len(infos))
	for i, in := range infos {
		out[i] = in.ID
	}
	return out
}

func list(t *testing.T, s spool.Store, route string, state spool.State, after string, limit int) []string {
	t.Helper()
	infos, err := s.List(route, state, after, limit)
	if err != nil {
		t.Fatalf("List(%q, %v, %q, %d) = %v, want nil", route, state, after, limit, err)
	}
	return ids(infos)
}

func open(t *testing.T, h Harness, lim Limits) (spool.Store, func() spool.Store) {
	t.Helper()
	return h.Open(t, lim)
}

func testAppendNextAck(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	want := newMessage("events", 1)
	want.Attempts = 2
	if err := s.Append(t.Context(), want); err != nil {
		t.Fatalf("Append() = %v, want nil", err)
	}
	if want.ID == "" || want.Arrived.IsZero() {
		t.Fatalf("Append() left ID %q, Arrived %v; want both set", want.ID, want.Arrived)
	}
	got := next(t, s, "events")
	switch {
	case got.ID != want.ID, got.Route != want.Route, got.Method != want.Method,
		got.Target != want.Target, got.IdempotencyKey != want.IdempotencyKey,
		got.TraceParent != want.TraceParent, got.Attempts != want.Attempts,
		!got.Arrived.Equal(want.Arrived), !bytes.Equal(got.Body, want.Body),
		!equalHeader(got.Header, want.Header):
		t.Errorf("Next() = %+v, want %+v", got, want)
	}
	if _, info, err := s.Get(want.ID); err != nil || !info.Leased || info.State != spool.Pending {
		t.Errorf("Get(leased) = %+v, %v, want leased, pending", info, err)
	}
	if err := s.Ack(want.ID); err != nil {
		t.Fatalf("Ack() = %v, want nil", err)
	}
	if _, _, err := s.Get(want.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Get(acked) = %v, want %v", err, spool.ErrNotFound)
	}
	if err := s.Ack(want.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Ack(acked) = %v, want %v", err, spool.ErrNotFound)
	}
	none(t, s, "events", time.Now)
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func testRouteIsolation(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	a := appendN(t, s, "a", 2)
	b := appendN(t, s, "b", 1)
	if m := next(t, s, "b"); m.ID != b[0] {
		t.Errorf("Next(b) = %s, want %s", m.ID, b[0])
	}
	none(t, s, "b", time.Now)
	none(t, s, "c", time.Now)
	for i, id := range a {
		if m := next(t, s, "a"); m.ID != id || m.Route != "a" {
			t.Errorf("Next(a) #%d = %s of %s, want %s of a", i, m.ID, m.Route, id)
		}
	}
}

func testArrivalOrder(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	want := appendN(t, s, "r", 6)
	var got []string
	for range want {
		got = append(got, next(t, s, "r").ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Next() order = %v, want arrival order %v", got, want)
	}
	if !slices.IsSorted(want) {
		t.Errorf("generated IDs %v do not sort in arrival order", want)
	}
	none(t, s, "r", time.Now) // all leased
}

func testRetryLater(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	id := appendN(t, s, "r", 1)[0]
	next(t, s, "r")
	at := time.Now().Add(400 * time.Millisecond)
	if err := s.RetryLater(id, at, 3); err != nil {
		t.Fatalf("RetryLater() = %v, want nil", err)
	}
	_, info, err := s.Get(id)
	if err != nil || info.State != spool.Pending || info.Attempts != 3 || info.Leased || !info.NextAttempt.Equal(at) {
		t.Errorf("Get(retried) = %+v, %v; want pending, 3 attempts, not leased, next %v", info, err, at)
	}
	if !h.ServerSideDelays {
		// The caller decides what is due: a far now returns the head.
		m, ok, err := s.Next("r", farFuture)
		if err != nil || !ok || m.ID != id {
			t.Fatalf("Next(far future) = %v, %v, %v, want %s", m, ok, err, id)
		}
		if err := s.RetryLater(id, at, 3); err != nil {
			t.Fatalf("RetryLater() again = %v, want nil", err)
		}
	}
	none(t, s, "r", time.Now)
	m := next(t, s, "r")
	if time.Now().Before(at) {
		t.Errorf("Next() returned the message at %v, before it was due at %v", time.Now(), at)
	}
	if m.ID != id || m.Attempts != 3 {
		t.Errorf("Next() = %s with %d attempts, want %s with 3", m.ID, m.Attempts, id)
	}
	if err := s.Ack(id); err != nil {
		t.Errorf("Ack() = %v, want nil", err)
	}
}

func testDeadLetterReplay(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	all := appendN(t, s, "r", 3)
	m := next(t, s, "r")
	if err := s.RetryLater(m.ID, time.Now().Add(time.Minute), 4); err != nil {
		t.Fatalf("RetryLater() = %v, want nil", err)
	}
	if err := s.DeadLetter(m.ID, "upstream answered 400"); err != nil {
		t.Fatalf("DeadLetter() = %v, want nil", err)
	}
	got, info, err := s.Get(m.ID)
	if err != nil || info.State != spool.Dead || info.DeadReason != "upstream answered 400" || info.Attempts != 4 || info.Route != "r" {
		t.Errorf("Get(dead) = %+v, %v; want dead, reason, 4 attempts, route r", info, err)
	}
	if err == nil && !bytes.Equal(got.Body, m.Body) {
		t.Errorf("Get(dead) body = %q, want %q", got.Body, m.Body)
	}
	if d := list(t, s, "r", spool.Dead, "", 0); !slices.Equal(d, all[:1]) {
		t.Errorf("List(dead) = %v, want %v", d, all[:1])
	}
	if p := list(t, s, "r", spool.Pending, "", 0); !slices.Equal(p, all[1:]) {
		t.Errorf("List(pending) = %v, want %v", p, all[1:])
	}
	if err := s.Replay(m.ID); err != nil {
		t.Fatalf("Replay() = %v, want nil", err)
	}
	if _, info, err := s.Get(m.ID); err != nil || info.State != spool.Pending || info.Attempts != 0 {
		t.Errorf("Get(replayed) = %+v, %v; want pending, 0 attempts", info, err)
	}
	var got3 []string
	for range 3 {
		n := next(t, s, "r")
		got3 = append(got3, n.ID)
		if n.ID == m.ID && n.Attempts != 0 {
			t.Errorf("Next(replayed) attempts = %d, want 0", n.Attempts)
		}
	}
	want := all
	if h.ReplayRequeues {
		want = []string{all[1], all[2], all[0]}
	}
	if !slices.Equal(got3, want) {
		t.Errorf("Next() after Replay = %v, want %v", got3, want)
	}
	if d := list(t, s, "", spool.Dead, "", 0); len(d) != 0 {
		t.Errorf("List(dead) after Replay = %v, want none", d)
	}
}

func testDeleteAndPurge(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	a := appendN(t, s, "a", 4)
	b := appendN(t, s, "b", 2)
	for range 2 {
		m := next(t, s, "a")
		if err := s.DeadLetter(m.ID, "gave up"); err != nil {
			t.Fatalf("DeadLetter(%s) = %v, want nil", m.ID, err)
		}
	}
	if err := s.Delete(a[0]); err != nil { // dead
		t.Fatalf("Delete(dead) = %v, want nil", err)
	}
	if err := s.Delete(a[2]); err != nil { // pending
		t.Fatalf("Delete(pending) = %v, want nil", err)
	}
	for _, id := range []string{a[0], a[2]} {
		if _, _, err := s.Get(id); !errors.Is(err, spool.ErrNotFound) {
			t.Errorf("Get(deleted %s) = %v, want %v", id, err, spool.ErrNotFound)
		}
	}
	if n, err := s.Purge("a", spool.Dead); err != nil || n != 1 {
		t.Errorf("Purge(a, dead) = %d, %v, want 1, nil", n, err)
	}
	if n, err := s.Purge("a", spool.Pending); err != nil || n != 1 {
		t.Errorf("Purge(a, pending) = %d, %v, want 1, nil", n, err)
	}
	none(t, s, "a", time.Now)
	if p := list(t, s, "", spool.Pending, "", 0); !slices.Equal(p, b) {
		t.Errorf("List(all, pending) after Purge(a) = %v, want %v", p, b)
	}
	if n, err := s.Purge("", spool.Pending); err != nil || n != 2 {
		t.Errorf("Purge(all, pending) = %d, %v, want 2, nil", n, err)
	}
	if st := s.Stats(); st.Total.Pending != 0 || st.Total.Dead != 0 {
		t.Errorf("Stats().Total after purges = %+v, want empty", st.Total)
	}
}

func testListPaging(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	r := appendN(t, s, "r", 5)
	o := appendN(t, s, "o", 2)
	all := slices.Sorted(slices.Values(append(slices.Clone(r), o...)))
	tests := []struct {
		name  string
		route string
		after string
		limit int
		want  []string
	}{
		{"all routes", "", "", 0, all},
		{"one route", "r", "", 0, r},
		{"first page", "r", "", 2, r[:2]},
		{"second page", "r", r[1], 2, r[2:4]},
		{"last page", "r", r[3], 2, r[4:]},
		{"past the end", "r", r[4], 2, nil},
		{"unknown route", "nope", "", 0, nil},
	}
	for _, tt := range tests {
		if got := list(t, s, tt.route, spool.Pending, tt.after, tt.limit); !slices.Equal(got, tt.want) {
			t.Errorf("%s: List(%q, pending, %q, %d) = %v, want %v", tt.name, tt.route, tt.after, tt.limit, got, tt.want)
		}
	}
	infos, err := s.List("r", spool.Pending, "", 1)
	if err != nil || len(infos) != 1 {
		t.Fatalf("List(r, pending, 1) = %v, %v", infos, err)
	}
	if in := infos[0]; in.Route != "r" || in.State != spool.Pending || in.Size <= 0 || in.Arrived.IsZero() || in.Leased {
		t.Errorf("List() info = %+v, want route r, pending, a size, an arrival, not leased", in)
	}
	if d := list(t, s, "r", spool.Dead, "", 0); len(d) != 0 {
		t.Errorf("List(r, dead) = %v, want none", d)
	}
}

func testNotFound(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	appendN(t, s, "r", 1)
	const id = "00000000000000010000000a"
	calls := []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, _, err := s.Get(id); return err }},
		{"Ack", func() error { return s.Ack(id) }},
		{"RetryLater", func() error { return s.RetryLater(id, time.Now(), 1) }},
		{"DeadLetter", func() error { return s.DeadLetter(id, "x") }},
		{"Replay", func() error { return s.Replay(id) }},
		{"Delete", func() error { return s.Delete(id) }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, spool.ErrNotFound) {
			t.Errorf("%s(unknown) = %v, want %v", c.name, err, spool.ErrNotFound)
		}
	}
}

func testWrongState(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	id := appendN(t, s, "r", 2)
	if err := s.Replay(id[1]); !errors.Is(err, spool.ErrState) {
		t.Errorf("Replay(pending) = %v, want %v", err, spool.ErrState)
	}
	if h.LeaseRequired {
		if err := s.RetryLater(id[1], time.Now(), 1); !errors.Is(err, spool.ErrState) {
			t.Errorf("RetryLater(not leased) = %v, want %v", err, spool.ErrState)
		}
	}
	next(t, s, "r")
	if err := s.DeadLetter(id[0], "x"); err != nil {
		t.Fatalf("DeadLetter() = %v, want nil", err)
	}
	if err := s.DeadLetter(id[0], "x"); !errors.Is(err, spool.ErrState) {
		t.Errorf("DeadLetter(dead) = %v, want %v", err, spool.ErrState)
	}
	if err := s.RetryLater(id[0], time.Now(), 1); !errors.Is(err, spool.ErrState) {
		t.Errorf("RetryLater(dead) = %v, want %v", err, spool.ErrState)
	}
}

func testFullMessages(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{MaxMessages: 3})
	appendN(t, s, "r", 3)
	if err := s.Append(t.Context(), newMessage("r", 9)); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Append(4th of 3) = %v, want %v", err, spool.ErrFull)
	}
	m := next(t, s, "r")
	if err := s.Ack(m.ID); err != nil {
		t.Fatalf("Ack() = %v, want nil", err)
	}
	// Room is made once the settlement reaches the limit's bookkeeping.
	var err error
	poll.Within(wait, func() bool {
		err = s.Append(t.Context(), newMessage("r", 10))
		return !errors.Is(err, spool.ErrFull)
	})
	if err != nil {
		t.Fatalf("Append(after Ack) = %v, want nil", err)
	}
}

func testFullBytes(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{MaxBytes: 8 << 10})
	body := bytes.Repeat([]byte("x"), 1<<10)
	var err error
	n := 0
	for ; n < 20; n++ {
		m := newMessage("r", n)
		m.Body = body
		if err = s.Append(t.Context(), m); err != nil {
			break
		}
	}
	if !errors.Is(err, spool.ErrFull) || n < 4 || n > 8 {
		t.Errorf("Append of 1 KiB messages into 8 KiB = %v after %d, want %v after 4 to 8", err, n, spool.ErrFull)
	}
}

func testStats(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	before := time.Now()
	appendN(t, s, "a", 3)
	appendN(t, s, "b", 1)
	m := next(t, s, "a")
	if err := s.DeadLetter(m.ID, "x"); err != nil {
		t.Fatalf("DeadLetter() = %v, want nil", err)
	}
	st := s.Stats()
	a, b := st.Routes["a"], st.Routes["b"]
	if a.Pending != 2 || a.Dead != 1 || b.Pending != 1 || b.Dead != 0 {
		t.Errorf("Stats().Routes = %+v, want a 2 pending 1 dead, b 1 pending", st.Routes)
	}
	if st.Total.Pending != 3 || st.Total.Dead != 1 || st.Total.Bytes <= 0 {
		t.Errorf("Stats().Total = %+v, want 3 pending, 1 dead, some bytes", st.Total)
	}
	if st.Total.Oldest.Before(before.Add(-time.Second)) || st.Total.Oldest.After(time.Now()) || b.Oldest.IsZero() {
		t.Errorf("Stats() Oldest = %v (b %v), want between %v and now", st.Total.Oldest, b.Oldest, before)
	}
	if st.Appends != 4 {
		t.Errorf("Stats().Appends = %d, want 4", st.Appends)
	}
}

func testDurability(t *testing.T, h Harness) {
	s, reopen := open(t, h, Limits{})
	id := appendN(t, s, "r", 4)
	if m := next(t, s, "r"); m.ID != id[0] {
		t.Fatalf("Next() = %s, want %s", m.ID, id[0])
	}
	if err := s.Ack(id[0]); err != nil {
		t.Fatalf("Ack() = %v, want nil", err)
	}
	next(t, s, "r")
	if err := s.DeadLetter(id[1], "gave up"); err != nil {
		t.Fatalf("DeadLetter() = %v, want nil", err)
	}
	next(t, s, "r") // id[2] stays leased across the reopen
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v, want nil", err)
	}

	s = reopen()
	if _, _, err := s.Get(id[0]); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Get(acked) after reopen = %v, want %v", err, spool.ErrNotFound)
	}
	if _, info, err := s.Get(id[1]); err != nil || info.State != spool.Dead || info.DeadReason != "gave up" {
		t.Errorf("Get(dead) after reopen = %+v, %v, want dead, reason kept", info, err)
	}
	if p := list(t, s, "r", spool.Pending, "", 0); !slices.Equal(p, id[2:]) {
		t.Errorf("List(pending) after reopen = %v, want %v", p, id[2:])
	}
	for i, want := range id[2:] {
		if m := next(t, s, "r"); m.ID != want {
			t.Errorf("Next() #%d after reopen = %s, want %s (leases are not durable)", i, m.ID, want)
		}
	}
	none(t, s, "r", time.Now)
}

func testCallerID(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	m := newMessage("r", 1)
	m.ID = "order-42"
	if err := s.Append(t.Context(), m); err != nil {
		t.Fatalf("Append(ID %s) = %v, want nil", m.ID, err)
	}
	if got, _, err := s.Get("order-42"); err != nil || got.ID != "order-42" || got.Route != "r" {
		t.Errorf("Get(order-42) = %v, %v, want the message", got, err)
	}
	dup := newMessage("r", 2)
	dup.ID = "order-42"
	if err := s.Append(t.Context(), dup); !errors.Is(err, spool.ErrExists) {
		t.Errorf("Append(duplicate ID) = %v, want %v", err, spool.ErrExists)
	}
	if p := list(t, s, "r", spool.Pending, "", 0); !slices.Equal(p, []string{"order-42"}) {
		t.Errorf("List(pending) = %v, want [order-42] once", p)
	}
	if got := next(t, s, "r"); got.ID != "order-42" || !bytes.Equal(got.Body, m.Body) {
		t.Errorf("Next() = %s %q, want order-42 with the first body", got.ID, got.Body)
	}
}

func testClosed(t *testing.T, h Harness) {
	s, _ := open(t, h, Limits{})
	id := appendN(t, s, "r", 1)[0]
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v, want nil", err)
	}
	if err := s.Append(t.Context(), newMessage("r", 2)); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("Append(after Close) = %v, want %v", err, spool.ErrClosed)
	}
	if _, _, err := s.Next("r", time.Now()); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("Next(after Close) = %v, want %v", err, spool.ErrClosed)
	}
	if _, _, err := s.Get(id); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("Get(after Close) = %v, want %v", err, spool.ErrClosed)
	}
	if err := s.Close(); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("Close() again = %v, want %v", err, spool.ErrClosed)
	}
}

// testAppendOnce: a backend that is a spool.Deduper answers a repeated
// key of a route with a dedupe window with the first message's ID, one
// after the other and at once, while the message is pending, after it was
// delivered, and after a reopen; a plain Append, another key and another
// route store.
func testAppendOnce(t *testing.T, h Harness) {
	s, reopen := open(t, h, Limits{DedupeWindow: time.Minute})
	d, ok := s.(spool.Deduper)
	if !ok {
		t.Skip("the backend does not de-duplicate")
	}
	appendOnce := func(d spool.Deduper, route, key string) (string, bool) {
		t.Helper()
		m := newMessage(route, 0)
		m.IdempotencyKey = key
		err := d.AppendOnce(t.Context(), m)
		if err != nil && !errors.Is(err, spool.ErrDuplicate) {
			t.Fatalf("AppendOnce(%s, %s) = %v, want nil or %v", route, key, err, spool.ErrDuplicate)
		}
		return m.ID, err != nil
	}
	first, dup := appendOnce(d, DedupeRoute, "k")
	if dup {
		t.Fatal("the first AppendOnce is a duplicate")
	}
	if id, dup := appendOnce(d, DedupeRoute, "k"); !dup || id != first {
		t.Fatalf("repeat = %s, duplicate %v; want %s, true", id, dup, first)
	}
	for _, rk := range [][2]string{{DedupeRoute, "other"}, {"r", "k"}} {
		if id, dup := appendOnce(d, rk[0], rk[1]); dup || id == first {
			t.Fatalf("AppendOnce(%s, %s) = %s, duplicate %v; want a new message", rk[0], rk[1], id, dup)
		}
	}
	plain := newMessage(DedupeRoute, 0)
	plain.IdempotencyKey = "k"
	if err := s.Append(t.Context(), plain); err != nil || plain.ID == first {
		t.Fatalf("Append(key k) = %v, ID %s; want a new message", err, plain.ID)
	}
	// At once: one stores.
	ids := make([]string, 8)
	stored := make(chan struct{}, len(ids))
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			m := newMessage(DedupeRoute, i)
			m.IdempotencyKey = "together"
			err := d.AppendOnce(t.Context(), m)
			if err == nil {
				stored <- struct{}{}
			} else if !errors.Is(err, spool.ErrDuplicate) {
				t.Errorf("AppendOnce = %v", err)
			}
			ids[i] = m.ID
		})
	}
	wg.Wait()
	if len(stored) != 1 {
		t.Fatalf("%d concurrent AppendOnce stored, want 1", len(stored))
	}
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("AppendOnce %d got %s, AppendOnce 0 %s; want one ID", i, ids[i], ids[0])
		}
	}
	// Delivered: still a duplicate, and after a reopen.
	m := next(t, s, DedupeRoute)
	if m.ID != first {
		t.Fatalf("Next(%s) = %s, want %s", DedupeRoute, m.ID, first)
	}
	if err := s.Ack(first); err != nil {
		t.Fatalf("Ack = %v", err)
	}
	if id, dup := appendOnce(d, DedupeRoute, "k"); !dup || id != first {
		t.Fatalf("repeat after delivery = %s, duplicate %v; want %s, true", id, dup, first)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	d = reopen().(spool.Deduper)
	if id, dup := appendOnce(d, DedupeRoute, "k"); !dup || id != first {
		t.Fatalf("repeat after reopen = %s, duplicate %v; want %s, true", id, dup, first)
	}
	if id, ok, err := d.Duplicate(t.Context(), DedupeRoute, "together"); err != nil || !ok || id != ids[0] {
		t.Fatalf("Duplicate(together) = %s, %v, %v; want %s, true, nil", id, ok, err, ids[0])
	}
}

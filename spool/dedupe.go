package spool

import (
	"context"
	"fmt"
	"time"
)

// De-duplication by idempotency key (the proxy's async.dedupe_window).
//
// An AppendOnce of a message, on a route whose Limits.DedupeWindow is
// set, looks its (Route, IdempotencyKey) up among the keys of the route's
// messages appended within the window. A key whose message is committed
// answers at once: AppendOnce stores nothing, sets m.ID to that message's
// ID and returns ErrDuplicate. A key whose message
// is still being committed makes AppendOnce wait for that commit; if it
// failed, the waiter goes on as for a new key (and, as a failed commit
// makes the store refuse writes until it has reopened itself, gets
// ErrFailed until then; a later AppendOnce of the key stores). So of
// concurrent AppendOnce calls with one key at most one stores.
//
// The keys are kept in memory per route, in a map and in a queue in
// append order, and expire lazily, when a later Append of the route finds
// them older than the window: a route holds at most the keys of the
// messages appended to it within its window, about 150 bytes each plus
// the key's length.
//
// They are durable through the log itself: every message record holds its
// key, and a segment holding the message record of a key still within its
// window is not deleted, even once every message in it is settled, until
// the window has passed (it is deleted by the first commit after that).
// Recovery rebuilds the keys from the message records. So a repeat within
// the window is answered with the first ID after any restart or crash,
// whether the first message is pending, dead, delivered or deleted.
// A window changed by SetRouteLimits (a reload) applies to the keys held
// within the old one: they expire by the new one, on disk as in memory.
// A longer window keeps the segments holding their records until it has
// passed (a key already past the old window is dropped, not brought
// back: its segment may be gone). A shorter one leaves those segments
// kept until the old window has passed, which is harmless; a restart
// keeps them for the new one only. A window turned off (0) keeps the
// keys, but no Append looks them up or adds one, and Duplicate reports
// none; they expire by the window they were added under, at each
// SetRouteLimits, so a route whose window stays off ends up holding
// none, and their segments are kept for that window, also the segment
// of a key whose commit ends after the window was turned off. Turned on
// again, they de-duplicate as before for what is left of that window,
// then by the new window (as for a changed window, a longer one keeps
// their segments longer). A restart while the window is off forgets
// them: recovery only rebuilds the keys of a route whose window is on.
//
// A plain Append neither looks its key up nor keeps it (the proxy uses
// it for keys it stamped itself, which never repeat); but recovery
// cannot tell the records of the two apart, so after a restart it holds
// the keys of a route's plain Appends too, for one window.

// dedupeEntry is one key of a route's window.
type dedupeEntry struct {
	id  string // the message's ID
	at  int64  // its Arrived, unix nanos: the window counts from it
	seg uint64 // sequence of the segment holding its record; 0 while being committed
	// wait is made by an Append that found the entry being committed,
	// and closed when the commit ends.
	wait chan struct{}
}

// dedupeRef is a key in a route's expiry queue.
type dedupeRef struct {
	key string
	e   *dedupeEntry
}

// routeKeys are a route's keys within its window.
type routeKeys struct {
	byKey map[string]*dedupeEntry
	queue []dedupeRef // in append order; queue[head:] are live
	head  int
	// window is the route's last window that was on: while the route's
	// window is off, the keys expire by it.
	window time.Duration
}

// expire drops the keys older than window at now.
func (k *routeKeys) expire(now int64, window time.Duration) {
	for k.head < len(k.queue) {
		r := k.queue[k.head]
		if r.e.seg == 0 || now-r.e.at <= int64(window) {
			break // being committed, or within the window
		}
		if k.byKey[r.key] == r.e {
			delete(k.byKey, r.key)
		}
		k.queue[k.head] = dedupeRef{}
		k.head++
	}
	if k.head > 64 && k.head > len(k.queue)/2 {
		n := copy(k.queue, k.queue[k.head:])
		clear(k.queue[n:])
		k.queue, k.head = k.queue[:n], 0
	}
}

// add makes e the entry of key.
func (k *routeKeys) add(key string, e *dedupeEntry) {
	k.byKey[key] = e
	k.queue = append(k.queue, dedupeRef{key, e})
}

// keysLocked returns ri's keys, made on first use; nil if the route does
// not de-duplicate.
func (s *FileStore) keysLocked(ri *routeIndex) *routeKeys {
	if ri.limits.DedupeWindow <= 0 {
		return nil
	}
	if ri.keys == nil {
		ri.keys = &routeKeys{byKey: map[string]*dedupeEntry{}}
	}
	return ri.keys
}

// windowChangedLocked applies a change of ri's window from prev (see
// above): keys turned off, or kept off, or on again after being off,
// expire by the window they were added under; a route left off without
// keys drops its routeKeys. A window that grows past the one the keys
// were kept for (prev, or while off the window they were added under)
// first drops the keys past that one, then keeps the segments holding
// the others' records until the new window has passed, so that a restart
// within it still finds them; the cost is proportional to the route's
// keys. A shorter window leaves the segments kept for the longer one.
func (s *FileStore) windowChangedLocked(ri *routeIndex, prev time.Duration) {
	k := ri.keys
	if k == nil {
		return
	}
	next := ri.limits.DedupeWindow
	kept := k.window // the window the keys' segments are kept for
	if prev > 0 {
		k.window, kept = prev, prev
		if next > 0 && next <= prev {
			return // they expire lazily, by next
		}
	}
	now := timeToNanos(s.now())
	k.expire(now, kept)
	if next > kept {
		s.keepKeysLocked(k, now, kept, next)
	}
	if next <= 0 && len(k.byKey) == 0 && k.head == len(k.queue) {
		ri.keys = nil
	}
}

// keepKeysLocked keeps the segments holding the records of k's committed
// keys until next has passed for each, and drops the keys past kept, the
// window their segments were kept for so far: expire stops at a key
// being committed, and the ones behind it may be past kept (their segment
// may be gone). A key being committed is kept by its commit, under the
// route's window then.
func (s *FileStore) keepKeysLocked(k *routeKeys, now int64, kept, next time.Duration) {
	var seg *segment // consecutive keys are mostly in one segment
	for _, r := range k.queue[k.head:] {
		e := r.e
		switch {
		case e.seg == 0:
			continue // being committed
		case now-e.at > int64(kept): // a failed commit's too (at 0)
			if k.byKey[r.key] == e {
				delete(k.byKey, r.key) // its queue entry expires at the head
			}
			continue
		}
		// A key replaced by a later message of it (past its window)
		// keeps its segment too: harmless, and no map lookup per key.
		if seg == nil || seg.seq != e.seg {
			if seg = s.segBySeq(uint32(e.seg)); seg == nil {
				continue
			}
		}
		seg.keep = max(seg.keep, e.at+int64(next))
	}
}

// dedupeLocked runs the de-duplication of an Append of m (see above). It
// returns ErrDuplicate with m.ID set when m repeats a key; otherwise it
// returns the entry it added for m, being committed, which the commit
// completes, or nil when m's route does not de-duplicate. It may release
// and take s.mu while it waits for another Append's commit.
//
// That wait is bounded like an Append's wait for its commit, by the
// route's AppendWait counted from when it starts: the other Append may be
// held by a disk that stalls, and its message may still be stored, so
// the result is ErrUnconfirmed.
func (s *FileStore) dedupeLocked(ctx context.Context, m *Message) (*dedupeEntry, error) {
	var expired <-chan time.Time
	for {
		if err := s.writableLocked(); err != nil {
			return nil, err
		}
		_, ri, err := s.routeLocked(m.Route)
		if err != nil {
			return nil, err
		}
		keys := s.keysLocked(ri)
		if keys == nil || m.IdempotencyKey == "" {
			return nil, nil
		}
		now := timeToNanos(s.now())
		window := ri.limits.DedupeWindow
		keys.expire(now, window)
		e := keys.byKey[m.IdempotencyKey]
		switch {
		case e == nil || (e.seg != 0 && now-e.at > int64(window)):
			e = &dedupeEntry{id: m.ID, at: timeToNanos(m.Arrived)}
			keys.add(m.IdempotencyKey, e)
			return e, nil
		case e.seg != 0:
			m.ID = e.id
			return nil, ErrDuplicate
		}
		if e.wait == nil {
			e.wait = make(chan struct{})
		}
		w := e.wait
		if wait := ri.limits.AppendWait; wait > 0 && expired == nil {
			t := getTimer(wait)
			defer putTimer(t)
			expired = t.C
		}
		s.mu.Unlock()
		select {
		case <-w:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return nil, ctx.Err()
		case <-expired:
			s.mu.Lock()
			return nil, fmt.Errorf("%w: a message with the same idempotency key was not confirmed within the route's %v", ErrUnconfirmed, ri.limits.AppendWait)
		}
	}
}

// endDedupeLocked completes e, the entry of an Append of m: on success
// its record is in seg, which is kept until the key's window has passed;
// on failure (seg nil) the entry is removed, so that a waiting Append
// stores its own message.
func (s *FileStore) endDedupeLocked(e *dedupeEntry, m *Message, seg *segment) {
	if seg != nil {
		e.seg = seg.seq
		_, ri, _ := s.routeLocked(m.Route)
		window := ri.limits.DedupeWindow
		if window <= 0 && ri.keys != nil {
			// Turned off by a reload during the commit: the key is
			// kept for the window it was added under (see above).
			window = ri.keys.window
		}
		seg.keep = max(seg.keep, e.at+int64(window))
	} else {
		if _, ri, _ := s.routeLocked(m.Route); ri.keys != nil && ri.keys.byKey[m.IdempotencyKey] == e {
			delete(ri.keys.byKey, m.IdempotencyKey)
		}
		// Its queue entry stays until it reaches the head, where an
		// entry being committed (seg 0) would stop expiry: mark it
		// expired.
		e.seg, e.at = ^uint64(0), 0
	}
	if e.wait != nil {
		close(e.wait)
		e.wait = nil
	}
}

// recoverKeyLocked adds the key of a message record found by recovery,
// if its route de-duplicates and the key is within the window.
func (s *FileStore) recoverKeyLocked(meta messageMeta, key []byte, seg *segment) {
	if len(key) == 0 {
		return
	}
	_, ri, err := s.routeLocked(meta.route)
	if err != nil {
		return
	}
	keys := s.keysLocked(ri)
	if keys == nil {
		return
	}
	window := int64(ri.limits.DedupeWindow)
	if timeToNanos(s.now())-meta.arrived > window {
		return
	}
	if _, ok := keys.byKey[string(key)]; ok {
		// Within one window only the first message of a key was
		// appended by AppendOnce; a later one was a plain Append (or
		// made while the route did not de-duplicate), which AppendOnce
		// would not have answered with.
		return
	}
	keys.add(string(key), &dedupeEntry{id: meta.id, at: meta.arrived, seg: seg.seq})
	seg.keep = max(seg.keep, meta.arrived+window)
}

// Duplicate implements Deduper: it returns the ID of route's committed
// message appended with key within the route's window, if any. A message
// with that key still being committed is not reported.
func (s *FileStore) Duplicate(_ context.Context, route, key string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", false, ErrClosed
	}
	r, ok := s.routeIdx[route]
	if !ok {
		return "", false, nil
	}
	ri := s.routeList[r]
	if ri.keys == nil || ri.limits.DedupeWindow <= 0 {
		return "", false, nil
	}
	e := ri.keys.byKey[key]
	if e == nil || e.seg == 0 || timeToNanos(s.now())-e.at > int64(ri.limits.DedupeWindow) {
		return "", false, nil
	}
	return e.id, true, nil
}

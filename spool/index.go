package spool

import (
	"container/heap"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// The in-memory index holds 48 bytes per unsettled message, whatever its
// size: where its record is and its delivery state, never its body. A
// million pending messages cost about 46 MiB.
//
// Every message gets a key, unique and strictly increasing in log order.
// For an ID the store generated (16 hex digits of Unix nanoseconds, then 8
// random ones) the key is the nanoseconds, and the ID is rebuilt from the
// key and the random part. Any other ID (given by the caller, or out of
// order) gets the next free key and is kept as a string in a side map. The
// slots are kept in key order, so an ID is found by binary search, without
// a hash map entry per message.

// slot is the index record of one unsettled message.
type slot struct {
	key      uint64 // log order; the ID's time for a generated ID
	next     int64  // unix nanos of the next attempt; 0 means due now
	lo       uint32 // the ID's random part
	seg      uint32 // sequence number of the segment holding the message
	off      uint32 // its offset there
	size     uint32 // its framed size
	arrived  int32  // Arrived minus key, in nanoseconds, unless flagFarArrived
	stateSeg uint32 // segment of the latest state record; 0 if none
	attempts uint16 // delivery attempts, saturating
	route    uint16 // index in FileStore.routeList
	flags    uint8
}

const (
	flagDead       = 1 << iota // dead-lettered; else pending
	flagLeased                 // handed out by Next, not yet settled or released
	flagSettled                // acknowledged or deleted: a tombstone
	flagOtherID                // the ID is in FileStore.otherIDs
	flagFarArrived             // Arrived is in FileStore.farArrived
	flagOrphan                 // a state change failed while it was leased
)

const (
	chunkShift = 12
	chunkSize  = 1 << chunkShift // slots per chunk
	maxRoutes  = 1<<16 - 1
	maxOffset  = 1<<32 - 1
)

// slab holds the slots in key order in fixed-size chunks, so growing it
// never copies the slots. Settled slots stay as tombstones until their
// chunk is at the front and all tombstones (dropped) or tombstones
// outnumber the live slots (compacted). Every chunk but the last is full.
type slab struct {
	chunks     [][]slot
	buried     []int // tombstones per chunk
	n          int   // slots, tombstones included
	tombstones int
}

func (b *slab) len() int { return b.n }

func (b *slab) at(p int) *slot { return &b.chunks[p>>chunkShift][p&(chunkSize-1)] }

func (b *slab) push(sl slot) {
	if b.n&(chunkSize-1) == 0 {
		b.chunks = append(b.chunks, make([]slot, 0, chunkSize))
		b.buried = append(b.buried, 0)
	}
	last := len(b.chunks) - 1
	b.chunks[last] = append(b.chunks[last], sl)
	b.n++
}

func compareKey(sl slot, k uint64) int {
	switch {
	case sl.key < k:
		return -1
	case sl.key > k:
		return 1
	}
	return 0
}

// search returns the position of the first slot whose key is at least key.
func (b *slab) search(key uint64) int {
	c, _ := slices.BinarySearchFunc(b.chunks, key, func(ch []slot, k uint64) int {
		if ch[len(ch)-1].key < k {
			return -1
		}
		if ch[0].key > k {
			return 1
		}
		return 0
	})
	if c == len(b.chunks) {
		return b.n
	}
	i, _ := slices.BinarySearchFunc(b.chunks[c], key, compareKey)
	return c<<chunkShift + i
}

// find returns the live slot with key, or nil.
func (b *slab) find(key uint64) *slot {
	p := b.search(key)
	if p == b.n {
		return nil
	}
	sl := b.at(p)
	if sl.key != key || sl.flags&flagSettled != 0 {
		return nil
	}
	return sl
}

// bury makes the live slot with key a tombstone and frees what it can.
// Pointers to slots are invalid after it.
func (b *slab) bury(key uint64) {
	p := b.search(key)
	b.at(p).flags |= flagSettled
	b.buried[p>>chunkShift]++
	b.tombstones++
	for len(b.chunks) > 1 && b.buried[0] == chunkSize {
		b.chunks[0] = nil
		b.chunks, b.buried = b.chunks[1:], b.buried[1:]
		b.n -= chunkSize
		b.tombstones -= chunkSize
	}
	if b.tombstones > chunkSize && b.tombstones > b.n-b.tombstones {
		b.compact()
	}
}

// compact drops every tombstone; the chunks are rebuilt.
func (b *slab) compact() {
	old := b.chunks
	*b = slab{chunks: make([][]slot, 0, (b.n-b.tombstones)/chunkSize+1)}
	for _, ch := range old {
		for _, sl := range ch {
			if sl.flags&flagSettled == 0 {
				b.push(sl)
			}
		}
	}
}

// routeIndex holds one route's counts and what Next needs to find its
// earliest due message without scanning the spool each time.
type routeIndex struct {
	name     string
	pending  int64
	dead     int64
	bytes    int64
	resMsgs  int64 // reserved by queued Appends
	resBytes int64
	limits   Limits
	head     uint64     // no pending slot of the route has a smaller key
	cursor   uint64     // every slot of the route before it is leased, retried, dead or settled
	timed    timedHeap  // retried messages by next attempt (entries may be stale)
	due      keyHeap    // messages due again, by key (entries may be stale)
	keys     *routeKeys // idempotency keys within limits.DedupeWindow; nil when unused
}

// timedEntry is a retried message waiting for its next attempt.
type timedEntry struct {
	next int64
	key  uint64
}

type timedHeap []timedEntry

func (h timedHeap) Len() int           { return len(h) }
func (h timedHeap) Less(i, j int) bool { return h[i].next < h[j].next }
func (h timedHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timedHeap) Push(x any)        { *h = append(*h, x.(timedEntry)) }
func (h *timedHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type keyHeap []uint64

func (h keyHeap) Len() int           { return len(h) }
func (h keyHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h keyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// parseID splits a generated-form ID (24 lowercase hex digits) into its
// time and random parts.
func parseID(id string) (key uint64, lo uint32, ok bool) {
	if len(id) != 24 {
		return 0, 0, false
	}
	var b [12]byte
	if _, err := hex.Decode(b[:], []byte(id)); err != nil || strings.ToLower(id) != id {
		return 0, 0, false
	}
	for i := range 8 {
		key = key<<8 | uint64(b[i])
	}
	lo = uint32(b[8])<<24 | uint32(b[9])<<16 | uint32(b[10])<<8 | uint32(b[11])
	return key, lo, true
}

func formatID(key uint64, lo uint32) string {
	var b [12]byte
	for i := range 8 {
		b[i] = byte(key >> (56 - 8*i))
	}
	b[8], b[9], b[10], b[11] = byte(lo>>24), byte(lo>>16), byte(lo>>8), byte(lo)
	var s [2 * len(b)]byte
	hex.Encode(s[:], b[:])
	return string(s[:]) // one allocation, where EncodeToString makes two
}

// lookupLocked returns the live slot of id, or nil.
func (s *FileStore) lookupLocked(id string) *slot {
	if key, lo, ok := parseID(id); ok {
		if sl := s.slab.find(key); sl != nil && sl.lo == lo && sl.flags&flagOtherID == 0 {
			return sl
		}
	}
	if key, ok := s.otherIDs[id]; ok {
		return s.slab.find(key)
	}
	return nil
}

// assignKeyLocked returns the key of a new message with id: its time part
// if id is in generated form and after every key given so far, else the
// next free key.
func (s *FileStore) assignKeyLocked(id string) (key uint64, lo uint32, other bool) {
	if k, l, ok := parseID(id); ok && k > s.lastKey {
		s.lastKey = k
		return k, l, false
	}
	s.lastKey++
	return s.lastKey, 0, true
}

func (s *FileStore) idOf(sl *slot) string {
	if sl.flags&flagOtherID != 0 {
		return s.otherByKey[sl.key]
	}
	return formatID(sl.key, sl.lo)
}

func (s *FileStore) arrivedOf(sl *slot) int64 {
	if sl.flags&flagFarArrived != 0 {
		return s.farArrived[sl.key]
	}
	return int64(sl.key) + int64(sl.arrived)
}

func (s *FileStore) segBySeq(seq uint32) *segment {
	i, ok := slices.BinarySearchFunc(s.segs, uint64(seq), func(g *segment, q uint64) int {
		switch {
		case g.seq < q:
			return -1
		case g.seq > q:
			return 1
		}
		return 0
	})
	if !ok {
		return nil
	}
	return s.segs[i]
}

// routeLocked returns the index of the named route, creating it.
func (s *FileStore) routeLocked(name string) (uint16, *routeIndex, error) {
	if i, ok := s.routeIdx[name]; ok {
		return i, s.routeList[i], nil
	}
	if len(s.routeList) >= maxRoutes {
		return 0, nil, fmt.Errorf("spool: more than %d routes", maxRoutes)
	}
	i := uint16(len(s.routeList))
	ri := &routeIndex{name: name, limits: s.opts.Routes[name]}
	s.routeList = append(s.routeList, ri)
	s.routeIdx[name] = i
	return i, ri, nil
}

// applyLocked applies one durable record to the index. Recovery replays
// the log through it, so the index after a reopen is the one before.
// Records about unknown IDs are ignored: their messages were settled and
// their segment deleted. key is the key Append assigned to a message
// record; recovery passes 0 and one is assigned here.
func (s *FileStore) applyLocked(rec *record, seg *segment, off, size int64, key uint64) error {
	if rec.typ == recMessage {
		m := rec.msg
		return s.addLocked(messageMeta{id: m.ID, route: m.Route, arrived: timeToNanos(m.Arrived), attempts: m.Attempts}, seg, off, size, key)
	}
	sl := s.lookupLocked(rec.id)
	if sl == nil {
		return nil
	}
	ri := s.routeList[sl.route]
	switch rec.typ {
	case recRetry:
		s.setDead(sl, ri, false)
		sl.next, sl.attempts, sl.flags = timeToNanos(rec.at), sat16(rec.attempts), sl.flags&^flagLeased
		delete(s.reasons, sl.key)
		s.moveStateSeg(sl, seg)
		if !s.recovering {
			heap.Push(&ri.timed, timedEntry{sl.next, sl.key})
		}
	case recDead:
		s.setDead(sl, ri, true)
		sl.next, sl.attempts, sl.flags = 0, sat16(rec.attempts), sl.flags&^flagLeased
		if rec.reason != "" {
			s.reasons[sl.key] = rec.reason
		}
		s.moveStateSeg(sl, seg)
	case recReplay:
		s.setDead(sl, ri, false)
		sl.next, sl.attempts, sl.flags = 0, 0, sl.flags&^flagLeased
		delete(s.reasons, sl.key)
		s.moveStateSeg(sl, seg)
		if !s.recovering {
			heap.Push(&ri.due, sl.key)
		}
	case recAck, recDelete:
		s.settle(sl, ri, seg)
	}
	return nil
}

// addLocked indexes a message record; key is 0 during recovery.
func (s *FileStore) addLocked(m messageMeta, seg *segment, off, size int64, key uint64) error {
	var lo uint32
	other := false
	if key == 0 {
		if s.lookupLocked(m.id) != nil {
			return nil // a second record for a stored ID: the first one counts
		}
		key, lo, other = s.assignKeyLocked(m.id)
	} else if k, l, ok := parseID(m.id); ok && k == key {
		lo = l
	} else {
		other = true
	}
	if off > maxOffset || size > maxOffset || seg.seq > maxOffset {
		return fmt.Errorf("spool: record at %s:%d is beyond the index's range", seg.path, off)
	}
	ri, r, err := s.routeLocked(m.route)
	if err != nil {
		return err
	}
	sl := slot{key: key, lo: lo, seg: uint32(seg.seq), off: uint32(off), size: uint32(size),
		attempts: sat16(m.attempts), route: ri}
	if other {
		sl.flags |= flagOtherID
		s.otherIDs[m.id] = key
		s.otherByKey[key] = m.id
	}
	arrived := m.arrived
	if d := arrived - int64(key); int64(int32(d)) == d {
		sl.arrived = int32(d)
	} else {
		sl.flags |= flagFarArrived
		s.farArrived[key] = arrived
	}
	s.slab.push(sl)
	r.pending++
	r.bytes += size
	s.count++
	s.bytes += size
	seg.refs++
	return nil
}

func sat16(n int) uint16 { return uint16(min(max(n, 0), 1<<16-1)) }

// setDead moves sl between the pending and dead counts.
func (s *FileStore) setDead(sl *slot, ri *routeIndex, dead bool) {
	if (sl.flags&flagDead != 0) == dead {
		return
	}
	if dead {
		sl.flags |= flagDead
		ri.pending--
		ri.dead++
		return
	}
	sl.flags &^= flagDead
	ri.dead--
	ri.pending++
	ri.head = min(ri.head, sl.key)
}

func (s *FileStore) moveStateSeg(sl *slot, seg *segment) {
	if sl.stateSeg != 0 {
		if old := s.segBySeq(sl.stateSeg); old != nil {
			old.refs--
		}
	}
	sl.stateSeg = uint32(seg.seq)
	seg.refs++
}

func (s *FileStore) settle(sl *slot, ri *routeIndex, seg *segment) {
	if sl.flags&flagDead != 0 {
		ri.dead--
	} else {
		ri.pending--
	}
	ri.bytes -= int64(sl.size)
	s.count--
	s.bytes -= int64(sl.size)
	msgSeg := s.segBySeq(sl.seg)
	msgSeg.refs--
	if sl.stateSeg != 0 {
		if st := s.segBySeq(sl.stateSeg); st != nil {
			st.refs--
		}
	}
	if seg != msgSeg {
		msgSeg.settled[seg]++
		seg.refs++
	}
	if sl.flags&flagOtherID != 0 {
		delete(s.otherIDs, s.otherByKey[sl.key])
		delete(s.otherByKey, sl.key)
	}
	if sl.flags&flagFarArrived != 0 {
		delete(s.farArrived, sl.key)
	}
	delete(s.reasons, sl.key)
	s.slab.bury(sl.key)
	if ri.pending == 0 && ri.dead == 0 {
		ri.timed, ri.due = nil, nil
	}
}

// rebuildQueuesLocked fills the routes' timed heaps after recovery.
func (s *FileStore) rebuildQueuesLocked() {
	for p := range s.slab.len() {
		sl := s.slab.at(p)
		if sl.flags&(flagSettled|flagDead) == 0 && sl.next != 0 {
			ri := s.routeList[sl.route]
			ri.timed = append(ri.timed, timedEntry{sl.next, sl.key})
		}
	}
	for _, ri := range s.routeList {
		heap.Init(&ri.timed)
	}
}

// nextLocked returns the earliest appended pending slot of ri that is due
// at t and not leased, or nil.
func (s *FileStore) nextLocked(r uint16, ri *routeIndex, t int64) *slot {
	for len(ri.timed) > 0 && ri.timed[0].next <= t {
		e := heap.Pop(&ri.timed).(timedEntry)
		if sl := s.slab.find(e.key); sl != nil && sl.next == e.next && sl.flags&(flagDead|flagLeased) == 0 {
			heap.Push(&ri.due, e.key)
		}
	}
	var due *slot
	for len(ri.due) > 0 {
		sl := s.slab.find(ri.due[0])
		if sl != nil && sl.next <= t && sl.flags&(flagDead|flagLeased) == 0 {
			due = sl
			break
		}
		heap.Pop(&ri.due)
	}
	var fresh *slot
	p := s.slab.search(ri.cursor)
	for ; p < s.slab.len(); p++ {
		sl := s.slab.at(p)
		if sl.route == r && sl.flags&(flagSettled|flagDead|flagLeased) == 0 && sl.next == 0 {
			fresh = sl
			break
		}
	}
	// Past the end, the cursor goes just past the last indexed slot, not
	// past s.lastKey: a message whose key is given but whose record is
	// still being committed is indexed after the scan, and must not be
	// skipped.
	switch n := s.slab.len(); {
	case p < n:
		ri.cursor = s.slab.at(p).key
	case n > 0:
		ri.cursor = s.slab.at(n-1).key + 1
	}
	switch {
	case due == nil:
		return fresh
	case fresh == nil || due.key < fresh.key:
		heap.Pop(&ri.due)
		return due
	}
	return fresh
}

// oldestLocked returns the Arrived time of ri's earliest appended pending
// message, in unix nanos, or 0.
func (s *FileStore) oldestLocked(r uint16, ri *routeIndex) int64 {
	if ri.pending == 0 {
		return 0
	}
	for p := s.slab.search(ri.head); p < s.slab.len(); p++ {
		sl := s.slab.at(p)
		if sl.route == r && sl.flags&(flagSettled|flagDead) == 0 {
			ri.head = sl.key
			return s.arrivedOf(sl)
		}
	}
	return 0
}

// collectLocked deletes every segment but the last whose refs are zero
// and whose keys have left their dedupe window (segment.keep),
// fsyncing the directory after each removal so that a message segment is
// always gone before the segment holding its ack.
func (s *FileStore) collectLocked() {
	for i := 0; i < len(s.segs)-1; {
		seg := s.segs[i]
		if seg.refs > 0 || seg.keep >= timeToNanos(s.now()) {
			// Needed by an unsettled message, or holds a key still
			// within its dedupe window.
			i++
			continue
		}
		seg.f.Close()
		if err := s.fs.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("spool: cannot delete settled segment", "path", seg.path, "err", err)
			return
		}
		if err := s.syncDir(); err != nil {
			s.failed = true
			s.log.Error("spool: fsync dir failed; refusing writes until reopened", "dir", s.dir, "err", err)
			return
		}
		for other, n := range seg.settled {
			other.refs -= n
		}
		s.segs = slices.Delete(s.segs, i, i+1)
		i = 0
	}
}

// readLocked reads sl's message from disk.
func (s *FileStore) readLocked(sl *slot) (*Message, error) {
	id := s.idOf(sl)
	seg := s.segBySeq(sl.seg)
	if seg == nil {
		return nil, &DamagedError{ID: id, Path: segmentName(uint64(sl.seg)), Offset: int64(sl.off)}
	}
	buf := make([]byte, sl.size)
	if _, err := seg.f.ReadAt(buf, int64(sl.off)); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read %s: %w", id, err)
	}
	rec, _, err := decodeRecord(buf)
	if err != nil || rec.typ != recMessage || rec.id != id {
		return nil, &DamagedError{ID: id, Path: seg.path, Offset: int64(sl.off)}
	}
	m := rec.msg
	m.Attempts = int(sl.attempts)
	return m, nil
}

func (s *FileStore) info(sl *slot) Info {
	st := Pending
	if sl.flags&flagDead != 0 {
		st = Dead
	}
	return Info{ID: s.idOf(sl), Route: s.routeList[sl.route].name, State: st, Size: int64(sl.size),
		Arrived: nanosToTime(s.arrivedOf(sl)), Attempts: int(sl.attempts), NextAttempt: nanosToTime(sl.next),
		Leased: sl.flags&flagLeased != 0, DeadReason: s.reasons[sl.key]}
}

package spool

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// entry is the in-memory index of one unsettled message: where its record
// is and its current state, never its body.
type entry struct {
	id       string
	route    string
	seq      uint64
	seg      *segment
	off      int64
	size     int64
	arrived  int64 // unix nanos
	next     int64 // unix nanos
	attempts int
	state    State
	leased   bool
	stateSeg *segment // segment of the latest state record, if any
	reason   string
}

// routeIndex holds a route's counts and its pending entries in log order.
type routeIndex struct {
	pending []*entry
	dead    int64
	bytes   int64
}

// applyLocked applies one durable record to the index. Recovery replays
// the log through it, so the index after a reopen is the one before.
// Records about unknown IDs are ignored: their messages were settled and
// their segment deleted.
func (s *FileStore) applyLocked(rec *record, seg *segment, off, size int64) {
	if rec.typ == recMessage {
		if s.byID[rec.id] != nil {
			return
		}
		s.seq++
		e := &entry{id: rec.id, route: rec.msg.Route, seq: s.seq, seg: seg, off: off, size: size,
			arrived: timeToNanos(rec.msg.Arrived), attempts: rec.msg.Attempts}
		s.byID[e.id] = e
		ri := s.route(e.route)
		ri.pending = append(ri.pending, e) // seq only grows: still sorted
		ri.bytes += size
		s.count++
		s.bytes += size
		seg.refs++
		return
	}
	e := s.byID[rec.id]
	if e == nil {
		return
	}
	switch rec.typ {
	case recRetry:
		s.setState(e, Pending)
		e.next, e.attempts, e.reason, e.leased = timeToNanos(rec.at), rec.attempts, "", false
		s.moveStateSeg(e, seg)
	case recDead:
		s.setState(e, Dead)
		e.next, e.attempts, e.reason, e.leased = 0, rec.attempts, rec.reason, false
		s.moveStateSeg(e, seg)
	case recReplay:
		s.setState(e, Pending)
		e.next, e.attempts, e.reason, e.leased = 0, 0, "", false
		s.moveStateSeg(e, seg)
	case recAck, recDelete:
		s.settle(e, seg)
	}
}

func (s *FileStore) route(name string) *routeIndex {
	ri := s.routes[name]
	if ri == nil {
		ri = &routeIndex{}
		s.routes[name] = ri
	}
	return ri
}

func (s *FileStore) setState(e *entry, st State) {
	if e.state == st {
		return
	}
	ri := s.route(e.route)
	if st == Dead {
		ri.pending = removeEntry(ri.pending, e)
		ri.dead++
	} else {
		ri.dead--
		i, _ := slices.BinarySearchFunc(ri.pending, e.seq, func(x *entry, seq uint64) int { return cmp.Compare(x.seq, seq) })
		ri.pending = slices.Insert(ri.pending, i, e)
	}
	e.state = st
}

func removeEntry(l []*entry, e *entry) []*entry {
	i, ok := slices.BinarySearchFunc(l, e.seq, func(x *entry, seq uint64) int { return cmp.Compare(x.seq, seq) })
	if !ok {
		return l
	}
	if i == 0 {
		l[0] = nil
		return l[1:]
	}
	return slices.Delete(l, i, i+1)
}

func (s *FileStore) moveStateSeg(e *entry, seg *segment) {
	if e.stateSeg != nil {
		e.stateSeg.refs--
	}
	e.stateSeg = seg
	seg.refs++
}

func (s *FileStore) settle(e *entry, seg *segment) {
	ri := s.route(e.route)
	if e.state == Dead {
		ri.dead--
	} else {
		ri.pending = removeEntry(ri.pending, e)
	}
	ri.bytes -= e.size
	if len(ri.pending) == 0 && ri.dead == 0 {
		delete(s.routes, e.route)
	}
	s.count--
	s.bytes -= e.size
	delete(s.byID, e.id)
	e.seg.refs--
	if e.stateSeg != nil {
		e.stateSeg.refs--
	}
	if seg != e.seg {
		e.seg.settled[seg]++
		seg.refs++
	}
}

// collectLocked deletes every segment but the last whose refs are zero,
// fsyncing the directory after each removal so that a message segment is
// always gone before the segment holding its ack.
func (s *FileStore) collectLocked() {
	for i := 0; i < len(s.segs)-1; {
		seg := s.segs[i]
		if seg.refs > 0 {
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

// readLocked reads e's message from disk.
func (s *FileStore) readLocked(e *entry) (*Message, error) {
	buf := make([]byte, e.size)
	if _, err := e.seg.f.ReadAt(buf, e.off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read %s: %w", e.id, err)
	}
	rec, _, err := decodeRecord(buf)
	if err != nil || rec.typ != recMessage || rec.id != e.id {
		return nil, &DamagedError{ID: e.id, Path: e.seg.path, Offset: e.off}
	}
	m := rec.msg
	m.Attempts = e.attempts
	return m, nil
}

func (e *entry) info() Info {
	return Info{ID: e.id, Route: e.route, State: e.state, Size: e.size, Arrived: nanosToTime(e.arrived),
		Attempts: e.attempts, NextAttempt: nanosToTime(e.next), Leased: e.leased, DeadReason: e.reason}
}

package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

const maxReopenDelay = 30 * time.Second

// request is one record queued for the writer.
type request struct {
	rec     *record
	key     uint64 // of a message record
	patched bool   // buf's ID was patched in: its checksum must be set
	buf     []byte
	seg     *segment
	off     int64
	done    chan error
	// dedupe is the key entry of a message Append that de-duplicates:
	// the commit completes it.
	dedupe *dedupeEntry
}

// enqueue hands req to the writer. s.mu is held, so records are queued in
// the order their checks were made.
func (s *FileStore) enqueue(req *request) {
	s.qmu.Lock()
	s.queue = append(s.queue, req)
	s.qmu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it takes everything queued, writes it in
// one write per segment, syncs once, applies it to the index and wakes the
// waiters. It stops when Shutdown closes s.stop, after draining the
// queue, and closes the files.
func (s *FileStore) run() {
	defer close(s.done)
	defer func() {
		if s.aio != nil {
			s.poker.Store(nil)
			s.aio.release()
		}
	}()
	var tick <-chan time.Time
	if s.opts.Fsync == FsyncInterval {
		t := time.NewTicker(s.opts.Interval)
		defer t.Stop()
		tick = t.C
	}
	// After a failure the writer reopens the store, first after
	// ReopenDelay, then backing off to maxReopenDelay.
	var retry <-chan time.Time
	var timer *time.Timer
	delay := s.opts.ReopenDelay
	for {
		select {
		case <-s.wake:
			// The first Append of a batch wakes the writer, and the
			// scheduler runs a woken goroutine next: taking the queue
			// now would commit that one record alone while the
			// requests behind it are a moment from appending. Yielding
			// first lets every goroutine already runnable append, so
			// one fsync carries them all (docs/design.md, "Async
			// guarantees"). It costs nothing when nothing else is
			// runnable.
			runtime.Gosched()
			if s.commit(s.take()) {
				delay = s.opts.ReopenDelay
			}
		case <-tick:
			s.syncDirty()
		case <-retry:
			retry = nil
			// The delay doubles with every reopen until a write
			// succeeds: a reopen needs no room on the disk, so its own
			// success says nothing of the next write's.
			if err := s.reopenFiles(); err != nil {
				s.log.Error("spool: reopen after failure failed; writes still refused", "dir", s.dir, "err", err, "retry_in", delay.String())
			}
			delay = min(2*delay, maxReopenDelay)
		case <-s.stop:
			s.commit(s.take())
			s.syncDirty()
			if timer != nil {
				timer.Stop()
			}
			// The writer closes the files, not Shutdown: one that gave
			// up on a stalled disk leaves them, and the directory's
			// lock, to the writer, which may still write.
			s.closeErr = s.closeFiles()
			return
		}
		if retry == nil && delay > 0 && s.isFailed() {
			if timer == nil {
				timer = time.NewTimer(delay)
			} else {
				timer.Reset(delay)
			}
			retry = timer.C
		}
	}
}

// reopenFiles brings a failed store back: it fails what is queued, cuts
// every segment back to what was last fsynced (with FsyncAlways nothing
// after that was acknowledged, and a page cache that failed to write it
// must not bring it back), closes the files, recovers the log as OpenFile
// does and starts a new segment. Leases are kept. Only the writer calls it.
func (s *FileStore) reopenFiles() error {
	s.commit(s.take())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.failed {
		return nil
	}
	// s.failed keeps Append and the state methods from queueing anything
	// while s.mu is released below; the queue is empty.
	if s.opts.Fsync == FsyncAlways {
		for _, seg := range s.segs {
			if seg.size > seg.synced {
				if err := seg.f.Truncate(seg.synced); err != nil {
					return fmt.Errorf("spool: truncate %s to its fsynced size: %w", seg.path, err)
				}
				if err := seg.f.Sync(); err != nil {
					return fmt.Errorf("spool: fsync %s: %w", seg.path, err)
				}
				s.log.Warn("spool: cut unacknowledged records after a failure", "path", seg.path, "bytes", seg.size-seg.synced)
			}
		}
	}
	// Leases stay, so that a message being delivered is not handed out
	// twice at once; those whose holder failed to settle them are released.
	var leased []string
	for p := range s.slab.len() {
		if sl := s.slab.at(p); sl.flags&(flagSettled|flagLeased|flagOrphan) == flagLeased {
			leased = append(leased, s.idOf(sl))
		}
	}
	lastKey := s.lastKey
	for _, seg := range s.segs {
		seg.f.Close()
	}
	s.resetIndexLocked()
	s.failed = false // recoverLocked reports a failure of its own
	err := s.recoverLocked()
	s.failed = true
	if err != nil {
		return err
	}
	s.lastKey = max(s.lastKey, lastKey)
	for _, id := range leased {
		if sl := s.lookupLocked(id); sl != nil {
			sl.flags |= flagLeased
		}
	}
	// Writes go to a new segment, never to one that failed, unless the
	// last one is empty: a segment a reopen made whose first write failed
	// and was cut back to nothing. Writing on in it is writing in a new
	// one, and a long outage (a full disk) does not leave an empty
	// segment, and an open file, per reopen.
	if last := s.segs[len(s.segs)-1]; last.size > 0 {
		name := filepath.Join(s.dir, segmentName(last.seq+1))
		f, err := s.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("spool: create %s: %w", name, err)
		}
		s.segs = append(s.segs, newSegment(s.dir, last.seq+1, f, 0))
		// The new segment is in s.segs, so a failed reopen closes it and
		// the next one recovers it (empty) like any other.
		if err := s.syncDir(); err != nil {
			return fmt.Errorf("spool: fsync dir %s: %w", s.dir, err)
		}
	}
	s.failed = false
	s.dirty = false
	s.reopens.Add(1)
	s.log.Warn("spool: reopened after a failure; writes accepted again", "dir", s.dir,
		"pending", s.count, "corrupt_records", s.corrupt)
	return nil
}

func (s *FileStore) take() []*request {
	s.qmu.Lock()
	q := s.queue
	s.queue = nil
	s.qmu.Unlock()
	return q
}

func (s *FileStore) syncDirty() {
	if !s.dirty {
		return
	}
	s.dirty = false
	seg := s.segs[len(s.segs)-1]
	if err := s.syncFile(seg); err != nil {
		s.fail(err)
	}
}

func (s *FileStore) syncFile(seg *segment) error {
	size := seg.size
	var start time.Time
	if s.opts.OnFsync != nil {
		start = time.Now()
	}
	if err := s.fsync(seg.f); err != nil {
		s.syncErrs.Add(1)
		return fmt.Errorf("%w: fsync %s: %v", ErrFailed, seg.path, err)
	}
	if s.opts.OnFsync != nil {
		s.opts.OnFsync(time.Since(start))
	}
	s.syncs.Add(1)
	seg.synced = size
	return nil
}

// fsync syncs a segment's data (an fdatasync: the file's size with it,
// not its times): through s.aio when the store has one, so that the
// writer waits for the disk without holding its P, and with
// fdatasync(2) otherwise, or from the first time the kernel refuses
// AIO's.
func (s *FileStore) fsync(f File) error {
	if osf, ok := f.(*os.File); ok && s.aio != nil {
		err := s.aio.sync(osf)
		switch {
		case err == errAIOUnsupported:
			s.log.Debug("spool: fdatasync through AIO refused; using fdatasync(2)", "dir", s.dir)
		case s.aio.broken:
			// An fsync may still be in flight: its completion must not
			// be taken for a later one's.
			s.log.Warn("spool: waiting for an fdatasync through AIO failed; using fdatasync(2) from now on", "dir", s.dir, "err", err)
		default:
			return err
		}
		s.poker.Store(nil)
		s.aio.broken = true // not to be used again
		s.aio.release()
		s.aio = nil
		if err != errAIOUnsupported {
			return err
		}
	}
	if osf, ok := f.(*os.File); ok {
		return datasync(osf)
	}
	return f.Sync()
}

// fail marks the store failed: it refuses writes until reopened.
func (s *FileStore) fail(err error) {
	s.mu.Lock()
	first := !s.failed
	s.failed = true
	s.mu.Unlock()
	if first {
		s.log.Error("spool: write failed; refusing writes until the spool is reopened", "dir", s.dir, "err", err)
	}
}

// isFailed reports whether the store refuses writes.
func (s *FileStore) isFailed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// commit writes, syncs and applies reqs, and reports whether it wrote
// them. Only the writer goroutine calls it, and only it changes s.segs,
// under s.mu.
func (s *FileStore) commit(reqs []*request) bool {
	if len(reqs) == 0 {
		return false
	}
	s.mu.Lock()
	failed := s.failed
	s.mu.Unlock()
	err := ErrFailed
	if !failed {
		err = s.write(reqs)
	}
	s.mu.Lock()
	for _, r := range reqs {
		if r.rec.typ == recMessage {
			size := int64(len(r.buf))
			s.resMsgs--
			s.resBytes -= size
			_, ri, _ := s.routeLocked(r.rec.msg.Route) // made by Append
			ri.resMsgs--
			ri.resBytes -= size
			delete(s.inflight, r.rec.id)
			if r.dedupe != nil {
				seg := r.seg
				if err != nil {
					seg = nil
				}
				s.endDedupeLocked(r.dedupe, r.rec.msg, seg)
			}
		}
		if err == nil {
			// Append checked what could fail here: the route's index
			// exists and SegmentSize keeps offsets in range.
			if aerr := s.applyLocked(r.rec, r.seg, r.off, int64(len(r.buf)), r.key); aerr != nil {
				s.log.Error("spool: record written but not indexed", "id", r.rec.id, "err", aerr)
			}
		}
	}
	if err == nil {
		s.collectLocked()
	}
	s.mu.Unlock()
	if err != nil {
		s.fail(err)
		err = ErrFailed
	}
	for _, r := range reqs {
		if err == nil && r.rec.typ == recMessage {
			s.appends.Add(1)
		}
		r.done <- err
	}
	return err == nil
}

// write places reqs in segments, rotating when one is full, and writes and
// syncs them.
func (s *FileStore) write(reqs []*request) error {
	seg := s.segs[len(s.segs)-1]
	buf := s.wbuf[:0]
	defer func() {
		if cap(buf) <= maxKeptBuffer {
			s.wbuf = buf[:0]
		}
	}()
	for _, r := range reqs {
		end := seg.size + int64(len(buf))
		if end > 0 && end+int64(len(r.buf)) > s.opts.SegmentSize {
			if err := s.flush(seg, buf, true); err != nil {
				return err
			}
			buf = buf[:0]
			next, err := s.rotate(seg)
			if err != nil {
				return err
			}
			seg = next
		}
		if r.patched {
			setChecksum(r.buf)
		}
		r.seg, r.off = seg, seg.size+int64(len(buf))
		buf = append(buf, r.buf...)
	}
	return s.flush(seg, buf, s.opts.Fsync == FsyncAlways)
}

func (s *FileStore) flush(seg *segment, buf []byte, sync bool) error {
	if len(buf) > 0 {
		n, err := seg.f.WriteAt(buf, seg.size)
		seg.size += int64(n)
		seg.zeroed = max(seg.zeroed, seg.size)
		if err == nil && s.opts.ZeroAhead > 0 && seg.size > seg.zeroed-s.opts.ZeroAhead/2 {
			// The zeros are room taken ahead, not part of the batch: a
			// full disk refuses them and the batch stands, and the
			// batches after it write into the zeros left until the
			// disk refuses their records. A write error the disk
			// reports later fails the batch's fdatasync.
			_ = s.zeroAhead(seg)
		}
		if err != nil {
			s.writeErrs.Add(1)
			return fmt.Errorf("%w: write %s: %v", ErrFailed, seg.path, err)
		}
		s.dirty = true
	}
	if sync && s.dirty {
		s.dirty = false
		return s.syncFile(seg)
	}
	return nil
}

// zeroAhead writes zeros past seg's records, ZeroAhead bytes beyond its
// end, in the same batch as the records that came close to the end of
// the zeros written before: the batch's fdatasync persists the file's
// new size once, and the batches after it write into zeros the disk
// holds, each fdatasync with the data alone to write.
func (s *FileStore) zeroAhead(seg *segment) error {
	if s.zeros == nil {
		s.zeros = make([]byte, s.opts.ZeroAhead)
	}
	// Not past the segment's size: the next batch that would be goes to
	// a new segment.
	end := min(seg.size+s.opts.ZeroAhead, max(s.opts.SegmentSize, seg.size))
	for seg.zeroed < end {
		n, err := seg.f.WriteAt(s.zeros[:min(end-seg.zeroed, int64(len(s.zeros)))], seg.zeroed)
		seg.zeroed += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// rotate creates the segment after cur and fsyncs the directory.
func (s *FileStore) rotate(cur *segment) (*segment, error) {
	seq := cur.seq + 1
	name := filepath.Join(s.dir, segmentName(seq))
	f, err := s.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		s.writeErrs.Add(1)
		return nil, fmt.Errorf("%w: create %s: %v", ErrFailed, name, err)
	}
	if err := s.syncDir(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: fsync dir %s: %v", ErrFailed, s.dir, err)
	}
	seg := newSegment(s.dir, seq, f, 0)
	s.mu.Lock()
	s.segs = append(s.segs, seg)
	s.mu.Unlock()
	return seg, nil
}

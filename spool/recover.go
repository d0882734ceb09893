package spool

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// recover reads every segment in order and rebuilds the index. A damaged
// region followed by a valid record is skipped and counted in
// CorruptRecords. A damaged region that runs to the end of the last segment
// is a torn tail, left by a crash during a write, and is truncated. A
// damaged region at the end of an earlier segment is counted as corrupt.
// Zeros to the end of a segment are neither: they were written ahead of
// the records (FileOptions.ZeroAhead), or are a tail whose data never
// reached the disk, and the records end where they begin.
func (s *FileStore) recover() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recoverLocked()
}

func (s *FileStore) recoverLocked() error {
	des, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var seqs []uint64
	for _, de := range des {
		if seq, ok := parseSegmentName(de.Name()); ok && de.Type().IsRegular() {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	s.recovering = true
	defer func() { s.recovering = false }()
	var buf []byte
	for i, seq := range seqs {
		if buf, err = s.recoverSegment(seq, i == len(seqs)-1, buf); err != nil {
			return err
		}
	}
	s.recovering = false
	s.rebuildQueuesLocked()
	if len(s.segs) == 0 {
		name := filepath.Join(s.dir, segmentName(1))
		f, err := s.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("spool: create %s: %w", name, err)
		}
		s.segs = append(s.segs, newSegment(s.dir, 1, f, 0))
		if err := s.syncDir(); err != nil {
			return fmt.Errorf("spool: fsync dir %s: %w", s.dir, err)
		}
	}
	s.collectLocked()
	if s.failed {
		return fmt.Errorf("%w: fsync dir %s during recovery", ErrFailed, s.dir)
	}
	return nil
}

// recoverSegment replays one segment into the index, reading it into buf,
// which it returns for the next segment.
func (s *FileStore) recoverSegment(seq uint64, last bool, buf []byte) ([]byte, error) {
	name := filepath.Join(s.dir, segmentName(seq))
	f, err := s.fs.OpenFile(name, os.O_RDWR, 0o600)
	if err != nil {
		return buf, fmt.Errorf("spool: open %s: %w", name, err)
	}
	seg := newSegment(s.dir, seq, f, 0)
	s.segs = append(s.segs, seg)
	fi, err := f.Stat()
	if err != nil {
		return buf, fmt.Errorf("spool: stat %s: %w", name, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := s.fs.Chmod(name, 0o600); err != nil {
			return buf, fmt.Errorf("spool: chmod %s: %w", name, err)
		}
	}
	// A whole segment is read at once: SegmentSize bounds it, except for a
	// segment holding one oversized record.
	if int64(cap(buf)) < fi.Size() {
		buf = make([]byte, fi.Size())
	}
	data := buf[:fi.Size()]
	if _, err := f.ReadAt(data, 0); err != nil && err != io.EOF {
		return buf, fmt.Errorf("spool: read %s: %w", name, err)
	}
	off := 0
	for off < len(data) {
		typ, meta, rec, n, err := decodeMeta(data[off:])
		if err == nil {
			if typ == recMessage {
				err = s.addLocked(meta, seg, int64(off), int64(n), 0)
				s.recoverKeyLocked(meta, meta.key, seg)
			} else {
				err = s.applyLocked(rec, seg, int64(off), int64(n), 0)
			}
			if err != nil {
				return buf, err
			}
			off += n
			continue
		}
		if allZero(data[off:]) {
			// Zeros written ahead of the records (FileOptions.ZeroAhead),
			// or a tail whose data never reached the disk: the segment's
			// records end here, and writes go on over the zeros.
			break
		}
		next := resync(data, off+1)
		if next < 0 && last {
			if err := f.Truncate(int64(off)); err != nil {
				return buf, fmt.Errorf("spool: truncate torn tail of %s: %w", name, err)
			}
			if err := f.Sync(); err != nil {
				return buf, fmt.Errorf("spool: fsync %s: %w", name, err)
			}
			s.torn = true
			s.log.Warn("spool: truncated torn tail", "path", name, "offset", off, "bytes", len(data)-off)
			data = data[:off]
			break
		}
		s.corrupt++
		end := next
		if next < 0 {
			end = len(data)
		}
		s.log.Error("spool: skipped corrupt region", "path", name, "offset", off, "bytes", end-off, "err", err)
		off = end
	}
	seg.zeroed = int64(len(data))
	seg.size = min(int64(off), seg.zeroed)
	seg.synced = seg.size
	return buf, nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// resync returns the offset of the first valid record at or after from, or
// -1 if there is none.
func resync(data []byte, from int) int {
	for i := from; i+headerSize <= len(data); i++ {
		if _, _, err := decodeRecord(data[i:]); err == nil {
			return i
		}
	}
	return -1
}

package spool

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// segment is one log file. Its refs count what still needs the file: +1 per
// unsettled message whose message record is in it, +1 per unsettled message
// whose latest state record is in it, and +1 per settled message whose
// settling record (ack or delete) is in it while that message's own
// segment still exists. A segment other than the last is deleted when refs
// drops to zero.
type segment struct {
	seq  uint64
	path string
	f    File
	size int64
	// synced is the size after the last successful fsync of the file.
	synced int64
	// zeroed is the file's size: size plus the zeros written ahead of
	// the records (FileOptions.ZeroAhead). Writer only, and recovery.
	zeroed int64
	refs   int
	// settled counts, per segment holding the ack or delete record, the
	// settled messages whose message record is in this segment; deleting
	// this segment releases those refs.
	settled map[*segment]int
	// keep, in unix nanos, is when the last idempotency key whose
	// message record is in this segment leaves its dedupe window: the
	// segment is kept until then (dedupe.go). 0: none.
	keep int64
}

const segmentExt = ".log"

func segmentName(seq uint64) string { return fmt.Sprintf("%020d%s", seq, segmentExt) }

// parseSegmentName returns the sequence number of a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segmentExt)
	if !ok || len(s) != 20 {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil && seq > 0
}

func newSegment(dir string, seq uint64, f File, size int64) *segment {
	return &segment{seq: seq, path: filepath.Join(dir, segmentName(seq)), f: f, size: size, zeroed: size, settled: map[*segment]int{}}
}

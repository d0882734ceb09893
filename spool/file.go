package spool

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FsyncMode says when the file store syncs its log.
type FsyncMode uint8

const (
	// FsyncAlways syncs every commit before Append and the state methods
	// return: nothing acknowledged is lost on a crash.
	FsyncAlways FsyncMode = iota
	// FsyncInterval writes every commit at once but syncs on a ticker
	// every FileOptions.Interval: a crash of the machine (not only of the
	// process) loses what was acknowledged in the last Interval plus the
	// time the sync takes.
	FsyncInterval
)

// FileOptions configures OpenFile. The zero value is usable.
type FileOptions struct {
	// MaxBytes bounds the encoded size of all unsettled messages; 0 means
	// no bound. It is not a bound on disk use: a segment stays on disk
	// until every message in it is settled.
	MaxBytes int64
	// MaxMessages bounds the number of unsettled messages; 0 means no bound.
	MaxMessages int64
	// Routes holds per-route bounds, checked as well as the store's.
	Routes map[string]Limits
	// SegmentSize is the size in bytes at which a new segment file is
	// started; 0 means 64 MiB, and more than 1 GiB means 1 GiB. A single
	// record larger than it gets a segment of its own.
	SegmentSize int64
	// Fsync is the sync mode; the zero value is FsyncAlways.
	Fsync FsyncMode
	// Interval is the sync period of FsyncInterval; 0 means 50ms.
	Interval time.Duration
	// ReopenDelay is how long after a failed write or fsync the store
	// tries to reopen itself, doubling with each reopen up to 30s until a
	// write succeeds; 0 means 1s, and a negative value means never: the
	// store refuses writes until it is closed and opened again.
	ReopenDelay time.Duration
	// FS performs file operations; nil means OSFS. The directory lock is
	// always taken on the real file system.
	FS FS
	// Now returns the current time, used for message IDs and Arrived; nil
	// means time.Now.
	Now func() time.Time
	// Logger receives recovery and failure reports; nil discards them.
	Logger *slog.Logger
	// OnFsync, when set, is told how long each successful data fsync
	// took, from the writer goroutine: it must not block.
	OnFsync func(time.Duration)
	// ZeroAhead, when positive, is how many bytes of zeros the writer
	// keeps written past the records of the segment it writes to: a batch
	// then overwrites zeros the disk already holds, the file's size does
	// not change, and its fdatasync has the data alone to write. The file
	// grows by ZeroAhead bytes at a time, each byte is written twice, and
	// recovery takes a tail of zeros for the end of a segment
	// (docs/spool.md, "How the writer waits for the disk"). 0: the
	// segments are appended to.
	ZeroAhead int64

	// noAIO makes the store sync with fsync(2) alone (tests).
	noAIO bool
}

// Limits bounds one route's unsettled messages; a zero field means no bound.
type Limits struct {
	MaxMessages int64
	MaxBytes    int64
	// DedupeWindow de-duplicates the route's AppendOnce calls by
	// idempotency key within this window (see dedupe.go); 0 means off.
	DedupeWindow time.Duration
	// AppendWait bounds how long an Append of the route waits for the
	// disk to confirm its message, counted from when it is queued for
	// the writer; 0 means for as long as the disk takes (or the
	// context allows). The sidecar gives it the route's timeout.
	AppendWait time.Duration
}

// ErrLocked is returned by OpenFile when another FileStore, in this or
// another process, holds the directory.
var ErrLocked = errors.New("spool: directory is locked by another store")

const (
	lockName       = "LOCK"
	maxKeptBuffer  = 4 << 20 // the writer keeps a batch buffer up to this size
	maxSegmentSize = 1 << 30
)

// FileStore is the file-backed Store: segmented append-only log files in one
// directory, written by a single goroutine that group-commits concurrent
// writes. See the package documentation for the format.
type FileStore struct {
	dir  string
	opts FileOptions
	fs   FS
	now  func() time.Time
	log  *slog.Logger
	lock *os.File

	appends, syncs, writeErrs, syncErrs, reopens atomic.Int64

	// closing is set by the first Shutdown; closeErr is the writer's
	// closing of the files, read once s.done is closed.
	closing  atomic.Bool
	closeErr error

	mu         sync.Mutex
	segs       []*segment // in sequence order; the last is written to
	slab       slab       // unsettled messages in key order
	lastKey    uint64     // the largest key given to a message
	otherIDs   map[string]uint64
	otherByKey map[uint64]string
	farArrived map[uint64]int64  // Arrived of slots with flagFarArrived
	reasons    map[uint64]string // dead-letter reasons
	routeList  []*routeIndex     // indexed by slot.route
	routeIdx   map[string]uint16
	inflight   map[string]bool // caller-given IDs of queued Appends
	count      int64           // unsettled messages
	bytes      int64           // their encoded size
	resMsgs    int64           // reserved by queued Appends
	resBytes   int64
	corrupt    int64
	torn       bool
	closed     bool // set by Shutdown, under s.mu
	failed     bool
	recovering bool

	qmu   sync.Mutex
	queue []*request
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	dirty bool   // written but not synced (FsyncInterval); writer only
	wbuf  []byte // writer only
	zeros []byte // ZeroAhead bytes of zeros, made on first use; writer only
	// aio syncs segments without holding the writer's P; nil: fsync(2).
	// Writer only.
	aio *aioSyncer
	// poker is aio while the writer uses it, for Appends to poke.
	poker atomic.Pointer[aioSyncer]
}

var (
	_ Store   = (*FileStore)(nil)
	_ Deduper = (*FileStore)(nil)
)

// OpenFile opens or creates the store in dir, recovering its log. dir is
// created with mode 0700 if missing; an existing directory with group or
// other permissions is changed to 0700 (logged), and refused if that fails.
// Segment files are created 0600.
func OpenFile(dir string, opts FileOptions) (*FileStore, error) {
	s := &FileStore{
		dir:      dir,
		opts:     opts,
		fs:       opts.FS,
		now:      opts.Now,
		log:      opts.Logger,
		inflight: map[string]bool{},
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.fs == nil {
		s.fs = OSFS{}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.resetIndexLocked()
	if s.opts.SegmentSize <= 0 {
		s.opts.SegmentSize = 64 << 20
	}
	s.opts.SegmentSize = min(s.opts.SegmentSize, maxSegmentSize)
	if s.opts.Interval <= 0 {
		s.opts.Interval = 50 * time.Millisecond
	}
	if s.opts.ReopenDelay == 0 {
		s.opts.ReopenDelay = time.Second
	}
	if err := s.prepareDir(); err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.recover(); err != nil {
		s.closeFiles()
		return nil, err
	}
	if _, ok := s.fs.(OSFS); ok && !s.opts.noAIO {
		s.aio = getAIOSyncer()
		if s.aio != nil {
			s.poker.Store(s.aio)
		}
	}
	go s.run()
	return s, nil
}

// resetIndexLocked empties the index, before recovery fills it.
func (s *FileStore) resetIndexLocked() {
	s.segs = nil
	s.slab = slab{}
	s.lastKey = 0
	s.otherIDs = map[string]uint64{}
	s.otherByKey = map[uint64]string{}
	s.farArrived = map[uint64]int64{}
	s.reasons = map[uint64]string{}
	s.routeList = nil
	s.routeIdx = map[string]uint16{}
	s.count, s.bytes, s.resMsgs, s.resBytes = 0, 0, 0, 0
	s.corrupt, s.torn = 0, false
}

func (s *FileStore) prepareDir() error {
	if err := s.fs.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("spool: create dir: %w", err)
	}
	fi, err := s.fs.Stat(s.dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("spool: %s is not a directory", s.dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := s.fs.Chmod(s.dir, 0o700); err != nil {
			return fmt.Errorf("spool: dir %s has mode %o and cannot be made 0700: %w", s.dir, perm, err)
		}
		s.log.Warn("spool: directory was too open; changed to 0700", "dir", s.dir, "mode", fmt.Sprintf("%o", perm))
	}
	return nil
}

func lockDir(dir string) (*os.File, error) {
	name := filepath.Join(dir, lockName)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: lock: %w", err)
	}
	// O_CREATE's mode applies only to a new file: a LOCK left by another
	// tool or an older version is made private too, like the segments.
	if fi, err := f.Stat(); err != nil || fi.Mode().Perm()&0o077 != 0 {
		if err == nil {
			err = f.Chmod(0o600)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("spool: lock %s: %w", name, err)
		}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s (is another sidecar using this spool dir?)", ErrLocked, name)
		}
		return nil, fmt.Errorf("spool: lock %s: %w", name, err)
	}
	return f, nil
}

// syncDir fsyncs the directory, making file creation and removal durable.
func (s *FileStore) syncDir() error {
	d, err := s.fs.OpenFile(s.dir, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.syncErrs.Add(1)
	}
	return err
}

// newIDLocked returns a time-ordered unique ID and its key: 16 hex digits
// of Unix nanoseconds, strictly increasing within the store, and 8 random
// ones.
func (s *FileStore) newIDLocked() (string, uint64) {
	key := max(uint64(max(s.now().UnixNano(), 1)), s.lastKey+1)
	s.lastKey = key
	lo := rand.Uint32()
	return formatID(key, lo), key
}

// Append implements Store. It sets m.ID if empty and m.Arrived to Now if
// zero. It returns ErrTooLarge for a message whose body or any string
// exceeds 64 MiB. Once the message is queued for the writer, Append waits
// for the commit until ctx ends or the route's Limits.AppendWait passes:
// then it returns an error wrapping ErrUnconfirmed (and ctx's cause), and
// the writer still commits the message (a disk that stalls holds no
// caller past its route's bound; docs/spool.md, "A disk that stalls").
func (s *FileStore) Append(ctx context.Context, m *Message) error {
	return s.append(ctx, m, false)
}

// AppendOnce implements Deduper: Append, de-duplicated by m's route and
// idempotency key (see dedupe.go).
func (s *FileStore) AppendOnce(ctx context.Context, m *Message) error {
	return s.append(ctx, m, true)
}

func (s *FileStore) append(ctx context.Context, m *Message, dedupe bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if tooLarge(m) {
		return ErrTooLarge
	}
	if m.Arrived.IsZero() {
		m.Arrived = s.now()
	}
	given := m.ID != ""
	if !given {
		m.ID = idPlaceholder
	}
	// The record is encoded before taking s.mu; a generated ID is patched
	// in under it, so that keys increase in the order the writer takes the
	// queue.
	mr := getAppendRequest(messageSize(m))
	buf := appendFramedMessage(mr.frame[:0], m)
	size := int64(len(buf))
	s.mu.Lock()
	var de *dedupeEntry
	if dedupe {
		var err error
		if de, err = s.dedupeLocked(ctx, m); err != nil {
			s.mu.Unlock()
			if !given && err != ErrDuplicate {
				m.ID = ""
			}
			mr.frame = buf
			putAppendRequest(mr)
			return err
		}
	}
	key, wait, err := s.reserveLocked(m, given, size)
	if err != nil {
		if de != nil {
			s.endDedupeLocked(de, m, nil)
		}
		s.mu.Unlock()
		if !given {
			m.ID = ""
		}
		mr.frame = buf
		putAppendRequest(mr)
		return err
	}
	var dedupeKey string // the index's copy keeps it for the commit
	if de != nil {
		de.id, dedupeKey = m.ID, m.IdempotencyKey
	}
	if !given {
		patchID(buf, m.ID) // the writer sets the checksum, outside s.mu
	}
	mr.msg = Message{ID: m.ID, Route: m.Route, Arrived: m.Arrived, Attempts: m.Attempts, IdempotencyKey: dedupeKey}
	mr.rec = record{typ: recMessage, id: m.ID, msg: &mr.msg}
	mr.request = request{rec: &mr.rec, key: key, buf: buf, patched: !given, done: mr.done, dedupe: de}
	s.enqueue(&mr.request)
	s.mu.Unlock()
	if a := s.poker.Load(); a != nil {
		a.poke()
	}
	var expired <-chan time.Time
	if wait > 0 {
		t := getTimer(wait)
		defer putTimer(t)
		expired = t.C
	}
	var cause error
	select {
	case err = <-mr.done:
	case <-ctx.Done():
		cause = context.Cause(ctx)
	case <-expired:
		cause = fmt.Errorf("not confirmed within the route's %v", wait)
	}
	if cause != nil {
		select {
		case err = <-mr.done: // committed meanwhile
		default:
			// The writer holds mr until it has committed it, and then
			// sends on mr.done, which has room: mr is left to it and the
			// garbage collector, not pooled.
			return fmt.Errorf("%w: %w", ErrUnconfirmed, cause)
		}
	}
	mr.frame = buf
	putAppendRequest(mr)
	return err
}

// timers recycles the timers of Appends that bound their wait.
var timers sync.Pool

// getTimer returns a running timer that fires after d.
func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

// putTimer stops t and keeps it for the next getTimer: a stopped timer's
// channel delivers nothing stale (Go 1.23 and later).
func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// appendRequest is a message Append's request to the writer with the
// record, the index's copy of the message and the framed record it
// carries. The writer is done with all of them once it sent on done, so
// they are pooled: a message costs no allocation of its own here.
type appendRequest struct {
	request
	rec   record
	msg   Message
	done  chan error
	frame []byte
}

// maxPooledFrame is the largest framed record whose buffer is kept.
const maxPooledFrame = 64 << 10

var appendRequests = sync.Pool{New: func() any {
	return &appendRequest{done: make(chan error, 1)}
}}

// getAppendRequest returns a pooled request whose frame has room for a
// record of about size bytes.
func getAppendRequest(size int) *appendRequest {
	mr := appendRequests.Get().(*appendRequest)
	if need := headerSize + size; cap(mr.frame) < need {
		mr.frame = make([]byte, 0, need)
	}
	return mr
}

func putAppendRequest(mr *appendRequest) {
	mr.request, mr.rec, mr.msg = request{}, record{}, Message{}
	if cap(mr.frame) > maxPooledFrame {
		mr.frame = nil
	}
	appendRequests.Put(mr)
}

// reserveLocked checks that m can be appended, fixes its ID and key, and
// reserves its room. It returns the key and the route's AppendWait.
func (s *FileStore) reserveLocked(m *Message, given bool, size int64) (uint64, time.Duration, error) {
	if err := s.writableLocked(); err != nil {
		return 0, 0, err
	}
	if given && (s.lookupLocked(m.ID) != nil || s.inflight[m.ID]) {
		return 0, 0, fmt.Errorf("%w: %s", ErrExists, m.ID)
	}
	_, ri, err := s.routeLocked(m.Route)
	if err != nil {
		return 0, 0, err
	}
	if full(s.opts.MaxMessages, s.opts.MaxBytes, s.count+s.resMsgs, s.bytes+s.resBytes, size) ||
		full(ri.limits.MaxMessages, ri.limits.MaxBytes, ri.pending+ri.dead+ri.resMsgs, ri.bytes+ri.resBytes, size) {
		return 0, 0, ErrFull
	}
	var key uint64
	if given {
		key, _, _ = s.assignKeyLocked(m.ID)
		s.inflight[m.ID] = true
	} else {
		m.ID, key = s.newIDLocked()
	}
	s.resMsgs++
	s.resBytes += size
	ri.resMsgs++
	ri.resBytes += size
	return key, ri.limits.AppendWait, nil
}

// full reports whether one more message of size would pass a bound.
func full(maxMsgs, maxBytes, msgs, bytes, size int64) bool {
	return (maxMsgs > 0 && msgs+1 > maxMsgs) || (maxBytes > 0 && bytes+size > maxBytes)
}

// tooLarge reports whether m has a field the decoder would refuse.
func tooLarge(m *Message) bool {
	n := len(m.Body)
	for _, f := range []string{m.ID, m.Route, m.Method, m.Target, m.IdempotencyKey, m.TraceParent} {
		if len(f) > maxField {
			return true
		}
		n += len(f)
	}
	for k, vs := range m.Header {
		if len(k) > maxField {
			return true
		}
		n += len(k)
		for _, v := range vs {
			if len(v) > maxField {
				return true
			}
			n += len(v)
		}
	}
	return len(m.Body) > maxField || n > maxPayload/2
}

func (s *FileStore) writableLocked() error {
	if s.closed {
		return ErrClosed
	}
	if s.failed {
		return ErrFailed
	}
	return nil
}

// Next implements Store. It reads the body from disk; if the message's
// record was damaged on disk since it was recovered or written, Next
// returns a *DamagedError naming it and leaves it unleased, so the caller
// can DeadLetter or Delete it.
func (s *FileStore) Next(route string, now time.Time) (*Message, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, ErrClosed
	}
	r, ok := s.routeIdx[route]
	if !ok {
		return nil, false, nil
	}
	sl := s.nextLocked(r, s.routeList[r], now.UnixNano())
	if sl == nil {
		return nil, false, nil
	}
	m, err := s.readLocked(sl)
	if err != nil {
		return nil, false, err
	}
	sl.flags |= flagLeased
	return m, true, nil
}

// NextDue returns when the earliest retried message of route that is
// waiting for its next attempt becomes due; ok is false if none is
// waiting. A deliverer that found nothing due sleeps until then.
func (s *FileStore) NextDue(route string) (at time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, found := s.routeIdx[route]
	if !found {
		return time.Time{}, false
	}
	ri := s.routeList[r]
	for len(ri.timed) > 0 {
		e := ri.timed[0]
		if sl := s.slab.find(e.key); sl != nil && sl.next == e.next && sl.flags&(flagDead|flagLeased) == 0 {
			return nanosToTime(e.next), true
		}
		heap.Pop(&ri.timed)
	}
	return time.Time{}, false
}

// Get implements Store.
func (s *FileStore) Get(id string) (*Message, Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, Info{}, ErrClosed
	}
	sl := s.lookupLocked(id)
	if sl == nil {
		return nil, Info{}, ErrNotFound
	}
	m, err := s.readLocked(sl)
	if err != nil {
		return nil, Info{}, err
	}
	return m, s.info(sl), nil
}

// List implements Store. A limit of 0 or less means no limit.
func (s *FileStore) List(route string, state State, after string, limit int) ([]Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	match := s.matcher(route, state)
	if match == nil {
		return nil, nil
	}
	// Generated IDs sort as their keys do: scan from after's key and stop
	// at limit. IDs kept as strings are few; they are merged in.
	var out []Info
	start := 0
	if key, _, ok := parseID(after); ok {
		start = s.slab.search(key)
	}
	for p := start; p < s.slab.len() && (limit <= 0 || len(out) < limit); p++ {
		sl := s.slab.at(p)
		if sl.flags&flagOtherID == 0 && match(sl) {
			if info := s.info(sl); info.ID > after {
				out = append(out, info)
			}
		}
	}
	for id, key := range s.otherIDs {
		if sl := s.slab.find(key); id > after && sl != nil && match(sl) {
			out = append(out, s.info(sl))
		}
	}
	slices.SortFunc(out, func(a, b Info) int { return cmp.Compare(a.ID, b.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// matcher returns a test for live slots of route ("" for all) in state,
// or nil if the route has none.
func (s *FileStore) matcher(route string, state State) func(*slot) bool {
	want := uint8(0)
	if state == Dead {
		want = flagDead
	}
	if route == "" {
		return func(sl *slot) bool { return sl.flags&(flagSettled|flagDead) == want }
	}
	r, ok := s.routeIdx[route]
	if !ok {
		return nil
	}
	return func(sl *slot) bool { return sl.route == r && sl.flags&(flagSettled|flagDead) == want }
}

// change queues a state record for id after check accepts its slot, and
// waits for it to be committed.
func (s *FileStore) change(id string, check func(*slot) error, rec *record) error {
	s.mu.Lock()
	if err := s.writableLocked(); err != nil {
		s.orphanLocked(id)
		s.mu.Unlock()
		return err
	}
	sl := s.lookupLocked(id)
	if sl == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	if check != nil {
		if err := check(sl); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	rec.id = id
	req := &request{rec: rec, buf: encodeRecord(rec), done: make(chan error, 1)}
	s.enqueue(req)
	s.mu.Unlock()
	err := <-req.done
	if err != nil {
		s.mu.Lock()
		s.orphanLocked(id)
		s.mu.Unlock()
	}
	return err
}

// orphanLocked marks a leased message whose state change failed: its
// holder gave up on it, so a reopen releases it instead of keeping it
// leased.
func (s *FileStore) orphanLocked(id string) {
	if sl := s.lookupLocked(id); sl != nil && sl.flags&flagLeased != 0 {
		sl.flags |= flagOrphan
	}
}

func wantState(st State) func(*slot) error {
	return func(sl *slot) error {
		have := Pending
		if sl.flags&flagDead != 0 {
			have = Dead
		}
		if have != st {
			return fmt.Errorf("%w: message is %v, want %v", ErrState, have, st)
		}
		return nil
	}
}

// Ack implements Store.
func (s *FileStore) Ack(id string) error {
	return s.change(id, nil, &record{typ: recAck})
}

// RetryLater implements Store; the message must be pending.
func (s *FileStore) RetryLater(id string, at time.Time, attempts int) error {
	return s.change(id, wantState(Pending), &record{typ: recRetry, at: at, attempts: max(attempts, 0)})
}

// DeadLetter implements Store; the message must be pending. The current
// attempt count is kept.
func (s *FileStore) DeadLetter(id string, reason string) error {
	rec := &record{typ: recDead, reason: reason}
	return s.change(id, func(sl *slot) error {
		if err := wantState(Pending)(sl); err != nil {
			return err
		}
		rec.attempts = int(sl.attempts)
		return nil
	}, rec)
}

// Replay implements Store; the message must be dead.
func (s *FileStore) Replay(id string) error {
	return s.change(id, wantState(Dead), &record{typ: recReplay})
}

// Delete implements Store.
func (s *FileStore) Delete(id string) error {
	return s.change(id, nil, &record{typ: recDelete})
}

// Purge implements Store. The deletions are committed together.
func (s *FileStore) Purge(route string, state State) (int, error) {
	s.mu.Lock()
	if err := s.writableLocked(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	var reqs []*request
	if match := s.matcher(route, state); match != nil {
		for p := range s.slab.len() {
			if sl := s.slab.at(p); match(sl) {
				rec := &record{typ: recDelete, id: s.idOf(sl)}
				reqs = append(reqs, &request{rec: rec, buf: encodeRecord(rec), done: make(chan error, 1)})
			}
		}
	}
	for _, r := range reqs {
		s.enqueue(r)
	}
	s.mu.Unlock()
	var err error
	for _, r := range reqs {
		if e := <-r.done; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return 0, err
	}
	return len(reqs), nil
}

// Stats implements Store.
func (s *FileStore) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Routes:         make(map[string]RouteStats),
		Segments:       len(s.segs),
		Appends:        s.appends.Load(),
		Syncs:          s.syncs.Load(),
		WriteErrors:    s.writeErrs.Load(),
		FsyncErrors:    s.syncErrs.Load(),
		Reopens:        s.reopens.Load(),
		CorruptRecords: s.corrupt,
		TornTail:       s.torn,
		Failed:         s.failed,
	}
	for r, ri := range s.routeList {
		if ri.pending == 0 && ri.dead == 0 {
			continue
		}
		rs := RouteStats{Pending: ri.pending, Dead: ri.dead, Bytes: ri.bytes,
			Oldest: nanosToTime(s.oldestLocked(uint16(r), ri))}
		st.Routes[ri.name] = rs
		st.Total.Pending += rs.Pending
		st.Total.Dead += rs.Dead
		st.Total.Bytes += rs.Bytes
		if !rs.Oldest.IsZero() && (st.Total.Oldest.IsZero() || rs.Oldest.Before(st.Total.Oldest)) {
			st.Total.Oldest = rs.Oldest
		}
	}
	return st
}

// Close implements Store: it commits what is queued, syncs, stops the
// writer and closes the files, for as long as the disk takes. It is
// Shutdown without a bound.
func (s *FileStore) Close() error {
	return s.Shutdown(context.Background())
}

// Shutdown closes the store as Close does, waiting for the disk at most
// until ctx ends. A disk that stalls (a write or fsync that does not
// return) holds the writer in the kernel, where nothing in the process
// can end it: Shutdown then returns a *StalledError and leaves the
// writer to finish when the disk answers; the writer then closes the
// files and releases the directory's lock. Until then OpenFile on the
// directory returns ErrLocked; once the process has exited, the next
// OpenFile recovers the log, as after a crash. Later calls return
// ErrClosed.
//
// Giving up loses nothing acknowledged: an Append returned nil only once
// its record was written (with FsyncAlways, fsynced) and a state change
// only once it was committed; Shutdown neither truncates nor removes a
// file. The records the writer still holds come after every acknowledged
// one in the log, so a record that the process's exit leaves half
// written is the log's torn tail, which recovery cuts, and it holds
// nothing that was acknowledged (docs/spool.md, "A disk that stalls").
func (s *FileStore) Shutdown(ctx context.Context) error {
	if !s.closing.CompareAndSwap(false, true) {
		return ErrClosed
	}
	start := time.Now()
	// s.mu may be held by a call reading the stalled disk (Next, Get):
	// the store is marked closed and the writer stopped by a goroutine
	// that waits for it, so that Shutdown does not. The writer closes
	// s.done once it has stopped, which this goroutine precedes.
	go func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
	}()
	select {
	case <-s.done:
		return s.closeErr
	case <-ctx.Done():
	}
	select {
	case <-s.done: // both were ready
		return s.closeErr
	default:
	}
	e := &StalledError{Dir: s.dir, Waited: time.Since(start), Unconfirmed: -1, Err: context.Cause(ctx)}
	if s.mu.TryLock() {
		e.Unconfirmed = s.resMsgs
		s.mu.Unlock()
	}
	return e
}

// StalledError is returned by FileStore.Shutdown when the disk did not
// finish the store's writes in time: a write or an fsync (or a read that
// holds the store) had not returned.
type StalledError struct {
	// Dir is the store's directory.
	Dir string
	// Waited is how long Shutdown waited for the disk.
	Waited time.Duration
	// Unconfirmed counts the messages whose Append had not been
	// confirmed: their Appends returned ErrUnconfirmed, or still wait.
	// They may still be stored. -1 means unknown: the store's lock was
	// held at that moment, as a read of the stalled disk holds it.
	Unconfirmed int64
	// Err is the cause of the context's end.
	Err error
}

// Error implements error.
func (e *StalledError) Error() string {
	n := "an unknown number of"
	if e.Unconfirmed >= 0 {
		n = strconv.FormatInt(e.Unconfirmed, 10)
	}
	return fmt.Sprintf("spool: the disk under %s did not finish writing within %v; %s messages were not confirmed (they may still be stored)",
		e.Dir, e.Waited.Round(time.Millisecond), n)
}

// Unwrap returns the context's cause.
func (e *StalledError) Unwrap() error { return e.Err }

// closeFiles closes the segments and releases the directory's lock.
func (s *FileStore) closeFiles() error {
	var err error
	for _, seg := range s.segs {
		if cerr := seg.f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if s.lock != nil {
		if cerr := s.lock.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// SetRouteLimits replaces FileOptions.Routes, the per-route bounds, on an
// open store: a reload applies async.max_messages, async.max_bytes and
// async.dedupe_window this way. Messages already stored over a new bound
// stay; Appends are refused until the route is back under it. A route's
// idempotency keys survive a window turned off and on again (see
// dedupe.go).
func (s *FileStore) SetRouteLimits(routes map[string]Limits) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Routes = maps.Clone(routes)
	for _, ri := range s.routeList {
		prev := ri.limits.DedupeWindow
		ri.limits = routes[ri.name]
		s.windowChangedLocked(ri, prev)
	}
}

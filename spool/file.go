package spool

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
	// SegmentSize is the size in bytes at which a new segment file is
	// started; 0 means 64 MiB. A single record larger than it gets a
	// segment of its own.
	SegmentSize int64
	// Fsync is the sync mode; the zero value is FsyncAlways.
	Fsync FsyncMode
	// Interval is the sync period of FsyncInterval; 0 means 50ms.
	Interval time.Duration
	// FS performs file operations; nil means OSFS. The directory lock is
	// always taken on the real file system.
	FS FS
	// Now returns the current time, used for message IDs and Arrived; nil
	// means time.Now.
	Now func() time.Time
	// Logger receives recovery and failure reports; nil discards them.
	Logger *slog.Logger
}

// ErrLocked is returned by OpenFile when another FileStore, in this or
// another process, holds the directory.
var ErrLocked = errors.New("spool: directory is locked by another store")

const (
	lockName      = "LOCK"
	maxKeptBuffer = 4 << 20 // the writer keeps a batch buffer up to this size
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

	lastID atomic.Int64

	appends, syncs, writeErrs, syncErrs atomic.Int64

	mu       sync.Mutex
	segs     []*segment // in sequence order; the last is written to
	byID     map[string]*entry
	routes   map[string]*routeIndex
	inflight map[string]bool // IDs of queued Appends
	seq      uint64          // log order of message records
	count    int64           // unsettled messages
	bytes    int64           // their encoded size
	resMsgs  int64           // reserved by queued Appends
	resBytes int64
	corrupt  int64
	torn     bool
	closed   bool
	failed   bool

	qmu   sync.Mutex
	queue []*request
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	dirty bool   // written but not synced (FsyncInterval); writer only
	wbuf  []byte // writer only
}

var _ Store = (*FileStore)(nil)

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
		byID:     map[string]*entry{},
		routes:   map[string]*routeIndex{},
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
	if s.opts.SegmentSize <= 0 {
		s.opts.SegmentSize = 64 << 20
	}
	if s.opts.Interval <= 0 {
		s.opts.Interval = 50 * time.Millisecond
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
	go s.run()
	return s, nil
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

// newID returns a time-ordered unique ID: 16 hex digits of Unix
// nanoseconds, strictly increasing within the store, and 8 random ones.
func (s *FileStore) newID() string {
	n := s.now().UnixNano()
	for {
		last := s.lastID.Load()
		if n <= last {
			n = last + 1
		}
		if s.lastID.CompareAndSwap(last, n) {
			break
		}
	}
	var b [12]byte
	for i := range 8 {
		b[i] = byte(uint64(n) >> (56 - 8*i))
	}
	_, _ = rand.Read(b[8:])
	return hex.EncodeToString(b[:])
}

// Append implements Store. It sets m.ID if empty and m.Arrived to Now if
// zero. It returns ErrTooLarge for a message whose body or any string
// exceeds 64 MiB. The context is honoured until the message is queued for
// the writer; after that Append waits for the commit, so that its result
// always tells whether the message is stored.
func (s *FileStore) Append(ctx context.Context, m *Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if tooLarge(m) {
		return ErrTooLarge
	}
	if m.ID == "" {
		m.ID = s.newID()
	}
	if m.Arrived.IsZero() {
		m.Arrived = s.now()
	}
	rec := &record{typ: recMessage, id: m.ID, msg: &Message{ID: m.ID, Route: m.Route, Arrived: m.Arrived, Attempts: m.Attempts}}
	buf := appendRecord(nil, recMessage, encodeMessage(m))
	size := int64(len(buf))
	req := &request{rec: rec, buf: buf, done: make(chan error, 1)}

	s.mu.Lock()
	if err := s.writableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.byID[m.ID] != nil || s.inflight[m.ID] {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrExists, m.ID)
	}
	if (s.opts.MaxMessages > 0 && s.count+s.resMsgs+1 > s.opts.MaxMessages) ||
		(s.opts.MaxBytes > 0 && s.bytes+s.resBytes+size > s.opts.MaxBytes) {
		s.mu.Unlock()
		return ErrFull
	}
	s.resMsgs++
	s.resBytes += size
	s.inflight[m.ID] = true
	s.enqueue(req)
	s.mu.Unlock()
	return <-req.done
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
	ri := s.routes[route]
	if ri == nil {
		return nil, false, nil
	}
	t := now.UnixNano()
	for _, e := range ri.pending {
		if e.leased || e.next > t {
			continue
		}
		m, err := s.readLocked(e)
		if err != nil {
			return nil, false, err
		}
		e.leased = true
		return m, true, nil
	}
	return nil, false, nil
}

// Get implements Store.
func (s *FileStore) Get(id string) (*Message, Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, Info{}, ErrClosed
	}
	e := s.byID[id]
	if e == nil {
		return nil, Info{}, ErrNotFound
	}
	m, err := s.readLocked(e)
	if err != nil {
		return nil, Info{}, err
	}
	return m, e.info(), nil
}

// List implements Store. A limit of 0 or less means no limit.
func (s *FileStore) List(route string, state State, after string, limit int) ([]Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	var out []Info
	for _, e := range s.byID {
		if (route == "" || e.route == route) && e.state == state && e.id > after {
			out = append(out, e.info())
		}
	}
	slices.SortFunc(out, func(a, b Info) int { return cmp.Compare(a.ID, b.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// change queues a state record for id after check accepts its entry, and
// waits for it to be committed.
func (s *FileStore) change(id string, check func(*entry) error, rec *record) error {
	s.mu.Lock()
	if err := s.writableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	e := s.byID[id]
	if e == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	if check != nil {
		if err := check(e); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	rec.id = id
	req := &request{rec: rec, buf: encodeRecord(rec), done: make(chan error, 1)}
	s.enqueue(req)
	s.mu.Unlock()
	return <-req.done
}

func wantState(st State) func(*entry) error {
	return func(e *entry) error {
		if e.state != st {
			return fmt.Errorf("%w: %s is %v, want %v", ErrState, e.id, e.state, st)
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
	return s.change(id, func(e *entry) error {
		if err := wantState(Pending)(e); err != nil {
			return err
		}
		rec.attempts = e.attempts
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
	for _, e := range s.byID {
		if (route == "" || e.route == route) && e.state == state {
			rec := &record{typ: recDelete, id: e.id}
			reqs = append(reqs, &request{rec: rec, buf: encodeRecord(rec), done: make(chan error, 1)})
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
		Routes:         make(map[string]RouteStats, len(s.routes)),
		Segments:       len(s.segs),
		Appends:        s.appends.Load(),
		Syncs:          s.syncs.Load(),
		WriteErrors:    s.writeErrs.Load(),
		FsyncErrors:    s.syncErrs.Load(),
		CorruptRecords: s.corrupt,
		TornTail:       s.torn,
		Failed:         s.failed,
	}
	for name, ri := range s.routes {
		rs := RouteStats{Pending: int64(len(ri.pending)), Dead: ri.dead, Bytes: ri.bytes}
		if len(ri.pending) > 0 {
			rs.Oldest = nanosToTime(ri.pending[0].arrived)
		}
		st.Routes[name] = rs
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
// writer and closes the files.
func (s *FileStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	return s.closeFiles()
}

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

// Package watch tells when the configuration file has changed, for live
// reload (see docs/operations.md, Signals).
//
// It watches the file's directory, not the file. A watch on the file
// itself follows an inode, and the common ways of changing a config file
// replace the inode rather than write to it:
//
//   - an editor saving by rename writes f.tmp and renames it over f; vim
//     renames f to f~, writes a new f and removes f~. A watch on the old
//     inode hears nothing after the first save.
//   - a Kubernetes ConfigMap volume holds sidecar.yaml -> ..data/sidecar.yaml
//     and ..data -> ..2026_12_05_10_00_00.123 (a timestamped directory). An
//     update writes a new timestamped directory, points a new symlink
//     ..data_tmp at it, renames ..data_tmp over ..data and removes the old
//     directory. The events name ..data, never sidecar.yaml.
//
// So an event in the directory counts when it names the file (or the
// file a symlink at path resolves to), or when path resolves, after the
// event, to another file than before. When path is a symlink to a file in
// another directory, that directory is watched too, and which one it is
// is worked out again after every event.
//
// Events come in bursts (an editor writes in several steps; a ConfigMap
// update is five operations), so a notification waits until the events
// have been quiet for the debounce, but never longer than ten debounces
// after the first event of a burst, so that a file rewritten without pause
// is still reloaded. At the end of a burst the file is read: if its bytes
// hash the same as at the last look (a touch, a chmod, a save without
// edits), nothing is reported. If it cannot be read (removed, half way
// through a swap), that is reported, and the reloader says why.
//
// When a directory the watch needs (the file's, or its symlink target's)
// is removed or renamed away, that is logged at warn, and its watch is
// added again every second until it is back; a symlink at path that
// leads nowhere is likewise resolved again every second. An error from the
// notifier (its queue overflowed: events were lost) is logged at warn and
// reported, since anything may have changed.
package watch

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is a quiet time that outlasts the steps of an editor's
// save and of a ConfigMap update, and is short next to a person's wait.
const DefaultDebounce = 200 * time.Millisecond

// maxWaitFactor bounds a burst: it is reported at most maxWaitFactor
// debounces after its first event, quiet or not.
const maxWaitFactor = 10

// retryInterval is the pause between two attempts to watch a directory
// that is gone, and between two looks at a symlink that leads nowhere.
const retryInterval = time.Second

// A Watcher reports changes of one file on C. Create it with New, and
// Close it when done. In a loop that also waits for signals:
//
//	w, err := watch.New(path, watch.DefaultDebounce, logger)
//	if err != nil { ... }
//	defer w.Close()
//	for {
//		select {
//		case <-w.C():
//			reload() // reads the file now
//		case sig := <-signals:
//			...
//		}
//	}
type Watcher struct {
	path     string // absolute
	dir      string // filepath.Dir(path)
	base     string // filepath.Base(path)
	debounce time.Duration
	maxWait  time.Duration
	retry    time.Duration
	log      *slog.Logger
	fsw      *fsnotify.Watcher
	c        chan struct{}
	stop     chan struct{} // closed by Close
	done     chan struct{} // closed when run returns

	closeOnce sync.Once
	closeErr  error

	// Owned by the run goroutine once New has returned.
	watched  map[string]bool // directories added to fsw, by the name added
	failing  map[string]bool // directories wanted whose watch failed, warned once
	target   string          // where path resolved to at the last look that resolved
	linkDir  string          // target's directory when not path's own; "" otherwise
	dangling bool            // path is a symlink that resolved to nothing at the last look
	sum      [sha256.Size]byte
	known    bool // sum holds the hash of the file's bytes at the last look
}

// New starts watching the file at path. It fails when path's directory
// cannot be watched; the file itself need not exist.
//
// A notification is a value on C. debounce is the quiet time that ends a
// burst of events; 0 means DefaultDebounce. logger may be nil.
//
// Create the Watcher before reading the file, so that no change falls
// between the read and the start of the watch: a change after New is
// reported.
func New(path string, debounce time.Duration, logger *slog.Logger) (*Watcher, error) {
	return newWatcher(path, debounce, retryInterval, logger)
}

func newWatcher(path string, debounce, retry time.Duration, logger *slog.Logger) (*Watcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w := &Watcher{
		path:     abs,
		dir:      filepath.Dir(abs),
		base:     filepath.Base(abs),
		debounce: debounce,
		maxWait:  maxWaitFactor * debounce,
		retry:    retry,
		log:      logger,
		fsw:      fsw,
		c:        make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		watched:  make(map[string]bool),
		failing:  make(map[string]bool),
	}
	if err := fsw.Add(w.dir); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("watch: directory %s: %w", w.dir, err)
	}
	w.watched[w.dir] = true
	w.sync() // a first look: what it finds is no change
	if sum, err := hashFile(w.path); err == nil {
		w.sum, w.known = sum, true
	}
	go w.run()
	return w, nil
}

// C returns the channel of notifications. It holds at most one: changes
// made before the receiver gets to it are one notification, and a
// receiver that reads the file after receiving sees all of them. It is
// never closed.
func (w *Watcher) C() <-chan struct{} { return w.c }

// Close stops the watch and waits for its goroutine to end. No
// notification comes after Close returns, though one sent before may still
// be on C. Close may be called more than once.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		close(w.stop)
		<-w.done
		w.closeErr = w.fsw.Close()
	})
	return w.closeErr
}

func (w *Watcher) run() {
	defer close(w.done)

	// Since Go 1.23 a stopped or reset timer delivers no stale tick, so a
	// timer can be reset without draining its channel.
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	var (
		quietC     <-chan time.Time // nil when no burst is under way
		burstStart time.Time
		force      bool // report at the end of the burst even if the bytes are the same
	)
	burst := func() {
		now := time.Now()
		if quietC == nil {
			quietC, burstStart = quiet.C, now
		}
		quiet.Reset(min(w.debounce, burstStart.Add(w.maxWait).Sub(now)))
	}

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var retryC <-chan time.Time // nil unless a directory or the target is missing
	armRetry := func() {
		if (len(w.failing) > 0 || w.dangling) && retryC == nil {
			retry.Reset(w.retry)
			retryC = retry.C
		}
	}
	armRetry()

	events, errs := w.fsw.Events, w.fsw.Errors
	for {
		select {
		case <-w.stop:
			return

		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if w.event(ev) {
				burst()
			}
			armRetry()

		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			w.log.Warn("watch: file notifications failed; reporting a change in case one was missed",
				"path", w.path, "error", err)
			w.sync()
			force = true
			burst()
			armRetry()

		case <-quietC:
			quietC = nil
			w.check(force)
			force = false

		case <-retryC:
			retryC = nil
			if w.sync() {
				burst()
			}
			armRetry()
		}
	}
}

// event takes in one event and reports whether it may have changed the
// file.
func (w *Watcher) event(ev fsnotify.Event) bool {
	name := filepath.Base(ev.Name)
	relevant := name == w.base || (w.target != "" && name == filepath.Base(w.target))
	if w.watched[ev.Name] && ev.Has(fsnotify.Remove|fsnotify.Rename) {
		// A watched directory went away; its watch has gone with it.
		// Removing it again is for backends that keep it.
		delete(w.watched, ev.Name)
		_ = w.fsw.Remove(ev.Name)
		relevant = true
	}
	if w.sync() {
		relevant = true
	}
	if relevant {
		w.log.Debug("watch: event", "path", w.path, "event", ev.String())
	}
	return relevant
}

// sync resolves path again, watches the directories that holds, stops
// watching those it no longer needs, and reports whether path resolved to
// another file than before or a watch was added (either can hide a change
// no event will tell).
func (w *Watcher) sync() bool {
	changed := false
	target, err := filepath.EvalSymlinks(w.path)
	switch {
	case err == nil:
		w.dangling = false
		if target != w.target {
			changed = true
			w.target = target
			w.linkDir = ""
			if d := filepath.Dir(target); !w.isOwnDir(d) {
				w.linkDir = d
			}
		}
	default:
		// Keep the last target's directory: a file removed there is
		// most likely written again there.
		fi, lerr := os.Lstat(w.path)
		w.dangling = lerr == nil && fi.Mode()&os.ModeSymlink != 0
	}

	want := map[string]bool{w.dir: true}
	if w.linkDir != "" {
		want[w.linkDir] = true
	}
	for d := range w.watched {
		if !want[d] {
			delete(w.watched, d)
			_ = w.fsw.Remove(d) // fails when the directory is gone, and its watch with it
		}
	}
	for d := range w.failing {
		if !want[d] {
			delete(w.failing, d)
		}
	}
	for d := range want {
		if w.watched[d] {
			continue
		}
		if err := w.fsw.Add(d); err != nil {
			if !w.failing[d] {
				w.failing[d] = true
				w.log.Warn("watch: cannot watch the config file's directory; trying again until it is back",
					"path", w.path, "dir", d, "retry_every", w.retry, "error", err)
			}
			continue
		}
		w.watched[d] = true
		changed = true
		if w.failing[d] {
			delete(w.failing, d)
			w.log.Info("watch: watching the config file's directory again", "path", w.path, "dir", d)
		}
	}
	return changed
}

// isOwnDir reports whether d, a resolved directory, is path's directory.
func (w *Watcher) isOwnDir(d string) bool {
	if d == w.dir {
		return true
	}
	own, err := filepath.EvalSymlinks(w.dir)
	return err == nil && own == d
}

// check ends a burst: it reads the file and notifies unless its bytes are
// those of the last look and force is false.
func (w *Watcher) check(force bool) {
	sum, err := hashFile(w.path)
	switch {
	case err != nil:
		w.known = false
		w.log.Debug("watch: config file changed and cannot be read", "path", w.path, "error", err)
	case !force && w.known && sum == w.sum:
		w.log.Debug("watch: config file touched, content unchanged", "path", w.path)
		return
	default:
		w.sum, w.known = sum, true
		w.log.Debug("watch: config file changed", "path", w.path)
	}
	select {
	case w.c <- struct{}{}:
	default: // one is pending already
	}
}

// hashFile returns the SHA-256 of the bytes of the regular file at path.
func hashFile(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	// Stat first: opening a FIFO would wait for a writer, and Close with it.
	fi, err := os.Stat(path)
	if err != nil {
		return sum, err
	}
	if !fi.Mode().IsRegular() {
		return sum, fmt.Errorf("%s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

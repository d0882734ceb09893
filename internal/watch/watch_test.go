package watch

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/goleak"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// testDebounce is short to keep the tests quick, and long next to the
// pause between two steps of one change made by a test.
const testDebounce = 100 * time.Millisecond

// waitFor bounds the wait for a notification that should come.
const waitFor = 5 * time.Second

// logBuf collects a Watcher's log lines for a test.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start watches path with the given debounce and a retry of 50ms, and
// closes the Watcher when the test ends; the log is shown if the test
// failed.
func start(t *testing.T, path string, debounce time.Duration) (*Watcher, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := newWatcher(path, debounce, 50*time.Millisecond, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("watcher log:\n%s", logs)
		}
	})
	return w, logs
}

// wantChange waits for a notification.
func wantChange(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case <-w.C():
	case <-time.After(waitFor):
		t.Fatalf("%s: no notification after %v", what, waitFor)
	}
}

// wantQuiet fails if a notification comes within three debounces: long
// enough for a burst in progress to have ended.
func wantQuiet(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case <-w.C():
		t.Fatalf("%s: unexpected notification", what)
	case <-time.After(3 * w.debounce):
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestInPlaceWrite(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, _ := start(t, path, testDebounce)

	write(t, path, "a: 2\n")
	wantChange(t, w, "os.WriteFile")
	wantQuiet(t, w, "after os.WriteFile")
}

// TestTruncateThenWriteIsOneNotification: an editor that truncates the
// file, then writes it in pieces, makes one burst: one notification, not
// one for the empty file and one for the new content.
func TestTruncateThenWriteIsOneNotification(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "a: 1\nb: 2\n")
	// A longer debounce than the other tests': the gap between the steps
	// below must not end the burst even on a loaded machine.
	w, _ := start(t, path, 3*testDebounce)

	must(t, os.Truncate(path, 0))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteString("a: 3\n")
	must(t, err)
	_, err = f.WriteString("b: 4\n")
	must(t, err)
	must(t, f.Close())

	wantChange(t, w, "truncate, then two writes")
	wantQuiet(t, w, "after the burst")
}

func TestRenameOnSave(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, _ := start(t, path, testDebounce)

	tmp := filepath.Join(dir, "sidecar.yaml.tmp")
	write(t, tmp, "a: 2\n")
	must(t, os.Rename(tmp, path))
	wantChange(t, w, "write f.tmp, rename over f")
	wantQuiet(t, w, "after the rename")

	// The watch survives the inode it started with.
	write(t, tmp, "a: 3\n")
	must(t, os.Rename(tmp, path))
	wantChange(t, w, "second rename-on-save")
}

func TestVimStyleSave(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, _ := start(t, path, testDebounce)

	backup := path + "~"
	must(t, os.Rename(path, backup))
	write(t, path, "a: 2\n")
	must(t, os.Remove(backup))
	wantChange(t, w, "rename f to f~, write f, remove f~")
	wantQuiet(t, w, "after the save")
}

// configMap lays out a directory as the kubelet does for a ConfigMap
// volume, and updates it the same way (its AtomicWriter).
type configMap struct {
	t   *testing.T
	dir string
	n   int
	ts  string // the timestamped directory ..data points to
}

func newConfigMap(t *testing.T, content string) *configMap {
	m := &configMap{t: t, dir: t.TempDir()}
	m.ts = m.payload(content)
	must(t, os.Symlink(m.ts, filepath.Join(m.dir, "..data")))
	must(t, os.Symlink(filepath.Join("..data", "sidecar.yaml"), filepath.Join(m.dir, "sidecar.yaml")))
	return m
}

// payload writes a new timestamped directory holding sidecar.yaml, and
// returns its name.
func (m *configMap) payload(content string) string {
	m.n++
	ts := fmt.Sprintf("..2026_12_05_10_%02d_00.%09d", m.n, m.n)
	must(m.t, os.Mkdir(filepath.Join(m.dir, ts), 0o755))
	write(m.t, filepath.Join(m.dir, ts, "sidecar.yaml"), content)
	return ts
}

// update writes a new timestamped directory, points ..data_tmp at it,
// renames ..data_tmp over ..data, and removes the old directory.
func (m *configMap) update(content string) {
	ts := m.payload(content)
	tmp := filepath.Join(m.dir, "..data_tmp")
	must(m.t, os.Symlink(ts, tmp))
	must(m.t, os.Rename(tmp, filepath.Join(m.dir, "..data")))
	must(m.t, os.RemoveAll(filepath.Join(m.dir, m.ts)))
	m.ts = ts
}

func TestConfigMapSwap(t *testing.T) {
	t.Parallel()
	m := newConfigMap(t, "a: 1\n")
	w, logs := start(t, filepath.Join(m.dir, "sidecar.yaml"), testDebounce)

	m.update("a: 2\n")
	wantChange(t, w, "ConfigMap update")
	wantQuiet(t, w, "after the update")

	m.update("a: 3\n")
	wantChange(t, w, "second ConfigMap update")

	// Same bytes in a new payload, as when another key of the ConfigMap
	// changed: nothing to report.
	m.update("a: 3\n")
	wantQuiet(t, w, "update with the same sidecar.yaml")

	if s := logs.String(); strings.Contains(s, "level=WARN") {
		t.Errorf("the old payload directory's removal was warned about:\n%s", s)
	}
}

// TestSameContentReportsNothing: a touch, a chmod, and saves that write
// the same bytes are not changes.
func TestSameContentReportsNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, _ := start(t, path, testDebounce)

	now := time.Now()
	must(t, os.Chtimes(path, now, now))
	must(t, os.Chmod(path, 0o600))
	write(t, path, "a: 1\n")
	tmp := filepath.Join(dir, "sidecar.yaml.tmp")
	write(t, tmp, "a: 1\n")
	must(t, os.Rename(tmp, path))
	wantQuiet(t, w, "touch, chmod, same bytes in place and by rename")

	write(t, path, "a: 2\n")
	wantChange(t, w, "a change after them")
}

// TestDeleteAndRecreate: the removal is reported (the reloader says the
// file is missing), and so is the file's return, even with the bytes it
// had before it went.
func TestDeleteAndRecreate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, _ := start(t, path, testDebounce)

	must(t, os.Remove(path))
	wantChange(t, w, "removal")
	wantQuiet(t, w, "while the file is missing")

	write(t, path, "a: 1\n")
	wantChange(t, w, "re-creation")
}

func TestFileCreatedAfterNew(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	w, _ := start(t, path, testDebounce)

	write(t, path, "a: 1\n")
	wantChange(t, w, "creation")
}

// TestSymlinkToAnotherDirectory: path is a symlink to a file elsewhere;
// that file's directory is watched, and follows the link when it is
// pointed somewhere else.
func TestSymlinkToAnotherDirectory(t *testing.T) {
	t.Parallel()
	linkDir, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	path := filepath.Join(linkDir, "sidecar.yaml")
	real := filepath.Join(b, "real.yaml")
	write(t, real, "a: 1\n")
	must(t, os.Symlink(real, path))
	w, _ := start(t, path, testDebounce)

	write(t, real, "a: 2\n")
	wantChange(t, w, "target written in place")
	wantQuiet(t, w, "after the write")

	tmp := filepath.Join(b, "real.yaml.tmp")
	write(t, tmp, "a: 3\n")
	must(t, os.Rename(tmp, real))
	wantChange(t, w, "target replaced by rename")

	// Point the link at a file in a third directory, by rename as ln -sf
	// does not: ln -sf removes, then creates.
	other := filepath.Join(c, "other.yaml")
	write(t, other, "a: 4\n")
	must(t, os.Symlink(other, path+".tmp"))
	must(t, os.Rename(path+".tmp", path))
	wantChange(t, w, "link pointed elsewhere")

	write(t, other, "a: 5\n")
	wantChange(t, w, "new target written")

	write(t, real, "a: 6\n")
	wantQuiet(t, w, "old target written")
}

// TestDanglingSymlinkTargetAppears: a symlink that leads nowhere is looked
// at again until it does.
func TestDanglingSymlinkTargetAppears(t *testing.T) {
	t.Parallel()
	linkDir, b := t.TempDir(), t.TempDir()
	path := filepath.Join(linkDir, "sidecar.yaml")
	real := filepath.Join(b, "sub", "real.yaml")
	must(t, os.Symlink(real, path))
	w, _ := start(t, path, testDebounce)

	// The directory comes with the file, so no watch could have seen it.
	staged := filepath.Join(b, "staged")
	must(t, os.Mkdir(staged, 0o755))
	write(t, filepath.Join(staged, "real.yaml"), "a: 1\n")
	must(t, os.Rename(staged, filepath.Dir(real)))
	wantChange(t, w, "target appeared")
}

// TestContinuousRewriteIsReported: a file written without a quiet moment
// is still reported, within ten debounces of the first write.
func TestContinuousRewriteIsReported(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "n: 0\n")
	const debounce = 50 * time.Millisecond
	w, _ := start(t, path, debounce)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := os.WriteFile(path, fmt.Appendf(nil, "n: %d\n", n), 0o644); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(debounce / 10) // a load, not a synchronisation
		}
	}()
	defer wg.Wait()
	defer close(stop)

	began := time.Now()
	wantChange(t, w, "writes every debounce/10")
	// Ten debounces, and room for a slow machine.
	if el, bound := time.Since(began), maxWaitFactor*debounce+1500*time.Millisecond; el > bound {
		t.Errorf("notified after %v, want within %v", el, bound)
	}
}

// TestDirectoryRemovedAndBack: the directory's removal is warned about,
// and its watch is added again once it is back.
func TestDirectoryRemovedAndBack(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	must(t, os.Mkdir(dir, 0o755))
	path := filepath.Join(dir, "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, logs := start(t, path, testDebounce)

	must(t, os.RemoveAll(dir))
	wantChange(t, w, "directory removed")
	poll.Until(t, waitFor, "a warning", func() bool {
		return strings.Contains(logs.String(), "level=WARN msg=\"watch: cannot watch")
	})

	// Back in one step, the file in it, so that only the re-added watch
	// can notice.
	staged := filepath.Join(root, "staged")
	must(t, os.Mkdir(staged, 0o755))
	write(t, filepath.Join(staged, "sidecar.yaml"), "a: 2\n")
	must(t, os.Rename(staged, dir))
	wantChange(t, w, "directory back")
	if !strings.Contains(logs.String(), "watching the config file's directory again") {
		t.Error("no log line for the watch's return")
	}

	write(t, path, "a: 3\n")
	wantChange(t, w, "write after the directory's return")
}

// TestNotifierErrorReports: events may have been lost, so a change is
// reported though the bytes are the same.
func TestNotifierErrorReports(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, logs := start(t, path, testDebounce)

	select {
	case w.fsw.Errors <- fsnotify.ErrEventOverflow:
	case <-time.After(waitFor):
		t.Fatal("the watcher did not take the error")
	}
	wantChange(t, w, "queue overflow")
	if s := logs.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "overflow") {
		t.Errorf("no warning with the error:\n%s", s)
	}
}

func TestNewMissingDirectory(t *testing.T) {
	t.Parallel()
	w, err := New(filepath.Join(t.TempDir(), "nowhere", "sidecar.yaml"), 0, nil)
	if err == nil {
		w.Close()
		t.Fatal("New succeeded on a path whose directory is missing")
	}
}

// TestCloseStopsGoroutines runs alone (not in parallel), so that any
// goroutine it leaves is its own.
func TestCloseStopsGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	write(t, path, "a: 1\n")
	w, err := New(path, testDebounce, nil)
	must(t, err)

	write(t, path, "a: 2\n")
	wantChange(t, w, "write")
	write(t, path, "a: 3\n") // a burst under way when Close comes
	must(t, w.Close())
	select {
	case <-w.done:
	default:
		t.Fatal("Close returned before the goroutine ended")
	}
	must(t, w.Close())
	goleak.VerifyNone(t, before)
	wantQuiet(t, w, "after Close")
}

// Command fsyncrate measures the raw single-writer durable write rate of a
// disk: one goroutine appends a record (1 KiB by default) to a file and
// syncs it (fdatasync by default, or fsync), back to back, for a fixed
// duration. It is the physical limit a durable queue that syncs every
// record on its own, without group commit, cannot beat.
//
//	go run ./bench/fsyncrate -dir /var/tmp -duration 10s -size 1024
//
// With -prezero N the file is first filled with N bytes of zeros and
// synced, and the records overwrite it from the start (wrapping around):
// the file's size never changes, so an fdatasync has only the data to
// persist, not the file's size, as a log written into preallocated,
// zeroed segments would.
//
// The file is created in -dir (which must be on the disk under test) and
// removed at the end. The result is one JSON
// line on stdout: syncs per second and the p50/p99/max of one write+sync.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

type result struct {
	Dir       string  `json:"dir"`
	Size      int     `json:"size"`
	Sync      string  `json:"sync"`
	Prezero   int64   `json:"prezero,omitempty"`
	DurationS float64 `json:"duration_s"`
	Syncs     int     `json:"syncs"`
	PerSec    float64 `json:"syncs_per_s"`
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
	Max       float64 `json:"max_us"`
}

func main() {
	dir := flag.String("dir", ".", "directory for the test file (on the disk under test)")
	size := flag.Int("size", 1024, "bytes written before each sync")
	duration := flag.Duration("duration", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unrecorded run first")
	mode := flag.String("sync", "fdatasync", "fdatasync or fsync")
	maxOps := flag.Int("max", 10_000_000, "upper bound on measured syncs")
	prezero := flag.Int64("prezero", 0, "bytes of zeros written and synced first, then overwritten in place (0: append)")
	flag.Parse()
	if err := run(*dir, *size, *duration, *warmup, *mode, *maxOps, *prezero); err != nil {
		fmt.Fprintln(os.Stderr, "fsyncrate:", err)
		os.Exit(2)
	}
}

func run(dir string, size int, duration, warmup time.Duration, mode string, maxOps int, prezero int64) error {
	if size <= 0 || duration <= 0 || maxOps <= 0 {
		return fmt.Errorf("-size, -duration and -max must be positive")
	}
	if prezero != 0 && prezero < int64(size) {
		return fmt.Errorf("-prezero %d: want 0 or at least -size (%d)", prezero, size)
	}
	var syncFn func(fd int) error
	switch mode {
	case "fdatasync":
		syncFn = syscall.Fdatasync
	case "fsync":
		syncFn = syscall.Fsync
	default:
		return fmt.Errorf("-sync %q: want fdatasync or fsync", mode)
	}
	f, err := os.CreateTemp(dir, "fsyncrate-*.dat")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	fd := int(f.Fd())
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(i)
	}
	var off int64 // the next record's offset, with -prezero
	if prezero > 0 {
		zeros := make([]byte, 1<<20)
		for n := int64(0); n < prezero; n += int64(len(zeros)) {
			if _, err := f.Write(zeros[:min(int64(len(zeros)), prezero-n)]); err != nil {
				return err
			}
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
	// One record: append, then sync; the file grows as a log does, so
	// each fdatasync also has to persist the new size. With -prezero the
	// record overwrites zeros instead.
	op := func() error {
		if prezero > 0 {
			if off+int64(size) > prezero {
				off = 0
			}
			if _, err := f.WriteAt(buf, off); err != nil {
				return err
			}
			off += int64(size)
		} else if _, err := f.Write(buf); err != nil {
			return err
		}
		return syncFn(fd)
	}
	for end := time.Now().Add(warmup); time.Now().Before(end); {
		if err := op(); err != nil {
			return err
		}
	}
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(duration)
	for len(lat) < maxOps {
		t0 := time.Now()
		if !t0.Before(end) {
			break
		}
		if err := op(); err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	res := result{Dir: dir, Size: size, Sync: mode, Prezero: prezero, DurationS: stats.Round1(elapsed.Seconds()), Syncs: len(lat)}
	if len(lat) > 0 {
		res.PerSec = stats.Round1(float64(len(lat)) / elapsed.Seconds())
		slices.Sort(lat)
		res.P50 = stats.Pct(lat, 0.50)
		res.P99 = stats.Pct(lat, 0.99)
		res.Max = stats.Micros(lat[len(lat)-1])
	}
	return stats.PrintJSON(res)
}

// Command spoolrecovery measures the file spool with many pending
// messages: it fills a fresh spool with -n messages of -size bytes from
// -producers goroutines, closes it, then reopens it and reports how long
// recovery took and how much the process's RSS grew while the reopened
// store holds them. The reopen runs in a fresh child process (the same
// binary with -reopen), so the fill's memory does not count.
//
//	go run ./bench/spoolrecovery -n 1000000 -size 1024
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
)

func main() {
	n := flag.Int("n", 1_000_000, "messages to spool")
	size := flag.Int("size", 1024, "body bytes per message")
	producers := flag.Int("producers", 64, "concurrent appenders while filling")
	dir := flag.String("dir", "", "spool directory (default: a new temp dir, removed after)")
	reopen := flag.Bool("reopen", false, "only reopen -dir and report recovery time and RSS (the child mode)")
	flag.Parse()
	if *reopen {
		reopenOnly(*dir)
		return
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "spoolrecovery")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		*dir = filepath.Join(d, "spool")
	}
	opts := spool.FileOptions{MaxBytes: 1 << 40, MaxMessages: int64(*n) + 1}

	st, err := spool.OpenFile(*dir, opts)
	if err != nil {
		log.Fatal(err)
	}
	body := make([]byte, *size)
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range *producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(*n) {
					return
				}
				m := &spool.Message{Route: "bench", Method: "POST", Target: "/events/" + strconv.FormatInt(i, 10),
					Header: http.Header{"Content-Type": {"application/json"}}, Body: body, Arrived: time.Now()}
				if err := st.Append(context.Background(), m); err != nil {
					log.Fatalf("append %d: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	fill := time.Since(start)
	if err := st.Close(); err != nil {
		log.Fatal(err)
	}

	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	child, err := exec.Command(self, "-reopen", "-dir", *dir).Output()
	if err != nil {
		log.Fatalf("reopen: %v", err)
	}
	var rec map[string]any
	if err := json.Unmarshal(child, &rec); err != nil {
		log.Fatalf("reopen output %q: %v", child, err)
	}
	rec["messages"], rec["body_bytes"], rec["producers"] = *n, *size, *producers
	rec["fill_seconds"], rec["appends_per_second"] = fill.Seconds(), float64(*n)/fill.Seconds()
	out, _ := json.Marshal(rec)
	fmt.Println(string(out))
}

// reopenOnly opens an existing spool and reports how long recovery took
// and how much RSS the open store added.
func reopenOnly(dir string) {
	opts := spool.FileOptions{MaxBytes: 1 << 40, MaxMessages: 1 << 40}
	before := rssKiB()
	start := time.Now()
	st, err := spool.OpenFile(dir, opts)
	if err != nil {
		log.Fatal(err)
	}
	recovery := time.Since(start)
	runtime.GC()
	debug.FreeOSMemory()
	after := rssKiB()
	stats := st.Stats()
	st.Close()
	out, _ := json.Marshal(map[string]any{
		"recovery_seconds": recovery.Seconds(), "pending_after_recovery": stats.Total.Pending,
		"rss_before_mib": float64(before) / 1024, "rss_after_mib": float64(after) / 1024,
		"rss_growth_mib": float64(after-before) / 1024,
	})
	fmt.Println(string(out))
}

// rssKiB reads the process's resident set size from /proc.
func rssKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return v
		}
	}
	return 0
}

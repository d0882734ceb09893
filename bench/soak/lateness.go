package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"sync"
	"time"
)

// A request that took longer than its deadline is hung unless the time
// went somewhere else than the sidecar. Two witnesses say where:
//
//   - the sidecar's access log (telemetry.access_log, docs/observability.md
//     "Access log"): its duration runs from the request's headers to the
//     end of the answer. Each HTTP request of the soak has its own path,
//     so its line is found by path; when the sidecar answered within the
//     deadline, the rest was spent on the way back (loopback, the soak's
//     own client);
//   - stallWatch: the soak process's own stalls (a 10 ms ticker whose
//     ticks come late), as when the machine is busy with other work. A
//     request whose overshoot fits in a stall of the soak's process
//     during its life was late because the soak was.
//
// Neither witness clears a request the sidecar itself held too long.

// stall is a pause of the soak process: from end-gap to end, in time since
// the start of the run.
type stall struct {
	End time.Duration `json:"end"`
	Gap time.Duration `json:"gap"`
}

// stallWatch records stalls of this process longer than its threshold.
type stallWatch struct {
	threshold time.Duration

	mu     sync.Mutex
	stalls []stall
	max    time.Duration
}

// run ticks every 10 ms until stop is closed.
func (w *stallWatch) run(rec *recorder, stop <-chan struct{}) {
	const every = 10 * time.Millisecond
	t := time.NewTicker(every)
	defer t.Stop()
	last := rec.since()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := rec.since()
		gap := now - last - every
		last = now
		if gap < w.threshold {
			continue
		}
		w.mu.Lock()
		w.max = max(w.max, gap)
		if len(w.stalls) < 10000 {
			w.stalls = append(w.stalls, stall{End: now, Gap: gap})
		}
		w.mu.Unlock()
	}
}

// explains reports whether a stall within [from, to] is at least over
// long.
func (w *stallWatch) explains(from, to, over time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.stalls {
		if s.End-s.Gap >= from-10*time.Millisecond && s.End <= to+10*time.Millisecond && s.Gap >= over {
			return true
		}
	}
	return false
}

// accessLine is the part of an access log line the soak reads.
type accessLine struct {
	Msg      string        `json:"msg"`
	Path     string        `json:"path"`
	Status   int           `json:"status"`
	Outcome  string        `json:"outcome"`
	Duration time.Duration `json:"duration"` // nanoseconds in the JSON log
}

// splitLog reads the sidecar's JSON log at path, returns its access lines
// by request path, and rewrites the file without them (they are one per
// request: too many to keep with the summary).
func splitLog(path string) (map[string]accessLine, int, error) {
	in, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer in.Close()
	out, err := os.Create(path + ".tmp")
	if err != nil {
		return nil, 0, err
	}
	defer out.Close()
	w := bufio.NewWriter(out)
	lines := map[string]accessLine{}
	n := 0
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		b := sc.Bytes()
		if bytes.Contains(b, []byte(`"msg":"access"`)) {
			var a accessLine
			if json.Unmarshal(b, &a) == nil && a.Msg == "access" {
				n++
				lines[a.Path] = a
				continue
			}
		}
		w.Write(b)
		w.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if err := w.Flush(); err != nil {
		return nil, 0, err
	}
	if err := out.Close(); err != nil {
		return nil, 0, err
	}
	return lines, n, os.Rename(path+".tmp", path)
}

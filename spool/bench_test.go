package spool

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures durable (FsyncAlways) appends of 1 KiB messages
// from 1, 16 and 64 concurrent producers, into segments appended to and
// into zeros written ahead (FileOptions.ZeroAhead, the sidecar's).
func BenchmarkAppend(b *testing.B) {
	for _, ahead := range []int64{0, 1 << 20} {
		for _, producers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("zeroahead=%d/producers=%d", ahead, producers), func(b *testing.B) {
				var syncs atomic.Int64
				s := open(b, b.TempDir(), FileOptions{ZeroAhead: ahead, OnFsync: func(time.Duration) { syncs.Add(1) }})
				body := make([]byte, 1024)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.SetBytes(1024)
				b.ResetTimer()
				start := syncs.Load()
				for range producers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if err := s.Append(b.Context(), &Message{Route: "bench", Body: body}); err != nil {
								b.Errorf("Append() = %v, want nil", err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				b.ReportMetric(float64(b.N)/float64(max(syncs.Load()-start, 1)), "msgs/sync")
			})
		}
	}
}

// BenchmarkDedupeWindowLengthened measures a reload that lengthens the
// dedupe window of a route holding 60,000 keys (a 10 min window at 100
// keyed requests a second), in 256 KiB segments: it keeps the segments
// holding them for the new window. A reload that keeps or shortens the
// window costs nothing.
func BenchmarkDedupeWindowLengthened(b *testing.B) {
	c := newTestClock()
	short := map[string]Limits{"r": {DedupeWindow: 5 * time.Minute}}
	long := map[string]Limits{"r": {DedupeWindow: 10 * time.Minute}}
	s := open(b, b.TempDir(), FileOptions{Now: c.now, Fsync: FsyncInterval, SegmentSize: 256 << 10, Routes: long})
	const keys = 60_000
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1); i <= keys; i = next.Add(1) {
				m := &Message{Route: "r", IdempotencyKey: fmt.Sprint("key-", i), Body: make([]byte, 100)}
				if err := s.AppendOnce(b.Context(), m); err != nil {
					b.Errorf("AppendOnce() = %v, want nil", err)
					return
				}
			}
		})
	}
	wg.Wait()
	for b.Loop() {
		s.SetRouteLimits(short)
		s.SetRouteLimits(long)
	}
	b.ReportMetric(float64(s.Stats().Segments), "segments")
}

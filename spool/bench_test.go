package spool

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkAppend measures durable (FsyncAlways) appends of 1 KiB messages
// from 1, 16 and 64 concurrent producers.
func BenchmarkAppend(b *testing.B) {
	for _, producers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			ffs := &faultFS{}
			s := open(b, b.TempDir(), FileOptions{FS: ffs})
			body := make([]byte, 1024)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.SetBytes(1024)
			b.ResetTimer()
			syncs := ffs.syncs.Load()
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
			b.ReportMetric(float64(b.N)/float64(max(ffs.syncs.Load()-syncs, 1)), "msgs/sync")
		})
	}
}

//go:build unix

package h2server

import (
	"bytes"
	"io"
	"net/http"
	"syscall"
	"testing"
)

// BenchmarkRequests: requests over one h2c connection of net/http's
// transport, client and server in the process, b.N in all from
// parallel goroutines (RunParallel: GOMAXPROCS of them, so several
// streams are open at once). cpu-ns/op is the process's CPU time (user
// and system) per request, client's included: steadier than ns/op on a
// shared machine.
func BenchmarkRequests(b *testing.B) {
	small := []byte("hello, world: a small answer\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<10) // 16 KiB
	addr := start(b, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			io.Copy(w, r.Body)
			return
		}
		w.Write(small)
	})})
	tests := []struct {
		name string
		body []byte // nil: GET
	}{
		{"GET", nil},
		{"POST16K", big},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			hc := client(b)
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var resp *http.Response
					var err error
					if tt.body == nil {
						resp, err = hc.Get("http://" + addr + "/")
					} else {
						resp, err = hc.Post("http://"+addr+"/", "application/octet-stream", bytes.NewReader(tt.body))
					}
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's CPU time so far, user and system, in
// nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

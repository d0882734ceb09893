package jsstore_test

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// BenchmarkAppend measures appends of 1 KiB messages acknowledged by the
// stream, from 16 concurrent callers, to an embedded single server with
// its default sync_interval (acknowledged before fsync) and with
// sync_interval: always (fsynced before the acknowledgement, as the file
// backend's fsync: always).
func BenchmarkAppend(b *testing.B) {
	for _, tt := range []struct {
		name   string
		always bool
	}{
		{"sync_interval=default", false},
		{"sync_interval=always", true},
	} {
		b.Run(tt.name, func(b *testing.B) {
			srv, err := server.NewServer(&server.Options{
				Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: b.TempDir(),
				SyncAlways: tt.always, NoLog: true, NoSigs: true,
			})
			if err != nil {
				b.Fatal(err)
			}
			go srv.Start()
			if !srv.ReadyForConnections(10 * time.Second) {
				b.Fatal("NATS server not ready within 10s")
			}
			defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
			s, err := jsstore.Open(b.Context(), jsstore.Options{URL: srv.ClientURL(), Stream: "BENCH", Create: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			body := bytes.Repeat([]byte("x"), 1<<10)
			b.SetBytes(int64(len(body)))
			b.SetParallelism(8) // 16 callers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := &spool.Message{Route: "r", Method: http.MethodPost, Target: "/e", Body: body}
					if err := s.Append(b.Context(), m); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

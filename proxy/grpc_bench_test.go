package proxy

import (
	"context"
	"net"
	"runtime/metrics"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// BenchmarkGRPCUnary is one unary call (64 B each way) from a grpc-go
// client to grpc-go's interop server, "direct" or through the sidecar
// with every policy on ("proxied"), client and server included: the
// difference is the sidecar's share (allocations are the steadiest
// figure, with goroutines started per call). Run with -cpu 1 to see the
// proxy as bench/run.sh runs it.
func BenchmarkGRPCUnary(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go gs.Serve(ln)
	b.Cleanup(gs.Stop)
	upURL := "http://" + ln.Addr().String()
	policy := `{timeout: 10s, per_try_timeout: 5s, max_in_flight: 1000000,
      retry: {attempts: 3}, circuit_breaker: {}, rate_limit: {rps: 1e12, burst: 1000000000}}`
	for _, bc := range []struct{ name, target string }{
		{"direct", ln.Addr().String()},
		{"proxied", ""},
	} {
		b.Run(bc.name, func(b *testing.B) {
			target := bc.target
			if target == "" {
				sc := startSidecar(b, grpcConfig(upURL, policy, ""))
				target = sc.addr["app"]
			}
			cc, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			tc := testgrpc.NewTestServiceClient(cc)
			req := &testgrpc.SimpleRequest{ResponseSize: 64, Payload: &testgrpc.Payload{Body: make([]byte, 64)}}
			if _, err := tc.UnaryCall(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			created := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
			metrics.Read(created)
			before := created[0].Value.Uint64()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := tc.UnaryCall(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			metrics.Read(created)
			b.ReportMetric(float64(created[0].Value.Uint64()-before)/float64(b.N), "goroutines/op")
		})
	}
}

// Command grpcbench is the gRPC side of bench/h2.sh: a grpc-go server
// (the interop TestService) and a closed-loop unary-call load generator.
//
//	grpcbench -mode server -addr 127.0.0.1:18090
//	grpcbench -mode client -target 127.0.0.1:18091 -streams 64 -duration 10s -warmup 2s
//
// The client opens ONE grpc.ClientConn (plaintext h2c) and runs -streams
// goroutines, each issuing UnaryCall back to back (so at most -streams calls
// are in flight on that one HTTP/2 connection), for -duration after a
// -warmup that is not recorded, and at most -max recorded calls. It prints
// one JSON line:
//
//	{"target":"127.0.0.1:18091","streams":64,"duration_s":10,"calls":123456,
//	 "errors":0,"calls_per_s":12345.6,"p50_us":..,"p90_us":..,"p99_us":..,
//	 "max_us":..,"mean_us":..}
//
// Latency is per call, from the start of the call to its response
// (closed loop: no correction for coordinated omission; the number of
// streams is the concurrency). Only loopback targets are accepted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

func main() {
	mode := flag.String("mode", "", "server or client")
	addr := flag.String("addr", "127.0.0.1:18090", "server: listen address")
	target := flag.String("target", "127.0.0.1:18090", "client: host:port to call (loopback only)")
	streams := flag.Int("streams", 1, "client: concurrent calls on the one connection")
	duration := flag.Duration("duration", 10*time.Second, "client: measured duration")
	warmup := flag.Duration("warmup", time.Second, "client: unrecorded warm-up before the measurement")
	maxCalls := flag.Int64("max", 10_000_000, "client: stop after this many recorded calls")
	size := flag.Int("size", 64, "client: request and response payload bytes")
	timeout := flag.Duration("timeout", 5*time.Second, "client: per-call deadline")
	flag.Parse()

	switch *mode {
	case "server":
		serve(*addr)
	case "client":
		if err := checkLoopback(*target); err != nil {
			log.Fatalf("grpcbench: %v", err)
		}
		if *streams < 1 || *duration <= 0 || *maxCalls < 1 || *size < 0 || *warmup < 0 {
			log.Fatal("grpcbench: need -streams >= 1, -duration > 0, -max >= 1, -size >= 0, -warmup >= 0")
		}
		res, err := run(*target, *streams, *duration, *warmup, *maxCalls, *size, *timeout)
		if err != nil {
			log.Fatalf("grpcbench: %v", err)
		}
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
	default:
		fmt.Fprintln(os.Stderr, "grpcbench: -mode server or -mode client")
		flag.Usage()
		os.Exit(2)
	}
}

func checkLoopback(target string) error {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return fmt.Errorf("target %q: %v", target, err)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("target %q is not a loopback address", target)
	}
	return nil
}

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("grpcbench: %v", err)
	}
	s := grpc.NewServer(grpc.MaxConcurrentStreams(1000))
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; s.Stop() }()
	log.Printf("grpcbench: TestService listening on %s", ln.Addr())
	if err := s.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Fatalf("grpcbench: %v", err)
	}
}

type result struct {
	Target    string  `json:"target"`
	Streams   int     `json:"streams"`
	DurationS float64 `json:"duration_s"`
	Calls     int64   `json:"calls"`
	Errors    int64   `json:"errors"`
	FirstErr  string  `json:"first_error,omitempty"`
	CallsPerS float64 `json:"calls_per_s"`
	P50       float64 `json:"p50_us"`
	P90       float64 `json:"p90_us"`
	P99       float64 `json:"p99_us"`
	Max       float64 `json:"max_us"`
	Mean      float64 `json:"mean_us"`
}

func run(target string, streams int, duration, warmup time.Duration, maxCalls int64, size int, timeout time.Duration) (*result, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	req := &testgrpc.SimpleRequest{
		ResponseSize: int32(size),
		Payload:      &testgrpc.Payload{Body: make([]byte, size)},
	}
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		resp, err := client.UnaryCall(ctx, req)
		if err == nil && len(resp.GetPayload().GetBody()) != size {
			err = fmt.Errorf("response payload %d bytes, want %d", len(resp.GetPayload().GetBody()), size)
		}
		return err
	}
	// One call first: the connection must work before anything is timed.
	if err := call(); err != nil {
		return nil, fmt.Errorf("first call to %s: %v", target, err)
	}

	var (
		recording atomic.Bool
		stop      atomic.Bool
		recorded  atomic.Int64
		errCount  atomic.Int64
		firstErr  atomic.Value
		wg        sync.WaitGroup
	)
	lats := make([][]time.Duration, streams)
	// Each worker keeps its own slice; cap the total memory at -max samples.
	perWorker := int(min(maxCalls/int64(streams)+1, 1<<20))
	for i := range streams {
		lats[i] = make([]time.Duration, 0, perWorker)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for !stop.Load() {
				t0 := time.Now()
				err := call()
				d := time.Since(t0)
				if !recording.Load() {
					continue
				}
				if recorded.Add(1) > maxCalls {
					stop.Store(true)
					return
				}
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lats[i] = append(lats[i], d)
			}
		}(i)
	}
	time.Sleep(warmup)
	start := time.Now()
	recording.Store(true)
	deadline := time.NewTimer(duration)
	tick := time.NewTicker(10 * time.Millisecond)
wait:
	for {
		select {
		case <-deadline.C:
			break wait
		case <-tick.C:
			if stop.Load() {
				break wait
			}
		}
	}
	recording.Store(false)
	elapsed := time.Since(start)
	stop.Store(true)
	tick.Stop()
	wg.Wait()

	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	res := &result{
		Target:    target,
		Streams:   streams,
		DurationS: elapsed.Seconds(),
		Calls:     int64(len(all)),
		Errors:    errCount.Load(),
	}
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	res.CallsPerS = float64(res.Calls) / elapsed.Seconds()
	if n := len(all); n > 0 {
		q := func(p float64) float64 {
			i := int(p * float64(n))
			if i >= n {
				i = n - 1
			}
			return us(all[i])
		}
		res.P50, res.P90, res.P99, res.Max = q(0.50), q(0.90), q(0.99), us(all[n-1])
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		res.Mean = us(sum / time.Duration(n))
	}
	return res, nil
}

func us(d time.Duration) float64 { return float64(d.Round(time.Microsecond)) / 1e3 }

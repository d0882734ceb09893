// Command grpcbench is the gRPC side of bench/h2.sh and bench/run.sh: a
// grpc-go server (the interop TestService) and a closed-loop load
// generator of unary calls or of messages on streams.
//
//	grpcbench -mode server -addr 127.0.0.1:18090
//	grpcbench -mode client -target 127.0.0.1:18091 -streams 64 -duration 10s -warmup 2s
//	grpcbench -mode client -call stream -target 127.0.0.1:18091 -streams 64 -duration 10s
//
// The client opens ONE grpc.ClientConn (plaintext h2c) and runs -streams
// goroutines, for -duration after a -warmup that is not recorded, and at
// most -max recorded calls. With -call unary (the default) each goroutine
// issues UnaryCall back to back (so at most -streams calls are in flight on
// that one HTTP/2 connection). With -call stream each goroutine opens one
// FullDuplexCall (bidirectional streaming) for the whole run and plays
// ping-pong on it: it sends one message (-size bytes, asking for one
// -size-byte answer) and waits for the answer before sending the next, so
// -streams long-lived streams carry one message each way at a time (each
// stream is replaced by a new one every -stream-life, if set); a "call" is
// then one message and its answer. It prints one JSON line:
//
//	{"target":"127.0.0.1:18091","call":"unary","streams":64,"duration_s":10,
//	 "calls":123456,"errors":0,"calls_per_s":12345.6,"p50_us":..,"p90_us":..,
//	 "p99_us":..,"max_us":..,"mean_us":..}
//
// Latency is per call (or per message round trip), from its start to its
// response (closed loop: no correction for coordinated omission; the
// number of streams is the concurrency). Only loopback targets are
// accepted.
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
	timeout := flag.Duration("timeout", 5*time.Second, "client: per-call deadline (-call stream: per message, and for the end of the run)")
	callKind := flag.String("call", "unary", "client: unary (UnaryCall) or stream (ping-pong messages on one FullDuplexCall per -streams)")
	streamLife := flag.Duration("stream-life", 0, "client, -call stream: end each stream and open a new one after this long (0: one stream for the whole run)")
	flag.Parse()

	switch *mode {
	case "server":
		serve(*addr)
	case "client":
		if err := checkLoopback(*target); err != nil {
			log.Fatalf("grpcbench: %v", err)
		}
		if *streams < 1 || *duration <= 0 || *maxCalls < 1 || *size < 0 || *warmup < 0 || *timeout <= 0 || *streamLife < 0 {
			log.Fatal("grpcbench: need -streams >= 1, -duration > 0, -max >= 1, -size >= 0, -warmup >= 0, -timeout > 0, -stream-life >= 0")
		}
		if *callKind != "unary" && *callKind != "stream" {
			log.Fatalf("grpcbench: -call %q: want unary or stream", *callKind)
		}
		res, err := run(*target, *callKind, *streams, *duration, *warmup, *maxCalls, *size, *timeout, *streamLife)
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
	Call      string  `json:"call"`
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

func run(target, kind string, streams int, duration, warmup time.Duration, maxCalls int64, size int, timeout, streamLife time.Duration) (*result, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	newCaller := func() caller { return &unaryCaller{client: client, size: size, timeout: timeout} }
	if kind == "stream" {
		newCaller = func() caller {
			return &streamCaller{client: client, ctx: runCtx, size: size, timeout: timeout, life: streamLife}
		}
	}
	// One call first: the connection must work before anything is timed.
	first := newCaller()
	err = first.call()
	first.close()
	if err != nil {
		return nil, fmt.Errorf("first %s call to %s: %v", kind, target, err)
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
			c := newCaller()
			defer c.close()
			for !stop.Load() {
				t0 := time.Now()
				err := c.call()
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
		Call:      kind,
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

// caller makes one call (unary) or one message round trip (stream); each
// worker has its own.
type caller interface {
	call() error
	close()
}

type unaryCaller struct {
	client  testgrpc.TestServiceClient
	size    int
	timeout time.Duration
	req     *testgrpc.SimpleRequest
}

func (u *unaryCaller) call() error {
	if u.req == nil {
		u.req = &testgrpc.SimpleRequest{
			ResponseSize: int32(u.size),
			Payload:      &testgrpc.Payload{Body: make([]byte, u.size)},
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), u.timeout)
	defer cancel()
	resp, err := u.client.UnaryCall(ctx, u.req)
	if err == nil && len(resp.GetPayload().GetBody()) != u.size {
		err = fmt.Errorf("response payload %d bytes, want %d", len(resp.GetPayload().GetBody()), u.size)
	}
	return err
}

func (u *unaryCaller) close() {}

// streamCaller plays ping-pong on one FullDuplexCall: one message out, its
// one answer back. The stream is opened on the first call and reopened
// after an error or once it is older than life; a message not answered
// within timeout cancels it.
type streamCaller struct {
	client  testgrpc.TestServiceClient
	ctx     context.Context
	size    int
	timeout time.Duration
	life    time.Duration // reopen the stream after this long; 0: never
	req     *testgrpc.StreamingOutputCallRequest
	stream  testgrpc.TestService_FullDuplexCallClient
	cancel  context.CancelFunc
	opened  time.Time
}

func (s *streamCaller) call() error {
	if s.req == nil {
		s.req = &testgrpc.StreamingOutputCallRequest{
			ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(s.size)}},
			Payload:            &testgrpc.Payload{Body: make([]byte, s.size)},
		}
	}
	if s.stream != nil && s.life > 0 && time.Since(s.opened) > s.life {
		s.close()
	}
	if s.stream == nil {
		ctx, cancel := context.WithCancel(s.ctx)
		st, err := s.client.FullDuplexCall(ctx)
		if err != nil {
			cancel()
			return err
		}
		s.stream, s.cancel, s.opened = st, cancel, time.Now()
	}
	var timedOut atomic.Bool
	t := time.AfterFunc(s.timeout, func() { timedOut.Store(true); s.cancel() })
	err := s.stream.Send(s.req)
	var resp *testgrpc.StreamingOutputCallResponse
	if err == nil {
		resp, err = s.stream.Recv()
	}
	t.Stop()
	switch {
	case timedOut.Load():
		err = fmt.Errorf("no answer on the stream within %v", s.timeout)
	case err == nil && len(resp.GetPayload().GetBody()) != s.size:
		err = fmt.Errorf("response payload %d bytes, want %d", len(resp.GetPayload().GetBody()), s.size)
	}
	if err != nil {
		s.cancel()
		s.stream = nil
	}
	return err
}

// close half-closes the stream and waits (at most timeout) for the server
// to end it.
func (s *streamCaller) close() {
	if s.stream == nil {
		return
	}
	t := time.AfterFunc(s.timeout, s.cancel)
	if s.stream.CloseSend() == nil {
		for {
			if _, err := s.stream.Recv(); err != nil {
				break
			}
		}
	}
	t.Stop()
	s.cancel()
	s.stream = nil
}

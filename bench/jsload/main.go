// Command jsload measures durable publishes to NATS JetStream: -producers
// goroutines each publish a -size byte message synchronously (waiting for
// the server's PubAck before the next, as an HTTP producer waits for its
// 202), back to back, for -duration after an unrecorded -warmup.
//
//	go run ./bench/jsload -url nats://127.0.0.1:18422 -producers 16 -duration 10s
//
// Before the run it (re)creates the stream -stream on subject -subject with
// file storage and one replica (-reset deletes it first, so every run starts
// from an empty stream); with -msg-id each publish carries a unique
// Nats-Msg-Id, so the server's de-duplication window is in the path, as it
// would be for a spool backend on JetStream. Each producer has its own
// connection unless -shared-conn. Only loopback servers are accepted. The
// result is one JSON line on stdout: publishes per second (acknowledged
// ones) and their latency.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

type result struct {
	URL        string  `json:"url"`
	Producers  int     `json:"producers"`
	Size       int     `json:"size"`
	MsgID      bool    `json:"msg_id"`
	DurationS  float64 `json:"duration_s"`
	WarmupS    float64 `json:"warmup_s"`
	OK         int     `json:"ok"`
	Errors     int64   `json:"errors"`
	PerSec     float64 `json:"pubs_per_s"`
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	Max        float64 `json:"max_us"`
	Mean       float64 `json:"mean_us"`
	StreamMsgs uint64  `json:"stream_msgs"`
	FirstError string  `json:"first_error,omitempty"`
}

type options struct {
	url, stream, subject string
	producers, size, max int
	duration, warmup     time.Duration
	timeout              time.Duration
	msgID, reset, shared bool
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "nats://127.0.0.1:4222", "NATS server URL (loopback only)")
	flag.StringVar(&o.stream, "stream", "BENCH", "stream name")
	flag.StringVar(&o.subject, "subject", "bench.enqueue", "subject published to (the stream's only subject)")
	flag.IntVar(&o.producers, "producers", 1, "concurrent synchronous publishers")
	flag.IntVar(&o.size, "size", 1024, "message size in bytes")
	flag.IntVar(&o.max, "max", 10_000_000, "upper bound on measured publishes")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unrecorded publishing first")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-publish timeout")
	flag.BoolVar(&o.msgID, "msg-id", false, "set a unique Nats-Msg-Id on every publish")
	flag.BoolVar(&o.reset, "reset", true, "delete the stream first if it exists")
	flag.BoolVar(&o.shared, "shared-conn", false, "all producers share one connection")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "jsload:", err)
		os.Exit(2)
	}
}

func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "nats" {
		return fmt.Errorf("only nats:// URLs are supported, got %q", u.Scheme)
	}
	if h := u.Hostname(); h != "localhost" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("refusing non-loopback server %q", h)
		}
	}
	return nil
}

func run(o options) error {
	if o.producers <= 0 || o.size <= 0 || o.max <= 0 || o.duration <= 0 || o.warmup < 0 || o.timeout <= 0 {
		return fmt.Errorf("-producers, -size, -max, -duration and -timeout must be positive")
	}
	if err := checkLoopback(o.url); err != nil {
		return err
	}
	connect := func() (*nats.Conn, error) {
		return nats.Connect(o.url, nats.Name("jsload"), nats.Timeout(o.timeout), nats.MaxReconnects(0))
	}
	admin, err := connect()
	if err != nil {
		return err
	}
	defer admin.Close()
	ajs, err := jetstream.New(admin)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if o.reset {
		if err := ajs.DeleteStream(ctx, o.stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("deleting stream %s: %w", o.stream, err)
		}
	}
	stream, err := ajs.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       o.stream,
		Subjects:   []string{o.subject},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("creating stream %s: %w", o.stream, err)
	}

	conns := make([]jetstream.JetStream, o.producers)
	for k := range conns {
		nc := admin
		if !o.shared {
			if nc, err = connect(); err != nil {
				return err
			}
			defer nc.Close()
		}
		if conns[k], err = jetstream.New(nc); err != nil {
			return err
		}
	}

	type worker struct {
		lat      []time.Duration
		errs     int64
		firstErr string
	}
	ws := make([]*worker, o.producers)
	var measured atomic.Int64
	start := time.Now()
	measureFrom := start.Add(o.warmup)
	end := measureFrom.Add(o.duration)
	var wg sync.WaitGroup
	for k := range o.producers {
		w := &worker{}
		ws[k] = w
		js := conns[k]
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := make([]byte, o.size)
			for i := range data {
				data[i] = 'a' + byte(i%26)
			}
			for seq := 0; ; seq++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				inWindow := !t0.Before(measureFrom)
				if inWindow && measured.Add(1) > int64(o.max) {
					return
				}
				pctx, pcancel := context.WithTimeout(context.Background(), o.timeout)
				var opts []jetstream.PublishOpt
				if o.msgID {
					opts = append(opts, jetstream.WithMsgID(fmt.Sprintf("p%d-%d", k, seq)))
				}
				_, err := js.Publish(pctx, o.subject, data, opts...)
				pcancel()
				d := time.Since(t0)
				if !inWindow {
					continue
				}
				if err != nil {
					w.errs++
					if w.firstErr == "" {
						w.firstErr = err.Error()
					}
					continue
				}
				w.lat = append(w.lat, d)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)

	res := result{URL: o.url, Producers: o.producers, Size: o.size, MsgID: o.msgID,
		DurationS: o.duration.Seconds(), WarmupS: o.warmup.Seconds()}
	var lat []time.Duration
	for _, w := range ws {
		lat = append(lat, w.lat...)
		res.Errors += w.errs
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
	}
	res.OK = len(lat)
	if elapsed > 0 {
		res.PerSec = stats.Round1(float64(res.OK) / elapsed.Seconds())
	}
	if res.OK > 0 {
		slices.Sort(lat)
		res.P50 = stats.Pct(lat, 0.50)
		res.P90 = stats.Pct(lat, 0.90)
		res.P99 = stats.Pct(lat, 0.99)
		res.Max = stats.Micros(lat[len(lat)-1])
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		res.Mean = stats.Round1(float64(sum) / float64(len(lat)) / 1e3)
	}
	if info, err := stream.Info(ctx); err == nil {
		res.StreamMsgs = info.State.Msgs
	}
	return stats.PrintJSON(res)
}

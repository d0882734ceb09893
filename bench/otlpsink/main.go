// Command otlpsink is the benchmark's OTLP/HTTP trace receiver: it answers
// every POST /v1/traces with 200 and an empty protobuf
// ExportTraceServiceResponse, after decoding the body and counting its
// spans, so a traced sidecar's exports really are decoded.
//
//	go run ./bench/otlpsink -addr 127.0.0.1:18085
//
// GET /count answers the spans received so far (a decimal number); on
// SIGTERM or SIGINT it prints "spans N" (and "requests", "errors") on
// stderr and exits. It listens on loopback only.
package main

import (
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18085", "listen address (loopback only)")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Fatalf("otlpsink: -addr %q: want a loopback IP and a port", *addr)
	}

	var spans, requests, errs atomic.Int64
	empty, err := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				errs.Add(1)
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			defer zr.Close()
			body = zr
		}
		b, err := io.ReadAll(body)
		var req coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			errs.Add(1)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var n int64
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				n += int64(len(ss.GetSpans()))
			}
		}
		spans.Add(n)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(empty)
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, spans.Load())
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		fmt.Fprintf(os.Stderr, "spans %d requests %d errors %d\n", spans.Load(), requests.Load(), errs.Load())
		os.Exit(0)
	}()
	log.Fatal(http.Serve(ln, mux))
}

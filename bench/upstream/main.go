// Command upstream is the benchmark's origin server: it answers every
// request with a fixed body of -size bytes (64 by default) and status 200.
//
//	go run ./bench/upstream -addr 127.0.0.1:18080 -size 64
package main

import (
	"bytes"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	size := flag.Int("size", 64, "response body size in bytes")
	flag.Parse()

	if *size < 0 {
		log.Fatal("upstream: -size must be >= 0")
	}
	body := bytes.Repeat([]byte("x"), *size)
	contentType := []string{"text/plain; charset=utf-8"}
	contentLength := []string{strconv.Itoa(len(body))}

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Drain any request body so the connection stays reusable.
		if r.Body != nil {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		h := w.Header()
		h["Content-Type"] = contentType
		h["Content-Length"] = contentLength
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	log.Printf("upstream: listening on %s, body %d bytes", ln.Addr(), len(body))
	log.Fatal(srv.Serve(ln))
}

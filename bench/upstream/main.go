// Command upstream is the benchmark's origin server: it answers every
// request with a fixed body of -size bytes (64 by default) and status 200.
//
//	go run ./bench/upstream -addr 127.0.0.1:18080 -size 64
//
// With -h2c it also serves HTTP/2 with prior knowledge (cleartext) on the
// same port, for bench/h2.sh's direct h2load run.
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
	h2c := flag.Bool("h2c", false, "also serve HTTP/2 with prior knowledge (h2c)")
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
	if *h2c {
		p := new(http.Protocols)
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = p
	}
	log.Printf("upstream: listening on %s, body %d bytes", ln.Addr(), len(body))
	log.Fatal(srv.Serve(ln))
}

// Command echo is a tiny demo upstream for the quickstart: it answers every
// request with a JSON description of what it received, so you can see what
// the sidecar forwarded (path, headers such as X-Forwarded-For, body size).
//
//	go run ./examples/echo -addr 127.0.0.1:8080
//
// With -fail-ratio it is a flaky upstream: that share of requests, drawn at
// random, gets -fail-status (503 by default) instead, so retries, breakers
// and the spool have something to do:
//
//	go run ./examples/echo -fail-ratio 0.3
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	failRatio := flag.Float64("fail-ratio", 0, "share of requests, 0 to 1, answered with -fail-status instead of the echo")
	failStatus := flag.Int("fail-status", http.StatusServiceUnavailable, "the status of a failed request, 400 to 599")
	flag.Parse()
	h, err := newHandler(*failRatio, *failStatus, rand.Float64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(2)
	}
	srv := &http.Server{
		Addr:              *addr,
		ReadHeaderTimeout: 5 * time.Second,
		Handler:           h,
	}
	log.Printf("echo upstream listening on http://%s (fail ratio %g)", *addr, *failRatio)
	log.Fatal(srv.ListenAndServe())
}

// newHandler returns the echo handler. A request fails, with failStatus,
// when draw() returns less than failRatio; draw returns values in [0, 1).
func newHandler(failRatio float64, failStatus int, draw func() float64) (http.Handler, error) {
	if !(failRatio >= 0 && failRatio <= 1) {
		return nil, fmt.Errorf("-fail-ratio must be between 0 and 1, got %g", failRatio)
	}
	if failStatus < 400 || failStatus > 599 {
		return nil, fmt.Errorf("-fail-status must be between 400 and 599, got %d", failStatus)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if failRatio > 0 && draw() < failRatio {
			w.WriteHeader(failStatus)
			json.NewEncoder(w).Encode(map[string]any{"error": "deliberate failure (-fail-ratio)"})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"method":     r.Method,
			"path":       r.URL.RequestURI(),
			"host":       r.Host,
			"headers":    r.Header,
			"body_bytes": n,
		})
	}), nil
}

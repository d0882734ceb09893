// Command echo is a tiny demo upstream for the quickstart: it answers every
// request with a JSON description of what it received, so you can see what
// the sidecar forwarded (path, headers such as X-Forwarded-For, body size).
//
//	go run ./examples/echo -addr 127.0.0.1:8080
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	srv := &http.Server{
		Addr:              *addr,
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{
				"method":     r.Method,
				"path":       r.URL.RequestURI(),
				"host":       r.Host,
				"headers":    r.Header,
				"body_bytes": n,
			})
		}),
	}
	log.Printf("echo upstream listening on http://%s", *addr)
	log.Fatal(srv.ListenAndServe())
}

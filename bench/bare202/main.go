// Command bare202 is the async load's ceiling (bench/run.sh): the
// sidecar's own HTTP/1.1 server (internal/h1server) answering every
// request with the async route's 202 after reading its body, and doing
// nothing else: no routing, no policy, no spool. What an async route
// costs beyond it is the route's own work; what it costs up to it is the
// HTTP layer's, which no spool can go faster than (docs/BENCHMARKS.md).
//
//	bare202 -addr 127.0.0.1:18699
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"

	"github.com/sidecar-proxy/sidecar/internal/h1server"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18699", "listen address (loopback)")
	std := flag.Bool("nethttp", false, "serve with net/http's server instead of internal/h1server")
	flag.Parse()
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("bare202: -addr %q: want a loopback host:port", *addr)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	const body = `{"spooled":true,"id":"0000000000000000-00000000"}` + "\n"
	ctype := []string{"application/json"}
	clen := []string{strconv.Itoa(len(body))}
	id := []string{"0000000000000000-00000000"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hd := w.Header()
		hd["Content-Type"] = ctype
		hd["Content-Length"] = clen
		hd["Sidecar-Spool-Id"] = id
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, body)
	})
	if *std {
		log.Fatal((&http.Server{Handler: h}).Serve(l))
	}
	log.Fatal((&h1server.Server{Handler: h}).Serve(l))
}

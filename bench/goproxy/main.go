// Command goproxy is the benchmark's baseline: Go's plain
// net/http/httputil.ReverseProxy in front of one upstream.
//
//	go run ./bench/goproxy -addr 127.0.0.1:18002 -upstream http://127.0.0.1:18080 [-pool]
//
// The only deviation from a stock ReverseProxy is the transport's idle pool
// size (-idle, default 256): http.DefaultTransport keeps only 2 idle
// connections per host, which under 64 concurrent client connections makes the
// proxy open and close upstream connections continuously. HAProxy
// (http-reuse always) and nginx (keepalive 64) are given the same courtesy.
// Use -idle 2 to measure the completely stock behaviour.
//
// -pool adds a sync.Pool-backed httputil.BufferPool, so the 32 KiB copy
// buffer ReverseProxy otherwise allocates per response is reused.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

const bufSize = 32 * 1024

// bufferPool implements httputil.BufferPool on top of sync.Pool.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any {
		b := make([]byte, bufSize)
		return &b
	}}}
}

func (bp *bufferPool) Get() []byte { return *(bp.p.Get().(*[]byte)) }

func (bp *bufferPool) Put(b []byte) {
	if cap(b) < bufSize {
		return
	}
	b = b[:bufSize]
	bp.p.Put(&b)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18002", "listen address")
	upstream := flag.String("upstream", "http://127.0.0.1:18080", "upstream base URL")
	pool := flag.Bool("pool", false, "use a sync.Pool BufferPool for the response copy buffer")
	idle := flag.Int("idle", 256, "Transport.MaxIdleConnsPerHost (stock DefaultTransport uses 2)")
	flag.Parse()

	target, err := url.Parse(*upstream)
	if err != nil || target.Scheme == "" || target.Host == "" {
		log.Fatalf("goproxy: bad -upstream %q: %v", *upstream, err)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 0 // no global cap
	tr.MaxIdleConnsPerHost = *idle

	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: tr,
	}
	if *pool {
		rp.BufferPool = newBufferPool()
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("goproxy: %v", err)
	}
	srv := &http.Server{
		Handler:           rp,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	log.Printf("goproxy: %s -> %s (pool=%v idle=%d)", ln.Addr(), target, *pool, *idle)
	log.Fatal(srv.Serve(ln))
}

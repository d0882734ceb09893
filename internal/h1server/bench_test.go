package h1server

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
)

// BenchmarkServe compares net/http's server and this one, both behind
// h1guard and consulting it as the proxy does, answering 64 bytes to
// keep-alive GETs from 16 connections (the client side is the same
// minimal code for both): go test -bench Serve -benchmem -cpu 1.
func BenchmarkServe(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 64)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h1guard.FromContext(r.Context()).Next(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	b.Run("net-http", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		s := &http.Server{Handler: h, ConnContext: h1guard.ConnContext, ReadHeaderTimeout: 10 * time.Second}
		go s.Serve(h1guard.Listen(ln))
		defer s.Close()
		benchClients(b, ln.Addr().String())
	})
	b.Run("h1server", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		s := &Server{Handler: h, ConnContext: h1guard.ConnContext, ReadHeaderTimeout: 10 * time.Second}
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.Serve(h1guard.Listen(ln))
		}()
		defer func() {
			s.Close()
			<-done
		}()
		benchClients(b, ln.Addr().String())
	})
}

func benchClients(b *testing.B, addr string) {
	const conns = 16
	req := []byte("GET /bench HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			for left.Add(-1) >= 0 {
				if _, err := c.Write(req); err != nil {
					b.Error(err)
					return
				}
				n := -1
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						b.Error(err)
						return
					}
					if len(line) <= 2 {
						break
					}
					if k, v, ok := bytes.Cut(line, []byte(": ")); ok && string(k) == "Content-Length" {
						n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
					}
				}
				if _, err := br.Discard(n); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

var _ = io.Discard

// Command idleconns holds many idle keep-alive HTTP/1.1 client connections
// open against a proxy, for bench/run.sh's memory load: it opens -n
// connections, sends one GET on each and reads its whole answer, then
// leaves every connection open and idle.
//
//	idleconns -url http://127.0.0.1:18601/ -n 10000
//
// Once every connection has been tried it prints one JSON line on stdout:
//
//	{"url":"http://127.0.0.1:18601/","n":10000,"opened":10000,"failed":0,
//	 "open_s":2.1,"first_error":""}
//
// and holds the connections until SIGTERM or SIGINT, or -hold has passed,
// then closes them and exits. Opening is bounded by -timeout per
// connection (dial, request and answer) and by -open-timeout in all;
// -concurrency connections are opened at a time. It raises its own open
// file limit to the hard limit. Only loopback URLs are accepted.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

type result struct {
	URL        string  `json:"url"`
	N          int     `json:"n"`
	Opened     int64   `json:"opened"`
	Failed     int64   `json:"failed"`
	OpenS      float64 `json:"open_s"`
	FirstError string  `json:"first_error"`
}

func main() {
	rawURL := flag.String("url", "", "target URL (loopback only)")
	n := flag.Int("n", 10000, "connections to open and hold")
	conc := flag.Int("concurrency", 128, "connections being opened at a time")
	timeout := flag.Duration("timeout", 5*time.Second, "per connection: dial, one request and its answer")
	openTimeout := flag.Duration("open-timeout", 60*time.Second, "opening all of them")
	hold := flag.Duration("hold", 120*time.Second, "hold the idle connections at most this long")
	flag.Parse()
	if err := run(*rawURL, *n, *conc, *timeout, *openTimeout, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(2)
	}
}

func run(rawURL string, n, conc int, timeout, openTimeout, hold time.Duration) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("-url %q: want an http://127.0.0.1:PORT/ URL", rawURL)
	}
	host, _, err := net.SplitHostPort(u.Host)
	if err != nil {
		return fmt.Errorf("-url %q: %v", rawURL, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-url %q is not a loopback address", rawURL)
	}
	if n < 1 || conc < 1 || timeout <= 0 || openTimeout <= 0 || hold <= 0 {
		return fmt.Errorf("-n, -concurrency, -timeout, -open-timeout and -hold must be positive")
	}
	raiseNoFile()
	path := u.RequestURI()
	request := []byte("GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: idleconns\r\n\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	var (
		mu       sync.Mutex
		conns    = make([]net.Conn, 0, n)
		opened   atomic.Int64
		failed   atomic.Int64
		firstErr atomic.Value
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	start := time.Now()
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: timeout}
			for next.Add(1) <= int64(n) {
				if ctx.Err() != nil {
					fail(fmt.Errorf("not opened within -open-timeout %v", openTimeout))
					continue
				}
				c, err := openOne(ctx, &d, u.Host, request, timeout)
				if err != nil {
					fail(err)
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	res := result{URL: rawURL, N: n, Opened: opened.Load(), Failed: failed.Load(), OpenS: stats.Round1(time.Since(start).Seconds())}
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	if err := stats.PrintJSON(res); err != nil {
		return err
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case <-time.After(hold):
	}
	for _, c := range conns {
		_ = c.Close()
	}
	return nil
}

// openOne dials, sends one GET and reads its whole answer, which must be a
// 200 that keeps the connection open; it returns the idle connection.
func openOne(ctx context.Context, d *net.Dialer, addr string, request []byte, timeout time.Duration) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(request); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
	case resp.StatusCode != http.StatusOK:
		err = fmt.Errorf("status %d", resp.StatusCode)
	case resp.Close:
		err = fmt.Errorf("the server closes the connection after the answer")
	case br.Buffered() > 0:
		err = fmt.Errorf("%d unexpected bytes after the answer", br.Buffered())
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// raiseNoFile lifts the soft open-file limit to the hard one (Go does this
// at start-up on Linux too; being explicit costs nothing).
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

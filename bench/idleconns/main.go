// Command idleconns holds many idle keep-alive HTTP/1.1 client connections
// open against a proxy, for bench/run.sh's memory load: it opens -n
// connections, sends one GET on each and reads its whole answer, then
// leaves every connection open and idle.
//
//	idleconns -url http://127.0.0.1:18601/ -n 10000
//
// With -proto h2c the connections speak HTTP/2 with prior knowledge
// instead: the preface, SETTINGS, one GET on stream 1 and its whole
// answer (the server's SETTINGS acknowledged, PINGs answered), then the
// connection stays open with no stream.
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
	"bytes"
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

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sidecar-proxy/sidecar/bench/internal/stats"
)

type result struct {
	URL        string  `json:"url"`
	Proto      string  `json:"proto"`
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
	proto := flag.String("proto", "http1", "http1, or h2c: HTTP/2 with prior knowledge")
	flag.Parse()
	if err := run(*rawURL, *proto, *n, *conc, *timeout, *openTimeout, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(2)
	}
}

func run(rawURL, proto string, n, conc int, timeout, openTimeout, hold time.Duration) error {
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
	var request []byte
	switch proto {
	case "http1":
		request = []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: idleconns\r\n\r\n")
	case "h2c":
		request = h2cRequest(u)
	default:
		return fmt.Errorf("-proto %q: want http1 or h2c", proto)
	}
	raiseNoFile()

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
				c, err := openOne(ctx, &d, u.Host, proto, request, timeout)
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
	res := result{URL: rawURL, Proto: proto, N: n, Opened: opened.Load(), Failed: failed.Load(), OpenS: stats.Round1(time.Since(start).Seconds())}
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
func openOne(ctx context.Context, d *net.Dialer, addr, proto string, request []byte, timeout time.Duration) (net.Conn, error) {
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
	if proto == "h2c" {
		err = readH2Answer(c, br)
	} else {
		err = readAnswer(br)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// readAnswer reads one HTTP/1.1 answer, which must be a 200 that keeps
// the connection open, and nothing after it.
func readAnswer(br *bufio.Reader) error {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
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
	return err
}

// h2cRequest is what an h2c connection sends at once: the preface,
// SETTINGS and WINDOW_UPDATE that let 1 MiB of answer come without
// waiting, and a GET for u on stream 1.
func h2cRequest(u *url.URL) []byte {
	var block, out bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", u.Host}, {":path", u.RequestURI()}, {"user-agent", "idleconns"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	fr.WriteWindowUpdate(0, 1<<20)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	return out.Bytes()
}

// readH2Answer reads the frames of an h2c connection until stream 1 has
// ended, which must be with a 200; it acknowledges the server's SETTINGS
// and answers its PINGs on the way.
func readH2Answer(c net.Conn, br *bufio.Reader) error {
	fr := http2.NewFramer(c, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	status := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					return err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := fr.WritePing(true, f.Data); err != nil {
					return err
				}
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			return fmt.Errorf("RST_STREAM %v", f.ErrCode)
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 && status == "" {
				status = f.PseudoValue("status")
			}
			if f.StreamID == 1 && f.StreamEnded() {
				return h2Status(status)
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return h2Status(status)
			}
		}
	}
}

func h2Status(status string) error {
	if status != "200" {
		return fmt.Errorf("status %q", status)
	}
	return nil
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

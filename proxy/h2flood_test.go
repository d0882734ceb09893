package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 floods against the sidecar end to end (issue 16): an app's h2c
// connection on an auto listener, frames written by hand. Each flood is
// cut off, or refused, at a bound, and other apps are served meanwhile.
// internal/h2server's own tests hold the server alone to the same
// protections (TestContinuationFlood, TestRapidReset, TestTooManyStreams,
// TestPingFloodNotRead); these hold the sidecar to them, with its
// handler and upstream behind.

// h2flood is an app's HTTP/2 connection, written frame by frame through
// a buffer (flush sends it).
type h2flood struct {
	nc  net.Conn
	bw  *bufio.Writer
	fr  *http2.Framer
	wmu sync.Mutex // bw, fr's writes, hb, enc
	hb  bytes.Buffer
	enc *hpack.Encoder
}

// dialH2Flood opens an h2c connection to addr and sends the preface and
// settings. rcvBuf, if not 0, is the socket's receive buffer, set before
// the connect, so that a peer's writes back up sooner.
func dialH2Flood(t *testing.T, addr string, rcvBuf int, settings ...http2.Setting) *h2flood {
	t.Helper()
	d := net.Dialer{}
	if rcvBuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	f := &h2flood{nc: nc, bw: bufio.NewWriterSize(nc, 32<<10)}
	f.fr = http2.NewFramer(f.bw, nc)
	f.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.enc = hpack.NewEncoder(&f.hb)
	nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	f.bw.WriteString(http2.ClientPreface)
	if err := f.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	if err := f.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// headers encodes a GET of path's header block.
func (f *h2flood) headers(path string) []byte {
	f.hb.Reset()
	for _, hf := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app.test"}, {":path", path}} {
		f.enc.WriteField(hpack.HeaderField{Name: hf[0], Value: hf[1]})
	}
	return f.hb.Bytes()
}

// request writes the HEADERS of a GET of path on stream id, unflushed.
func (f *h2flood) request(id uint32, path string) error {
	return f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: f.headers(path), EndStream: true, EndHeaders: true})
}

// locked runs fn with the write lock held, then flushes.
func (f *h2flood) locked(fn func() error) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	return f.bw.Flush()
}

// next reads frames, acknowledging SETTINGS, until one that want
// accepts, or the connection ends (nil, and the error).
func (f *h2flood) next(want func(http2.Frame) bool) (http2.Frame, error) {
	f.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		if sf, ok := fr.(*http2.SettingsFrame); ok && !sf.IsAck() {
			f.locked(f.fr.WriteSettingsAck)
		}
		if want(fr) {
			return fr, nil
		}
	}
}

// untilClosed reads until the server closes the connection, and reports
// whether it did within the read deadline.
func (f *h2flood) untilClosed(d time.Duration) bool {
	f.nc.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, f.nc)
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// isGoAway accepts a GOAWAY frame.
func isGoAway(fr http2.Frame) bool { _, ok := fr.(*http2.GoAwayFrame); return ok }

// h2Clients are other apps: one speaking h2c, one HTTP/1.1, each on its
// own connection.
type h2Clients struct{ h2, h1 *http.Client }

func newH2Clients(t *testing.T) h2Clients {
	t.Helper()
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	tr2 := &http.Transport{Protocols: protos}
	tr1 := &http.Transport{}
	t.Cleanup(tr2.CloseIdleConnections)
	t.Cleanup(tr1.CloseIdleConnections)
	return h2Clients{
		h2: &http.Client{Transport: tr2, Timeout: 10 * time.Second},
		h1: &http.Client{Transport: tr1, Timeout: 10 * time.Second},
	}
}

// served checks that both other apps are answered by the upstream.
func (c h2Clients) served(t *testing.T, url, when string) {
	t.Helper()
	for _, cl := range []*http.Client{c.h2, c.h1} {
		start := time.Now()
		resp, err := cl.Get(url)
		if err != nil {
			t.Errorf("another app's GET %s: %v", when, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "hello from ") {
			t.Errorf("another app's GET (%s) %s = %d %q, want 200 from the upstream", resp.Proto, when, resp.StatusCode, body)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("another app's GET (%s) %s took %v, want it served at once", resp.Proto, when, el)
		}
	}
}

// floodUpstream is an upstream that answers at once, except /hold, which
// it holds until its request is cancelled; it counts requests by path
// and those in flight.
type floodUpstream struct {
	*upstream
	mu             sync.Mutex
	paths          map[string]int
	active, peak   atomic.Int64
	releaseHolders chan struct{}
}

func newFloodUpstream(t *testing.T) *floodUpstream {
	u := &floodUpstream{paths: map[string]int{}, releaseHolders: make(chan struct{})}
	u.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.paths[r.URL.Path]++
		u.mu.Unlock()
		n := u.active.Add(1)
		defer u.active.Add(-1)
		for p := u.peak.Load(); n > p && !u.peak.CompareAndSwap(p, n); p = u.peak.Load() {
		}
		if r.URL.Path == "/hold" {
			select {
			case <-r.Context().Done():
			case <-u.releaseHolders:
			}
			return
		}
		io.WriteString(w, "hello from "+r.URL.Path)
	})
	t.Cleanup(func() { close(u.releaseHolders) })
	return u
}

func (u *floodUpstream) count(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.paths[path]
}

// TestH2ContinuationFloodThroughSidecar: a header block that never ends,
// CONTINUATION after CONTINUATION (CVE-2024-27316), ends the connection
// with GOAWAY, never reaches the upstream, and costs the app only a
// bounded number of bytes sent before it is cut off.
func TestH2ContinuationFloodThroughSidecar(t *testing.T) {
	up := newFloodUpstream(t)
	sc := startSidecar(t, oneRoute("{}"), up.upstream)
	others := newH2Clients(t)
	f := dialH2Flood(t, sc.addr["app"], 0)
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.locked(func() error {
			return f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: f.headers("/continuation"), EndStream: true})
		}); err != nil {
			return
		}
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for range 100000 { // at most 400 MiB: the server cuts it off long before
			hb.Reset()
			enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("v", 4<<10)})
			if err := f.locked(func() error { return f.fr.WriteContinuation(1, false, hb.Bytes()) }); err != nil {
				return
			}
			sent.Add(int64(hb.Len()))
		}
	}()
	others.served(t, sc.url("/during"), "during a CONTINUATION flood")
	fr, err := f.next(isGoAway)
	if err != nil {
		t.Fatalf("CONTINUATION flood: reading the server's frames: %v, want GOAWAY", err)
	}
	if ga := fr.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeProtocol && ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("CONTINUATION flood: GOAWAY %v, want PROTOCOL_ERROR or ENHANCE_YOUR_CALM", ga.ErrCode)
	}
	if !f.untilClosed(10 * time.Second) {
		t.Error("CONTINUATION flood: the connection stayed open after GOAWAY")
	}
	<-done
	if n := sent.Load(); n > 64<<20 {
		t.Errorf("CONTINUATION flood: the server took %d MiB of header block before cutting it off, want far less", n>>20)
	}
	if n := up.count("/continuation"); n != 0 {
		t.Errorf("CONTINUATION flood: the upstream saw the request %d times, want 0", n)
	}
	others.served(t, sc.url("/after"), "after a CONTINUATION flood")
}

// TestH2ControlFloodsNotReadThroughSidecar: an app that floods SETTINGS
// or PINGs and never reads the acknowledgements is cut off once they
// pile up (docs/design.md, "HTTP/2 connections": 512 KiB), after a
// bounded number of frames, rather than growing the sidecar's memory.
func TestH2ControlFloodsNotReadThroughSidecar(t *testing.T) {
	up := newFloodUpstream(t)
	sc := startSidecar(t, oneRoute("{}"), up.upstream)
	others := newH2Clients(t)
	floods := []struct {
		name  string
		frame func(f *h2flood) error
		size  int // bytes a frame takes on the wire
	}{
		{"SETTINGS", func(f *h2flood) error {
			return f.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		}, 9 + 6},
		{"PING", func(f *h2flood) error { return f.fr.WritePing(false, [8]byte{1}) }, 9 + 8},
	}
	for _, tt := range floods {
		t.Run(tt.name, func(t *testing.T) {
			// A small receive buffer: the sidecar's acknowledgements back
			// up after a few KiB rather than filling loopback's buffers.
			f := dialH2Flood(t, sc.addr["app"], 4<<10)
			var frames atomic.Int64
			done := make(chan error, 1)
			go func() {
				const burst = 1024
				for range 40000 { // at most 40M frames: cut off long before
					err := f.locked(func() error {
						for range burst {
							if err := tt.frame(f); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						done <- err
						return
					}
					frames.Add(burst)
				}
				done <- nil
			}()
			others.served(t, sc.url("/during"), "during a "+tt.name+" flood")
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				f.nc.Close()
				<-done
				t.Fatalf("%s flood: still taking frames after 30 s (%d sent)", tt.name, frames.Load())
			}
			if err == nil {
				t.Fatalf("%s flood: the sidecar took all %d frames without cutting the connection off", tt.name, frames.Load())
			}
			n := frames.Load()
			t.Logf("%s flood cut off after %d frames (%d KiB): %v", tt.name, n, n*int64(tt.size)>>10, err)
			// The acknowledgements held for the app are bounded (512 KiB,
			// plus the sockets' buffers): far from what it sent.
			if sentBytes := n * int64(tt.size); sentBytes > 256<<20 {
				t.Errorf("%s flood: the sidecar took %d MiB of frames before cutting it off", tt.name, sentBytes>>20)
			}
			others.served(t, sc.url("/after"), "after a "+tt.name+" flood")
		})
	}
}

// TestH2RapidResetThroughSidecar: an app that opens streams and resets
// them at once (CVE-2023-44487) has no more requests in flight upstream
// than MaxConcurrentStreams, every reset stream's upstream request is
// cancelled, and it is either served on or cut off with
// ENHANCE_YOUR_CALM; other apps are served meanwhile.
func TestH2RapidResetThroughSidecar(t *testing.T) {
	up := newFloodUpstream(t)
	sc := startSidecar(t, oneRoute("{}"), up.upstream)
	others := newH2Clients(t)
	f := dialH2Flood(t, sc.addr["app"], 0)
	const pairs = 5 * h2MaxConcurrentStreams
	done := make(chan error, 1)
	go func() {
		for id := uint32(1); id < 2*pairs; id += 2 {
			err := f.locked(func() error {
				if err := f.request(id, "/hold"); err != nil {
					return err
				}
				return f.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			})
			if err != nil {
				done <- err
				return
			}
		}
		// A last request on the same connection, to learn that the server
		// read every pair.
		done <- f.locked(func() error { return f.request(2*pairs+1, "/last") })
	}()
	others.served(t, sc.url("/during"), "during a rapid reset")
	fr, err := f.next(func(fr http2.Frame) bool {
		if h, ok := fr.(*http2.MetaHeadersFrame); ok && h.StreamID == 2*pairs+1 {
			return true
		}
		return isGoAway(fr)
	})
	if err != nil {
		t.Fatalf("rapid reset: reading the server's frames: %v, want the last answer or GOAWAY", err)
	}
	if ga, ok := fr.(*http2.GoAwayFrame); ok {
		if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("rapid reset: GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
		}
		t.Logf("rapid reset: cut off with GOAWAY %v", ga.ErrCode)
	} else if st := fr.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "200" {
		t.Errorf("rapid reset: the last request = %s, want 200", st)
	}
	<-done
	if p := up.peak.Load(); p > h2MaxConcurrentStreams+2 {
		t.Errorf("rapid reset: %d upstream requests in flight at once, want at most %d (MaxConcurrentStreams, and the other apps')", p, h2MaxConcurrentStreams+2)
	}
	// Every reset stream's upstream request is cancelled: none is left
	// holding the upstream.
	poll.Until(t, 10*time.Second, "the reset streams' upstream requests to end", func() bool { return up.active.Load() == 0 })
	t.Logf("rapid reset: %d of %d reset requests reached the upstream, at most %d at once", up.count("/hold"), pairs, up.peak.Load())
	others.served(t, sc.url("/after"), "after a rapid reset")
}

// TestH2StreamCountFloodThroughSidecar: an app that opens more streams
// than SETTINGS_MAX_CONCURRENT_STREAMS and keeps them open (it grants no
// flow-control window, so no answer can end) has the streams past the
// limit refused, never forwarded; other apps are served meanwhile.
func TestH2StreamCountFloodThroughSidecar(t *testing.T) {
	up := newFloodUpstream(t)
	sc := startSidecar(t, oneRoute("{}"), up.upstream)
	others := newH2Clients(t)
	f := dialH2Flood(t, sc.addr["app"], 0, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	// Wait for the server's SETTINGS, and acknowledge them, so that a
	// refused stream is refused for the limit (PROTOCOL_ERROR, or
	// REFUSED_STREAM while settings are unacknowledged).
	if _, err := f.next(func(fr http2.Frame) bool { sf, ok := fr.(*http2.SettingsFrame); return ok && !sf.IsAck() }); err != nil {
		t.Fatal(err)
	}
	const open, extra = h2MaxConcurrentStreams, 500
	// The first streams fill the limit: each one's answer waits for a
	// window that never comes.
	go f.locked(func() error {
		for id := uint32(1); id < 2*open; id += 2 {
			if err := f.request(id, "/held"); err != nil {
				return err
			}
		}
		return nil
	})
	answered := 0
	statuses := map[string]int{}
	if _, err := f.next(func(fr http2.Frame) bool {
		if h, ok := fr.(*http2.MetaHeadersFrame); ok {
			answered++
			outcome := ""
			for _, hf := range h.RegularFields() {
				if hf.Name == strings.ToLower(HeaderOutcome) {
					outcome = hf.Value
				}
			}
			statuses[h.PseudoValue("status")+" "+outcome]++
		}
		if rst, ok := fr.(*http2.RSTStreamFrame); ok {
			t.Errorf("stream %d of the first %d reset (%v), want it answered", rst.StreamID, open, rst.ErrCode)
		}
		return answered == open
	}); err != nil {
		t.Fatalf("reading the answers' HEADERS: %v (%d of %d)", err, answered, open)
	}
	if statuses["200 "] != open {
		// Not this test's concern, but worth seeing: answers the proxy
		// made itself (status and outcome) while 1000 requests went up.
		t.Logf("answers to the first %d streams, by status and outcome: %v", open, statuses)
	}
	others.served(t, sc.url("/during"), "while one app holds every stream it may open")
	// Every stream past the limit is refused.
	go f.locked(func() error {
		for id := uint32(2*open + 1); id < 2*(open+extra); id += 2 {
			if err := f.request(id, "/extra"); err != nil {
				return err
			}
		}
		return nil
	})
	refused := 0
	if _, err := f.next(func(fr http2.Frame) bool {
		if rst, ok := fr.(*http2.RSTStreamFrame); ok {
			if rst.StreamID <= 2*open || (rst.ErrCode != http2.ErrCodeProtocol && rst.ErrCode != http2.ErrCodeRefusedStream) {
				t.Errorf("RST_STREAM stream %d %v, want streams past %d refused", rst.StreamID, rst.ErrCode, 2*open)
			}
			refused++
		}
		if _, ok := fr.(*http2.MetaHeadersFrame); ok {
			t.Errorf("a stream past the limit was answered")
		}
		return refused == extra
	}); err != nil {
		t.Fatalf("reading the refusals: %v (%d of %d)", err, refused, extra)
	}
	if n, m := up.count("/held"), up.count("/extra"); n > open || m != 0 {
		t.Errorf("upstream saw %d of the first streams and %d past the limit, want at most %d and 0", n, m, open)
	}
	others.served(t, sc.url("/after"), "after a stream-count flood")
}

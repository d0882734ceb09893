package h2server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// TestMain fails the package's tests if any goroutine outlives them:
// every connection, worker and Serve loop a test starts must have ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type ctxKey struct{}

// start serves s on a loopback socket until the test ends, and returns
// its address.
func start(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if s.ErrorLog == nil {
		s.ErrorLog = log.New(io.Discard, "", 0)
	}
	if s.ConnContext == nil {
		s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, c.RemoteAddr().String())
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return ln.Addr().String()
}

// client is net/http's transport speaking HTTP/2 with prior knowledge.
func client(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestRequestAndResponse(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the body: %v", err)
		}
		got := fmt.Sprintf("%s %s %s %d host=%s cl=%d x=%s body=%s remote=%v ctx=%v",
			r.Method, r.URL.RequestURI(), r.Proto, r.ProtoMajor, r.Host, r.ContentLength,
			r.Header.Get("X-Test"), body, r.RemoteAddr != "", r.Context().Value(ctxKey{}) == r.RemoteAddr)
		w.Header().Set("X-Reply", "yes")
		io.WriteString(w, got)
	})})
	c := client(t)
	req, _ := http.NewRequest("POST", "http://"+addr+"/p?q=1", strings.NewReader("hello"))
	req.Header.Set("X-Test", "v")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "POST /p?q=1 HTTP/2.0 2 host=" + addr + " cl=5 x=v body=hello remote=true ctx=true"
	if string(body) != want || resp.Header.Get("X-Reply") != "yes" || resp.ContentLength != int64(len(want)) {
		t.Errorf("got %q (X-Reply %q, length %d), want %q", body, resp.Header.Get("X-Reply"), resp.ContentLength, want)
	}
	if resp.Header.Get("Date") == "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("Date %q, Content-Type %q: want both set as net/http sets them", resp.Header.Get("Date"), resp.Header.Get("Content-Type"))
	}

	// A GET has no body, and a large answer leaves in many frames.
	big := bytes.Repeat([]byte("0123456789"), 100_000)
	c2 := client(t)
	addr2 := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != http.NoBody || r.ContentLength != 0 {
			t.Errorf("GET body %T, length %d", r.Body, r.ContentLength)
		}
		w.Write(big)
	})})
	resp, err = c2.Get("http://" + addr2 + "/")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, big) {
		t.Errorf("read %d bytes, want %d", len(got), len(big))
	}
}

// TestTrailers: declared trailers and http.TrailerPrefix ones reach the
// client after a flushed body, as gRPC needs.
func TestTrailers(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		w.Write([]byte("msg"))
		http.NewResponseController(w).Flush()
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", "fine")
	})})
	resp, err := client(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "msg" || resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "fine" {
		t.Errorf("body %q, trailers %v", body, resp.Trailer)
	}
	if resp.Header.Get("Grpc-Status") != "" {
		t.Error("a trailer set after WriteHeader went out with the headers")
	}
}

// TestFullDuplex: the handler answers each piece of the request body as
// it comes, while the client is still sending (gRPC bidi streaming), and
// both sides' windows refill past their first 64 KiB.
func TestFullDuplex(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			t.Error(err)
		}
		w.WriteHeader(200)
		rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				if err := rc.Flush(); err != nil {
					t.Error(err)
					return
				}
			}
			if err != nil {
				return
			}
		}
	})})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	piece := bytes.Repeat([]byte("x"), 48<<10)
	for i := range 40 { // 1.9 MiB each way, one piece at a time
		piece[0] = byte(i)
		if _, err := pw.Write(piece); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(piece))
		if _, err := io.ReadFull(resp.Body, got); err != nil {
			t.Fatalf("piece %d: %v", i, err)
		}
		if !bytes.Equal(got, piece) {
			t.Fatalf("piece %d came back changed", i)
		}
	}
	pw.Close()
	if rest, _ := io.ReadAll(resp.Body); len(rest) != 0 {
		t.Errorf("%d bytes after the last piece", len(rest))
	}
}

// TestResetCancelsContext: a client that gives up on a stream resets it;
// the handler's context ends, and the connection serves on.
func TestResetCancelsContext(t *testing.T) {
	started := make(chan struct{})
	cancelled := make(chan struct{})
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			return
		}
		close(started)
		<-r.Context().Done()
		close(cancelled)
	})})
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/wait", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Do(req)
		errc <- err
	}()
	<-started
	cancel()
	<-cancelled
	if err := <-errc; err == nil {
		t.Error("the cancelled request succeeded")
	}
	resp, err := c.Get("http://" + addr + "/ok")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestReadDeadline: http.ResponseController's SetReadDeadline bounds the
// body's reads, as the proxy's body_idle_timeout uses it.
func TestReadDeadline(t *testing.T) {
	errc := make(chan error, 1)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := io.ReadAll(r.Body)
		errc <- err
		w.WriteHeader(408)
	})})
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	go pw.Write([]byte("some"))
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a stalled body read returned %v, want a deadline error", err)
	}
}

// TestGracefulShutdown: Shutdown sends GOAWAY naming the stream in
// flight, which still completes, then closes the connection, and
// returns once it has.
func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "done")
	})}
	addr := start(t, s)
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	<-arrived
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if ga := f.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Errorf("GOAWAY %v last stream %d, want NO_ERROR naming stream 1", ga.ErrCode, ga.LastStreamID)
	}
	// A stream after the GOAWAY is not served.
	rc.request(3, true, "GET", "/", nil)
	close(release)
	var body []byte
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			break // the connection ends
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamID != 1 {
				t.Errorf("DATA on stream %d", f.StreamID)
			}
			body = append(body, f.Data()...)
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				t.Errorf("HEADERS on stream %d", f.StreamID)
			}
		}
	}
	if string(body) != "done" {
		t.Errorf("the stream in flight got %q, want its whole answer", body)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
}

// TestShutdownBoundedThenClose: Shutdown returns ctx's error while a
// stream holds on; Close then cancels it.
func TestShutdownBoundedThenClose(t *testing.T) {
	arrived := make(chan struct{})
	ended := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
		close(ended)
	})}
	addr := start(t, s)
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the context's error", err)
	}
	s.Close()
	<-ended
}

// TestIdleTimeout: a connection without streams for IdleTimeout gets
// GOAWAY and is closed.
func TestIdleTimeout(t *testing.T) {
	addr := start(t, &Server{Handler: http.NotFoundHandler(), IdleTimeout: 100 * time.Millisecond})
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if ga := f.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeNo {
		t.Errorf("GOAWAY %v", ga.ErrCode)
	}
	rc.untilClosed(t)
}

// TestMalformedRequests: requests HTTP/2 forbids are refused with
// RST_STREAM PROTOCOL_ERROR before any handler runs, and the connection
// serves on.
func TestMalformedRequests(t *testing.T) {
	var calls atomic.Int32
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.ReadAll(r.Body)
	})})
	rc := dialRaw(t, addr)
	id := uint32(1)
	for _, tc := range []struct {
		name   string
		fields [][2]string
	}{
		{"connection-specific field", [][2]string{{"connection", "keep-alive"}}},
		{"transfer-encoding", [][2]string{{"transfer-encoding", "chunked"}}},
		{"TE other than trailers", [][2]string{{"te", "gzip"}}},
		{"upper-case name", [][2]string{{"X-Upper", "v"}}},
		{"no :path", [][2]string{{":path", ""}}},
		{"host unlike :authority", [][2]string{{"host", "other.example"}}},
	} {
		rc.request(id, true, "GET", "/", tc.fields)
		f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
		if rst := f.(*http2.RSTStreamFrame); rst.StreamID != id || rst.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("%s: RST_STREAM stream %d %v, want stream %d PROTOCOL_ERROR", tc.name, rst.StreamID, rst.ErrCode, id)
		}
		id += 2
	}
	// A body longer than its Content-Length.
	rc.request(id, false, "POST", "/", [][2]string{{"content-length", "2"}})
	rc.write(t, func() error { return rc.fr.WriteData(id, true, []byte("toolong")) })
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != id || rst.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("content-length mismatch: RST_STREAM stream %d %v", rst.StreamID, rst.ErrCode)
	}
	id += 2
	rc.request(id, true, "GET", "/fine", nil)
	rc.next(t, func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == id
	})
	// The over-long body's handler runs on a worker of its own, which
	// may come after the good request's answer.
	if !poll.Within(10*time.Second, func() bool { return calls.Load() == 2 }) {
		t.Errorf("%d handler calls, want 2 (the over-long body's and the good request's)", calls.Load())
	}
}

// TestHeaderListTooLong: a header list past MaxHeaderBytes gets 431.
func TestHeaderListTooLong(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler ran")
	}), MaxHeaderBytes: 1 << 10})
	rc := dialRaw(t, addr)
	var fields [][2]string
	for i := range 4 {
		fields = append(fields, [2]string{fmt.Sprintf("x-big-%d", i), strings.Repeat("a", 500)})
	}
	rc.request(1, true, "GET", "/", fields)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if st := f.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "431" {
		t.Errorf(":status %s, want 431", st)
	}
}

// TestContinuationFlood: a header block that keeps growing through
// CONTINUATIONs ends the connection (CVE-2024-27316) long before it is
// stored.
func TestContinuationFlood(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler ran")
	}), MaxHeaderBytes: 4 << 10})
	rc := dialRaw(t, addr)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.write(t, func() error {
		return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true})
	})
	sent := 0
	go func() {
		frag := make([]byte, 0, 8<<10)
		for {
			hb.Reset()
			enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("v", 4<<10)})
			frag = append(frag[:0], hb.Bytes()...)
			rc.wmu.Lock()
			err := rc.fr.WriteContinuation(1, false, frag)
			rc.wmu.Unlock()
			if err != nil {
				return
			}
			sent++
		}
	}()
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if ga := f.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
	}
	rc.untilClosed(t)
}

// TestRapidReset: a client that opens streams and resets them at once
// (CVE-2023-44487) never has more handlers running than
// MaxConcurrentStreams, and is cut off with ENHANCE_YOUR_CALM once too
// many wait.
func TestRapidReset(t *testing.T) {
	const maxStreams = 4
	var running, peak atomic.Int32
	release := make(chan struct{})
	defer close(release)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release // a handler that is slow to notice the reset
	}), MaxConcurrentStreams: maxStreams})
	rc := dialRaw(t, addr)
	var goAway *http2.GoAwayFrame
	go func() {
		for id := uint32(1); id < 2*(6*maxStreams); id += 2 {
			rc.request(id, true, "GET", "/", nil)
			rc.wmu.Lock()
			err := rc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			rc.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	goAway = f.(*http2.GoAwayFrame)
	if goAway.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", goAway.ErrCode)
	}
	if p := peak.Load(); p > maxStreams {
		t.Errorf("%d handlers ran at once, want at most %d", p, maxStreams)
	}
}

// TestTooManyStreams: a stream past SETTINGS_MAX_CONCURRENT_STREAMS is
// refused; the open ones are served.
func TestTooManyStreams(t *testing.T) {
	release := make(chan struct{})
	var arrived sync.WaitGroup
	arrived.Add(2)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-release
	}), MaxConcurrentStreams: 2})
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	rc.request(3, true, "GET", "/", nil)
	arrived.Wait()
	rc.request(5, true, "GET", "/", nil)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 5 || (rst.ErrCode != http2.ErrCodeProtocol && rst.ErrCode != http2.ErrCodeRefusedStream) {
		t.Errorf("RST_STREAM stream %d %v, want stream 5 refused", rst.StreamID, rst.ErrCode)
	}
	close(release)
	answered := map[uint32]bool{}
	for len(answered) < 2 {
		f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
		answered[f.Header().StreamID] = true
	}
	if !answered[1] || !answered[3] {
		t.Errorf("answered streams %v, want 1 and 3", answered)
	}
}

// TestPingFloodNotRead: a client that sends PINGs and never reads the
// acknowledgements is cut off once they pile up, rather than growing
// the server's memory.
func TestPingFloodNotRead(t *testing.T) {
	addr := start(t, &Server{Handler: http.NotFoundHandler()})
	rc := dialRaw(t, addr)
	var data [8]byte
	deadline := time.Now().Add(20 * time.Second)
	rc.nc.SetWriteDeadline(deadline)
	var err error
	for err == nil {
		rc.wmu.Lock()
		err = rc.fr.WritePing(false, data)
		rc.wmu.Unlock()
	}
	if time.Now().After(deadline) {
		t.Fatalf("the server kept taking PINGs: %v", err)
	}
}

// TestPanicResetsStream: a handler's panic resets its stream
// (INTERNAL_ERROR), and the connection serves on.
func TestPanicResetsStream(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
	})})
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/panic", nil)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeInternal {
		t.Errorf("RST_STREAM stream %d %v", rst.StreamID, rst.ErrCode)
	}
	rc.request(3, true, "GET", "/", nil)
	rc.next(t, func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 3
	})
}

// TestExpectContinue: 100 Continue goes out on the body's first read.
func TestExpectContinue(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})})
	rc := dialRaw(t, addr)
	rc.request(1, false, "POST", "/", [][2]string{{"expect", "100-continue"}})
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if st := f.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "100" {
		t.Fatalf(":status %s, want 100", st)
	}
	rc.write(t, func() error { return rc.fr.WriteData(1, true, []byte("body")) })
	f = rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok })
	if d := f.(*http2.DataFrame); string(d.Data()) != "body" {
		t.Errorf("DATA %q", d.Data())
	}
}

// rawClient is a client that writes frames by hand.
type rawClient struct {
	nc  net.Conn
	fr  *http2.Framer
	wmu sync.Mutex
	hb  bytes.Buffer
	enc *hpack.Encoder
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rc := &rawClient{nc: nc, fr: http2.NewFramer(nc, nc)}
	rc.enc = hpack.NewEncoder(&rc.hb)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.write(t, func() error {
		if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
			return err
		}
		return rc.fr.WriteSettings()
	})
	return rc
}

func (rc *rawClient) write(t *testing.T, f func() error) {
	t.Helper()
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}

// request sends a request's HEADERS: the four pseudo-fields (an empty
// one in fields drops it), then fields.
func (rc *rawClient) request(id uint32, end bool, method, path string, fields [][2]string) {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	rc.hb.Reset()
	pseudo := map[string]string{":method": method, ":scheme": "http", ":authority": "example.test", ":path": path}
	var regular [][2]string
	for _, f := range fields {
		if _, ok := pseudo[f[0]]; ok {
			pseudo[f[0]] = f[1]
		} else {
			regular = append(regular, f)
		}
	}
	for _, k := range []string{":method", ":scheme", ":authority", ":path"} {
		if pseudo[k] != "" {
			rc.enc.WriteField(hpack.HeaderField{Name: k, Value: pseudo[k]})
		}
	}
	for _, f := range regular {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hb.Bytes(), EndStream: end, EndHeaders: true})
}

// next reads frames, acknowledging SETTINGS, until one that want
// accepts; the read deadline only guards against a hang.
func (rc *rawClient) next(t *testing.T, want func(http2.Frame) bool) http2.Frame {
	t.Helper()
	rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			rc.wmu.Lock()
			rc.fr.WriteSettingsAck()
			rc.wmu.Unlock()
		}
		if want(f) {
			return f
		}
	}
}

// untilClosed reads until the server closes the connection.
func (rc *rawClient) untilClosed(t *testing.T) {
	t.Helper()
	rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, rc.nc)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server kept the connection open")
	}
}

// TestInformationalAndHead: a 1xx leaves at once with the fields set
// then, and the final answer without them (as the proxy passes 103 Early
// Hints on); a HEAD answer has no body; request trailers reach the
// handler at the body's end.
func TestInformationalAndHead(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "HEAD":
			w.Header().Set("Content-Length", "5")
			w.Write([]byte("hello"))
		case "POST":
			io.ReadAll(r.Body)
			io.WriteString(w, "trailer="+r.Trailer.Get("X-Sum"))
		default:
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		}
	})})
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	h := f.(*http2.MetaHeadersFrame)
	if h.PseudoValue("status") != "103" || !strings.Contains(fmt.Sprint(h.Fields), "style.css") || h.StreamEnded() {
		t.Errorf("first HEADERS %v, want 103 with the Link field", h.Fields)
	}
	f = rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if h := f.(*http2.MetaHeadersFrame); h.PseudoValue("status") != "200" || strings.Contains(fmt.Sprint(h.Fields), "style.css") {
		t.Errorf("final HEADERS %v", h.Fields)
	}

	rc.request(3, true, "HEAD", "/", nil)
	f = rc.next(t, func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 3
	})
	if h := f.(*http2.MetaHeadersFrame); !h.StreamEnded() || h.PseudoValue("status") != "200" {
		t.Errorf("HEAD answer %v, end_stream %v: want its headers alone", h.Fields, h.StreamEnded())
	}

	rc.request(5, false, "POST", "/", [][2]string{{"trailer", "X-Sum"}})
	rc.write(t, func() error { return rc.fr.WriteData(5, false, []byte("data")) })
	rc.wmu.Lock()
	rc.hb.Reset()
	rc.enc.WriteField(hpack.HeaderField{Name: "x-sum", Value: "42"})
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: rc.hb.Bytes(), EndStream: true, EndHeaders: true})
	rc.wmu.Unlock()
	f = rc.next(t, func(f http2.Frame) bool { d, ok := f.(*http2.DataFrame); return ok && d.StreamID == 5 })
	if d := f.(*http2.DataFrame); string(d.Data()) != "trailer=42" {
		t.Errorf("POST answer %q, want the trailer", d.Data())
	}
}

// TestSendFlowControl: the server sends no more than the client's
// windows allow, and goes on as WINDOW_UPDATE and a new
// SETTINGS_INITIAL_WINDOW_SIZE open them.
func TestSendFlowControl(t *testing.T) {
	body := bytes.Repeat([]byte("z"), 1000)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.Write(body)
	})})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rc := &rawClient{nc: nc, fr: http2.NewFramer(nc, nc)}
	rc.enc = hpack.NewEncoder(&rc.hb)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.write(t, func() error {
		io.WriteString(nc, http2.ClientPreface)
		return rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
	})
	rc.request(1, true, "GET", "/", nil)
	got := 0
	// readUntilPing reads DATA until the acknowledgement of a PING sent
	// now, and checks the total against the window.
	readUntilPing := func(window int) {
		t.Helper()
		rc.write(t, func() error { return rc.fr.WritePing(false, [8]byte{1}) })
		for {
			f := rc.next(t, func(f http2.Frame) bool {
				switch f := f.(type) {
				case *http2.DataFrame:
					return true
				case *http2.PingFrame:
					return f.IsAck()
				}
				return false
			})
			if d, ok := f.(*http2.DataFrame); ok {
				got += len(d.Data())
				if got > window {
					t.Fatalf("%d bytes sent, the window was %d", got, window)
				}
				continue
			}
			if got == window {
				return
			}
			rc.write(t, func() error { return rc.fr.WritePing(false, [8]byte{1}) })
		}
	}
	readUntilPing(100)
	rc.write(t, func() error { return rc.fr.WriteWindowUpdate(1, 400) })
	readUntilPing(500)
	rc.write(t, func() error { return rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 600}) })
	readUntilPing(1000)
}

// TestShutdownBeforeSettings: a connection that Shutdown finds before
// the client's first SETTINGS still ends, and Shutdown returns.
func TestShutdownBeforeSettings(t *testing.T) {
	s := &Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: time.Minute}
	addr := start(t, s)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fr := http2.NewFramer(nc, nc)
	if _, err := fr.ReadFrame(); err != nil { // the server's SETTINGS: it serves the connection
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}
	io.WriteString(nc, http2.ClientPreface)
	fr.WriteSettings()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return: the connection stayed open")
	}
}

// TestWriteDeadline: a write held back by the client's window past the
// write deadline fails, and the stream is reset (INTERNAL_ERROR).
func TestWriteDeadline(t *testing.T) {
	werr := make(chan error, 1)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := w.Write(make([]byte, 64<<10))
		werr <- err
	})})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rc := &rawClient{nc: nc, fr: http2.NewFramer(nc, nc)}
	rc.enc = hpack.NewEncoder(&rc.hb)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.write(t, func() error {
		io.WriteString(nc, http2.ClientPreface)
		return rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	})
	rc.request(1, true, "GET", "/", nil)
	f := rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeInternal {
		t.Errorf("RST_STREAM stream %d %v, want stream 1 INTERNAL_ERROR", rst.StreamID, rst.ErrCode)
	}
	if err := <-werr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the write returned %v, want a deadline error", err)
	}
}

// TestIdleTimeoutSparesBusyConnection: a connection whose stream runs
// longer than IdleTimeout is not idle: the stream completes.
func TestIdleTimeoutSparesBusyConnection(t *testing.T) {
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		timer := time.NewTimer(300 * time.Millisecond) // longer than the idle timeout
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "late")
	}), IdleTimeout: 50 * time.Millisecond})
	resp, err := client(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "late" {
		t.Errorf("body %q, %v: want the whole answer", body, err)
	}
}

// TestClientGoAway: a client's GOAWAY ends the connection once its
// streams are done, with their answers.
func TestClientGoAway(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "bye")
	})})
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	<-arrived
	rc.write(t, func() error { return rc.fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
	close(release)
	f := rc.next(t, func(f http2.Frame) bool { d, ok := f.(*http2.DataFrame); return ok && d.StreamID == 1 })
	if d := f.(*http2.DataFrame); string(d.Data()) != "bye" {
		t.Errorf("DATA %q", d.Data())
	}
	rc.untilClosed(t)
}

// TestBodyBuffered: a request body tells what of it is at hand: nothing
// before DATA, the next read once some came, all of it once END_STREAM
// came.
func TestBodyBuffered(t *testing.T) {
	type state struct{ next, all bool }
	states := make(chan state)
	step := make(chan struct{})
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := r.Body.(interface{ Buffered() (next, all bool) })
		last := state{}
		report := func() {
			next, all := b.Buffered()
			last = state{next, all}
			states <- last
		}
		report() // before any DATA
		for range 2 {
			<-step
			// The frame may still be on its way: wait for it to show.
			for want, end := last, time.Now().Add(10*time.Second); time.Now().Before(end); {
				if next, all := b.Buffered(); (state{next, all}) != want {
					break
				}
				time.Sleep(time.Millisecond)
			}
			report()
		}
		io.Copy(io.Discard, r.Body)
	})})
	rc := dialRaw(t, addr)
	rc.request(1, false, "POST", "/", nil)
	expect := func(want state) {
		t.Helper()
		select {
		case got := <-states:
			if got != want {
				t.Fatalf("Buffered() = %+v, want %+v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the handler reported nothing")
		}
	}
	expect(state{false, false})
	rc.write(t, func() error { return rc.fr.WriteData(1, false, []byte("some")) })
	step <- struct{}{}
	expect(state{true, false})
	rc.write(t, func() error { return rc.fr.WriteData(1, true, []byte("more")) })
	step <- struct{}{}
	expect(state{true, true})
	rc.next(t, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
}

// TestHeadersOnStreamClosedBeforeItsHandlerEnds: once both ends sent
// END_STREAM the stream is closed for the client, even while the
// handler's goroutine has yet to take it out of the table: HEADERS on it
// are a connection error STREAM_CLOSED (h2spec 5.1/12), not a stream
// error.
func TestHeadersOnStreamClosedBeforeItsHandlerEnds(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	s.testHookAfterFinish = func() {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
	}
	addr := start(t, s)
	rc := dialRaw(t, addr)
	rc.request(1, true, "GET", "/", nil)
	rc.next(t, func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1 && h.StreamEnded()
	})
	rc.request(1, true, "GET", "/", nil) // the handler is still in its hook
	f := rc.next(t, func(f http2.Frame) bool {
		switch f.(type) {
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			return true
		}
		return false
	})
	if ga, ok := f.(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeStreamClosed {
		t.Errorf("HEADERS on a closed stream got %v, want GOAWAY STREAM_CLOSED", f)
	}
}

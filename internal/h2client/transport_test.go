package h2client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
	"github.com/sidecar-proxy/sidecar/internal/poll"
)

func do(t *testing.T, rt http.RoundTripper, method, url string, body io.Reader) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestRequestsShareOneConnection(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %d", r.Proto, r.Method, b, r.ContentLength)
	})
	tr := newTransport(t)
	for i := range 5 {
		resp, body, err := do(t, tr, "POST", s.url+"/x", strings.NewReader("hi"+strconv.Itoa(i)))
		want := fmt.Sprintf("HTTP/2.0 POST hi%d 3", i)
		if err != nil || resp.StatusCode != 200 || body != want || resp.ProtoMajor != 2 {
			t.Fatalf("request %d: %v %v %q, want 200 %q", i, resp, err, body, want)
		}
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "HTTP/2.0 GET  0" {
				t.Errorf("concurrent GET: %q, %v", body, err)
			}
		})
	}
	wg.Wait()
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestAnswersAsNetHTTP is the differential test: the same requests to the
// same server through net/http's HTTP/2 transport and through this one
// give the same status, headers, body, length and trailers.
func TestAnswersAsNetHTTP(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		switch r.URL.Path {
		case "/multi":
			h["X-Multi"] = []string{"a", "b"}
			h.Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "multi")
		case "/len":
			h.Set("Content-Length", "5")
			io.WriteString(w, "exact")
		case "/204":
			w.WriteHeader(204)
		case "/304":
			h.Set("Etag", `"x"`)
			w.WriteHeader(304)
		case "/trailers":
			h.Set("Trailer", "X-Sum, X-Never")
			io.WriteString(w, "body")
			h.Set("X-Sum", "42")
			h.Set(http.TrailerPrefix+"X-Late", "late")
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s|%d|%s|%s|%s", r.Method, r.ContentLength, r.Header.Get("X-In"), r.Header.Get("Te"), b)
		case "/big":
			w.Write(bytes.Repeat([]byte("0123456789"), 100_000))
		case "/teapot":
			w.WriteHeader(418)
			io.WriteString(w, "short and stout")
		}
	})
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	ref := &http.Transport{Protocols: protos, DisableCompression: true}
	t.Cleanup(ref.CloseIdleConnections)
	tr := newTransport(t)

	cases := []struct {
		method, path, body string
		unknownLength      bool
	}{
		{"GET", "/multi", "", false},
		{"GET", "/len", "", false},
		{"HEAD", "/len", "", false},
		{"GET", "/204", "", false},
		{"GET", "/304", "", false},
		{"GET", "/trailers", "", false},
		{"POST", "/echo", "payload", false},
		{"POST", "/echo", "", false},
		{"PUT", "/echo", strings.Repeat("x", 100_000), false},
		{"POST", "/echo", "streamed", true},
		{"GET", "/big", "", false},
		{"DELETE", "/teapot", "", false},
	}
	type answer struct {
		status  int
		header  http.Header
		trailer http.Header
		cl      int64
		body    string
	}
	run := func(rt http.RoundTripper, method, path, body string, unknown bool) answer {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
			if unknown {
				rd = io.MultiReader(rd) // hides the length
			}
		}
		req, _ := http.NewRequest(method, s.url+path, rd)
		req.Header.Set("X-In", "in")
		req.Header.Set("Te", "trailers")
		req.Header.Set("User-Agent", "test")
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		h := resp.Header.Clone()
		delete(h, "Date")
		return answer{resp.StatusCode, h, resp.Trailer, resp.ContentLength, string(b)}
	}
	for _, c := range cases {
		want := run(ref, c.method, c.path, c.body, c.unknownLength)
		got := run(tr, c.method, c.path, c.body, c.unknownLength)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s %s:\n got %v\nwant %v", c.method, c.path, got, want)
		}
	}
}

// TestLargeBodiesBothWays echoes bodies larger than every window, on
// several streams at once, so that both sides' flow control (stream and
// connection) has to let them through.
func TestLargeBodiesBothWays(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	tr := newTransport(t)
	const size = 5 << 20 // past the 4 MiB stream window
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			src := bytes.Repeat([]byte{byte('a' + i)}, size)
			var rd io.Reader = bytes.NewReader(src)
			if i%2 == 1 {
				rd = io.MultiReader(rd) // unknown length
			}
			req, _ := http.NewRequest("POST", s.url+"/", rd)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil || n != size || !sameSum(h.Sum(nil), src) {
				t.Errorf("stream %d: echoed %d bytes, %v; want %d intact", i, n, err, size)
			}
		})
	}
	wg.Wait()
}

func sameSum(sum, b []byte) bool {
	want := sha256.Sum256(b)
	return bytes.Equal(sum, want[:])
}

// TestSlowReaderGetsItAll: a response larger than the stream window,
// read slowly in small pieces, arrives whole: window updates follow the
// reads.
func TestSlowReaderGetsItAll(t *testing.T) {
	const size = 10 << 20
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("z"), size))
	})
	tr := newTransport(t)
	req, _ := http.NewRequest("GET", s.url+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1000)
	total := 0
	for {
		n, err := resp.Body.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if total != size {
		t.Errorf("read %d bytes, want %d", total, size)
	}
}

func TestTrailersBothWays(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Got")
		w.Write(b)
		w.Header().Set("X-Got", r.Trailer.Get("X-Req-Sum"))
	})
	tr := newTransport(t)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", s.url+"/", pr)
	req.Trailer = http.Header{"X-Req-Sum": nil}
	go func() {
		pw.Write([]byte("data"))
		req.Trailer.Set("X-Req-Sum", "7")
		pw.Close()
	}()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.Trailer["X-Got"]; !ok {
		t.Errorf("declared trailer missing before the body: %v", resp.Trailer)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "data" || resp.Trailer.Get("X-Got") != "7" {
		t.Errorf("body %q, %v, trailer %v; want data and X-Got: 7", b, err, resp.Trailer)
	}
}

func TestCancelWhileWaitingForHeaders(t *testing.T) {
	arrived, ended := make(chan struct{}), make(chan struct{})
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
		close(ended)
	})
	tr := newTransport(t)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/", nil)
	go func() {
		<-arrived
		cancel()
	}()
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("RoundTrip = %v, want context.Canceled", err)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's handler did not see the cancellation (RST_STREAM)")
	}
	// The connection serves on.
	s.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "ok" {
		t.Errorf("after the cancel: %q, %v", body, err)
	}
}

func TestCancelMidBody(t *testing.T) {
	ended := make(chan struct{})
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(ended)
	})
	tr := newTransport(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cause := errors.New("gave up")
	cancel(cause)
	if _, err := resp.Body.Read(buf); !errors.Is(err, cause) {
		t.Errorf("Read after cancel = %v, want the cause", err)
	}
	<-ended
}

// TestCloseBeforeEndResets: closing a body before its end resets the
// stream, which the server sees; the connection stays usable.
func TestCloseBeforeEndResets(t *testing.T) {
	ended := make(chan struct{}, 1)
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			io.WriteString(w, "ok")
			return
		}
		io.WriteString(w, "part")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		ended <- struct{}{}
	})
	tr := newTransport(t)
	req, _ := http.NewRequest("GET", s.url+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n, err := resp.Body.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("Read after Close = %d, %v; want an error", n, err)
	}
	<-ended
	if _, body, err := do(t, tr, "GET", s.url+"/ok", nil); err != nil || body != "ok" || s.conns.Load() != 1 {
		t.Errorf("next request: %q, %v, %d connections", body, err, s.conns.Load())
	}
}

// TestPeerReset: a stream the server resets fails, before its headers in
// RoundTrip, after them in the body's Read; never as a complete body.
func TestPeerReset(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/after" {
			w.Header().Set("Content-Type", "application/grpc")
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		panic(http.ErrAbortHandler)
	})
	tr := newTransport(t)
	if _, _, err := do(t, tr, "GET", s.url+"/before", nil); err == nil {
		t.Error("reset before headers: no error")
	} else if se := (http2.StreamError{}); !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
		t.Errorf("reset before headers = %v, want a StreamError INTERNAL_ERROR", err)
	}
	resp, body, err := do(t, tr, "GET", s.url+"/after", nil)
	if resp == nil || resp.StatusCode != 200 || err == nil || err == io.EOF {
		t.Errorf("reset after headers = %v, %q, %v; want 200 and a body error", resp, body, err)
	}
}

// TestMaxConcurrentStreams: past the server's limit a second connection
// is opened, never a stream beyond it.
func TestMaxConcurrentStreams(t *testing.T) {
	const limit, calls = 2, 5
	arrived := make(chan struct{}, calls)
	release := make(chan struct{})
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "done")
	}, func(srv *http.Server) {
		srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: limit}
	})
	tr := newTransport(t)
	// Learn the limit first: one call on the connection.
	go func() { <-arrived; release <- struct{}{} }()
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "done" {
		t.Fatalf("first call: %q, %v", body, err)
	}
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "done" {
				t.Errorf("call: %q, %v", body, err)
				arrived <- struct{}{} // it never will: the test fails, not hangs
			}
		})
	}
	for range calls {
		<-arrived
	}
	if n := s.conns.Load(); n != (calls+limit-1)/limit {
		t.Errorf("%d connections for %d concurrent calls at %d streams each, want %d", n, calls, limit, (calls+limit-1)/limit)
	}
	close(release)
	wg.Wait()
}

// TestGoAwayRetriesUnprocessed: streams above a GOAWAY's last stream ID
// are sent again on a new connection; the one below it completes on the
// old one.
func TestGoAwayRetriesUnprocessed(t *testing.T) {
	s := newRawServer(t, func(n int, c *rawConn) {
		if n == 1 {
			r1, err := c.readRequest(true)
			if err != nil {
				return
			}
			r2, err := c.readRequest(true)
			if err != nil {
				return
			}
			c.fr.WriteGoAway(min(r1.id, r2.id), http2.ErrCodeNo, nil)
			c.writeHeaders(min(r1.id, r2.id), false, ":status", "200")
			c.fr.WriteData(min(r1.id, r2.id), true, []byte("conn1"))
			c.drain()
			return
		}
		for {
			r, err := c.readRequest(true)
			if err != nil {
				return
			}
			c.writeHeaders(r.id, false, ":status", "200")
			c.fr.WriteData(r.id, true, []byte("conn"+strconv.Itoa(n)+":"+string(r.body)))
		}
	})
	tr := newTransport(t)
	var wg sync.WaitGroup
	bodies := make([]string, 2)
	for i := range 2 {
		wg.Go(func() {
			_, body, err := do(t, tr, "POST", s.url+"/", strings.NewReader("b"+strconv.Itoa(i)))
			if err != nil {
				t.Errorf("call %d: %v", i, err)
			}
			bodies[i] = body
		})
	}
	wg.Wait()
	slices.Sort(bodies)
	if bodies[0] != "conn1" || !strings.HasPrefix(bodies[1], "conn2:b") {
		t.Errorf("answers %q, want one from each connection, the retried one with its body", bodies)
	}
}

// TestUnprocessedBodyNotResent: a streamed body that was read before the
// GOAWAY cannot be sent again; the error says unprocessed.
func TestUnprocessedBodyNotResent(t *testing.T) {
	s := newRawServer(t, func(n int, c *rawConn) {
		r, err := c.readRequest(false)
		if err != nil {
			return
		}
		for { // the body's first DATA frame
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == r.id {
				break
			}
		}
		c.fr.WriteGoAway(0, http2.ErrCodeNo, nil) // r.id was not processed
		c.drain()
	})
	tr := newTransport(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("some"))
	req, _ := http.NewRequest("POST", s.url+"/", pr)
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, ErrUnprocessed) {
		t.Errorf("RoundTrip = %v, want ErrUnprocessed", err)
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: a read body is not sent again", n)
	}
}

func TestRefusedStreamIsRetried(t *testing.T) {
	s := newRawServer(t, func(n int, c *rawConn) {
		refused := false
		for {
			r, err := c.readRequest(true)
			if err != nil {
				return
			}
			if !refused {
				refused = true
				c.fr.WriteRSTStream(r.id, http2.ErrCodeRefusedStream)
				continue
			}
			c.writeHeaders(r.id, false, ":status", "200")
			c.fr.WriteData(r.id, true, []byte("second"))
		}
	})
	tr := newTransport(t)
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "second" {
		t.Errorf("GET = %q, %v; want the retry's answer", body, err)
	}
}

// TestStrictAnswers: malformed answers are errors, and a body that does
// not end properly never reads as complete.
func TestStrictAnswers(t *testing.T) {
	cases := []struct {
		name      string
		script    func(c *rawConn, id uint32)
		headerErr bool // RoundTrip fails (else the body's Read)
	}{
		{"no status", func(c *rawConn, id uint32) { c.writeHeaders(id, true, "x", "y") }, true},
		{"bad status", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "2000") }, true},
		{"request pseudo-header", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", ":path", "/") }, true},
		{"connection header", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", "connection", "close") }, true},
		{"uppercase name", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", "X-Up", "1") }, true},
		{"duplicate status", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", ":status", "204") }, true},
		{"pseudo after regular", func(c *rawConn, id uint32) { c.writeHeaders(id, true, "x", "y", ":status", "200") }, true},
		{"bad value", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", "x", "a\x00b") }, true},
		{"bad content-length", func(c *rawConn, id uint32) { c.writeHeaders(id, true, ":status", "200", "content-length", "1x") }, true},
		{"101", func(c *rawConn, id uint32) { c.writeHeaders(id, false, ":status", "101") }, true},
		{"data before headers", func(c *rawConn, id uint32) { c.fr.WriteData(id, true, []byte("x")) }, true},
		{"short body", func(c *rawConn, id uint32) {
			c.writeHeaders(id, false, ":status", "200", "content-length", "10")
			c.fr.WriteData(id, true, []byte("12345"))
		}, false},
		{"long body", func(c *rawConn, id uint32) {
			c.writeHeaders(id, false, ":status", "200", "content-length", "3")
			c.fr.WriteData(id, true, []byte("12345"))
		}, false},
		{"connection closed mid-body", func(c *rawConn, id uint32) {
			c.writeHeaders(id, false, ":status", "200")
			c.fr.WriteData(id, false, []byte("12345"))
			c.Close()
		}, false},
		{"headers without end after headers", func(c *rawConn, id uint32) {
			c.writeHeaders(id, false, ":status", "200")
			c.writeHeaders(id, false, "x-trailer", "1")
		}, false},
		{"ended with content-length left", func(c *rawConn, id uint32) {
			c.writeHeaders(id, true, ":status", "200", "content-length", "4")
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newRawServer(t, func(n int, c *rawConn) {
				r, err := c.readRequest(true)
				if err != nil {
					return
				}
				tc.script(c, r.id)
				c.drain()
			})
			tr := newTransport(t)
			req, _ := http.NewRequest("GET", s.url+"/", nil)
			resp, err := tr.RoundTrip(req)
			if tc.headerErr {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("RoundTrip = %d, want an error", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("RoundTrip = %v, want the headers", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("body %q read as complete, want an error", b)
			}
		})
	}
}

func TestHeaderListTooLarge(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("b", 4000))
	})
	tr := &Transport{MaxResponseHeaderBytes: 1000}
	t.Cleanup(tr.CloseIdleConnections)
	if resp, _, err := do(t, tr, "GET", s.url+"/", nil); err == nil {
		t.Errorf("RoundTrip = %d, want an error for a header list over the limit", resp.StatusCode)
	}
}

func TestInformationalAnswersReachTheTrace(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	tr := newTransport(t)
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, strconv.Itoa(code)+" "+h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", s.url+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "final" || len(got) != 1 || got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("body %q, 1xx %q", b, got)
	}
}

func TestIdleConnectionsClose(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tr := &Transport{IdleConnTimeout: 50 * time.Millisecond}
	t.Cleanup(tr.CloseIdleConnections)
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "ok" {
		t.Fatal(body, err)
	}
	poll.Until(t, 10*time.Second, "the idle connection to close", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.conns) == 0
	})
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "ok" || s.conns.Load() != 2 {
		t.Errorf("after the idle close: %q, %v, %d connections (want 2)", body, err, s.conns.Load())
	}
}

// TestAnswersPings: a PING from the server is acknowledged.
func TestAnswersPings(t *testing.T) {
	acked := make(chan bool, 1)
	s := newRawServer(t, func(n int, c *rawConn) {
		r, err := c.readRequest(true)
		if err != nil {
			return
		}
		c.fr.WritePing(false, [8]byte{1, 2, 3})
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				acked <- false
				return
			}
			if p, ok := f.(*http2.PingFrame); ok {
				acked <- p.IsAck() && p.Data == [8]byte{1, 2, 3}
				break
			}
		}
		c.writeHeaders(r.id, true, ":status", "204")
		c.drain()
	})
	tr := newTransport(t)
	if resp, _, err := do(t, tr, "GET", s.url+"/", nil); err != nil || resp.StatusCode != 204 {
		t.Fatal(resp, err)
	}
	if !<-acked {
		t.Error("the PING was not acknowledged")
	}
}

func TestDialErrorIsReturned(t *testing.T) {
	tr := newTransport(t)
	dialErr := errors.New("no route")
	tr.DialContext = nil
	tr2 := &Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return nil, dialErr }}
	if _, _, err := do(t, tr2, "GET", "http://127.0.0.1:1/", nil); !errors.Is(err, dialErr) {
		t.Errorf("RoundTrip = %v, want the dial error", err)
	}
	if _, _, err := do(t, tr, "GET", "https://127.0.0.1:1/", nil); err == nil {
		t.Error("https URL: no error")
	}
}

// TestRefusedRequests: what HTTP/2 cannot carry is an error before
// anything is sent, and the connection serves on.
func TestRefusedRequests(t *testing.T) {
	s := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tr := newTransport(t)
	for name, mod := range map[string]func(*http.Request){
		"upgrade":     func(r *http.Request) { r.Header.Set("Upgrade", "websocket") },
		"bad name":    func(r *http.Request) { r.Header["Bad Name"] = []string{"x"} },
		"bad value":   func(r *http.Request) { r.Header.Set("X-Bad", "a\nb") },
		"CONNECT":     func(r *http.Request) { r.Method = "CONNECT" },
		"bad method":  func(r *http.Request) { r.Method = "GE T" },
		"bad trailer": func(r *http.Request) { r.Trailer = http.Header{"Connection": nil} },
	} {
		req, _ := http.NewRequest("POST", s.url+"/", strings.NewReader(strings.Repeat("b", 20_000)))
		mod(req)
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s: sent, want an error", name)
		}
	}
	if _, body, err := do(t, tr, "GET", s.url+"/", nil); err != nil || body != "ok" {
		t.Errorf("after the refusals: %q, %v", body, err)
	}
}

// TestHeadersGoBeforeABodyStillArriving: a small body of known length
// that is not all at hand (here a pipe) is not read ahead of the HEADERS:
// the upstream sees the request while the body's sender still waits.
func TestHeadersGoBeforeABodyStillArriving(t *testing.T) {
	head := make(chan string, 1)
	s := newRawServer(t, func(n int, c *rawConn) {
		r, err := c.readRequest(false)
		if err != nil {
			return
		}
		head <- r.fields[":path"]
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == r.id {
				r.body = append(r.body, d.Data()...)
				if d.StreamEnded() {
					break
				}
			}
		}
		c.writeHeaders(r.id, false, ":status", "200")
		c.fr.WriteData(r.id, true, r.body)
		c.drain()
	})
	tr := newTransport(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("PUT", s.url+"/upload", pr)
	req.ContentLength = 5
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{string(b), err}
	}()
	select {
	case p := <-head:
		if p != "/upload" {
			t.Fatalf("upstream saw %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream saw no HEADERS while the body was pending")
	}
	io.WriteString(pw, "hello")
	pw.Close()
	if r := <-done; r.err != nil || r.body != "hello" {
		t.Fatalf("answer %q, %v; want the body echoed", r.body, r.err)
	}
}

// A body of unknown length that is all at hand (a gRPC call's, once its
// END_STREAM came) goes with the HEADERS, with no body writer and no
// content-length; one longer than smallBody is sent whole by a writer.
func TestWholeBodyOfUnknownLength(t *testing.T) {
	var writers atomic.Int32
	testHookBodyWriter = func() { writers.Add(1) }
	t.Cleanup(func() { testHookBodyWriter = nil })
	got := make(chan *request, 1)
	s := newRawServer(t, func(n int, c *rawConn) {
		for {
			r, err := c.readRequest(true)
			if err != nil {
				return
			}
			got <- r
			c.writeHeaders(r.id, true, ":status", "204")
		}
	})
	tr := newTransport(t)
	for _, tt := range []struct {
		name    string
		size    int
		writers int32
	}{
		{"small", 5, 0},
		{"empty", 0, 0},
		{"exactly smallBody", smallBody, 0},
		{"longer than smallBody", smallBody + 100, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writers.Store(0)
			body := bytes.Repeat([]byte("0123456789"), tt.size/10+1)[:tt.size]
			req, _ := http.NewRequest("POST", s.url+"/svc/Method", inmem.NewBody(body))
			req.ContentLength = -1
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("RoundTrip = %v", err)
			}
			resp.Body.Close()
			r := <-got
			if !bytes.Equal(r.body, body) {
				t.Errorf("upstream got %d bytes, want the %d sent", len(r.body), len(body))
			}
			if cl, ok := r.fields["content-length"]; ok {
				t.Errorf("upstream got content-length %q for a body of unknown length", cl)
			}
			if n := writers.Load(); n != tt.writers {
				t.Errorf("%d body writers started, want %d", n, tt.writers)
			}
		})
	}
}

// TestUnansweredConnectionIsLeft: after a request times out, the client
// PINGs the connection. While the PING waits, new requests go to a new
// connection; unanswered, the connection is closed and its streams fail
// with errPingTimeout. A connection that answers is kept.
func TestUnansweredConnectionIsLeft(t *testing.T) {
	pinged, answered := make(chan struct{}, 1), make(chan struct{}, 1)
	closed := make(chan struct{})
	s := newRawServer(t, func(n int, c *rawConn) {
		r, err := c.readRequest(true)
		if err != nil {
			return
		}
		c.writeHeaders(r.id, true, ":status", "204")
		if n > 1 {
			// Later connections answer every request and PING.
			for {
				f, err := c.fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.MetaHeadersFrame:
					if f.PseudoValue("path") != "/hang" {
						c.writeHeaders(f.StreamID, true, ":status", "204")
					}
				case *http2.PingFrame:
					if !f.IsAck() {
						c.fr.WritePing(true, f.Data)
						select {
						case answered <- struct{}{}:
						default:
						}
					}
				}
			}
		}
		// The first goes silent after its first answer, like an upstream
		// that vanished without a reset: it reads and answers nothing
		// more, and notes the PING and the close.
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				close(closed)
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				pinged <- struct{}{}
			}
		}
	})
	tr := newTransport(t)
	tr.PingTimeout = 500 * time.Millisecond
	if resp, _, err := do(t, tr, "GET", s.url+"/first", nil); err != nil || resp.StatusCode != 204 {
		t.Fatal(resp, err)
	}
	// A request on the silent connection times out: the client PINGs.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/lost", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request to the silent upstream = %v, want the deadline", err)
	}
	cancel()
	select {
	case <-pinged:
	case <-time.After(10 * time.Second):
		t.Fatal("no PING after the request timed out")
	}
	// Another request waits on the silent connection until the PING's
	// wait passes a twentieth of PingTimeout, then fails with the close.
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", s.url+"/waiting", nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection whose PING went unanswered was not closed")
	}
	// Requests now go to a new connection, which answers.
	if resp, _, err := do(t, tr, "GET", s.url+"/after", nil); err != nil || resp.StatusCode != 204 {
		t.Fatalf("request after the silent connection closed = %v, %v", resp, err)
	}
	if err := <-errc; err != nil && !errors.Is(err, errPingTimeout) {
		t.Errorf("request sent while the PING waited = %v, want success on a new connection or errPingTimeout", err)
	}
	if n := s.conns.Load(); n < 2 {
		t.Errorf("%d connections, want a new one after the silent one", n)
	}
	// A connection that answers its PING serves on after a timeout,
	// through the PING's timeout and beyond.
	before := s.conns.Load()
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	req, _ = http.NewRequestWithContext(ctx, "GET", s.url+"/hang", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered request = %v, want the deadline", err)
	}
	cancel()
	select {
	case <-answered:
	case <-time.After(10 * time.Second):
		t.Fatal("no PING after the request timed out")
	}
	for start, i := time.Now(), 0; time.Since(start) < 2*tr.PingTimeout && i < 10000; i++ {
		if resp, _, err := do(t, tr, "GET", fmt.Sprintf("%s/again/%d", s.url, i), nil); err != nil || resp.StatusCode != 204 {
			t.Fatalf("request on the answering connection = %v, %v", resp, err)
		}
	}
	if n := s.conns.Load(); n != before {
		t.Errorf("%d connections after requests on an answering one, want %d", n, before)
	}
}

// TestPingWaitingBehindDataKeepsConnection: a connection whose PING
// acknowledgement comes late because the upstream is busy sending on it
// (the ack queued behind DATA) is alive: it is not closed when the PING
// times out, and the stream it carries ends well.
func TestPingWaitingBehindDataKeepsConnection(t *testing.T) {
	const pingTimeout = 300 * time.Millisecond
	s := newRawServer(t, func(n int, c *rawConn) {
		a, err := c.readRequest(true)
		if err != nil {
			return
		}
		c.writeHeaders(a.id, false, ":status", "200")
		if _, err := c.readRequest(true); err != nil { // the one that times out
			return
		}
		var ping [8]byte
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				ping = p.Data
				break
			}
		}
		// Busy on a: DATA for three times the PING's timeout, then the
		// ack, then the end of a.
		sent := 0
		for start := time.Now(); time.Since(start) < 3*pingTimeout && sent < 1000; sent++ {
			if c.fr.WriteData(a.id, false, []byte("x")) != nil {
				return
			}
			time.Sleep(pingTimeout / 10) // the upstream's pace, not a synchronisation
		}
		c.fr.WritePing(true, ping)
		c.fr.WriteData(a.id, true, nil)
		c.drain()
	})
	tr := newTransport(t)
	tr.PingTimeout = pingTimeout
	req, _ := http.NewRequest("GET", s.url+"/download", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, "GET", s.url+"/slow", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered request = %v, want the deadline", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("body of the stream the upstream kept sending on, after %d bytes: %v; want it whole", len(b), err)
	}
	if len(b) == 0 {
		t.Fatal("empty body")
	}
}

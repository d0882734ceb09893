package h1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts connections on loopback and runs serve on each; it
// counts the connections.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int32
}

func newRawServer(t *testing.T, serve func(n int, c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(s.conns.Add(1))
			go func() {
				defer c.Close()
				serve(n, c, bufio.NewReader(c))
			}()
		}
	}()
	return s
}

func (s *rawServer) url(path string) string { return "http://" + s.ln.Addr().String() + path }

// answer serves every request on the connection with raw.
func answer(raw string) func(int, net.Conn, *bufio.Reader) {
	return func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, raw); err != nil {
				return
			}
		}
	}
}

func get(t *testing.T, tr http.RoundTripper, url string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestKeepAliveReusesOneConnection(t *testing.T) {
	s := newRawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for i := range 5 {
		resp, body, err := get(t, tr, s.url("/"))
		if err != nil || resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("request %d: %v %v %q", i, resp, err, body)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections for 5 sequential requests, want 1", n)
	}
}

func TestChunkedAnswerWithTrailers(t *testing.T) {
	s := newRawServer(t, answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\nX-Late: yes\r\n\r\n"))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 2 {
		resp, body, err := get(t, tr, s.url("/"))
		if err != nil || body != "hello world" {
			t.Fatalf("got %q, %v", body, err)
		}
		if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.Header["Trailer"] != nil {
			t.Errorf("framing: ContentLength %d, TransferEncoding %v, Trailer header %v", resp.ContentLength, resp.TransferEncoding, resp.Header["Trailer"])
		}
		if resp.Trailer.Get("X-Sum") != "42" || resp.Trailer.Get("X-Late") != "yes" {
			t.Errorf("trailer = %v", resp.Trailer)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: a chunked body read to its end frees the connection", n)
	}
}

// TestIdleConnectionClosedByUpstream: a connection the upstream closed
// while idle is found dead before reuse; the request goes on a new one.
func TestIdleConnectionClosedByUpstream(t *testing.T) {
	defer func(d time.Duration) { peekAfter = d }(peekAfter)
	peekAfter = 0 // as if the connection had been idle long enough
	closed := make(chan struct{})
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"+string(rune('0'+n)))
		if n == 1 {
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c) // until the client closes
			close(closed)
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "1" {
		t.Fatalf("first: %q %v", body, err)
	}
	// The FIN is on its way; the peek before reuse sees it once there.
	waitFIN(t, tr)
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "2" {
		t.Fatalf("after the upstream closed: %q %v, want the answer of a new connection", body, err)
	}
	<-closed
}

// waitFIN waits until the pooled connection sees its upstream's FIN.
func waitFIN(t *testing.T, tr *Transport) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		tr.mu.Lock()
		var c *conn
		for _, cs := range tr.idle {
			if len(cs) > 0 {
				c = cs[0]
			}
		}
		tr.mu.Unlock()
		if c == nil || !c.alive() {
			return
		}
		time.Sleep(time.Millisecond) // polling the kernel's socket state: there is no event to await
	}
	t.Fatal("no FIN within 5s")
}

// TestStaleConnectionRetry: the upstream closes a reused connection on
// receiving a request, without answering (its idle timeout fired as the
// request came). A request without a body is sent again on a new
// connection; one with a body is not, and fails.
func TestStaleConnectionRetry(t *testing.T) {
	// resetSecond answers a connection's first request and resets it,
	// unanswered, on its second, on the connections for which first is
	// true of their number.
	resetSecond := func(first func(n int) bool) func(int, net.Conn, *bufio.Reader) {
		return func(n int, c net.Conn, br *bufio.Reader) {
			for i := 0; ; i++ {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				if i == 1 && first(n) {
					c.(*net.TCPConn).SetLinger(0)
					return // reset, no answer
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	}
	s := newRawServer(t, resetSecond(func(n int) bool { return n == 1 }))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	if _, _, err := get(t, tr, s.url("/")); err != nil {
		t.Fatal(err)
	}
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "ok" {
		t.Fatalf("GET on a connection reset unanswered: %q %v, want a retry on a new one", body, err)
	}
	if n := s.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}

	// A POST with a body on a connection reset the same way is not sent
	// again.
	s2 := newRawServer(t, resetSecond(func(int) bool { return true }))
	if _, _, err := get(t, tr, s2.url("/")); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", s2.url("/"), strings.NewReader("body"))
	if resp, err := tr.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("POST with a body on a reset connection succeeded; it must not be sent twice")
	}
	if n := s2.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: a request with a body is not retried", n)
	}
}

// TestUnsolicitedBytesNeverAnswer: bytes an upstream writes on an idle
// connection are not taken for the next answer.
func TestUnsolicitedBytesNeverAnswer(t *testing.T) {
	defer func(d time.Duration) { peekAfter = d }(peekAfter)
	peekAfter = 0 // as if the connection had been idle long enough
	wrote := make(chan struct{})
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if n > 1 {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
			close(wrote)
			io.Copy(io.Discard, c)
			return
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "ok" {
		t.Fatalf("first: %q %v", body, err)
	}
	<-wrote
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "fresh" {
		t.Fatalf("second: %q %v, want fresh from a new connection", body, err)
	}
}

func TestCancelWhileWaitingForHeaders(t *testing.T) {
	got := make(chan struct{})
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		close(got)
		io.Copy(io.Discard, c) // never answers
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("the app went away")
	go func() { <-got; cancel(cause) }()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url("/"), nil)
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, cause) {
		t.Fatalf("err = %v, want the context's cause", err)
	}
}

func TestCancelMidBody(t *testing.T) {
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
		io.Copy(io.Discard, c)
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url("/"), nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("read after cancel succeeded")
	}
	resp.Body.Close()
	if len(tr.idle) != 0 {
		t.Error("a canceled exchange's connection was pooled")
	}
}

func TestTruncatedBodyIsAnError(t *testing.T) {
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
	})
	tr := &Transport{}
	_, body, err := get(t, tr, s.url("/"))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("body %q err %v, want io.ErrUnexpectedEOF", body, err)
	}
}

// TestMalformedAnswers are answers net/http would take but a proxy must
// not pass on, and plain garbage.
func TestMalformedAnswers(t *testing.T) {
	for name, raw := range map[string]string{
		"obs-fold":              "HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
		"differing lengths":     "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"bad length":            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na",
		"gzip coding":           "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"space before colon":    "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
		"status not 3 digits":   "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/2 status line":    "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"NUL in value":          "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
		"chunk size junk":       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
		"no CRLF after chunk":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
		"chunked in HTTP/1.0":   "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"too many 1xx":          strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"not HTTP":              "SSH-2.0-OpenSSH_9.2\r\n\r\n",
		"head over the limit":   "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\nContent-Length: 0\r\n\r\n",
		"control in the reason": "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			s := newRawServer(t, answer(raw))
			tr := &Transport{MaxResponseHeaderBytes: 64 << 10}
			defer tr.CloseIdleConnections()
			if resp, body, err := get(t, tr, s.url("/")); err == nil {
				t.Fatalf("taken: %d %v %q", resp.StatusCode, resp.Header, body)
			}
		})
	}
}

// TestAnswersAsNetHTTP compares answers with what net/http's Transport
// makes of the same bytes: status, headers, body, trailers, framing.
func TestAnswersAsNetHTTP(t *testing.T) {
	for name, raw := range map[string]string{
		"plain":              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"bare LF":            "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
		"no reason":          "HTTP/1.1 204\r\n\r\n",
		"lower-case names":   "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-thing: a\r\nX-Thing: b\r\n\r\nok",
		"repeated length":    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
		"until close":        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
		"HTTP/1.0":           "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"304":                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
		"chunked and length": "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"early hints":        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"empty value":        "HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
		"trailers":           "HTTP/1.1 200 OK\r\nTrailer: A, B\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nA: 1\r\nB: 2\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			s := newRawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
				if req, err := http.ReadRequest(br); err == nil {
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, raw)
				}
			})
			want, wantBody, werr := get(t, &http.Transport{}, s.url("/"))
			got, gotBody, gerr := get(t, &Transport{}, s.url("/"))
			if werr != nil || gerr != nil {
				t.Fatalf("net/http: %v; h1client: %v", werr, gerr)
			}
			if got.StatusCode != want.StatusCode || got.Status != want.Status || got.ProtoMinor != want.ProtoMinor ||
				got.ContentLength != want.ContentLength || got.Close != want.Close || gotBody != wantBody {
				t.Errorf("got %d %q 1.%d len %d close %v body %q; net/http %d %q 1.%d len %d close %v body %q",
					got.StatusCode, got.Status, got.ProtoMinor, got.ContentLength, got.Close, gotBody,
					want.StatusCode, want.Status, want.ProtoMinor, want.ContentLength, want.Close, wantBody)
			}
			if !equalHeader(got.Header, want.Header) || !equalHeader(got.Trailer, want.Trailer) {
				t.Errorf("header %v trailer %v; net/http %v %v", got.Header, got.Trailer, want.Header, want.Trailer)
			}
		})
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || strings.Join(va, "\x00") != strings.Join(vb, "\x00") {
			return false
		}
	}
	return true
}

func TestInformationalAnswersReachTheTrace(t *testing.T) {
	s := newRawServer(t, answer("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	var codes []int
	var links []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		codes = append(codes, code)
		links = append(links, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", s.url("/"), nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(codes) != 1 || codes[0] != 103 || links[0] != "</a.css>" {
		t.Errorf("final %d, 1xx %v %v", resp.StatusCode, codes, links)
	}
}

// TestRequestAsWritten checks the request head and bodies on the wire.
func TestRequestAsWritten(t *testing.T) {
	heads := make(chan *http.Request, 8)
	bodies := make(chan string, 8)
	s := newRawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(req.Body)
			heads <- req
			bodies <- string(b)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	do := func(req *http.Request) (*http.Request, string) {
		t.Helper()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return <-heads, <-bodies
	}

	req, _ := http.NewRequest("GET", s.url("/a%20b/c?x=1&y"), nil)
	req.Host = "app.example"
	req.Header.Set("X-One", "1")
	req.Header.Add("X-Two", "a")
	req.Header.Add("X-Two", "b")
	got, _ := do(req)
	if got.RequestURI != "/a%20b/c?x=1&y" || got.Host != "app.example" || got.Header.Get("X-One") != "1" ||
		strings.Join(got.Header["X-Two"], ",") != "a,b" || got.Header["User-Agent"] != nil || got.ContentLength != 0 {
		t.Errorf("GET arrived as %s %s host %s header %v", got.Method, got.RequestURI, got.Host, got.Header)
	}

	req, _ = http.NewRequest("POST", s.url("/"), nil)
	got, _ = do(req)
	if got.Header.Get("Content-Length") != "0" {
		t.Errorf("bodiless POST: Content-Length %q, want 0", got.Header.Get("Content-Length"))
	}

	req, _ = http.NewRequest("PUT", s.url("/"), strings.NewReader("known"))
	got, body := do(req)
	if got.ContentLength != 5 || body != "known" {
		t.Errorf("PUT: length %d body %q", got.ContentLength, body)
	}

	big := strings.Repeat("z", 100<<10) // larger than the write buffer
	req, _ = http.NewRequest("PUT", s.url("/"), strings.NewReader(big))
	got, body = do(req)
	if got.ContentLength != int64(len(big)) || body != big {
		t.Errorf("large PUT: length %d, body of %d bytes", got.ContentLength, len(body))
	}

	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("stream"))
		pw.Write([]byte("ed"))
		pw.Close()
	}()
	req, _ = http.NewRequest("POST", s.url("/"), pr)
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Sum": {"8"}}
	got, body = do(req)
	if len(got.TransferEncoding) != 1 || body != "streamed" || got.Trailer.Get("X-Sum") != "8" {
		t.Errorf("chunked POST: %v body %q trailer %v", got.TransferEncoding, body, got.Trailer)
	}

	req, _ = http.NewRequest("GET", s.url("/"), nil)
	req.Header.Set("X-Bad", "a\r\nInjected: yes")
	if _, err := tr.RoundTrip(req); err == nil {
		t.Error("a header value with CRLF was sent")
	}
}

// TestExpectContinue: the body waits for 100 Continue; a final answer
// instead means it is never sent.
func TestExpectContinue(t *testing.T) {
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/refuse" {
				io.WriteString(c, "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
				io.Copy(io.Discard, c)
				return
			}
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			b, _ := io.ReadAll(req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(b))+"\r\n\r\n"+string(b))
		}
	})
	tr := &Transport{ExpectContinueTimeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("PUT", s.url("/ok"), strings.NewReader("payload"))
	req.Header.Set("Expect", "100-continue")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "payload" {
		t.Errorf("echo = %q", b)
	}
	req, _ = http.NewRequest("PUT", s.url("/refuse"), strings.NewReader("payload"))
	req.Header.Set("Expect", "100-continue")
	start := time.Now()
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 417 || time.Since(start) > 4*time.Second {
		t.Errorf("refused: %d after %v, want 417 at once", resp.StatusCode, time.Since(start))
	}
}

// TestEarlyAnswerToALargeBody: an upstream that answers without reading
// a large body gets its answer through.
func TestEarlyAnswerToALargeBody(t *testing.T) {
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("PUT", s.url("/"), bytes.NewReader(make([]byte, 8<<20)))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "big" {
		t.Errorf("got %d %q", resp.StatusCode, b)
	}
}

func TestHeadAnswerHasNoBody(t *testing.T) {
	s := newRawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 2 {
		req, _ := http.NewRequest("HEAD", s.url("/"), nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != 1234 || resp.Body != http.NoBody {
			t.Errorf("HEAD: ContentLength %d body %T", resp.ContentLength, resp.Body)
		}
		resp.Body.Close()
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestIdleTimeoutAndLimit(t *testing.T) {
	s := newRawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
	tr := &Transport{MaxIdleConnsPerHost: 1, IdleConnTimeout: 50 * time.Millisecond}
	defer tr.CloseIdleConnections()
	// Two at once: two connections, one kept.
	r1, _ := tr.RoundTrip(mustReq(t, s.url("/")))
	r2, _ := tr.RoundTrip(mustReq(t, s.url("/")))
	r1.Body.Close()
	r2.Body.Close()
	tr.mu.Lock()
	n := len(tr.idle[connKey{addr: s.ln.Addr().String()}])
	tr.mu.Unlock()
	if n != 1 {
		t.Errorf("%d idle, want 1 (MaxIdleConnsPerHost)", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		n = len(tr.idle)
		tr.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle connection not swept within 5s of its 50ms timeout")
		}
		time.Sleep(10 * time.Millisecond) // the sweeper's timer has no event to await
	}
}

func mustReq(t *testing.T, url string) *http.Request {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestBytesPastTheAnswer: bytes that come with an answer, past its end,
// make the connection unusable even when it is reused at once (no peek).
func TestBytesPastTheAnswer(t *testing.T) {
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if n > 1 {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "ok" {
		t.Fatalf("first: %q %v", body, err)
	}
	if _, body, err := get(t, tr, s.url("/")); err != nil || body != "fresh" {
		t.Fatalf("second: %q %v, want fresh from a new connection", body, err)
	}
}

// TestHeadGoesBeforeABodyStillArriving: a small body of known length that
// is not all at hand (here a pipe) is not read ahead of the head: the
// upstream sees the request while the body's sender still waits.
func TestHeadGoesBeforeABodyStillArriving(t *testing.T) {
	head := make(chan string, 1)
	s := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		head <- req.URL.Path
		b, _ := io.ReadAll(req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(b))+"\r\n\r\n"+string(b))
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("PUT", s.url("/upload"), pr)
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
		t.Fatal("the upstream saw no request head while the body was pending")
	}
	io.WriteString(pw, "hello")
	pw.Close()
	if r := <-done; r.err != nil || r.body != "hello" {
		t.Fatalf("answer %q, %v; want the body echoed", r.body, r.err)
	}
}

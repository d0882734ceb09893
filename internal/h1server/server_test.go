package h1server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
)

// start serves h on a loopback listener behind h1guard, as the proxy
// does, and returns the server and its address; the test's end closes it.
func start(t testing.TB, h http.HandlerFunc, configure ...func(*Server)) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ConnContext:       h1guard.ConnContext,
		ErrorLog:          quietLog(),
	}
	for _, c := range configure {
		c(s)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(h1guard.Listen(ln))
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return s, ln.Addr().String()
}

func dial(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func roundTrip(t testing.TB, c net.Conn, br *bufio.Reader, raw string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("response to %q: %v", raw, err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestClientGoneCancelsRequest: a client that goes away while its
// request is being served cancels the request's context, with or
// without a body (read to its end).
func TestClientGoneCancelsRequest(t *testing.T) {
	for _, tc := range []struct{ name, req string }{
		{"no_body", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"body_read", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"},
		{"chunked_read", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entered := make(chan struct{})
			canceled := make(chan error, 1)
			_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				close(entered)
				select {
				case <-r.Context().Done():
					canceled <- r.Context().Err()
				case <-time.After(10 * time.Second):
					canceled <- errors.New("not canceled within 10 s")
				}
			})
			c, _ := dial(t, addr)
			io.WriteString(c, tc.req)
			<-entered
			c.Close()
			if err := <-canceled; !errors.Is(err, context.Canceled) {
				t.Fatalf("request context: %v, want canceled", err)
			}
		})
	}
}

// TestPipelinedRequestDoesNotCancel: bytes of a next request waiting on
// the connection do not cancel the request in flight, which then ends
// normally, and the next one is served.
func TestPipelinedRequestDoesNotCancel(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int32
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			// Held while the next request arrives.
			select {
			case <-r.Context().Done():
				t.Error("first request canceled by the pipelined one")
			case <-release:
			}
		}
		io.WriteString(w, r.URL.Path)
	})
	c, br := dial(t, addr)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
	// Something that must not happen (a cancel) is given 50 ms.
	time.AfterFunc(50*time.Millisecond, func() { close(release) })
	for _, want := range []string{"/1", "/2"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("answer %q, want %q", b, want)
		}
	}
}

// TestIdleConnectionHoldsNoBuffers: a keep-alive connection waiting for
// its next request holds neither a read nor a write buffer.
func TestIdleConnectionHoldsNoBuffers(t *testing.T) {
	type seen struct{ rb, wb bool }
	idle := make(chan seen, 16)
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, strings.Repeat("x", 100))
	}, func(s *Server) {
		s.testHookIdle = func(c *conn) { idle <- seen{c.rb != nil, c.wb != nil} }
	})
	c, br := dial(t, addr)
	for i := range 3 {
		req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
		if i == 1 {
			req = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
		}
		roundTrip(t, c, br, req)
		// The hook runs when the connection starts waiting: after the
		// first answer and each later one.
		if s := <-idle; s.rb || s.wb {
			t.Fatalf("idle after request %d: read buffer held %v, write buffer held %v", i, s.rb, s.wb)
		}
	}
}

// TestShutdownDrains: Shutdown closes the idle connections at once, lets
// the request in flight finish (its connection then closes), and returns
// once it has.
func TestShutdownDrains(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	s, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	})
	idleC, idleBR := dial(t, addr)
	roundTrip(t, idleC, idleBR, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	busyC, busyBR := dial(t, addr)
	io.WriteString(busyC, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	if _, err := idleBR.ReadByte(); err == nil {
		t.Fatal("the idle connection got a byte, want it closed")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	resp, err := http.ReadResponse(busyBR, nil)
	if err != nil {
		t.Fatalf("the request in flight: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" || !resp.Close {
		t.Errorf("the request in flight got %q close=%v, want done and the connection closing", b, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the listener still accepts")
	}
}

// TestShutdownGivesUp: Shutdown returns ctx's error when a request
// outlasts it; Close then ends the connection.
func TestShutdownGivesUp(t *testing.T) {
	entered := make(chan struct{})
	s, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
	})
	c, br := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	s.Close()
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection is open after Close")
	}
}

// TestHijack: a handler takes the connection over, with the bytes the
// client sent after its request head, as proxy/connect.go does.
func TestHijack(t *testing.T) {
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		if gc, ok := conn.(*h1guard.Conn); !ok || gc.Conn == nil {
			t.Errorf("hijacked %T, want the *h1guard.Conn accepted", conn)
		}
		n := brw.Reader.Buffered()
		early, _ := brw.Reader.Peek(n)
		early = []byte(string(early))
		brw.Reader.Discard(n)
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\nearly="+string(early)+"\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(conn, "then="+line)
	})
	c, br := dial(t, addr)
	io.WriteString(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nhello")
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if l, _ := br.ReadString('\n'); l != "early=hello\n" {
		t.Errorf("tunnel: %q, want the bytes sent after the head", l)
	}
	io.WriteString(c, "world\n")
	if l, _ := br.ReadString('\n'); l != "then=world\n" {
		t.Errorf("tunnel: %q", l)
	}
}

// TestExpectContinue: the body of a request that expects 100-continue is
// sent by the client only after the server's 100, which the first read
// of the body sends.
func TestExpectContinue(t *testing.T) {
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	c, br := dial(t, addr)
	io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("first answer %v %v, want 100 Continue", resp, err)
	}
	io.WriteString(c, "hello")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Errorf("answer %d %q", resp.StatusCode, b)
	}
}

// TestReadDeadlineBoundsBody: SetReadDeadline through
// http.ResponseController bounds the body's reads (proxy/appbody.go),
// and the connection is not reused after.
func TestReadDeadlineBoundsBody(t *testing.T) {
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := io.ReadAll(r.Body)
		if !errors.Is(err, errDeadline) {
			t.Errorf("body read: %v, want a deadline error", err)
		}
		w.WriteHeader(http.StatusRequestTimeout)
	})
	c, br := dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("answer %v %v", resp, err)
	}
	io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err == nil {
		t.Error("connection reused after a body that timed out")
	}
}

var errDeadline = osErrDeadlineExceeded

// TestPanicClosesConnection: a handler's panic is logged, and its
// connection closed without an answer.
func TestPanicClosesConnection(t *testing.T) {
	logger, logged := logTo(new(strings.Builder))
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		panic("boom")
	}, func(s *Server) { s.ErrorLog = logger })
	c, br := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := br.ReadByte(); err == nil {
		t.Error("got an answer from a panicking handler")
	}
	c.Close()
	if l := logged(); !strings.Contains(l, "panic serving") || !strings.Contains(l, "boom") {
		t.Errorf("log = %q, want the panic", l)
	}
}

// TestHandOff: a connection that opens with the HTTP/2 preface goes to
// HandOff, replaying what the server read.
func TestHandOff(t *testing.T) {
	got := make(chan string, 1)
	_, addr := start(t, nil, func(s *Server) {
		s.HandOff = func(c net.Conn) {
			defer c.Close()
			if _, ok := Unwrap(c).(*h1guard.Conn); !ok {
				t.Errorf("Unwrap = %T, want the accepted *h1guard.Conn", Unwrap(c))
			}
			b := make([]byte, 26)
			_, err := io.ReadFull(c, b)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- string(b)
		}
	})
	c, _ := dial(t, addr)
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxy")
	if s := <-got; s != "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxy" {
		t.Errorf("handed off, read %q", s)
	}
}

// TestParkedConnection: a connection idle for parkDelay gives up its
// goroutine and buffers, and serves its next request when it comes; at
// Shutdown it is closed.
func TestParkedConnection(t *testing.T) {
	if !(&conn{watch: connWatch{}}).canParkHere() {
		t.Skip("no parking on this system")
	}
	parked := make(chan bool, 16)
	s, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}, func(s *Server) {
		s.parkDelay = 10 * time.Millisecond
		s.testHookPark = func(c *conn) { parked <- c.connIO == nil }
	})
	c, br := dial(t, addr)
	for i := range 3 {
		roundTrip(t, c, br, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		if clean := <-parked; !clean {
			t.Fatalf("parked after request %d holding its buffers' state", i)
		}
	}
	// A client that closes a parked connection: it ends.
	c2, br2 := dial(t, addr)
	roundTrip(t, c2, br2, "GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
	<-parked
	c2.Close()
	// Shutdown closes the parked connection at once.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("a parked connection survived Shutdown")
	}
}

// TestParkedConnectionIdleTimeout: a parked connection is closed at
// IdleTimeout.
func TestParkedConnectionIdleTimeout(t *testing.T) {
	if !(&conn{watch: connWatch{}}).canParkHere() {
		t.Skip("no parking on this system")
	}
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {}, func(s *Server) {
		s.IdleTimeout = 100 * time.Millisecond
		s.parkDelay = 10 * time.Millisecond
	})
	c, br := dial(t, addr)
	roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("got a byte, want the connection closed at IdleTimeout")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("closed after %v, want about 100ms", el)
	}
}

// TestReadHeaderTimeout: a head that does not complete within
// ReadHeaderTimeout ends its connection without an answer, as net/http.
func TestReadHeaderTimeout(t *testing.T) {
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {}, func(s *Server) {
		s.ReadHeaderTimeout = 100 * time.Millisecond
	})
	c, br := dial(t, addr)
	start := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("got %q, want the connection closed", b)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("closed after %v, want about 100ms", el)
	}
}

// TestBodyBuffered: a body tells whether its next read, and its rest,
// come from the read buffer (no read(2), so no deadline needed), and
// never claims so for bytes still on the way.
func TestBodyBuffered(t *testing.T) {
	type state struct{ next, all bool }
	got := make(chan state, 8)
	more := make(chan struct{})
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		bb := r.Body.(interface{ Buffered() (bool, bool) })
		report := func() {
			next, all := bb.Buffered()
			got <- state{next, all}
		}
		report()
		if r.URL.Path == "/partial" {
			io.ReadFull(r.Body, make([]byte, 5))
			report()
			more <- struct{}{}
		}
		io.Copy(io.Discard, r.Body)
		report()
	})
	want := func(step string, w state) {
		t.Helper()
		if s := <-got; s != w {
			t.Errorf("%s: Buffered() = %v, %v; want %v, %v", step, s.next, s.all, w.next, w.all)
		}
	}
	c, br := dial(t, addr)

	// The whole body arrived with its head.
	io.WriteString(c, "POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	want("whole body, unread", state{true, true})
	want("whole body, read", state{true, true})
	http.ReadResponse(br, nil)

	// Half of it: the buffered half, then nothing until the rest comes.
	io.WriteString(c, "POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
	want("half the body, unread", state{true, false})
	want("half the body, its half read", state{false, false})
	<-more
	io.WriteString(c, "world")
	want("the rest read", state{true, true})
	http.ReadResponse(br, nil)

	// A chunked body does not say until its end.
	io.WriteString(c, "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	want("chunked, unread", state{false, false})
	want("chunked, read", state{true, true})
	http.ReadResponse(br, nil)
}

// TestParkedConnectionsIdleQueue: parked connections share one idle
// timer; a connection resumed from the middle of the queue leaves it,
// serves its request, and every connection is still closed at its idle
// timeout.
func TestParkedConnectionsIdleQueue(t *testing.T) {
	if !(&conn{watch: connWatch{}}).canParkHere() {
		t.Skip("no parking on this system")
	}
	parked := make(chan struct{}, 16)
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}, func(s *Server) {
		s.IdleTimeout = 300 * time.Millisecond
		s.parkDelay = 10 * time.Millisecond
		s.testHookPark = func(*conn) { parked <- struct{}{} }
	})
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	var cs []client
	for range 3 {
		c, br := dial(t, addr)
		roundTrip(t, c, br, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		<-parked
		cs = append(cs, client{c, br})
	}
	mid := cs[1]
	if resp := roundTrip(t, mid.c, mid.br, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("resumed connection answered %d", resp.StatusCode)
	}
	<-parked
	for i, cl := range cs {
		if b, err := cl.br.ReadByte(); err == nil {
			t.Fatalf("connection %d: got %q, want it closed at IdleTimeout", i, b)
		} else if errors.Is(err, osErrDeadlineExceeded) {
			t.Fatalf("connection %d not closed at IdleTimeout", i)
		}
	}
}

// TestParkedBurstHandsMemoryBack: once enough connections have parked
// and none parks any more, the server has the runtime hand its free
// memory back, and the parked connections still serve.
func TestParkedBurstHandsMemoryBack(t *testing.T) {
	if !(&conn{watch: connWatch{}}).canParkHere() {
		t.Skip("no parking on this system")
	}
	parked := make(chan struct{}, 16)
	released := make(chan struct{}, 16)
	_, addr := start(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}, func(s *Server) {
		s.parkDelay = 10 * time.Millisecond
		s.releaseParks = 3
		s.releaseQuiet = 20 * time.Millisecond
		s.releaseEvery = time.Nanosecond
		s.testHookPark = func(*conn) { parked <- struct{}{} }
		s.testHookRelease = func() { released <- struct{}{} }
	})
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	var cs []client
	for range 3 {
		c, br := dial(t, addr)
		roundTrip(t, c, br, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		<-parked
		cs = append(cs, client{c, br})
	}
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("no hand-back after 3 connections parked")
	}
	for i, cl := range cs {
		if resp := roundTrip(t, cl.c, cl.br, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("connection %d answered %d after the hand-back", i, resp.StatusCode)
		}
	}
}

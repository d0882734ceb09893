package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Hostile clients (issue 16): apps that hold connections open by sending
// slowly, or not at all, must be cut off by the listeners' timeouts
// while every other app is served.

// slowClient is one connection of a slowloris: it sends head at once,
// then one byte of trickle every interval, until the server closes the
// connection (or after len(trickle) bytes).
type slowClient struct {
	start  time.Time
	closed chan struct{} // closed once the server closed the connection
	// after is how long after the dial the server closed it; status the
	// status of the answer read before that, 0 if none.
	after  time.Duration
	status int
	err    error // the read's error that ended it (io.EOF, a reset)
}

// startSlowClient dials addr and starts trickling; ready is called once
// the head was written. The connection's goroutines end by themselves
// within about 20 s at most, and at the test's end.
func startSlowClient(t *testing.T, addr, head, trickle string, interval time.Duration, ready *sync.WaitGroup) *slowClient {
	t.Helper()
	sc := &slowClient{start: time.Now(), closed: make(chan struct{})}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	ready.Done()
	go func() { // reader: the answer, if any, then the close
		defer close(sc.closed)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		if resp, err := http.ReadResponse(br, nil); err == nil {
			sc.status = resp.StatusCode
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		_, sc.err = io.Copy(io.Discard, br)
		if sc.err == nil {
			sc.err = io.EOF
		}
		sc.after = time.Since(sc.start)
	}()
	go func() { // writer: one byte per interval until the close
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; i < len(trickle); i++ {
			select {
			case <-sc.closed:
				return
			case <-tick.C:
			}
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte{trickle[i]}); err != nil {
				return
			}
		}
	}()
	return sc
}

// TestSlowlorisClosedWhileOthersServed: connections that trickle their
// request head, trickle their body, or stop sending their body are
// closed by the read-header timeout, the route's timeout and the
// listener's body_idle_timeout respectively, within those bounds, while
// another app's requests on the same listener are answered at once.
func TestSlowlorisClosedWhileOthersServed(t *testing.T) {
	const (
		headerTimeout = 500 * time.Millisecond
		routeTimeout  = 1500 * time.Millisecond
		bodyIdle      = 300 * time.Millisecond
		interval      = 50 * time.Millisecond // under bodyIdle: only the route's timeout ends a trickled body
		perKind       = 8
		slack         = 5 * time.Second // for a loaded -race run
	)
	var slowHeads atomic.Int32
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow-head" {
			slowHeads.Add(1)
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello from "+r.URL.Path)
	})
	cfg := strings.Replace(oneRoute(`{timeout: 1500ms}`), "address: 127.0.0.1:0", "address: 127.0.0.1:0\n    body_idle_timeout: 300ms", 1)
	sc := startSidecarWith(t, cfg, []Option{WithReadHeaderTimeout(headerTimeout)}, up)
	addr := sc.addr["app"]

	trickle := strings.Repeat("a", int((20*time.Second)/interval)) // bounded: 20 s of bytes at most
	var ready sync.WaitGroup
	ready.Add(3 * perKind)
	var heads, bodies, stalled []*slowClient
	for range perKind {
		heads = append(heads, startSlowClient(t, addr, "GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Slow: ", trickle, interval, &ready))
		bodies = append(bodies, startSlowClient(t, addr, "POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", trickle, interval, &ready))
		stalled = append(stalled, startSlowClient(t, addr, "POST /stalled-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello", "", interval, &ready))
	}
	ready.Wait()

	// Another app, on its own keep-alive connection, is served at once
	// while the slow ones hold theirs.
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 10 {
		start := time.Now()
		resp, err := client.Post("http://"+addr+"/normal", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatalf("normal request %d during the slowloris: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "hello from /normal" {
			t.Fatalf("normal request %d during the slowloris = %d %q, want 200 from the upstream", i, resp.StatusCode, body)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("normal request %d took %v during the slowloris, want it served at once", i, el)
		}
	}

	check := func(kind string, cs []*slowClient, bound time.Duration, wantStatus int) {
		t.Helper()
		for i, c := range cs {
			select {
			case <-c.closed:
			case <-time.After(time.Until(c.start.Add(bound + slack))):
				t.Errorf("%s connection %d still open %v after its dial, want it closed after about %v", kind, i, time.Since(c.start), bound)
				continue
			}
			if c.after < bound || c.after > bound+slack {
				t.Errorf("%s connection %d closed %v after its dial (%v), want between %v and %v", kind, i, c.after, c.err, bound, bound+slack)
			}
			if c.err != io.EOF && !errors.Is(c.err, net.ErrClosed) && !isReset(c.err) {
				t.Errorf("%s connection %d ended with %v, want the server to close it", kind, i, c.err)
			}
			// A server that closes while bytes still arrive may reset the
			// connection before its answer is read: no answer is then
			// acceptable, a wrong one never.
			if c.status != 0 && c.status != wantStatus {
				t.Errorf("%s connection %d answered %d, want %d or nothing", kind, i, c.status, wantStatus)
			}
		}
	}
	check("trickled head", heads, headerTimeout, http.StatusRequestTimeout)
	check("trickled body", bodies, routeTimeout, http.StatusRequestTimeout)
	check("stalled body", stalled, bodyIdle, http.StatusRequestTimeout)
	if n := slowHeads.Load(); n != 0 {
		t.Errorf("upstream saw %d requests of a trickled head, want 0", n)
	}
}

// isReset reports a connection reset by the peer.
func isReset(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && strings.Contains(se.Error(), "reset")
}

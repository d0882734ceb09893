package h2conn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// rawPair is a loopback TCP connection: the accepted end and the
// dialled end, both closed when the test ends.
func rawPair(t *testing.T) (raw, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialled := make(chan net.Conn, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
		dialled <- c
	}()
	raw, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	peer = <-dialled
	if peer == nil {
		raw.Close()
		t.FailNow()
	}
	t.Cleanup(func() { raw.Close(); peer.Close() })
	return raw, peer
}

// pair is rawPair with the accepted end through Server.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	raw, peer := rawPair(t)
	c := Server(raw)
	t.Cleanup(func() { c.Close() })
	return c, peer
}

// countingConn counts the writes that reach the wrapped connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestBufferedReads: small reads are served from one read of the
// socket, and keep the bytes and their order.
func TestBufferedReads(t *testing.T) {
	c, peer := pair(t)
	frames := bytes.Repeat([]byte("0123456789abcdef"), 100)
	go peer.Write(frames)
	got := make([]byte, len(frames))
	for i := 0; i < len(got); i += 9 {
		if _, err := io.ReadFull(c, got[i:min(i+9, len(got))]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, frames) {
		t.Fatal("buffered reads changed the bytes")
	}
}

// TestQueueDoesNotWait: Queue appends past MaxPending where Write would
// block, reports what waits, and WaitWritable returns once the writer
// has taken it.
func TestQueueDoesNotWait(t *testing.T) {
	c, peer := pair(t)
	big := make([]byte, MaxPending+1)
	n, err := c.Queue(big)
	if err != nil || n < len(big) {
		t.Fatalf("Queue = %d, %v", n, err)
	}
	if _, err := c.Queue([]byte("more")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.WaitWritable() }()
	got, err := io.ReadAll(io.LimitReader(peer, int64(len(big)+4)))
	if err != nil || len(got) != len(big)+4 || string(got[len(big):]) != "more" {
		t.Fatalf("peer read %d bytes, %v", len(got), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.WaitWritable(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WaitWritable after Close = %v", err)
	}
	if _, err := c.Queue([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Queue after Close = %v", err)
	}
}

// TestWritesBatch: writes from many goroutines that are runnable at once
// leave in fewer syscalls than writes, in each writer's order, and
// nothing is lost.
func TestWritesBatch(t *testing.T) {
	raw, peer := rawPair(t)
	cc := &countingConn{Conn: raw}
	c := Client(cc)

	const writers, each = 16, 100
	received := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(peer)
		received <- b
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := c.Write([]byte{byte(w), byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := <-received
	if len(got) != writers*each*2 {
		t.Fatalf("received %d bytes, want %d", len(got), writers*each*2)
	}
	next := make([]int, writers)
	for i := 0; i < len(got); i += 2 {
		w, n := got[i], int(got[i+1])
		if n != next[w] {
			t.Fatalf("writer %d: message %d arrived before %d", w, n, next[w])
		}
		next[w]++
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.writes >= writers*each {
		t.Fatalf("%d syscalls for %d writes: nothing batched", cc.writes, writers*each)
	}
	t.Logf("%d writes in %d syscalls", writers*each, cc.writes)
}

// TestCloseWritesPending: what was written before Close reaches the peer,
// and writes after Close fail.
func TestCloseWritesPending(t *testing.T) {
	c, peer := pair(t)
	if _, err := c.Write([]byte("goaway")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	b, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "goaway" {
		t.Fatalf("peer read %q", b)
	}
}

// TestWriteErrorSticks: once a write fails, later writes fail too.
func TestWriteErrorSticks(t *testing.T) {
	c, peer := pair(t)
	peer.Close()
	c.Conn.Close() // the socket is gone under the writer
	c.Write([]byte("lost"))
	if err := c.wait(); err == nil {
		t.Fatal("no error after writing to a closed socket")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("a write after a failed one succeeded")
	}
}

// TestIdleReadHoldsNoBuffer: a read that finds the socket empty gives
// the read buffer back before it waits, and the bytes that arrive then
// are read whole and in order.
func TestIdleReadHoldsNoBuffer(t *testing.T) {
	c, peer := pair(t)
	if c.rd.raw == nil {
		t.Skip("no raw socket reads on this platform")
	}
	waiting := make(chan bool, 4)
	c.rd.io.testHookWait = func() { waiting <- c.rbuf == nil }
	got := make(chan string, 1)
	go func() {
		var b [5]byte
		var s []byte
		for range 2 {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				t.Error(err)
			}
			s = append(s, b[:]...)
		}
		got <- string(s)
	}()
	// The bound only guards against a hang.
	wait := func(what string) {
		t.Helper()
		select {
		case released := <-waiting:
			if !released {
				t.Fatalf("Read waits for %s holding its buffer", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Read never waited for %s", what)
		}
	}
	wait("bytes")
	peer.Write([]byte("hello"))
	wait("more bytes")
	peer.Write([]byte("world"))
	if s := <-got; s != "helloworld" {
		t.Fatalf("read %q, want %q", s, "helloworld")
	}
}

// TestWriteBuffersReleased: once the writer has written everything, the
// connection holds no write buffer; a frame queued as header and
// payload leaves as one, after what was queued before.
func TestWriteBuffersReleased(t *testing.T) {
	c, peer := pair(t)
	if _, err := c.Write([]byte("head:")); err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("p"), 20<<10)
	if _, err := c.QueueFrame([]byte("frame:"), payload); err != nil {
		t.Fatal(err)
	}
	want := "head:frame:" + string(payload)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != want {
		t.Fatalf("peer read %d bytes (%v), want %d in order", len(got), err, len(want))
	}
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	held := c.buf != nil || c.spare != nil
	c.mu.Unlock()
	if held {
		t.Fatal("an idle connection holds a write buffer")
	}
}

// readAhead is a wrapper that read bytes ahead of its reader, as
// internal/h1server's hand-off does, around one that watches what is
// read beneath it, as internal/h1guard's.
type readAhead struct {
	net.Conn
	ahead []byte
}

func (r *readAhead) Detach() ([]byte, net.Conn) {
	b := r.ahead
	r.ahead = nil
	return b, r.Conn
}

type watched struct {
	net.Conn
	mu  sync.Mutex
	fed []byte
}

func (w *watched) NetConn() net.Conn { return w.Conn }

func (w *watched) Feed(b []byte) {
	w.mu.Lock()
	w.fed = append(w.fed, b...)
	w.mu.Unlock()
}

// TestServerBeneathWrappers: a Server connection returns the bytes a
// wrapper read ahead first, then reads the socket beneath, telling the
// watching wrapper every byte read there and nothing else.
func TestServerBeneathWrappers(t *testing.T) {
	raw, peer := rawPair(t)
	w := &watched{Conn: raw}
	c := Server(&readAhead{Conn: w, ahead: []byte("ahead|")})
	defer c.Close()
	go peer.Write([]byte("socket"))
	got := make([]byte, len("ahead|socket"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ahead|socket" {
		t.Fatalf("read %q (%v), want %q", got, err, "ahead|socket")
	}
	w.mu.Lock()
	fed := string(w.fed)
	w.mu.Unlock()
	if fed != "socket" {
		t.Fatalf("the watching wrapper was fed %q, want %q", fed, "socket")
	}
}

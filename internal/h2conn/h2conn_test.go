package h2conn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// pair is a loopback TCP connection: the accepted end through Listen,
// and the dialled end.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := Listen(ln)
	dialled := make(chan net.Conn, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
		dialled <- c
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	peer := <-dialled
	if peer == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c.(*Conn), peer
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

func TestHTTP1PassesThrough(t *testing.T) {
	c, peer := pair(t)
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	go peer.Write([]byte(req))
	buf := make([]byte, 4)
	got := ""
	for len(got) < len(req) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += string(buf[:n])
		if n > len(buf) {
			t.Fatal("read past the caller's buffer")
		}
	}
	if got != req {
		t.Fatalf("read %q", got)
	}
	if c.HTTP2() || c.rbuf != nil {
		t.Fatal("an HTTP/1.1 connection turned batching on")
	}
	if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if c.writing {
		t.Fatal("an HTTP/1.1 write went to the writer goroutine")
	}
}

func TestPrefaceTurnsOn(t *testing.T) {
	c, peer := pair(t)
	frames := bytes.Repeat([]byte("0123456789abcdef"), 100)
	// The preface split over two reads, then frames read in small pieces.
	go func() {
		peer.Write([]byte(preface[:10]))
		peer.Write([]byte(preface[10:]))
		peer.Write(frames)
	}()
	head := make([]byte, len(preface))
	if _, err := io.ReadFull(c, head[:10]); err != nil {
		t.Fatal(err)
	}
	if c.HTTP2() {
		t.Fatal("on before the whole preface")
	}
	if _, err := io.ReadFull(c, head[10:]); err != nil {
		t.Fatal(err)
	}
	if string(head) != preface || !c.HTTP2() {
		t.Fatalf("preface %q, on %v", head, c.HTTP2())
	}
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

// TestWritesBatch: writes from many goroutines that are runnable at once
// leave in fewer syscalls than writes, in each writer's order, and
// nothing is lost.
func TestWritesBatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
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
	c.on.Store(true)
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
	c.on.Store(true)
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

package proxy

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/inmem"
	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// TestTeeBody: the replay tee hands each attempt the whole body, fails a
// superseded attempt's reads, and stops offering replay past its limit.
func TestTeeBody(t *testing.T) {
	newTee := func(body string, limit int64) *teeBody {
		tb := &teeBody{orig: strings.NewReader(body), limit: limit}
		tb.cond.L = &tb.mu
		return tb
	}
	tb := newTee("hello world", 64)
	attempt1 := tb.next()
	buf := make([]byte, 5)
	if n, err := attempt1.Read(buf); n != 5 || err != nil || string(buf) != "hello" {
		t.Fatalf("first attempt Read = %d %q, %v; want 5 \"hello\"", n, buf[:n], err)
	}
	if !tb.replayable() {
		t.Fatal("replayable() = false after 5 of 11 bytes under a 64-byte limit, want true")
	}
	attempt2 := tb.next()
	if _, err := attempt1.Read(buf); !errors.Is(err, errStaleAttempt) {
		t.Errorf("superseded attempt Read error = %v, want errStaleAttempt", err)
	}
	if got, err := io.ReadAll(attempt2); string(got) != "hello world" || err != nil {
		t.Errorf("second attempt ReadAll = %q, %v; want the whole body", got, err)
	}
	if !tb.replayable() {
		t.Error("replayable() = false after the whole body under the limit, want true")
	}

	tb = newTee(strings.Repeat("x", 100), 10)
	if got, err := io.ReadAll(tb.next()); len(got) != 100 || err != nil {
		t.Errorf("ReadAll past the limit = %d bytes, %v; want 100", len(got), err)
	}
	if tb.replayable() {
		t.Error("replayable() = true after 100 bytes over a 10-byte limit, want false")
	}
}

// TestTeeBodyBlockedStaleReader: a superseded attempt blocked reading the
// app's body neither holds up its successor, which first replays what was
// read, nor steals the bytes it is waiting for.
func TestTeeBodyBlockedStaleReader(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	tb := &teeBody{orig: pr, limit: 64}
	tb.cond.L = &tb.mu
	attempt1 := tb.next()
	go pw.Write([]byte("ab"))
	buf := make([]byte, 8)
	if n, err := attempt1.Read(buf); string(buf[:n]) != "ab" || err != nil {
		t.Fatalf("attempt 1 Read = %q, %v; want \"ab\"", buf[:n], err)
	}
	stale := make(chan error, 1)
	go func() {
		_, err := attempt1.Read(make([]byte, 8)) // blocks in the pipe
		stale <- err
	}()
	poll.Until(t, 10*time.Second, "attempt 1 inside the body's Read", func() bool {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		return tb.reading
	})
	attempt2 := tb.next()
	if n, err := attempt2.Read(buf); string(buf[:n]) != "ab" || err != nil {
		t.Fatalf("attempt 2 Read = %q, %v; want the replayed \"ab\"", buf[:n], err)
	}
	go pw.Write([]byte("cd"))
	if n, err := attempt2.Read(buf); string(buf[:n]) != "cd" || err != nil {
		t.Errorf("attempt 2 second Read = %q, %v; want \"cd\", which attempt 1 read for it", buf[:n], err)
	}
	if err := <-stale; !errors.Is(err, errStaleAttempt) {
		t.Errorf("attempt 1 blocked Read = %v, want errStaleAttempt", err)
	}
}

// A teeReader tells what of the body is at hand (internal/inmem), so that
// an HTTP/2 client sends a whole gRPC message with its HEADERS even with
// retries on.
func TestTeeReaderBuffered(t *testing.T) {
	whole := func(r io.Reader) bool { return inmem.Whole(r) }
	newTee := func(orig io.Reader) *teeBody {
		tb := &teeBody{orig: orig, limit: 64}
		tb.cond.L = &tb.mu
		return tb
	}

	tb := newTee(inmem.NewBody([]byte("hello")))
	if r := tb.next(); !whole(r) {
		t.Error("over an in-memory body: not whole")
	}

	pr, pw := io.Pipe()
	tb = newTee(pr)
	r := tb.next()
	if whole(r) {
		t.Error("over a pipe still open: whole")
	}
	go func() { io.WriteString(pw, "hello"); pw.Close() }()
	if b, err := io.ReadAll(r); err != nil || string(b) != "hello" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
	if r := tb.next(); !whole(r) {
		t.Error("a replay of a body read to its end: not whole")
	}
	if !whole(r) {
		t.Error("a stale reader (its reads fail at once): not whole")
	}
}

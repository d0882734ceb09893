package h2server

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestIdleConnectionsHoldNoBuffers: connections that have each sent a
// 16 KiB body, been answered 16 KiB and sit idle keep no read or write
// buffer: the live heap they add, client sockets included, stays under
// 12 KiB each (before buffers were released while idle: about 73 KiB,
// 16 KiB of read buffer, the framer's 16 KiB for the body's frame, and
// two copies of the answer in write buffers).
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	if testing.Short() {
		t.Skip("opens hundreds of connections")
	}
	const n = 256
	const limit = 12 << 10
	answer := bytes.Repeat([]byte("a"), 16<<10)
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n, err := io.Copy(io.Discard, r.Body); n != 16<<10 || err != nil {
			t.Errorf("the handler read %d bytes of the body (%v), want %d", n, err, 16<<10)
		}
		w.Write(answer)
	})})
	request := idleRequest(t)
	before := liveHeap()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for range n {
		conns = append(conns, openIdle(t, addr, request))
	}
	// The server's side of the last connections may still be finishing:
	// look until it is idle (the deadline only guards against a hang).
	var per int
	for deadline := time.Now().Add(10 * time.Second); ; {
		per = int(liveHeap()-before) / n
		if per < limit || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if per >= limit {
		t.Fatalf("%d idle connections hold %d bytes of live heap each, want < %d", n, per, limit)
	}
	t.Logf("%d idle connections: %d bytes of live heap each", n, per)
}

// liveHeap is the heap in use after a collection; two, so that what
// sync.Pools hold is freed too.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// idleRequest is the preface, SETTINGS and a POST on stream 1 with a
// 16 KiB body in one DATA frame.
func idleRequest(t *testing.T) []byte {
	var block, out bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "example.test"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, true, make([]byte, 16<<10)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// openIdle opens a connection, sends request and reads until stream 1
// ends, acknowledging the server's SETTINGS; it returns the connection,
// keeping nothing else of the client's.
func openIdle(t *testing.T, addr string, request []byte) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second)) // guards against a hang
	if _, err := nc.Write(request); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
		}
		if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
			if _, ok := f.(*http2.DataFrame); !ok {
				t.Fatalf("stream 1 ended with %v, want DATA", f.Header())
			}
			break
		}
	}
	nc.SetDeadline(time.Time{})
	return nc
}

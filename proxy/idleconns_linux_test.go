package proxy

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// rawConn is a client connection made with system calls alone, so that
// the client side of thousands of connections adds nothing to the Go
// heap this test measures.
type rawConn int

// dialRawSyscall connects to addr (127.0.0.1:port) with blocking system calls
// whose reads give up after timeout.
func dialRawSyscall(addr *net.TCPAddr, timeout time.Duration) (rawConn, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Connect(fd, sa); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return rawConn(fd), nil
}

// roundTrip sends req and reads until the answer ends with want.
func (c rawConn) roundTrip(req, want []byte) error {
	if _, err := syscall.Write(int(c), req); err != nil {
		return err
	}
	var buf [1024]byte
	got := 0
	for got < len(buf) {
		n, err := syscall.Read(int(c), buf[got:])
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("closed after %q", buf[:got])
		}
		got += n
		if bytes.HasSuffix(buf[:got], want) {
			if !bytes.HasPrefix(buf[:got], []byte("HTTP/1.1 200 ")) {
				return fmt.Errorf("answer %q, want 200", buf[:got])
			}
			return nil
		}
	}
	return fmt.Errorf("answer %q, want one ending in %q", buf[:got], want)
}

// heapAndStacks is the live heap and the goroutine stacks in use, after
// a full collection.
func heapAndStacks() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// TestIdleConnectionsBoundedMemory: thousands of idle keep-alive
// connections, each after one proxied request, cost the sidecar a
// bounded amount of memory each, far below a goroutine and buffers per
// connection (docs/design.md, "Idle connections": about 0.8 KiB of heap
// once parked). bench/idleconns measures the whole process's resident
// memory with 10,000; this holds the per-connection heap in the tests.
func TestIdleConnectionsBoundedMemory(t *testing.T) {
	const (
		conns   = 3000
		workers = 8
		// perConnBound is the heap and stack growth allowed per idle
		// connection: net/http's server holds about 20 KiB, a parked
		// connection of h1server about 0.9 KiB (measured with and
		// without -race).
		perConnBound = 2 << 10
	)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if need := uint64(2*conns + 512); lim.Cur < need {
		t.Skipf("open-file limit %d is below the %d this test needs (both ends of %d connections): raise ulimit -n", lim.Cur, need, conns)
	}
	up := newUpstream(t, nil)
	sc := startSidecar(t, oneRoute("{}"), up)
	addr, err := net.ResolveTCPAddr("tcp", sc.addr["app"])
	if err != nil {
		t.Fatal(err)
	}
	req := []byte("GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
	want := []byte("hello from /idle")

	var mu sync.Mutex
	var opened []rawConn
	t.Cleanup(func() {
		for _, c := range opened {
			syscall.Close(int(c))
		}
	})
	// open opens n connections with workers in parallel, one request on
	// each, and keeps them open.
	open := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					c, err := dialRawSyscall(addr, 10*time.Second)
					if err != nil {
						errs <- fmt.Errorf("connection %d: dial: %v", i, err)
						return
					}
					mu.Lock()
					opened = append(opened, c)
					mu.Unlock()
					if err := c.roundTrip(req, want); err != nil {
						errs <- fmt.Errorf("connection %d: %v", i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	// Warm up: the upstream connection pool, the server's pools and the
	// handler's goroutines reach their steady state first, then go idle.
	open(4 * workers)
	baseGoroutines := runtime.NumGoroutine()
	before := heapAndStacks()

	start := time.Now()
	open(conns)
	t.Logf("%d connections opened, one request each, in %v", conns, time.Since(start))
	// Idle connections park (100 ms after their request): their
	// goroutines end.
	poll.Until(t, 20*time.Second, "the idle connections' goroutines to end", func() bool {
		return runtime.NumGoroutine() <= baseGoroutines+workers
	})
	after := heapAndStacks()
	per := (int64(after) - int64(before)) / conns
	t.Logf("heap and stacks: %d KiB before, %d KiB with %d idle connections: %d bytes a connection", before>>10, after>>10, conns, per)
	if per > perConnBound {
		t.Errorf("%d idle connections cost %d bytes each of heap and stacks, want at most %d", conns, per, perConnBound)
	}
	// They are still usable: idle, not closed.
	for _, c := range opened[len(opened)-3:] {
		if err := c.roundTrip(req, want); err != nil {
			t.Errorf("an idle connection's next request: %v", err)
		}
	}
}

package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
)

// reloadConfig is two listeners' worth of config: "app" at appAddr and,
// when extraAddr is not empty, "extra" at extraAddr.
func reloadConfig(upstream, appAddr, extraAddr string) string {
	c := `
version: 1
upstreams:
  up: {endpoints: ["` + upstream + `"]}
listeners:
  - name: app
    address: ` + appAddr + `
    routes:
      - {name: a, upstream: up}
`
	if extraAddr != "" {
		c += `  - name: extra
    address: ` + extraAddr + `
    routes:
      - {name: x, upstream: up}
`
	}
	return c
}

func buildFrom(t *testing.T, yaml string, prev *Snapshot) *Snapshot {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Build(cfg, prev, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func getOK(t *testing.T, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET on %s: %v", addr, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET on %s = %d, want 200", addr, resp.StatusCode)
	}
}

// A reload whose listener cannot bind changes nothing: the old snapshot
// and sockets keep serving, even those whose addresses it freed to retry.
func TestReloadBindFailureChangesNothing(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	appLn, _ := net.Listen("tcp", "127.0.0.1:0")
	appAddr := appLn.Addr().String()
	appLn.Close()
	extraLn, _ := net.Listen("tcp", "127.0.0.1:0")
	extraAddr := extraLn.Addr().String()
	extraLn.Close()

	snap := buildFrom(t, reloadConfig(up.URL, appAddr, extraAddr), nil)
	srv := NewServer(snap, slog.New(slog.DiscardHandler))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown after the reloads = %v, want nil", err)
		}
	}()

	// "extra" moves to a taken address and "app" to extra's: the binds
	// are retried after extra's socket is closed, and still fail.
	next := buildFrom(t, reloadConfig(up.URL, extraAddr, taken.Addr().String()), srv.Snapshot())
	err = srv.Reload(next, time.Second)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Reload onto a taken address = %v, want address already in use", err)
	}
	if srv.Snapshot() != snap {
		t.Errorf("a failed reload swapped the snapshot")
	}
	getOK(t, appAddr)
	getOK(t, extraAddr) // closed to retry, then opened again
	if got := srv.Addrs(); got["app"].String() != appAddr || got["extra"].String() != extraAddr {
		t.Errorf("Addrs after a failed reload = %v, want app %s, extra %s", got, appAddr, extraAddr)
	}

	// Swapping two listeners' addresses works: the sockets of both are
	// closed, then bound again the other way round.
	next = buildFrom(t, reloadConfig(up.URL, extraAddr, appAddr), srv.Snapshot())
	if err := srv.Reload(next, time.Second); err != nil {
		t.Fatalf("Reload swapping two addresses = %v", err)
	}
	if got := srv.Addrs(); got["app"].String() != extraAddr || got["extra"].String() != appAddr {
		t.Errorf("Addrs after the swap = %v, want app %s, extra %s", got, extraAddr, appAddr)
	}
	getOK(t, appAddr)
	getOK(t, extraAddr)
}

// A shutdown just after a reload that bound a listener anew, whose serve
// goroutine may be starting its HTTP/2 side as the shutdown waits for it,
// waits for what was started and lets nothing start after (run with
// -race: the engine's WaitGroup was added to concurrently with its Wait),
// and reports no error: the retired listener's socket, which the reload
// closed to bind its address again, is no failure of the shutdown (that
// one races with the retired engine's Serve returning; see
// TestRetiredSocketClosedTwice for the deterministic case).
func TestShutdownRightAfterReload(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	for range 50 {
		srv := NewServer(buildFrom(t, reloadConfig(up.URL, "127.0.0.1:0", ""), nil), slog.New(slog.DiscardHandler))
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		srv.Serve()
		// A concrete address is a change: the listener is bound anew.
		next := buildFrom(t, reloadConfig(up.URL, srv.Addrs()["app"].String(), ""), srv.Snapshot())
		if err := srv.Reload(next, time.Second); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := srv.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Shutdown right after a reload = %v, want nil", err)
		}
	}
}

// heldListener holds a failed Accept until the listener is closed
// through it, as an engine's Shutdown does: the engine's Serve is still
// accepting on it when its Shutdown closes it.
type heldListener struct {
	net.Listener
	accepting             chan struct{} // closed when Accept is first called
	closed                chan struct{} // closed when Close is first called
	acceptOnce, closeOnce sync.Once
}

func (l *heldListener) Accept() (net.Conn, error) {
	l.acceptOnce.Do(func() { close(l.accepting) })
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.closed
	}
	return c, err
}

func (l *heldListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// The socket of a listener a reload moves is closed twice: by the reload,
// to free its address for the new socket, and then by its engine's
// Shutdown if the engine's Serve has not returned yet. The engine's
// Shutdown, the retiring drain's or the Server's, must not report the
// second close as an error ("use of closed network connection"), for
// every protocol.
func TestRetiredSocketClosedTwice(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	srv := NewServer(buildFrom(t, reloadConfig(up.URL, "127.0.0.1:0", ""), nil), slog.New(slog.DiscardHandler))
	defer srv.Shutdown(context.Background()) // binds nothing: closes its snapshot
	for _, protocol := range []string{"http1", "h2c", "auto"} {
		t.Run(protocol, func(t *testing.T) {
			b, err := srv.bind(&Listener{Name: "app", Address: "127.0.0.1:0", Protocol: protocol})
			if err != nil {
				t.Fatal(err)
			}
			held := &heldListener{Listener: b.ln, accepting: make(chan struct{}), closed: make(chan struct{})}
			served := make(chan error, 1)
			go func() { served <- b.srv.Serve(held) }()
			<-held.accepting
			if err := b.ln.Close(); err != nil { // as bindAll frees the address
				t.Fatalf("first Close of the socket = %v, want nil", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := b.srv.Shutdown(ctx); err != nil {
				t.Errorf("engine Shutdown after the reload closed its socket = %v, want nil", err)
			}
			<-served
		})
	}
}

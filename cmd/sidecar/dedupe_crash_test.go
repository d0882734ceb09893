package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// dedupeConfig is crashConfig's async route with a dedupe window, on the
// spool block given (a YAML flow mapping's body).
func dedupeConfig(t *testing.T, spoolBlock, upstream, when string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: 1s
admin: {address: "127.0.0.1:0"}
spool: {%s}
upstreams:
  up: {endpoints: ["http://%s"], connect_timeout: 200ms}
policies:
  default: {timeout: 2s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - name: ev
        upstream: up
        async:
          when: %s
          backoff: {base: 10ms, max: 50ms}
          max_attempts: 1000000
          dedupe_window: 10m
`, spoolBlock, upstream, when))
}

// keyUpstream answers 200 to keys it lets through and 503 to the others,
// and counts the requests and the 2xx answers per Idempotency-Key.
type keyUpstream struct {
	mu        sync.Mutex
	delivered map[string]int
	calls     map[string]int
	hold      map[string]bool
}

func (u *keyUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	key := r.Header.Get("Idempotency-Key")
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls[key]++
	if u.hold[key] {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	u.delivered[key]++
}

func (u *keyUpstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.delivered[key]
}

func (u *keyUpstream) callsOf(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls[key]
}

// postKey POSTs to the app listener with an Idempotency-Key and returns
// the 202's spool ID and body.
func postKey(t *testing.T, addr, key string) (string, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/events", strings.NewReader("body of "+key))
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST key %s: %v", key, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST key %s = %d %s, want 202", key, resp.StatusCode, b)
	}
	return resp.Header.Get("Sidecar-Spool-Id"), string(b)
}

// killOnceDelivered waits until the message of key delivered was
// delivered and its acknowledgement is durable (the spool holds only the
// other one: a kill before the ack would deliver it again after the
// restart, as at-least-once allows), kills the sidecar with SIGKILL and
// starts it again on cfg.
func killOnceDelivered(t *testing.T, cmd *exec.Cmd, s started, up *keyUpstream, cfg string) started {
	t.Helper()
	poll.Until(t, 10*time.Second, "the delivery of key delivered", func() bool {
		st, err := getSpool(s.Admin)
		return up.count("delivered") == 1 && err == nil && st.Total.Depth == 1
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	_, s, _ = startBinary(t, cfg)
	return s
}

// deliverPendingOnce lets the upstream take key pending, waits (up to
// wait) until the spool is empty, and checks that each key was delivered
// exactly once.
func deliverPendingOnce(t *testing.T, s started, up *keyUpstream, wait time.Duration) {
	t.Helper()
	up.mu.Lock()
	up.hold["pending"] = false
	up.mu.Unlock()
	poll.Until(t, wait, "the delivery of key pending", func() bool {
		st, err := getSpool(s.Admin)
		return err == nil && st.Total.Depth == 0 && up.count("pending") >= 1
	})
	for _, key := range []string{"delivered", "pending"} {
		if n := up.count(key); n != 1 {
			t.Errorf("key %s delivered %d times, want 1", key, n)
		}
	}
}

// TestKill9KeepsDedupe: a request is acknowledged (202), the sidecar is
// killed with SIGKILL, restarted on the same spool, and the app repeats
// the request with the same Idempotency-Key: it gets the same spool ID and
// body, and the upstream gets exactly one delivery. One key's message was
// delivered before the kill, the other's was still pending (the upstream
// refused it).
func TestKill9KeepsDedupe(t *testing.T) {
	for _, when := range []string{"always", "upstream_down"} {
		t.Run(when, func(t *testing.T) {
			up := &keyUpstream{delivered: map[string]int{}, calls: map[string]int{}, hold: map[string]bool{"pending": true}}
			if when == "upstream_down" {
				// The first call of "delivered" must fail for it to be
				// spooled: it is held until after its 202.
				up.hold["delivered"] = true
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: up}
			go srv.Serve(ln)
			defer srv.Close()
			cfg := dedupeConfig(t, fmt.Sprintf("dir: %q, fsync: always", t.TempDir()), ln.Addr().String(), when)

			cmd, s, _ := startBinary(t, cfg)
			addr := strings.TrimPrefix(s.Listeners, "app=")
			ids, bodies := map[string]string{}, map[string]string{}
			for _, key := range []string{"delivered", "pending"} {
				ids[key], bodies[key] = postKey(t, addr, key)
			}
			up.mu.Lock()
			up.hold["delivered"] = false
			up.mu.Unlock()
			s = killOnceDelivered(t, cmd, s, up, cfg)
			addr = strings.TrimPrefix(s.Listeners, "app=")
			for _, key := range []string{"delivered", "pending"} {
				calls := up.callsOf(key)
				id, body := postKey(t, addr, key)
				if id != ids[key] || body != bodies[key] {
					t.Errorf("after kill -9, key %s answered %s %q, want the first answer %s %q", key, id, body, ids[key], bodies[key])
				}
				// The message of key delivered was delivered: any call
				// with its key now would be the repeat's.
				if when == "upstream_down" && key == "delivered" && up.callsOf(key) != calls {
					t.Errorf("the repeat of a spooled and delivered request called the upstream")
				}
			}
			deliverPendingOnce(t, s, up, 10*time.Second)
		})
	}
}

// TestKill9KeepsDedupeJetStream is TestKill9KeepsDedupe's when: always
// case on the JetStream backend: the repeat after a kill -9 and a restart
// gets the first 202 from the stream, for a message delivered before the
// kill (the stream's duplicate window answers) and for one still pending.
func TestKill9KeepsDedupeJetStream(t *testing.T) {
	ns := startNATS(t)
	up := &keyUpstream{delivered: map[string]int{}, calls: map[string]int{}, hold: map[string]bool{"pending": true}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: up}
	go srv.Serve(ln)
	defer srv.Close()
	cfg := dedupeConfig(t, fmt.Sprintf("backend: jetstream, jetstream: {url: %q, stream: DEDUPE9}", ns.ClientURL()), ln.Addr().String(), "always")

	cmd, s, _ := startBinary(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")
	ids := map[string]string{}
	for _, key := range []string{"delivered", "pending"} {
		ids[key], _ = postKey(t, addr, key)
	}
	s = killOnceDelivered(t, cmd, s, up, cfg)
	addr = strings.TrimPrefix(s.Listeners, "app=")
	for _, key := range []string{"delivered", "pending"} {
		if id, _ := postKey(t, addr, key); id != ids[key] {
			t.Errorf("after kill -9, key %s answered %s, want the first answer %s", key, id, ids[key])
		}
	}
	// A message leased by the killed sidecar is handed out again after
	// the consumer's ack wait (30s).
	deliverPendingOnce(t, s, up, 60*time.Second)
}

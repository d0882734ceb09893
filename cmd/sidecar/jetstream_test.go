package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// startNATS starts an embedded JetStream server on a random loopback port
// with its data in a temporary directory.
func startNATS(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// TestRunSpoolsToJetStream: with spool.backend jetstream the binary answers
// an async request 202 once the stream holds it.
func TestRunSpoolsToJetStream(t *testing.T) {
	ns := startNATS(t)
	cfg := asyncConfig(t, fmt.Sprintf(`backend: jetstream, jetstream: {url: %q, stream: CMDJS}`, ns.ClientURL()))
	cmd, s, _ := startBinary(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")
	resp, err := http.Post("http://"+addr+"/e", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("Sidecar-Spool-Id")
	if resp.StatusCode != http.StatusAccepted || id == "" {
		t.Fatalf("POST to an async route = %d, spool id %q; want 202 with an id", resp.StatusCode, id)
	}
	st, err := jsstore.Open(t.Context(), jsstore.Options{URL: ns.ClientURL(), Stream: "CMDJS"})
	if err != nil {
		t.Fatalf("jsstore.Open(CMDJS) = %v", err)
	}
	m, info, err := st.Get(id)
	if err != nil || string(m.Body) != "hello" || info.Route != "ev" {
		t.Errorf("Get(%s) = %v, %+v, %v; want the spooled request of route ev", id, m, info, err)
	}
	st.Close()
	if code := readyz(t, s.Admin); code != http.StatusOK {
		t.Errorf("GET /readyz = %d, want 200", code)
	}

	// NATS goes away: not ready, and no 202 for a request not stored.
	ns.Shutdown()
	ns.WaitForShutdown()
	poll.Until(t, 5*time.Second, "GET /readyz with NATS down to turn 503", func() bool {
		return readyz(t, s.Admin) == http.StatusServiceUnavailable
	})
	resp, err = http.Post("http://"+addr+"/e", "text/plain", strings.NewReader("lost?"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("POST to an async route with NATS down = %d, want 503", resp.StatusCode)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exit after SIGTERM = %v, want 0", err)
	}
}

func readyz(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRunFailsWhenNATSUnreachable(t *testing.T) {
	cfg := asyncConfig(t, `backend: jetstream, jetstream: {url: "nats://127.0.0.1:1"}`)
	code, _, stderr := runCLI(t, "run", "-config", cfg)
	if code != exitFailure || !strings.Contains(stderr, "cannot open the spool") || !strings.Contains(stderr, "connect") {
		t.Errorf("sidecar run with NATS unreachable = exit %d, stderr %q; want exit %d saying it cannot connect", code, stderr, exitFailure)
	}
}

// TestOpenJetStreamWarnsReplicasOne: with replicas 1 the start log names
// the server setting that makes acknowledged messages durable.
func TestOpenJetStreamWarnsReplicasOne(t *testing.T) {
	ns := startNATS(t)
	yaml := fmt.Sprintf(`
version: 1
spool: {backend: jetstream, jetstream: {url: %q}}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, upstream: up, async: {when: always, max_messages: 5, max_bytes: 1MiB}}
`, ns.ClientURL())
	cfg, err := config.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	st, err := openJetStream(t.Context(), cfg, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatalf("openJetStream() = %v", err)
	}
	defer st.Close()
	for _, want := range []string{"sync_interval: always", "async.max_bytes is not enforced"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("openJetStream() log = %q, want it to say %q", log.String(), want)
		}
	}
}

package jsstore_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// startCluster starts n embedded JetStream servers clustered over
// loopback routes, each with its data in a directory of its own.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
	}
	srvs := make([]*server.Server, n)
	for i := range n {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("s%d", i),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "spool", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			NoLog:      true,
			NoSigs:     true,
		})
		if err != nil {
			t.Fatalf("server.NewServer(s%d) = %v", i, err)
		}
		go s.Start()
		srvs[i] = s
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for i, s := range srvs {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("server s%d not ready within 10s", i)
		}
	}
	return srvs
}

// TestClusterLosesNoAcknowledgedMessage appends to a stream with three
// replicas, shuts down the server leading the stream mid-load, and then
// delivers everything: every message whose Append returned nil is
// delivered, and appends and delivery go on after the loss.
func TestClusterLosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-server cluster")
	}
	srvs := startCluster(t, 3)
	urls := make([]string, len(srvs))
	for i, s := range srvs {
		urls[i] = s.ClientURL()
	}
	opts := jsstore.Options{
		URL:            strings.Join(urls, ","),
		Stream:         "CLUSTER",
		Replicas:       3,
		Create:         true,
		ConnectTimeout: 2 * time.Second,
		// Short, so that an Open tried before the meta leader is elected
		// gives up soon and is tried again.
		RequestTimeout: 2 * time.Second,
	}
	// The cluster elects its meta leader after the servers meet.
	var (
		s   *jsstore.Store
		err error
	)
	if !poll.Within(60*time.Second, func() bool {
		s, err = jsstore.Open(t.Context(), opts)
		return err == nil
	}) {
		t.Fatalf("jsstore.Open(replicas 3) = %v for 60s", err)
	}
	t.Cleanup(func() { _ = s.Close() })

	var (
		mu    sync.Mutex
		acked []string
		fails int
	)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := message("r", i)
			err := s.Append(t.Context(), m)
			mu.Lock()
			if err == nil {
				acked = append(acked, m.ID)
			} else {
				fails++
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	waitFor := func(n int, within time.Duration) {
		t.Helper()
		if !poll.Within(within, func() bool { return count() >= n }) {
			close(stop)
			<-done
			t.Fatalf("%d appends acknowledged within %v, want %d (%d failed)", count(), within, n, fails)
		}
	}
	waitFor(200, 20*time.Second)

	var leader *server.Server
	for _, srv := range srvs {
		if srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, "CLUSTER") {
			leader = srv
		}
	}
	if leader == nil {
		leader = srvs[0]
	}
	leader.Shutdown()
	before := count()
	waitFor(before+200, 30*time.Second) // appends go on without the server
	close(stop)
	<-done
	t.Logf("%d appends acknowledged, %d refused while the cluster recovered", count(), fails)

	want := map[string]bool{}
	for _, id := range acked {
		want[id] = true
	}
	// Take what is there; wait only when Next has nothing.
	if !poll.Within(30*time.Second, func() bool {
		for len(want) > 0 {
			var (
				m  *spool.Message
				ok bool
			)
			m, ok, err = s.Next("r", time.Now())
			if err != nil || !ok {
				return false
			}
			delete(want, m.ID)
			if err := s.Ack(m.ID); err != nil {
				t.Logf("Ack(%s) = %v (it may be delivered again)", m.ID, err)
			}
		}
		return true
	}) {
		t.Fatalf("%d acknowledged messages never delivered (last Next error %v)", len(want), err)
	}
}

package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h2client"
	"github.com/sidecar-proxy/sidecar/policy"
)

func TestH2CPriorKnowledgeOnAutoListener(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	})
	sc := startSidecar(t, oneRoute("{}"), up)
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protos}}
	resp, err := client.Get(sc.url("/h2"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(body) != "HTTP/1.1" {
		t.Errorf("h2c GET = %s %d %q, want HTTP/2 200 forwarded as HTTP/1.1", resp.Proto, resp.StatusCode, body)
	}
	if resp.Header.Get(HeaderAttempts) != "1" {
		t.Errorf("h2c response lacks %s", HeaderAttempts)
	}
}

func TestWebSocketUpgradeWhenAllowed(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, "echo: "+line)
		}
	})
	cfg := strings.Replace(oneRoute("{timeout: 100ms}"), "upstream: up, policy: p}", "upstream: up, policy: p, websocket: true}", 1)
	sc := startSidecar(t, cfg, up)
	c, err := net.Dial("tcp", sc.addr["app"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade = %d, want 101", resp.StatusCode)
	}
	io.WriteString(c, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: ping\n" {
		t.Errorf("tunnel read = %q, %v; want the upstream's echo", line, err)
	}
	// The route's 100ms timeout covers the handshake, not the tunnel.
	time.Sleep(300 * time.Millisecond)
	io.WriteString(c, "again\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo: again\n" {
		t.Errorf("tunnel read after the route timeout = %q, %v; want the tunnel still open", line, err)
	}
}

// TestUnprocessedStreamIsConnectError: a stream an HTTP/2 upstream
// refused unprocessed (GOAWAY, REFUSED_STREAM), which internal/h2client
// could not send again itself, counts as connect_error: nothing reached
// the upstream's application, so the retry rules may send it again
// whatever the method.
func TestUnprocessedStreamIsConnectError(t *testing.T) {
	err := fmt.Errorf("%w: stream 3 above the GOAWAY's last stream ID 1", h2client.ErrUnprocessed)
	if o := classify(err, context.Background(), context.Background(), nil); o != policy.ConnectError {
		t.Errorf("classify(unprocessed) = %v, want connect_error", o)
	}
	if o := classify(errors.New("stream reset"), context.Background(), context.Background(), nil); o != policy.Reset {
		t.Errorf("classify(other) = %v, want reset", o)
	}
}

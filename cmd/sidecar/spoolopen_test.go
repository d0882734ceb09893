package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// TestOpenSpoolRouteLimits: an async route's max_messages and max_bytes
// reach the store, and bound that route only.
func TestOpenSpoolRouteLimits(t *testing.T) {
	yaml := fmt.Sprintf(`
version: 1
spool: {dir: %q}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: small, match: {path_prefix: /small}, upstream: up, async: {when: always, max_messages: 2}}
      - {name: narrow, match: {path_prefix: /narrow}, upstream: up, async: {when: always, max_bytes: 200B}}
      - {name: free, match: {path_prefix: /}, upstream: up, async: {when: always}}
`, t.TempDir())
	cfg, err := config.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openSpool(cfg, proxytest.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	add := func(route string, body int) error {
		return st.Append(context.Background(), &spool.Message{Route: route, Method: "POST", Target: "/", Body: make([]byte, body)})
	}
	for range 2 {
		if err := add("small", 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := add("small", 1); !errors.Is(err, spool.ErrFull) {
		t.Errorf("third message on small = %v, want ErrFull", err)
	}
	if err := add("narrow", 300); !errors.Is(err, spool.ErrFull) {
		t.Errorf("300-byte message on narrow = %v, want ErrFull", err)
	}
	for range 5 {
		if err := add("free", 300); err != nil {
			t.Errorf("free route = %v, want nil", err)
		}
	}
}

func TestConfigRouteLimitsValidated(t *testing.T) {
	_, err := config.Parse("test.yaml", []byte(`
version: 1
spool: {}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: r, match: {path_prefix: /}, upstream: up, async: {max_messages: -1}}
`), nil)
	if err == nil || !strings.Contains(err.Error(), "routes[0].async.max_messages") {
		t.Fatalf("Parse = %v, want an error naming async.max_messages", err)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// openSpoolFrom opens the file spool that the configuration yaml
// describes, as the command does.
func openSpoolFrom(t *testing.T, yaml string) *spool.FileStore {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openSpool(cfg, proxytest.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

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
	st := openSpoolFrom(t, yaml)
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

// TestFileRouteLimitsAppendWait: each async route's enqueues wait for the
// disk at most the route's timeout: its policy's, the "default" policy's,
// or the built-in 15 s.
func TestFileRouteLimitsAppendWait(t *testing.T) {
	for _, tt := range []struct {
		policies string
		want     map[string]time.Duration
	}{
		{`{quick: {timeout: 700ms}, default: {timeout: 2s}}`, map[string]time.Duration{"named": 700 * time.Millisecond, "unnamed": 2 * time.Second}},
		{`{quick: {timeout: 700ms}}`, map[string]time.Duration{"named": 700 * time.Millisecond, "unnamed": 15 * time.Second}},
	} {
		cfg, err := config.Parse("test.yaml", []byte(`
version: 1
spool: {dir: ./unused}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
policies: `+tt.policies+`
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: named, match: {path_prefix: /n}, upstream: up, policy: quick, async: {when: always}}
      - {name: unnamed, match: {path_prefix: /u}, upstream: up, async: {when: always, max_messages: 5}}
      - {name: sync, match: {path_prefix: /}, upstream: up}
`), nil)
		if err != nil {
			t.Fatal(err)
		}
		got := fileRouteLimits(cfg)
		for route, want := range tt.want {
			if got[route].AppendWait != want {
				t.Errorf("policies %s: route %s AppendWait = %v, want %v", tt.policies, route, got[route].AppendWait, want)
			}
		}
		if got["unnamed"].MaxMessages != 5 {
			t.Errorf("route unnamed MaxMessages = %d, want 5", got["unnamed"].MaxMessages)
		}
		if _, ok := got["sync"]; ok {
			t.Error("a sync route has spool limits")
		}
	}
}

// TestOpenSpoolZeroAhead: with fsync: always the file spool writes zeros
// ahead of its records (zeroAhead), with fsync: interval it appends.
func TestOpenSpoolZeroAhead(t *testing.T) {
	for _, tt := range []struct {
		fsync string
		ahead bool
	}{{"always", true}, {"interval", false}} {
		dir := t.TempDir()
		yaml := fmt.Sprintf(`
version: 1
spool: {dir: %q, fsync: %s}
upstreams:
  up: {endpoints: ["http://127.0.0.1:1"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /}, upstream: up, async: {when: always}}
`, dir, tt.fsync)
		st := openSpoolFrom(t, yaml)
		if err := st.Append(context.Background(), &spool.Message{Route: "ev", Method: "POST", Target: "/", Body: make([]byte, 100)}); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		segs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		if len(segs) != 1 {
			t.Fatalf("fsync %s: segments %v, want one", tt.fsync, segs)
		}
		fi, err := os.Stat(segs[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Size() >= zeroAhead; got != tt.ahead {
			t.Errorf("fsync %s: segment of %d bytes after one message; zeros ahead %v, want %v", tt.fsync, fi.Size(), got, tt.ahead)
		}
	}
}

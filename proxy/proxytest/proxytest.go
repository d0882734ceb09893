// Package proxytest builds proxy snapshots from YAML for tests of the
// packages around the proxy (admin, cmd).
package proxytest

import (
	"io"
	"log/slog"
	"testing"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
)

// Discard is a logger that drops everything.
var Discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Snapshot parses yaml (no environment) and builds its snapshot, failing
// t on any error.
func Snapshot(t testing.TB, yaml string) *proxy.Snapshot {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	snap, err := proxy.Build(cfg, nil, Discard)
	if err != nil {
		t.Fatalf("proxy.Build = %v", err)
	}
	return snap
}

package main

import (
	"log/slog"
	"net"
	"strings"
	"testing"
)

// TestWarnBeyondLoopback: the start-up warning for the admin API's
// listeners bound beyond loopback without an admin token
// (docs/operations.md, "Probe listener and sidecar healthcheck").
func TestWarnBeyondLoopback(t *testing.T) {
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 9902} }
	loopback := tcp("127.0.0.1")
	tests := []struct {
		name         string
		token        bool
		admin, probe net.Addr
		want         []string // substrings of the warnings, one each
	}{
		{"admin on loopback, no probe", false, loopback, nil, nil},
		{"probe on loopback", false, loopback, tcp("127.0.0.1"), nil},
		{"probe on IPv6 loopback", false, loopback, tcp("::1"), nil},
		{"probe on every interface", false, loopback, tcp("0.0.0.0"), []string{"probe listener listens beyond loopback"}},
		{"probe on every IPv6 interface", false, loopback, tcp("::"), []string{"probe listener listens beyond loopback"}},
		{"probe on the pod's IP", false, loopback, tcp("10.1.2.3"), []string{"probe listener listens beyond loopback"}},
		{"probe on the pod's IP, with a token", true, loopback, tcp("10.1.2.3"), nil},
		{"admin beyond loopback", false, tcp("10.1.2.3"), nil, []string{"admin API listens beyond loopback"}},
		{"admin beyond loopback, with a token", true, tcp("10.1.2.3"), nil, nil},
		{"both beyond loopback", false, tcp("0.0.0.0"), tcp("0.0.0.0"), []string{"admin API", "probe listener"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			warnBeyondLoopback(slog.New(slog.NewTextHandler(&b, nil)), tt.token, "SIDECAR_ADMIN_TOKEN", tt.admin, tt.probe)
			var lines []string
			if b.Len() > 0 {
				lines = strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("warnBeyondLoopback logged %d lines, want %d:\n%s", len(lines), len(tt.want), b.String())
			}
			for i, w := range tt.want {
				if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], w) || !strings.Contains(lines[i], "token_env=SIDECAR_ADMIN_TOKEN") {
					t.Errorf("warning %d = %q, want a WARN line saying %q and naming token_env", i, lines[i], w)
				}
			}
		})
	}
}

package config

import (
	"slices"
	"testing"
)

func TestRestartNeeded(t *testing.T) {
	const base = `
version: 1
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: r, match: {path_prefix: /}, upstream: u}
upstreams:
  u: {endpoints: ["http://127.0.0.1:1"]}
`
	parse := func(extra string) *Config {
		t.Helper()
		c, err := Parse("t.yaml", []byte(base+extra), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cur := parse("")
	for _, tc := range []struct {
		extra     string
		spoolOpen bool
		want      []string
	}{
		{"", true, nil},
		{"shutdown_grace: 3s\ntelemetry: {access_log: true}\n", true, nil},
		{"admin: {address: 127.0.0.1:9999}\n", true, []string{"admin.address"}},
		{"admin: {token_env: OTHER}\n", false, []string{"admin.token_env"}},
		{"spool: {dir: /elsewhere, fsync: interval}\n", true, []string{"spool.dir", "spool.fsync"}},
		{"spool: {dir: /elsewhere}\n", false, nil},
		{"spool: {jetstream: {url: 'nats://127.0.0.1:4333'}}\n", true, []string{"spool.jetstream.url"}},
		{"telemetry: {traces: {exporter: stdout}, service_name: x}\n", true, []string{"telemetry.service_name", "telemetry.traces.exporter"}},
	} {
		got := RestartNeeded(cur, parse(tc.extra), tc.spoolOpen)
		if !slices.Equal(got, tc.want) {
			t.Errorf("RestartNeeded(+%q, spoolOpen %v) = %q, want %q", tc.extra, tc.spoolOpen, got, tc.want)
		}
	}
}

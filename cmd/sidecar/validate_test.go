package main

import (
	"strings"
	"testing"
)

// TestValidateHidesEnvValues checks that "sidecar validate" and "sidecar
// run" print no value from ${NAME} and no user information of a URL in
// their errors.
func TestValidateHidesEnvValues(t *testing.T) {
	t.Setenv("SIDECAR_TEST_NATS_URL", "nats://svc:p@ss:w0rd-LEAK@")
	t.Setenv("SIDECAR_TEST_REPLICAS", "p@ss:w0rd-LEAK")
	cfg := writeConfig(t, `
version: 1
spool: {backend: jetstream, jetstream: {url: "${SIDECAR_TEST_NATS_URL}", replicas: "${SIDECAR_TEST_REPLICAS}"}}
upstreams:
  up: {endpoints: ["http://user:pw-LITERAL@127.0.0.1:1"]}
listeners:
  - {name: app, address: "127.0.0.1:0", routes: [{name: r, upstream: up}]}
`)
	for _, cmd := range []string{"validate", "run"} {
		var stdout, stderr strings.Builder
		code := run([]string{cmd, "-config", cfg}, &stdout, &stderr, nil)
		out := stdout.String() + stderr.String()
		if code != exitConfig {
			t.Errorf("sidecar %s = %d, want %d:\n%s", cmd, code, exitConfig, out)
		}
		for _, secret := range []string{"LEAK", "w0rd", "LITERAL"} {
			if strings.Contains(out, secret) {
				t.Errorf("sidecar %s prints %q:\n%s", cmd, secret, out)
			}
		}
		for _, want := range []string{
			"spool.jetstream.url: invalid NATS URL (value from ${SIDECAR_TEST_NATS_URL} not shown)",
			"spool.jetstream.replicas: invalid integer (value from ${SIDECAR_TEST_REPLICAS} not shown)",
			`endpoint "http://[redacted]@127.0.0.1:1" must be`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("sidecar %s lacks %q:\n%s", cmd, want, out)
			}
		}
	}
}

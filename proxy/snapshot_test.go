package proxy

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/sidecar-proxy/sidecar/config"
)

// snapshotYAML has two upstreams and two routes with every stateful
// policy on; POLICY_A is route a's policy body and ENDPOINT_B upstream b's
// endpoint, for a rebuild to change.
const snapshotYAML = `
version: 1
upstreams:
  a: {endpoints: ["http://127.0.0.1:1"]}
  b: {endpoints: ["ENDPOINT_B"]}
policies:
  pa: POLICY_A
  pb: {max_in_flight: 5, retry: {attempts: 2}, rate_limit: {rps: 10, burst: 10}, circuit_breaker: {}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ra, match: {path_prefix: /a}, upstream: a, policy: pa}
      - {name: rb, match: {path_prefix: /b}, upstream: b, policy: pb}
`

const policyA = `{max_in_flight: 5, retry: {attempts: 2}, hedge: {after: 50ms}, rate_limit: {rps: 10, burst: 10}, circuit_breaker: {}}`

func buildSnapshot(t *testing.T, prev *Snapshot, policyA, endpointB string) *Snapshot {
	t.Helper()
	yaml := strings.NewReplacer("POLICY_A", policyA, "ENDPOINT_B", endpointB).Replace(snapshotYAML)
	cfg, err := config.Parse("s.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	s, err := Build(cfg, prev, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("Build = %v", err)
	}
	return s
}

// TestBuildKeepsUnchangedState pins what Build(cfg, prev) carries over, as
// a reload relies on: the pool of an unchanged upstream, and the budget,
// rate limiter, in-flight count and breakers of a route whose policy is
// unchanged; a changed upstream gets a new pool, and a changed policy new
// state.
func TestBuildKeepsUnchangedState(t *testing.T) {
	s1 := buildSnapshot(t, nil, policyA, "http://127.0.0.1:2")
	ra1, rb1 := s1.routes["ra"], s1.routes["rb"]
	ra1.pol.inFlight.Acquire() // live state a rebuild must keep

	t.Run("same_config", func(t *testing.T) {
		s2 := buildSnapshot(t, s1, policyA, "http://127.0.0.1:2")
		for _, up := range []string{"a", "b"} {
			if s2.Pools[up] != s1.Pools[up] {
				t.Errorf("Pools[%s] rebuilt, want the previous pool kept", up)
			}
		}
		ra2 := s2.routes["ra"]
		if ra2.pol.budget != ra1.pol.budget || ra2.pol.limiter != ra1.pol.limiter || ra2.pol.inFlight != ra1.pol.inFlight || ra2.pol.hedge != ra1.pol.hedge {
			t.Error("route ra's budget, limiter, in-flight count or hedge counters rebuilt, want them kept")
		}
		if got := ra2.Stats().InFlight; got != 1 {
			t.Errorf("route ra in flight after rebuild = %d, want the 1 held before", got)
		}
		if ra2.pol.breakers.table.Load().brs[0] != ra1.pol.breakers.table.Load().brs[0] || s2.breakers != s1.breakers {
			t.Error("route ra's breaker or the breaker set rebuilt, want them kept")
		}
		if ra2 == ra1 {
			t.Error("route ra is the previous *Route, want a new one around the kept state")
		}
	})

	t.Run("changed_policy_and_upstream", func(t *testing.T) {
		changed := strings.Replace(policyA, "max_in_flight: 5", "max_in_flight: 6", 1)
		s2 := buildSnapshot(t, s1, changed, "http://127.0.0.1:3")
		if s2.Pools["a"] != s1.Pools["a"] {
			t.Error("Pools[a] rebuilt though upstream a is unchanged")
		}
		if s2.Pools["b"] == s1.Pools["b"] {
			t.Error("Pools[b] kept though its endpoint changed")
		}
		ra2, rb2 := s2.routes["ra"], s2.routes["rb"]
		if ra2.pol.budget == ra1.pol.budget || ra2.pol.limiter == ra1.pol.limiter || ra2.pol.inFlight == ra1.pol.inFlight || ra2.pol.hedge == ra1.pol.hedge {
			t.Error("route ra kept its budget, limiter, in-flight count or hedge counters though its policy changed")
		}
		if ra2.pol.breakers.table.Load().brs[0] != ra1.pol.breakers.table.Load().brs[0] {
			t.Error("route ra's breaker rebuilt though its endpoint and breaker settings are unchanged")
		}
		if rb2.pol.inFlight != rb1.pol.inFlight {
			t.Error("route rb's in-flight count rebuilt though its policy is unchanged")
		}
		if rb2.pol.breakers.table.Load().brs[0] == rb1.pol.breakers.table.Load().brs[0] {
			t.Error("route rb kept the breaker of an endpoint it no longer has")
		}
	})
}

package config

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// mergeBomb is the merge-key YAML bomb: each level merges the one below
// ten times, so "<<: *m<levels>" asks for 10^levels merges from a file of
// a few hundred bytes.
func mergeBomb(levels int) string {
	var b strings.Builder
	b.WriteString("m0: &m0 {version: 1}\n")
	for i := 1; i <= levels; i++ {
		fmt.Fprintf(&b, "m%d: &m%d {<<: [%s]}\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*m%d, ", i-1), 10), ", "))
	}
	fmt.Fprintf(&b, "<<: *m%d\n", levels)
	return b.String()
}

// aliasBomb is a billion laughs without merge keys, of values the schema
// accepts: a route list of n aliases of one route, used by n listeners.
func aliasBomb(n int) string {
	var b strings.Builder
	b.WriteString("version: 1\nupstreams: {up: {endpoints: [\"http://127.0.0.1:1\"]}}\nlisteners:\n")
	b.WriteString("  - &l {name: a, address: \"127.0.0.1:0\", routes: &r [&r0 {name: r, upstream: up, match: {path_prefix: /a}}")
	b.WriteString(strings.Repeat(", *r0", n-1))
	b.WriteString("]}\n")
	b.WriteString(strings.Repeat("  - *l\n", n-1))
	return b.String()
}

// parseErrors parses data and returns the Errors it must fail with. It
// parses as Parse does, with more time than LoadTimeout: the bounds these
// tests check keep the worst file to about a second, but a race build on
// a loaded machine may take ten times that, and the time bound, a
// backstop, has tests of its own.
func parseErrors(t *testing.T, data string) Errors {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*LoadTimeout)
	defer cancel()
	cfg, err := parse(ctx, "b.yaml", []byte(data), noEnv)
	if err == nil {
		t.Fatalf("Parse = %+v, nil error; want it refused", cfg)
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Parse error %T (%v) is not Errors", err, err)
	}
	return es
}

// wantError checks that one of es is at file:line:col and contains msg.
func wantError(t *testing.T, es Errors, msg string) {
	t.Helper()
	for _, e := range es {
		if e.Line > 0 && strings.HasPrefix(e.Error(), fmt.Sprintf("b.yaml:%d:%d: ", e.Line, e.Col)) && strings.Contains(e.Msg, msg) {
			return
		}
	}
	t.Errorf("Parse errors =\n%v\nwant one at file:line:col saying %q", es, msg)
}

// These would run for minutes (9 levels) or hours (11) if merges were not
// counted: the test's own timeout is the bound on the time.
func TestMergeKeyBombRefused(t *testing.T) {
	for _, levels := range []int{9, 11} {
		t.Run(fmt.Sprint(levels), func(t *testing.T) {
			es := parseErrors(t, mergeBomb(levels))
			wantError(t, es, fmt.Sprintf("too many YAML nodes after expanding aliases and merge keys (limit %d)", maxNodes))
		})
	}
}

func TestAliasBombRefused(t *testing.T) {
	es := parseErrors(t, aliasBomb(2000)) // 4 million routes
	wantError(t, es, "too many YAML nodes after expanding aliases and merge keys")
	if len(es) != 1 {
		t.Errorf("Parse errors =\n%v\nwant only the limit: the rest of a partial config is not checked", es)
	}
}

// A merge of a mapping into itself used to recurse until the stack
// overflowed, which kills the process.
func TestSelfMergeRefused(t *testing.T) {
	for _, yaml := range []string{
		"version: 1\nspool: &m {<<: *m}\n",
		"version: 1\nspool: &m {<<: [{dir: a}, *m]}\n",
	} {
		es := parseErrors(t, yaml)
		wantError(t, es, fmt.Sprintf("nested too deeply, counting aliases and merge keys (limit %d levels)", maxDepth))
	}
}

// A large value used many times is bounded by its bytes, not its nodes:
// 20000 uses of 1 MiB, from a file of 1 MiB, used to exhaust memory.
func TestAliasedLargeValueRefused(t *testing.T) {
	big := `"http://` + strings.Repeat("x", 1<<20) + `"`
	es := parseErrors(t, "version: 1\nupstreams:\n  u: {endpoints: [&b "+big+strings.Repeat(", *b", 20000)+"]}\n")
	wantError(t, es, fmt.Sprintf("too much YAML after expanding aliases and merge keys (limit %d MiB of keys and values)", maxBytes>>20))
}

func TestEnvExpansionBounded(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	lookup := func(string) (string, bool) { return long, true }
	_, err := Parse("b.yaml", []byte(minimal+"telemetry: {service_name: \""+strings.Repeat("${X}", 8)+"\"}\n"), lookup)
	if err == nil || !strings.Contains(err.Error(), "telemetry.service_name: longer than 4194304 bytes after expanding environment variables") {
		t.Errorf("Parse = %v, want service_name refused as too long", err)
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString(minimal)
	for i := range 2 * maxErrors {
		fmt.Fprintf(&b, "nope%d: 1\n", i)
	}
	es := parseErrors(t, b.String())
	if len(es) != maxErrors+1 || !strings.Contains(es[maxErrors].Msg, "too many errors (limit 100)") {
		t.Errorf("Parse reported %d errors, the last %v; want %d and a last one saying there are too many", len(es), es[len(es)-1], maxErrors+1)
	}

	// Errors found once the file is decoded are capped too.
	b.Reset()
	b.WriteString("version: 1\nupstreams: {up: {endpoints: [\"http://127.0.0.1:1\"]}}\nlisteners:\n  - name: a\n    address: 127.0.0.1:0\n    routes:\n")
	for i := range 2 * maxErrors {
		fmt.Fprintf(&b, "      - {name: r%d, upstream: nope}\n", i)
	}
	es = parseErrors(t, b.String())
	if len(es) != maxErrors+1 || es[maxErrors].Msg != "100 more errors not shown (limit 100)" {
		t.Errorf("Parse reported %d errors, the last %v; want %d and a last one counting the others", len(es), es[len(es)-1], maxErrors+1)
	}
}

func TestUnknownNameListsAFew(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nupstreams:\n")
	for i := range 15 {
		fmt.Fprintf(&b, "  u%02d: {endpoints: [\"http://127.0.0.1:1\"]}\n", i)
	}
	b.WriteString("listeners: [{name: a, address: \"127.0.0.1:0\", routes: [{name: r, upstream: nope}]}]\n")
	es := parseErrors(t, b.String())
	wantError(t, es, `unknown upstream "nope" (defined: u00, u01, u02, u03, u04, u05, u06, u07, u08, u09 and 5 more)`)
}

// A config with anchors, aliases and merge keys, as people write them,
// loads; merge keys are shallow, the mapping's own keys win, and an
// earlier mapping in a merge list wins over a later one.
func TestMergesAndAliasesLoad(t *testing.T) {
	cfg, err := Parse("m.yaml", []byte(`
version: 1
upstreams:
  a: {endpoints: &eps ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]}
  b: {endpoints: *eps, protocol: h2c}
policies:
  base: &base
    timeout: 2s
    retry: {attempts: 5, on: [connect_error]}
  fast: &fast
    timeout: 500ms
    max_in_flight: 7
  own_key_wins:
    timeout: 1s
    <<: *base
  first_wins:
    <<: [*fast, *base]
  shallow:
    <<: *base
    retry: {on: [reset]}
listeners:
  - name: app
    address: 127.0.0.1:9001
    routes:
      - &r {name: one, upstream: a, policy: base, match: {path_prefix: /one}}
      - {<<: *r, name: two, upstream: b}
`), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	p := cfg.Policies
	checks := []struct {
		name      string
		got, want any
	}{
		{"upstreams.b.endpoints", len(cfg.Upstreams["b"].Endpoints), 2},
		{"own_key_wins.timeout", p["own_key_wins"].Timeout.D(), time.Second},
		{"own_key_wins.retry.attempts (merged)", p["own_key_wins"].Retry.Attempts, 5},
		{"first_wins.timeout", p["first_wins"].Timeout.D(), 500 * time.Millisecond},
		{"first_wins.max_in_flight", p["first_wins"].MaxInFlight, 7},
		{"first_wins.retry (from the second)", p["first_wins"].Retry.Active(), true},
		{"shallow.timeout (merged)", p["shallow"].Timeout.D(), 2 * time.Second},
		{"shallow.retry.on (its own)", strings.Join(p["shallow"].Retry.On, ","), "reset"},
		{"shallow.retry.attempts (default: the merged retry is replaced whole)", p["shallow"].Retry.Attempts, 3},
		{"routes[1].name", cfg.Listeners[0].Routes[1].Name, "two"},
		{"routes[1].upstream", cfg.Listeners[0].Routes[1].Upstream, "b"},
		{"routes[1].match.path_prefix (merged)", cfg.Listeners[0].Routes[1].Match.PathPrefix, "/one"},
		{"routes[1].policy (merged)", cfg.Listeners[0].Routes[1].Policy, "base"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseContextCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ParseContext(ctx, "c.yaml", []byte(minimal), noEnv)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "c.yaml: ") {
		t.Errorf("ParseContext(cancelled) = %v, want an error naming the file and wrapping context.Canceled", err)
	}
}

func TestParseTimeout(t *testing.T) {
	// The context Parse makes for LoadTimeout, run out already.
	ctx, cancel := context.WithTimeoutCause(context.Background(), 0, errTimeout)
	defer cancel()
	_, err := parse(ctx, "t.yaml", []byte(mergeBomb(11)), noEnv)
	var es Errors
	if !errors.As(err, &es) || !strings.Contains(err.Error(), "t.yaml") || !strings.Contains(err.Error(), "checking the file took longer than 10s (limit)") {
		t.Errorf("parse after LoadTimeout = %v, want an Errors saying it took too long", err)
	}
}

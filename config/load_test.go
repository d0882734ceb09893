package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) (string, bool) { return "", false }

const minimal = `
version: 1
upstreams:
  inv: {endpoints: ["http://127.0.0.1:8080"]}
listeners:
  - name: app
    address: 127.0.0.1:9001
    routes:
      - {name: all, upstream: inv}
`

func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Errorf("Load(%s) = %v, want no error", f, err)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("m.yaml", []byte(strings.Replace(minimal, "upstreams:\n", "upstreams:\n  hc: {endpoints: [\"http://127.0.0.1:8081\"], health_check: {}, outlier: {}}\n  dns: {endpoints: [\"http://inv.svc:8080\"], resolve: {}}\n", 1)+`
policies:
  p:
    timeout: 3s
    retry: {}
    circuit_breaker:
    rate_limit: {rps: 5}
    hedge: {after: 20ms}
  q:
    timeout: 0s
`), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"shutdown_grace", cfg.ShutdownGrace.D(), 15 * time.Second},
		{"shutdown_delay", cfg.ShutdownDelay.D(), time.Duration(0)},
		{"admin.address", cfg.Admin.Address, "127.0.0.1:9901"},
		{"admin.token_env", cfg.Admin.TokenEnv, "SIDECAR_ADMIN_TOKEN"},
		{"telemetry.traces.exporter", cfg.Telemetry.Traces.Exporter, "none"},
		{"telemetry.traces.sample_ratio", cfg.Telemetry.Traces.SampleRatio, 1.0},
		{"telemetry.metrics.prometheus", cfg.Telemetry.Metrics.Prometheus, true},
		{"spool.backend", cfg.Spool.Backend, "file"},
		{"spool.dir", cfg.Spool.Dir, "./data/spool"},
		{"spool.fsync", cfg.Spool.Fsync, "always"},
		{"spool.fsync_interval", cfg.Spool.FsyncInterval.D(), 50 * time.Millisecond},
		{"spool.max_bytes", cfg.Spool.MaxBytes, Size(1 << 30)},
		{"spool.max_messages", cfg.Spool.MaxMessages, int64(1000000)},
		{"spool.jetstream.url", cfg.Spool.JetStream.URL, "nats://127.0.0.1:4222"},
		{"spool.jetstream.create", cfg.Spool.JetStream.Create, true},
		{"upstreams.inv.protocol", cfg.Upstreams["inv"].Protocol, "http1"},
		{"upstreams.inv.load_balancing", cfg.Upstreams["inv"].LoadBalancing, "round_robin"},
		{"upstreams.inv.connect_timeout", cfg.Upstreams["inv"].ConnectTimeout.D(), time.Second},
		{"upstreams.inv.resolve absent is off", cfg.Upstreams["inv"].Resolve == nil, true},
		{"upstreams.dns.resolve.every", cfg.Upstreams["dns"].Resolve.Every.D(), 10 * time.Second},
		{"listeners[0].protocol", cfg.Listeners[0].Protocol, "auto"},
		{"listeners[0].body_idle_timeout", cfg.Listeners[0].BodyIdleTimeout.D(), 30 * time.Second},
		{"p.timeout", cfg.Policies["p"].Timeout.D(), 3 * time.Second},
		{"p.per_try_timeout follows timeout", cfg.Policies["p"].PerTryTimeout.D(), 3 * time.Second},
		{"p.retry.attempts", cfg.Policies["p"].Retry.Attempts, 3},
		{"p.retry.backoff.base", cfg.Policies["p"].Retry.Backoff.Base.D(), 25 * time.Millisecond},
		{"p.retry.budget.ratio", cfg.Policies["p"].Retry.Budget.Ratio, 0.2},
		{"p.retry.buffer_limit", cfg.Policies["p"].Retry.BufferLimit, Size(64 << 10)},
		{"p.retry.idempotency_header", cfg.Policies["p"].Retry.IdempotencyHeader, "Idempotency-Key"},
		{"p.circuit_breaker (empty block) active", cfg.Policies["p"].CircuitBreaker.Active(), true},
		{"p.circuit_breaker.open_for", cfg.Policies["p"].CircuitBreaker.OpenFor.D(), 15 * time.Second},
		{"p.rate_limit.rps", cfg.Policies["p"].RateLimit.RPS, 5.0},
		{"p.rate_limit.burst", cfg.Policies["p"].RateLimit.Burst, 200},
		{"upstreams.inv.health_check absent is off", cfg.Upstreams["inv"].HealthCheck == nil, true},
		{"upstreams.hc.health_check.path", cfg.Upstreams["hc"].HealthCheck.Path, "/healthz"},
		{"upstreams.hc.health_check.interval", cfg.Upstreams["hc"].HealthCheck.Interval.D(), 5 * time.Second},
		{"upstreams.hc.health_check.timeout", cfg.Upstreams["hc"].HealthCheck.Timeout.D(), time.Second},
		{"upstreams.hc.health_check.healthy", cfg.Upstreams["hc"].HealthCheck.Healthy, 2},
		{"upstreams.hc.health_check.unhealthy", cfg.Upstreams["hc"].HealthCheck.Unhealthy, 3},
		{"upstreams.hc.outlier.consecutive_5xx", cfg.Upstreams["hc"].Outlier.Consecutive5xx, 5},
		{"upstreams.hc.outlier.eject_for", cfg.Upstreams["hc"].Outlier.EjectFor.D(), 30 * time.Second},
		{"upstreams.hc.outlier.max_ejected_percent", cfg.Upstreams["hc"].Outlier.MaxEjectedPercent, 50},
		{"p.hedge.after", cfg.Policies["p"].Hedge.After.D(), 20 * time.Millisecond},
		{"p.hedge.max_extra", cfg.Policies["p"].Hedge.MaxExtra, 1},
		{"p.hedge.on_per_try_timeout", cfg.Policies["p"].Hedge.OnPerTryTimeout, false},
		{"q.hedge absent is off", cfg.Policies["q"].Hedge == nil, true},
		{"q.timeout 0 means none", cfg.Policies["q"].Timeout.D(), time.Duration(0)},
		{"q.per_try_timeout follows", cfg.Policies["q"].PerTryTimeout.D(), time.Duration(0)},
		{"q.retry absent is off", cfg.Policies["q"].Retry.Active(), false},
		{"built-in policy timeout", DefaultPolicy().Timeout.D(), 15 * time.Second},
		{"built-in policy per_try_timeout", DefaultPolicy().PerTryTimeout.D(), 15 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestAsyncDefaults(t *testing.T) {
	cfg, err := Parse("a.yaml", []byte(strings.Replace(minimal, "      - {name: all, upstream: inv}", "      - {name: ev, upstream: inv, async: {}}", 1)+"spool: {dir: ./spool}\n"), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	a := cfg.Listeners[0].Routes[0].Async
	if a.When != "upstream_down" || a.Ordering != "fifo" || a.MaxAttempts != 100 || a.MaxAge.D() != 72*time.Hour || a.MaxBody != 1<<20 || len(a.SpoolOn) != 7 {
		t.Errorf("async defaults = %+v", a)
	}
	if a.DedupeWindow != 0 || a.Rate != nil {
		t.Errorf("async dedupe_window = %v, rate = %+v; want off", a.DedupeWindow, a.Rate)
	}
	cfg, err = Parse("a.yaml", []byte(strings.Replace(minimal, "      - {name: all, upstream: inv}", "      - {name: ev, upstream: inv, async: {dedupe_window: 10m, rate: {per_second: 2.5}}}", 1)+"spool: {dir: ./spool}\n"), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	a = cfg.Listeners[0].Routes[0].Async
	if a.DedupeWindow.D() != 10*time.Minute || a.Rate == nil || a.Rate.PerSecond != 2.5 || a.Rate.Burst != 1 {
		t.Errorf("async dedupe_window = %v, rate = %+v; want 10m, 2.5/s burst 1", a.DedupeWindow, a.Rate)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings, each of a different error
	}{
		{"unknown key with suggestion", minimal + "shutdown_grase: 1s\n", []string{`t.yaml:10:1: shutdown_grase: unknown key (did you mean "shutdown_grace"?)`}},
		{"missing version", strings.Replace(minimal, "version: 1", "", 1), []string{"version: missing key"}},
		{"bad version", strings.Replace(minimal, "version: 1", "version: 2", 1), []string{"t.yaml:2:10: version: unsupported version 2"}},
		{"bad duration", minimal + "shutdown_grace: 10\n", []string{`shutdown_grace: invalid duration "10"`}},
		{"negative duration", minimal + "shutdown_grace: -1s\n", []string{`negative duration`}},
		{"bad size", minimal + "spool: {max_bytes: 1GB}\n", []string{`t.yaml:10:20: spool.max_bytes: invalid size "1GB"`}},
		{"wrong shape", minimal + "admin: [a]\n", []string{"admin: want a mapping, got a list"}},
		{"duplicate key", minimal + "shutdown_grace: 1s\nshutdown_grace: 2s\n", []string{"shutdown_grace: duplicate key"}},
		{"unknown upstream", strings.Replace(minimal, "upstream: inv}", "upstream: nope}", 1), []string{`listeners[0].routes[0].upstream: unknown upstream "nope" (defined: inv)`}},
		{"unknown policy", strings.Replace(minimal, "upstream: inv}", "upstream: inv, policy: p}", 1), []string{`unknown policy "p" (none are defined)`}},
		{"endpoint without scheme", strings.Replace(minimal, `"http://127.0.0.1:8080"`, `"127.0.0.1:8080"`, 1), []string{`upstreams.inv.endpoints[0]: endpoint "127.0.0.1:8080" needs an http:// or https:// scheme`}},
		{"endpoint without host", strings.Replace(minimal, `"http://127.0.0.1:8080"`, `"http://"`, 1), []string{`has no host`}},
		{"endpoint with path", strings.Replace(minimal, `"http://127.0.0.1:8080"`, `"http://a/b"`, 1), []string{`no path`}},
		{"resolve too often", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://inv.svc:8080"], resolve: {every: 500ms}}`, 1), []string{`upstreams.inv.resolve.every: must be at least 1s, got 500ms`}},
		{"resolve unknown key", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://inv.svc:8080"], resolve: {interval: 5s}}`, 1), []string{`upstreams.inv.resolve.interval: unknown key`}},
		{"h2c needs http", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{protocol: h2c, endpoints: ["https://a"]}`, 1), []string{`protocol h2c is cleartext`}},
		{"bad regex", strings.Replace(minimal, "{name: all, upstream: inv}", `{name: all, upstream: inv, match: {path_regex: "("}}`, 1), []string{`match.path_regex: invalid regular expression`}},
		{"two path kinds", strings.Replace(minimal, "{name: all, upstream: inv}", `{name: all, upstream: inv, match: {path: /a, path_prefix: /b}}`, 1), []string{`set at most one of path`}},
		{"lower-case method", strings.Replace(minimal, "{name: all, upstream: inv}", `{name: all, upstream: inv, match: {methods: [get]}}`, 1), []string{`invalid method "get"`}},
		{"duplicate route", strings.Replace(minimal, "      - {name: all, upstream: inv}", "      - {name: all, upstream: inv}\n      - {name: all, upstream: inv}", 1), []string{`duplicate route name "all"`}},
		{"duplicate address", minimal + "  - {name: b, address: 127.0.0.1:9001, routes: [{name: b, upstream: inv}]}\n", []string{`duplicate address "127.0.0.1:9001"`}},
		{"duplicate listener", minimal + "  - {name: app, address: 127.0.0.1:9002, routes: [{name: b, upstream: inv}]}\n", []string{`duplicate listener name "app"`}},
		{"async without spool", strings.Replace(minimal, "upstream: inv}", "upstream: inv, async: {}}", 1), []string{`async: an async route needs a spool`}},
		{"async extras", strings.Replace(minimal, "upstream: inv}", "upstream: inv, async: {dedupe_window: 25h, rate: {per_second: 0, burst: 0}}}", 1) + "spool: {dir: ./s}\n",
			[]string{`async.dedupe_window: must be between 0 (off) and 24h0m0s, got 25h0m0s`, `async.rate.per_second: must be greater than 0, got 0`, `async.rate.burst: must be at least 1, got 0`}},
		{"async rate without per_second", strings.Replace(minimal, "upstream: inv}", "upstream: inv, async: {rate: {burst: 5}}}", 1) + "spool: {dir: ./s}\n",
			[]string{`async.rate.per_second: must be greater than 0`}},
		{"admin not loopback", minimal + "admin: {address: 0.0.0.0:9901}\n", []string{`is not a loopback address`}},
		{"per-try longer", minimal + "policies: {p: {timeout: 1s, per_try_timeout: 2s}}\n", []string{`policies.p.per_try_timeout: 2s is longer than timeout 1s`}},
		{"hedge without after", minimal + "policies: {p: {retry: {}, hedge: {}}}\n", []string{`policies.p.hedge.after: must be greater than 0`}},
		{"hedge max_extra", minimal + "policies: {p: {retry: {}, hedge: {after: 10ms, max_extra: 5}}}\n", []string{`policies.p.hedge.max_extra: must be 1 to 4, got 5`}},
		{"hedge without retry", minimal + "policies: {p: {hedge: {after: 10ms}}}\n", []string{`policies.p.hedge: needs a retry block`}},
		{"hedge unknown key", minimal + "policies: {p: {retry: {}, hedge: {after: 10ms, delay: 1s}}}\n", []string{`policies.p.hedge.delay: unknown key`}},
		{"bad condition", minimal + "policies: {p: {retry: {on: [nope]}}}\n", []string{`policies.p.retry.on[0]: unknown condition "nope"`}},
		{"bad enum", minimal + "spool: {backend: s3}\n", []string{`spool.backend: invalid value "s3" (want one of file, jetstream)`}},
		{"unset env", minimal + "admin: {address: \"${NOPE}\"}\n", []string{`admin.address: environment variable NOPE is not set`}},
		{"syntax error", "version: 1\nlisteners: [\n", []string{"t.yaml:"}},
		{"empty file", "", []string{"file is empty"}},
		{"no listeners", "version: 1\n", []string{"listeners: at least one listener is required"}},
		{"health_check path", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], health_check: {path: healthz}}`, 1), []string{`upstreams.inv.health_check.path: must start with /, got "healthz"`}},
		{"health_check timeout", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], health_check: {interval: 1s, timeout: 1s, healthy: 0, unhealthy: 0}}`, 1), []string{`health_check.timeout: 1s must be shorter than interval 1s`, `health_check.healthy: must be at least 1, got 0`, `health_check.unhealthy: must be at least 1`}},
		{"health_check interval", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], health_check: {interval: 0s}}`, 1), []string{`health_check.interval: must be greater than 0`}},
		{"health_check grpc over http1", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], health_check: {grpc: true}}`, 1), []string{`health_check.grpc: needs protocol grpc, h2c or h2`}},
		{"outlier", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], outlier: {consecutive_5xx: 0, eject_for: 0s, max_ejected_percent: 101}}`, 1), []string{`outlier.consecutive_5xx: must be at least 1`, `outlier.eject_for: must be greater than 0`, `outlier.max_ejected_percent: must be between 0 and 100, got 101`}},
		{"outlier unknown key", strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["http://127.0.0.1:8080"], outlier: {consecutive5xx: 3}}`, 1), []string{`upstreams.inv.outlier.consecutive5xx: unknown key (did you mean "consecutive_5xx"?)`}},
		{"all at once", minimal + "shutdown_grase: 1s\nspool: {backend: s3, fsync: never}\n", []string{"shutdown_grase", "spool.backend", "spool.fsync"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatalf("Parse = nil error, want %q", tt.want)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("Parse error %T is not Errors", err)
			}
			if len(es) < len(tt.want) {
				t.Errorf("Parse reported %d errors, want at least %d:\n%v", len(es), len(tt.want), err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse error =\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	env := map[string]string{"PORT": "9101", "NAME": "edge"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := Parse("e.yaml", []byte(strings.Replace(minimal, "address: 127.0.0.1:9001", `address: "127.0.0.1:${PORT}"`, 1)+"telemetry: {service_name: \"$${NAME}-${NAME}\"}\n"), lookup)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if got := cfg.Listeners[0].Address; got != "127.0.0.1:9101" {
		t.Errorf("address = %q, want 127.0.0.1:9101", got)
	}
	if got := cfg.Telemetry.ServiceName; got != "${NAME}-edge" {
		t.Errorf("service_name = %q, want ${NAME}-edge", got)
	}
}

func TestUnits(t *testing.T) {
	sizes := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"0", 0, true}, {"512", 512, true}, {"64KiB", 64 << 10, true}, {"1MiB", 1 << 20, true},
		{"2GiB", 2 << 30, true}, {"1TiB", 1 << 40, true}, {"10B", 10, true},
		{"1GB", 0, false}, {"-1", 0, false}, {"KiB", 0, false}, {"99999999999TiB", 0, false},
	}
	for _, tt := range sizes {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
	for _, s := range []Size{0, 10, 64 << 10, 1 << 30, 1536} {
		if back, err := parseSize(s.String()); err != nil || back != s {
			t.Errorf("parseSize(%q) = %v, %v; want %v", s.String(), back, err, int64(s))
		}
	}
	if _, err := parseDuration("1h2m"); err != nil {
		t.Errorf("parseDuration(1h2m) = %v", err)
	}
}

func TestPublicRedactsSecrets(t *testing.T) {
	cfg, err := Parse("s.yaml", []byte(strings.Replace(minimal, "upstream: inv}", "upstream: inv, match: {headers: {authorization: Bearer-abc, x-tenant: acme}}}", 1)+
		"spool: {jetstream: {password: hunter2, token: tok-xyz}}\n"), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	out, err := json.Marshal(Public(cfg))
	if err != nil {
		t.Fatal(err)
	}
	// Every match header value is redacted, whatever the header's name.
	for _, secret := range []string{"hunter2", "tok-xyz", "Bearer-abc", "acme"} {
		if strings.Contains(string(out), secret) {
			t.Errorf("Public(cfg) contains secret %q: %s", secret, out)
		}
	}
	for _, want := range []string{`"x-tenant":"[redacted]"`, `"authorization":"[redacted]"`, `"shutdown_grace":"15s"`, `"max_bytes":"1GiB"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("Public(cfg) lacks %s: %s", want, out)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	if data, err := os.ReadFile("../examples/full.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("version: 1\nlisteners: [{name: a, routes: [{async: {}}]}]\n"))
	f.Add([]byte("a: &x {b: *x}\n"))
	f.Add([]byte(mergeBomb(9)))
	f.Add([]byte(aliasBomb(50)))
	f.Add([]byte("version: 1\nspool: &m {<<: *m}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.yaml", data, noEnv)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("Parse error %v is not a non-empty Errors", err)
			}
			return
		}
		if cfg.Version != 1 || len(cfg.Listeners) == 0 {
			t.Fatalf("Parse accepted an invalid config: %+v", cfg)
		}
	})
}

func TestRedactUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                             "nats://127.0.0.1:4222",
		"nats://s3cr3t@10.0.0.1:4222":                       "nats://[redacted]@10.0.0.1:4222",
		"nats://user:pw@a:4222,nats://b:4222,tls://tok@c:1": "nats://[redacted]@a:4222,nats://b:4222,tls://[redacted]@c:1",
		"tok@host:4222":                                     "[redacted]@host:4222",
		"nats://tok/en@host:4222":                           "nats://[redacted]@host:4222",
		"nats://u:p#w?d@host:4222":                          "nats://[redacted]@host:4222",
		"nats://svc:p@ss:w0rd@":                             "nats://[redacted]@",
	} {
		if got := redactUserinfo(in); got != want {
			t.Errorf("redactUserinfo(%q) = %q, want %q", in, got, want)
		}
	}
	cfg, err := Parse("t.yaml", []byte(`
version: 1
spool: {backend: jetstream, jetstream: {url: "nats://s3cr3t@127.0.0.1:4222"}}
upstreams: {up: {endpoints: ["http://127.0.0.1:1"]}}
listeners: [{name: app, address: "127.0.0.1:0", routes: [{name: r, upstream: up, async: {}}]}]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	js := Public(cfg).(map[string]any)["spool"].(map[string]any)["jetstream"].(map[string]any)
	if js["url"] != "nats://[redacted]@127.0.0.1:4222" {
		t.Errorf("Public(cfg) spool.jetstream.url = %v, want the token redacted", js["url"])
	}
}

// leakEnv is an environment whose every value is a secret holding "LEAK"
// or a bad value of a number; each is invalid where leakYAML puts it.
var leakEnv = map[string]string{
	"NATS_URL":   "nats://svc:p@ss:w0rd-LEAK@",
	"REPLICAS":   "p@ss:w0rd-LEAK",
	"GRACE":      "LEAK-1",
	"MAX_BYTES":  "LEAK",
	"PROM":       "LEAK",
	"RATIO":      "LEAK",
	"BACKEND":    "LEAK",
	"STREAM":     "LEAK.x",
	"ACK":        "1ms",
	"CREDS":      "/nonexistent/LEAK",
	"ADMIN":      "LEAK:1",
	"TOKEN_ENV":  "LEAK-x",
	"ENDPOINT":   "http://user:LEAK@127.0.0.1:1",
	"PREFIX":     "LEAK",
	"REGEX":      "(LEAK",
	"METHOD":     "LEAK GET",
	"COND":       "LEAK",
	"ATTEMPTS":   "11",
	"IDEM":       "LEAK:",
	"UPSTREAM":   "LEAK",
	"ADDRESS":    "LEAK",
	"MAX_MSGS":   "-7",
	"BASE":       "9s",
	"PART":       "LEAK",
	"SAME_ROUTE": "all",
}

const leakYAML = `
version: 1
shutdown_grace: ${GRACE}
admin: {address: "${ADMIN}", token_env: "${TOKEN_ENV}"}
telemetry: {metrics: {prometheus: "${PROM}"}, traces: {sample_ratio: "${RATIO}"}}
spool:
  backend: ${BACKEND}
  max_bytes: ${MAX_BYTES}
  max_messages: ${MAX_MSGS}
  jetstream: {url: "${NATS_URL}", replicas: "${REPLICAS}", stream: "${STREAM}", ack_wait: "${ACK}", creds_file: "${CREDS}"}
upstreams:
  inv: {endpoints: ["${ENDPOINT}"]}
policies:
  p: {retry: {attempts: "${ATTEMPTS}", on: ["${COND}"], idempotency_header: "${IDEM}", backoff: {base: "${BASE}", max: 1s}}}
listeners:
  - name: app
    address: "${ADDRESS}"
    routes:
      - {name: all, upstream: "${UPSTREAM}", match: {path_prefix: "${PREFIX}", methods: ["${METHOD}"]}}
      - {name: "${SAME_ROUTE}", upstream: inv, match: {path_regex: "${REGEX}", host: "x-${PART}"}}
`

// TestErrorsHideEnvValues checks that no error shows a value that came
// from ${NAME}: each names its variable instead.
func TestErrorsHideEnvValues(t *testing.T) {
	lookup := func(k string) (string, bool) { v, ok := leakEnv[k]; return v, ok }
	_, err := Parse("e.yaml", []byte(leakYAML), lookup)
	if err == nil {
		t.Fatal("Parse = nil error")
	}
	msg := err.Error()
	if strings.Contains(msg, "LEAK") || strings.Contains(msg, "w0rd") {
		t.Errorf("the errors show a value from the environment:\n%s", msg)
	}
	for _, want := range []string{
		"spool.jetstream.url: invalid NATS URL (value from ${NATS_URL} not shown)",
		"spool.jetstream.replicas: invalid integer (value from ${REPLICAS} not shown)",
		"shutdown_grace: invalid duration (value from ${GRACE} not shown)",
		"spool.max_bytes: invalid size (value from ${MAX_BYTES} not shown)",
		"telemetry.metrics.prometheus: invalid boolean (value from ${PROM} not shown)",
		"telemetry.traces.sample_ratio: invalid number (value from ${RATIO} not shown)",
		"spool.backend: invalid value (value from ${BACKEND} not shown)",
		"spool.jetstream.stream: invalid stream name (value from ${STREAM} not shown)",
		"spool.jetstream.ack_wait: must be at least 1s, got (value from ${ACK} not shown)",
		"spool.jetstream.creds_file: cannot read (value from ${CREDS} not shown)",
		"admin.address: (value from ${ADMIN} not shown) is not a loopback address",
		"admin.token_env: invalid environment variable name (value from ${TOKEN_ENV} not shown)",
		"upstreams.inv.endpoints[0]: endpoint (value from ${ENDPOINT} not shown) must be",
		"path_prefix: (value from ${PREFIX} not shown) must start with /",
		"path_regex: invalid regular expression (value from ${REGEX} not shown)",
		"methods[0]: invalid method (value from ${METHOD} not shown)",
		"policies.p.retry.on[0]: invalid condition (value from ${COND} not shown)",
		"policies.p.retry.attempts: at most 10 attempts, got (value from ${ATTEMPTS} not shown)",
		"policies.p.retry.idempotency_header: invalid header name (value from ${IDEM} not shown)",
		"policies.p.retry.backoff.max: 1s is shorter than base (value from ${BASE} not shown)",
		"upstream: unknown upstream (value from ${UPSTREAM} not shown) (defined: inv)",
		"listeners[0].address: invalid address (value from ${ADDRESS} not shown)",
		"spool.max_messages: must be at least 1, got (value from ${MAX_MSGS} not shown)",
		"listeners[0].routes[1].name: duplicate route name (value from ${SAME_ROUTE} not shown)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the errors lack %q:\n%s", want, msg)
		}
	}
}

// TestErrorsRedactUserinfo checks that a URL written in the file is
// shown in an error without its user information, as /v1/config shows it.
func TestErrorsRedactUserinfo(t *testing.T) {
	yaml := strings.Replace(minimal, `"http://127.0.0.1:8080"`, `"http://user:pw-LITERAL@127.0.0.1:8080", "http://user:pw-LITERAL@127.0.0.1:8080"`, 1) +
		`spool: {jetstream: {url: "nats://127.0.0.1:4222,nats://svc:p@ss:w0rd-LITERAL@"}}` + "\n"
	_, err := Parse("u.yaml", []byte(yaml), noEnv)
	if err == nil {
		t.Fatal("Parse = nil error")
	}
	msg := err.Error()
	if strings.Contains(msg, "LITERAL") || strings.Contains(msg, "w0rd") {
		t.Errorf("the errors show user information:\n%s", msg)
	}
	for _, want := range []string{
		`invalid NATS URL "nats://[redacted]@"`,
		`endpoint "http://[redacted]@127.0.0.1:8080" must be scheme://host[:port] with no path, query or credentials`,
		`duplicate endpoint "http://[redacted]@127.0.0.1:8080"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the errors lack %q:\n%s", want, msg)
		}
	}
}

// TestPublicHidesEnvValues checks that /v1/config's view shows no value
// that came from ${NAME}, as a whole Config and as a route's match.
func TestPublicHidesEnvValues(t *testing.T) {
	env := map[string]string{
		"PORT": "9101", "NATS_URL": "nats://svc:pw-SECRET@127.0.0.1:4222", "NATS_USER": "user-SECRET",
		"PREFIX": "/SECRET-prefix", "TENANT": "SECRET-tenant", "TIMEOUT": "7s", "PART": "SECRET-part",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := Parse("p.yaml", []byte(`
version: 1
spool: {backend: jetstream, jetstream: {url: "${NATS_URL}", user: "${NATS_USER}"}}
upstreams: {inv: {endpoints: ["http://127.0.0.1:8080"]}}
policies: {p: {timeout: "${TIMEOUT}"}}
listeners:
  - name: app
    address: "127.0.0.1:${PORT}"
    routes:
      - {name: r, upstream: inv, policy: p, async: {}, match: {path_prefix: "${PREFIX}", host: "a-${PART}.example", methods: [POST], headers: {x-tenant: "${TENANT}"}}}
`), lookup)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	out, _ := json.Marshal(Public(cfg))
	for _, v := range env {
		if strings.Contains(string(out), v) {
			t.Errorf("Public(cfg) shows %q from the environment: %s", v, out)
		}
	}
	// per_try_timeout, unset, follows timeout from ${TIMEOUT}.
	for _, want := range []string{`"address":"[redacted]"`, `"url":"[redacted]"`, `"timeout":"[redacted]"`, `"per_try_timeout":"[redacted]"`, `"path_prefix":"[redacted]"`, `"methods":["POST"]`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("Public(cfg) lacks %s: %s", want, out)
		}
	}
	match, _ := json.Marshal(PublicAt(cfg, "listeners[0].routes[0].match", cfg.Listeners[0].Routes[0].Match))
	for _, v := range env {
		if strings.Contains(string(match), v) {
			t.Errorf("PublicAt(match) shows %q from the environment: %s", v, match)
		}
	}
	if !strings.Contains(string(match), `"methods":["POST"]`) || !strings.Contains(string(match), `"host":"[redacted]"`) {
		t.Errorf("PublicAt(match) = %s, want methods shown and host redacted", match)
	}
}

// YAML syntax errors point at the line of the construct that fails, its
// first column, and the key path above it where the lines before tell.
func TestSyntaxErrorPosition(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		// yaml.v3's parser counts lines from 0: this is line 4, not 3.
		{"version: 1\nadmin:\n  address: x\n  token_env: [a, b\nspool:\n  dir: y\n",
			"t.yaml:4:3: admin.token_env: did not find expected ',' or ']'"},
		{"version: 1\nlisteners:\n  - name: a\n    address: 127.0.0.1:1\n    routes:\n      - name: r\n        upstream: u\n      - name: s\n        match: {path: /x\n        upstream: u\n",
			"t.yaml:9:9: listeners[0].routes[1].match: did not find expected ',' or '}'"},
		{"version: 1\nlisteners:\n- name: a\n  routes:\n  - {name: x\n  - y\n",
			"t.yaml:5:3: listeners[0].routes[0]: did not find expected ',' or '}'"},
		// The scanner's lines count from 1 already.
		{"version: 1\nupstreams:\n  u:\n    endpoints: [\"http://x]\n",
			"t.yaml:4:5: upstreams.u.endpoints: found unexpected end of stream"},
		{"version: 1\nadmin:\n  address: 127.0.0.1:1\n   token_env: X\n",
			"t.yaml:4:4: admin.address: mapping values are not allowed in this context"},
		{"version: 1\nadmin:\n\taddress: x\n",
			"t.yaml:3:1: found character that cannot start any token"},
	} {
		_, err := Parse("t.yaml", []byte(tc.yaml), func(string) (string, bool) { return "", false })
		if err == nil || err.Error() != tc.want {
			t.Errorf("Parse(%q) = %v\nwant %s", tc.yaml, err, tc.want)
		}
	}
}

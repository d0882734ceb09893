package config

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// validator checks a decoded Config, placing each error at the key it is
// about (or, for a missing key, at its parent).
type validator struct {
	ctx  context.Context // checked once per upstream, policy and route: Parse's time bound
	file string
	pos  map[string]Pos
	env  envPaths // from the decoder: errors never show these values
	errs Errors

	knownCache map[string]string // by section, see known
	dropped    int               // errors past maxErrors, not kept
}

func (v *validator) errorf(path, format string, args ...any) {
	if len(v.errs) >= maxErrors {
		v.dropped++
		return
	}
	p, ok := v.pos[path]
	for parent := path; !ok && parent != ""; {
		parent = parentPath(parent)
		p, ok = v.pos[parent]
	}
	v.errs = append(v.errs, &Error{File: v.file, Line: p.Line, Col: p.Col, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func (v *validator) oneOf(path, got string, allowed ...string) {
	if !slices.Contains(allowed, got) {
		v.errorf(path, "invalid value %s (want one of %s)", v.q(path, got), strings.Join(allowed, ", "))
	}
}

func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.errorf(path, "must be greater than 0")
	}
}

func (v *validator) atLeast(path string, got, least int64) {
	if got < least {
		v.errorf(path, "must be at least %d, got %s", least, v.val(path, got))
	}
}

func (v *validator) ratio(path string, f float64) {
	if f < 0 || f > 1 {
		v.errorf(path, "must be between 0 and 1, got %s", v.val(path, f))
	}
}

func (v *validator) conditions(path string, list []string) {
	for i, s := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		if _, err := policy.ParseCondition(s); err != nil && v.fromEnv(p) {
			v.errorf(p, "invalid condition %s", v.q(p, s))
		} else if err != nil {
			v.errorf(p, "%v", err)
		}
	}
}

func (v *validator) config(c *Config) {
	if _, ok := v.pos["version"]; !ok {
		v.errorf("version", "missing key: version: 1 is required")
	} else if c.Version != 1 {
		v.errorf("version", "unsupported version %s (want 1)", v.val("version", c.Version))
	}
	v.admin(c.Admin)
	v.telemetry(c.Telemetry)
	v.spool(c.Spool)
	for _, name := range sortedKeys(c.Upstreams) {
		if v.ctx.Err() != nil {
			return
		}
		v.upstream("upstreams."+name, c.Upstreams[name])
	}
	for _, name := range sortedKeys(c.Policies) {
		if v.ctx.Err() != nil {
			return
		}
		v.policy("policies."+name, c.Policies[name])
	}
	v.listeners(c)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (v *validator) admin(a Admin) {
	host, _, err := net.SplitHostPort(a.Address)
	switch {
	case err != nil:
		v.errorf("admin.address", "invalid address %s: want host:port", v.q("admin.address", a.Address))
	case !IsLoopback(host):
		v.errorf("admin.address", "%s is not a loopback address: the admin API binds to loopback only", v.q("admin.address", a.Address))
	}
	if a.TokenEnv != "" && !validEnvName(a.TokenEnv) {
		v.errorf("admin.token_env", "invalid environment variable name %s", v.q("admin.token_env", a.TokenEnv))
	}
	if a.ProbeAddress != "" {
		if _, port, err := net.SplitHostPort(a.ProbeAddress); err != nil || port == "" {
			v.errorf("admin.probe_address", "invalid address %s: want host:port, such as 0.0.0.0:9902", v.q("admin.probe_address", a.ProbeAddress))
		} else if a.ProbeAddress == a.Address && port != "0" {
			v.errorf("admin.probe_address", "address %s is also the admin address", v.q("admin.probe_address", a.ProbeAddress))
		}
	}
}

// IsLoopback reports whether host (without port) names the loopback
// interface: localhost or an address in 127.0.0.0/8 or ::1.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (v *validator) telemetry(t Telemetry) {
	v.oneOf("telemetry.traces.exporter", t.Traces.Exporter, "otlp", "stdout", "none")
	v.ratio("telemetry.traces.sample_ratio", t.Traces.SampleRatio)
}

func (v *validator) spool(s Spool) {
	v.oneOf("spool.backend", s.Backend, "file", "jetstream")
	v.oneOf("spool.fsync", s.Fsync, "always", "interval")
	if s.Backend == "file" && s.Dir == "" {
		v.errorf("spool.dir", "must not be empty with the file backend")
	}
	v.positive("spool.fsync_interval", s.FsyncInterval)
	v.atLeast("spool.max_bytes", int64(s.MaxBytes), 1)
	v.atLeast("spool.max_messages", s.MaxMessages, 1)
	js := s.JetStream
	if js.URL == "" {
		v.errorf("spool.jetstream.url", "must not be empty")
	}
	for _, u := range strings.Split(js.URL, ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); js.URL != "" && (err != nil || pu.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, pu.Scheme)) {
			v.errorf("spool.jetstream.url", "invalid NATS URL %s (want nats://host:port)", v.url("spool.jetstream.url", u))
		}
	}
	if js.Stream == "" || strings.ContainsAny(js.Stream, " \t.*>/\\") {
		v.errorf("spool.jetstream.stream", "invalid stream name %s (no spaces, dots, wildcards or slashes)", v.q("spool.jetstream.stream", js.Stream))
	}
	if js.Replicas < 1 || js.Replicas > 5 {
		v.errorf("spool.jetstream.replicas", "must be between 1 and 5, got %s", v.val("spool.jetstream.replicas", js.Replicas))
	}
	if js.AckWait < Duration(time.Second) {
		v.errorf("spool.jetstream.ack_wait", "must be at least 1s, got %s", v.val("spool.jetstream.ack_wait", js.AckWait.D()))
	}
	v.tls("spool.jetstream.tls", js.TLS)
	v.readable("spool.jetstream.creds_file", js.CredsFile)
	v.readable("spool.jetstream.nkey_file", js.NKeyFile)
}

// readable checks that a named file, when set, can be read. It opens it
// non-blocking, so that a pipe nobody writes to does not block the check.
func (v *validator) readable(path, name string) {
	if name == "" {
		return
	}
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		v.errorf(path, "cannot read %s: %v", v.q(path, name), unwrapPathError(err))
		return
	}
	f.Close()
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func (v *validator) tls(path string, t TLS) {
	v.readable(path+".ca_file", t.CAFile)
	v.readable(path+".cert_file", t.CertFile)
	v.readable(path+".key_file", t.KeyFile)
	if (t.CertFile == "") != (t.KeyFile == "") {
		v.errorf(path, "cert_file and key_file must be set together")
	}
}

func (v *validator) upstream(path string, u *Upstream) {
	v.oneOf(path+".protocol", u.Protocol, "http1", "h2c", "grpc", "h2")
	v.oneOf(path+".load_balancing", u.LoadBalancing, "round_robin", "least_request", "random")
	v.positive(path+".connect_timeout", u.ConnectTimeout)
	v.atLeast(path+".max_idle_conns", int64(u.MaxIdleConns), 1)
	v.positive(path+".idle_conn_timeout", u.IdleConnTimeout)
	v.tls(path+".tls", u.TLS)
	if r := u.Resolve; r != nil && r.Every < Duration(time.Second) {
		v.errorf(path+".resolve.every", "must be at least 1s, got %s", v.val(path+".resolve.every", r.Every.D()))
	}
	if len(u.Endpoints) == 0 {
		v.errorf(path+".endpoints", "at least one endpoint is required")
	}
	seen := map[string]bool{}
	for i, ep := range u.Endpoints {
		p := path + ".endpoints[" + strconv.Itoa(i) + "]"
		if err := checkEndpoint(ep, v.url(p, ep), u.Protocol); err != nil {
			v.errorf(p, "%v", err)
		}
		if seen[ep] {
			v.errorf(p, "duplicate endpoint %s", v.url(p, ep))
		}
		seen[ep] = true
	}
	if h := u.HealthCheck; h != nil {
		hp := path + ".health_check"
		if !h.GRPC && !strings.HasPrefix(h.Path, "/") {
			v.errorf(hp+".path", "must start with /, got %s", v.q(hp+".path", h.Path))
		}
		if h.GRPC && u.Protocol == "http1" {
			v.errorf(hp+".grpc", "needs protocol grpc, h2c or h2: gRPC runs over HTTP/2")
		}
		v.positive(hp+".interval", h.Interval)
		v.positive(hp+".timeout", h.Timeout)
		if h.Timeout >= h.Interval && h.Interval > 0 {
			v.errorf(hp+".timeout", "%s must be shorter than interval %s", v.val(hp+".timeout", h.Timeout.D()), v.val(hp+".interval", h.Interval.D()))
		}
		v.atLeast(hp+".healthy", int64(h.Healthy), 1)
		v.atLeast(hp+".unhealthy", int64(h.Unhealthy), 1)
	}
	if o := u.Outlier; o != nil {
		op := path + ".outlier"
		v.atLeast(op+".consecutive_5xx", int64(o.Consecutive5xx), 1)
		v.positive(op+".eject_for", o.EjectFor)
		if o.MaxEjectedPercent < 0 || o.MaxEjectedPercent > 100 {
			v.errorf(op+".max_ejected_percent", "must be between 0 and 100, got %s", v.val(op+".max_ejected_percent", o.MaxEjectedPercent))
		}
	}
}

// checkEndpoint checks the endpoint URL ep; its errors name it as shown.
func checkEndpoint(ep, shown, protocol string) error {
	u, err := url.Parse(ep)
	switch {
	case !strings.Contains(ep, "://"):
		return fmt.Errorf("endpoint %s needs an http:// or https:// scheme", shown)
	case err != nil:
		return fmt.Errorf("invalid endpoint URL %s", shown)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("endpoint %s needs an http:// or https:// scheme", shown)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("endpoint %s has no host", shown)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return fmt.Errorf("endpoint %s must be scheme://host[:port] with no path, query or credentials", shown)
	case u.Port() != "":
		if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("endpoint %s has an invalid port", shown)
		}
	}
	switch {
	case protocol == "h2" && u.Scheme != "https":
		return fmt.Errorf("endpoint %s: protocol h2 needs https://", shown)
	case (protocol == "h2c" || protocol == "grpc") && u.Scheme != "http":
		return fmt.Errorf("endpoint %s: protocol %s is cleartext and needs http://", shown, protocol)
	}
	return nil
}

func (v *validator) policy(path string, p *Policy) {
	if p.Timeout > 0 && p.PerTryTimeout > p.Timeout {
		v.errorf(path+".per_try_timeout", "%s is longer than timeout %s", v.val(path+".per_try_timeout", p.PerTryTimeout.D()), v.val(path+".timeout", p.Timeout.D()))
	}
	if p.Timeout > 0 && p.PerTryTimeout == 0 {
		v.errorf(path+".per_try_timeout", "must be greater than 0 when timeout is set")
	}
	v.atLeast(path+".max_in_flight", int64(p.MaxInFlight), 0)
	if r := p.Retry; r != nil {
		rp := path + ".retry"
		v.atLeast(rp+".attempts", int64(r.Attempts), 1)
		if r.Attempts > 10 {
			v.errorf(rp+".attempts", "at most 10 attempts, got %s", v.val(rp+".attempts", r.Attempts))
		}
		v.backoff(rp+".backoff", r.Backoff)
		v.conditions(rp+".on", r.On)
		if r.Budget.Ratio < 0 {
			v.errorf(rp+".budget.ratio", "must not be negative")
		}
		if r.Budget.MinPerSecond < 0 {
			v.errorf(rp+".budget.min_per_second", "must not be negative")
		}
		v.positive(rp+".budget.window", r.Budget.Window)
		v.headerName(rp+".idempotency_header", r.IdempotencyHeader, v.q(rp+".idempotency_header", r.IdempotencyHeader))
	}
	if h := p.Hedge; h != nil {
		hp := path + ".hedge"
		v.positive(hp+".after", h.After)
		if h.MaxExtra < 1 || h.MaxExtra > MaxHedges {
			v.errorf(hp+".max_extra", "must be 1 to %d, got %s", MaxHedges, v.val(hp+".max_extra", h.MaxExtra))
		}
		if !p.Retry.Active() {
			v.errorf(hp, "needs a retry block: hedges draw on retry.budget and replay bodies up to retry.buffer_limit")
		}
	}
	if b := p.CircuitBreaker; b != nil {
		bp := path + ".circuit_breaker"
		v.atLeast(bp+".consecutive_failures", int64(b.ConsecutiveFailures), 1)
		if b.FailureRatio <= 0 || b.FailureRatio > 1 {
			v.errorf(bp+".failure_ratio", "must be greater than 0 and at most 1, got %s", v.val(bp+".failure_ratio", b.FailureRatio))
		}
		v.atLeast(bp+".min_requests", int64(b.MinRequests), 1)
		v.positive(bp+".window", b.Window)
		v.positive(bp+".open_for", b.OpenFor)
		v.atLeast(bp+".half_open_requests", int64(b.HalfOpenRequests), 1)
		v.conditions(bp+".failure_on", b.FailureOn)
	}
	if r := p.RateLimit; r != nil {
		rp := path + ".rate_limit"
		if r.RPS <= 0 {
			v.errorf(rp+".rps", "must be greater than 0, got %s", v.val(rp+".rps", r.RPS))
		}
		v.atLeast(rp+".burst", int64(r.Burst), 1)
	}
}

func (v *validator) backoff(path string, b Backoff) {
	v.positive(path+".base", b.Base)
	if b.Max < b.Base {
		v.errorf(path+".max", "%s is shorter than base %s", v.val(path+".max", b.Max.D()), v.val(path+".base", b.Base.D()))
	}
}

// headerName checks a header name, which its error names as shown.
func (v *validator) headerName(path, name, shown string) {
	if name == "" {
		v.errorf(path, "must not be empty")
		return
	}
	for _, c := range []byte(name) {
		if !isTokenChar(c) {
			v.errorf(path, "invalid header name %s", shown)
			return
		}
	}
}

func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func (v *validator) listeners(c *Config) {
	if len(c.Listeners) == 0 {
		v.errorf("listeners", "at least one listener is required")
	}
	names, addrs, routes := map[string]string{}, map[string]string{}, map[string]string{}
	hasSpool := v.pos["spool"] != (Pos{})
	for i, l := range c.Listeners {
		lp := "listeners[" + strconv.Itoa(i) + "]"
		if l.Name == "" {
			v.errorf(lp+".name", "missing key: every listener needs a name")
		} else if prev, dup := names[l.Name]; dup {
			v.errorf(lp+".name", "duplicate listener name %s (also %s)", v.q(lp+".name", l.Name), prev)
		} else {
			names[l.Name] = lp
		}
		// Port 0 asks the kernel for a free port: never a clash.
		if _, port, err := net.SplitHostPort(l.Address); err != nil || port == "" {
			v.errorf(lp+".address", "invalid address %s: want host:port", v.q(lp+".address", l.Address))
		} else if prev, dup := addrs[l.Address]; dup && port != "0" {
			v.errorf(lp+".address", "duplicate address %s (also %s)", v.q(lp+".address", l.Address), prev)
		} else if l.Address == c.Admin.Address && port != "0" {
			v.errorf(lp+".address", "address %s is also the admin address", v.q(lp+".address", l.Address))
		} else if l.Address == c.Admin.ProbeAddress && port != "0" {
			v.errorf(lp+".address", "address %s is also admin.probe_address", v.q(lp+".address", l.Address))
		} else {
			addrs[l.Address] = lp
		}
		v.oneOf(lp+".protocol", l.Protocol, "auto", "http1", "h2c")
		v.oneOf(lp+".mode", l.Mode, ModeReverseProxy, ModeForwardProxy)
		if l.BodyIdleTimeout < 0 {
			v.errorf(lp+".body_idle_timeout", "must not be negative")
		}
		if len(l.Routes) == 0 {
			v.errorf(lp+".routes", "at least one route is required")
		}
		for j, r := range l.Routes {
			if v.ctx.Err() != nil {
				return
			}
			rp := lp + ".routes[" + strconv.Itoa(j) + "]"
			if r.Name == "" {
				v.errorf(rp+".name", "missing key: every route needs a name")
			} else if prev, dup := routes[r.Name]; dup {
				v.errorf(rp+".name", "duplicate route name %s (also %s)", v.q(rp+".name", r.Name), prev)
			} else {
				routes[r.Name] = rp
			}
			v.route(rp, r, c, hasSpool)
			v.routeMode(rp, r, l.Mode == ModeForwardProxy)
		}
	}
}

func (v *validator) route(path string, r *Route, c *Config, hasSpool bool) {
	switch {
	case r.Upstream == "":
		v.errorf(path+".upstream", "missing key: every route needs an upstream")
	case c.Upstreams[r.Upstream] == nil:
		v.errorf(path+".upstream", "unknown upstream %s%s", v.q(path+".upstream", r.Upstream), v.known("upstreams", func() []string { return sortedKeys(c.Upstreams) }))
	}
	if r.Policy != "" && c.Policies[r.Policy] == nil {
		v.errorf(path+".policy", "unknown policy %s%s", v.q(path+".policy", r.Policy), v.known("policies", func() []string { return sortedKeys(c.Policies) }))
	}
	m, mp := r.Match, path+".match"
	set := 0
	for _, s := range []string{m.Path, m.PathPrefix, m.PathRegex} {
		if s != "" {
			set++
		}
	}
	if set > 1 {
		v.errorf(mp, "set at most one of path, path_prefix and path_regex")
	}
	if m.Path != "" && m.Path[0] != '/' {
		v.errorf(mp+".path", "%s must start with /", v.q(mp+".path", m.Path))
	}
	if m.PathPrefix != "" && m.PathPrefix[0] != '/' {
		v.errorf(mp+".path_prefix", "%s must start with /", v.q(mp+".path_prefix", m.PathPrefix))
	}
	if m.PathRegex != "" {
		// regexp's error quotes the expression: not shown from ${NAME}.
		if _, err := regexp.Compile(m.PathRegex); err != nil && v.fromEnv(mp+".path_regex") {
			v.errorf(mp+".path_regex", "invalid regular expression %s", v.q(mp+".path_regex", m.PathRegex))
		} else if err != nil {
			v.errorf(mp+".path_regex", "invalid regular expression: %v", err)
		}
	}
	for i, meth := range m.Methods {
		if meth == "" || strings.ToUpper(meth) != meth || strings.IndexFunc(meth, func(c rune) bool { return c > 127 || !isTokenChar(byte(c)) }) >= 0 {
			v.errorf(mp+".methods["+strconv.Itoa(i)+"]", "invalid method %s (want an upper-case token such as GET)", v.q(mp+".methods["+strconv.Itoa(i)+"]", meth))
		}
		if meth == "CONNECT" {
			v.errorf(mp+".methods["+strconv.Itoa(i)+"]", "CONNECT is never proxied")
		}
	}
	// Header names are keys, never from ${NAME} (their values may be).
	for _, name := range sortedKeys(m.Headers) {
		v.headerName(mp+".headers."+name, name, strconv.Quote(name))
	}
	if strings.ContainsAny(m.GRPCService, "/ ") || strings.ContainsAny(m.GRPCMethod, "/ ") {
		v.errorf(mp, "grpc_service and grpc_method take bare names without slashes")
	}
	if m.Host != "" {
		if _, _, err := ParseMatchHost(m.Host); err != nil {
			v.errorf(mp+".host", "invalid host %s: %v", v.q(mp+".host", m.Host), err)
		}
	}
	if m.GRPCMethod != "" && m.GRPCService == "" {
		v.errorf(mp+".grpc_method", "needs grpc_service")
	}
	if (m.GRPCService != "") && set > 0 {
		v.errorf(mp, "grpc_service cannot be combined with path, path_prefix or path_regex")
	}
	if a := r.Async; a != nil {
		ap := path + ".async"
		if !hasSpool {
			v.errorf(ap, "an async route needs a spool: add a spool section (for example spool: {dir: ./data/spool})")
		}
		v.oneOf(ap+".when", a.When, "upstream_down", "always")
		v.conditions(ap+".spool_on", a.SpoolOn)
		v.headerName(ap+".idempotency_header", a.IdempotencyHeader, v.q(ap+".idempotency_header", a.IdempotencyHeader))
		v.oneOf(ap+".ordering", a.Ordering, "fifo", "none")
		v.atLeast(ap+".max_in_flight", int64(a.MaxInFlight), 1)
		v.backoff(ap+".backoff", a.Backoff)
		v.atLeast(ap+".max_attempts", int64(a.MaxAttempts), 1)
		v.positive(ap+".max_age", a.MaxAge)
		v.atLeast(ap+".max_body", int64(a.MaxBody), 1)
		v.atLeast(ap+".max_messages", a.MaxMessages, 0)
		v.atLeast(ap+".max_bytes", int64(a.MaxBytes), 0)
		if a.DedupeWindow < 0 || a.DedupeWindow.D() > MaxDedupeWindow {
			v.errorf(ap+".dedupe_window", "must be between 0 (off) and %s, got %s", MaxDedupeWindow, v.val(ap+".dedupe_window", a.DedupeWindow.D()))
		}
		if r := a.Rate; r != nil {
			rp := ap + ".rate"
			if !(r.PerSecond > 0) || math.IsInf(r.PerSecond, 0) {
				v.errorf(rp+".per_second", "must be greater than 0, got %s", v.val(rp+".per_second", r.PerSecond))
			}
			v.atLeast(rp+".burst", int64(r.Burst), 1)
		}
	}
}

// MaxDedupeWindow bounds async.dedupe_window: a window's keys are kept
// in memory, and their records on disk, until they expire.
const MaxDedupeWindow = 24 * time.Hour

// routeMode checks what a route may be on its listener's mode: on a
// forward_proxy listener every route names its host, and connect: true
// is only for such a route.
func (v *validator) routeMode(path string, r *Route, forward bool) {
	switch {
	case forward && r.Match.Host == "":
		// Without a host the route would take any target: an open proxy.
		v.errorf(path+".match.host", "missing key: every route of a forward_proxy listener needs match.host, or it would route requests for any host (an open proxy)")
	case r.Connect && !forward:
		v.errorf(path+".connect", "connect: true needs a listener with mode: forward_proxy")
	}
}

// ParseMatchHost splits a match.host value into its lower-case host and
// its port, "" when it names none: "inventory.internal",
// "inventory.internal:8080", "10.0.0.7", "[::1]:8080" or "::1". It
// refuses a scheme, a path, a wildcard, an empty or invalid port.
func ParseMatchHost(s string) (host, port string, err error) {
	host = s
	switch {
	case strings.Contains(s, "://"):
		return "", "", errors.New("want the host alone, without a scheme")
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ] after an IPv6 address")
		}
		host = s[1:end]
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' {
				return "", "", errors.New("want [address] or [address]:port")
			}
			port = rest[1:]
			if port == "" {
				return "", "", errors.New("empty port")
			}
		}
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return "", "", errors.New("not an IPv6 address in brackets")
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
		if port == "" {
			return "", "", errors.New("empty port")
		}
	case strings.Contains(s, ":"):
		if a, err := netip.ParseAddr(s); err != nil || !a.Is6() {
			return "", "", errors.New("want a host name or IP address, optionally with :port (an IPv6 address with a port as [address]:port)")
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] < '0' || port[0] > '9' {
			return "", "", fmt.Errorf("invalid port %q", port)
		}
		port = strconv.Itoa(n)
	}
	if !strings.Contains(host, ":") {
		switch {
		case strings.Contains(host, "*"):
			return "", "", errors.New("wildcards are not supported: name each host")
		case !validHostName(host):
			return "", "", errors.New("want a host name or IP address, optionally with :port, and no scheme or path")
		}
	}
	return strings.ToLower(host), port, nil
}

// validHostName reports whether h is made of DNS labels: letters, digits,
// '-' and '_', separated by single dots.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// known lists the names defined in section (upstreams or policies), the
// first maxKnown of them, for an error about an unknown one. Every route
// naming an unknown upstream repeats the list, so the whole list would
// make the errors grow as the product of routes and upstreams; it is
// built once.
func (v *validator) known(section string, sorted func() []string) string {
	if s, ok := v.knownCache[section]; ok {
		return s
	}
	names := sorted()
	var s string
	switch {
	case len(names) == 0:
		s = " (none are defined)"
	case len(names) > maxKnown:
		s = fmt.Sprintf(" (defined: %s and %d more)", strings.Join(names[:maxKnown], ", "), len(names)-maxKnown)
	default:
		s = " (defined: " + strings.Join(names, ", ") + ")"
	}
	if v.knownCache == nil {
		v.knownCache = map[string]string{}
	}
	v.knownCache[section] = s
	return s
}

const maxKnown = 10

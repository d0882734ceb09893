package config

import "time"

// Defaults of the policy blocks and other keys, as documented in
// docs/configuration.md.
const (
	DefaultAdminAddress      = "127.0.0.1:9901"
	DefaultTokenEnv          = "SIDECAR_ADMIN_TOKEN"
	DefaultTimeout           = 15 * time.Second
	DefaultIdempotencyHeader = "Idempotency-Key"
)

// The listener modes (listeners[].mode).
const (
	// ModeReverseProxy: apps call the listener's address; routes match on
	// the request's path (and host, headers, ...).
	ModeReverseProxy = "reverse_proxy"
	// ModeForwardProxy: apps use the listener as their HTTP_PROXY;
	// requests are routed by their target's host.
	ModeForwardProxy = "forward_proxy"
)

func (c *Config) setDefaults() {
	c.ShutdownGrace = Duration(15 * time.Second)
	c.Admin = Admin{Address: DefaultAdminAddress, TokenEnv: DefaultTokenEnv}
	c.Telemetry = Telemetry{
		ServiceName: "sidecar",
		Traces:      Traces{Exporter: "none", SampleRatio: 1.0},
		Metrics:     Metrics{Prometheus: true},
	}
	c.Spool = Spool{
		Backend:       "file",
		Dir:           "./data/spool",
		Fsync:         "always",
		FsyncInterval: Duration(50 * time.Millisecond),
		MaxBytes:      1 << 30,
		MaxMessages:   1_000_000,
		JetStream:     JetStream{URL: "nats://127.0.0.1:4222", Stream: "SIDECAR_SPOOL", Replicas: 1, Create: true, AckWait: Duration(30 * time.Second)},
	}
}

func (u *Upstream) setDefaults() {
	u.Protocol = "http1"
	u.LoadBalancing = "round_robin"
	u.ConnectTimeout = Duration(time.Second)
	u.MaxIdleConns = 256
	u.IdleConnTimeout = Duration(90 * time.Second)
}

func (h *HealthCheck) setDefaults() {
	h.Path = "/healthz"
	h.Interval = Duration(5 * time.Second)
	h.Timeout = Duration(time.Second)
	h.Healthy = 2
	h.Unhealthy = 3
}

func (o *Outlier) setDefaults() {
	o.Consecutive5xx = 5
	o.EjectFor = Duration(30 * time.Second)
	o.MaxEjectedPercent = 50
}

// perTryUnset marks a per_try_timeout the file did not set; finish turns it
// into the policy's timeout. Negative durations cannot come from a file.
const perTryUnset = Duration(-1)

func (p *Policy) setDefaults() {
	p.Timeout = Duration(DefaultTimeout)
	p.PerTryTimeout = perTryUnset
}

func (p *Policy) finish() {
	if p.PerTryTimeout == perTryUnset {
		p.PerTryTimeout = p.Timeout
	}
}

// RoutePolicy returns the policy route r uses and its name: the one it
// names, else the file's "default", else the built-in one (named "").
func (c *Config) RoutePolicy(r *Route) (*Policy, string) {
	if r.Policy != "" {
		return c.Policies[r.Policy], r.Policy
	}
	if p := c.Policies["default"]; p != nil {
		return p, "default"
	}
	return DefaultPolicy(), ""
}

// DefaultPolicy returns the built-in policy routes use when they name none
// and the file defines no policy called "default".
func DefaultPolicy() *Policy {
	p := &Policy{}
	p.setDefaults()
	p.finish()
	return p
}

func (r *Retry) setDefaults() {
	r.Enabled = true
	r.Attempts = 3
	r.Backoff = Backoff{Base: Duration(25 * time.Millisecond), Max: Duration(time.Second)}
	r.On = []string{"connect_error", "reset", "timeout", "502", "503", "504", "unavailable"}
	r.Budget = Budget{Ratio: 0.2, MinPerSecond: 10.0, Window: Duration(10 * time.Second)}
	r.BufferLimit = 64 << 10
	r.IdempotencyHeader = DefaultIdempotencyHeader
}

func (h *Hedge) setDefaults() {
	h.MaxExtra = 1
}

func (b *CircuitBreaker) setDefaults() {
	b.Enabled = true
	b.ConsecutiveFailures = 5
	b.FailureRatio = 0.5
	b.MinRequests = 20
	b.Window = Duration(10 * time.Second)
	b.OpenFor = Duration(15 * time.Second)
	b.HalfOpenRequests = 1
	b.FailureOn = []string{"connect_error", "reset", "timeout", "5xx"}
}

func (r *Resolve) setDefaults() {
	r.Every = Duration(10 * time.Second)
}

func (r *RateLimit) setDefaults() {
	r.Enabled = true
	r.RPS = 1000.0
	r.Burst = 200
}

func (l *Listener) setDefaults() {
	l.Protocol = "auto"
	l.Mode = ModeReverseProxy
	l.BodyIdleTimeout = Duration(30 * time.Second)
}

func (r *DeliveryRate) setDefaults() {
	r.Burst = 1
}

func (a *Async) setDefaults() {
	a.When = "upstream_down"
	a.SpoolOn = []string{"connect_error", "breaker_open", "timeout", "reset", "502", "503", "504"}
	a.IdempotencyHeader = DefaultIdempotencyHeader
	a.Ordering = "fifo"
	a.MaxInFlight = 1
	a.Backoff = Backoff{Base: Duration(time.Second), Max: Duration(5 * time.Minute)}
	a.MaxAttempts = 100
	a.MaxAge = Duration(72 * time.Hour)
	a.MaxBody = 1 << 20
}

// Active reports whether the retry block is present and enabled.
func (r *Retry) Active() bool { return r != nil && r.Enabled }

// Active reports whether the breaker block is present and enabled.
func (b *CircuitBreaker) Active() bool { return b != nil && b.Enabled }

// Active reports whether the rate limit block is present and enabled.
func (r *RateLimit) Active() bool { return r != nil && r.Enabled }

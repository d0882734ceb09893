package config

// Config is the whole sidecar configuration file. Field comments give each
// key's default; Load fills defaults in, so a loaded Config is complete.
type Config struct {
	// Version of the file format. Must be 1.
	Version int `yaml:"version"`
	// ShutdownGrace bounds how long in-flight requests may drain on
	// SIGTERM/SIGINT. Default 15s.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// ShutdownDelay is how long /readyz reports 503 before listeners stop
	// accepting, so load balancers notice. Default 0s.
	ShutdownDelay Duration `yaml:"shutdown_delay"`

	Admin     Admin                `yaml:"admin"`
	Telemetry Telemetry            `yaml:"telemetry"`
	Spool     Spool                `yaml:"spool"`
	Upstreams map[string]*Upstream `yaml:"upstreams"`
	Policies  map[string]*Policy   `yaml:"policies"`
	Listeners []*Listener          `yaml:"listeners"`

	// env holds the key paths of the values that came from ${NAME}, which
	// Public redacts.
	env envPaths
}

// Admin configures the admin listener.
type Admin struct {
	// Address to bind. Default 127.0.0.1:9901. Must be a loopback address.
	Address string `yaml:"address"`
	// TokenEnv names the environment variable holding the admin token.
	// Default SIDECAR_ADMIN_TOKEN. When that variable is set and not empty,
	// mutating admin calls need "Authorization: Bearer <token>".
	TokenEnv string `yaml:"token_env"`
	// ProbeAddress, when set (such as 0.0.0.0:9902), opens a second,
	// read-only listener serving only GET /healthz, /readyz and /metrics,
	// for kubelet probes and scrapes that reach the pod on its own IP.
	// Default "": none.
	ProbeAddress string `yaml:"probe_address"`
}

// Telemetry configures traces, metrics and the access log
// (docs/observability.md).
type Telemetry struct {
	// ServiceName is the resource's service.name in traces. Default
	// "sidecar".
	ServiceName string  `yaml:"service_name"`
	Traces      Traces  `yaml:"traces"`
	Metrics     Metrics `yaml:"metrics"`
	// AccessLog logs one line per request at info level. Default false.
	AccessLog bool `yaml:"access_log"`
}

// Traces configures the trace exporter.
type Traces struct {
	// Exporter is otlp, stdout or none. Default none.
	Exporter string `yaml:"exporter"`
	// SampleRatio in [0, 1]. Default 1.0.
	SampleRatio float64 `yaml:"sample_ratio"`
}

// Metrics configures metric export.
type Metrics struct {
	// Prometheus serves metrics at the admin /metrics. Default true.
	Prometheus bool `yaml:"prometheus"`
}

// Spool configures durable storage for async routes.
type Spool struct {
	// Backend is file or jetstream. Default file.
	Backend string `yaml:"backend"`
	// Dir holds the file backend's segments. Default ./data/spool.
	Dir string `yaml:"dir"`
	// Fsync is always (every acknowledged message is on disk) or interval.
	// Default always.
	Fsync string `yaml:"fsync"`
	// FsyncInterval is the sync period with fsync: interval. Default 50ms.
	FsyncInterval Duration `yaml:"fsync_interval"`
	// MaxBytes bounds the spool's total size. Default 1GiB.
	MaxBytes Size `yaml:"max_bytes"`
	// MaxMessages bounds the number of stored messages. Default 1000000.
	// The file backend counts pending and dead messages together;
	// jetstream bounds each of its two streams, pending and dead, by it
	// (MaxBytes too; docs/spool.md).
	MaxMessages int64     `yaml:"max_messages"`
	JetStream   JetStream `yaml:"jetstream"`
}

// JetStream configures the NATS JetStream spool backend.
type JetStream struct {
	// URL of the NATS server(s), comma separated. Default nats://127.0.0.1:4222.
	// User information in a URL is redacted in /v1/config and in errors.
	URL string `yaml:"url" secret:"userinfo"`
	// Stream name. Default SIDECAR_SPOOL.
	Stream string `yaml:"stream"`
	// Replicas of the stream. Default 1.
	Replicas int `yaml:"replicas"`
	// Create makes the stream when missing; false only finds it. Default true.
	Create bool `yaml:"create"`
	// AckWait is how long the server waits for a delivery's outcome before
	// handing the message out again: after a crash of the sidecar, its
	// leased messages come back after it. Default 30s.
	AckWait Duration `yaml:"ack_wait"`
	// CredsFile is a NATS credentials file. Default none.
	CredsFile string `yaml:"creds_file"`
	// NKeyFile is an NKey seed file. Default none.
	NKeyFile string `yaml:"nkey_file"`
	// User and Password authenticate with user/password. Default none.
	User     string `yaml:"user"`
	Password string `yaml:"password" secret:"true"`
	// Token authenticates with a token. Default none.
	Token string `yaml:"token" secret:"true"`
	TLS   TLS    `yaml:"tls"`
}

// Upstream is a named pool of endpoints.
type Upstream struct {
	// Endpoints are absolute http:// or https:// URLs with a host. At least one.
	Endpoints []string `yaml:"endpoints"`
	// Protocol is http1, h2c, grpc or h2. Default http1 (https:// endpoints
	// use TLS).
	Protocol string `yaml:"protocol"`
	// LoadBalancing is round_robin, least_request or random. Default round_robin.
	LoadBalancing string `yaml:"load_balancing"`
	// ConnectTimeout bounds a TCP (and TLS) connect. Default 1s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// MaxIdleConns bounds pooled idle keep-alive connections per endpoint.
	// Default 256.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// IdleConnTimeout closes pooled connections idle this long. Default 90s.
	IdleConnTimeout Duration `yaml:"idle_conn_timeout"`
	TLS             TLS      `yaml:"tls"`
	// PreserveHost sends the app's Host instead of the endpoint's. Default false.
	PreserveHost bool `yaml:"preserve_host"`
	// HealthCheck probes every endpoint actively. Off when absent.
	HealthCheck *HealthCheck `yaml:"health_check"`
	// Outlier ejects endpoints that answer 5xx in a row. Off when absent.
	Outlier *Outlier `yaml:"outlier"`
	// Resolve re-resolves the endpoints' DNS names; each address becomes
	// an endpoint of its own (docs/policies.md, "DNS re-resolution").
	// Off when absent.
	Resolve *Resolve `yaml:"resolve"`
}

// HealthCheck configures active health checks of an upstream's endpoints
// (docs/policies.md, "Active health checks").
type HealthCheck struct {
	// Path is requested with GET; a 2xx answer passes. Default /healthz.
	// Unused with GRPC.
	Path string `yaml:"path"`
	// Interval between two checks of an endpoint, jittered by ±15%.
	// Default 5s.
	Interval Duration `yaml:"interval"`
	// Timeout of one check; shorter than Interval. Default 1s.
	Timeout Duration `yaml:"timeout"`
	// Healthy is the passes in a row that make an unhealthy endpoint
	// healthy again. Default 2.
	Healthy int `yaml:"healthy"`
	// Unhealthy is the failures in a row that make an endpoint
	// unhealthy. Default 3.
	Unhealthy int `yaml:"unhealthy"`
	// GRPC checks with grpc.health.v1.Health/Check (service "") instead
	// of GET Path; the answer must be SERVING. Default false.
	GRPC bool `yaml:"grpc"`
}

// Outlier configures outlier ejection (docs/policies.md, "Outlier
// ejection").
type Outlier struct {
	// Consecutive5xx is the 5xx answers and gateway failures in a row that
	// eject an endpoint. Default 5.
	Consecutive5xx int `yaml:"consecutive_5xx"`
	// EjectFor is the first ejection's length; each repeat doubles it,
	// up to 5m or EjectFor if longer. Default 30s.
	EjectFor Duration `yaml:"eject_for"`
	// MaxEjectedPercent bounds the share of the upstream's endpoints
	// ejected at once, 0 to 100. Default 50.
	MaxEjectedPercent int `yaml:"max_ejected_percent"`
}

// Resolve configures the DNS re-resolution of an upstream's endpoints.
type Resolve struct {
	// Every is the time between two resolutions of each name, jittered by
	// up to 10 %. Default 10s; at least 1s.
	Every Duration `yaml:"every"`
}

// TLS configures a TLS client.
type TLS struct {
	// CAFile is a PEM bundle of roots. Default: the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate for mTLS. Default none.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified. Default: the endpoint's host.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify turns certificate verification off. Default false;
	// the sidecar logs a warning at start when it is true.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Policy is a named set of reliability settings routes refer to.
type Policy struct {
	// Timeout bounds the whole call, response body included; 0 means none.
	// Default 15s.
	Timeout Duration `yaml:"timeout"`
	// PerTryTimeout bounds each attempt until response headers arrive.
	// Default: Timeout.
	PerTryTimeout Duration `yaml:"per_try_timeout"`
	// Retry is off when absent.
	Retry *Retry `yaml:"retry"`
	// Hedge is off when absent; it needs an active Retry, whose budget,
	// buffer_limit and idempotency_header it uses.
	Hedge *Hedge `yaml:"hedge"`
	// CircuitBreaker is off when absent.
	CircuitBreaker *CircuitBreaker `yaml:"circuit_breaker"`
	// RateLimit is off when absent.
	RateLimit *RateLimit `yaml:"rate_limit"`
	// MaxInFlight caps concurrent requests on a route; 0 means no cap.
	// Default 0.
	MaxInFlight int `yaml:"max_in_flight"`
}

// Retry configures retries.
type Retry struct {
	// Enabled turns the block off when false. Default true.
	Enabled bool `yaml:"enabled"`
	// Attempts counts every attempt, the first included. Default 3.
	Attempts int `yaml:"attempts"`
	// Backoff between attempts. Default base 25ms, max 1s.
	Backoff Backoff `yaml:"backoff"`
	// On lists retryable outcomes. Default connect_error, reset, timeout,
	// 502, 503, 504, unavailable.
	On []string `yaml:"on"`
	// Budget bounds retries relative to requests.
	Budget Budget `yaml:"budget"`
	// BufferLimit is the largest request body buffered for replay.
	// Default 64KiB.
	BufferLimit Size `yaml:"buffer_limit"`
	// IdempotencyHeader marks POST/PATCH requests safe to retry.
	// Default Idempotency-Key.
	IdempotencyHeader string `yaml:"idempotency_header"`
}

// Hedge configures hedged requests (docs/policies.md, "Hedged
// requests"): after After with no response headers, up to MaxExtra more
// attempts go to other endpoints, and the first answer wins.
type Hedge struct {
	// After is how long an attempt waits for its response headers before
	// the next hedge is sent. Required, greater than 0.
	After Duration `yaml:"after"`
	// MaxExtra is how many hedges a request may send, 1 to 4. Default 1.
	MaxExtra int `yaml:"max_extra"`
	// OnPerTryTimeout, when true, keeps an attempt whose per_try_timeout
	// passed waiting and sends a hedge instead, while one is left.
	// Default false.
	OnPerTryTimeout bool `yaml:"on_per_try_timeout"`
}

// MaxHedges is the most hedges hedge.max_extra allows.
const MaxHedges = 4

// Backoff is exponential back-off with full jitter: min(max, base*2^n).
type Backoff struct {
	Base Duration `yaml:"base"`
	Max  Duration `yaml:"max"`
}

// Budget is a sliding-window retry budget.
type Budget struct {
	// Ratio of retries to requests. Default 0.2.
	Ratio float64 `yaml:"ratio"`
	// MinPerSecond retries are always allowed. Default 10.
	MinPerSecond float64 `yaml:"min_per_second"`
	// Window of the sliding count. Default 10s.
	Window Duration `yaml:"window"`
}

// CircuitBreaker configures per-endpoint breakers.
type CircuitBreaker struct {
	// Enabled turns the block off when false. Default true.
	Enabled bool `yaml:"enabled"`
	// ConsecutiveFailures trips the breaker. Default 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// FailureRatio trips the breaker once MinRequests were seen in Window.
	// Default 0.5.
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests before FailureRatio applies. Default 20.
	MinRequests int `yaml:"min_requests"`
	// Window of the rolling counts. Default 10s.
	Window Duration `yaml:"window"`
	// OpenFor is how long a tripped breaker stays open. Default 15s.
	OpenFor Duration `yaml:"open_for"`
	// HalfOpenRequests are the probes let through half-open. Default 1.
	HalfOpenRequests int `yaml:"half_open_requests"`
	// FailureOn lists outcomes counted as failures. Default connect_error,
	// reset, timeout, 5xx.
	FailureOn []string `yaml:"failure_on"`
}

// RateLimit is a token bucket per route.
type RateLimit struct {
	// Enabled turns the block off when false. Default true.
	Enabled bool `yaml:"enabled"`
	// RPS is the sustained rate. Default 1000.
	RPS float64 `yaml:"rps"`
	// Burst is the bucket size. Default 200.
	Burst int `yaml:"burst"`
	// MaxWait queues a request up to this long instead of refusing it.
	// Default 0s.
	MaxWait Duration `yaml:"max_wait"`
}

// Listener is an address the app calls, with its routes.
type Listener struct {
	// Name identifies the listener. Required, unique.
	Name string `yaml:"name"`
	// Address to bind, host:port. Required, unique.
	Address string `yaml:"address"`
	// Protocol is auto, http1 or h2c. Default auto.
	Protocol string `yaml:"protocol"`
	// Mode is reverse_proxy (apps call the listener's address, routes
	// match by path) or forward_proxy (apps use it as their HTTP_PROXY:
	// requests in absolute form are routed by the target's host, every
	// route must set match.host, and CONNECT is tunnelled only to routes
	// with connect: true). Default reverse_proxy.
	Mode string `yaml:"mode"`
	// BodyIdleTimeout is the longest an app may pause while sending a
	// request body: no byte for this long ends the request with 408
	// request_timeout and closes the connection. Default 30s; 0s turns it
	// off (the route's timeout still bounds the body).
	BodyIdleTimeout Duration `yaml:"body_idle_timeout"`
	// StrictPaths refuses with 400 a request whose decoded path holds ';'
	// or '\', which some upstreams (Tomcat, Spring) read as path
	// syntax that the sidecar's matching does not. Default false.
	StrictPaths bool `yaml:"strict_paths"`
	// Routes are matched in order; the first match wins.
	Routes []*Route `yaml:"routes"`
}

// Route maps matching requests to an upstream under a policy.
type Route struct {
	// Name identifies the route. Required, unique across listeners.
	Name  string `yaml:"name"`
	Match Match  `yaml:"match"`
	// Upstream names an entry of upstreams. Required.
	Upstream string `yaml:"upstream"`
	// Policy names an entry of policies. Default "default" when defined,
	// else the built-in defaults.
	Policy string `yaml:"policy"`
	// Async makes the route fire-and-forget. Off when absent.
	Async *Async `yaml:"async"`
	// WebSocket lets WebSocket upgrades through. Default false: every
	// protocol upgrade is refused.
	WebSocket bool `yaml:"websocket"`
	// Connect tunnels CONNECT requests for the route's match.host to the
	// route's upstream endpoints. Only on a forward_proxy listener, and
	// only with match.host. Default false: CONNECT is refused with 403.
	Connect bool `yaml:"connect"`
}

// Match selects requests. All present conditions must hold; an empty
// Match matches everything.
type Match struct {
	// PathPrefix matches whole segments; a prefix ending in / is a plain
	// string prefix.
	PathPrefix string `yaml:"path_prefix"`
	// Path matches exactly.
	Path string `yaml:"path"`
	// PathRegex must match the whole path (RE2 syntax).
	PathRegex string `yaml:"path_regex"`
	// Methods, any of which matches. Default: any method.
	Methods []string `yaml:"methods"`
	// Headers that must be present with exactly these values.
	Headers map[string]string `yaml:"headers"`
	// Host matches the request's host, case-insensitive: a host without a
	// port matches any port, a host with one (inventory.internal:8080)
	// only that port, where a target without a port has its scheme's
	// default (80 for http, 443 for https and CONNECT).
	Host string `yaml:"host"`
	// GRPCService and GRPCMethod match gRPC calls (/service/method).
	GRPCService string `yaml:"grpc_service"`
	GRPCMethod  string `yaml:"grpc_method"`
}

// Async makes a route fire-and-forget through the spool.
type Async struct {
	// When is upstream_down or always. Default upstream_down.
	When string `yaml:"when"`
	// SpoolOn lists the outcomes that spool the request. Default
	// connect_error, breaker_open, timeout, reset, 502, 503, 504.
	SpoolOn []string `yaml:"spool_on"`
	// IdempotencyHeader is stamped on every delivery. Default Idempotency-Key.
	IdempotencyHeader string `yaml:"idempotency_header"`
	// Ordering is fifo or none. Default fifo.
	Ordering string `yaml:"ordering"`
	// MaxInFlight deliveries with ordering none. Default 1.
	MaxInFlight int `yaml:"max_in_flight"`
	// Backoff between deliveries. Default base 1s, max 5m.
	Backoff Backoff `yaml:"backoff"`
	// MaxAttempts before dead-lettering. Default 100.
	MaxAttempts int `yaml:"max_attempts"`
	// MaxAge before dead-lettering. Default 72h.
	MaxAge Duration `yaml:"max_age"`
	// MaxBody is the largest request body spooled. Default 1MiB.
	MaxBody Size `yaml:"max_body"`
	// MaxMessages bounds the route's pending and dead messages in the
	// spool (with jetstream, its pending ones only), within
	// spool.max_messages. Default 0: no bound of its own.
	MaxMessages int64 `yaml:"max_messages"`
	// MaxBytes bounds their encoded size, within spool.max_bytes; it is
	// not enforced with jetstream. Default 0: no bound of its own.
	MaxBytes Size `yaml:"max_bytes"`
	// DedupeWindow de-duplicates requests that carry the app's own
	// idempotency key: a repeat of a key within the window gets the first
	// request's 202 and spool ID and is not stored again. At most
	// MaxDedupeWindow. Default 0: off.
	DedupeWindow Duration `yaml:"dedupe_window"`
	// Rate paces the route's deliveries. Off when absent.
	Rate *DeliveryRate `yaml:"rate"`
}

// DeliveryRate is a token bucket for an async route's deliveries.
type DeliveryRate struct {
	// PerSecond is the sustained rate of delivery attempts. Required,
	// greater than 0.
	PerSecond float64 `yaml:"per_second"`
	// Burst is the bucket size: attempts that may start at once after an
	// idle spell. Default 1.
	Burst int `yaml:"burst"`
}

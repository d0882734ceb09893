package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/sidecar-proxy/sidecar/admin"
	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// configTemplate is the sidecar's configuration. The placeholders are the
// spool directory, the upstream's address and the breaker's open_for.
// Every address is a loopback port 0: the kernel picks free ports.
const configTemplate = `version: 1
admin:
  address: 127.0.0.1:0
spool:
  dir: %s
upstreams:
  shop:
    endpoints: ["http://%s"]
    connect_timeout: 250ms
policies:
  resilient:
    timeout: 2s
    per_try_timeout: 500ms
    retry:
      attempts: 3                        # the first attempt and up to 2 retries
      backoff: {base: 20ms, max: 200ms}
      on: [connect_error, reset, "503"]
      budget: {ratio: 0.2, min_per_second: 2, window: 10s}
    circuit_breaker:
      consecutive_failures: 5
      open_for: %s
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - name: events                     # fire-and-forget: spooled while the upstream is down
        match: {path_prefix: /events, methods: [POST]}
        upstream: shop
        policy: resilient
        async:
          when: upstream_down
          backoff: {base: 200ms, max: 1s}
      - name: orders
        match: {path_prefix: /}
        upstream: shop
        policy: resilient
`

// sidecar is the sidecar running in this process: the proxy with its file
// spool, and the admin API with /metrics, wired as "sidecar run" wires
// them (cmd/sidecar).
type sidecar struct {
	cfgPath string
	app     string // the app listener's base URL
	admin   string // the admin API's base URL

	srv       *proxy.Server
	adm       *admin.Server
	adminDone chan struct{} // closed when the admin API has stopped serving
	store     *spool.FileStore
	tel       *telemetry.Provider
	reg       metric.Registration
	logs      *logCapture
}

// startSidecar writes the configuration into dir, parses it as
// "sidecar run" would, and starts the sidecar with its spool in
// dir/spool.
// Its log lines are timed from start.
func startSidecar(ctx context.Context, dir, upstreamAddr string, openFor time.Duration, start time.Time) (_ *sidecar, err error) {
	yaml := fmt.Sprintf(configTemplate, filepath.Join(dir, "spool"), upstreamAddr, openFor)
	s := &sidecar{cfgPath: filepath.Join(dir, "sidecar.yaml"), logs: newLogCapture(start)}
	if err := os.WriteFile(s.cfgPath, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.ParseContext(ctx, s.cfgPath, []byte(yaml), os.LookupEnv)
	if err != nil {
		return nil, err
	}
	logger := slog.New(s.logs)
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.tel, err = telemetry.New(ctx, cfg.Telemetry); err != nil {
		return nil, err
	}
	ptel, err := proxy.TelemetryFrom(s.tel)
	if err != nil {
		return nil, err
	}
	snap, err := proxy.Build(cfg, nil, logger, proxy.WithTelemetry(ptel))
	if err != nil {
		return nil, err
	}
	opts := spool.FileOptions{Logger: logger}
	if ptel.Instruments != nil {
		opts.OnFsync = ptel.Instruments.Fsync
	}
	if s.store, err = spool.OpenFile(cfg.Spool.Dir, opts); err != nil {
		return nil, err
	}
	s.srv = proxy.NewServer(snap, logger, proxy.WithSpool(s.store))
	if s.reg, err = s.srv.RegisterMetrics(s.tel.Meter()); err != nil {
		return nil, err
	}
	s.adm = admin.New(s.srv, logger, admin.WithTelemetry(s.tel))
	if err := s.adm.Listen(cfg.Admin.Address); err != nil {
		return nil, err
	}
	if err := s.srv.Listen(); err != nil {
		return nil, err
	}
	s.adminDone = make(chan struct{})
	s.adm.Serve(func() { close(s.adminDone) })
	s.srv.Serve()
	s.adm.SetReady(true)
	s.app = "http://" + s.srv.Addrs()["app"].String()
	s.admin = "http://" + s.adm.Addr().String()
	return s, nil
}

// close drains and stops the sidecar, then closes its spool.
func (s *sidecar) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if s.adm != nil {
		errs = append(errs, s.adm.Shutdown(ctx))
		if s.adminDone != nil {
			<-s.adminDone
		}
	}
	if s.srv != nil {
		errs = append(errs, s.srv.Shutdown(ctx))
	}
	if s.reg != nil {
		errs = append(errs, s.reg.Unregister())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	if s.tel != nil {
		errs = append(errs, s.tel.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// logLine is a line the sidecar logged.
type logLine struct {
	at    time.Duration // since the demo started
	msg   string
	attrs map[string]string
	text  string // the whole line: level, message, attributes
}

// logCapture is the sidecar's slog handler: it keeps the lines at warn
// level and above (breaker changes, spool trouble), which the demo shows
// under the phase they happened in.
type logCapture struct {
	start time.Time
	attrs []slog.Attr

	mu    *sync.Mutex
	lines *[]logLine
}

func newLogCapture(start time.Time) *logCapture {
	return &logCapture{start: start, mu: new(sync.Mutex), lines: new([]logLine)}
}

func (c *logCapture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	line := logLine{at: r.Time.Sub(c.start), msg: r.Message, attrs: map[string]string{}}
	attr := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		line.attrs[a.Key] = a.Value.String()
		return true
	}
	for _, a := range c.attrs {
		attr(a)
	}
	r.Attrs(attr)
	line.text = b.String()
	c.mu.Lock()
	*c.lines = append(*c.lines, line)
	c.mu.Unlock()
	return nil
}

func (c *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	d := *c
	d.attrs = append(append([]slog.Attr(nil), c.attrs...), as...)
	return &d
}

// WithGroup keeps the attributes flat: the sidecar logs no groups.
func (c *logCapture) WithGroup(string) slog.Handler { return c }

// take returns the lines logged since the last take, and forgets them.
func (c *logCapture) take() []logLine {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := *c.lines
	*c.lines = nil
	return out
}

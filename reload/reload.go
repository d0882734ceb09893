// Package reload applies a changed configuration file to a running
// sidecar: it reads and validates the whole file, refuses changes that
// need a restart, builds a new snapshot from the running one and has the
// proxy swap it in. A reload that fails for any reason leaves the running
// configuration serving. See docs/operations.md, "Reload".
package reload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/proxy"
)

// Triggers of a reload.
const (
	TriggerSignal = "signal" // SIGHUP
	TriggerFile   = "file"   // a change of the file, seen by the watcher
	TriggerAPI    = "api"    // POST /v1/reload
)

// Results of a reload.
const (
	Applied  = "applied"
	Rejected = "rejected"
)

// Status is the outcome of one reload: what /v1/config shows as
// last_reload and POST /v1/reload answers.
type Status struct {
	Time    time.Time `json:"time"`
	Trigger string    `json:"trigger"`
	Result  string    `json:"result"`
	// Error says why a reload was rejected: the file's errors, one per
	// line, or the keys that need a restart.
	Error string `json:"error,omitempty"`
	// RestartNeeded lists the changed keys a reload cannot apply.
	RestartNeeded []string `json:"restart_needed,omitempty"`
	// Changes summarizes what an applied reload changed.
	Changes *Changes `json:"changes,omitempty"`
	// Listeners are the bound addresses after an applied reload, by
	// listener name.
	Listeners map[string]string `json:"listeners,omitempty"`
	// Duration is how long the reload took, from the trigger to the new
	// configuration serving (or the rejection).
	Duration string `json:"duration"`
}

// Changes are the names of what a reload added, removed and changed.
type Changes struct {
	ListenersAdded   []string `json:"listeners_added,omitempty"`
	ListenersRemoved []string `json:"listeners_removed,omitempty"`
	ListenersChanged []string `json:"listeners_changed,omitempty"`
	RoutesAdded      []string `json:"routes_added,omitempty"`
	RoutesRemoved    []string `json:"routes_removed,omitempty"`
}

// Options are what a Reloader needs besides the file and the proxy.
type Options struct {
	// Build builds a snapshot of cfg from prev (proxy.Build with the
	// process's build options). Required.
	Build func(cfg *config.Config, prev *proxy.Snapshot) (*proxy.Snapshot, error)
	// Load reads and validates the file. Default config.LoadContext.
	Load func(ctx context.Context, path string) (*config.Config, error)
	// SpoolOpen reports whether the spool is open; its keys cannot change
	// while it is. Default: never.
	SpoolOpen func() bool
	// Apply, if set, runs after the checks and before the swap, with the
	// configuration about to serve: the spool's per-route limits are set
	// this way. An error rejects the reload.
	Apply func(cfg *config.Config) error
	// Meter records sidecar_config_reloads_total{result} and
	// sidecar_config_last_reload_success. Optional.
	Meter metric.Meter
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Reloader applies reloads, one at a time.
type Reloader struct {
	path string
	srv  *proxy.Server
	log  *slog.Logger
	opts Options

	reloads     metric.Int64Counter
	lastSuccess metric.Int64Gauge
	applied     metric.MeasurementOption
	rejected    metric.MeasurementOption

	mu   sync.Mutex // one reload at a time
	last *Status    // guarded by mu; nil until the first reload
}

// New returns a Reloader of the file at path for srv.
func New(path string, srv *proxy.Server, logger *slog.Logger, opts Options) (*Reloader, error) {
	if opts.Build == nil {
		return nil, errors.New("reload: Options.Build is required")
	}
	if opts.Load == nil {
		opts.Load = config.LoadContext
	}
	if opts.SpoolOpen == nil {
		opts.SpoolOpen = func() bool { return false }
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Reloader{path: path, srv: srv, log: logger, opts: opts}
	if m := opts.Meter; m != nil {
		var err, e error
		r.reloads, e = m.Int64Counter("sidecar.config.reloads",
			metric.WithDescription("Configuration reloads by result: applied, or rejected (the running configuration kept serving)."))
		err = errors.Join(err, e)
		r.lastSuccess, e = m.Int64Gauge("sidecar.config.last_reload_success",
			metric.WithDescription("1 if the last reload was applied (or none was tried yet), 0 if it was rejected."))
		err = errors.Join(err, e)
		if err != nil {
			return nil, fmt.Errorf("reload metrics: %w", err)
		}
		r.applied = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", Applied)))
		r.rejected = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", Rejected)))
		r.lastSuccess.Record(context.Background(), 1)
	}
	return r, nil
}

// Last returns the last reload's status, or nil if none ran.
func (r *Reloader) Last() *Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return nil
	}
	st := *r.last
	return &st
}

// Reload reads the file and applies it, or rejects it and keeps the
// running configuration. It logs the result and records it for Last and
// the metrics.
func (r *Reloader) Reload(ctx context.Context, trigger string) Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.opts.Now()
	st := Status{Time: start.UTC(), Trigger: trigger, Result: Applied}
	changes, restart, err := r.apply(ctx)
	st.Duration = r.opts.Now().Sub(start).String()
	if err != nil {
		st.Result, st.Error, st.RestartNeeded = Rejected, err.Error(), restart
		r.log.Error("configuration reload rejected; the running configuration keeps serving",
			"trigger", trigger, "file", r.path, "error", err)
	} else {
		st.Changes = changes
		st.Listeners = map[string]string{}
		for name, a := range r.srv.Addrs() {
			st.Listeners[name] = a.String()
		}
		attrs := []any{"trigger", trigger, "file", r.path, "took", st.Duration, "listeners", r.listeners()}
		r.log.Info("configuration reloaded", append(attrs, changes.logAttrs()...)...)
	}
	if r.reloads != nil {
		ok := int64(1)
		opt := r.applied
		if err != nil {
			ok, opt = 0, r.rejected
		}
		r.reloads.Add(context.Background(), 1, opt)
		r.lastSuccess.Record(context.Background(), ok)
	}
	r.last = &st
	return st
}

// apply does the reload; restart lists the keys that need a restart when
// that is why it failed.
func (r *Reloader) apply(ctx context.Context) (*Changes, []string, error) {
	cur := r.srv.Snapshot()
	cfg, err := r.opts.Load(ctx, r.path)
	if err != nil {
		return nil, nil, err
	}
	if keys := config.RestartNeeded(cur.Config, cfg, r.opts.SpoolOpen()); len(keys) > 0 {
		return nil, keys, fmt.Errorf("restart needed: %s cannot change while the sidecar runs", strings.Join(keys, ", "))
	}
	next, err := r.opts.Build(cfg, cur)
	if err != nil {
		return nil, nil, err
	}
	if r.opts.Apply != nil {
		if err := r.opts.Apply(cfg); err != nil {
			next.Close(cur) // the pools it made: their health checkers and DNS resolvers stop
			return nil, nil, err
		}
	}
	if err := r.srv.Reload(next, cfg.ShutdownGrace.D()); err != nil {
		next.Close(cur)
		if r.opts.Apply != nil {
			r.opts.Apply(cur.Config) // put back what the running configuration had
		}
		next.Close(cur)
		return nil, nil, err
	}
	return diff(cur, next), nil, nil
}

// diff names what changed from a to b.
func diff(a, b *proxy.Snapshot) *Changes {
	c := &Changes{}
	la, lb := map[string]*proxy.Listener{}, map[string]*proxy.Listener{}
	for _, l := range a.Listeners {
		la[l.Name] = l
	}
	for _, l := range b.Listeners {
		lb[l.Name] = l
		switch old := la[l.Name]; {
		case old == nil:
			c.ListenersAdded = append(c.ListenersAdded, l.Name)
		case old.Address != l.Address || old.Protocol != l.Protocol:
			c.ListenersChanged = append(c.ListenersChanged, l.Name)
		}
	}
	for _, l := range a.Listeners {
		if lb[l.Name] == nil {
			c.ListenersRemoved = append(c.ListenersRemoved, l.Name)
		}
	}
	ra, rb := map[string]bool{}, map[string]bool{}
	for _, rt := range a.Routes {
		ra[rt.Name] = true
	}
	for _, rt := range b.Routes {
		rb[rt.Name] = true
		if !ra[rt.Name] {
			c.RoutesAdded = append(c.RoutesAdded, rt.Name)
		}
	}
	for _, rt := range a.Routes {
		if !rb[rt.Name] {
			c.RoutesRemoved = append(c.RoutesRemoved, rt.Name)
		}
	}
	return c
}

func (c *Changes) logAttrs() []any {
	var out []any
	add := func(k string, v []string) {
		if len(v) > 0 {
			out = append(out, k, strings.Join(v, ","))
		}
	}
	add("listeners_added", c.ListenersAdded)
	add("listeners_removed", c.ListenersRemoved)
	add("listeners_changed", c.ListenersChanged)
	add("routes_added", c.RoutesAdded)
	add("routes_removed", c.RoutesRemoved)
	return out
}

// listeners returns the bound listeners as "name=address,...", in file
// order, as the start-up line shows them.
func (r *Reloader) listeners() string {
	bound := r.srv.Addrs()
	var out []string
	for _, l := range r.srv.Snapshot().Listeners {
		if a := bound[l.Name]; a != nil {
			out = append(out, l.Name+"="+a.String())
		}
	}
	return strings.Join(out, ",")
}

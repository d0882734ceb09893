// Command sidecar is a local reliability proxy: it forwards an app's calls
// to its dependencies with timeouts, retries, circuit breaking and rate
// limits set per route in one YAML file.
//
// Usage:
//
//	sidecar run      -config sidecar.yaml   # the main job
//	sidecar validate -config sidecar.yaml   # exit 0, or print every error and exit 1
//	sidecar spool stats|list|show ID|replay ID|delete ID|purge [-dead] [-admin 127.0.0.1:9901]
//	sidecar version
//
// Exit codes: 0 success; 1 invalid configuration (also one that cannot
// be read and checked within config.LoadTimeout); 2 bad usage; 3 the
// sidecar could not start (also when SIGTERM or SIGINT comes before it
// serves, during "run" or "validate") or stopped on an error (also when
// the spool did not close within its bound on the way out: a disk that
// stalls). For "sidecar spool": 1 the admin API answered an error, 3 it
// could not be reached.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/admin"
	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/stdlog"
	"github.com/sidecar-proxy/sidecar/internal/watch"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/reload"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
	"github.com/sidecar-proxy/sidecar/telemetry"
)

// Exit codes a script can rely on.
const (
	exitOK        = 0
	exitConfig    = 1
	exitUsage     = 2
	exitFailure   = 3
	defaultConfig = "sidecar.yaml"
)

// Set at build time for releases:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD) -X main.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/sidecar
//
// Without them, "sidecar version" reads the commit and its time from the
// toolchain's VCS stamp.
var version, commit, date string

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, sigs))
}

const usage = `usage:
  sidecar run      -config FILE [-log-format text|json] [-log-level debug|info|warn|error]
                   [-watch=false]
  sidecar validate -config FILE
  sidecar spool    stats|list|show ID|replay ID|delete ID|purge [-dead]
                   [-admin 127.0.0.1:9901] [-route NAME] [-state pending|dead]
                   [-after ID] [-limit N] [-token-env SIDECAR_ADMIN_TOKEN]
                   (flags may also follow the subcommand and its ID)
  sidecar healthcheck [-admin 127.0.0.1:9901] [-ready] [-timeout 2s]
  sidecar version
`

func run(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "spool":
		return runSpool(args, stdout, stderr)
	case "healthcheck":
		return runHealthcheck(args, stdout, stderr)
	}
	fs := flag.NewFlagSet("sidecar "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	logFormat, logLevel, watchFile := new(string), new(string), new(bool)
	if cmd == "run" {
		fs.StringVar(logFormat, "log-format", "text", "log format: text or json")
		fs.StringVar(logLevel, "log-level", "info", "log level: debug, info, warn or error")
		fs.BoolVar(watchFile, "watch", true, "reload when the configuration file changes")
	}
	switch cmd {
	case "version", "-version", "--version":
		fmt.Fprint(stdout, readBuildInfo())
		return exitOK
	case "run", "validate":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "sidecar: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sidecar %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return exitUsage
	}
	var logger *slog.Logger
	var changes *watch.Watcher
	if cmd == "run" {
		var err error
		if logger, err = newLogger(stderr, *logFormat, *logLevel); err != nil {
			fmt.Fprintf(stderr, "sidecar run: %v\n", err)
			return exitUsage
		}
		// Watched from before the first read, so that no change is missed.
		if *watchFile {
			if changes, err = watch.New(*cfgPath, watch.DefaultDebounce, logger); err != nil {
				logger.Warn("cannot watch the configuration file: reload with SIGHUP or POST /v1/reload", "file", *cfgPath, "error", err)
			} else {
				defer changes.Close()
			}
		}
	}
	st := watchStartup(sigs)
	defer st.end()
	cfg, err := config.LoadContext(st.ctx, *cfgPath)
	if sig := st.interrupted(); sig != nil {
		fmt.Fprintf(stderr, "sidecar %s: stopped by a signal (%v) while loading %s\n", cmd, sig, *cfgPath)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	if cmd == "validate" {
		fmt.Fprintf(stdout, "%s: ok\n", *cfgPath)
		return exitOK
	}
	// net/http's client logs through the standard logger, at times with
	// an upstream's bytes: those lines go through slog too (stdlog).
	stdlog.Redirect(logger)
	return serve(*cfgPath, changes, cfg, logger, sigs, st)
}

// startup watches the signals while the sidecar starts: the first SIGINT
// or SIGTERM cancels ctx, the step in progress is given up at once, and
// the sidecar exits exitFailure (it could not start). SIGHUP is ignored,
// as it is once the sidecar serves.
type startup struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// stoppedBy is the cause of a startup's ctx ending on a signal.
type stoppedBy struct{ sig os.Signal }

func (e stoppedBy) Error() string { return "stopped by a signal (" + e.sig.String() + ")" }

func watchStartup(sigs <-chan os.Signal) *startup {
	ctx, cancel := context.WithCancelCause(context.Background())
	st := &startup{ctx: ctx, cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(st.done)
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					continue
				}
				cancel(stoppedBy{sig})
				return
			case <-st.stop:
				return
			}
		}
	}()
	return st
}

// interrupted returns the signal that stopped start-up, or nil.
func (st *startup) interrupted() os.Signal {
	var e stoppedBy
	if errors.As(context.Cause(st.ctx), &e) {
		return e.sig
	}
	return nil
}

// end stops watching, so that the serve loop has the signals to itself,
// and returns the signal that stopped start-up, if one did. It may be
// called more than once.
func (st *startup) end() os.Signal {
	st.once.Do(func() {
		close(st.stop)
		<-st.done
	})
	return st.interrupted()
}

// interruptible runs open and returns its result, or the start-up's
// cause as soon as a signal stops start-up; what open returns after that
// is closed. open is a step that may take long and cannot be cancelled,
// such as recovering a large file spool.
func interruptible[T io.Closer](st *startup, open func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := open()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-st.ctx.Done():
		go func() {
			if r := <-done; r.err == nil {
				r.v.Close()
			}
		}()
		var zero T
		return zero, context.Cause(st.ctx)
	}
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid -log-level %q", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid -log-format %q (want text or json)", format)
}

// serve starts the sidecar, runs it until a signal, then drains. A signal
// before it serves stops it at once (see startup).
func serve(cfgPath string, changes *watch.Watcher, cfg *config.Config, logger *slog.Logger, sigs <-chan os.Signal, st *startup) int {
	stopped := func(sig os.Signal) int {
		logger.Warn("signal received while starting: exiting", "signal", sig.String())
		return exitFailure
	}
	tel, err := telemetry.New(st.ctx, cfg.Telemetry)
	if err != nil {
		logger.Error("cannot start telemetry", "error", err)
		return exitFailure
	}
	// Runs after the admin server and the proxy have shut down: flushes
	// spans, unless a second signal asked to exit at once.
	flush := true
	defer func() {
		if flush {
			shutdownTelemetry(tel, logger)
		}
	}()
	ptel, err := proxy.TelemetryFrom(tel)
	if err != nil {
		logger.Error("cannot start telemetry", "error", err)
		return exitFailure
	}
	snap, err := proxy.Build(cfg, nil, logger, proxy.WithTelemetry(ptel))
	if err != nil {
		logger.Error("invalid configuration", "error", err)
		return exitConfig
	}
	if sig := st.interrupted(); sig != nil {
		return stopped(sig)
	}
	// The spools are closed on the way out, after the proxy has shut
	// down: on the drain's path within what is left of shutdown_grace
	// (below), on an early return within spoolCloseFloor.
	// A second signal leaves them, as kill -9 would: what was
	// acknowledged is stored, and the next start recovers the log.
	spools := &openSpools{logger: logger}
	closeSpools := true
	defer func() {
		if closeSpools {
			ctx, cancel := context.WithTimeout(context.Background(), spoolCloseFloor)
			defer cancel()
			spools.close(ctx)
		}
	}()
	var opts []proxy.Option
	if hasAsync(cfg) {
		where := spoolWhere(cfg)
		store, err := interruptible(st, func() (spool.Store, error) { return openStore(st.ctx, cfg, logger, ptel.Instruments) })
		if sig := st.interrupted(); sig != nil {
			if err == nil {
				store.Close()
			}
			return stopped(sig)
		}
		if err != nil {
			logger.Error("cannot open the spool", append(where, "error", err)...)
			return exitFailure
		}
		spools.add(store, where)
		opts = append(opts, proxy.WithSpool(store))
	}
	srv := proxy.NewServer(snap, logger, opts...)
	// applySpool runs in a reload before the swap: it opens the spool for
	// the first async route, or gives the open one the routes' limits.
	applySpool := func(cfg *config.Config) error {
		if srv.Spool() != nil {
			setSpoolRoutes(srv.Spool(), cfg, logger)
			return nil
		}
		if !hasAsync(cfg) {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		store, err := openStore(ctx, cfg, logger, ptel.Instruments)
		if err != nil {
			return fmt.Errorf("cannot open the spool for the first async route (%s): %w", fmt.Sprint(spoolWhere(cfg)...), err)
		}
		if err := srv.AttachSpool(store); err != nil {
			store.Close()
			return err
		}
		spools.add(store, spoolWhere(cfg))
		logger.Info("spool opened for the first async route", spoolWhere(cfg)...)
		return nil
	}
	if tel.MetricsOn() {
		reg, err := srv.RegisterMetrics(tel.Meter())
		if err != nil {
			logger.Error("cannot start telemetry", "error", err)
			return exitFailure
		}
		defer reg.Unregister()
	}
	// The token is read once, at start; only its hash is kept.
	token := ""
	if cfg.Admin.TokenEnv != "" {
		token = os.Getenv(cfg.Admin.TokenEnv)
	}
	reloader, err := reload.New(cfgPath, srv, logger, reload.Options{
		// A snapshot built from the running one keeps its telemetry.
		Build: func(cfg *config.Config, prev *proxy.Snapshot) (*proxy.Snapshot, error) {
			return proxy.Build(cfg, prev, logger)
		},
		SpoolOpen: func() bool { return srv.Spool() != nil },
		Apply:     applySpool,
		Meter:     tel.Meter(),
	})
	if err != nil {
		logger.Error("cannot start", "error", err)
		return exitFailure
	}
	adm := admin.New(srv, logger, admin.WithToken(token), admin.WithTelemetry(tel), admin.WithReloader(reloader))
	if err := adm.Listen(cfg.Admin.Address); err != nil {
		logger.Error("cannot bind the admin listener", "error", err)
		return exitFailure
	}
	if cfg.Admin.ProbeAddress != "" {
		if err := adm.ListenProbe(cfg.Admin.ProbeAddress); err != nil {
			adm.Shutdown(context.Background())
			logger.Error("cannot bind the probe listener", "error", err)
			return exitFailure
		}
	}
	if err := srv.Listen(); err != nil {
		logger.Error("cannot bind a listener", "error", err)
		return exitFailure
	}
	if sig := st.end(); sig != nil {
		return stopped(sig)
	}
	warnBeyondLoopback(logger, adm.TokenRequired(), cfg.Admin.TokenEnv, adm.Addr(), adm.ProbeAddr())
	adminDone := make(chan struct{})
	adm.Serve(func() { close(adminDone) })
	srv.Serve()
	adm.SetReady(true)
	var addrs []string
	bound := srv.Addrs()
	for _, l := range snap.Listeners {
		addrs = append(addrs, l.Name+"="+bound[l.Name].String())
	}
	attrs := []any{"version", buildVersion(), "listeners", strings.Join(addrs, ","), "admin", adm.Addr().String(), "admin_token_required", adm.TokenRequired()}
	if a := adm.ProbeAddr(); a != nil {
		attrs = append(attrs, "probe", a.String())
	}
	logger.Info("sidecar started", attrs...)

	var fileChanged <-chan struct{} // nil: not watched
	if changes != nil {
		fileChanged = changes.C()
	}
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reloader.Reload(context.Background(), reload.TriggerSignal)
				continue
			}
			cfg = srv.Snapshot().Config // the running one: shutdown_grace and shutdown_delay may have been reloaded
			logger.Info("shutting down", "signal", sig.String(), "grace", cfg.ShutdownGrace.D().String())
			break wait
		case <-fileChanged:
			reloader.Reload(context.Background(), reload.TriggerFile)
		}
	}
	adm.SetReady(false)
	deadline := time.Now().Add(cfg.ShutdownDelay.D() + cfg.ShutdownGrace.D())
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	drained := make(chan error, 1)
	go func() {
		select {
		case <-time.After(cfg.ShutdownDelay.D()):
		case <-ctx.Done():
		}
		drained <- srv.Shutdown(ctx)
	}()
	var closed chan error // the spools' close, once the drain is over
	for {
		select {
		case err := <-drained:
			adm.Shutdown(context.Background())
			<-adminDone
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				logger.Warn("shutdown grace ran out; remaining connections closed", "error", err)
			case err != nil:
				logger.Warn("shutdown", "error", err)
			}
			// The spool commits what is queued and syncs within what
			// is left of the grace, and at least spoolCloseFloor: a
			// disk that stalls does not keep the process from exiting
			// (docs/spool.md, "A disk that stalls").
			c := make(chan error, 1)
			closed = c
			go func() {
				ctx, cancel := spoolCloseContext(deadline)
				defer cancel()
				c <- spools.close(ctx)
			}()
		case err := <-closed:
			if err != nil { // logged by close, naming the spool
				logger.Error("stopped; the spool did not close")
				return exitFailure
			}
			logger.Info("stopped")
			return exitOK
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				continue
			}
			logger.Warn("second signal: exiting now", "signal", sig.String())
			flush, closeSpools = false, false
			return exitFailure
		}
	}
}

// shutdownTelemetry flushes the spans still batched, waiting 5 s at most.
func shutdownTelemetry(p *telemetry.Provider, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		logger.Warn("telemetry shutdown", "error", err)
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// buildInfo is what "sidecar version" prints: the version, the commit and
// the build date (from -ldflags -X, else from the Go toolchain's VCS
// stamp, else "unknown"), and the Go version.
type buildInfo struct {
	Version, Commit, Date, Go string
	Modified                  bool
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: buildVersion(), Commit: commit, Date: date, Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.time":
				if b.Date == "" {
					b.Date = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	if b.Date == "" {
		b.Date = "unknown"
	}
	return b
}

func (b buildInfo) String() string {
	commit := b.Commit
	if b.Modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("sidecar %s\ncommit  %s\nbuilt   %s\ngo      %s\n", b.Version, commit, b.Date, b.Go)
}

// hasAsync reports whether any route is async, so that the spool is needed.
func hasAsync(cfg *config.Config) bool {
	for _, l := range cfg.Listeners {
		for _, r := range l.Routes {
			if r.Async != nil {
				return true
			}
		}
	}
	return false
}

// zeroAhead is the file spool's FileOptions.ZeroAhead with fsync: always.
var zeroAhead int64 = 1 << 20

// openSpool opens the file spool that cfg describes, with the async
// routes' own limits.
// ins, when not nil, times each fsync.
func openSpool(cfg *config.Config, logger *slog.Logger, ins *telemetry.Instruments) (*spool.FileStore, error) {
	sc := cfg.Spool
	opts := spool.FileOptions{
		MaxBytes:    int64(sc.MaxBytes),
		MaxMessages: sc.MaxMessages,
		Interval:    sc.FsyncInterval.D(),
		Logger:      logger,
	}
	if ins != nil {
		opts.OnFsync = ins.Fsync
	}
	if sc.Fsync == "interval" {
		opts.Fsync = spool.FsyncInterval
	} else {
		// Each batch's fdatasync then writes its data alone, not the
		// file's new size as well (docs/spool.md, "How the writer waits
		// for the disk").
		opts.ZeroAhead = zeroAhead
	}
	opts.Routes = fileRouteLimits(cfg)
	return spool.OpenFile(sc.Dir, opts)
}

// fileRouteLimits returns the file spool's per-route settings: the async
// routes' max_messages, max_bytes and dedupe_window, and their policy's
// timeout as the bound of an enqueue's wait for the disk (docs/spool.md,
// "A disk that stalls").
func fileRouteLimits(cfg *config.Config) map[string]spool.Limits {
	routes := map[string]spool.Limits{}
	for _, l := range cfg.Listeners {
		for _, r := range l.Routes {
			if a := r.Async; a != nil {
				pol, _ := cfg.RoutePolicy(r)
				routes[r.Name] = spool.Limits{MaxMessages: a.MaxMessages, MaxBytes: int64(a.MaxBytes), DedupeWindow: a.DedupeWindow.D(), AppendWait: pol.Timeout.D()}
			}
		}
	}
	return routes
}

// setSpoolRoutes gives an open spool cfg's per-route options.
func setSpoolRoutes(store spool.Store, cfg *config.Config, logger *slog.Logger) {
	switch st := store.(type) {
	case *spool.FileStore:
		st.SetRouteLimits(fileRouteLimits(cfg))
	case *jsstore.Store:
		st.SetRoutes(jetStreamRoutes(cfg, logger))
	}
}

// spoolWhere names the configured spool, for log lines.
func spoolWhere(cfg *config.Config) []any {
	if cfg.Spool.Backend == "jetstream" {
		return []any{"backend", cfg.Spool.Backend, "stream", cfg.Spool.JetStream.Stream}
	}
	return []any{"backend", cfg.Spool.Backend, "dir", cfg.Spool.Dir}
}

// openStore opens the spool that cfg configures; ins, when not nil, times
// the file spool's fsyncs.
func openStore(ctx context.Context, cfg *config.Config, logger *slog.Logger, ins *telemetry.Instruments) (spool.Store, error) {
	if cfg.Spool.Backend == "jetstream" {
		js, err := openJetStream(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		return js, nil
	}
	fs, err := openSpool(cfg, logger, ins)
	if err != nil {
		return nil, err // not a nil *FileStore in a non-nil Store
	}
	return fs, nil
}

// warnBeyondLoopback logs a warning for the admin API's listeners that
// are bound beyond loopback while no admin token is set
// (docs/operations.md, "Probe listener and sidecar healthcheck"). The
// admin listener itself must be a loopback address (config validation),
// but "localhost" is resolved when it is bound; the probe listener
// (admin.probe_address) may bind anything, and serves /healthz, /readyz
// and /metrics to whoever reaches it. probe is nil without one.
func warnBeyondLoopback(logger *slog.Logger, tokenSet bool, tokenEnv string, adminAddr, probe net.Addr) {
	if tokenSet {
		return
	}
	if !loopbackAddr(adminAddr) {
		logger.Warn("the admin API listens beyond loopback and no admin token is set: anyone who reaches it can change the sidecar",
			"admin", adminAddr.String(), "token_env", tokenEnv)
	}
	if probe != nil && !loopbackAddr(probe) {
		logger.Warn("the probe listener listens beyond loopback and no admin token is set: anyone who reaches it reads /healthz, /readyz and /metrics",
			"probe", probe.String(), "token_env", tokenEnv)
	}
}

// loopbackAddr reports whether a is a TCP address on the loopback
// interface; an unspecified address (0.0.0.0, ::) is every interface.
func loopbackAddr(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

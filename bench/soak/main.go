// Command soak is bench/soak.sh's orchestrator: a bounded soak of the
// sidecar under mixed traffic with faults injected on a schedule, and a
// check at the end that nothing acknowledged was lost, no request hung and
// the sidecar's resources came back to their baseline. See bench/README.md
// ("Soak with faults") for what it does and what each figure means.
//
//	soak -sidecar BIN -duration 10m -out DIR -tmp DIR
//
// Everything runs on 127.0.0.1: the upstreams (an HTTP server, the grpc-go
// interop TestService, and the async routes' sink, which records every
// delivery) and toxiproxy live in this process; the sidecar is the real
// binary, a child process with a generated configuration, so that it can
// be SIGKILLed. It writes summary.md and summary.json to -out, prints the
// summary, and exits 0 when every check passed, 1 when one failed, 2 when
// the soak could not run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// options are the command line's settings.
type options struct {
	sidecarBin  string
	duration    time.Duration
	out         string
	tmp         string
	portBase    int
	httpRate    float64
	grpcRate    float64
	asyncRate   float64
	tmpfsSize   string
	noTmpfs     bool
	drainMax    time.Duration
	grace       time.Duration
	sinkFailPct int
	commit      string
	fdSlack     int
	rssSlackMiB int64
	rssSlackPct int64
}

func main() {
	var o options
	flag.StringVar(&o.sidecarBin, "sidecar", "", "the sidecar binary (required)")
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load and the faults run (at least 60s)")
	flag.StringVar(&o.out, "out", "", "directory for summary.md, summary.json, sidecar.log (required)")
	flag.StringVar(&o.tmp, "tmp", "", "directory for the spool, its tmpfs and the config (required)")
	flag.IntVar(&o.portBase, "port-base", 19500, "ports: +0 app HTTP, +1 app gRPC, +2 admin, +10..12 toxiproxy, +20..22 upstreams")
	flag.Float64Var(&o.httpRate, "http-rate", 100, "HTTP requests/s (60 % GET, 40 % POST)")
	flag.Float64Var(&o.grpcRate, "grpc-rate", 50, "gRPC unary calls/s")
	flag.Float64Var(&o.asyncRate, "async-rate", 60, "async POSTs/s (2/3 when: always, 1/3 when: upstream_down)")
	flag.StringVar(&o.tmpfsSize, "tmpfs-size", "128m", "size of the spool's tmpfs (the disk-full fault fills it)")
	flag.BoolVar(&o.noTmpfs, "no-tmpfs", false, "keep the spool on the -tmp disk and skip the disk-full fault")
	flag.DurationVar(&o.drainMax, "drain-max", 90*time.Second, "bound on the spool's drain after the load stops")
	flag.DurationVar(&o.grace, "grace", time.Second, "added to a route's timeout to make a request's deadline")
	flag.IntVar(&o.sinkFailPct, "sink-fail-pct", 2, "percent of the sink's requests answered 503 (deliveries are retried)")
	flag.IntVar(&o.fdSlack, "fd-slack", 8, "file descriptors the end may exceed the baseline by")
	flag.Int64Var(&o.rssSlackMiB, "rss-slack-mib", 48, "MiB the end RSS may exceed the baseline by, plus -rss-slack-pct")
	flag.Int64Var(&o.rssSlackPct, "rss-slack-pct", 50, "percent of the baseline RSS the end may exceed it by, plus -rss-slack-mib")
	flag.StringVar(&o.commit, "commit", "", "the source's commit, for the summary")
	flag.Parse()
	if o.sidecarBin == "" || o.out == "" || o.tmp == "" {
		fmt.Fprintln(os.Stderr, "soak: -sidecar, -out and -tmp are required")
		os.Exit(2)
	}
	if o.duration < time.Minute {
		fmt.Fprintln(os.Stderr, "soak: -duration must be at least 60s, so that every fault fits")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, o))
}

// logf prints a progress line on stderr, with the time into the run.
func (s *soak) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[soak %6.1fs] %s\n", s.rec.since().Seconds(), fmt.Sprintf(format, args...))
}

// soak is one run.
type soak struct {
	o    options
	rec  *recorder
	sc   *sidecar
	ups  []*upstream
	sink *sink
	px   *proxies
	disk *diskFS
	load *load
	sum  *summary
	// stalls are the soak process's own stalls; access the sidecar's
	// access log lines by path (see lateness.go).
	stalls  *stallWatch
	access  map[string]accessLine
	accessN int
	fmu     sync.Mutex // guards sum.Faults and sum.Reloads, written by two goroutines
	webTO   [2]time.Duration
}

func addr(base, off int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(base+off)) }

func run(ctx context.Context, o options) int {
	s := &soak{o: o, rec: &recorder{start: time.Now()}, sum: newSummary(o), stalls: &stallWatch{threshold: 100 * time.Millisecond}}
	s.webTO = [2]time.Duration{2 * time.Second, 2500 * time.Millisecond}
	err := s.setup()
	defer s.teardown()
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		return 2
	}
	if err = s.timeline(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		s.sum.Aborted = err.Error()
	}
	if s.access, s.accessN, err = splitLog(s.sc.logPath); err != nil {
		fmt.Fprintf(os.Stderr, "soak: reading the sidecar's access log: %v\n", err)
	}
	s.analyse()
	if err := s.sum.write(o.out); err != nil {
		fmt.Fprintf(os.Stderr, "soak: writing the summary: %v\n", err)
		return 2
	}
	fmt.Print(s.sum.markdown())
	if s.sum.Aborted != "" {
		return 2
	}
	if !s.sum.Pass {
		return 1
	}
	return 0
}

// setup starts the upstreams, the proxies, the spool's tmpfs and the
// sidecar.
func (s *soak) setup() error {
	o := s.o
	for _, d := range []string{o.out, o.tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, off := range []int{0, 1, 2, 10, 11, 12, 20, 21, 22} {
		ln, err := net.Listen("tcp", addr(o.portBase, off))
		if err != nil {
			return fmt.Errorf("port %d is taken (set -port-base / PORT_BASE): %w", o.portBase+off, err)
		}
		ln.Close()
	}
	s.sink = newSink(o.sinkFailPct)
	s.ups = []*upstream{
		{name: "web", addr: addr(o.portBase, 20), handler: http.HandlerFunc(webHandler)},
		{name: "rpc", addr: addr(o.portBase, 21)},
		{name: "sink", addr: addr(o.portBase, 22), handler: s.sink},
	}
	for _, u := range s.ups {
		if err := u.start(); err != nil {
			return err
		}
	}
	px, err := newProxies([]string{"web", "rpc", "sink"},
		[]string{addr(o.portBase, 10), addr(o.portBase, 11), addr(o.portBase, 12)},
		[]string{addr(o.portBase, 20), addr(o.portBase, 21), addr(o.portBase, 22)})
	if err != nil {
		return err
	}
	s.px = px

	spoolDir := filepath.Join(o.tmp, "spool")
	if o.noTmpfs {
		s.sum.DiskFull.Skipped = "-no-tmpfs: the spool is on the temp dir's disk"
	} else if d, err := mountTmpfs(filepath.Join(o.tmp, "spoolfs"), o.tmpfsSize); err != nil {
		s.sum.DiskFull.Skipped = err.Error()
	} else {
		s.disk = d
		spoolDir = filepath.Join(d.dir, "spool")
		s.sum.DiskFull.Tmpfs = o.tmpfsSize
	}

	if v, err := exec.Command(o.sidecarBin, "version").Output(); err == nil {
		s.sum.Version = strings.TrimSpace(string(v))
	}
	if o.commit != "" {
		s.sum.Version += "\nsource " + o.commit
	}
	s.sc = &sidecar{
		bin:     o.sidecarBin,
		cfgPath: filepath.Join(o.tmp, "sidecar.yaml"),
		logPath: filepath.Join(o.out, "sidecar.log"),
		cfg: sidecarConfig{
			Admin: addr(o.portBase, 2), App: addr(o.portBase, 0), GRPC: addr(o.portBase, 1),
			WebProxy: addr(o.portBase, 10), RPCProxy: addr(o.portBase, 11), SinkProxy: addr(o.portBase, 12),
			SpoolDir:   spoolDir,
			WebTimeout: s.webTO[0], RPCTimeout: 2 * time.Second, SinkTimeout: 2 * time.Second,
		},
	}
	if err := s.sc.writeConfig(); err != nil {
		return err
	}
	if err := s.sc.start(); err != nil {
		return err
	}
	deadlines := map[string]time.Duration{
		kindGet:      max(s.webTO[0], s.webTO[1]) + o.grace,
		kindPost:     max(s.webTO[0], s.webTO[1]) + o.grace,
		kindGRPC:     s.sc.cfg.RPCTimeout + o.grace,
		kindAlways:   s.sc.cfg.SinkTimeout + o.grace,
		kindFallback: s.sc.cfg.SinkTimeout + o.grace,
	}
	s.sum.Deadlines = map[string]string{}
	for k, d := range deadlines {
		s.sum.Deadlines[k] = d.String()
	}
	s.load, err = newLoad(s.rec, s.sc.cfg.App, s.sc.cfg.GRPC, deadlines, 5*time.Second)
	return err
}

// teardown stops whatever setup started, in reverse order; it is safe after
// a partial setup.
func (s *soak) teardown() {
	if s.sc != nil && s.sc.alive() {
		s.sc.kill()
	}
	if s.px != nil {
		s.px.stop()
	}
	for _, u := range s.ups {
		u.stop()
	}
	if s.disk != nil {
		_ = s.disk.free()
		if err := s.disk.unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "soak: unmounting %s: %v\n", s.disk.dir, err)
		}
	}
}

// errInterrupted ends the timeline on SIGINT or SIGTERM.
var errInterrupted = errors.New("interrupted")

// sleepUntil waits until offset t into the run, or for ctx.
func (s *soak) sleepUntil(ctx context.Context, t time.Duration) error {
	d := t - s.rec.since()
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return errInterrupted
	}
}

// schedule is the fault plan, scaled to the duration D: the kill early (so
// that the process measured at the end has lived through every other
// fault), then the faults of faultCycle one after another, each for
// window with gap between, until cooldown before the end; reloads every
// reloadEvery meanwhile.
type schedule struct {
	killAt, downFor, warm  time.Duration
	sinkDown               time.Duration
	window, gap, cooldown  time.Duration
	reloadEvery, resumeMax time.Duration
}

func clampDur(d, lo, hi time.Duration) time.Duration { return min(max(d, lo), hi) }

func newSchedule(d time.Duration) schedule {
	return schedule{
		killAt:    clampDur(d/10, 5*time.Second, time.Minute),
		downFor:   time.Second,
		sinkDown:  2 * time.Second,
		warm:      3 * time.Second,
		window:    clampDur(d/15, 4*time.Second, 15*time.Second),
		gap:       clampDur(d/30, 2*time.Second, 15*time.Second),
		cooldown:  clampDur(d/10, 5*time.Second, 30*time.Second),
		resumeMax: 35 * time.Second, // the spool's reopen back-off tops out at 30 s (docs/spool.md)
	}
}

// faultCycle is the order the timed faults come in.
var faultCycle = []string{"latency", "upstream_restart", "reset_peer", "disk_full", "timeout"}

// timeline runs the load and the faults, then stops the load, lets the
// spool drain and measures the sidecar at rest.
func (s *soak) timeline(ctx context.Context) error {
	o, sch := s.o, newSchedule(s.o.duration)
	s.sum.Schedule = sch.describe()
	s.logf("load: %.0f HTTP/s, %.0f gRPC/s, %.0f async/s for %v; sidecar pid %d", o.httpRate, o.grpcRate, o.asyncRate, o.duration, s.sc.pid())
	s.load.run(o.httpRate, o.grpcRate, o.asyncRate)
	go s.sample(ctx)
	go s.stalls.run(s.rec, s.load.stop)

	// 1. SIGKILL and restart on the same spool.
	if err := s.sleepUntil(ctx, sch.killAt-sch.sinkDown); err != nil {
		return err
	}
	if err := s.killRestart(ctx, sch.sinkDown, sch.downFor); err != nil {
		return err
	}

	// 2. Baseline of the restarted process at rest, after a warm-up.
	if err := s.sleepUntil(ctx, s.rec.since()+sch.warm); err != nil {
		return err
	}
	base, err := s.atRest("baseline", nil)
	if err != nil {
		return err
	}
	s.sum.Resources.Baseline = base

	// 3. Timed faults, and reloads alongside.
	faultStart, faultEnd := s.rec.since(), o.duration-sch.cooldown
	sch.reloadEvery = min(time.Minute, (faultEnd-faultStart)/2).Round(100 * time.Millisecond)
	s.sum.Schedule.ReloadEvery = sch.reloadEvery.String()
	reloadsDone := make(chan struct{})
	rctx, stopReloads := context.WithCancel(ctx)
	go func() {
		defer close(reloadsDone)
		s.reloads(rctx, faultStart, faultEnd, sch.reloadEvery)
	}()
	ferr := s.faults(ctx, sch, faultStart, faultEnd)
	stopReloads()
	<-reloadsDone
	if ferr != nil {
		return ferr
	}

	// 4. Cool-down with the load on, then stop it.
	if err := s.sleepUntil(ctx, o.duration); err != nil {
		return err
	}
	s.logf("load stops")
	s.load.finish()
	s.sum.LoadStopped = secs(s.rec.since())

	// 5. Drain, then the end figures at rest.
	drainStart := time.Now()
	var st spoolState
	drained := poll.Within(o.drainMax, func() bool {
		var err error
		st, err = getSpool(s.sc.cfg.Admin)
		return err == nil && st.Total.Depth == 0 && st.Total.Dead == 0
	})
	s.sum.Async.DrainSeconds = secs(time.Since(drainStart))
	s.sum.Async.Drained = drained
	s.sum.Async.EndDepth, s.sum.Async.EndDead, s.sum.Async.EndSegments = st.Total.Depth, st.Total.Dead, st.Segments
	s.logf("spool drained: %v in %.1fs (depth %d, dead %d)", drained, s.sum.Async.DrainSeconds, st.Total.Depth, st.Total.Dead)
	end, err := s.atRest("end", &base)
	if err != nil {
		return err
	}
	s.sum.Resources.End = end

	// 6. A clean stop.
	if err := s.sc.stop(20 * time.Second); err != nil {
		s.sum.CleanStop = "exit: " + err.Error()
	} else {
		s.sum.CleanStop = "exit 0"
	}
	return nil
}

// killRestart SIGKILLs the sidecar under load with messages waiting in
// its spool: the sink has been down for sinkDown. The sidecar stays down
// for down, then starts again on the same spool, and the sink comes back.
func (s *soak) killRestart(ctx context.Context, sinkDown, down time.Duration) error {
	f := faultRec{Kind: "sigkill_restart", Start: secs(s.rec.since())}
	sinkUp := s.ups[2]
	sinkUp.stop()
	if err := s.sleepUntil(ctx, s.rec.since()+sinkDown); err != nil {
		return err
	}
	pre, _ := getSpool(s.sc.cfg.Admin)
	s.fmu.Lock() // the sampler reads s.sc
	pid := s.sc.pid()
	s.sc.kill()
	killed := s.rec.since()
	s.logf("sidecar pid %d SIGKILLed (spool depth about %d)", pid, pre.Total.Depth)
	time.Sleep(down) // the sidecar stays down this long: the schedule's choice
	err := s.sc.start()
	s.fmu.Unlock()
	if err != nil {
		return err
	}
	st, serr := getSpool(s.sc.cfg.Admin)
	f.End = secs(s.rec.since())
	if err := sinkUp.start(); err != nil {
		return err
	}
	f.Detail = fmt.Sprintf("sink down from %.1fs; pid %d SIGKILLed at %.1fs with about %d messages pending; pid %d ready %.2fs later; sink up again", f.Start, pid, secs(killed), pre.Total.Depth, s.sc.pid(), f.End-secs(killed))
	if serr == nil {
		f.Detail += fmt.Sprintf("; spool on restart: depth %d, dead %d, torn tail %v, corrupt records %d", st.Total.Depth, st.Total.Dead, st.TornTail, st.CorruptRecords)
		s.sum.Restart = &st
	}
	s.logf("sidecar restarted: %s", f.Detail)
	s.addFault(f)
	return nil
}

// atRest pauses the load (or finds it stopped), closes the clients' idle
// connections, and waits for the sidecar's descriptors to settle: its idle
// upstream connections close after the upstreams' idle_conn_timeout (2s).
// With ref set it waits (up to 20 s) for the descriptors to come back to
// ref's count plus the slack. It reads the figures, then resumes the load.
func (s *soak) atRest(what string, ref *resources) (resources, error) {
	if what == "baseline" {
		s.load.pause()
		defer func() {
			if err := s.load.resume(); err != nil {
				s.logf("gRPC client: %v", err)
			}
		}()
	}
	pid := s.sc.pid()
	// The upstream pools' idle connections close after idle_conn_timeout
	// (2s in the soak's config): no event says so, so wait that long, then
	// read every half second until two readings agree (and, at the end,
	// the counts are back within the slack), for 20 s at most. Goroutines
	// settle too: the HTTP/2 server keeps an idle handler goroutine for up
	// to 10 s (docs/design.md, "HTTP/2 connections").
	time.Sleep(3 * time.Second)
	var ps procStats
	prev, settled, gs := -1, false, -1
	for i := 0; i < 34 && !settled; i++ {
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		var err error
		if ps, err = readProc(pid); err != nil {
			return resources{}, fmt.Errorf("reading /proc/%d: %w", pid, err)
		}
		gs = -1
		if n, ok := goGoroutines(s.sc.cfg.Admin); ok {
			gs = n
		}
		settled = ps.FDs == prev && (ref == nil || ps.FDs <= ref.FDs+s.o.fdSlack) &&
			(ref == nil || gs < 0 || ref.Goroutines < 0 || gs <= ref.Goroutines+goroutineSlack)
		prev = ps.FDs
	}
	r := resources{PID: pid, At: secs(s.rec.since()), FDs: ps.FDs, RSSMiB: float64(ps.RSSKiB) / 1024, Threads: ps.Threads, Settled: settled, Goroutines: gs}
	s.logf("%s at rest: pid %d, %d fds, %.1f MiB RSS, %d threads (settled %v)", what, pid, r.FDs, r.RSSMiB, r.Threads, settled)
	return r, nil
}

// sample records the sidecar's peak descriptors and RSS every 2 s until
// ctx ends or the load stops.
func (s *soak) sample(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.load.stop:
			return
		case <-t.C:
		}
		s.fmu.Lock()
		sc := s.sc
		if sc.alive() {
			if ps, err := readProc(sc.pid()); err == nil {
				s.sum.Resources.PeakFDs = max(s.sum.Resources.PeakFDs, ps.FDs)
				s.sum.Resources.PeakRSSMiB = max(s.sum.Resources.PeakRSSMiB, float64(ps.RSSKiB)/1024)
				s.sum.Resources.PeakThreads = max(s.sum.Resources.PeakThreads, ps.Threads)
			}
		}
		s.fmu.Unlock()
	}
}

func (s *soak) addFault(f faultRec) {
	s.fmu.Lock()
	s.sum.Faults = append(s.sum.Faults, f)
	s.fmu.Unlock()
}

// faults runs faultCycle over and over between start and end.
func (s *soak) faults(ctx context.Context, sch schedule, start, end time.Duration) error {
	t := start
	for i := 0; t+sch.window <= end; i++ {
		kind := faultCycle[i%len(faultCycle)]
		if err := s.sleepUntil(ctx, t); err != nil {
			return err
		}
		f, err := s.fault(ctx, kind, sch.window)
		s.addFault(f)
		s.logf("fault %s: %s", kind, f.Detail)
		if err != nil {
			return err
		}
		t = s.rec.since() + sch.gap
	}
	return nil
}

// toxics are the toxiproxy toxics of the timed faults, on every proxy and
// on the upstream's answers (downstream), so that an upstream may have
// done the work whose answer is lost: the case the idempotency key is for.
var toxics = map[string]string{
	"latency":    `{"type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":400,"jitter":300}}`,
	"reset_peer": `{"type":"reset_peer","stream":"downstream","toxicity":0.5,"attributes":{"timeout":0}}`,
	"timeout":    `{"type":"timeout","stream":"downstream","toxicity":0.5,"attributes":{"timeout":0}}`,
}

// fault injects one fault for window and undoes it. An error is returned
// only when the soak cannot go on.
func (s *soak) fault(ctx context.Context, kind string, window time.Duration) (faultRec, error) {
	f := faultRec{Kind: kind, Start: secs(s.rec.since())}
	hold := func() error { return s.sleepUntil(ctx, s.rec.since()+window) }
	var err error
	switch kind {
	case "latency", "reset_peer", "timeout":
		if err = s.px.add(kind, toxics[kind]); err != nil {
			f.Detail = err.Error()
			return f, err
		}
		f.Detail = "toxiproxy " + toxics[kind] + " on web, rpc, sink"
		err = hold()
		if rerr := s.px.remove(kind); rerr != nil && err == nil {
			err = rerr
		}
	case "upstream_restart":
		for _, u := range s.ups {
			u.stop()
		}
		f.Detail = fmt.Sprintf("web, rpc and sink servers stopped, restarted on the same ports after %v", window)
		err = hold()
		for _, u := range s.ups {
			if serr := u.start(); serr != nil && err == nil {
				err = serr
			}
		}
	case "disk_full":
		if s.disk == nil {
			f.Detail = "skipped: " + s.sum.DiskFull.Skipped
			return f, nil
		}
		n, ferr := s.disk.fill()
		full := s.rec.since()
		if ferr != nil {
			f.Detail = "filling: " + ferr.Error()
			_ = s.disk.free()
			return f, ferr
		}
		// The spool still has room on the full disk: the zeros it
		// writes ahead of its records (1 MiB). Use it up with 64 KiB
		// messages, so that the window sees the refusals.
		burst := 0
		for range 3 {
			burst++
			if s.load.asyncBurst(ctx, 24, 64<<10) {
				break
			}
			if _, ferr := s.disk.fill(); ferr != nil { // the room its reopen freed
				break
			}
		}
		// Keep it full: the spool frees room when it deletes a settled
		// segment (after its reopen, say); take that room back every
		// 200 ms until the window ends.
		topUps, topped := 0, int64(0)
		tick := time.NewTicker(200 * time.Millisecond)
		until := time.NewTimer(window)
	hold:
		for {
			select {
			case <-ctx.Done():
				err = errInterrupted
				break hold
			case <-until.C:
				break hold
			case <-tick.C:
				m, ferr := s.disk.fill()
				if ferr != nil {
					err = ferr
					break hold
				}
				if m > 0 {
					topUps++
					topped += m
				}
			}
		}
		tick.Stop()
		until.Stop()
		free := s.rec.since()
		if ferr := s.disk.free(); ferr != nil && err == nil {
			err = ferr
		}
		f.Detail = fmt.Sprintf("spool tmpfs (%s) filled with %.1f MiB at %.1fs, %d bursts of 64 KiB async messages, kept full (%d top-ups, %.1f MiB: room the spool freed), freed at %.1fs", s.o.tmpfsSize, float64(n)/(1<<20), secs(full), burst, topUps, float64(topped)/(1<<20), secs(free))
		s.fmu.Lock()
		s.sum.DiskFull.Windows = append(s.sum.DiskFull.Windows, window2{Full: secs(full), Free: secs(free)})
		s.fmu.Unlock()
	}
	f.End = secs(s.rec.since())
	return f, err
}

// reloads edits the web policy's timeout and reloads every `every`,
// rotating the trigger (POST /v1/reload, SIGHUP, the file watch), and
// checks in GET /v1/config that it applied.
func (s *soak) reloads(ctx context.Context, start, end, every time.Duration) {
	triggers := []string{"api", "signal", "file"}
	for i := 0; ; i++ {
		at := start + every/2 + time.Duration(i)*every
		if at > end {
			return
		}
		if s.sleepUntil(ctx, at) != nil {
			return
		}
		s.fmu.Lock()
		r := s.reload(triggers[i%len(triggers)], s.webTO[(i+1)%2])
		s.sum.Reloads = append(s.sum.Reloads, r)
		s.fmu.Unlock()
		s.logf("reload by %s: web timeout %s: %s", r.Trigger, r.WebTimeout, r.Result)
	}
}

// reload runs one reload; called with s.fmu held (it reads s.sc).
func (s *soak) reload(trigger string, timeout time.Duration) reloadRec {
	r := reloadRec{At: secs(s.rec.since()), Trigger: trigger, WebTimeout: timeout.String()}
	s.sc.cfg.WebTimeout = timeout
	if err := s.sc.writeConfig(); err != nil {
		r.Result = "writing the file: " + err.Error()
		return r
	}
	start := time.Now()
	switch trigger {
	case "api":
		code, body, err := adminReload(s.sc.cfg.Admin)
		if err != nil || code != 200 {
			r.Result = fmt.Sprintf("POST /v1/reload = %d %s %v", code, body, err)
			return r
		}
	case "signal":
		if err := s.sc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			r.Result = "SIGHUP: " + err.Error()
			return r
		}
	}
	var c appliedConfig
	applied := poll.Within(10*time.Second, func() bool {
		var err error
		c, err = getConfig(s.sc.cfg.Admin)
		if err != nil || c.LastReload == nil || c.LastReload.Result != "applied" {
			return false
		}
		d, err := time.ParseDuration(c.Policies["web"].Timeout)
		return err == nil && d == timeout
	})
	r.Seconds = secs(time.Since(start))
	switch {
	case applied:
		r.Result = "applied"
		r.Applied = true
	case c.LastReload != nil:
		r.Result = fmt.Sprintf("not applied within 10s: web timeout %s, last_reload %s %s", c.Policies["web"].Timeout, c.LastReload.Result, c.LastReload.Error)
	default:
		r.Result = "not applied within 10s: no last_reload"
	}
	return r
}

func secs(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

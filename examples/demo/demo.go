package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sidecar-proxy/sidecar/proxy"
)

// options are the demo's flags.
type options struct {
	fast    bool // shorter waits: for the test
	verbose bool // print the configuration
	keep    bool // keep the temporary directory (config and spool)
}

// run runs the demo, narrating to w, and returns an error if a phase did
// not go as expected (or the demo could not run at all).
func run(ctx context.Context, w io.Writer, fast bool) error {
	return runDemo(ctx, w, options{fast: fast})
}

// timing is what -fast changes.
type timing struct {
	openFor time.Duration // the breaker's open_for
	pause   time.Duration // between phases, to follow along
	poll    time.Duration // between the app's GETs while the upstream returns
}

func timingFor(fast bool) timing {
	if fast {
		return timing{openFor: time.Second, poll: 50 * time.Millisecond}
	}
	return timing{openFor: 2 * time.Second, pause: time.Second, poll: 200 * time.Millisecond}
}

// demo is one run: the upstream, the sidecar, the app's HTTP client and
// what the narration has found wrong so far.
type demo struct {
	w      io.Writer
	opts   options
	timing timing
	start  time.Time

	up  *upstream
	sc  *sidecar
	adm *adminClient
	app *http.Client

	endpoint string    // the upstream's endpoint URL, as the sidecar names it
	order    int       // the last /orders/N the app asked for
	logs     []logLine // what the sidecar logged so far
	failures []string

	// What the phases found, for the summary.
	blips, blipsSeen                     int64 // 503s the upstream sent in phase 2; those the app saw
	opened                               bool
	failedFast                           int
	closed                               bool
	closedAfter                          time.Duration
	spooled                              []spooledEvent
	delivered, deliveredWithKey, dupKeys int
	depth                                int64
}

// spooledEvent is a POST /events the sidecar answered 202.
type spooledEvent struct {
	id, key, body string
}

func runDemo(ctx context.Context, w io.Writer, opts options) (err error) {
	d := &demo{w: w, opts: opts, timing: timingFor(opts.fast), start: time.Now()}
	dir, err := os.MkdirTemp("", "sidecar-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if opts.keep {
			fmt.Fprintf(w, "\nKept %s (sidecar.yaml and the spool).\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	d.up = &upstream{}
	if err := d.up.start(); err != nil {
		return err
	}
	defer d.up.close()
	d.endpoint = "http://" + d.up.addr

	if d.sc, err = startSidecar(ctx, dir, d.up.addr, d.timing.openFor, d.start); err != nil {
		return fmt.Errorf("starting the sidecar: %w", err)
	}
	defer func() {
		if cerr := d.sc.close(); cerr != nil && err == nil {
			err = fmt.Errorf("stopping the sidecar: %w", cerr)
		}
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	d.app = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	d.adm = &adminClient{base: d.sc.admin, hc: &http.Client{Transport: tr, Timeout: 5 * time.Second}}

	d.intro(dir)
	for i, phase := range []func(context.Context) error{d.healthy, d.blipping, d.down, d.back} {
		if i > 0 {
			if err := sleep(ctx, d.timing.pause); err != nil {
				return err
			}
		}
		if err := phase(ctx); err != nil {
			return err
		}
	}
	return d.summary()
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.w, format, args...) }

// expect records a failed expectation and says so at once.
func (d *demo) expect(ok bool, format string, args ...any) bool {
	if !ok {
		msg := fmt.Sprintf(format, args...)
		d.failures = append(d.failures, msg)
		d.printf("  !! UNEXPECTED: %s\n", msg)
	}
	return ok
}

func (d *demo) since() time.Duration { return time.Since(d.start) }

func (d *demo) heading(n int, title string) {
	line := fmt.Sprintf("── %d. %s ", n, title)
	d.printf("\n%s%s t=%s\n", line, strings.Repeat("─", max(3, 64-len([]rune(line)))), secs(d.since()))
}

func (d *demo) intro(dir string) {
	d.printf("sidecar demo: an app calls a flaky upstream through the sidecar, which runs in this process.\n\n")
	d.printf("  upstream   %s  (in process; the demo makes it blip, go down and come back)\n", d.endpoint)
	d.printf("  sidecar    %s  (GETs take route \"orders\"; POST /events takes the async route \"events\")\n", d.sc.app)
	d.printf("  admin API  %s  (GET /v1/routes, /v1/spool, /metrics)\n", d.sc.admin)
	pol := d.sc.srv.Snapshot().Config.Policies["resilient"]
	d.printf("  config     %s  (-v prints it): policy \"resilient\" for both routes:\n", d.sc.cfgPath)
	d.printf("             up to %d attempts on %s, with a retry budget;\n", pol.Retry.Attempts, strings.Join(pol.Retry.On, ", "))
	d.printf("             a breaker that opens after %d failures in a row, for %s\n", pol.CircuitBreaker.ConsecutiveFailures, pol.CircuitBreaker.OpenFor.D())
	keep := "removed at exit; -keep keeps it"
	if d.opts.keep {
		keep = "kept at exit"
	}
	d.printf("  spool      %s/spool  (%s)\n", dir, keep)
	if d.opts.verbose {
		b, err := os.ReadFile(d.sc.cfgPath)
		if err == nil {
			d.printf("\n%s\n", indent(string(b), "    "))
		}
	}
}

// Phase 1: everything works.
func (d *demo) healthy(ctx context.Context) error {
	d.heading(1, "Healthy upstream")
	up0 := d.up.requests.Load()
	gets, err := d.gets(ctx, 10)
	if err != nil {
		return err
	}
	post, err := d.call(ctx, http.MethodPost, "/events/0", `{"event": 0}`)
	if err != nil {
		return err
	}
	d.printf("app:      10 GETs to %s, then one POST /events/0\n", ordersRange(gets))
	d.printf("app saw:  GET: %s\n", describe(gets))
	d.printf("          POST: %s\n", describe([]result{post}))
	evs := d.up.receivedEvents()
	d.printf("upstream: %d requests", d.up.requests.Load()-up0)
	if len(evs) > 0 {
		d.printf("; the event came with Idempotency-Key %s (the app sent none: the sidecar stamped it)", evs[0].Key)
	}
	d.printf("\n")
	rt, err := d.routeFigures(ctx)
	if err != nil {
		return err
	}
	m, err := d.adm.metrics(ctx)
	if err != nil {
		return err
	}
	d.metricLines(m, "sidecar_breaker_state", "sidecar_retries_total")
	d.sidecarLog()

	all200 := count(gets, func(r result) bool { return r.status == http.StatusOK && r.attempts == "1" && r.outcome == "" }) == len(gets)
	direct := post.status == http.StatusOK && post.spoolID == "" && post.outcome == "" && len(evs) == 1
	d.expect(all200, "phase 1: want every GET answered 200 by the upstream in one attempt, got %s", describe(gets))
	d.expect(direct, "phase 1: want POST /events/0 answered 200 by the upstream, got %s", describe([]result{post}))
	d.expect(breakerState(rt) == "closed", "phase 1: want the breaker closed, /v1/routes says %q", breakerState(rt))
	if all200 {
		d.printf("=> Every GET went straight through in one attempt; no Sidecar-Outcome: every answer was the upstream's.\n")
	}
	if direct {
		d.printf("   The async route tried the upstream first and, as it answered, passed its 200 on: nothing spooled.\n")
	}
	return nil
}

// Phase 2: the upstream answers 503 to every 3rd request.
func (d *demo) blipping(ctx context.Context) error {
	d.heading(2, fmt.Sprintf("Blips: the upstream answers 503 to every %drd request", blipEvery))
	m0, err := d.adm.metrics(ctx)
	if err != nil {
		return err
	}
	retries0, _ := m0.value("sidecar_retries_total", `route="orders"`)
	up0, blip0 := d.up.requests.Load(), d.up.blipped.Load()
	d.up.setMode(blips)
	gets, err := d.gets(ctx, 30)
	d.up.setMode(healthy)
	if err != nil {
		return err
	}
	d.blips = d.up.blipped.Load() - blip0
	d.blipsSeen = int64(count(gets, func(r result) bool { return r.status == http.StatusServiceUnavailable && r.outcome == "" }))
	d.printf("app:      30 GETs to %s\n", ordersRange(gets))
	d.printf("app saw:  %s\n", describe(gets))
	d.printf("upstream: %d requests, %d of them answered 503\n", d.up.requests.Load()-up0, d.blips)
	rt, err := d.routeFigures(ctx)
	if err != nil {
		return err
	}
	m, err := d.adm.metrics(ctx)
	if err != nil {
		return err
	}
	d.metricLines(m, `sidecar_retries_total route="orders"`, `sidecar_retry_budget_exhausted_total route="orders"`, "sidecar_breaker_state")
	d.sidecarLog()

	retries, _ := m.value("sidecar_retries_total", `route="orders"`)
	twice := count(gets, func(r result) bool { return r.status == http.StatusOK && r.attempts == "2" })
	ok := count(gets, func(r result) bool { return r.status == http.StatusOK }) == len(gets)
	d.expect(ok, "phase 2: want every GET 200, got %s", describe(gets))
	d.expect(d.blips > 0 && twice > 0, "phase 2: want some GETs answered on a 2nd attempt, got %d (the upstream blipped %d times)", twice, d.blips)
	d.expect(breakerState(rt) == "closed", "phase 2: want the breaker still closed, /v1/routes says %q", breakerState(rt))
	if ok && twice > 0 {
		d.printf("=> Retries absorbed the blips: the upstream answered 503 %d times, ", d.blips)
		if retries-retries0 == float64(d.blips) {
			d.printf("the sidecar retried each GET\n   that got one (sidecar_retries_total +%g)", retries-retries0)
		} else {
			d.printf("the sidecar retried %g times\n   (sidecar_retries_total)", retries-retries0)
		}
		d.printf(", and the app got %d × 200, %d of them on a 2nd attempt.\n", len(gets), twice)
		if breakerState(rt) == "closed" {
			d.printf("   The breaker stayed closed: a success followed every failure.\n")
		}
	}
	return nil
}

// Phase 3: the upstream is down; GETs fail, the breaker opens, events
// are spooled.
func (d *demo) down(ctx context.Context) error {
	d.heading(3, "Upstream down: its port refuses connections")
	if err := d.up.stop(); err != nil {
		// The expectations below tell whether it is down all the same.
		d.printf("note:     %v\n", err)
	}
	downAt := d.since()
	up0 := d.up.requests.Load()
	gets, err := d.gets(ctx, 20)
	if err != nil {
		return err
	}
	var posts []result
	for i := 1; i <= 5; i++ {
		r, err := d.call(ctx, http.MethodPost, fmt.Sprintf("/events/%d", i), fmt.Sprintf(`{"event": %d}`, i))
		if err != nil {
			return err
		}
		posts = append(posts, r)
	}
	d.printf("app:      20 GETs to %s, then 5 POSTs to /events/1..5\n", ordersRange(gets))
	d.printf("app saw:  GET: %s\n", describe(gets))
	for _, g := range groups(gets) {
		extra := ""
		if ra := tally(g, func(r result) string { return r.retryAfter }); g[0].retryAfter != "" {
			extra = ", Retry-After " + ra
		}
		d.printf("          %d × %d %s: Sidecar-Attempts %s, median %s%s\n", len(g), g[0].status, g[0].outcome,
			tally(g, func(r result) string { return r.attemptsOr("absent") }), ms(median(g)), extra)
	}
	d.printf("          POST: %s\n", describe(posts))
	reached := d.up.requests.Load() - up0
	d.printf("upstream: %d requests (it is down)\n", reached)
	d.sidecarLog()
	rt, err := d.routeFigures(ctx)
	if err != nil {
		return err
	}
	for _, p := range posts {
		if p.status != http.StatusAccepted || p.spoolID == "" {
			continue
		}
		msg, err := d.adm.message(ctx, p.spoolID)
		if err != nil {
			d.expect(false, "phase 3: GET /v1/spool/messages/%s: %v", p.spoolID, err)
			continue
		}
		d.spooled = append(d.spooled, spooledEvent{id: p.spoolID, key: msg.Message.IdempotencyKey, body: msg.Message.Body})
		d.printf("          GET /v1/spool/messages/%s: %s %s %s, Idempotency-Key %s\n", p.spoolID, msg.Message.Method, msg.Message.Target, msg.Message.Body, msg.Message.IdempotencyKey)
	}
	m, err := d.adm.metrics(ctx)
	if err != nil {
		return err
	}
	d.metricLines(m, "sidecar_breaker_state", "sidecar_breaker_transitions_total", `sidecar_spool_messages route="events" state="pending"`)

	opens, _ := m.value("sidecar_breaker_transitions_total", `state="open"`)
	openedAt, logged := d.breakerChange("open", downAt)
	d.opened = opens > 0 && logged
	fast := filter(gets, func(r result) bool { return r.outcome == "breaker_open" && r.attempts == "" })
	d.failedFast = len(fast)
	accepted := count(posts, func(r result) bool { return r.status == http.StatusAccepted && r.spoolID != "" })
	d.expect(d.opened, "phase 3: want the breaker to open: sidecar_breaker_transitions_total{state=\"open\"} is %g, logged: %v", opens, logged)
	d.expect(d.failedFast > 0, "phase 3: want GETs refused at once with 503 breaker_open, got %s", describe(gets))
	d.expect(count(gets, func(r result) bool { return r.status == 502 || r.status == 503 }) == len(gets), "phase 3: want every GET 502 or 503, got %s", describe(gets))
	d.expect(accepted == len(posts), "phase 3: want every POST /events answered 202 with a spool id, got %s", describe(posts))
	d.expect(len(d.spooled) == accepted, "phase 3: the admin API shows %d of the %d spooled messages", len(d.spooled), accepted)
	if d.opened {
		refused := ", each refused"
		if reached > 0 {
			refused = fmt.Sprintf(" (%d reached the upstream?)", reached)
		}
		d.printf("=> The GETs made %d attempts in all%s; the breaker counts them as failures and opened\n", attempts(gets), refused)
		d.printf("   at t=%s (%d in a row opens it). Its state is %s now.\n", secs(openedAt), d.consecutiveFailures(), breakerState(rt))
	}
	for _, r := range filter(gets, func(r result) bool { return r.outcome == "breaker_open" && r.attempts != "" }) {
		d.printf("   GET %s had made %s attempts when the breaker opened; its retry found it open: 503 breaker_open.\n", r.path, r.attempts)
	}
	if d.failedFast > 0 {
		d.printf("   %d GETs were answered 503 breaker_open by the sidecar itself, without an attempt, in %s (median).\n", d.failedFast, ms(median(fast)))
	}
	if accepted > 0 {
		d.printf("   %d events spooled: each POST got 202 and a spool id once it was on disk; the app need not retry.\n", accepted)
	}
	return nil
}

// consecutiveFailures is the breaker's consecutive_failures, from the
// running configuration.
func (d *demo) consecutiveFailures() int {
	if p := d.sc.srv.Snapshot().Config.Policies["resilient"]; p != nil && p.CircuitBreaker != nil {
		return p.CircuitBreaker.ConsecutiveFailures
	}
	return 0
}

// Phase 4: the upstream is back; the breaker probes and closes, the
// spooled events are delivered.
func (d *demo) back(ctx context.Context) error {
	d.heading(4, "Upstream back, on the same port")
	if err := d.up.start(); err != nil {
		return err
	}
	back, backAt := time.Now(), d.since()
	// The app goes on calling, as apps do, until the breaker has closed.
	var gets []result
	deadline := back.Add(d.timing.openFor + 5*time.Second)
	for time.Now().Before(deadline) {
		r, err := d.get(ctx)
		if err != nil {
			return err
		}
		r.at = time.Since(back)
		gets = append(gets, r)
		if r.status == http.StatusOK {
			rt, err := d.adm.route(ctx, "orders")
			if err != nil {
				return err
			}
			if breakerState(rt) == "closed" {
				break
			}
		}
		if err := sleep(ctx, d.timing.poll); err != nil {
			return err
		}
	}
	d.printf("app:      a GET to /orders every %s until the breaker has closed: %d GETs\n", d.timing.poll, len(gets))
	d.printf("app saw:  %s\n", describeTimeline(gets))
	// The deliverer retries the head event once the breaker lets it,
	// then sends the rest in order.
	var sv spoolView
	for {
		var err error
		if sv, err = d.adm.spool(ctx); err != nil {
			return err
		}
		ev := sv.Routes["events"]
		if ev.Depth == 0 && ev.Delivery != nil && ev.Delivery.Delivered >= int64(len(d.spooled)) || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	reqs := d.up.requestsSince(back)
	d.printf("upstream: %d requests since it came back: %s\n", len(reqs), tallyRequests(reqs))
	keys := map[string]int{}
	var got []event
	for _, e := range d.up.receivedEvents() {
		if e.At.After(back) {
			got = append(got, e)
			keys[e.Key+" "+e.Body]++
		}
	}
	for _, e := range got {
		d.printf("          +%s  POST %s %s  Idempotency-Key %s%s\n", secs(e.At.Sub(back)), e.Path, e.Body, e.Key, spooledAs(d.spooled, e.Key))
	}
	d.sidecarLog()
	rt, err := d.routeFigures(ctx)
	if err != nil {
		return err
	}
	m, err := d.adm.metrics(ctx)
	if err != nil {
		return err
	}
	d.metricLines(m, "sidecar_breaker_state", "sidecar_breaker_transitions_total",
		`sidecar_spool_deliveries_total route="events"`, `sidecar_spool_messages route="events" state="pending"`)

	for _, s := range d.spooled {
		if n := keys[s.key+" "+s.body]; n > 0 {
			d.deliveredWithKey++
			if n > 1 {
				d.dupKeys++
			}
		}
	}
	inOrder := len(got) == len(d.spooled)
	for i := range got {
		inOrder = inOrder && got[i].Key == d.spooled[i].key
	}
	ev := sv.Routes["events"]
	d.depth = ev.Depth
	if ev.Delivery != nil {
		d.delivered = int(ev.Delivery.Delivered)
	}
	halfOpenAt, halfOpened := d.breakerChange("half_open", backAt)
	closedAt, closed := d.breakerChange("closed", backAt)
	d.closed = closed && breakerState(rt) == "closed"
	d.closedAfter = closedAt - backAt
	firstOK := slices.IndexFunc(gets, func(r result) bool { return r.status == http.StatusOK })
	d.expect(d.closed, "phase 4: want the breaker closed again: /v1/routes says %q, a change to closed logged: %v", breakerState(rt), closed)
	d.expect(halfOpened, "phase 4: want the breaker to go half-open before it closes; no such change logged")
	d.expect(firstOK >= 0, "phase 4: want a GET answered 200 once the breaker closed, got %s", describeTimeline(gets))
	d.expect(ev.Depth == 0, "phase 4: want the spool empty, /v1/spool says depth %d", ev.Depth)
	d.expect(d.delivered == len(d.spooled), "phase 4: want %d deliveries, /v1/spool says %d", len(d.spooled), d.delivered)
	d.expect(d.deliveredWithKey == len(d.spooled), "phase 4: the upstream received %d of the %d spooled events with their body and Idempotency-Key", d.deliveredWithKey, len(d.spooled))
	if halfOpened && closed {
		d.printf("=> The breaker went half-open at t=%s", secs(halfOpenAt))
		if openedAt, ok := d.lastBreakerChange("open", halfOpenAt); ok {
			d.printf(", %s after it opened (open_for: %s),", secs(halfOpenAt-openedAt), d.timing.openFor)
		}
		d.printf(" and let one probe through")
		if len(reqs) > 0 {
			who := "from the app"
			if reqs[0].method == http.MethodPost {
				who = "from the spool's deliverer"
			}
			d.printf(":\n   %s %s %s, the first request the upstream received", reqs[0].method, reqs[0].path, who)
		}
		d.printf(". It succeeded, so the breaker\n   closed at t=%s, %s after the upstream came back.", secs(closedAt), secs(d.closedAfter))
		if firstOK >= 0 {
			d.printf(" The app's first 200 came at +%s.", secs(gets[firstOK].at))
		}
		d.printf("\n")
	}
	if d.delivered > 0 {
		order := "out of order"
		if inOrder {
			order = "in order"
		}
		d.printf("   %d spooled events delivered (%s), each with the Idempotency-Key it was spooled with; spool depth %d.\n", d.delivered, order, ev.Depth)
	}
	if d.dupKeys > 0 {
		d.printf("   %d events arrived more than once (delivery is at least once: the upstream can drop repeats by key).\n", d.dupKeys)
	}
	return nil
}

// tallyRequests counts requests by method and directory ("GET /orders/*").
func tallyRequests(rs []request) string {
	n := map[string]int{}
	for _, r := range rs {
		k := r.method + " " + path.Dir(r.path) + "/*"
		n[k]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, n[k]))
	}
	return strings.Join(parts, ", ")
}

// groups splits results by status and outcome, in order of first
// appearance.
func groups(rs []result) [][]result {
	var out [][]result
	idx := map[string]int{}
	for _, r := range rs {
		k := strconv.Itoa(r.status) + " " + r.outcome
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], r)
	}
	return out
}

func (d *demo) summary() error {
	d.printf("\n── Summary ")
	d.printf("%s t=%s\n", strings.Repeat("─", 53), secs(d.since()))
	mark := func(ok bool) string {
		if ok {
			return "[ok]    "
		}
		return "[FAILED]"
	}
	d.printf("%s retries absorbed blips: the upstream answered 503 %d times, the app saw %d of them\n", mark(d.blips > 0 && d.blipsSeen == 0), d.blips, d.blipsSeen)
	if d.opened {
		d.printf("%s breaker opened while the upstream was down; %d GETs failed fast with 503 breaker_open\n", mark(d.failedFast > 0), d.failedFast)
	} else {
		d.printf("%s the breaker did not open\n", mark(false))
	}
	if d.closed {
		d.printf("%s breaker closed %s after the upstream came back\n", mark(true), secs(d.closedAfter))
	} else {
		d.printf("%s the breaker did not close\n", mark(false))
	}
	d.printf("%s %d events spooled while the upstream was down\n", mark(len(d.spooled) == 5), len(d.spooled))
	d.printf("%s %d delivered when it came back, %d with their Idempotency-Key seen by the upstream; spool depth %d\n",
		mark(d.delivered == len(d.spooled) && d.deliveredWithKey == len(d.spooled) && d.depth == 0), d.delivered, d.deliveredWithKey, d.depth)
	if len(d.failures) > 0 {
		d.printf("\ndemo FAILED: %d expectations not met\n", len(d.failures))
		return errors.New(strings.Join(d.failures, "; "))
	}
	d.printf("\ndemo OK in %s\n", secs(d.since()))
	return nil
}

// routeFigures prints the admin API's view of the route orders and its
// endpoint, and of the spool, and returns the route.
func (d *demo) routeFigures(ctx context.Context) (routeView, error) {
	rt, err := d.adm.route(ctx, "orders")
	if err != nil {
		return rt, err
	}
	s := fmt.Sprintf("admin:    GET /v1/routes: route orders: up to %d attempts", rt.Stats.Attempts)
	if b := rt.Stats.Budget; b != nil {
		s += fmt.Sprintf("; retry budget: %d requests, %d retries in the window, %.1f more allowed", b.Requests, b.Retries, b.Available)
	}
	d.printf("%s\n", s)
	for _, ep := range rt.Endpoints {
		if b := ep.Breaker; b != nil {
			retry := ""
			if in, err := time.ParseDuration(b.RetryIn); err == nil {
				retry = ", half-open in " + ms(in)
			}
			d.printf("          endpoint %s: breaker %s%s (its counts: %d requests, %d failures, %d in a row)\n",
				ep.URL, b.State, retry, b.Counts.Requests, b.Counts.Failures, b.Counts.ConsecutiveFailures)
		}
	}
	sv, err := d.adm.spool(ctx)
	if err != nil {
		return rt, err
	}
	ev := sv.Routes["events"]
	s = fmt.Sprintf("          GET /v1/spool: route events: depth %d, dead %d", ev.Depth, ev.Dead)
	if dl := ev.Delivery; dl != nil {
		s += fmt.Sprintf(", delivered %d, retried %d", dl.Delivered, dl.Retried)
		if dl.HeadBlocked {
			s += fmt.Sprintf(", head blocked (delivery attempts so far: %d)", dl.HeadAttempts)
		}
	}
	d.printf("%s\n", s)
	return rt, nil
}

// metricLines prints the samples that each selector picks: a metric's
// name, then the labels the samples must have (`name label="value"`).
// For sidecar_breaker_state only the state the breaker is in is shown.
func (d *demo) metricLines(m metrics, selectors ...string) {
	label := "metrics:  "
	for _, sel := range selectors {
		f := strings.Fields(sel)
		name := f[0]
		var ls []string
		for _, l := range m.lines(name, f[1:]...) {
			if name == "sidecar_breaker_state" && !strings.HasSuffix(l, " 1") {
				continue
			}
			ls = append(ls, l)
		}
		if len(ls) == 0 {
			want := name
			if len(f) > 1 {
				want += "{" + strings.Join(f[1:], ",") + "}"
			}
			ls = []string{want + ": no sample yet (nothing counted)"}
		}
		for _, l := range ls {
			d.printf("%s%s\n", label, l)
			label = "          "
		}
	}
}

// sidecarLog prints what the sidecar logged (warn and above) since the
// last call.
func (d *demo) sidecarLog() {
	label := "log:      "
	for _, l := range d.sc.logs.take() {
		d.logs = append(d.logs, l)
		d.printf("%st=%s %s\n", label, secs(l.at), l.text)
		label = "          "
	}
}

// lastBreakerChange returns when the sidecar last logged its breaker's
// change to the state to, before t.
func (d *demo) lastBreakerChange(to string, before time.Duration) (time.Duration, bool) {
	at, found := time.Duration(0), false
	for _, l := range d.logs {
		if l.msg == "circuit breaker state changed" && l.attrs["to"] == to && l.at <= before {
			at, found = l.at, true
		}
	}
	return at, found
}

// breakerChange returns when the sidecar logged its breaker's change to
// the state to, after t.
func (d *demo) breakerChange(to string, after time.Duration) (time.Duration, bool) {
	for _, l := range d.logs {
		if l.msg == "circuit breaker state changed" && l.attrs["to"] == to && l.at > after {
			return l.at, true
		}
	}
	return 0, false
}

// result is what the app saw of one call.
type result struct {
	path       string
	status     int
	attempts   string // Sidecar-Attempts; "" when absent
	outcome    string // Sidecar-Outcome: only on answers the sidecar made itself
	spoolID    string // Sidecar-Spool-Id
	retryAfter string
	took       time.Duration
	at         time.Duration // since the phase's reference time
}

func (r result) attemptsOr(none string) string {
	if r.attempts == "" {
		return none
	}
	return r.attempts
}

func (d *demo) call(ctx context.Context, method, path, body string) (result, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.sc.app+path, rd)
	if err != nil {
		return result{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	t0 := time.Now()
	resp, err := d.app.Do(req)
	if err != nil {
		return result{}, fmt.Errorf("%s %s through the sidecar: %w", method, path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return result{
		path:       path,
		status:     resp.StatusCode,
		attempts:   resp.Header.Get(proxy.HeaderAttempts),
		outcome:    resp.Header.Get(proxy.HeaderOutcome),
		spoolID:    resp.Header.Get(proxy.HeaderSpoolID),
		retryAfter: resp.Header.Get("Retry-After"),
		took:       time.Since(t0),
	}, nil
}

// get asks for the next order.
func (d *demo) get(ctx context.Context) (result, error) {
	d.order++
	return d.call(ctx, http.MethodGet, "/orders/"+strconv.Itoa(d.order), "")
}

// gets sends n GETs, one after the other.
func (d *demo) gets(ctx context.Context, n int) ([]result, error) {
	var out []result
	for range n {
		r, err := d.get(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// describe sums results up: statuses, Sidecar-Attempts, Sidecar-Outcome
// and the slowest.
func describe(rs []result) string {
	if len(rs) == 0 {
		return "nothing"
	}
	parts := []string{
		tally(rs, func(r result) string { return strconv.Itoa(r.status) }),
		"Sidecar-Attempts " + tally(rs, func(r result) string { return r.attemptsOr("absent") }),
	}
	if o := tally(filter(rs, func(r result) bool { return r.outcome != "" }), func(r result) string { return r.outcome }); o != "" {
		parts = append(parts, "Sidecar-Outcome "+o)
	} else {
		parts = append(parts, "no Sidecar-Outcome")
	}
	if n := count(rs, func(r result) bool { return r.spoolID != "" }); n > 0 {
		parts = append(parts, fmt.Sprintf("a Sidecar-Spool-Id on %d", n))
	}
	if len(rs) == 1 {
		parts = append(parts, "took "+ms(rs[0].took))
	} else {
		parts = append(parts, "median "+ms(median(rs))+", slowest "+ms(slowest(rs)))
	}
	return strings.Join(parts, " · ")
}

// describeTimeline sums up the GETs of phase 4 in runs of the same
// answer, with when each run began after the upstream came back.
func describeTimeline(rs []result) string {
	var parts []string
	for i := 0; i < len(rs); {
		j := i
		for j < len(rs) && rs[j].status == rs[i].status && rs[j].outcome == rs[i].outcome {
			j++
		}
		what := strconv.Itoa(rs[i].status)
		if rs[i].outcome != "" {
			what += " " + rs[i].outcome
		}
		parts = append(parts, fmt.Sprintf("%s × %d (from +%s)", what, j-i, secs(rs[i].at)))
		i = j
	}
	return strings.Join(parts, ", then ")
}

// tally counts results by key: "200 ×28, 503 ×2", keys in order.
func tally(rs []result, key func(result) string) string {
	n := map[string]int{}
	for _, r := range rs {
		n[key(r)]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, n[k]))
	}
	return strings.Join(parts, ", ")
}

func filter(rs []result, keep func(result) bool) []result {
	var out []result
	for _, r := range rs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

func count(rs []result, f func(result) bool) int { return len(filter(rs, f)) }

func median(rs []result) time.Duration {
	ts := make([]time.Duration, len(rs))
	for i, r := range rs {
		ts[i] = r.took
	}
	slices.Sort(ts)
	return ts[len(ts)/2]
}

func slowest(rs []result) time.Duration {
	return slices.MaxFunc(rs, func(a, b result) int { return int(a.took - b.took) }).took
}

// attempts is the sum of the results' Sidecar-Attempts.
func attempts(rs []result) int {
	n := 0
	for _, r := range rs {
		a, _ := strconv.Atoi(r.attempts)
		n += a
	}
	return n
}

func ordersRange(rs []result) string {
	if len(rs) == 0 {
		return "/orders"
	}
	return rs[0].path + ".." + strings.TrimPrefix(rs[len(rs)-1].path, "/orders/")
}

func breakerState(rt routeView) string {
	for _, ep := range rt.Endpoints {
		if ep.Breaker != nil {
			return ep.Breaker.State
		}
	}
	return "none"
}

// spooledAs names the spooled message the key belongs to.
func spooledAs(spooled []spooledEvent, key string) string {
	for _, s := range spooled {
		if s.key == key {
			return " = spool id " + s.id
		}
	}
	return " (not a spooled event)"
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func ms(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

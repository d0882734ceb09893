package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// screenshotEnv names a file to write the browser test's screenshot to
// (docs/status-page.png is made so).
const screenshotEnv = "SIDECAR_STATUS_SCREENSHOT"

// browserConfig: orders (sync, a policy with every guard), payments (two
// endpoints, one refusing connections: its breaker opens), inventory (the
// same two endpoints, health checked: the refusing one is unhealthy) and
// events (async, dead-lettered at the first failed delivery).
func browserConfig(orders, payments, refused, events string) string {
	return `
version: 1
spool: {dir: ./unused}
upstreams:
  orders-svc: {endpoints: ["` + orders + `"]}
  payments-svc: {endpoints: ["` + payments + `", "` + refused + `"]}
  events-svc: {endpoints: ["` + events + `"]}
  inventory-svc:
    endpoints: ["` + payments + `", "` + refused + `"]
    health_check: {interval: 200ms, timeout: 100ms, unhealthy: 1}
policies:
  guarded:
    retry: {}
    circuit_breaker: {}
    rate_limit: {rps: 200, burst: 50}
    max_in_flight: 32
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: orders, match: {path_prefix: /orders}, upstream: orders-svc, policy: guarded}
      - {name: payments, match: {path_prefix: /payments}, upstream: payments-svc, policy: guarded}
      - {name: inventory, match: {path_prefix: /inventory}, upstream: inventory-svc}
      - name: events
        match: {path_prefix: /events}
        upstream: events-svc
        async: {when: always, max_attempts: 1, backoff: {base: 5ms, max: 20ms}}
`
}

// browserSidecar runs cfg as "sidecar run" does, in process: telemetry
// recording the request metrics, a file spool in a temporary directory
// (withSpool), and the admin API with token. It returns the app's and the
// admin API's base URLs.
func browserSidecar(t *testing.T, yaml, token string, withSpool bool) (app, adm string) {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	tel := newProvider(t, cfg.Telemetry)
	ptel, err := proxy.TelemetryFrom(tel)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := proxy.Build(cfg, nil, proxytest.Discard, proxy.WithTelemetry(ptel))
	if err != nil {
		t.Fatal(err)
	}
	var opts []proxy.Option
	if withSpool {
		opts = append(opts, proxy.WithSpool(openTestStore(t, spool.FileOptions{})))
	}
	srv := proxy.NewServer(snap, proxytest.Discard, opts...)
	reg, err := srv.RegisterMetrics(tel.Meter())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Unregister() }) // runs after serveWithAdmin's: cleanups run last first
	a := New(srv, proxytest.Discard, WithToken(token), WithTelemetry(tel))
	a.SetReady(true)
	return serveWithAdmin(t, srv, a)
}

// refusedURL returns the URL of a loopback port nothing listens on.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// getJSON GETs url and decodes its JSON answer into out; it returns the
// status.
func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

type deadAnswer struct {
	Messages []struct {
		ID string `json:"id"`
	} `json:"messages"`
}

type spoolRouteAnswer struct {
	Depth    int64 `json:"depth"`
	Dead     int64 `json:"dead"`
	Delivery struct {
		Delivered    int64 `json:"delivered"`
		DeadLettered int64 `json:"dead_lettered"`
	} `json:"delivery"`
}

func eventsSpool(t *testing.T, adm string) spoolRouteAnswer {
	t.Helper()
	var sp struct {
		Routes map[string]spoolRouteAnswer `json:"routes"`
	}
	if code := getJSON(t, adm+"/v1/spool", &sp); code != 200 {
		t.Fatalf("GET /v1/spool = %d", code)
	}
	return sp.Routes["events"]
}

// TestStatusPageInBrowser opens the status page of a running sidecar in
// headless Chromium: it waits for the routes, their rates and two dead
// letters to render, presses Replay without the token (the page shows the
// API's 401), types the token, presses Replay again (the message is
// delivered) and purges the other dead letter through the confirm
// dialog, checking each effect through the admin API. With
// SIDECAR_STATUS_SCREENSHOT set, it writes a screenshot there.
func TestStatusPageInBrowser(t *testing.T) {
	chromiumPath(t) // skip early, before starting anything
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(ok.Close)
	var orderN atomic.Int64
	orders := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if orderN.Add(1)%8 == 0 {
			w.WriteHeader(http.StatusInternalServerError) // not retried: an error the page counts
		}
	}))
	t.Cleanup(orders.Close)
	var eventsUp atomic.Bool
	var delivered sync.Map // bodies the events upstream accepted
	events := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if !eventsUp.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		delivered.Store(string(b), true)
	}))
	t.Cleanup(events.Close)

	const token = "browser-test-token"
	app, adm := browserSidecar(t, browserConfig(orders.URL, ok.URL, refusedURL(t), events.URL), token, true)

	// Two events, dead-lettered at their first failed delivery.
	for _, body := range []string{`{"event":"first"}`, `{"event":"second"}`} {
		resp, err := http.Post(app+"/events", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /events = %d, want 202", resp.StatusCode)
		}
	}
	poll.Until(t, 10*time.Second, "two dead letters", func() bool { return eventsSpool(t, adm).Dead == 2 })
	var dead deadAnswer
	getJSON(t, adm+"/v1/spool/messages?route=events&state=dead", &dead)
	if len(dead.Messages) != 2 {
		t.Fatalf("dead letters = %+v, want 2", dead)
	}
	first, second := dead.Messages[0].ID, dead.Messages[1].ID

	// Traffic for the rates, bounded in count and time: every 40 ms an
	// order and a payment, until the test ends.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var loadDone sync.WaitGroup
	loadDone.Add(1)
	go func() {
		defer loadDone.Done()
		client := &http.Client{Timeout: 2 * time.Second}
		for i := 0; i < 1500 && loadCtx.Err() == nil; i++ {
			for _, path := range []string{"/orders/42", "/payments/7"} {
				if resp, err := client.Get(app + path); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			select {
			case <-loadCtx.Done():
			case <-time.After(40 * time.Millisecond):
			}
		}
	}()
	defer loadDone.Wait()
	defer stopLoad()

	var problems struct {
		sync.Mutex
		list    []string
		dialogs []string
	}
	var browser *cdpClient
	browser = startChromium(t, func(m cdpMessage) {
		switch m.Method {
		case "Runtime.exceptionThrown":
			problems.Lock()
			problems.list = append(problems.list, "exception: "+string(m.Params))
			problems.Unlock()
		case "Log.entryAdded":
			var e struct {
				Entry struct{ Source, Level, Text, URL string } `json:"entry"`
			}
			json.Unmarshal(m.Params, &e)
			// A 401 is logged as a failed load: expected; a refusal by
			// the Content-Security-Policy is not.
			if e.Entry.Source == "security" || strings.Contains(e.Entry.Text, "Content Security Policy") ||
				(e.Entry.Level == "error" && e.Entry.Source != "network") {
				problems.Lock()
				problems.list = append(problems.list, fmt.Sprintf("console %s/%s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL))
				problems.Unlock()
			}
		case "Page.javascriptDialogOpening":
			var d struct{ Type, Message string }
			json.Unmarshal(m.Params, &d)
			problems.Lock()
			problems.dialogs = append(problems.dialogs, d.Type+": "+d.Message)
			problems.Unlock()
			// Answered from another goroutine: this one reads the answer.
			go browser.call(ctx, m.SessionID, "Page.handleJavaScriptDialog", map[string]any{"accept": true}, nil)
		}
	})
	page, err := browser.newPage(ctx, 1200, 800)
	if err != nil {
		t.Fatalf("opening a tab: %v\nchromium: %s", err, browser.Stderr())
	}
	fail := func(err error) {
		t.Helper()
		var html string
		page.eval(context.Background(), "document.body ? document.body.innerText : ''", &html)
		t.Fatalf("%v\npage text:\n%s\nchromium stderr (last part): %s", err, html, tail(browser.Stderr(), 2000))
	}
	if err := page.call(ctx, "Page.navigate", map[string]any{"url": adm + "/"}, nil); err != nil {
		fail(err)
	}

	// The routes, the spool and both dead letters, then the rates: the
	// second scrape of /metrics after the load began.
	deadRows := `document.querySelectorAll("#dead-body button[data-action=replay]").length`
	for _, w := range []struct{ what, expr string }{
		{"the route table", `["orders", "payments", "events"].every(n => [...document.querySelectorAll("#routes-body tr")].some(tr => tr.dataset.key === n))`},
		{"the spool table", `!document.getElementById("spool-section").hidden && [...document.querySelectorAll("#spool-body tr")].some(tr => tr.dataset.key === "events")`},
		{"two dead letters", deadRows + ` === 2`},
		{"the rates", `(() => { const tr = [...document.querySelectorAll("#routes-body tr")].find(tr => tr.dataset.key === "orders");
			return tr && parseFloat(tr.cells[5].textContent) > 0; })()`},
		{"an open breaker", `document.querySelector("#routes-body .st-open") !== null`},
		{"an unhealthy endpoint", `[...document.querySelectorAll("#routes-body tr")].some(tr => tr.dataset.key === "inventory" && tr.querySelector(".st-unhealthy") !== null)`},
	} {
		if err := page.waitFor(ctx, 10*time.Second, w.what, w.expr); err != nil {
			fail(err)
		}
	}
	var updated string
	page.eval(ctx, `document.getElementById("updated").textContent`, &updated)
	if !strings.HasPrefix(updated, "updated ") {
		t.Errorf("the page says %q, want updated HH:MM:SS", updated)
	}

	shot, err := page.screenshot(ctx)
	if err != nil {
		fail(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() != 1200 || img.Bounds().Dy() != 800 {
		t.Errorf("screenshot: %v, bounds %v; want a 1200×800 PNG", err, img.Bounds())
	}
	if path := os.Getenv(screenshotEnv); path != "" {
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			t.Error(err)
		}
	}

	replayButton := `[...document.querySelectorAll("#dead-body button[data-action=replay]")].find(b => b.dataset.id === ` + jsString(first) + `)`
	notice := `document.getElementById("notice").textContent`

	// Without the token: the API's 401, on the page; nothing replayed.
	if err := page.click(ctx, "Replay without the token", replayButton); err != nil {
		fail(err)
	}
	if err := page.waitFor(ctx, 10*time.Second, "the 401 on the page", notice+`.includes("401") && `+notice+`.includes("Bearer")`); err != nil {
		fail(err)
	}
	if sp := eventsSpool(t, adm); sp.Dead != 2 {
		t.Errorf("after a replay without the token: %d dead, want 2", sp.Dead)
	}

	// With the token, and the upstream back: the message is delivered.
	eventsUp.Store(true)
	if err := page.typeInto(ctx, `document.getElementById("token")`, token); err != nil {
		fail(err)
	}
	if err := page.click(ctx, "Replay", replayButton); err != nil {
		fail(err)
	}
	if err := page.waitFor(ctx, 10*time.Second, "the replay's notice", notice+` === "Replayed " + `+jsString(first)+` + ": it is pending again."`); err != nil {
		fail(err)
	}
	poll.Until(t, 10*time.Second, "the replayed message delivered", func() bool {
		sp := eventsSpool(t, adm)
		return sp.Dead == 1 && sp.Depth == 0 && sp.Delivery.Delivered == 1
	})
	if code := getJSON(t, adm+"/v1/spool/messages/"+first, nil); code != 404 {
		t.Errorf("the replayed message after its delivery: GET = %d, want 404 (settled)", code)
	}
	if _, ok := delivered.Load(`{"event":"first"}`); !ok {
		t.Errorf("the events upstream never received the replayed message")
	}
	if err := page.waitFor(ctx, 10*time.Second, "one dead letter left", deadRows+` === 1`); err != nil {
		fail(err)
	}

	// Purge the route's dead letters: confirm() is answered yes.
	purgeDead := `[...document.querySelectorAll("#spool-body button[data-action=purge]")].find(b => b.dataset.route === "events" && b.dataset.state === "dead")`
	if err := page.click(ctx, "Purge dead", purgeDead); err != nil {
		fail(err)
	}
	if err := page.waitFor(ctx, 10*time.Second, "the purge's notice", notice+` === "Purged 1 dead messages of events."`); err != nil {
		fail(err)
	}
	if sp := eventsSpool(t, adm); sp.Dead != 0 {
		t.Errorf("after the purge: %d dead, want 0", sp.Dead)
	}
	if code := getJSON(t, adm+"/v1/spool/messages/"+second, nil); code != 404 {
		t.Errorf("the purged message: GET = %d, want 404", code)
	}
	if err := page.waitFor(ctx, 10*time.Second, "no dead letters", `!document.getElementById("dead-empty").hidden && `+deadRows+` === 0`); err != nil {
		fail(err)
	}

	// The token never leaves the page's memory.
	var stored string
	page.eval(ctx, `JSON.stringify([location.href, document.cookie, sessionStorage.length, localStorage.length, document.body.innerHTML.includes(`+jsString(token)+`)])`, &stored)
	if want := `["` + adm + `/","",0,0,false]`; stored != want {
		t.Errorf("URL, cookies, storage, markup = %s, want %s", stored, want)
	}

	// A sidecar without a spool (no route is async) and with metrics off:
	// the page hides the spool and says the rates are unavailable.
	_, adm2 := browserSidecar(t, `
version: 1
telemetry: {metrics: {prometheus: false}}
upstreams:
  up: {endpoints: ["`+ok.URL+`"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: plain, match: {path_prefix: /}, upstream: up}
`, "", false)
	page2, err := browser.newPage(ctx, 1200, 800)
	if err != nil {
		fail(err)
	}
	if err := page2.call(ctx, "Page.navigate", map[string]any{"url": adm2 + "/"}, nil); err != nil {
		fail(err)
	}
	if err := page2.waitFor(ctx, 10*time.Second, "two refreshes without a spool or metrics", `Number(document.body.dataset.refreshes) >= 2`); err != nil {
		fail(err)
	}
	var view []any
	page2.eval(ctx, `[document.getElementById("spool-section").hidden, document.getElementById("dead-section").hidden,
		document.getElementById("rates-note").textContent, [...document.querySelectorAll("#routes-body tr")].map(tr => tr.dataset.key + ":" + tr.cells[5].textContent),
		document.getElementById("ready").textContent, document.getElementById("conn").hidden]`, &view)
	if want := `[true,true,"Rates unavailable: metrics are off (telemetry.metrics.prometheus: false).",["plain:—"],"ready",true]`; jsonText(view) != want {
		t.Errorf("without a spool or metrics, the page shows %s, want %s", jsonText(view), want)
	}

	problems.Lock()
	defer problems.Unlock()
	for _, p := range problems.list {
		t.Errorf("in the browser: %s", p)
	}
	if len(problems.dialogs) != 1 || !strings.HasPrefix(problems.dialogs[0], `confirm: Purge every dead message of route "events"?`) {
		t.Errorf("dialogs = %q, want the purge's confirm", problems.dialogs)
	}
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/spooltest"
)

// asyncRoute is a config with one listener "app" whose only route "ev" is
// async with the given block (YAML flow mapping body) to UPSTREAM0.
func asyncRoute(async string) string {
	return `
version: 1
spool: {dir: ./unused}
upstreams:
  up: {endpoints: ["UPSTREAM0"]}
policies:
  p: {timeout: 5s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /}, upstream: up, policy: p, async: {` + async + `}}
`
}

// openStore opens a file store in dir, closed when the test ends (after
// any sidecar started later has shut down).
func openStore(t *testing.T, dir string, opts spool.FileOptions) *spool.FileStore {
	t.Helper()
	st, err := spool.OpenFile(dir, opts)
	if err != nil {
		t.Fatalf("OpenFile(%s) = %v", dir, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// deadUpstream is an upstream address where nothing listens.
func deadUpstream(t *testing.T) *upstream {
	t.Helper()
	u := newUpstream(t, nil)
	u.URL = "http://" + testnet.RefusedAddr(t)
	return u
}

// recorder is an upstream that records each request's path, idempotency
// key and body, and answers with answer(n) for the n-th request (from 0).
type recorder struct {
	*upstream
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct{ path, key, body, traceparent string }

func newRecorder(t *testing.T, answer func(n int, w http.ResponseWriter)) *recorder {
	rec := &recorder{}
	rec.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		n := len(rec.reqs)
		rec.reqs = append(rec.reqs, recorded{r.URL.RequestURI(), r.Header.Get("Idempotency-Key"), string(b), r.Header.Get("Traceparent")})
		rec.mu.Unlock()
		if answer != nil {
			answer(n, w)
		}
	})
	return rec
}

func (r *recorder) got() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

// spooled checks a 202 answer and returns its spool ID.
func spooled(t *testing.T, resp *http.Response, body string) string {
	t.Helper()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status = %d (%s), want 202", resp.StatusCode, body)
	}
	var got struct {
		Spooled bool   `json:"spooled"`
		ID      string `json:"id"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || !got.Spooled || got.ID == "" {
		t.Fatalf("body = %q (%v), want {\"spooled\": true, \"id\": ...}", body, err)
	}
	if h := resp.Header.Get(HeaderSpoolID); h != got.ID {
		t.Fatalf("%s = %q, want the body's id %q", HeaderSpoolID, h, got.ID)
	}
	return got.ID
}

func depth(st spool.Store) int64 { return st.Stats().Total.Pending }

func TestAsyncUpstreamDownSpoolsThenDelivers(t *testing.T) {
	// The upstream answers 503 three times (the synchronous attempt and
	// two deliveries), then 200.
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		if n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "down")
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`spool_on: ["503"], backoff: {base: 1ms, max: 5ms}`), []Option{WithSpool(st)}, rec.upstream)

	resp, body := send(t, "POST", sc.url("/events?x=1"), []byte("payload"))
	id := spooled(t, resp, body)
	if strings.Contains(body, "down") {
		t.Fatalf("the upstream's 503 answer reached the app: %q", body)
	}
	poll.Until(t, 10*time.Second, "delivery", func() bool { return len(rec.got()) >= 4 && depth(st) == 0 })
	got := rec.got()
	if len(got) != 4 {
		t.Fatalf("upstream got %d requests, want 4 (1 synchronous, 3 deliveries)", len(got))
	}
	for i, r := range got {
		if r.key == "" || r.key != got[0].key {
			t.Errorf("request %d Idempotency-Key = %q, want %q on every attempt", i, r.key, got[0].key)
		}
		if r.path != "/events?x=1" || r.body != "payload" {
			t.Errorf("request %d = %s %q, want /events?x=1 \"payload\"", i, r.path, r.body)
		}
	}
	if _, _, err := st.Get(id); err != spool.ErrNotFound {
		t.Errorf("Get(%s) after delivery = %v, want ErrNotFound (acknowledged)", id, err)
	}
}

func TestAsyncConnectErrorSpools(t *testing.T) {
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`backoff: {base: 1h, max: 1h}`), []Option{WithSpool(st)}, deadUpstream(t))
	resp, body := send(t, "POST", sc.url("/e"), []byte("x"), "Idempotency-Key", "app-key")
	id := spooled(t, resp, body)
	if got := resp.Header.Get(HeaderAttempts); got != "1" {
		t.Errorf("%s = %q, want 1", HeaderAttempts, got)
	}
	m, _, err := st.Get(id)
	if err != nil {
		t.Fatalf("Get(%s) = %v", id, err)
	}
	if m.IdempotencyKey != "app-key" || m.Method != "POST" || m.Target != "/e" || string(m.Body) != "x" {
		t.Errorf("stored %+v, want POST /e body x with the app's key", m)
	}
}

// TestAsyncUpstreamDownPassesOtherAnswers: on an upstream_down route, an
// answer or failure that spool_on does not list reaches the app as the
// sync path would give it, and nothing is spooled.
func TestAsyncUpstreamDownPassesOtherAnswers(t *testing.T) {
	tests := []struct {
		name        string
		up          func(t *testing.T) *upstream
		wantStatus  int
		wantBody    string // the upstream's, or "" for a proxy-made answer
		wantOutcome string // Sidecar-Outcome; "" for the upstream's answer
	}{
		{"ok", func(t *testing.T) *upstream {
			return newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "done") })
		}, 200, "done", ""},
		{"status_not_listed", func(t *testing.T) *upstream {
			return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, "broken")
			})
		}, 500, "broken", ""},
		{"outcome_not_listed", deadUpstream, http.StatusBadGateway, "", "connect_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t, t.TempDir(), spool.FileOptions{})
			sc := startSidecarWith(t, asyncRoute(`spool_on: ["503"]`), []Option{WithSpool(st)}, tt.up(t))
			resp, body := send(t, "POST", sc.url("/e"), []byte("x"))
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("POST /e = %d %q, want %d", resp.StatusCode, body, tt.wantStatus)
			}
			if got := resp.Header.Get(HeaderOutcome); got != tt.wantOutcome {
				t.Errorf("%s = %q, want %q", HeaderOutcome, got, tt.wantOutcome)
			}
			if tt.wantBody != "" && body != tt.wantBody {
				t.Errorf("body = %q, want the upstream's %q", body, tt.wantBody)
			}
			if got := resp.Header.Get(HeaderAttempts); got != "1" {
				t.Errorf("%s = %q, want 1", HeaderAttempts, got)
			}
			if resp.Header.Get(HeaderSpoolID) != "" || depth(st) != 0 {
				t.Errorf("spooled (id %q, depth %d), want nothing spooled", resp.Header.Get(HeaderSpoolID), depth(st))
			}
		})
	}
}

func TestAsyncAlwaysDelivers(t *testing.T) {
	rec := newRecorder(t, nil)
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always`), []Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "PUT", sc.url("/a"), []byte("one"), "Connection", "X-Drop", "X-Drop", "1", "Sidecar-Debug", "1")
	id := spooled(t, resp, body)
	poll.Until(t, 10*time.Second, "delivery", func() bool { return len(rec.got()) == 1 && depth(st) == 0 })
	if r := rec.got()[0]; r.path != "/a" || r.body != "one" || r.key == "" {
		t.Errorf("delivered %+v, want /a \"one\" with an idempotency key", r)
	}
	last := rec.lastRequest()
	for _, h := range []string{"X-Drop", "Sidecar-Debug"} {
		if v := last.Header.Get(h); v != "" {
			t.Errorf("delivered request has %s: %q, want it removed", h, v)
		}
	}
	_ = id
}

func TestAsyncFIFOAcrossFailingHead(t *testing.T) {
	// The first delivery fails with Retry-After: 1; the others succeed.
	// While the head waits, the later messages must wait too.
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always`), []Option{WithSpool(st)}, rec.upstream)
	for _, p := range []string{"/1", "/2", "/3"} {
		resp, body := send(t, "POST", sc.url(p), nil)
		spooled(t, resp, body)
	}
	poll.Until(t, 10*time.Second, "delivery", func() bool { return len(rec.got()) == 4 && depth(st) == 0 })
	var paths []string
	for _, r := range rec.got() {
		paths = append(paths, r.path)
	}
	if want := []string{"/1", "/1", "/2", "/3"}; !slices.Equal(paths, want) {
		t.Errorf("delivery order = %v, want %v", paths, want)
	}
}

func TestAsyncPermanentFailureDeadLetters(t *testing.T) {
	rec := newRecorder(t, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusBadRequest) })
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, backoff: {base: 1ms, max: 1ms}`), []Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "POST", sc.url("/bad"), []byte("x"))
	id := spooled(t, resp, body)
	var dead []spool.Info
	poll.Until(t, 10*time.Second, "dead letter", func() bool {
		dead, _ = st.List("ev", spool.Dead, "", 0)
		return len(dead) == 1
	})
	if dead[0].ID != id || dead[0].Attempts != 1 || !strings.Contains(dead[0].DeadReason, "400") {
		t.Errorf("dead letter = %+v, want %s with 1 attempt and a reason naming 400", dead[0], id)
	}
	if n := len(rec.got()); n != 1 {
		t.Errorf("upstream got %d deliveries, want 1", n)
	}
}

func TestAsyncMaxAttemptsDeadLetters(t *testing.T) {
	rec := newRecorder(t, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) })
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, max_attempts: 3, backoff: {base: 1ms, max: 1ms}`), []Option{WithSpool(st)}, rec.upstream)
	resp, body := send(t, "POST", sc.url("/x"), nil)
	spooled(t, resp, body)
	var dead []spool.Info
	poll.Until(t, 10*time.Second, "dead letter", func() bool {
		dead, _ = st.List("ev", spool.Dead, "", 0)
		return len(dead) == 1
	})
	if dead[0].Attempts != 3 || len(rec.got()) != 3 {
		t.Errorf("dead after %d attempts, %d deliveries; want 3 and 3", dead[0].Attempts, len(rec.got()))
	}
}

func TestAsyncOverMaxBody(t *testing.T) {
	rec := newRecorder(t, nil)
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, max_body: 10`), []Option{WithSpool(st)}, rec.upstream)
	tests := []struct {
		name string
		body io.Reader
	}{
		{"content-length", strings.NewReader("12345678901")},
		{"chunked", io.MultiReader(strings.NewReader("123456"), strings.NewReader("78901"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", sc.url("/big"), tt.body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(HeaderOutcome) != "too_large" {
				t.Errorf("POST 11 bytes = %d %s, want 413 too_large", resp.StatusCode, resp.Header.Get(HeaderOutcome))
			}
		})
	}
	if s := st.Stats(); s.Appends != 0 || s.Total.Pending != 0 {
		t.Errorf("store after 413s: %d appends, %d pending; want nothing stored", s.Appends, s.Total.Pending)
	}
	resp, body := send(t, "POST", sc.url("/ok"), []byte("1234567890"))
	spooled(t, resp, body)
}

func TestAsyncSpoolFull(t *testing.T) {
	st := openStore(t, t.TempDir(), spool.FileOptions{MaxMessages: 2})
	// access_log: true logs at info, where the spool's change of state is.
	cfg := strings.Replace(asyncRoute(`when: always, backoff: {base: 1h, max: 1h}`), "version: 1", "version: 1\ntelemetry: {access_log: true}", 1)
	sc := startSidecarWith(t, cfg, []Option{WithSpool(st)}, deadUpstream(t))
	for i := range 2 {
		resp, body := send(t, "POST", sc.url("/m"), nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("message %d: status %d %s, want 202", i, resp.StatusCode, body)
		}
	}
	resp, body := send(t, "POST", sc.url("/m"), nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderOutcome) != "spool_full" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third message = %d %s Retry-After %q (%s), want 503 spool_full with Retry-After",
			resp.StatusCode, resp.Header.Get(HeaderOutcome), resp.Header.Get("Retry-After"), body)
	}
	send(t, "POST", sc.url("/m"), nil)
	if n := strings.Count(sc.logs.String(), "msg=\"spool full"); n != 1 {
		t.Errorf("the log has %d \"spool full\" lines after two refused messages, want 1 (a change of state):\n%s", n, sc.logs.String())
	}
}

func TestAsyncRestartDeliversStored(t *testing.T) {
	dir := t.TempDir()
	st1, err := spool.OpenFile(dir, spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc1 := startSidecarWith(t, asyncRoute(`when: always, backoff: {base: 1ms, max: 20ms}`), []Option{WithSpool(st1)}, deadUpstream(t))
	for _, p := range []string{"/1", "/2", "/3"} {
		resp, body := send(t, "POST", sc1.url(p), []byte(p))
		spooled(t, resp, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc1.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if err := st1.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}

	rec := newRecorder(t, nil)
	st2 := openStore(t, dir, spool.FileOptions{})
	if d := depth(st2); d != 3 {
		t.Fatalf("reopened store holds %d pending, want 3", d)
	}
	startSidecarWith(t, asyncRoute(`when: always, backoff: {base: 1ms, max: 20ms}`), []Option{WithSpool(st2)}, rec.upstream)
	poll.Until(t, 10*time.Second, "delivery after restart", func() bool { return len(rec.got()) == 3 && depth(st2) == 0 })
	for i, r := range rec.got() {
		if want := []string{"/1", "/2", "/3"}[i]; r.path != want || r.body != want {
			t.Errorf("delivery %d = %s %q, want %s", i, r.path, r.body, want)
		}
	}
}

func TestAsyncOrderingNoneDeliversInParallel(t *testing.T) {
	// Each delivery is held until three are in flight at once: with one
	// at a time, the first would wait out its 2s and the test would see
	// a 409 and be dead-lettered instead of delivered.
	var mu sync.Mutex
	inFlight := 0
	all := make(chan struct{})
	rec := newRecorder(t, func(n int, w http.ResponseWriter) {
		mu.Lock()
		inFlight++
		if inFlight == 3 {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(2 * time.Second):
			w.WriteHeader(http.StatusConflict) // permanent: dead-lettered
		}
	})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	sc := startSidecarWith(t, asyncRoute(`when: always, ordering: none, max_in_flight: 3`), []Option{WithSpool(st)}, rec.upstream)
	for _, p := range []string{"/1", "/2", "/3"} {
		resp, body := send(t, "POST", sc.url(p), nil)
		spooled(t, resp, body)
	}
	poll.Until(t, 10*time.Second, "deliveries", func() bool { return len(rec.got()) == 3 && depth(st) == 0 })
	if s := st.Stats(); s.Total.Dead != 0 {
		t.Errorf("%d dead letters, want 0: deliveries did not run in parallel", s.Total.Dead)
	}
}

func TestAsyncTimeoutSpools(t *testing.T) {
	// The synchronous attempt stalls past the route's timeout; the
	// delivery that follows is answered.
	up := newScripted(t, step{stall: make(chan struct{})})
	st := openStore(t, t.TempDir(), spool.FileOptions{})
	cfg := strings.Replace(asyncRoute(`backoff: {base: 1ms, max: 1ms}`), "p: {timeout: 5s}", "p: {timeout: 200ms}", 1)
	sc := startSidecarWith(t, cfg, []Option{WithSpool(st)}, up.upstream)
	resp, body := send(t, "POST", sc.url("/slow"), []byte("z"))
	spooled(t, resp, body)
	poll.Until(t, 10*time.Second, "delivery", func() bool { return up.count.Load() == 2 && depth(st) == 0 })
	up.mu.Lock()
	defer up.mu.Unlock()
	if k0, k1 := up.headers[0].Get("Idempotency-Key"), up.headers[1].Get("Idempotency-Key"); k0 == "" || k0 != k1 {
		t.Errorf("Idempotency-Key on the attempt and the delivery = %q, %q; want one key on both", k0, k1)
	}
}

// syncFailFS is the real file system whose file syncs fail while failing
// is set, like a disk that went bad for a while.
type syncFailFS struct {
	spool.OSFS
	failing atomic.Bool
}

func (f *syncFailFS) OpenFile(name string, flag int, perm fs.FileMode) (spool.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &syncFailFile{File: file, fs: f}, nil
}

type syncFailFile struct {
	spool.File
	fs *syncFailFS
}

func (f *syncFailFile) Sync() error {
	if f.fs.failing.Load() {
		return errors.New("injected: input/output error")
	}
	return f.File.Sync()
}

// TestAsyncDiskFailure: while the spool cannot make a message durable the
// app gets 503 spool_error with Retry-After, never a 202; once the disk
// works again the spool reopens itself and requests are spooled again.
func TestAsyncDiskFailure(t *testing.T) {
	ffs := &syncFailFS{}
	st := openStore(t, t.TempDir(), spool.FileOptions{FS: ffs, ReopenDelay: 10 * time.Millisecond})
	sc := startSidecarWith(t, asyncRoute(`when: always, backoff: {base: 1h, max: 1h}`), []Option{WithSpool(st)}, deadUpstream(t))
	resp, body := send(t, "POST", sc.url("/before"), []byte("a"))
	before := spooled(t, resp, body)

	ffs.failing.Store(true)
	resp, body = send(t, "POST", sc.url("/during"), []byte("b"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderOutcome) != "spool_error" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("POST while fsync fails = %d %s Retry-After %q (%s), want 503 spool_error with Retry-After",
			resp.StatusCode, resp.Header.Get(HeaderOutcome), resp.Header.Get("Retry-After"), body)
	}
	ffs.failing.Store(false)
	var after string
	poll.Until(t, 10*time.Second, "a 202 after the spool reopened", func() bool {
		resp, body := send(t, "POST", sc.url("/after"), []byte("c"))
		if resp.StatusCode == http.StatusAccepted {
			after = spooled(t, resp, body)
			return true
		}
		return false
	})
	for _, id := range []string{before, after} {
		if _, _, err := st.Get(id); err != nil {
			t.Errorf("Get(%s) after the reopen = %v, want it stored", id, err)
		}
	}
	if s := st.Stats(); s.Total.Pending != 2 || s.Reopens == 0 {
		t.Errorf("store after the failure: %+v, want 2 pending (the failed request not stored) and a reopen", s)
	}
}

// TestAsyncStalledDisk: while the spool's disk does not answer, an async
// request gets 503 spool_error with Retry-After once the route's
// AppendWait has passed, not never; the message it carried may still be stored, and
// is delivered once the disk answers.
func TestAsyncStalledDisk(t *testing.T) {
	sfs := &spooltest.StallFS{}
	// The sidecar's command gives each async route's AppendWait the
	// route's timeout (cmd/sidecar tests that).
	st := openStore(t, t.TempDir(), spool.FileOptions{FS: sfs, Routes: map[string]spool.Limits{"ev": {AppendWait: 300 * time.Millisecond}}})
	rec := newRecorder(t, nil)
	sc := startSidecarWith(t, asyncRoute(`when: always`), []Option{WithSpool(st)}, rec.upstream)
	stalled, release := sfs.Stall()
	defer release()
	resp, body := send(t, "POST", sc.url("/stalled"), []byte("s"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderOutcome) != "spool_error" || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, "may still be stored") {
		t.Fatalf("POST while the disk stalls = %d %s Retry-After %q (%s), want 503 spool_error with Retry-After saying it may still be stored",
			resp.StatusCode, resp.Header.Get(HeaderOutcome), resp.Header.Get("Retry-After"), body)
	}
	select {
	case <-stalled:
	default:
		t.Fatal("the request was answered without reaching the disk")
	}
	if got := rec.got(); len(got) != 0 {
		t.Fatalf("delivered while the disk stalls: %+v", got)
	}
	release()
	poll.Until(t, 10*time.Second, "delivery once the disk answers", func() bool { return len(rec.got()) == 1 && depth(st) == 0 })
	if r := rec.got()[0]; r.path != "/stalled" || r.body != "s" {
		t.Errorf("delivered %+v, want the unconfirmed POST /stalled", r)
	}
	resp, body = send(t, "POST", sc.url("/after"), []byte("a"))
	spooled(t, resp, body)
}

// TestShutdownWithDelivererOnStalledDisk: a deliverer whose Ack waits
// for a disk that stalls does not hold Shutdown past its context and
// cancelWait: Shutdown says so and returns; the deliverer is left to the
// disk, and its Ack is committed once the disk answers.
func TestShutdownWithDelivererOnStalledDisk(t *testing.T) {
	sfs := &spooltest.StallFS{}
	st := openStore(t, t.TempDir(), spool.FileOptions{FS: sfs})
	reached, answer := make(chan struct{}, 1), make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case reached <- struct{}{}:
		default:
		}
		select {
		case <-answer:
		case <-r.Context().Done():
		}
	})
	sc := startSidecarWith(t, asyncRoute(`when: always`), []Option{WithSpool(st)}, up)
	resp, body := send(t, "POST", sc.url("/e"), []byte("x"))
	spooled(t, resp, body)
	<-reached // the deliverer has the message
	stalled, release := sfs.Stall()
	defer release()
	close(answer) // the upstream answers 200: the deliverer acks it
	<-stalled     // and its Ack waits for the disk

	const bound = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	err := sc.srv.Shutdown(ctx)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "waits for the spool") {
		t.Errorf("Shutdown(%v) with an Ack on a stalled disk = %v, want an error saying a deliverer still waits for the spool", bound, err)
	}
	if limit := bound + cancelWait + 5*time.Second; took > limit {
		t.Errorf("Shutdown(%v) with an Ack on a stalled disk took %v, want less than %v", bound, took, limit)
	}
	release()
	poll.Until(t, 10*time.Second, "the Ack committed once the disk answers", func() bool { return depth(st) == 0 })
}

// TestSpooledAnswer: the 202's body is the JSON encoding/json writes,
// for a spool's hex IDs and for any other, and its Content-Length is the
// body's.
func TestSpooledAnswer(t *testing.T) {
	for _, id := range []string{"0188d2a3b4c5d6e7f8a9b0c1", "a-b_C", "", `q"uote\</>&`, "é"} {
		want, _ := json.Marshal(struct {
			Spooled bool   `json:"spooled"`
			ID      string `json:"id"`
		}{true, id})
		w := httptest.NewRecorder()
		writeSpooled(w, id, 0)
		if got := w.Body.String(); got != string(want)+"\n" {
			t.Errorf("writeSpooled(%q) wrote %q, want %q", id, got, want)
		}
		if got, want := w.Header().Get("Content-Length"), strconv.Itoa(w.Body.Len()); got != want {
			t.Errorf("writeSpooled(%q): Content-Length %s, want %s", id, got, want)
		}
		if w.Code != http.StatusAccepted || w.Header().Get(HeaderSpoolID) != id {
			t.Errorf("writeSpooled(%q): status %d, %s %q", id, w.Code, HeaderSpoolID, w.Header().Get(HeaderSpoolID))
		}
	}
}

// TestPooledMessageHeaders: a message's header map is pooled, and the
// next request's message holds only its own fields; releasing a message
// leaves the request it was made from untouched.
func TestPooledMessageHeaders(t *testing.T) {
	rt := &Route{Name: "ev", async: &asyncPolicy{idemHeader: "Idempotency-Key"}}
	first := httptest.NewRequest("POST", "/a", nil)
	first.RemoteAddr = "127.0.0.1:5000"
	first.Header.Set("X-First", "1")
	first.Header.Set("Idempotency-Key", "k1")
	m, _ := newMessage(first, rt, nil)
	if got := m.Header.Get("X-First"); got != "1" || m.IdempotencyKey != "k1" {
		t.Fatalf("first message: X-First %q, key %q", got, m.IdempotencyKey)
	}
	m.release()
	if got := first.Header.Get("X-First"); got != "1" {
		t.Errorf("release changed the request's header: X-First %q", got)
	}
	for range 10 { // the pool may hand out another message; try a few
		second := httptest.NewRequest("POST", "/b", nil)
		second.RemoteAddr = "127.0.0.2:5000"
		m, _ := newMessage(second, rt, nil)
		if _, ok := m.Header["X-First"]; ok {
			t.Fatalf("second message holds the first's field: %v", m.Header)
		}
		if m.IdempotencyKey == "k1" || m.Header.Get("Idempotency-Key") != m.IdempotencyKey {
			t.Fatalf("second message's key %q, header %q", m.IdempotencyKey, m.Header.Get("Idempotency-Key"))
		}
		if got := m.Header.Get("X-Forwarded-For"); got != "127.0.0.2" {
			t.Fatalf("second message's X-Forwarded-For %q", got)
		}
		m.release()
	}
}

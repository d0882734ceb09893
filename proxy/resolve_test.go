package proxy

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/policy"
)

// dnsServer is a DNS responder on 127.0.0.1 (UDP) whose answers a test
// changes: A and AAAA records of the names it was given, NXDOMAIN for
// any other name, and SERVFAIL for every query while failing.
type dnsServer struct {
	pc   net.PacketConn
	done chan struct{}

	mu      sync.Mutex
	answers map[string][]netip.Addr // by fully qualified name
	fail    bool
}

func newDNSServer(t *testing.T) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{pc: pc, done: make(chan struct{}), answers: map[string][]netip.Addr{}}
	go d.serve()
	t.Cleanup(func() {
		pc.Close()
		<-d.done
	})
	return d
}

// set makes name resolve to addrs (none: an answer without address).
func (d *dnsServer) set(name string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d.answers[name+"."] = as
	d.fail = false
}

// failing makes every query fail (SERVFAIL) until the next set.
func (d *dnsServer) failing() {
	d.mu.Lock()
	d.fail = true
	d.mu.Unlock()
}

func (d *dnsServer) serve() {
	defer close(d.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := d.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if out := d.answer(buf[:n]); out != nil {
			d.pc.WriteTo(out, from)
		}
	}
}

func (d *dnsServer) answer(msg []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	d.mu.Lock()
	fail := d.fail
	addrs, known := d.answers[q.Name.String()]
	d.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	switch {
	case fail:
		rh.RCode = dnsmessage.RCodeServerFailure
	case !known:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	for _, a := range addrs {
		if rh.RCode != dnsmessage.RCodeSuccess {
			break
		}
		rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			b.AResource(rr, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// resolver returns a Go resolver that asks d, whatever resolv.conf names.
func (d *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "udp", d.pc.LocalAddr().String())
	}}
}

// addrUpstream is an HTTP server on one loopback address that answers with
// that address, records the Host of each request and counts its open
// connections. A request to /slow waits until release.
type addrUpstream struct {
	*httptest.Server
	ip      string
	count   atomic.Int64
	status  atomic.Int32 // the answer's status; 0: 200
	host    atomic.Pointer[string]
	conns   atomic.Int64  // open connections
	arrived chan struct{} // a /slow request arrived
	release chan struct{} // closed to let /slow requests answer
}

// listenSamePort listens on one port of each loopback address of ips
// (Linux routes all of 127/8 to the loopback interface).
func listenSamePort(t *testing.T, ips ...string) (string, []net.Listener) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		lns := []net.Listener{first}
		for _, ip := range ips[1:] {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == len(ips) {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return "", nil
}

// startAddrUpstreams starts one addrUpstream on each of ips, all on one
// port, and returns the port.
func startAddrUpstreams(t *testing.T, ips ...string) (string, map[string]*addrUpstream) {
	t.Helper()
	port, lns := listenSamePort(t, ips...)
	ups := map[string]*addrUpstream{}
	for i, ip := range ips {
		u := &addrUpstream{ip: ip, arrived: make(chan struct{}, 1), release: make(chan struct{})}
		u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.count.Add(1)
			h := r.Host
			u.host.Store(&h)
			io.Copy(io.Discard, r.Body)
			if r.URL.Path == "/slow" {
				u.arrived <- struct{}{}
				<-u.release
			}
			if s := u.status.Load(); s != 0 {
				w.WriteHeader(int(s))
			}
			io.WriteString(w, ip)
		}))
		u.Listener.Close()
		u.Listener = lns[i]
		u.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				u.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				u.conns.Add(-1)
			}
		}
		u.Start()
		t.Cleanup(func() {
			select {
			case <-u.release:
			default:
				close(u.release)
			}
			u.Close()
		})
		ups[ip] = u
	}
	return port, ups
}

// dnsConfig is one listener "app" routing everything to upstream inv,
// whose endpoint http://inv.test:PORT is resolved every hour (tests
// resolve with Pool.Resolve), under policy p.
func dnsConfig(port, policy string) string {
	return `
version: 1
upstreams:
  inv: {endpoints: ["http://inv.test:` + port + `"], resolve: {every: 1h}}
policies:
  p: ` + policy + `
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: inv, policy: p}
`
}

// resolveNow runs the pool's resolution now.
func resolveNow(t *testing.T, sc *sidecar) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return sc.srv.Snapshot().Pools["inv"].Resolve(ctx)
}

// liveURLs returns the URLs of the endpoints route all sees now.
func liveURLs(sc *sidecar) []string {
	var out []string
	for _, e := range sc.srv.Snapshot().Route("all").EndpointStats() {
		out = append(out, e.URL)
	}
	return out
}

// getFrom sends n GETs and counts the answers by the address that
// answered.
func getFrom(t *testing.T, sc *sidecar, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		resp, body := get(t, sc.url("/x"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /x = %d %q, want 200", resp.StatusCode, body)
		}
		got[body]++
	}
	return got
}

// TestResolveFollowsAnswers: each address of the endpoint's name becomes an
// endpoint, traffic goes where the current answer says, the upstream gets
// the name as Host, and an answer that changes moves the traffic.
func TestResolveFollowsAnswers(t *testing.T) {
	port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1")
	sc := startSidecarBuilt(t, dnsConfig(port, "{}"), []BuildOption{WithResolver(dns.resolver())}, nil)

	if got, want := liveURLs(sc), []string{"http://127.0.0.1:" + port}; !slices.Equal(got, want) {
		t.Fatalf("endpoints after Build = %v, want %v", got, want)
	}
	if got := getFrom(t, sc, 4); got["127.0.0.1"] != 4 {
		t.Fatalf("answers by address = %v, want all 4 from 127.0.0.1", got)
	}
	if h := *ups["127.0.0.1"].host.Load(); h != "inv.test:"+port {
		t.Errorf("upstream saw Host %q, want the endpoint's name inv.test:%s", h, port)
	}
	stats := sc.srv.Snapshot().Route("all").EndpointStats()
	if stats[0].Name != "inv.test:"+port {
		t.Errorf("EndpointStats()[0].Name = %q, want inv.test:%s", stats[0].Name, port)
	}

	dns.set("inv.test", "127.0.0.3", "127.0.0.2")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	if got, want := liveURLs(sc), []string{"http://127.0.0.2:" + port, "http://127.0.0.3:" + port}; !slices.Equal(got, want) {
		t.Fatalf("endpoints after the answer changed = %v, want %v", got, want)
	}
	before := ups["127.0.0.1"].count.Load()
	got := getFrom(t, sc, 10)
	if got["127.0.0.2"] != 5 || got["127.0.0.3"] != 5 {
		t.Errorf("answers by address = %v, want 5 from each of 127.0.0.2 and 127.0.0.3 (round robin)", got)
	}
	if n := ups["127.0.0.1"].count.Load() - before; n != 0 {
		t.Errorf("127.0.0.1, no longer in the answer, got %d requests, want 0", n)
	}
}

// TestResolveKeepsLastAnswer: a failed lookup, and an answer without
// address, keep the endpoints of the last good answer; both are counted.
func TestResolveKeepsLastAnswer(t *testing.T) {
	port, _ := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1", "127.0.0.2")
	o := startObservedBuilt(t, 1, dnsConfig(port, "{}"), []BuildOption{WithResolver(dns.resolver())}, nil)
	sc := o.sidecar
	want := []string{"http://127.0.0.1:" + port, "http://127.0.0.2:" + port}

	dns.failing()
	if err := resolveNow(t, sc); err == nil {
		t.Fatal("Resolve with the DNS server failing = nil, want an error")
	}
	if got := liveURLs(sc); !slices.Equal(got, want) {
		t.Fatalf("endpoints after a failed lookup = %v, want the last answer's %v", got, want)
	}
	dns.set("inv.test") // an answer without address
	if err := resolveNow(t, sc); err == nil {
		t.Fatal("Resolve of a name without address = nil, want an error")
	}
	if got := liveURLs(sc); !slices.Equal(got, want) {
		t.Fatalf("endpoints after an empty answer = %v, want the last answer's %v", got, want)
	}
	if got := getFrom(t, sc, 4); got["127.0.0.1"] != 2 || got["127.0.0.2"] != 2 {
		t.Errorf("answers by address = %v, want 2 from each", got)
	}
	if !strings.Contains(sc.logs.String(), "keeps the addresses of the last answer") {
		t.Errorf("logs = %q, want the failed resolution logged", sc.logs.String())
	}
	rm := o.collect(t)
	wantInt(t, rm, "sidecar.dns.resolutions", map[string]string{"upstream": "inv", "result": "ok"}, 1)
	wantInt(t, rm, "sidecar.dns.resolutions", map[string]string{"upstream": "inv", "result": "error"}, 1)
	wantInt(t, rm, "sidecar.dns.resolutions", map[string]string{"upstream": "inv", "result": "empty"}, 1)
	wantInt(t, rm, "sidecar.upstream.endpoints", map[string]string{"upstream": "inv"}, 2)
}

// TestResolveDrainsVanishedAddress: an address that leaves the answer gets
// no new request, its request in flight finishes, and then its idle
// connections are closed.
func TestResolveDrainsVanishedAddress(t *testing.T) {
	port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.2")
	sc := startSidecarBuilt(t, dnsConfig(port, "{}"), []BuildOption{WithResolver(dns.resolver())}, nil)
	old := ups["127.0.0.2"]

	slow := make(chan string, 1)
	go func() {
		resp, err := http.Get(sc.url("/slow"))
		if err != nil {
			slow <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		slow <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	select {
	case <-old.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach 127.0.0.2")
	}

	dns.set("inv.test", "127.0.0.1")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	if got := getFrom(t, sc, 4); got["127.0.0.1"] != 4 {
		t.Errorf("answers by address after 127.0.0.2 vanished = %v, want all 4 from 127.0.0.1", got)
	}
	if n := old.count.Load(); n != 1 {
		t.Errorf("127.0.0.2 got %d requests, want only the slow one", n)
	}
	if err := resolveNow(t, sc); err != nil { // a drain pass: the slow request is still in flight
		t.Fatalf("Resolve = %v", err)
	}
	if n := old.conns.Load(); n != 1 {
		t.Fatalf("127.0.0.2 has %d connections open while its request is in flight, want 1", n)
	}

	close(old.release)
	select {
	case got := <-slow:
		if got != "200 127.0.0.2" {
			t.Fatalf("the request in flight on the vanished address got %q, want 200 127.0.0.2", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request in flight on the vanished address did not finish")
	}
	// Its connection is idle in the pool now; the drain closes it.
	poll.Until(t, 10*time.Second, "the idle connection to 127.0.0.2 closed", func() bool {
		if err := resolveNow(t, sc); err != nil {
			t.Fatalf("Resolve = %v", err)
		}
		return old.conns.Load() == 0
	})
}

// TestResolveBreakerPerAddress: each address has its own breaker: one
// address failing trips its breaker and the other keeps serving; the
// breaker of an address that stays survives a new answer and a reload.
func TestResolveBreakerPerAddress(t *testing.T) {
	port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	ups["127.0.0.2"].status.Store(http.StatusServiceUnavailable)
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1", "127.0.0.2")
	cfg := dnsConfig(port, "{circuit_breaker: {consecutive_failures: 2, open_for: 1h}}")
	sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver())}, nil)

	failures := 0
	for range 8 {
		resp, _ := get(t, sc.url("/x"))
		if resp.StatusCode == http.StatusServiceUnavailable {
			failures++
		}
	}
	if failures != 2 {
		t.Errorf("503 answers = %d, want 2 (then 127.0.0.2's breaker is open)", failures)
	}
	breakerStates := func() map[string]string {
		out := map[string]string{}
		for _, e := range sc.srv.Snapshot().Route("all").EndpointStats() {
			out[e.URL] = e.Breaker.State
		}
		return out
	}
	a1, a2, a3 := "http://127.0.0.1:"+port, "http://127.0.0.2:"+port, "http://127.0.0.3:"+port
	if got := breakerStates(); got[a1] != "closed" || got[a2] != "open" {
		t.Fatalf("breakers = %v, want 127.0.0.1 closed and 127.0.0.2 open", got)
	}
	if got := getFrom(t, sc, 4); got["127.0.0.1"] != 4 {
		t.Errorf("answers by address = %v, want all 4 from 127.0.0.1", got)
	}

	dns.set("inv.test", "127.0.0.1", "127.0.0.2", "127.0.0.3")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	if got := breakerStates(); got[a2] != "open" || got[a3] != "closed" {
		t.Fatalf("breakers after 127.0.0.3 joined = %v, want 127.0.0.2 still open, 127.0.0.3 closed", got)
	}

	// A reload that changes the policy but not the upstream nor the
	// breaker settings keeps the pool, its endpoints and their breakers.
	prev := sc.srv.Snapshot()
	next := buildFrom(t, strings.Replace(cfg, "{circuit_breaker:", "{timeout: 5s, circuit_breaker:", 1), prev)
	if err := sc.srv.Reload(next, time.Second); err != nil {
		t.Fatalf("Reload = %v", err)
	}
	if next.Pools["inv"] != prev.Pools["inv"] {
		t.Fatal("the reload rebuilt the pool of an unchanged upstream")
	}
	if got := breakerStates(); len(got) != 3 || got[a2] != "open" || got[a1] != "closed" {
		t.Errorf("breakers after the reload = %v, want the three endpoints, 127.0.0.2 still open", got)
	}
}

// TestResolveFailsAtStart: a name that does not resolve when the pool is
// built is dialed as it is, until an answer replaces it.
func TestResolveFailsAtStart(t *testing.T) {
	port, _ := startAddrUpstreams(t, "127.0.0.2")
	dns := newDNSServer(t)
	dns.failing()
	sc := startSidecarBuilt(t, dnsConfig(port, "{}"), []BuildOption{WithResolver(dns.resolver())}, nil)
	if got, want := liveURLs(sc), []string{"http://inv.test:" + port}; !slices.Equal(got, want) {
		t.Fatalf("endpoints after a failed first lookup = %v, want the name as configured %v", got, want)
	}
	if !strings.Contains(sc.logs.String(), "DNS resolution failed at start") {
		t.Errorf("logs = %q, want the failed first lookup logged", sc.logs.String())
	}
	dns.set("inv.test", "127.0.0.2")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	if got, want := liveURLs(sc), []string{"http://127.0.0.2:" + port}; !slices.Equal(got, want) {
		t.Fatalf("endpoints once the name resolves = %v, want %v", got, want)
	}
	if got := getFrom(t, sc, 2); got["127.0.0.2"] != 2 {
		t.Errorf("answers by address = %v, want both from 127.0.0.2", got)
	}
}

// TestResolveTLSVerifiesName: a resolved https endpoint is dialed at its
// address, and its certificate is verified against the DNS name, not the
// address (the certificate does not name 127.0.0.2).
func TestResolveTLSVerifiesName(t *testing.T) {
	port, lns := listenSamePort(t, "127.0.0.2")
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.ServerName+" "+r.Host)
	}))
	up.Listener.Close()
	up.Listener = lns[0]
	up.StartTLS() // a certificate for example.com, 127.0.0.1 and ::1
	t.Cleanup(up.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	der := up.TLS.Certificates[0].Certificate[0]
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	dns := newDNSServer(t)
	dns.set("example.com", "127.0.0.2")
	cfg := strings.Replace(dnsConfig(port, "{}"), `{endpoints: ["http://inv.test:`+port+`"]`,
		`{tls: {ca_file: "`+ca+`"}, endpoints: ["https://example.com:`+port+`"]`, 1)
	sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver())}, nil)
	if got, want := liveURLs(sc), []string{"https://127.0.0.2:" + port}; !slices.Equal(got, want) {
		t.Fatalf("endpoints = %v, want %v", got, want)
	}
	resp, body := get(t, sc.url("/"))
	if want := "example.com example.com:" + port; resp.StatusCode != http.StatusOK || body != want {
		t.Fatalf("GET / = %d %q, want 200 %q (SNI and Host the name)", resp.StatusCode, body, want)
	}
}

// TestResolveEvery: the pool's resolver looks the names up again every
// resolve.every on its own (1s, the least), and stops with the pool when a
// reload replaces the upstream.
func TestResolveEvery(t *testing.T) {
	port, _ := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1")
	cfg := strings.Replace(dnsConfig(port, "{}"), "every: 1h", "every: 1s", 1)
	sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver())}, nil)
	dns.set("inv.test", "127.0.0.2")
	poll.Until(t, 10*time.Second, "the endpoints to follow the new answer", func() bool {
		got := liveURLs(sc)
		return len(got) == 1 && got[0] == "http://127.0.0.2:"+port
	})

	// A reload that changes the upstream makes a new pool, and the old
	// one's resolver stops.
	prev := sc.srv.Snapshot()
	next := buildFrom(t, strings.Replace(cfg, "every: 1s", "every: 2s", 1), prev)
	if err := sc.srv.Reload(next, time.Second); err != nil {
		t.Fatalf("Reload = %v", err)
	}
	old := prev.Pools["inv"]
	if next.Pools["inv"] == old {
		t.Fatal("the reload kept the pool of a changed upstream")
	}
	dns.set("inv.test", "127.0.0.1")
	if err := old.Resolve(t.Context()); err != nil {
		t.Fatalf("Resolve on the replaced pool = %v", err)
	}
	var got []string
	for _, ep := range old.endpoints().list {
		got = append(got, ep.key)
	}
	if want := []string{"http://127.0.0.2:" + port}; !slices.Equal(got, want) {
		t.Errorf("the replaced pool's endpoints after a new answer = %v, want them frozen at %v", got, want)
	}
}

// startResolvedChecked starts a sidecar whose upstream inv.test:port
// resolves to 127.0.0.1 and 127.0.0.2 and is health checked (unhealthy
// after 2 failed checks, healthy after 1 passed) on a fake clock; tick(n)
// runs one check interval of n checkers.
func startResolvedChecked(t *testing.T, port string) (*dnsServer, *sidecar, func(checkers int)) {
	t.Helper()
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1", "127.0.0.2")
	clock := newFakeClock()
	cfg := strings.Replace(dnsConfig(port, "{}"), "resolve: {every: 1h}",
		"resolve: {every: 1h}, health_check: {path: /healthz, interval: 10s, timeout: 5s, healthy: 1, unhealthy: 2}", 1)
	sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver()), WithClock(clock)}, nil)
	tick := func(checkers int) {
		t.Helper()
		clock.waitArmed(t, checkers)
		clock.Advance(12 * time.Second) // past interval + 15%: each checker fires once
		clock.waitArmed(t, checkers)    // and has checked, and armed its timer again
	}
	return dns, sc, tick
}

// TestResolveWithHealthChecks: every address of a resolved name is health
// checked on its own, with the name as Host and over its own connections;
// an address that joins the answers gets a checker before it takes
// traffic, and one that leaves them has its checker stopped.
func TestResolveWithHealthChecks(t *testing.T) {
	port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	dns, sc, tick := startResolvedChecked(t, port)
	skipped := func() map[string]string {
		out := map[string]string{}
		for _, e := range endpointStats(sc, "all") {
			out[e.URL] = e.Skipped
		}
		return out
	}
	url := func(ip string) string { return "http://" + ip + ":" + port }

	ups["127.0.0.2"].status.Store(http.StatusServiceUnavailable)
	tick(2)
	tick(2)
	if got := skipped(); got[url("127.0.0.2")] != "unhealthy" || got[url("127.0.0.1")] != "" {
		t.Fatalf("after two failed checks of 127.0.0.2: skipped = %v, want only it, as unhealthy", got)
	}
	if h := *ups["127.0.0.2"].host.Load(); h != "inv.test:"+port {
		t.Errorf("the health check of 127.0.0.2 sent Host %q, want the name inv.test:%s", h, port)
	}
	before := ups["127.0.0.2"].count.Load()
	if got := getFrom(t, sc, 6); got["127.0.0.1"] != 6 {
		t.Errorf("answers by address = %v, want all 6 from the healthy 127.0.0.1", got)
	}
	if n := ups["127.0.0.2"].count.Load() - before; n != 0 {
		t.Errorf("the unhealthy 127.0.0.2 got %d requests, want 0", n)
	}

	// 127.0.0.3 joins: its checker starts with it (three armed timers).
	dns.set("inv.test", "127.0.0.1", "127.0.0.2", "127.0.0.3")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	checks3 := ups["127.0.0.3"].count.Load()
	tick(3)
	if n := ups["127.0.0.3"].count.Load() - checks3; n != 1 {
		t.Errorf("127.0.0.3 saw %d requests in one check interval, want its one health check", n)
	}
	// Round robin over three, the unhealthy one's turns going to the
	// next: 127.0.0.3 answers, 127.0.0.2 never.
	if got := getFrom(t, sc, 6); got["127.0.0.3"] == 0 || got["127.0.0.2"] != 0 {
		t.Errorf("answers by address = %v, want some from the new 127.0.0.3, none from the unhealthy 127.0.0.2", got)
	}

	// 127.0.0.2 leaves: its checker stops (two armed timers again).
	dns.set("inv.test", "127.0.0.1", "127.0.0.3")
	if err := resolveNow(t, sc); err != nil {
		t.Fatalf("Resolve = %v", err)
	}
	checks2 := ups["127.0.0.2"].count.Load()
	tick(2)
	if n := ups["127.0.0.2"].count.Load() - checks2; n != 0 {
		t.Errorf("127.0.0.2, gone from the answers, saw %d health checks, want 0", n)
	}
}

// TestResolveAddressBackWhileDraining: an unhealthy address that leaves
// the answers while a request is still in flight on it, and comes back
// before that request ends, is the same endpoint again (its breaker and
// connections go on), with a checker of its own that starts it healthy
// ("unchecked") and takes it out again only by its own checks; and the
// admin API may read the endpoints' health all the while (run with
// -race: the new checker's state replaces the old one's under readers).
func TestResolveAddressBackWhileDraining(t *testing.T) {
	port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
	dns, sc, tick := startResolvedChecked(t, port)
	pool := sc.srv.Snapshot().Pools["inv"]
	addr2 := "http://127.0.0.2:" + port
	endpoint := func() (*Endpoint, EndpointState) {
		for i, ep := range pool.endpoints().list {
			if ep.key == addr2 {
				return ep, pool.EndpointStates()[i]
			}
		}
		return nil, EndpointState{}
	}

	// One slow request on each address (round robin), held until the end.
	var slow sync.WaitGroup
	for range 2 {
		slow.Add(1)
		go func() {
			defer slow.Done()
			if resp, err := http.Get(sc.url("/slow")); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	defer slow.Wait()
	defer close(ups["127.0.0.1"].release)
	defer close(ups["127.0.0.2"].release)
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		select {
		case <-ups[ip].arrived:
		case <-time.After(10 * time.Second):
			t.Fatalf("the slow request never reached %s", ip)
		}
	}

	ups["127.0.0.2"].status.Store(http.StatusServiceUnavailable)
	tick(2)
	tick(2)
	ep, st := endpoint()
	if ep == nil || st.Health == nil || st.Health.State != "unhealthy" {
		t.Fatalf("after two failed checks, 127.0.0.2's state = %+v, want unhealthy", st.Health)
	}

	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() { // the admin API, polling
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			pool.EndpointStates()
			sc.srv.Snapshot().Route("all").EndpointStats()
		}
	}()
	for i := range 5 {
		dns.set("inv.test", "127.0.0.1")
		if err := resolveNow(t, sc); err != nil {
			t.Fatalf("Resolve = %v", err)
		}
		dns.set("inv.test", "127.0.0.1", "127.0.0.2")
		if err := resolveNow(t, sc); err != nil {
			t.Fatalf("Resolve = %v", err)
		}
		back, st := endpoint()
		if back != ep {
			t.Fatalf("round %d: 127.0.0.2, back while its request is in flight, is a new endpoint; want the one being drained", i)
		}
		if st.Health == nil || st.Health.State != "unchecked" || back.down.Load()&downUnhealthy != 0 {
			t.Fatalf("round %d: 127.0.0.2 back: health %+v, down %b; want unchecked and taking traffic", i, st.Health, back.down.Load())
		}
	}
	close(stop)
	readers.Wait()

	// Its own checker takes it out again: still failing, after two checks.
	tick(2)
	tick(2)
	if _, st := endpoint(); st.Health == nil || st.Health.State != "unhealthy" {
		t.Errorf("127.0.0.2 back, after two failed checks: %+v, want unhealthy", st.Health)
	}
}

// inBreakerSet reports whether the snapshot's breaker set keeps a breaker
// of endpoint, of any settings.
func inBreakerSet(snap *Snapshot, endpoint string) bool {
	found := false
	snap.breakers.Range(func(ep string, _ policy.BreakerSettings, _ *policy.Breaker) bool {
		found = ep == endpoint
		return !found
	})
	return found
}

// TestResolveBreakerSharedAddress: an address that leaves one upstream's
// DNS answers keeps its breaker while another upstream still has an
// endpoint at that address, configured as it is or resolved from a name
// of its own: the breaker stays open, across a reload too. Once no
// upstream has the address, its breaker is dropped.
func TestResolveBreakerSharedAddress(t *testing.T) {
	tests := []struct {
		name  string
		fixed string // upstream fixed's config
	}{
		{"configured address", `{endpoints: ["http://127.0.0.2:PORT"]}`},
		{"resolved name", `{endpoints: ["http://fix.test:PORT"], resolve: {every: 1h}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, ups := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
			ups["127.0.0.2"].status.Store(http.StatusServiceUnavailable)
			dns := newDNSServer(t)
			dns.set("inv.test", "127.0.0.1", "127.0.0.2")
			dns.set("fix.test", "127.0.0.2")
			cfg := strings.ReplaceAll(`
version: 1
upstreams:
  inv: {endpoints: ["http://inv.test:PORT"], resolve: {every: 1h}}
  fixed: `+tt.fixed+`
policies:
  p: {circuit_breaker: {consecutive_failures: 2, open_for: 1h}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: fixed, match: {path_prefix: /fixed}, upstream: fixed, policy: p}
      - {name: all, match: {path_prefix: /}, upstream: inv, policy: p}
`, "PORT", port)
			sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver())}, nil)
			addr2 := "http://127.0.0.2:" + port
			fixedState := func() string {
				st := sc.srv.Snapshot().Route("fixed").EndpointStats()
				if len(st) != 1 || st[0].URL != addr2 || st[0].Breaker == nil {
					t.Fatalf("route fixed's endpoints = %+v, want %s with a breaker", st, addr2)
				}
				return st[0].Breaker.State
			}
			wantOpen := func(when string) {
				t.Helper()
				if got := fixedState(); got != "open" {
					t.Fatalf("%s: the breaker of %s = %s, want open", when, addr2, got)
				}
				before := ups["127.0.0.2"].count.Load()
				resp, _ := get(t, sc.url("/fixed/x"))
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderOutcome) != "breaker_open" {
					t.Errorf("%s: GET /fixed/x = %d %s=%q, want 503 breaker_open", when, resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome))
				}
				if n := ups["127.0.0.2"].count.Load() - before; n != 0 {
					t.Errorf("%s: 127.0.0.2 got %d requests, want none (its breaker is open)", when, n)
				}
			}

			for range 2 {
				get(t, sc.url("/fixed/x"))
			}
			wantOpen("after two failures")

			// 127.0.0.2 leaves inv's answers and is drained at once (no
			// request in flight): fixed still has it.
			dns.set("inv.test", "127.0.0.1")
			if err := resolveNow(t, sc); err != nil {
				t.Fatalf("Resolve = %v", err)
			}
			if got, want := liveURLs(sc), []string{"http://127.0.0.1:" + port}; !slices.Equal(got, want) {
				t.Fatalf("inv's endpoints = %v, want %v", got, want)
			}
			if !inBreakerSet(sc.srv.Snapshot(), addr2) {
				t.Errorf("the breaker set dropped the breaker of %s, which upstream fixed still has", addr2)
			}
			wantOpen("after 127.0.0.2 left inv")

			// A reload takes the routes' breakers from the set again.
			next := buildFrom(t, cfg, sc.srv.Snapshot())
			if err := sc.srv.Reload(next, time.Second); err != nil {
				t.Fatalf("Reload = %v", err)
			}
			wantOpen("after a reload")

			// A reload without upstream fixed: no upstream has 127.0.0.2
			// any more, and its breaker leaves the set.
			alone := strings.Replace(strings.Replace(cfg, "  fixed: "+strings.ReplaceAll(tt.fixed, "PORT", port)+"\n", "", 1),
				"      - {name: fixed, match: {path_prefix: /fixed}, upstream: fixed, policy: p}\n", "", 1)
			next = buildFrom(t, alone, sc.srv.Snapshot())
			if err := sc.srv.Reload(next, time.Second); err != nil {
				t.Fatalf("Reload = %v", err)
			}
			if inBreakerSet(next, addr2) {
				t.Errorf("the breaker set keeps the breaker of %s, which no upstream has any more", addr2)
			}
		})
	}
}

// TestResolveStaleSetBreakers: a request that read the endpoint set
// before an answer changed it gets a working breaker for each of that
// set's endpoints, and asking for them does not bring a drained address's
// breaker back into the breaker set: neither when the route's breakers
// have moved on to the newer set, nor when they are older still. (The
// race of such a request with the resolver cannot be arranged from
// outside, so the test hands the old set to the route's breakers itself.)
func TestResolveStaleSetBreakers(t *testing.T) {
	port, _ := startAddrUpstreams(t, "127.0.0.1", "127.0.0.2")
	dns := newDNSServer(t)
	dns.set("inv.test", "127.0.0.1", "127.0.0.2")
	cfg := dnsConfig(port, "{circuit_breaker: {consecutive_failures: 2, open_for: 1h}}")
	sc := startSidecarBuilt(t, cfg, []BuildOption{WithResolver(dns.resolver())}, nil)
	rt := sc.srv.Snapshot().Route("all")
	addr2 := "http://127.0.0.2:" + port
	resolveTo := func(addrs ...string) {
		t.Helper()
		dns.set("inv.test", addrs...)
		if err := resolveNow(t, sc); err != nil {
			t.Fatalf("Resolve = %v", err)
		}
	}
	// ofStale asks the route's breakers for those of stale and checks
	// that each works and that addr2 stays out of the breaker set.
	ofStale := func(when string, stale *endpointSet) {
		t.Helper()
		brs := rt.pol.breakers.of(stale)
		if len(brs) != len(stale.list) {
			t.Fatalf("%s: %d breakers for %d endpoints", when, len(brs), len(stale.list))
		}
		for i, b := range brs {
			ticket, err := b.Allow()
			if err != nil {
				t.Fatalf("%s: the breaker of %s refused: %v, want a closed one", when, stale.list[i].key, err)
			}
			ticket.Done(policy.BreakerSuccess)
		}
		if inBreakerSet(sc.srv.Snapshot(), addr2) {
			t.Errorf("%s: the breaker of the drained %s is back in the breaker set", when, addr2)
		}
	}

	// Older than the route's breakers: they have seen the newer set.
	stale := rt.Pool.endpoints()
	resolveTo("127.0.0.1")
	if inBreakerSet(sc.srv.Snapshot(), addr2) {
		t.Fatalf("the breaker of %s, drained, is still in the breaker set", addr2)
	}
	getFrom(t, sc, 2) // the route's breakers move to the new set
	ofStale("a set older than the route's breakers", stale)
	getFrom(t, sc, 2)

	// Newer than the route's breakers, but stale all the same: 127.0.0.2
	// joined and left again before any request saw it.
	resolveTo("127.0.0.1", "127.0.0.2")
	stale = rt.Pool.endpoints()
	resolveTo("127.0.0.1")
	ofStale("a set newer than the route's breakers", stale)
	if got := getFrom(t, sc, 2); got["127.0.0.1"] != 2 {
		t.Errorf("answers by address = %v, want both from 127.0.0.1", got)
	}
	if inBreakerSet(sc.srv.Snapshot(), addr2) {
		t.Errorf("the breaker of the drained %s is back in the breaker set", addr2)
	}
}

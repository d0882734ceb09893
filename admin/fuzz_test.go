package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// fuzzSecrets are in the fuzzed admin API's spooled messages: none may
// ever appear in an answer to a caller without the admin token.
var fuzzSecrets = []string{"app-secret", "cookie-secret", "4111111111111111"}

// FuzzAdminAPI sends the admin API requests made of fuzzed bytes (method,
// target with its message IDs and query, Host, Authorization, Origin,
// Sec-Fetch-Site, Sidecar-Admin), parsed as its net/http server parses
// them, with a token configured and never given. Whatever the request:
// no panic and no 500; a JSON answer is valid JSON; a Host that is not
// loopback gets 403; no mutating call succeeds and the spool is left
// unchanged; no header secret or message body is ever shown. The seeds
// are in testdata/fuzz/FuzzAdminAPI.
func FuzzAdminAPI(f *testing.F) {
	dir := f.TempDir()
	st, err := spool.OpenFile(dir, spool.FileOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	var ids []string
	for i, route := range []string{"ev", "ev", "other"} {
		m := &spool.Message{
			Route:  route,
			Method: "POST",
			Target: "/ev",
			Header: map[string][]string{"Authorization": {"Bearer app-secret"}, "Cookie": {"s=cookie-secret"}},
			Body:   []byte(`{"card":"4111111111111111"}`),
		}
		if err := st.Append(context.Background(), m); err != nil {
			f.Fatal(err)
		}
		ids = append(ids, m.ID)
		if i == 0 {
			if m, _, _ := st.Next("ev", time.Now()); m != nil {
				st.DeadLetter(m.ID, "seeded dead")
			}
		}
	}
	snap := proxytest.Snapshot(f, `
version: 1
spool: {dir: "`+dir+`"}
upstreams:
  inv: {endpoints: ["http://127.0.0.1:8080"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /ev}, upstream: inv, async: {}}
      - {name: other, match: {path_prefix: /other}, upstream: inv, async: {}}
`)
	h := New(spoolSource{fixedSource{snap}, st}, slog.New(slog.NewTextHandler(io.Discard, nil)), WithToken("the-admin-token-nobody-guesses")).Handler()
	before := fuzzSpoolState(st)

	for _, s := range []struct{ method, target, host, auth, origin, site string }{
		{"GET", "/v1/spool/messages?state=dead&limit=1", "127.0.0.1:9901", "", "", ""},
		{"GET", "/v1/spool/messages?route=ev&state=pending&after={id0}&limit=2", "localhost", "", "", ""},
		{"GET", "/v1/spool/messages?limit=-1", "[::1]:9901", "", "", ""},
		{"GET", "/v1/spool/messages/{id0}", "127.0.0.1", "", "", ""},
		{"GET", "/v1/spool/messages/{id1}", "127.0.0.1", "Bearer wrong", "", ""},
		{"GET", "/v1/spool/messages/%2e%2e", "127.0.0.1", "", "", ""},
		{"POST", "/v1/spool/messages/{id0}/replay", "127.0.0.1", "", "", ""},
		{"DELETE", "/v1/spool/messages/{id1}", "127.0.0.1", "Bearer ", "", ""},
		{"POST", "/v1/spool/purge?state=dead&route=ev", "127.0.0.1", "Bearer x", "http://127.0.0.1", "same-origin"},
		{"POST", "/v1/reload", "localhost:1", "", "http://evil.example", "cross-site"},
		{"GET", "/v1/spool", "127.0.0.1", "", "", ""},
		{"GET", "/v1/config", "evil.example", "", "", ""},
		{"GET", "/v1/routes", "127.0.0.1.nip.io", "", "", ""},
		{"GET", "/", "127.0.0.1", "", "", ""},
		{"GET", "/static/app.js", "127.0.0.1", "", "", ""},
		{"HEAD", "/healthz", "127.0.0.1", "", "", ""},
		{"OPTIONS", "/v1/spool/messages/{id2}", "127.0.0.1", "", "", ""},
		{"PUT", "/v1/spool/messages/{id2}", "127.0.0.1", "", "", ""},
	} {
		f.Add(s.method, s.target, s.host, s.auth, s.origin, s.site, true)
	}
	f.Fuzz(func(t *testing.T, method, target, host, auth, origin, site string, adminHeader bool) {
		for i, id := range ids {
			target = strings.ReplaceAll(target, "{id"+string(rune('0'+i))+"}", id)
		}
		raw := method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n"
		for _, hv := range [][2]string{{"Authorization", auth}, {"Origin", origin}, {"Sec-Fetch-Site", site}} {
			if hv[1] != "" {
				raw += hv[0] + ": " + hv[1] + "\r\n"
			}
		}
		if adminHeader {
			raw += RequestHeader + ": 1\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // net/http's server answers 400 itself
		}
		if !validFieldValues(r) || r.Method == "CONNECT" {
			return // net/http's server refuses these itself
		}
		r.RemoteAddr = "127.0.0.1:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		code, body := rec.Code, rec.Body.String()
		call := r.Method + " " + target + " (Host " + r.Host + ")"
		if code >= 500 && code != http.StatusNotImplemented && code != http.StatusServiceUnavailable {
			t.Fatalf("%s = %d %s, want no server error", call, code, body)
		}
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && r.Method != "HEAD" && !json.Valid([]byte(body)) {
			t.Fatalf("%s = %d with invalid JSON %q", call, code, body)
		}
		if !fuzzLoopback(r.Host) && code != http.StatusForbidden {
			t.Fatalf("%s = %d, want 403 for a Host that is not loopback", call, code)
		}
		if !safeMethod(r.Method) && code >= 200 && code < 300 {
			t.Fatalf("%s = %d %s, want it refused without the admin token", call, code, body)
		}
		for _, s := range fuzzSecrets {
			if strings.Contains(body, s) {
				t.Fatalf("%s = %d shows %q without the admin token: %s", call, code, s, body)
			}
		}
		if after := fuzzSpoolState(st); after != before {
			t.Fatalf("%s changed the spool without the admin token: %s, was %s", call, after, before)
		}
	})
}

// fuzzSpoolState is every message's ID and state, in order.
func fuzzSpoolState(st spool.Store) string {
	var b strings.Builder
	for _, state := range []spool.State{spool.Pending, spool.Dead} {
		infos, err := st.List("", state, "", 100)
		if err != nil {
			return "error: " + err.Error()
		}
		for _, in := range infos {
			b.WriteString(in.ID + "=" + in.State.String() + " ")
		}
	}
	return b.String()
}

// fuzzLoopback is the admin API's rule for Host, stated independently:
// localhost or a loopback address, with or without a port.
func fuzzLoopback(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.ToLower(host) == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// validFieldValues reports whether every field value is one net/http's
// server accepts (no CTL but tab); ReadRequest alone does not check.
func validFieldValues(r *http.Request) bool {
	for _, vv := range r.Header {
		for _, v := range vv {
			for i := 0; i < len(v); i++ {
				if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
					return false
				}
			}
		}
	}
	return true
}

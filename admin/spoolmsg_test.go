package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/spool"
)

// spoolAdmin serves an admin API around a real file store holding three
// messages of route "ev" (the first dead) and one of route "other". It
// returns the store, the server and the IDs in order.
func spoolAdmin(t *testing.T, opts ...Option) (spool.Store, *httptest.Server, []string, *strings.Builder) {
	t.Helper()
	st, err := spool.OpenFile(t.TempDir(), spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	var ids []string
	for i, route := range []string{"ev", "ev", "ev", "other"} {
		m := &spool.Message{
			Route:  route,
			Method: "POST",
			Target: "/ev?n=1",
			Header: map[string][]string{
				"Content-Type":  {"application/json"},
				"Authorization": {"Bearer app-secret"},
				"Cookie":        {"session=cookie-secret"},
				"X-Api-Key":     {"key-secret"},
				"X-Auth-Token":  {"token-secret"},
			},
			Body:           []byte(`{"n":1}`),
			IdempotencyKey: "idem-1",
		}
		if i == 1 {
			m.Body = []byte{0xff, 0xfe, 0x00}
		}
		if err := st.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	m, _, _ := st.Next("ev", time.Now())
	if err := st.DeadLetter(m.ID, "upstream said 400"); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	src := spoolSource{fixedSource{newTestSnapshot(t)}, st}
	ts := httptest.NewServer(New(src, logger, opts...).Handler())
	t.Cleanup(ts.Close)
	return st, ts, ids, &logs
}

// newTestSnapshot returns the snapshot newTestAdmin serves.
func newTestSnapshot(t *testing.T) *proxy.Snapshot {
	s, ts := newTestAdmin(t)
	ts.Close()
	return s.src.Snapshot()
}

// do sends a call as "sidecar spool" does: mutating calls carry
// RequestHeader.
func do(t *testing.T, ts *httptest.Server, method, path, auth string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.URL+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if !safeMethod(method) {
		req.Header.Set(RequestHeader, "1")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return resp.StatusCode, string(body)
}

type listAnswer struct {
	Messages []struct {
		ID, Route, State string
		Size             int64
		Arrived          string
		Attempts         int
		DeadReason       string `json:"dead_reason"`
	}
	NextAfter string `json:"next_after"`
}

func TestSpoolList(t *testing.T) {
	_, ts, ids, _ := spoolAdmin(t)
	list := func(q string) listAnswer {
		t.Helper()
		code, body := do(t, ts, "GET", "/v1/spool/messages"+q, "")
		var got listAnswer
		if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
			t.Fatalf("GET /v1/spool/messages%s = %d %s (%v)", q, code, body, err)
		}
		return got
	}
	got := list("")
	if len(got.Messages) != 3 || got.Messages[0].ID != ids[1] || got.Messages[2].ID != ids[3] || got.Messages[0].State != "pending" || got.Messages[0].Size <= 0 || got.Messages[0].Arrived == "" || got.NextAfter != "" {
		t.Errorf("default list (pending, all routes) = %+v, want %v", got, ids[1:])
	}
	if got := list("?route=ev&state=pending"); len(got.Messages) != 2 || got.Messages[0].ID != ids[1] || got.Messages[1].ID != ids[2] {
		t.Errorf("route ev pending = %+v, want %v", got, ids[1:3])
	}
	if got := list("?state=dead"); len(got.Messages) != 1 || got.Messages[0].ID != ids[0] || got.Messages[0].DeadReason != "upstream said 400" {
		t.Errorf("dead = %+v, want %s with its reason", got, ids[0])
	}
	p1 := list("?limit=2")
	if len(p1.Messages) != 2 || p1.NextAfter != ids[2] {
		t.Fatalf("limit 2 = %+v, want 2 and next_after %s", p1, ids[2])
	}
	if p2 := list("?limit=2&after=" + p1.NextAfter); len(p2.Messages) != 1 || p2.Messages[0].ID != ids[3] {
		t.Errorf("page 2 = %+v, want %s", p2, ids[3])
	}
	if got := list("?limit=5000"); len(got.Messages) != 3 {
		t.Errorf("limit over the maximum = %+v, want clamped, 3 messages", got)
	}
	for _, q := range []string{"?state=gone", "?state=Dead", "?limit=0", "?limit=x"} {
		if code, body := do(t, ts, "GET", "/v1/spool/messages"+q, ""); code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("GET /v1/spool/messages%s = %d %s, want 400 JSON error", q, code, body)
		}
	}
}

func TestSpoolShowRedactsCredentials(t *testing.T) {
	_, ts, ids, _ := spoolAdmin(t)
	code, body := do(t, ts, "GET", "/v1/spool/messages/"+ids[0], "")
	var got struct {
		ID, Route, State string
		Size             int64
		Message          struct {
			Method, Target string
			Headers        map[string][]string
			IdempotencyKey string `json:"idempotency_key"`
			Body           string
			BodyEncoding   string `json:"body_encoding"`
			BodySize       int    `json:"body_size"`
		}
	}
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("GET message = %d %s (%v)", code, body, err)
	}
	m := got.Message
	if got.ID != ids[0] || got.Route != "ev" || got.State != "dead" || got.Size <= 0 || m.Method != "POST" || m.Target != "/ev?n=1" || m.IdempotencyKey != "idem-1" {
		t.Errorf("message = %+v", got)
	}
	if m.Body != `{"n":1}` || m.BodyEncoding != "text" || m.BodySize != 7 {
		t.Errorf("UTF-8 body = %q %q %d, want text", m.Body, m.BodyEncoding, m.BodySize)
	}
	if m.Headers["Content-Type"][0] != "application/json" {
		t.Errorf("headers = %v, want Content-Type kept", m.Headers)
	}
	for _, h := range []string{"Authorization", "Cookie", "X-Api-Key", "X-Auth-Token"} {
		if v := m.Headers[h]; len(v) != 1 || v[0] != "[redacted]" {
			t.Errorf("header %s = %v, want [redacted]", h, v)
		}
	}
	if strings.Contains(body, "secret") {
		t.Errorf("message shows a credential: %s", body)
	}

	code, body = do(t, ts, "GET", "/v1/spool/messages/"+ids[1], "")
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("GET binary message = %d %s (%v)", code, body, err)
	}
	if b, err := base64.StdEncoding.DecodeString(got.Message.Body); err != nil || string(b) != "\xff\xfe\x00" || got.Message.BodyEncoding != "base64" || got.Message.BodySize != 3 {
		t.Errorf("binary body = %q %q (%v), want base64 of ff fe 00", got.Message.Body, got.Message.BodyEncoding, err)
	}

	if code, _ := do(t, ts, "GET", "/v1/spool/messages/nope", ""); code != 404 {
		t.Errorf("GET unknown message = %d, want 404", code)
	}
}

func TestSpoolReplayDeletePurge(t *testing.T) {
	st, ts, ids, _ := spoolAdmin(t)
	if code, body := do(t, ts, "POST", "/v1/spool/messages/"+ids[1]+"/replay", ""); code != 409 || !strings.Contains(body, "wrong state") {
		t.Errorf("replay pending = %d %s, want 409", code, body)
	}
	if code, _ := do(t, ts, "POST", "/v1/spool/messages/nope/replay", ""); code != 404 {
		t.Errorf("replay unknown = %d, want 404", code)
	}
	if code, body := do(t, ts, "POST", "/v1/spool/messages/"+ids[0]+"/replay", ""); code != 200 || !strings.Contains(body, ids[0]) {
		t.Errorf("replay dead = %d %s, want 200", code, body)
	}
	if _, in, err := st.Get(ids[0]); err != nil || in.State != spool.Pending || in.Attempts != 0 {
		t.Errorf("after replay: %+v %v, want pending", in, err)
	}
	if code, _ := do(t, ts, "DELETE", "/v1/spool/messages/"+ids[3], ""); code != 200 {
		t.Errorf("delete = %d, want 200", code)
	}
	if _, _, err := st.Get(ids[3]); err != spool.ErrNotFound {
		t.Errorf("after delete: Get = %v, want ErrNotFound", err)
	}
	if code, _ := do(t, ts, "DELETE", "/v1/spool/messages/"+ids[3], ""); code != 404 {
		t.Errorf("delete again = %d, want 404", code)
	}
	for _, q := range []string{"", "?state=all"} {
		if code, _ := do(t, ts, "POST", "/v1/spool/purge"+q, ""); code != 400 {
			t.Errorf("purge%s = %d, want 400 (state is required)", q, code)
		}
	}
	if code, body := do(t, ts, "POST", "/v1/spool/purge?state=dead", ""); code != 200 || !strings.Contains(body, `"purged": 0`) {
		t.Errorf("purge dead = %d %s, want 0 purged", code, body)
	}
	if code, body := do(t, ts, "POST", "/v1/spool/purge?route=ev&state=pending", ""); code != 200 || !strings.Contains(body, `"purged": 3`) {
		t.Errorf("purge ev pending = %d %s, want 3 purged (2 pending and the replayed one)", code, body)
	}
	if got := st.Stats().Total; got.Pending != 0 || got.Dead != 0 {
		t.Errorf("after purge: %+v, want empty", got)
	}
}

func TestSpoolMutationsNeedToken(t *testing.T) {
	const token = "s3cr3t-admin-token"
	st, ts, ids, logs := spoolAdmin(t, WithToken(token))
	calls := []struct{ method, path string }{
		{"POST", "/v1/spool/messages/" + ids[0] + "/replay"},
		{"DELETE", "/v1/spool/messages/" + ids[1]},
		{"POST", "/v1/spool/purge?state=pending"},
	}
	for _, c := range calls {
		for _, auth := range []string{"", "Bearer wrong", "Bearer " + token + "x", token, "Basic " + token, "bearer"} {
			if code, body := do(t, ts, c.method, c.path, auth); code != 401 || !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s with Authorization %q = %d %s, want 401", c.method, c.path, auth, code, body)
			}
		}
	}
	if got := st.Stats().Total; got.Pending != 3 || got.Dead != 1 {
		t.Fatalf("refused calls changed the spool: %+v", got)
	}
	// Reads need no token.
	if code, _ := do(t, ts, "GET", "/v1/spool/messages?state=dead", ""); code != 200 {
		t.Errorf("list without token = %d, want 200", code)
	}
	for _, c := range calls {
		if code, body := do(t, ts, c.method, c.path, "Bearer "+token); code != 200 {
			t.Errorf("%s %s with the token = %d %s, want 200", c.method, c.path, code, body)
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the log shows the token:\n%s", logs)
	}
}

func TestSpoolMessagesWithoutSpool(t *testing.T) {
	_, ts := newTestAdmin(t)
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/spool/messages"},
		{"GET", "/v1/spool/messages/x"},
		{"POST", "/v1/spool/messages/x/replay"},
		{"DELETE", "/v1/spool/messages/x"},
		{"POST", "/v1/spool/purge?state=dead"},
	} {
		if code, body := do(t, ts, c.method, c.path, ""); code != 404 || !strings.Contains(body, "no spool") {
			t.Errorf("%s %s without a spool = %d %s, want 404 JSON", c.method, c.path, code, body)
		}
	}
}

func TestSpoolMessagesLoopbackOnly(t *testing.T) {
	_, ts, ids, _ := spoolAdmin(t)
	req, _ := http.NewRequest("DELETE", ts.URL+"/v1/spool/messages/"+ids[0], nil)
	req.Host = "evil.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("DELETE with a foreign Host = %d, want 403", resp.StatusCode)
	}
}

// TestSpoolMutationsRefuseWebPages checks that a web page cannot drive a
// mutating call: the browser addresses it to the loopback Host, so only
// Origin, Sec-Fetch-Site and the required RequestHeader tell it apart.
func TestSpoolMutationsRefuseWebPages(t *testing.T) {
	st, ts, ids, _ := spoolAdmin(t)
	own := ts.URL // http://127.0.0.1:port, the admin API's own origin
	calls := []struct{ method, path string }{
		{"POST", "/v1/spool/messages/" + ids[0] + "/replay"},
		{"DELETE", "/v1/spool/messages/" + ids[1]},
		{"POST", "/v1/spool/purge?state=pending"},
		{"PUT", "/v1/spool/purge?state=pending"},
	}
	refused := []struct {
		name    string
		headers map[string]string
		reason  string
	}{
		{"cross-site form", map[string]string{"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, "Origin"},
		{"cross-site form, old browser", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, RequestHeader},
		{"text/plain no-cors fetch", map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}, "Origin"},
		{"foreign origin with the header", map[string]string{"Origin": "http://evil.example", RequestHeader: "1"}, "Origin"},
		{"another port on loopback", map[string]string{"Origin": "http://127.0.0.1:3000", RequestHeader: "1"}, "Origin"},
		{"opaque origin", map[string]string{"Origin": "null", RequestHeader: "1"}, "Origin"},
		{"same-site page", map[string]string{"Sec-Fetch-Site": "same-site", RequestHeader: "1"}, "Sec-Fetch-Site"},
		{"cross-site without Origin", map[string]string{"Sec-Fetch-Site": "cross-site", RequestHeader: "1"}, "Sec-Fetch-Site"},
		{"no header", nil, RequestHeader},
		{"empty header", map[string]string{RequestHeader: ""}, RequestHeader},
	}
	send := func(method, path string, headers map[string]string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader("state=pending"))
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	for _, c := range calls {
		for _, r := range refused {
			resp, body := send(c.method, c.path, r.headers)
			var e struct{ Error string }
			if resp.StatusCode != 403 || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, r.reason) || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s, %s = %d %s, want 403 JSON naming %s", c.method, c.path, r.name, resp.StatusCode, body, r.reason)
			}
		}
		// A preflight is never granted, so a cors fetch never sends the header.
		resp, _ := send("OPTIONS", c.path, map[string]string{"Origin": "http://evil.example", "Access-Control-Request-Method": c.method, "Access-Control-Request-Headers": RequestHeader})
		if resp.StatusCode/100 == 2 || resp.Header.Get("Access-Control-Allow-Origin") != "" || resp.Header.Get("Access-Control-Allow-Headers") != "" {
			t.Errorf("preflight of %s %s = %d %v, want no grant", c.method, c.path, resp.StatusCode, resp.Header)
		}
	}
	if got := st.Stats().Total; got.Pending != 3 || got.Dead != 1 {
		t.Fatalf("refused calls changed the spool: %+v", got)
	}
	// Reads need no header.
	if code, _ := call(t, ts, "/v1/spool/messages", ""); code != 200 {
		t.Errorf("GET without %s = %d, want 200", RequestHeader, code)
	}
	// A program, or the admin API's own origin, gets through.
	for _, h := range []map[string]string{
		{RequestHeader: "1", "Origin": own, "Sec-Fetch-Site": "same-origin"},
		{RequestHeader: "1", "Sec-Fetch-Site": "none"},
	} {
		if resp, body := send("POST", "/v1/spool/purge?state=dead", h); resp.StatusCode != 200 {
			t.Errorf("purge with %v = %d %s, want 200", h, resp.StatusCode, body)
		}
	}
	if resp, body := send("POST", "/v1/spool/purge?state=pending", map[string]string{RequestHeader: "1"}); resp.StatusCode != 200 || !strings.Contains(body, `"purged": 3`) {
		t.Errorf("purge with %s = %d %s, want 200, 3 purged", RequestHeader, resp.StatusCode, body)
	}
}

// TestSpoolMutationsNeedHeaderAndToken checks that with a token both the
// header and the token are needed, each refused with its own status.
func TestSpoolMutationsNeedHeaderAndToken(t *testing.T) {
	const token = "both-admin-token"
	st, ts, ids, _ := spoolAdmin(t, WithToken(token))
	for _, c := range []struct {
		header, auth string
		want         int
	}{
		{"", "Bearer " + token, 403},
		{"1", "", 401},
		{"1", "Bearer wrong", 401},
	} {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/spool/purge?state=pending", nil)
		if c.header != "" {
			req.Header.Set(RequestHeader, c.header)
		}
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("purge with %s %q and Authorization %q = %d, want %d", RequestHeader, c.header, c.auth, resp.StatusCode, c.want)
		}
	}
	if got := st.Stats().Total; got.Pending != 3 || got.Dead != 1 {
		t.Fatalf("refused calls changed the spool: %+v", got)
	}
	if code, body := do(t, ts, "POST", "/v1/spool/messages/"+ids[0]+"/replay", "Bearer "+token); code != 200 {
		t.Errorf("replay with the header and the token = %d %s, want 200", code, body)
	}
}

// TestSpoolShowBodyNeedsToken: with an admin token, a message's headers
// and body are shown only with it; its metadata without; a wrong token is
// refused.
func TestSpoolShowBodyNeedsToken(t *testing.T) {
	const token = "s3cr3t-admin-token"
	_, ts, ids, logs := spoolAdmin(t, WithToken(token))
	path := "/v1/spool/messages/" + ids[0]

	code, body := do(t, ts, "GET", path, "")
	var meta struct {
		ID      string
		Message map[string]any
	}
	if err := json.Unmarshal([]byte(body), &meta); code != 200 || err != nil {
		t.Fatalf("GET without the token = %d %s (%v), want 200 with the metadata", code, body, err)
	}
	if meta.ID != ids[0] || meta.Message["method"] != "POST" || meta.Message["target"] != "/ev?[redacted]" || meta.Message["body_size"] != 7.0 {
		t.Errorf("metadata without the token = %s", body)
	}
	for _, k := range []string{"body", "headers", "body_encoding"} {
		if _, ok := meta.Message[k]; ok {
			t.Errorf("without the token the answer has %q: %s", k, body)
		}
	}
	if meta.Message["hidden"] == nil || strings.Contains(body, `{\"n\":1}`) || strings.Contains(body, "application/json") {
		t.Errorf("without the token: %s, want no headers or body and a hidden note", body)
	}

	for _, auth := range []string{"Bearer wrong", "Basic " + token, token} {
		if code, body := do(t, ts, "GET", path, auth); code != 401 {
			t.Errorf("GET with Authorization %q = %d %s, want 401", auth, code, body)
		}
	}

	code, body = do(t, ts, "GET", path, "Bearer "+token)
	var full struct{ Message struct{ Body string } }
	if err := json.Unmarshal([]byte(body), &full); code != 200 || err != nil || full.Message.Body != `{"n":1}` {
		t.Errorf("GET with the token = %d %s (%v), want the body", code, body, err)
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the log shows the token:\n%s", logs)
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/admin"
	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/proxy"
	"github.com/sidecar-proxy/sidecar/proxy/proxytest"
	"github.com/sidecar-proxy/sidecar/spool"
)

// spoolCmdSource is an admin.SpoolSource around a real store.
type spoolCmdSource struct {
	snap *proxy.Snapshot
	st   spool.Store
}

func (s spoolCmdSource) Snapshot() *proxy.Snapshot { return s.snap }
func (s spoolCmdSource) Spool() spool.Store        { return s.st }

const spoolCmdTokenEnv = "SIDECAR_SPOOLCMD_TEST_TOKEN"

// spoolCmdAdmin starts an admin API in-process on 127.0.0.1:0 around a file
// store holding route ev's messages (the first dead, two pending) and one
// pending message of route other. It returns the admin address, the store
// and the IDs in order.
func spoolCmdAdmin(t *testing.T, token string) (string, spool.Store, []string) {
	t.Helper()
	snap := proxytest.Snapshot(t, `
version: 1
spool: {dir: ./unused}
upstreams:
  up: {endpoints: ["http://127.0.0.1:8080"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, match: {path_prefix: /ev}, upstream: up, async: {}}
      - {name: other, match: {path_prefix: /other}, upstream: up, async: {}}
`)
	logger := proxytest.Discard
	st, err := spool.OpenFile(t.TempDir(), spool.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var ids []string
	for _, route := range []string{"ev", "ev", "ev", "other"} {
		m := &spool.Message{Route: route, Method: "POST", Target: "/" + route,
			Header: map[string][]string{"Authorization": {"Bearer app-secret"}, "Content-Type": {"text/plain"}},
			Body:   []byte("hello")}
		if err := st.Append(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	m, _, _ := st.Next("ev", time.Now())
	if err := st.DeadLetter(m.ID, "upstream answered 400"); err != nil {
		t.Fatal(err)
	}
	adm := admin.New(spoolCmdSource{snap, st}, logger, admin.WithToken(token))
	if err := adm.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	adm.Serve(func() { close(done) })
	t.Cleanup(func() { adm.Shutdown(context.Background()); <-done })
	return adm.Addr().String(), st, ids
}

func runSpoolCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	code := run(append([]string{"spool"}, args...), &stdout, &stderr, nil)
	return code, stdout.String(), stderr.String()
}

func TestSpoolCLIStatsAndList(t *testing.T) {
	addr, _, ids := spoolCmdAdmin(t, "")
	code, out, errOut := runSpoolCLI(t, "stats", "-admin", addr)
	if code != 0 {
		t.Fatalf("spool stats = %d %s %s", code, out, errOut)
	}
	for _, re := range []string{`(?m)^ROUTE\s+PENDING\s+DEAD\s+BYTES\s+OLDEST$`, `(?m)^ev\s+2\s+1\s+\d+\s+\S+$`, `(?m)^other\s+1\s+0\s+\d+\s+\S+$`, `(?m)^\(total\)\s+3\s+1\s`, `store: ok`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("spool stats output lacks %s:\n%s", re, out)
		}
	}

	// Flags before the subcommand, after it, or both.
	for _, args := range [][]string{
		{"list", "-admin", addr},
		{"-admin", addr, "list"},
		{"-state", "pending", "list", "-admin", addr},
	} {
		code, out, errOut := runSpoolCLI(t, args...)
		if code != 0 || !strings.Contains(out, ids[1]) || !strings.Contains(out, ids[2]) || !strings.Contains(out, ids[3]) || strings.Contains(out, ids[0]) || !strings.HasPrefix(out, "ID ") {
			t.Errorf("spool %v = %d:\n%s%s\nwant the 3 pending messages", args, code, out, errOut)
		}
	}
	code, out, _ = runSpoolCLI(t, "list", "-state", "dead", "-admin", addr)
	if code != 0 || !regexp.MustCompile(`(?m)^`+ids[0]+`\s+ev\s+dead\s+\d+\s+0\s+\S+\s+upstream answered 400$`).MatchString(out) || strings.Count(out, "\n") != 2 {
		t.Errorf("spool list -state dead = %d:\n%s", code, out)
	}
	code, out, _ = runSpoolCLI(t, "list", "-route", "other", "-admin", addr)
	if code != 0 || !strings.Contains(out, ids[3]) || strings.Count(out, "\n") != 2 {
		t.Errorf("spool list -route other = %d:\n%s", code, out)
	}
	code, out, errOut = runSpoolCLI(t, "list", "-limit", "1", "-admin", addr)
	if code != 0 || !strings.Contains(out, ids[1]) || !strings.Contains(errOut, "-after "+ids[1]) {
		t.Errorf("spool list -limit 1 = %d:\n%s%s\nwant a hint to go on after %s", code, out, errOut, ids[1])
	}
	code, out, _ = runSpoolCLI(t, "list", "-limit", "1", "-after", ids[1], "-admin", addr)
	if code != 0 || !strings.Contains(out, ids[2]) || strings.Count(out, "\n") != 2 {
		t.Errorf("spool list -after = %d:\n%s", code, out)
	}
}

func TestSpoolCLIShow(t *testing.T) {
	addr, _, ids := spoolCmdAdmin(t, "")
	// The ID before the flags, and after them.
	for _, args := range [][]string{{"show", ids[0], "-admin", addr}, {"-admin", addr, "show", ids[0]}} {
		code, out, errOut := runSpoolCLI(t, args...)
		var v struct {
			ID, State string
			Message   struct {
				Method, Body string
				Headers      map[string][]string
			}
		}
		if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil {
			t.Fatalf("spool %v = %d %s%s (%v), want JSON", args, code, out, errOut, err)
		}
		if v.ID != ids[0] || v.State != "dead" || v.Message.Method != "POST" || v.Message.Body != "hello" || v.Message.Headers["Authorization"][0] != "[redacted]" || strings.Contains(out, "app-secret") {
			t.Errorf("spool show = %s", out)
		}
	}
	code, out, errOut := runSpoolCLI(t, "show", "nope", "-admin", addr)
	if code != 1 || out != "" || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "not found") {
		t.Errorf("spool show unknown = %d %q %q, want exit 1 with the 404", code, out, errOut)
	}
}

func TestSpoolCLIReplayDeletePurge(t *testing.T) {
	addr, st, ids := spoolCmdAdmin(t, "")
	code, out, errOut := runSpoolCLI(t, "replay", ids[1], "-admin", addr)
	if code != 1 || !strings.Contains(errOut, "409") || !strings.Contains(errOut, "wrong state") {
		t.Errorf("replay of a pending message = %d %q %q, want exit 1 with 409", code, out, errOut)
	}
	code, out, errOut = runSpoolCLI(t, "replay", ids[0], "-admin", addr)
	if code != 0 || out != "replayed "+ids[0]+"\n" {
		t.Errorf("replay = %d %q %q", code, out, errOut)
	}
	if _, in, err := st.Get(ids[0]); err != nil || in.State != spool.Pending {
		t.Errorf("after replay: %+v %v, want pending", in, err)
	}
	code, out, errOut = runSpoolCLI(t, "-admin", addr, "delete", ids[3])
	if code != 0 || out != "deleted "+ids[3]+"\n" {
		t.Errorf("delete = %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runSpoolCLI(t, "-admin", addr, "delete", ids[3]); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("delete again = %d %q, want exit 1 with 404", code, errOut)
	}
	code, out, errOut = runSpoolCLI(t, "purge", "-dead", "-admin", addr)
	if code != 0 || out != "purged 0 dead messages\n" {
		t.Errorf("purge -dead = %d %q %q", code, out, errOut)
	}
	code, out, errOut = runSpoolCLI(t, "purge", "-route", "ev", "-admin", addr)
	if code != 0 || out != "purged 3 pending messages of route ev\n" {
		t.Errorf("purge -route ev = %d %q %q", code, out, errOut)
	}
	if got := st.Stats().Total; got.Pending != 0 || got.Dead != 0 {
		t.Errorf("after purge: %+v, want empty", got)
	}
}

func TestSpoolCLIToken(t *testing.T) {
	const token = "cli-admin-token"
	addr, st, ids := spoolCmdAdmin(t, token)
	for _, env := range []string{"", "wrong-token"} {
		t.Setenv(spoolCmdTokenEnv, env)
		for _, args := range [][]string{
			{"replay", ids[0]},
			{"delete", ids[1]},
			{"purge"},
			{"purge", "--dead"},
		} {
			args = append(args, "-admin", addr, "-token-env", spoolCmdTokenEnv)
			code, out, errOut := runSpoolCLI(t, args...)
			if code != 1 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "$"+spoolCmdTokenEnv) || out != "" {
				t.Errorf("spool %v with token %q = %d %q %q, want exit 1 with 401", args, env, code, out, errOut)
			}
			if strings.Contains(errOut, token) {
				t.Errorf("the CLI printed the token: %q", errOut)
			}
		}
	}
	if got := st.Stats().Total; got.Pending != 3 || got.Dead != 1 {
		t.Fatalf("refused calls changed the spool: %+v", got)
	}
	// Reads need no token; mutations work with the right one.
	t.Setenv(spoolCmdTokenEnv, "")
	if code, _, errOut := runSpoolCLI(t, "list", "-admin", addr, "-token-env", spoolCmdTokenEnv); code != 0 {
		t.Errorf("list without a token = %d %q", code, errOut)
	}
	// show without the token gets the metadata, with it the body too.
	code, out, errOut := runSpoolCLI(t, "show", ids[2], "-admin", addr, "-token-env", spoolCmdTokenEnv)
	if code != 0 || !strings.Contains(out, `"hidden"`) || strings.Contains(out, `"body":`) {
		t.Errorf("show without a token = %d %q %q, want the metadata alone", code, out, errOut)
	}
	t.Setenv(spoolCmdTokenEnv, token)
	code, out, errOut = runSpoolCLI(t, "show", ids[2], "-admin", addr, "-token-env", spoolCmdTokenEnv)
	if code != 0 || strings.Contains(out, `"hidden"`) || !strings.Contains(out, `"body":`) {
		t.Errorf("show with the token = %d %q %q, want the body", code, out, errOut)
	}
	if code, out, errOut := runSpoolCLI(t, "replay", ids[0], "-admin", addr, "-token-env", spoolCmdTokenEnv); code != 0 || !strings.HasPrefix(out, "replayed") {
		t.Errorf("replay with the token = %d %q %q", code, out, errOut)
	}
	// The default variable is SIDECAR_ADMIN_TOKEN.
	t.Setenv(config.DefaultTokenEnv, token)
	if code, out, errOut := runSpoolCLI(t, "purge", "--dead", "-admin", addr); code != 0 || out != "purged 0 dead messages\n" {
		t.Errorf("purge with the token in $%s = %d %q %q", config.DefaultTokenEnv, code, out, errOut)
	}
}

func TestSpoolCLIUnreachableAndUsage(t *testing.T) {
	dead := testnet.RefusedAddr(t)
	for _, args := range [][]string{{"stats"}, {"list"}, {"show", "x"}, {"replay", "x"}, {"purge"}} {
		code, out, errOut := runSpoolCLI(t, append(args, "-admin", dead)...)
		if code != 3 || out != "" || !strings.Contains(errOut, dead) {
			t.Errorf("spool %v with no admin API = %d %q %q, want exit 3", args, code, out, errOut)
		}
	}

	// No spool: the API answers 404.
	_, plain := spoolCmdNoSpool(t)
	if code, _, errOut := runSpoolCLI(t, "stats", "-admin", plain); code != 1 || !strings.Contains(errOut, "no spool") {
		t.Errorf("spool stats without a spool = %d %q, want exit 1", code, errOut)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "usage:"},
		{[]string{"frob"}, `unknown subcommand "frob"`},
		{[]string{"show"}, "missing message ID"},
		{[]string{"replay"}, "missing message ID"},
		{[]string{"show", "a", "b"}, `unexpected argument "b"`},
		{[]string{"stats", "x"}, `unexpected argument "x"`},
		{[]string{"list", "-state", "gone"}, "-state must be pending or dead"},
		{[]string{"list", "-limit", "0"}, "-limit must be at least 1"},
		{[]string{"-nope", "stats"}, "flag provided but not defined: -nope"},
		{[]string{"stats", "-admin"}, "flag needs an argument"},
	} {
		code, out, errOut := runSpoolCLI(t, tt.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
			t.Errorf("spool %v = %d %q %q, want exit 2 with %q", tt.args, code, out, errOut, tt.want)
		}
	}
	if code, _, errOut := runSpoolCLI(t, "-h"); code != 0 || !strings.Contains(errOut, "-token-env") {
		t.Errorf("spool -h = %d %q, want exit 0 with the flags", code, errOut)
	}
	// After "--" everything is an argument.
	if code, _, errOut := runSpoolCLI(t, "-admin", dead, "show", "--", "-x"); code != 3 || !strings.Contains(errOut, "/v1/spool/messages/-x") {
		t.Errorf("spool show -- -x = %d %q, want -x taken as the ID", code, errOut)
	}
	if code, _, errOut := runSpoolCLI(t, "show", "--", "a", "-b"); code != 2 || !strings.Contains(errOut, `unexpected argument "-b"`) {
		t.Errorf("spool show -- a -b = %d %q, want exit 2", code, errOut)
	}
}

// spoolCmdNoSpool starts an admin API whose source has no spool.
func spoolCmdNoSpool(t *testing.T) (*admin.Server, string) {
	t.Helper()
	snap := proxytest.Snapshot(t, "version: 1\nupstreams:\n  up: {endpoints: [\"http://127.0.0.1:8080\"]}\nlisteners:\n  - {name: app, address: \"127.0.0.1:0\", routes: [{name: r, upstream: up}]}\n")
	logger := proxytest.Discard
	adm := admin.New(spoolCmdSource{snap, nil}, logger)
	if err := adm.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	adm.Serve(func() { close(done) })
	t.Cleanup(func() { adm.Shutdown(context.Background()); <-done })
	return adm, adm.Addr().String()
}

// TestSpoolCLIAgainstRun checks the wiring in "sidecar run": the admin
// token is read from admin.token_env at start and guards the mutating calls.
func TestSpoolCLIAgainstRun(t *testing.T) {
	const token = "run-admin-token"
	t.Setenv(config.DefaultTokenEnv, token)
	t.Setenv(spoolCmdTokenEnv, "")
	_, s, _ := startBinary(t, asyncConfig(t, fmt.Sprintf("dir: %q", t.TempDir())))
	addr := strings.TrimPrefix(s.Listeners, "app=")
	resp, err := http.Post("http://"+addr+"/e", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("Sidecar-Spool-Id")
	if resp.StatusCode != http.StatusAccepted || id == "" {
		t.Fatalf("POST to an async route = %d, want 202", resp.StatusCode)
	}
	if code, out, errOut := runSpoolCLI(t, "list", "-admin", s.Admin); code != 0 || !strings.Contains(out, id) {
		t.Errorf("spool list = %d %q %q, want %s", code, out, errOut, id)
	}
	if code, _, errOut := runSpoolCLI(t, "purge", "-admin", s.Admin, "-token-env", spoolCmdTokenEnv); code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("spool purge without the token = %d %q, want exit 1 with 401", code, errOut)
	}
	if code, out, errOut := runSpoolCLI(t, "purge", "-admin", s.Admin); code != 0 || out != "purged 1 pending messages\n" {
		t.Errorf("spool purge with the token = %d %q %q", code, out, errOut)
	}
}

// TestSpoolCLIPassesTheWebPageGuard checks that the admin API refuses a
// cross-site form POST to the purge endpoint while the CLI's replay,
// delete and purge still work, with and without a token.
func TestSpoolCLIPassesTheWebPageGuard(t *testing.T) {
	for _, token := range []string{"", "guard-admin-token"} {
		addr, st, ids := spoolCmdAdmin(t, token)
		t.Setenv(spoolCmdTokenEnv, token)
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/spool/purge?state=pending", strings.NewReader("x=1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "http://evil.example")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("token %q: cross-site form POST /v1/spool/purge = %d, want 403", token, resp.StatusCode)
		}
		if got := st.Stats().Total; got.Pending != 3 || got.Dead != 1 {
			t.Fatalf("token %q: the refused purge changed the spool: %+v", token, got)
		}
		flags := []string{"-admin", addr, "-token-env", spoolCmdTokenEnv}
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"replay", ids[0]}, "replayed " + ids[0] + "\n"},
			{[]string{"delete", ids[3]}, "deleted " + ids[3] + "\n"},
			{[]string{"purge"}, "purged 3 pending messages\n"},
		} {
			if code, out, errOut := runSpoolCLI(t, append(c.args, flags...)...); code != 0 || out != c.want {
				t.Errorf("token %q: spool %v = %d %q %q, want exit 0 and %q", token, c.args, code, out, errOut, c.want)
			}
		}
	}
}

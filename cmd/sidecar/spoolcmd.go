package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sidecar-proxy/sidecar/admin"
	"github.com/sidecar-proxy/sidecar/config"
)

// exitAPI is the exit code of "sidecar spool" when the admin API answered
// with an error; exitFailure (3) means it could not be reached.
const exitAPI = 1

const spoolUsage = `usage:
  sidecar spool stats              [flags]
  sidecar spool list               [flags]   (-state pending|dead, -route, -after, -limit)
  sidecar spool show    ID         [flags]
  sidecar spool replay  ID         [flags]
  sidecar spool delete  ID         [flags]
  sidecar spool purge   [-dead]    [flags]   (pending messages unless -dead)
flags may come before or after the subcommand and its ID:
`

// spoolCmd is one "sidecar spool" invocation.
type spoolCmd struct {
	sub            string
	admin, route   string
	state, after   string
	tokenEnv       string
	limit          int
	dead           bool
	stdout, stderr io.Writer
	client         *http.Client
}

// runSpool runs "sidecar spool ..." against the admin API: exit 0 ok, 1 the
// API answered an error, 2 bad usage, 3 the API could not be reached.
func runSpool(args []string, stdout, stderr io.Writer) int {
	// No proxy from the environment: the admin API is local, and the token
	// must not travel through an HTTP proxy.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	c := &spoolCmd{stdout: stdout, stderr: stderr, client: client}
	defer client.CloseIdleConnections()
	fs := flag.NewFlagSet("sidecar spool", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, spoolUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.admin, "admin", config.DefaultAdminAddress, "admin API address (host:port or http://host:port)")
	fs.StringVar(&c.route, "route", "", "only this route (list, purge)")
	fs.StringVar(&c.state, "state", "pending", "list: pending or dead")
	fs.StringVar(&c.after, "after", "", "list: only IDs after this one (the next_after of the previous page)")
	fs.IntVar(&c.limit, "limit", 100, "list: at most this many messages (the API caps it at 1000)")
	fs.BoolVar(&c.dead, "dead", false, "purge: purge dead messages instead of pending ones")
	fs.StringVar(&c.tokenEnv, "token-env", config.DefaultTokenEnv, "environment variable holding the admin token, sent on show (for headers and body), replay, delete and purge")

	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return exitUsage
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, spoolUsage)
		return exitUsage
	}
	c.sub, pos = pos[0], pos[1:]
	wantArgs := 0
	switch c.sub {
	case "stats", "list", "purge":
	case "show", "replay", "delete":
		wantArgs = 1
	default:
		fmt.Fprintf(stderr, "sidecar spool: unknown subcommand %q\n%s", c.sub, spoolUsage)
		return exitUsage
	}
	if len(pos) != wantArgs {
		if wantArgs == 1 && len(pos) == 0 {
			fmt.Fprintf(stderr, "sidecar spool %s: missing message ID\n", c.sub)
		} else {
			fmt.Fprintf(stderr, "sidecar spool %s: unexpected argument %q\n", c.sub, pos[wantArgs])
		}
		return exitUsage
	}
	if c.sub == "list" && c.state != "pending" && c.state != "dead" {
		fmt.Fprintf(stderr, "sidecar spool list: -state must be pending or dead, not %q\n", c.state)
		return exitUsage
	}
	if c.limit < 1 {
		fmt.Fprintf(stderr, "sidecar spool %s: -limit must be at least 1\n", c.sub)
		return exitUsage
	}
	switch c.sub {
	case "stats":
		return c.stats()
	case "list":
		return c.list()
	case "show":
		return c.show(pos[0])
	case "replay":
		return c.mutate("POST", "/v1/spool/messages/"+url.PathEscape(pos[0])+"/replay", func(map[string]any) string { return "replayed " + pos[0] })
	case "delete":
		return c.mutate("DELETE", "/v1/spool/messages/"+url.PathEscape(pos[0]), func(map[string]any) string { return "deleted " + pos[0] })
	default: // purge
		q := url.Values{"state": {"pending"}}
		if c.dead {
			q.Set("state", "dead")
		}
		if c.route != "" {
			q.Set("route", c.route)
		}
		return c.mutate("POST", "/v1/spool/purge?"+q.Encode(), func(v map[string]any) string {
			s := fmt.Sprintf("purged %v %s messages", v["purged"], q.Get("state"))
			if c.route != "" {
				s += " of route " + c.route
			}
			return s
		})
	}
}

// parseInterleaved parses flags placed before, between and after the
// positional arguments: Go's flag package stops at the first non-flag, so
// each positional argument is taken out and parsing resumes after it. After
// "--" every argument is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// apiError is an error answer of the admin API.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("admin API: %d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

// call sends one request and decodes a 2xx JSON answer into out (when not
// nil); it returns the raw body too. A transport error is returned as is,
// an error answer as *apiError.
func (c *spoolCmd) call(method, path string, auth bool, out any) ([]byte, error) {
	base := c.admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequest(method, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	// The admin API refuses a mutating call without this header, which no
	// web page can send it; reads ignore it.
	req.Header.Set(admin.RequestHeader, "1")
	if auth && c.tokenEnv != "" {
		if tok := os.Getenv(c.tokenEnv); tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return body, &apiError{status: resp.StatusCode, msg: msg}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return body, &apiError{status: resp.StatusCode, msg: "unexpected answer: " + err.Error()}
		}
	}
	return body, nil
}

// fail prints err and returns its exit code: 1 for an API error, 3 when the
// API could not be reached.
func (c *spoolCmd) fail(err error) int {
	fmt.Fprintf(c.stderr, "sidecar spool %s: %v\n", c.sub, err)
	var ae *apiError
	if errors.As(err, &ae) {
		if ae.status == http.StatusUnauthorized {
			fmt.Fprintf(c.stderr, "sidecar spool %s: set $%s to the sidecar's admin token (or name another variable with -token-env)\n", c.sub, c.tokenEnv)
		}
		return exitAPI
	}
	fmt.Fprintf(c.stderr, "sidecar spool %s: is the sidecar running with its admin API on %s?\n", c.sub, c.admin)
	return exitFailure
}

type spoolFigures struct {
	Depth     int64  `json:"depth"`
	Dead      int64  `json:"dead"`
	Bytes     int64  `json:"bytes"`
	OldestAge string `json:"oldest_age"`
}

func (c *spoolCmd) stats() int {
	var v struct {
		Routes         map[string]spoolFigures `json:"routes"`
		Total          spoolFigures            `json:"total"`
		Segments       int                     `json:"segments"`
		Failed         bool                    `json:"failed"`
		CorruptRecords int64                   `json:"corrupt_records"`
		TornTail       bool                    `json:"torn_tail"`
	}
	if _, err := c.call("GET", "/v1/spool", false, &v); err != nil {
		return c.fail(err)
	}
	names := make([]string, 0, len(v.Routes))
	for n := range v.Routes {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tPENDING\tDEAD\tBYTES\tOLDEST")
	row := func(name string, f spoolFigures) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", name, f.Depth, f.Dead, f.Bytes, dash(f.OldestAge))
	}
	for _, n := range names {
		row(n, v.Routes[n])
	}
	row("(total)", v.Total)
	tw.Flush()
	health := "ok"
	if v.Failed {
		health = "FAILED: refusing writes until it has reopened itself"
	}
	fmt.Fprintf(c.stdout, "segments: %d  corrupt records skipped: %d  torn tail truncated: %v  store: %s\n", v.Segments, v.CorruptRecords, v.TornTail, health)
	return exitOK
}

func (c *spoolCmd) list() int {
	q := url.Values{"state": {c.state}, "limit": {fmt.Sprint(c.limit)}}
	if c.route != "" {
		q.Set("route", c.route)
	}
	if c.after != "" {
		q.Set("after", c.after)
	}
	var v struct {
		Messages  []admin.MessageInfo `json:"messages"`
		NextAfter string              `json:"next_after"`
	}
	if _, err := c.call("GET", "/v1/spool/messages?"+q.Encode(), false, &v); err != nil {
		return c.fail(err)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	last := "NEXT ATTEMPT"
	if c.state == "dead" {
		last = "REASON"
	}
	fmt.Fprintf(tw, "ID\tROUTE\tSTATE\tSIZE\tATTEMPTS\tARRIVED\t%s\n", last)
	for _, m := range v.Messages {
		extra := m.NextAttempt
		if c.state == "dead" {
			extra = m.DeadReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", m.ID, m.Route, m.State, m.Size, m.Attempts, dash(m.Arrived), dash(extra))
	}
	tw.Flush()
	if v.NextAfter != "" {
		fmt.Fprintf(c.stderr, "more messages may follow: add -after %s\n", v.NextAfter)
	}
	return exitOK
}

func (c *spoolCmd) show(id string) int {
	// The token, when set, shows the message's headers and body.
	body, err := c.call("GET", "/v1/spool/messages/"+url.PathEscape(id), true, nil)
	if err != nil {
		return c.fail(err)
	}
	var out bytes.Buffer
	if json.Indent(&out, body, "", "  ") != nil {
		out.Reset()
		out.Write(body)
	}
	if !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
		out.WriteByte('\n')
	}
	c.stdout.Write(out.Bytes())
	return exitOK
}

// mutate sends a call that needs the admin token and prints say(answer).
func (c *spoolCmd) mutate(method, path string, say func(map[string]any) string) int {
	var v map[string]any
	if _, err := c.call(method, path, true, &v); err != nil {
		return c.fail(err)
	}
	fmt.Fprintln(c.stdout, say(v))
	return exitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

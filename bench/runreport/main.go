// Command runreport turns the raw records of one bench/run.sh run into its
// report: summary.md (tables per load, ratios to HAProxy and nginx, the
// bars of issue 15 with PASS or FAIL) and summary.json (the same figures
// plus every raw record).
//
//	runreport -dir bench/results/2026-12-05T102700Z [-smoke]
//
// It reads, in -dir:
//
//   - raw.jsonl: one JSON object per measurement, with at least "load"
//     (string), "target" (string) and "round" (number); every other
//     top-level number is a figure, and the report shows medians over
//     rounds;
//   - meta.tsv: "key<TAB>value" lines (machine, versions, commands), in the
//     order they are shown; a key may repeat;
//   - notes.tsv: "round<TAB>target<TAB>load<TAB>kind<TAB>text" lines,
//     problems seen during the run (kind harness, load, quiet or info).
//
// A line of raw.jsonl that is not a JSON object with those three keys is
// an error: the command prints it and exits with status 1, writing
// nothing. It contacts nothing and starts nothing.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

func main() {
	dir := flag.String("dir", "", "the run's output directory (raw.jsonl, meta.tsv, notes.tsv)")
	smoke := flag.Bool("smoke", false, "a smoke run: say that the timings mean nothing")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "runreport: -dir is required")
		os.Exit(2)
	}
	if err := run(*dir, *smoke); err != nil {
		fmt.Fprintln(os.Stderr, "runreport:", err)
		os.Exit(1)
	}
}

// record is one line of raw.jsonl.
type record struct {
	Load   string
	Target string
	Round  int
	Nums   map[string]float64
	Raw    json.RawMessage
}

type note struct {
	Round  string `json:"round"`
	Target string `json:"target"`
	Load   string `json:"load"`
	Kind   string `json:"kind"`
	Text   string `json:"text"`
}

type metaItem struct{ Key, Value string }

type bar struct {
	Name    string   `json:"name"`
	Figure  string   `json:"figure"`
	Value   *float64 `json:"value"`
	Limit   float64  `json:"limit"`
	Op      string   `json:"op"`
	Unit    string   `json:"unit"`
	Verdict string   `json:"verdict"`
	Detail  string   `json:"detail"`
}

type report struct {
	recs    []record
	notes   []note
	meta    []metaItem
	smoke   bool
	targets map[string][]string // load -> targets in order of appearance
	med     map[string]map[string]map[string]float64
	rounds  map[string]map[string]int
	bad     map[string]bool // load/target with a harness or load problem
}

func run(dir string, smoke bool) error {
	r := &report{smoke: smoke, targets: map[string][]string{}, med: map[string]map[string]map[string]float64{},
		rounds: map[string]map[string]int{}, bad: map[string]bool{}}
	if err := r.readRaw(filepath.Join(dir, "raw.jsonl")); err != nil {
		return err
	}
	if err := r.readMeta(filepath.Join(dir, "meta.tsv")); err != nil {
		return err
	}
	if err := r.readNotes(filepath.Join(dir, "notes.tsv")); err != nil {
		return err
	}
	r.medians()
	bars := r.bars()
	var md bytes.Buffer
	r.markdown(&md, bars)
	js, err := r.json(bars)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "summary.json"), js, 0o644)
}

func (r *report) readRaw(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var bad []string
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		rec, err := parseRecord(line)
		if err != nil {
			bad = append(bad, fmt.Sprintf("raw.jsonl line %d: %v: %.300s", n, err, line))
			continue
		}
		r.recs = append(r.recs, rec)
		if !slices.Contains(r.targets[rec.Load], rec.Target) {
			r.targets[rec.Load] = append(r.targets[rec.Load], rec.Target)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "\n"))
	}
	if len(r.recs) == 0 {
		return fmt.Errorf("%s holds no record", path)
	}
	return nil
}

func parseRecord(line []byte) (record, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return record{}, err
	}
	rec := record{Nums: map[string]float64{}, Raw: json.RawMessage(slices.Clone(line))}
	if err := json.Unmarshal(m["load"], &rec.Load); err != nil || rec.Load == "" {
		return record{}, fmt.Errorf(`no "load" string`)
	}
	if err := json.Unmarshal(m["target"], &rec.Target); err != nil || rec.Target == "" {
		return record{}, fmt.Errorf(`no "target" string`)
	}
	if err := json.Unmarshal(m["round"], &rec.Round); err != nil {
		return record{}, fmt.Errorf(`no "round" number`)
	}
	for k, v := range m {
		var f float64
		if k != "round" && string(v) != "null" && json.Unmarshal(v, &f) == nil {
			rec.Nums[k] = f
		}
	}
	return rec, nil
}

func (r *report) readMeta(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		k, v, ok := strings.Cut(line, "\t")
		if !ok {
			return fmt.Errorf("meta.tsv: no tab in %q", line)
		}
		r.meta = append(r.meta, metaItem{k, v})
	}
	return nil
}

func (r *report) readNotes(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if line == "" {
			continue
		}
		f := strings.SplitN(line, "\t", 5)
		if len(f) != 5 {
			return fmt.Errorf("notes.tsv: want 5 tab-separated fields in %q", line)
		}
		n := note{Round: f[0], Target: f[1], Load: f[2], Kind: f[3], Text: f[4]}
		r.notes = append(r.notes, n)
		if n.Kind == "harness" || n.Kind == "load" {
			r.bad[n.Load+"/"+n.Target] = true
		}
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (r *report) medians() {
	vals := map[[3]string][]float64{}
	for _, rec := range r.recs {
		for k, v := range rec.Nums {
			key := [3]string{rec.Load, rec.Target, k}
			vals[key] = append(vals[key], v)
		}
		if r.rounds[rec.Load] == nil {
			r.rounds[rec.Load] = map[string]int{}
		}
		r.rounds[rec.Load][rec.Target]++
	}
	for key, v := range vals {
		l, t, k := key[0], key[1], key[2]
		if r.med[l] == nil {
			r.med[l] = map[string]map[string]float64{}
		}
		if r.med[l][t] == nil {
			r.med[l][t] = map[string]float64{}
		}
		r.med[l][t][k] = median(v)
	}
}

// get returns the median of KEY for LOAD and TARGET.
func (r *report) get(load, target, key string) (float64, bool) {
	v, ok := r.med[load][target][key]
	return v, ok
}

// ---------------------------------------------------------------- bars

// The sidecar variant the bars are judged on: every policy plus metrics.
const judged = "sidecar-policies"

func (r *report) bars() []bar {
	var out []bar
	ratioBar := func(name, load, key, unit string, limit float64) {
		b := bar{Name: name, Figure: judged + " / haproxy, " + unit, Limit: limit, Op: "<=", Unit: "×"}
		a, ok1 := r.get(load, judged, key)
		h, ok2 := r.get(load, "haproxy", key)
		if ok1 && ok2 && h > 0 {
			v := a / h
			b.Value = &v
			b.Detail = fmt.Sprintf("%.1f / %.1f %s = %.2f×", a, h, unit, v)
		}
		r.judge(&b, load, judged, "haproxy")
		out = append(out, b)
	}
	ratioBar("HTTP/1.1 keep-alive, every policy plus metrics: CPU per request at most 1.5× HAProxy's", "wrk", "cpu_us_per_req", "µs/req", 1.5)

	b := bar{Name: "the policy stack adds at most 2 µs per request end to end", Figure: "CPU µs/req of sidecar-policies − sidecar-default (wrk)", Limit: 2, Op: "<=", Unit: "µs"}
	if a, ok := r.get("wrk", judged, "cpu_us_per_req"); ok {
		if d, ok := r.get("wrk", "sidecar-default", "cpu_us_per_req"); ok {
			v := a - d
			b.Value = &v
			b.Detail = fmt.Sprintf("%.1f − %.1f = %+.1f µs/req", a, d, v)
		}
	}
	r.judge(&b, "wrk", judged, "sidecar-default")
	out = append(out, b)

	b = bar{Name: "added p50 at a fixed rate within 40 µs of HAProxy's", Figure: "p50 of sidecar-policies − p50 of haproxy (the direct call's p50 cancels)", Limit: 40, Op: "<=", Unit: "µs"}
	if a, ok := r.get("latency", judged, "p50_us"); ok {
		if h, ok := r.get("latency", "haproxy", "p50_us"); ok {
			v := a - h
			b.Value = &v
			b.Detail = fmt.Sprintf("%.0f − %.0f = %+.0f µs", a, h, v)
			if d, ok := r.get("latency", "direct", "p50_us"); ok {
				b.Detail += fmt.Sprintf(" (added p50: sidecar-policies %+.0f, haproxy %+.0f)", a-d, h-d)
			}
		}
	}
	r.judge(&b, "latency", judged, "haproxy")
	out = append(out, b)

	ratioBar("h2c: CPU per request at most 1.8× HAProxy's", "h2c", "cpu_us_per_req", "µs/req", 1.8)
	ratioBar("gRPC unary: CPU per call at most 2.5× HAProxy's", "grpc-unary", "cpu_us_per_call", "µs/call", 2.5)

	b = bar{Name: "10,000 idle keep-alive connections: RSS under 64 MiB", Figure: "sidecar-policies VmRSS with the connections open", Limit: 64, Op: "<", Unit: "MiB"}
	if a, ok := r.get("idle", judged, "rss_after_mib"); ok {
		n, _ := r.get("idle", judged, "conns")
		b.Detail = fmt.Sprintf("%.1f MiB with %.0f idle connections", a, n)
		if n >= 10000 {
			b.Value = &a
		} else {
			kib, _ := r.get("idle", judged, "kib_per_conn")
			before, _ := r.get("idle", judged, "rss_before_mib")
			b.Detail += fmt.Sprintf("; only %.0f held, so not assessed (extrapolated to 10,000: %.1f MiB)", n, before+kib*10000/1024)
		}
	}
	r.judge(&b, "idle", judged)
	out = append(out, b)

	b = bar{Name: "async route, fsync always, 64 connections: at least 12× the disk's single-writer fsync rate", Figure: "sidecar-async 202s/s / fsyncrate syncs/s", Limit: 12, Op: ">=", Unit: "×"}
	if a, ok := r.get("async", "sidecar-async", "enq_per_s"); ok {
		if f, ok := r.get("fsync", "fsyncrate", "syncs_per_s"); ok && f > 0 {
			v := a / f
			b.Value = &v
			b.Detail = fmt.Sprintf("%.0f / %.0f = %.2f×", a, f, v)
			if c, ok := r.get("async", "bare202", "enq_per_s"); ok {
				b.Detail += fmt.Sprintf("; the ceiling, bare202: %.2f×", c/f)
			}
			if c, ok := r.get("async", "haproxy-202", "enq_per_s"); ok {
				b.Detail += fmt.Sprintf(", haproxy-202: %.2f×", c/f)
			}
		}
	}
	r.judge(&b, "async", "sidecar-async")
	out = append(out, b)
	return out
}

// judge sets b's verdict from its value, flagging rows with problems.
func (r *report) judge(b *bar, load string, targets ...string) {
	switch {
	case b.Value == nil && b.Detail != "":
		b.Verdict = "not assessed"
	case b.Value == nil:
		b.Verdict = "not measured"
	case b.Op == "<=" && *b.Value <= b.Limit, b.Op == "<" && *b.Value < b.Limit, b.Op == ">=" && *b.Value >= b.Limit:
		b.Verdict = "PASS"
	default:
		b.Verdict = "FAIL"
	}
	for _, t := range targets {
		if r.bad[load+"/"+t] {
			b.Verdict += " (⚠ problems in a round: see Problems seen)"
			break
		}
	}
}

// ---------------------------------------------------------------- markdown

func f(v float64, ok bool, format string) string {
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

// ratioCells: "× HAProxy" and "× nginx" cells of KEY for TARGET.
func (r *report) ratioCells(load, target, key string) string {
	var cells []string
	for _, base := range []string{"haproxy", "nginx"} {
		v, ok1 := r.get(load, target, key)
		b, ok2 := r.get(load, base, key)
		cells = append(cells, f(v/b, ok1 && ok2 && b > 0, "%.2f"))
	}
	return strings.Join(cells, " | ")
}

func (r *report) row(w *bytes.Buffer, load, target string, cells ...string) {
	name := target
	if r.bad[load+"/"+target] {
		name += " ⚠"
	}
	fmt.Fprintf(w, "| %s | %s |\n", name, strings.Join(cells, " | "))
}

func (r *report) markdown(w *bytes.Buffer, bars []bar) {
	title := "One run of everything (`bench/run.sh`)"
	if r.smoke {
		title += ": SMOKE run (timings mean nothing)"
	}
	fmt.Fprintf(w, "# %s\n\n", title)
	for _, m := range r.meta {
		fmt.Fprintf(w, "- %s: %s\n", m.Key, m.Value)
	}
	g := func(l, t, k, format string) string { v, ok := r.get(l, t, k); return f(v, ok, format) }

	if ts := r.targets["wrk"]; len(ts) > 0 {
		fmt.Fprintf(w, "\n## HTTP/1.1 throughput, closed loop\n\n")
		fmt.Fprintf(w, "| target | req/s | CPU µs/req | × HAProxy | × nginx | proxy core busy %% | load core busy %% |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range ts {
			r.row(w, "wrk", t, g("wrk", t, "rps", "%.0f"), g("wrk", t, "cpu_us_per_req", "%.1f"), r.ratioCells("wrk", t, "cpu_us_per_req"),
				g("wrk", t, "proxy_busy_pct", "%.0f"), g("wrk", t, "load_busy_pct", "%.0f"))
		}
	}
	if ts := r.targets["latency"]; len(ts) > 0 {
		fmt.Fprintf(w, "\n## Fixed-rate latency, open loop\n\n")
		fmt.Fprintf(w, "| target | p50 µs | p99 µs | added p50 | added p99 | added p50 − HAProxy's | added p50 − nginx's |\n|---|---:|---:|---:|---:|---:|---:|\n")
		d50, dok50 := r.get("latency", "direct", "p50_us")
		d99, dok99 := r.get("latency", "direct", "p99_us")
		for _, t := range ts {
			p50, ok50 := r.get("latency", t, "p50_us")
			p99, ok99 := r.get("latency", t, "p99_us")
			h, hok := r.get("latency", "haproxy", "p50_us")
			n, nok := r.get("latency", "nginx", "p50_us")
			add50, add99, vh, vn := "—", "—", "—", "—"
			if t != "direct" {
				add50 = f(p50-d50, ok50 && dok50, "%+.0f")
				add99 = f(p99-d99, ok99 && dok99, "%+.0f")
				vh = f(p50-h, ok50 && hok, "%+.0f")
				vn = f(p50-n, ok50 && nok, "%+.0f")
			}
			r.row(w, "latency", t, f(p50, ok50, "%.0f"), f(p99, ok99, "%.0f"), add50, add99, vh, vn)
		}
	}
	if ts := r.targets["syscalls"]; len(ts) > 0 {
		fmt.Fprintf(w, "\n## Syscalls per request (HTTP/1.1, closed loop)\n\n")
		fmt.Fprintf(w, "| target | syscalls/req | × HAProxy | × nginx | the most frequent, per request |\n|---|---:|---:|---:|---|\n")
		for _, t := range ts {
			r.row(w, "syscalls", t, g("syscalls", t, "syscalls_per_req", "%.2f"), r.ratioCells("syscalls", t, "syscalls_per_req"), r.topSyscalls(t))
		}
	}
	if ts := r.targets["idle"]; len(ts) > 0 {
		fmt.Fprintf(w, "\n## Idle keep-alive connections\n\n")
		fmt.Fprintf(w, "| target | connections held | RSS before MiB | RSS with them MiB | KiB per connection | × HAProxy | × nginx |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range ts {
			r.row(w, "idle", t, g("idle", t, "opened", "%.0f"), g("idle", t, "rss_before_mib", "%.1f"), g("idle", t, "rss_after_mib", "%.1f"),
				g("idle", t, "kib_per_conn", "%.1f"), r.ratioCells("idle", t, "kib_per_conn"))
		}
	}
	if ts := r.targets["h2c"]; len(ts) > 0 {
		fmt.Fprintf(w, "\n## h2c (h2load)\n\n")
		fmt.Fprintf(w, "| target | req/s | mean latency µs | CPU µs/req | × HAProxy | × nginx | proxy core busy %% | load core busy %% |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range ts {
			r.row(w, "h2c", t, g("h2c", t, "rps", "%.0f"), g("h2c", t, "mean_us", "%.0f"), g("h2c", t, "cpu_us_per_req", "%.1f"),
				r.ratioCells("h2c", t, "cpu_us_per_req"), g("h2c", t, "proxy_busy_pct", "%.0f"), g("h2c", t, "load_busy_pct", "%.0f"))
		}
	}
	for _, gl := range []struct{ load, title string }{{"grpc-unary", "gRPC unary calls"}, {"grpc-stream", "gRPC streaming (ping-pong messages on long-lived bidi streams)"}} {
		ts := r.targets[gl.load]
		if len(ts) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n## %s\n\n", gl.title)
		fmt.Fprintf(w, "| target | calls/s | p50 µs | p99 µs | CPU µs/call | × HAProxy | proxy core busy %% | load core busy %% |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range ts {
			v, ok1 := r.get(gl.load, t, "cpu_us_per_call")
			h, ok2 := r.get(gl.load, "haproxy", "cpu_us_per_call")
			r.row(w, gl.load, t, g(gl.load, t, "calls_per_s", "%.0f"), g(gl.load, t, "p50_us", "%.0f"), g(gl.load, t, "p99_us", "%.0f"),
				f(v, ok1, "%.1f"), f(v/h, ok1 && ok2 && h > 0, "%.2f"), g(gl.load, t, "proxy_busy_pct", "%.0f"), g(gl.load, t, "load_busy_pct", "%.0f"))
		}
	}
	if len(r.targets["async"]) > 0 || len(r.targets["fsync"]) > 0 {
		fmt.Fprintf(w, "\n## Async route, `fsync: always`\n\n")
		fmt.Fprintf(w, "bare202 and haproxy-202 are ceilings: the sidecar's own HTTP/1.1 server and HAProxy answering the same POSTs with a 202 and doing nothing else. No spool can make the async route faster than the server in front of it.\n\n")
		fmt.Fprintf(w, "| what | per second | p50 µs | p99 µs | CPU µs/req | proxy busy %% | × fsync rate | of bare202 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		fs, fok := r.get("fsync", "fsyncrate", "syncs_per_s")
		for _, t := range r.targets["fsync"] {
			r.row(w, "fsync", t+" (one writer: write + fdatasync)", g("fsync", t, "syncs_per_s", "%.0f"), g("fsync", t, "p50_us", "%.0f"), g("fsync", t, "p99_us", "%.0f"), "—", "—", "1", "—")
		}
		bare, bok := r.get("async", "bare202", "enq_per_s")
		for _, t := range r.targets["async"] {
			v, ok := r.get("async", t, "enq_per_s")
			r.row(w, "async", t+" (202s)", f(v, ok, "%.0f"), g("async", t, "p50_us", "%.0f"), g("async", t, "p99_us", "%.0f"),
				g("async", t, "cpu_us_per_req", "%.1f"), g("async", t, "proxy_busy_pct", "%.0f"), f(v/fs, ok && fok && fs > 0, "%.2f"), f(v/bare, ok && bok && bare > 0, "%.2f"))
		}
	}

	fmt.Fprintf(w, "\n## The bars (issue 15), judged on %s\n\n", judged)
	if r.smoke {
		fmt.Fprintf(w, "A smoke run: the verdicts below are computed only to check the harness; they mean nothing.\n\n")
	}
	for _, b := range bars {
		detail := b.Detail
		if detail == "" {
			detail = "—"
		}
		fmt.Fprintf(w, "- %s: %s (bar %s %g %s): **%s**\n", b.Name, detail, b.Op, b.Limit, b.Unit, b.Verdict)
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(w, "\n## Problems seen\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(w, "- round %s, %s, %s (%s): %s\n", n.Round, n.Target, n.Load, n.Kind, n.Text)
		}
	}
}

// topSyscalls: the five most frequent syscalls of TARGET per request
// (figures named "per_req.NAME").
func (r *report) topSyscalls(target string) string {
	type kv struct {
		k string
		v float64
	}
	var all []kv
	for k, v := range r.med["syscalls"][target] {
		if name, ok := strings.CutPrefix(k, "per_req."); ok && v >= 0.005 {
			all = append(all, kv{name, v})
		}
	}
	slices.SortFunc(all, func(a, b kv) int {
		if a.v != b.v {
			if a.v > b.v {
				return -1
			}
			return 1
		}
		return strings.Compare(a.k, b.k)
	})
	var parts []string
	for i, e := range all {
		if i == 5 {
			break
		}
		parts = append(parts, e.k+" "+strconv.FormatFloat(e.v, 'f', 2, 64))
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}

// ---------------------------------------------------------------- JSON

func (r *report) json(bars []bar) ([]byte, error) {
	meta := map[string]any{}
	for _, m := range r.meta {
		switch old := meta[m.Key].(type) {
		case nil:
			meta[m.Key] = m.Value
		case string:
			meta[m.Key] = []string{old, m.Value}
		case []string:
			meta[m.Key] = append(old, m.Value)
		}
	}
	raw := make([]json.RawMessage, len(r.recs))
	for i, rec := range r.recs {
		raw[i] = rec.Raw
	}
	notes := r.notes
	if notes == nil {
		notes = []note{}
	}
	out := struct {
		Smoke   bool                                     `json:"smoke"`
		Meta    map[string]any                           `json:"meta"`
		Targets map[string][]string                      `json:"targets"`
		Rounds  map[string]map[string]int                `json:"rounds"`
		Medians map[string]map[string]map[string]float64 `json:"medians"`
		Bars    []bar                                    `json:"bars"`
		Notes   []note                                   `json:"notes"`
		Raw     []json.RawMessage                        `json:"raw"`
	}{r.smoke, meta, r.targets, r.rounds, r.med, bars, notes, raw}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// summary is everything the soak reports; summary.json is its JSON.
type summary struct {
	Started     string                `json:"started"`
	Version     string                `json:"sidecar_version"`
	Duration    string                `json:"duration"`
	Options     map[string]any        `json:"options"`
	Schedule    scheduleDesc          `json:"schedule"`
	Deadlines   map[string]string     `json:"deadlines"`
	Requests    map[string]*kindStats `json:"requests"`
	Faults      []faultRec            `json:"faults"`
	Reloads     []reloadRec           `json:"reloads"`
	Restart     *spoolState           `json:"spool_after_restart"`
	DiskFull    diskFullRec           `json:"disk_full"`
	Async       asyncRec              `json:"async"`
	Resources   resourcesRec          `json:"resources"`
	Stalls      stallRec              `json:"soak_stalls"`
	LoadStopped float64               `json:"load_stopped_s"`
	CleanStop   string                `json:"clean_stop"`
	Checks      []check               `json:"checks"`
	Pass        bool                  `json:"pass"`
	Aborted     string                `json:"aborted,omitempty"`

	resumeMax time.Duration
}

type scheduleDesc struct {
	KillAt      string `json:"kill_at"`
	DownFor     string `json:"down_for"`
	Window      string `json:"fault_window"`
	Gap         string `json:"fault_gap"`
	Cooldown    string `json:"cooldown"`
	ReloadEvery string `json:"reload_every"`
	ResumeMax   string `json:"disk_resume_max"`
}

// goroutineSlack is how many goroutines the end may have beyond the
// baseline: connections still closing, a deliverer's timer.
const goroutineSlack = 20

func (sch schedule) describe() scheduleDesc {
	return scheduleDesc{KillAt: sch.killAt.String(), DownFor: sch.downFor.String(), Window: sch.window.String(),
		Gap: sch.gap.String(), Cooldown: sch.cooldown.String(), ResumeMax: sch.resumeMax.String()}
}

// kindStats are the requests of one kind.
type kindStats struct {
	Total      int            `json:"total"`
	Answers    map[string]int `json:"answers"`              // by status and Sidecar-Outcome
	Refused    int            `json:"refused"`              // connection refused: the sidecar was down
	Errors     map[string]int `json:"errors"`               // no (whole) answer, by class, refused excluded
	Hung       int            `json:"hung"`                 // took longer than the deadline (refused excluded), the sidecar's doing
	LateOnTime int            `json:"late_sidecar_on_time"` // past the deadline, though the sidecar's access log shows it answered in time
	LateStall  int            `json:"late_soak_stalled"`    // past the deadline by less than a stall of the soak process during it
	Corrupt    int            `json:"corrupt"`              // a 200 whose body was not the upstream's
	Unlabelled int            `json:"unlabelled"`
	DeadlineMs float64        `json:"deadline_ms"`
	P50Ms      float64        `json:"p50_ms"`
	P99Ms      float64        `json:"p99_ms"`
	MaxMs      float64        `json:"max_ms"`
	Examples   []string       `json:"examples,omitempty"` // hung, corrupt, unlabelled, first few errors
}

type faultRec struct {
	Kind   string  `json:"kind"`
	Start  float64 `json:"start_s"`
	End    float64 `json:"end_s"`
	Detail string  `json:"detail"`
}

type reloadRec struct {
	At         float64 `json:"at_s"`
	Trigger    string  `json:"trigger"`
	WebTimeout string  `json:"web_timeout"`
	Applied    bool    `json:"applied"`
	Seconds    float64 `json:"seconds"`
	Result     string  `json:"result"`
}

type window2 struct {
	Full          float64        `json:"full_s"`
	Free          float64        `json:"free_s"`
	Always        map[string]int `json:"always_answers"`   // when: always answers while full
	Fallback      map[string]int `json:"fallback_answers"` // when: upstream_down answers while full
	ClearRefusals int            `json:"clear_refusals"`   // 503 spool_error / spool_full
	Unclear       int            `json:"unclear"`          // anything else but a 202
	Accepted      int            `json:"accepted_202"`
	ResumedAfter  float64        `json:"resumed_after_s"` // first 202 after the free; -1: none
}

type diskFullRec struct {
	Tmpfs   string    `json:"tmpfs,omitempty"`
	Skipped string    `json:"skipped,omitempty"`
	Windows []window2 `json:"windows"`
}

type asyncRec struct {
	Sent                int            `json:"sent"`
	Acked202            int            `json:"acked_202"`
	Sync200             int            `json:"sync_200"` // upstream_down route, answered by the upstream
	Other               map[string]int `json:"other_answers"`
	NoAnswer            int            `json:"no_answer"`
	AckedWithoutSpoolID int            `json:"acked_without_spool_id"`
	Delivered           int            `json:"delivered"` // acknowledged (202 or 200) and delivered
	Lost                int            `json:"lost"`
	LostIDs             []string       `json:"lost_ids,omitempty"`
	DeliveredNotAcked   int            `json:"delivered_not_acked"`
	DuplicateIDs        int            `json:"duplicate_ids"`
	ExtraDeliveries     int            `json:"extra_deliveries"`
	Explained           int            `json:"duplicates_explained"`
	Unexplained         int            `json:"duplicates_unexplained"`
	KeyProblems         []string       `json:"key_problems,omitempty"`
	BadBodies           int            `json:"bad_bodies"`
	SinkRequests        int            `json:"sink_requests"`
	Sink503             int            `json:"sink_503"`
	SinkAborted         int            `json:"sink_aborted"`
	Drained             bool           `json:"drained"`
	DrainSeconds        float64        `json:"drain_s"`
	EndDepth            int64          `json:"end_depth"`
	EndDead             int64          `json:"end_dead"`
	EndSegments         int64          `json:"end_segments"`
}

type resources struct {
	PID        int     `json:"pid"`
	At         float64 `json:"at_s"`
	FDs        int     `json:"fds"`
	RSSMiB     float64 `json:"rss_mib"`
	Threads    int     `json:"threads"`
	Goroutines int     `json:"goroutines"` // -1: not exposed
	Settled    bool    `json:"settled"`
}

type resourcesRec struct {
	Baseline    resources `json:"baseline"`
	End         resources `json:"end"`
	PeakFDs     int       `json:"peak_fds"`
	PeakRSSMiB  float64   `json:"peak_rss_mib"`
	PeakThreads int       `json:"peak_threads"`
	FDSlack     int       `json:"fd_slack"`
	RSSLimitMiB float64   `json:"rss_limit_mib"`
	Goroutines  string    `json:"goroutines_note"`
}

// stallRec sums up the soak process's own stalls (lateness.go).
type stallRec struct {
	Threshold  string  `json:"threshold"`
	Count      int     `json:"count"`
	MaxMs      float64 `json:"max_ms"`
	AccessLogs int     `json:"access_log_lines"`
}

type check struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

func newSummary(o options) *summary {
	return &summary{
		Started:  time.Now().UTC().Format(time.RFC3339),
		Duration: o.duration.String(),
		Options: map[string]any{
			"http_rate": o.httpRate, "grpc_rate": o.grpcRate, "async_rate": o.asyncRate,
			"port_base": o.portBase, "grace": o.grace.String(), "sink_fail_pct": o.sinkFailPct,
			"tmpfs_size": o.tmpfsSize, "drain_max": o.drainMax.String(),
			"fd_slack": o.fdSlack, "rss_slack_pct": o.rssSlackPct, "rss_slack_mib": o.rssSlackMiB,
		},
		Requests:  map[string]*kindStats{},
		resumeMax: newSchedule(o.duration).resumeMax,
	}
}

// analyse turns the recorded answers and deliveries into the summary's
// counts and checks.
func (s *soak) analyse() {
	sum, o := s.sum, s.o
	s.rec.mu.Lock()
	answers, msgs := s.rec.answers, s.rec.msgs
	s.rec.mu.Unlock()

	// Requests by kind.
	durs := map[string][]time.Duration{}
	for _, k := range kinds {
		sum.Requests[k] = &kindStats{Answers: map[string]int{}, Errors: map[string]int{}}
	}
	example := func(ks *kindStats, format string, args ...any) {
		if len(ks.Examples) < 8 {
			ks.Examples = append(ks.Examples, fmt.Sprintf(format, args...))
		}
	}
	for _, a := range answers {
		ks := sum.Requests[a.kind]
		ks.Total++
		ks.DeadlineMs = ms(a.deadline)
		durs[a.kind] = append(durs[a.kind], a.dur)
		switch {
		case a.errClass == errRefused:
			ks.Refused++
		case a.errClass != "":
			ks.Errors[a.errClass]++
			if a.status != "error:"+a.errClass {
				ks.Answers[a.label()]++ // an answer whose body broke off
			}
			if ks.Errors[a.errClass] <= 2 {
				example(ks, "at %.1fs after %.0fms: %s: %s", secs(a.at), ms(a.dur), a.status, a.errText)
			}
		default:
			ks.Answers[a.label()]++
		}
		if a.errClass != errRefused && a.dur > a.deadline {
			line, logged := s.access[a.path]
			switch {
			case a.path != "" && logged && line.Duration <= a.deadline:
				ks.LateOnTime++
				example(ks, "late at %.1fs: %s took %.0fms, deadline %.0fms; the sidecar's access log: %d %s in %.0fms", secs(a.at), a.label(), ms(a.dur), ms(a.deadline), line.Status, line.Outcome, ms(line.Duration))
			case s.stalls.explains(a.at, a.at+a.dur, a.dur-a.deadline):
				ks.LateStall++
				example(ks, "late at %.1fs: %s took %.0fms, deadline %.0fms, during a stall of the soak process at least as long", secs(a.at), a.label(), ms(a.dur), ms(a.deadline))
			default:
				ks.Hung++
				sidecarSaw := "no access log line"
				if logged {
					sidecarSaw = fmt.Sprintf("the sidecar's access log: %d %s in %.0fms", line.Status, line.Outcome, ms(line.Duration))
				}
				example(ks, "HUNG at %.1fs: %s took %.0fms, deadline %.0fms; %s (%s)", secs(a.at), a.label(), ms(a.dur), ms(a.deadline), sidecarSaw, a.errText)
			}
		}
		if a.corrupt {
			ks.Corrupt++
			example(ks, "CORRUPT at %.1fs: %s with a body that is not the upstream's", secs(a.at), a.label())
		}
		if a.errClass == "" && a.kind != kindGRPC && !strings.HasPrefix(a.status, "2") && a.outcome == "" {
			ks.Unlabelled++
			example(ks, "UNLABELLED at %.1fs: %s without Sidecar-Outcome", secs(a.at), a.status)
		}
	}
	for k, d := range durs {
		slices.Sort(d)
		ks := sum.Requests[k]
		ks.P50Ms, ks.P99Ms, ks.MaxMs = ms(pct(d, 0.5)), ms(pct(d, 0.99)), ms(d[len(d)-1])
	}

	// Async: acknowledged against delivered.
	as := &sum.Async
	as.Other = map[string]int{}
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	as.SinkRequests, as.Sink503, as.SinkAborted, as.BadBodies = s.sink.total, s.sink.failed, s.sink.aborted, s.sink.bad
	byID := map[string]*asyncMsg{}
	for _, m := range msgs {
		byID[m.id] = m
		as.Sent++
		acked := false
		switch {
		case m.status == 0:
			as.NoAnswer++
		case m.status == 202:
			as.Acked202++
			acked = true
			if m.spoolID == "" {
				as.AckedWithoutSpoolID++
			}
		case m.status == 200 && m.kind == kindFallback:
			as.Sync200++
			acked = true
		default:
			lbl := fmt.Sprint(m.status)
			if m.outcome != "" {
				lbl += " " + m.outcome
			}
			as.Other[lbl]++
		}
		d := s.sink.seen[m.id]
		switch {
		case acked && (d == nil || d.delivered == 0):
			as.Lost++
			if len(as.LostIDs) < 20 {
				as.LostIDs = append(as.LostIDs, fmt.Sprintf("%s (%s, answered %d at %.1fs, spool id %q, app key %q)", m.id, m.kind, m.status, secs(m.end), m.spoolID, m.appKey))
			}
		case acked:
			as.Delivered++
		case d != nil && d.delivered > 0:
			as.DeliveredNotAcked++
		}
		if d == nil || d.delivered == 0 {
			continue
		}
		if d.badBody || d.crc != m.crc {
			as.BadBodies++
		}
		keyOK := len(d.keys) == 1 && d.keys[0] != "" && (m.appKey == "" || d.keys[0] == m.appKey)
		if d.delivered > 1 {
			as.DuplicateIDs++
			as.ExtraDeliveries += d.delivered - 1
			if keyOK {
				as.Explained++
			} else {
				as.Unexplained++
			}
		}
		if !keyOK && len(as.KeyProblems) < 20 {
			as.KeyProblems = append(as.KeyProblems, fmt.Sprintf("%s delivered %d times with keys %q (app key %q)", m.id, d.delivered, d.keys, m.appKey))
		}
	}
	for id := range s.sink.seen {
		if byID[id] == nil {
			as.BadBodies++ // an id the soak never sent
		}
	}

	// The disk-full windows.
	for i := range sum.DiskFull.Windows {
		w := &sum.DiskFull.Windows[i]
		w.Always, w.Fallback, w.ResumedAfter = map[string]int{}, map[string]int{}, -1
		for _, a := range answers {
			at, end := secs(a.at), secs(a.at+a.dur)
			if a.kind == kindAlways && at >= w.Free && a.status == "202" && (w.ResumedAfter < 0 || end-w.Free < w.ResumedAfter) {
				w.ResumedAfter = end - w.Free
			}
			if at < w.Full || end > w.Free {
				continue
			}
			switch a.kind {
			case kindAlways:
				w.Always[a.label()]++
				switch {
				case a.status == "202":
					w.Accepted++
				case a.status == "503" && (a.outcome == "spool_error" || a.outcome == "spool_full"):
					w.ClearRefusals++
				default:
					w.Unclear++
				}
			case kindFallback:
				w.Fallback[a.label()]++
			}
		}
	}

	s.stalls.mu.Lock()
	sum.Stalls = stallRec{Threshold: s.stalls.threshold.String(), Count: len(s.stalls.stalls), MaxMs: ms(s.stalls.max), AccessLogs: s.accessN}
	s.stalls.mu.Unlock()

	// Resources.
	r := &sum.Resources
	r.FDSlack = o.fdSlack
	r.RSSLimitMiB = r.Baseline.RSSMiB*(1+float64(o.rssSlackPct)/100) + float64(o.rssSlackMiB)
	if r.Baseline.Goroutines < 0 {
		r.Goroutines = "not exposed: this sidecar's /metrics has no sidecar_goroutines gauge, so goroutines are not checked; Threads (OS threads, from /proc/PID/status) are shown instead, for information"
	}
	sum.checks()
}

// checks fills sum.Checks and sum.Pass.
func (sum *summary) checks() {
	add := func(name string, pass bool, format string, args ...any) {
		sum.Checks = append(sum.Checks, check{Name: name, Pass: pass, Detail: fmt.Sprintf(format, args...)})
	}
	as := &sum.Async
	add("every acknowledged async message was delivered", as.Lost == 0 && as.Acked202 > 0 && as.AckedWithoutSpoolID == 0,
		"%d answered 202 and %d answered 200 by the upstream (upstream_down route); %d of them delivered, %d lost", as.Acked202, as.Sync200, as.Delivered, as.Lost)
	add("duplicates explained by the idempotency key", as.Unexplained == 0 && len(as.KeyProblems) == 0 && as.BadBodies == 0,
		"%d ids delivered more than once (%d extra deliveries): %d with one key every time, %d not; %d key problems; %d bodies that differ or were never sent",
		as.DuplicateIDs, as.ExtraDeliveries, as.Explained, as.Unexplained, len(as.KeyProblems), as.BadBodies)
	add("the spool drained", as.Drained, "depth %d, dead %d, after %.1fs", as.EndDepth, as.EndDead, as.DrainSeconds)
	hung, late, corrupt, unlabelled, total, refused := 0, 0, 0, 0, 0, 0
	for _, ks := range sum.Requests {
		hung += ks.Hung
		late += ks.LateOnTime + ks.LateStall
		corrupt += ks.Corrupt
		unlabelled += ks.Unlabelled
		total += ks.Total
		refused += ks.Refused
	}
	add("no request hung past its deadline", hung == 0, "%d of %d requests past route timeout + grace and held that long by the sidecar; %d more were late though the sidecar answered in time or the soak process itself stalled as long (%d stalls over %s, the longest %.0fms); %d refused while the sidecar was down, not counted",
		hung, total, late, sum.Stalls.Count, sum.Stalls.Threshold, sum.Stalls.MaxMs, refused)
	add("no truncated or altered answer passed as whole", corrupt == 0, "%d 200s with a body other than the upstream's", corrupt)
	add("every error the sidecar made is labelled", unlabelled == 0, "%d HTTP non-2xx answers without Sidecar-Outcome (the soak's upstreams never answer non-2xx)", unlabelled)

	ran := map[string]bool{}
	for _, f := range sum.Faults {
		if !strings.HasPrefix(f.Detail, "skipped") {
			ran[f.Kind] = true
		}
	}
	var missing []string
	for _, k := range append([]string{"sigkill_restart"}, faultCycle...) {
		if !ran[k] && (k != "disk_full" || sum.DiskFull.Skipped == "") {
			missing = append(missing, k)
		}
	}
	add("every fault injected", len(missing) == 0, "%d faults; missing: %s", len(sum.Faults), orNone(missing))
	applied := 0
	for _, r := range sum.Reloads {
		if r.Applied {
			applied++
		}
	}
	add("every reload applied", len(sum.Reloads) > 0 && applied == len(sum.Reloads), "%d of %d reloads applied", applied, len(sum.Reloads))

	if sum.DiskFull.Skipped != "" {
		add("disk full: refused clearly, then 202s again", true, "skipped: %s", sum.DiskFull.Skipped)
	} else {
		ok := len(sum.DiskFull.Windows) > 0
		var parts []string
		for _, w := range sum.DiskFull.Windows {
			wok := w.ClearRefusals > 0 && w.Unclear == 0 && w.ResumedAfter >= 0 && w.ResumedAfter <= sum.resumeMax.Seconds()
			ok = ok && wok
			parts = append(parts, fmt.Sprintf("full %.1f-%.1fs: %d clear 503s, %d 202s, %d other; 202s again %.1fs after the free", w.Full, w.Free, w.ClearRefusals, w.Accepted, w.Unclear, w.ResumedAfter))
		}
		add("disk full: refused clearly, then 202s again", ok, "%s (bound %v)", orNone(parts), sum.resumeMax)
	}

	r := sum.Resources
	add("file descriptors back to baseline", r.End.FDs > 0 && r.End.FDs <= r.Baseline.FDs+r.FDSlack, "baseline %d, end %d (slack %d), peak %d", r.Baseline.FDs, r.End.FDs, r.FDSlack, r.PeakFDs)
	add("RSS back to baseline", r.End.RSSMiB > 0 && r.End.RSSMiB <= r.RSSLimitMiB, "baseline %.1f MiB, end %.1f MiB (limit %.1f MiB), peak %.1f MiB", r.Baseline.RSSMiB, r.End.RSSMiB, r.RSSLimitMiB, r.PeakRSSMiB)
	if r.Baseline.Goroutines >= 0 && r.End.Goroutines >= 0 {
		add("goroutines back to baseline", r.End.Goroutines <= r.Baseline.Goroutines+goroutineSlack, "baseline %d, end %d (slack %d)", r.Baseline.Goroutines, r.End.Goroutines, goroutineSlack)
	}
	add("clean stop after the soak", sum.CleanStop == "exit 0", "SIGTERM: %s", sum.CleanStop)

	sum.Pass = sum.Aborted == ""
	for _, c := range sum.Checks {
		sum.Pass = sum.Pass && c.Pass
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the nearest-rank percentile p of sorted d.
func pct(d []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(d)) + 0.5)
	return d[min(max(i-1, 0), len(d)-1)]
}

// write saves summary.json and summary.md in dir.
func (sum *summary) write(dir string) error {
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "summary.md"), []byte(sum.markdown()), 0o644)
}

// markdown renders the summary for people.
func (sum *summary) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	verdict := "PASS"
	if !sum.Pass {
		verdict = "FAIL"
	}
	p("# Soak with faults: %s\n\n", verdict)
	p("Sidecar: %s.\n\n", strings.ReplaceAll(sum.Version, "\n", ", "))
	p("Started %s, load for %s: %v HTTP/s, %v gRPC/s, %v async/s, all on 127.0.0.1 through toxiproxy. ", sum.Started, sum.Duration, sum.Options["http_rate"], sum.Options["grpc_rate"], sum.Options["async_rate"])
	p("Schedule: SIGKILL at %s (down %s), faults of %s every %s after it, reloads every %s, %s cool-down without faults.\n\n", sum.Schedule.KillAt, sum.Schedule.DownFor, sum.Schedule.Window, sum.Schedule.Gap, sum.Schedule.ReloadEvery, sum.Schedule.Cooldown)
	if sum.Aborted != "" {
		p("**Aborted:** %s\n\n", sum.Aborted)
	}

	p("## Checks\n\n| check | result | detail |\n|---|---|---|\n")
	for _, c := range sum.Checks {
		res := "pass"
		if !c.Pass {
			res = "**FAIL**"
		}
		p("| %s | %s | %s |\n", c.Name, res, esc(c.Detail))
	}

	p("\n## Requests\n\nDeadline = the route's timeout (the larger of the reloads' two for the web route) + grace %s. Refused = connection refused while the sidecar was down (not counted as hung). Late, not the sidecar's = past the deadline though the sidecar's access log shows it answered in time, or while the soak process itself stalled as long (not counted as hung).\n\n", sum.Options["grace"])
	p("| kind | total | answers (status outcome: count) | refused | no whole answer | hung | late, not the sidecar's | corrupt | p50 ms | p99 ms | max ms | deadline ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range kinds {
		ks := sum.Requests[k]
		if ks == nil {
			continue
		}
		p("| %s | %d | %s | %d | %s | %d | %d | %d | %.1f | %.1f | %.1f | %.0f |\n", k, ks.Total, counts(ks.Answers), ks.Refused, counts(ks.Errors), ks.Hung, ks.LateOnTime+ks.LateStall, ks.Corrupt, ks.P50Ms, ks.P99Ms, ks.MaxMs, ks.DeadlineMs)
	}
	for _, k := range kinds {
		if ks := sum.Requests[k]; ks != nil && len(ks.Examples) > 0 {
			p("\n%s examples:\n\n", k)
			for _, e := range ks.Examples {
				p("- %s\n", esc(e))
			}
		}
	}

	p("\n## Faults\n\n| start s | end s | fault | detail |\n|---|---|---|---|\n")
	for _, f := range sum.Faults {
		p("| %.1f | %.1f | %s | %s |\n", f.Start, f.End, f.Kind, esc(f.Detail))
	}
	p("\n## Reloads\n\n| at s | trigger | web timeout | applied | took s | result |\n|---|---|---|---|---|---|\n")
	for _, r := range sum.Reloads {
		p("| %.1f | %s | %s | %v | %.2f | %s |\n", r.At, r.Trigger, r.WebTimeout, r.Applied, r.Seconds, esc(r.Result))
	}

	as := sum.Async
	p("\n## Async\n\n| figure | count |\n|---|---|\n")
	rows := []struct {
		k string
		v any
	}{
		{"sent", as.Sent}, {"answered 202 (spooled)", as.Acked202}, {"answered 200 by the upstream (upstream_down route)", as.Sync200},
		{"other answers", counts(as.Other)}, {"no answer (sidecar killed, connection cut)", as.NoAnswer},
		{"acknowledged and delivered", as.Delivered}, {"**lost** (acknowledged, never delivered)", as.Lost},
		{"delivered though not acknowledged", as.DeliveredNotAcked},
		{"ids delivered more than once", as.DuplicateIDs}, {"extra deliveries", as.ExtraDeliveries},
		{"duplicates explained (one idempotency key)", as.Explained}, {"duplicates unexplained", as.Unexplained},
		{"bodies altered or unknown", as.BadBodies},
		{"sink requests / answered 503 on purpose / cut mid-body", fmt.Sprintf("%d / %d / %d", as.SinkRequests, as.Sink503, as.SinkAborted)},
		{"drain after the load stopped", fmt.Sprintf("%v in %.1fs (depth %d, dead %d, %d segment files)", as.Drained, as.DrainSeconds, as.EndDepth, as.EndDead, as.EndSegments)},
	}
	for _, r := range rows {
		p("| %s | %v |\n", r.k, r.v)
	}
	if sum.Restart != nil {
		p("\nSpool right after the SIGKILL restart: depth %d, dead %d, torn tail truncated %v, corrupt records %d.\n", sum.Restart.Total.Depth, sum.Restart.Total.Dead, sum.Restart.TornTail, sum.Restart.CorruptRecords)
	}
	for _, l := range [][]string{as.LostIDs, as.KeyProblems} {
		for _, e := range l {
			p("- %s\n", esc(e))
		}
	}

	p("\n## Disk full\n\n")
	if sum.DiskFull.Skipped != "" {
		p("Skipped: %s\n", esc(sum.DiskFull.Skipped))
	} else {
		p("The spool's own tmpfs (%s), filled by a filler file and freed.\n\n| full s | freed s | when: always answers while full | when: upstream_down answers while full | first 202 after the free |\n|---|---|---|---|---|\n", sum.DiskFull.Tmpfs)
		for _, w := range sum.DiskFull.Windows {
			p("| %.1f | %.1f | %s | %s | %.1fs |\n", w.Full, w.Free, counts(w.Always), counts(w.Fallback), w.ResumedAfter)
		}
	}

	r := sum.Resources
	p("\n## Sidecar resources\n\nAt rest (load paused, clients' connections closed, upstream idle connections expired): the baseline after the restart and a warm-up, the end after the load stopped and the spool drained.\n\n")
	p("| | pid | at s | fds | RSS MiB | threads | goroutines |\n|---|---|---|---|---|---|---|\n")
	for _, x := range []struct {
		n string
		r resources
	}{{"baseline", r.Baseline}, {"end", r.End}} {
		g := "n/a"
		if x.r.Goroutines >= 0 {
			g = fmt.Sprint(x.r.Goroutines)
		}
		p("| %s | %d | %.1f | %d | %.1f | %d | %s |\n", x.n, x.r.PID, x.r.At, x.r.FDs, x.r.RSSMiB, x.r.Threads, g)
	}
	p("| peak under load | | | %d | %.1f | %d | |\n", r.PeakFDs, r.PeakRSSMiB, r.PeakThreads)
	p("\nSlack: fds +%d; RSS up to baseline × (1 + %v %%) + %v MiB = %.1f MiB.", r.FDSlack, sum.Options["rss_slack_pct"], sum.Options["rss_slack_mib"], r.RSSLimitMiB)
	if r.Goroutines != "" {
		p(" Goroutines: %s.", r.Goroutines)
	}
	p("\n")
	return b.String()
}

// counts renders a count map as "k: n, ..." by falling count.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := slices.Collect(maps.Keys(m))
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func esc(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }

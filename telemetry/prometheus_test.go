package telemetry_test

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sidecar-proxy/sidecar/telemetry"
	"github.com/sidecar-proxy/sidecar/telemetry/telemetrytest"
)

func TestEscapeLabelValue(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "orders", "orders"},
		{"backslash", `a\b`, `a\\b`},
		{"quote", `say "hi"`, `say \"hi\"`},
		{"newline", "two\nlines", `two\nlines`},
		{"all", "\\\"\n", `\\\"\n`},
		{"utf8 kept", "café", "café"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := telemetry.EscapeLabelValue(tt.in); got != tt.want {
				t.Errorf("EscapeLabelValue(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{1, "1"},
		{0.05, "0.05"},
		{-2.5, "-2.5"},
		{1e21, "1e+21"},
		{math.Inf(1), "+Inf"},
		{math.Inf(-1), "-Inf"},
		{math.NaN(), "NaN"},
	}
	for _, tt := range tests {
		if got := telemetry.FormatValue(tt.in); got != tt.want {
			t.Errorf("FormatValue(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWriteText(t *testing.T) {
	msgs := telemetry.Family{Name: "sidecar_spool_messages", Help: "Messages.\nBy route \\ state.", Type: telemetry.Gauge}
	msgs.Add(3, "route", "orders", "state", "pending")
	msgs.Add(1, "route", "we\"ird\\na\nme", "state", "dead")
	fams := []telemetry.Family{
		{Name: "sidecar_spool_appends_total", Help: "Appends.", Type: telemetry.Counter, Samples: []telemetry.Sample{{Value: 42}}},
		msgs,
		{Name: "sidecar_empty", Help: "No samples.", Type: telemetry.Gauge},
	}
	var b strings.Builder
	if err := telemetry.WriteText(&b, fams); err != nil {
		t.Fatalf("WriteText = %v", err)
	}
	want := `# HELP sidecar_spool_appends_total Appends.
# TYPE sidecar_spool_appends_total counter
sidecar_spool_appends_total 42
# HELP sidecar_spool_messages Messages.\nBy route \\ state.
# TYPE sidecar_spool_messages gauge
sidecar_spool_messages{route="orders",state="pending"} 3
sidecar_spool_messages{route="we\"ird\\na\nme",state="dead"} 1
# HELP sidecar_empty No samples.
# TYPE sidecar_empty gauge
`
	if b.String() != want {
		t.Errorf("WriteText wrote\n%s\nwant\n%s", b.String(), want)
	}
	e, err := telemetrytest.Parse(b.String())
	if err != nil {
		t.Fatalf("Parse(WriteText output) = %v", err)
	}
	if v, ok := e.Value("sidecar_spool_messages", "route", "we\"ird\\na\nme", "state", "dead"); !ok || v != 1 {
		t.Errorf("parsed escaped sample = %v, %v; want 1, true (samples %v)", v, ok, e.Samples)
	}
	if e.Types["sidecar_spool_appends_total"] != "counter" || e.Types["sidecar_empty"] != "gauge" {
		t.Errorf("parsed types = %v", e.Types)
	}
}

func TestWriteTextRefusesInvalid(t *testing.T) {
	ok := telemetry.Family{Name: "ok", Help: "h", Type: telemetry.Gauge}
	tests := []struct {
		name string
		fams []telemetry.Family
	}{
		{"empty name", []telemetry.Family{{Name: "", Type: telemetry.Gauge}}},
		{"name with dash", []telemetry.Family{{Name: "a-b", Type: telemetry.Gauge}}},
		{"name starting with digit", []telemetry.Family{{Name: "1a", Type: telemetry.Gauge}}},
		{"unknown type", []telemetry.Family{{Name: "a", Type: "histo"}}},
		{"bad label name", []telemetry.Family{{Name: "a", Type: telemetry.Gauge, Samples: []telemetry.Sample{{Labels: []telemetry.Label{{"a:b", "v"}}}}}}},
		{"reserved label name", []telemetry.Family{{Name: "a", Type: telemetry.Gauge, Samples: []telemetry.Sample{{Labels: []telemetry.Label{{"__name__", "v"}}}}}}},
		{"repeated family", []telemetry.Family{ok, ok}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			if err := telemetry.WriteText(&b, tt.fams); err == nil || b.Len() != 0 {
				t.Errorf("WriteText(%+v) = %v after writing %q, want an error and nothing written", tt.fams, err, b.String())
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, text string }{
		{"sample without TYPE", "a 1\n"},
		{"sample of another family", "# TYPE a gauge\nb 1\n"},
		{"missing value", "# TYPE a gauge\na\n"},
		{"bad value", "# TYPE a gauge\na one\n"},
		{"unquoted label", "# TYPE a gauge\na{r=x} 1\n"},
		{"raw quote in label", "# TYPE a gauge\na{r=\"x\"y\"} 1\n"},
		{"bad escape", "# TYPE a gauge\na{r=\"x\\ty\"} 1\n"},
		{"no final newline", "# TYPE a gauge\na 1"},
		{"repeated sample", "# TYPE a gauge\na 1\na 2\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := telemetrytest.Parse(tt.text); err == nil {
				t.Errorf("Parse(%q) = nil error, want one", tt.text)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	calls := 0
	h := telemetry.Handler(func() []telemetry.Family {
		calls++
		f := telemetry.Family{Name: "scrapes", Help: "Scrapes so far.", Type: telemetry.Counter}
		f.Add(float64(calls))
		return []telemetry.Family{f}
	})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	for want := 1; want <= 2; want++ {
		resp, err := http.Get(ts.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != telemetry.ContentType {
			t.Errorf("Content-Type = %q, want %q", ct, telemetry.ContentType)
		}
		e, err := telemetrytest.Parse(string(body))
		if err != nil {
			t.Fatalf("Parse(%q) = %v", body, err)
		}
		if v, _ := e.Value("scrapes"); v != float64(want) {
			t.Errorf("scrape %d: scrapes = %v, want %d (collected at each scrape)", want, v, want)
		}
	}
	bad := httptest.NewServer(telemetry.Handler(func() []telemetry.Family {
		return []telemetry.Family{{Name: "bad name", Type: telemetry.Gauge}}
	}))
	t.Cleanup(bad.Close)
	resp, err := http.Get(bad.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("invalid collection: status %d, want 500", resp.StatusCode)
	}
}

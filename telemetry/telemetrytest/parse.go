// Package telemetrytest reads the Prometheus text exposition that
// /metrics serves, in tests, with the Prometheus text parser.
package telemetrytest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Exposition is a parsed scrape.
type Exposition struct {
	// Types maps each family name to its TYPE: "counter", "gauge", ...
	Types map[string]string
	// Samples maps each sample, written as Key writes it, to its value;
	// a histogram's samples are its name_count and name_sum.
	Samples map[string]float64
}

// Value returns a sample's value and whether it is present; labels are
// name, value pairs, in any order, and must be all the sample's labels.
func (e *Exposition) Value(name string, labels ...string) (float64, bool) {
	v, ok := e.Samples[Key(name, labels...)]
	return v, ok
}

// Key returns the Samples key of a sample: name{label="value",...} with
// the labels sorted by name, or name alone without labels.
func Key(name string, labels ...string) string {
	if len(labels) < 2 {
		return name
	}
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Parse reads a text exposition with the Prometheus parser, whose names
// must be valid under the legacy (not UTF-8) scheme. A sample that
// repeats is an error.
func Parse(r io.Reader) (*Exposition, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	e := &Exposition{Types: map[string]string{}, Samples: map[string]float64{}}
	for name, f := range fams {
		e.Types[name] = strings.ToLower(f.GetType().String())
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			if h := m.GetHistogram(); f.GetType() == dto.MetricType_HISTOGRAM && h != nil {
				// A histogram is read as its _count and _sum samples.
				e.Samples[Key(name+"_count", labels...)] = float64(h.GetSampleCount())
				e.Samples[Key(name+"_sum", labels...)] = h.GetSampleSum()
				continue
			}
			key := Key(name, labels...)
			if _, dup := e.Samples[key]; dup {
				return nil, fmt.Errorf("sample %s repeated", key)
			}
			e.Samples[key] = value(f.GetType(), m)
		}
	}
	return e, nil
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	}
	return m.GetUntyped().GetValue()
}

// Scrape GETs url (a /metrics address), checks that it answers 200 in
// the text format, and returns the exposition parsed.
func Scrape(t testing.TB, url string) *Exposition {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %s, want 200", url, resp.StatusCode, body)
	}
	if f := expfmt.ResponseFormat(resp.Header); f.FormatType() != expfmt.TypeTextPlain {
		t.Errorf("GET %s Content-Type = %q, want the Prometheus text format (text/plain; version=%s)", url, resp.Header.Get("Content-Type"), expfmt.TextVersion)
	}
	e, err := Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("GET %s: %v in\n%s", url, err, body)
	}
	return e
}

// Package telemetry exposes the sidecar's metrics. It writes the
// Prometheus text exposition format, version 0.0.4, with no dependency:
// the caller collects metric families from snapshots at scrape time, so
// nothing is recorded on the request path for them.
package telemetry

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// ContentType is the Content-Type of the text exposition format 0.0.4.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Type is a metric family's type, as its TYPE line names it.
type Type string

// The metric types this package writes.
const (
	Counter Type = "counter"
	Gauge   Type = "gauge"
)

// Label is one label of a sample.
type Label struct {
	Name  string
	Value string
}

// Sample is one value of a family, with its labels (none for a family
// of one unlabelled sample).
type Sample struct {
	Labels []Label
	Value  float64
}

// Family is a metric family: its name, help text, type and samples. A
// family with no samples is written with its HELP and TYPE lines only.
type Family struct {
	Name    string
	Help    string
	Type    Type
	Samples []Sample
}

// Add appends a sample with labels given as name, value pairs; an odd
// final name is ignored.
func (f *Family) Add(value float64, labels ...string) {
	s := Sample{Value: value}
	for i := 0; i+1 < len(labels); i += 2 {
		s.Labels = append(s.Labels, Label{labels[i], labels[i+1]})
	}
	f.Samples = append(f.Samples, s)
}

// WriteText writes fams to w in the text exposition format 0.0.4, in the
// order given. It returns an error, before writing anything, if a metric
// or label name is invalid, a type is unknown or a name repeats.
func WriteText(w io.Writer, fams []Family) error {
	seen := make(map[string]bool, len(fams))
	for _, f := range fams {
		if err := f.check(); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("telemetry: metric %s written twice", f.Name)
		}
		seen[f.Name] = true
	}
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		bw.WriteString("# HELP ")
		bw.WriteString(f.Name)
		bw.WriteByte(' ')
		bw.WriteString(escapeHelp(f.Help))
		bw.WriteString("\n# TYPE ")
		bw.WriteString(f.Name)
		bw.WriteByte(' ')
		bw.WriteString(string(f.Type))
		bw.WriteByte('\n')
		for _, s := range f.Samples {
			bw.WriteString(f.Name)
			if len(s.Labels) > 0 {
				bw.WriteByte('{')
				for i, l := range s.Labels {
					if i > 0 {
						bw.WriteByte(',')
					}
					bw.WriteString(l.Name)
					bw.WriteString(`="`)
					bw.WriteString(EscapeLabelValue(l.Value))
					bw.WriteByte('"')
				}
				bw.WriteByte('}')
			}
			bw.WriteByte(' ')
			bw.WriteString(FormatValue(s.Value))
			bw.WriteByte('\n')
		}
	}
	return bw.Flush()
}

func (f *Family) check() error {
	if !validName(f.Name, true) {
		return fmt.Errorf("telemetry: invalid metric name %q", f.Name)
	}
	if f.Type != Counter && f.Type != Gauge {
		return fmt.Errorf("telemetry: metric %s: unknown type %q", f.Name, f.Type)
	}
	for _, s := range f.Samples {
		for _, l := range s.Labels {
			if !validName(l.Name, false) || strings.HasPrefix(l.Name, "__") {
				return fmt.Errorf("telemetry: metric %s: invalid label name %q", f.Name, l.Name)
			}
		}
	}
	return nil
}

// validName reports whether name is a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)
// or, without colons, a label name ([a-zA-Z_][a-zA-Z0-9_]*).
func validName(name string, colon bool) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
			colon && c == ':' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return false
		}
	}
	return true
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

// EscapeLabelValue escapes a label value for the text format: backslash,
// double quote and line feed become \\, \" and \n.
func EscapeLabelValue(v string) string { return labelEscaper.Replace(v) }

// escapeHelp escapes a HELP text: backslash and line feed.
func escapeHelp(v string) string { return helpEscaper.Replace(v) }

// FormatValue formats a sample value as the text format wants it: Go's
// shortest representation, with +Inf, -Inf and NaN spelled so.
func FormatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Handler serves the families collect returns, at each request, in the
// text format. A collection that cannot be written is answered 500.
func Handler(collect func() []Family) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		if err := WriteText(&b, collect()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", ContentType)
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", strconv.Itoa(b.Len()))
		if r.Method != http.MethodHead {
			io.WriteString(w, b.String())
		}
	})
}

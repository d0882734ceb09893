// Package telemetrytest checks and reads the Prometheus text exposition
// format in tests.
package telemetrytest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Exposition is a parsed scrape.
type Exposition struct {
	// Types maps each family name to its TYPE.
	Types map[string]string
	// Samples maps each sample, written as name{label="value",...} exactly
	// as it appeared (name alone without labels), to its value.
	Samples map[string]float64
}

// Value returns a sample's value and whether it is present; labels are
// name, value pairs in the order written, with values unescaped.
func (e *Exposition) Value(name string, labels ...string) (float64, bool) {
	v, ok := e.Samples[Key(name, labels...)]
	return v, ok
}

// Key returns the Samples key of a sample.
func Key(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i := 0; i+1 < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%s="%s"`, labels[i], labelEscaper.Replace(labels[i+1]))
	}
	b.WriteByte('}')
	return b.String()
}

// labelEscaper escapes label values as the text format wants; written
// here again rather than taken from telemetry, so tests check the writer
// against an independent reading of the format.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

var (
	helpLine   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (?:[^\\]|\\\\|\\n)*$`)
	typeLine   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
	labelValue = `"(?:[^"\\\n]|\\\\|\\"|\\n)*"`
	label      = `[a-zA-Z_][a-zA-Z0-9_]*=` + labelValue
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:` + label + `(?:,` + label + `)*)?\})? (\S+)$`)
)

// Parse checks text line by line: every line is a HELP, a TYPE or a
// sample `name{labels} value`; every sample follows the TYPE line of its
// family, and the family's lines are contiguous; no family is typed twice
// and no sample repeats. It returns the first violation.
func Parse(text string) (*Exposition, error) {
	e := &Exposition{Types: map[string]string{}, Samples: map[string]float64{}}
	if text != "" && !strings.HasSuffix(text, "\n") {
		return nil, fmt.Errorf("exposition does not end in a line feed")
	}
	current := ""
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		n := i + 1
		if m := helpLine.FindStringSubmatch(line); m != nil {
			continue
		}
		if m := typeLine.FindStringSubmatch(line); m != nil {
			if _, dup := e.Types[m[1]]; dup {
				return nil, fmt.Errorf("line %d: second TYPE for %s", n, m[1])
			}
			e.Types[m[1]] = m[2]
			current = m[1]
			continue
		}
		if strings.HasPrefix(line, "#") {
			return nil, fmt.Errorf("line %d: malformed comment %q", n, line)
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("line %d: not `name{labels} value`: %q", n, line)
		}
		if m[1] != current {
			return nil, fmt.Errorf("line %d: sample of %s without its TYPE line before it", n, m[1])
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value %q: %v", n, m[3], err)
		}
		key := m[1] + m[2]
		if _, dup := e.Samples[key]; dup {
			return nil, fmt.Errorf("line %d: sample %s repeated", n, key)
		}
		e.Samples[key] = v
	}
	return e, nil
}

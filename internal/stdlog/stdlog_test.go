package stdlog

import (
	"bytes"
	"encoding/json"
	"log"
	"log/slog"
	"strings"
	"testing"
)

func TestLine(t *testing.T) {
	long := strings.Repeat("a", MaxLine+10)
	tests := []struct {
		name, in, want string
	}{
		{"plain", "http: TLS handshake error\n", "http: TLS handshake error"},
		{"newline inside", "one\n{\"level\":\"ERROR\",\"msg\":\"forged\"}\n", `one\n{\"level\":\"ERROR\",\"msg\":\"forged\"}`},
		{"control bytes", "a\x1b[31mred\x00", `a\x1b[31mred\x00`},
		{"invalid utf-8", "a\xffb", `a\xffb`},
		{"long", long, strings.Repeat("a", MaxLine) + "... (10 more bytes)"},
		{"cut at a character", strings.Repeat("a", MaxLine-1) + "é" + "z", strings.Repeat("a", MaxLine-1) + "... (3 more bytes)"},
	}
	for _, tt := range tests {
		if got := Line([]byte(tt.in)); got != tt.want {
			t.Errorf("%s: Line(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}

// TestRedirectKeepsJSON writes through the standard logger a line that
// tries to forge a JSON record and checks that one record comes out,
// with the line escaped and cut short.
func TestRedirectKeepsJSON(t *testing.T) {
	var buf bytes.Buffer
	flags, prefix, out := log.Flags(), log.Prefix(), log.Writer()
	t.Cleanup(func() { log.SetFlags(flags); log.SetPrefix(prefix); log.SetOutput(out) })
	Redirect(slog.New(slog.NewJSONHandler(&buf, nil)))
	log.Printf("Unsolicited response received on idle HTTP channel starting with %s", "\n{\"msg\":\"forged\"}\n"+strings.Repeat("x", 4096))

	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %d log lines, want 1:\n%s", len(lines), buf.String())
	}
	var rec struct{ Level, Msg, Line string }
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v\n%s", err, lines[0])
	}
	if rec.Level != "WARN" || rec.Msg != "go library message" || !strings.HasPrefix(rec.Line, "Unsolicited response") {
		t.Errorf("record = %+v, want a WARN go library message with the line", rec)
	}
	if len(rec.Line) > MaxLine+64 || !strings.Contains(rec.Line, "more bytes)") {
		t.Errorf("line is %d bytes, not cut short: %q", len(rec.Line), rec.Line)
	}
}

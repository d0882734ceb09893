// Package stdlog routes what the standard library writes through package
// log (net/http's client and server messages) into slog. Those lines can
// carry a peer's bytes: Go's HTTP client, for one, logs "Unsolicited
// response received on idle HTTP channel starting with ..." followed by
// what an upstream sent. Each line is cut to MaxLine bytes and escaped to
// one line of printable text, so under -log-format json every log line
// stays JSON and under text no peer can start a line of its own.
package stdlog

import (
	"context"
	"log"
	"log/slog"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLine is the most bytes of one standard-library line that reach the
// log; the rest is counted, not shown.
const MaxLine = 256

// Writer is an io.Writer for log.New or log.SetOutput that logs each
// line it is given as one slog record: the message Msg, at Level, with
// the line in the attribute "line".
type Writer struct {
	Log   *slog.Logger
	Level slog.Level
	Msg   string
}

func (w Writer) Write(p []byte) (int, error) {
	if w.Log.Enabled(context.Background(), w.Level) {
		w.Log.Log(context.Background(), w.Level, w.Msg, "line", Line(p))
	}
	return len(p), nil
}

// Redirect sends the standard logger, which net/http's client writes to,
// through l at warn level as "go library message".
func Redirect(l *slog.Logger) {
	log.SetFlags(0)
	log.SetPrefix("")
	log.SetOutput(Writer{Log: l, Level: slog.LevelWarn, Msg: "go library message"})
}

// Line returns p without its trailing newline, cut to MaxLine bytes (at a
// character boundary, with the number of bytes left out noted), and with
// anything but printable characters escaped as in a Go string literal.
func Line(p []byte) string {
	s := strings.TrimRight(string(p), "\r\n")
	cut := 0
	if len(s) > MaxLine {
		n := MaxLine
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		cut = len(s) - n
		s = s[:n]
	}
	if !printable(s) {
		q := strconv.QuoteToASCII(s)
		s = q[1 : len(q)-1]
	}
	if cut > 0 {
		s += "... (" + strconv.Itoa(cut) + " more bytes)"
	}
	return s
}

func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

package h1server

import (
	"io"
	"log"
	"os"
	"sync"
)

var osErrDeadlineExceeded = os.ErrDeadlineExceeded

func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// lockedWriter serializes writes to a strings.Builder-like writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// logTo returns a logger into w and a function that reads w under the
// logger's lock.
func logTo(w interface {
	io.Writer
	String() string
}) (*log.Logger, func() string) {
	lw := &lockedWriter{w: w}
	return log.New(lw, "", 0), func() string {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return w.String()
	}
}

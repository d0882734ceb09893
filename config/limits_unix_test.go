//go:build unix

package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fifo makes a named pipe that nobody writes to: opening it for reading
// blocks until someone opens it for writing, which the test's cleanup
// does, to end the reads the test gave up on.
func fifo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	t.Cleanup(func() {
		if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	return p
}

func TestLoadContextGivesUpOnAPipe(t *testing.T) {
	p := fifo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := LoadContext(ctx, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LoadContext(a pipe nobody writes to) = %v, want it to wrap the context's error", err)
	}

	// The error when LoadTimeout runs out (sooner here).
	ctx, cancel = context.WithTimeoutCause(context.Background(), 50*time.Millisecond, errTimeout)
	defer cancel()
	_, err := LoadContext(ctx, p)
	var es Errors
	if !errors.As(err, &es) || err.Error() != p+": reading the file took longer than 10s (limit); is it a pipe nobody writes to?" {
		t.Errorf("LoadContext(a pipe) past the time bound = %v, want an Errors saying reading took too long", err)
	}
}

func TestLoadEndlessFile(t *testing.T) {
	_, err := Load("/dev/zero")
	if err == nil || err.Error() != "/dev/zero: file is larger than 4194304 bytes" {
		t.Errorf("Load(/dev/zero) = %v, want it refused as too large", err)
	}
}

// The files a config names are checked for being readable without
// blocking on a pipe.
func TestNamedPipeIsNotWaitedFor(t *testing.T) {
	p := fifo(t)
	yaml := strings.Replace(minimal, `{endpoints: ["http://127.0.0.1:8080"]}`, `{endpoints: ["https://127.0.0.1:8080"], tls: {ca_file: "`+p+`"}}`, 1)
	if _, err := Parse("p.yaml", []byte(yaml), noEnv); err != nil {
		t.Errorf("Parse = %v, want no error", err)
	}
}

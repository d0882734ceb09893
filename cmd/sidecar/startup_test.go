//go:build unix

package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// TestSignalWhileLoadingExits: start-up blocks reading a config file that
// is a pipe nobody writes to; SIGTERM stops it with exit 3 (could not
// start) long before the load's own time bound.
func TestSignalWhileLoadingExits(t *testing.T) {
	for _, cmdName := range []string{"run", "validate"} {
		t.Run(cmdName, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "sidecar.yaml")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			cmd := exec.Command(binary, cmdName, "-config", fifo)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill() })
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// Opening a pipe for writing without blocking succeeds once
			// a reader has it open: the sidecar is then loading, with its
			// signal handlers set, and its read blocks while we write
			// nothing.
			var w *os.File
			poll.Until(t, 10*time.Second, "the sidecar to open the config pipe", func() bool {
				select {
				case err := <-done:
					t.Fatalf("sidecar exited (%v) before reading its config; stderr %q", err, stderr.String())
				default:
				}
				f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
				if err != nil {
					return false
				}
				w = f
				return true
			})
			defer w.Close()
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
					t.Errorf("sidecar %s after SIGTERM while loading = %v, want exit code %d", cmdName, err, exitFailure)
				}
				if want := "stopped by a signal (terminated) while loading " + fifo; !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr = %q, want it to say %q", stderr.String(), want)
				}
			case <-time.After(5 * time.Second): // well within LoadTimeout
				t.Fatalf("sidecar %s did not exit within 5s of SIGTERM while loading; stderr %q", cmdName, stderr.String())
			}
		})
	}
}

// TestLoadTimeoutExits1: a config that cannot be read within
// config.LoadTimeout is an invalid configuration, exit 1, not a hang.
func TestLoadTimeoutExits1(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for config.LoadTimeout")
	}
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	start := time.Now()
	code, _, stderr := runCLI(t, "validate", "-config", fifo)
	want := fifo + ": reading the file took longer than 10s (limit); is it a pipe nobody writes to?"
	if code != exitConfig || !strings.Contains(stderr, want) {
		t.Errorf("sidecar validate on a pipe nobody writes to = exit %d, stderr %q; want exit %d saying %q", code, stderr, exitConfig, want)
	}
	if d := time.Since(start); d < config.LoadTimeout {
		t.Errorf("gave up after %v, before config.LoadTimeout", d)
	}
}

type closer struct{ closed chan struct{} }

func (c closer) Close() error { close(c.closed); return nil }

// TestInterruptibleGivesUpAndClosesLate: a signal ends a start-up step
// that cannot be cancelled at once, and what the step opens after that is
// closed.
func TestInterruptibleGivesUpAndClosesLate(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	st := watchStartup(sigs)
	release := make(chan struct{})
	c := closer{make(chan struct{})}
	got := make(chan error, 1)
	go func() {
		_, err := interruptible(st, func() (closer, error) {
			<-release
			return c, nil
		})
		got <- err
	}()
	sigs <- syscall.SIGHUP // ignored while starting
	sigs <- syscall.SIGINT
	select {
	case err := <-got:
		if err == nil || err.Error() != "stopped by a signal (interrupt)" {
			t.Errorf("interruptible = %v, want stopped by a signal (interrupt)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("interruptible did not return after SIGINT")
	}
	if sig := st.end(); sig != syscall.SIGINT {
		t.Errorf("end() = %v, want SIGINT", sig)
	}
	close(release)
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("what the step opened after the signal was not closed")
	}
}

// TestStartupEndHandsOverSignals: once start-up ends without a signal,
// the watcher has stopped reading, so a signal is the serve loop's.
func TestStartupEndHandsOverSignals(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	st := watchStartup(sigs)
	if sig := st.end(); sig != nil {
		t.Fatalf("end() = %v, want nil", sig)
	}
	st.end() // again: no panic
	sigs <- syscall.SIGTERM
	select {
	case sig := <-sigs:
		if sig != syscall.SIGTERM {
			t.Errorf("got %v, want SIGTERM", sig)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the signal did not stay for the serve loop")
	}
	if st.ctx.Err() != nil {
		t.Errorf("start-up ctx ended (%v) without a signal", st.ctx.Err())
	}
}

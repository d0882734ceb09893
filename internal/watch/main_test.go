package watch

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// Watcher a test starts must have been closed, and fsnotify's reader with
// it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

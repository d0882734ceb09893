package h1server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// connection, watcher and Serve loop a test starts must have ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

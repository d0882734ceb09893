package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// server, deliverer, timer callback and connection a test starts must have
// ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

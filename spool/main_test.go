package spool

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine outlives them: a
// store's writer, a reopen timer or a test's own producers left running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

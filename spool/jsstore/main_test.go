package jsstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine outlives them: a
// store's lease keeper, a NATS connection it did not close, an embedded
// server left running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

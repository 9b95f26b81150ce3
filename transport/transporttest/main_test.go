package transporttest_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Under GOOS=js the runtime parks a goroutine in handleEvent to wait
	// for the JavaScript event loop; it is not the tests'.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("runtime.handleEvent"))
}

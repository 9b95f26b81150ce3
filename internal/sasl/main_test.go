package sasl

import (
	"errors"
	"testing"

	"go.uber.org/goleak"
)

// The tests use only the standard library and goleak: testify cannot be
// built with the module's current go.sum, which lacks go.yaml.in/yaml/v3.

func TestMain(m *testing.M) {
	// Under GOOS=js the runtime parks a goroutine in handleEvent to wait
	// for the JavaScript event loop; it is not the tests'.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("runtime.handleEvent"))
}

// must fails the test immediately if err is not nil.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

// equal reports a mismatch between got and want, labelled what.
func equal[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

// errorIs reports an error that is nil or does not wrap target.
func errorIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: got no error, want one wrapping %v", what, target)
	} else if !errors.Is(err, target) {
		t.Errorf("%s: got %v, want an error wrapping %v", what, err, target)
	}
}

// start calls m.Start and fails the test on error.
func start(t *testing.T, m Mechanism) ([]byte, bool) {
	t.Helper()
	ir, ok, err := m.Start()
	must(t, err)
	return ir, ok
}

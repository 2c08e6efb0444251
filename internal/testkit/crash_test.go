package testkit

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A test that panics while stderr is captured still shows its panic and
// trace: the process exits before the capture can echo what it holds.
func TestPanicTraceSurvivesCapturedStderr(t *testing.T) {
	if os.Getenv("TESTKIT_PANIC_CHILD") == "1" {
		if _, err := captureStderr(); err != nil {
			t.Fatal(err)
		}
		panic("visible-trace-marker")
	}
	child := exec.Command(os.Args[0], "-test.run=^TestPanicTraceSurvivesCapturedStderr$")
	child.Env = append(os.Environ(), "TESTKIT_PANIC_CHILD=1")
	out, err := child.CombinedOutput()
	if err == nil {
		t.Fatal("the child did not panic")
	}
	if !strings.Contains(string(out), "panic: visible-trace-marker") || !strings.Contains(string(out), "goroutine ") {
		t.Errorf("the panic's trace is lost; the child wrote:\n%s", out)
	}
}

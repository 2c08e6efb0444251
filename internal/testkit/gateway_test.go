package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A gateway that exits at start (here, on a Caddyfile Caddy cannot adapt)
// is reported as exited, with its logs, secrets hidden, once it has exited:
// not as silent after waitReady's 30 seconds.
func TestStartGatewayReportsAnExitAtOnce(t *testing.T) {
	const secret = "gateway-exit-secret-5b2e"
	Forbid(secret)
	fake := &fatalRecorder{TB: t}
	// Registered before StartGateway's cleanup, so run after it.
	t.Cleanup(func() {
		if !strings.Contains(fake.errors, "appeared in a gateway's logs") {
			t.Errorf("the gateway's logs carry the secret, and its cleanup said %q", fake.errors)
		}
	})
	func() {
		defer func() { _ = recover() }()
		StartGateway(fake, func(g *Gateway) string { return g.Site(secret) }) // an unknown directive, which Caddy names
	}()
	if !strings.HasPrefix(fake.fatal, "the gateway exited") || !strings.Contains(fake.fatal, "unrecognized directive") {
		t.Fatalf("StartGateway reported %q, want the gateway's exit, with its logs", fake.fatal)
	}
	if strings.Contains(fake.fatal, secret) {
		t.Error("StartGateway's report shows a secret of the config")
	}
}

// fatalRecorder is a testing.TB whose Fatalf notes the message and stops
// the calling function (with a panic the test recovers), and whose Errorf
// notes its message.
type fatalRecorder struct {
	testing.TB
	fatal, errors string
}

func (f *fatalRecorder) Errorf(format string, args ...any) { f.errors += fmt.Sprintf(format, args...) }

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	panic(f)
}

// A build of Caddy is removed once the test binary that built it has
// exited, by the next test binary that builds one; a running one's stays.
func TestBuildsOfExitedTestBinariesAreRemoved(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	builds := map[int]string{exited.Process.Pid: "", os.Getpid(): ""}
	for pid := range builds {
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, pid))
		if err != nil {
			t.Fatal(err)
		}
		builds[pid] = dir
	}
	removeExitedBuilds()
	if _, err := os.Stat(builds[exited.Process.Pid]); !os.IsNotExist(err) {
		t.Errorf("the build of an exited test binary is still there: %v", err)
	}
	if _, err := os.Stat(builds[os.Getpid()]); err != nil {
		t.Errorf("the build of a running test binary was removed: %v", err)
	}
}

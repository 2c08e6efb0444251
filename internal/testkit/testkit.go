// Package testkit runs the integration tests' Caddy and proves that nothing
// secret reached its logs.
package testkit

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/sys/unix"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

// HTTPPort, HTTPSPort and AdminPort are the ports of the test Caddy, free
// loopback ports chosen when the test binary starts, so that test packages
// (which Go runs in parallel) and other suites on the machine never collide.
var (
	HTTPPort  = FreePort()
	HTTPSPort = FreePort()
	AdminPort = FreePort()
)

// FreePort returns a TCP port that was free on the loopback interface a
// moment ago. The kernel hands out ephemeral ports in turn, so it is not
// handed out again soon.
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("testkit: no free port: " + err.Error())
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// GlobalOptions is the global block every test Caddyfile starts with: the
// test ports, debug logging (so that every log line the module can write is
// written and scanned), and no HTTPS.
func GlobalOptions(extra string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	https_port %d
	auto_https off
	grace_period 1s
	debug
	%s
}
`, AdminPort, HTTPPort, HTTPSPort, extra)
}

// BaseURL is where the test Caddy serves.
func BaseURL() string { return "http://localhost:" + strconv.Itoa(HTTPPort) }

// StartCaddy loads caddyfile (which should start with GlobalOptions) into the
// in-process test Caddy, starting it on first use.
func StartCaddy(t testing.TB, caddyfile string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: AdminPort})
	tester.InitServer(caddyfile, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tester
}

var (
	forbiddenMu sync.Mutex
	forbidden   []string
	sims        []*wechatsim.Server
)

// Forbid adds strings that must appear in no log line: codes that never
// reached a simulator, secrets of configs under test.
func Forbid(s ...string) {
	forbiddenMu.Lock()
	defer forbiddenMu.Unlock()
	forbidden = append(forbidden, s...)
}

// NewSim starts a simulator whose secrets, codes and session_keys are all
// forbidden in the logs.
func NewSim(t testing.TB, opts wechatsim.Options) (*wechatsim.Server, string) {
	t.Helper()
	sim, ts := wechatsimtest.NewTestServer(t, opts)
	forbiddenMu.Lock()
	sims = append(sims, sim)
	forbiddenMu.Unlock()
	return sim, ts.URL
}

// Forbidden is everything registered so far with Forbid or seen by a
// simulator from NewSim.
func Forbidden() []string {
	forbiddenMu.Lock()
	defer forbiddenMu.Unlock()
	out := append([]string(nil), forbidden...)
	for _, sim := range sims {
		out = append(out, sim.Sensitive()...)
	}
	return out
}

// Leaks returns the forbidden strings that text contains.
func Leaks(text string) []string {
	var leaks []string
	for _, s := range Forbidden() {
		if s != "" && strings.Contains(text, s) {
			leaks = append(leaks, s)
		}
	}
	return leaks
}

// RunScanningLogs runs the tests with everything written to standard error
// (where Caddy's logs go) captured, still echoed, then fails the run if any
// forbidden string appears in it, or if mustSee does not (proof that the
// module's lines were captured at all). Call it from TestMain.
func RunScanningLogs(m *testing.M, mustSee string) int {
	restore, err := captureStderr()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testkit: capturing stderr:", err)
		return 1
	}
	code := m.Run()
	logs := restore()
	if leaks := Leaks(logs); len(leaks) > 0 {
		// Do not print the secrets themselves; say how many and where.
		fmt.Fprintf(os.Stderr, "FAIL: %d secret(s), code(s) or session_key(s) appeared in the log output (%d bytes scanned)\n", len(leaks), len(logs))
		return 1
	}
	// A -run filter may skip the tests that write mustSee.
	filtered := flag.Lookup("test.run") != nil && flag.Lookup("test.run").Value.String() != ""
	if code == 0 && !filtered && !strings.Contains(logs, mustSee) {
		fmt.Fprintf(os.Stderr, "FAIL: the log scan never saw %q: are the module's logs captured?\n", mustSee)
		return 1
	}
	return code
}

// captureStderr points file descriptor 2 at a pipe, so that writers that
// captured os.Stderr before TestMain (zap's default logger) are captured too.
func captureStderr() (func() string, error) {
	original, err := unix.Dup(2)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	if err := redirectFD(int(w.Fd()), 2); err != nil {
		return nil, err
	}
	echo := os.NewFile(uintptr(original), "stderr")
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.MultiWriter(&buf, echo), r)
	}()
	restore := func() string {
		_ = redirectFD(original, 2)
		_ = w.Close()
		<-done
		return buf.String()
	}
	return restore, nil
}

// WaitFor polls done until it reports true, failing t after 10 seconds: for
// what takes a probe or a turn of the scheduler, never a fixed sleep.
func WaitFor(t testing.TB, what string, done func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !done(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

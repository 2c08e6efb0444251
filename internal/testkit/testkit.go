// Package testkit runs the integration tests' Caddy and proves that nothing
// secret reached its logs.
package testkit

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter of the admin API's /load
	"golang.org/x/sys/unix"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

// HTTPPort and HTTPSPort are the ports of the test Caddy, held for this
// process from when the test binary starts (see FreePort), so that test
// packages (which Go runs in parallel) and other suites on the machine never
// collide.
var (
	HTTPPort  = FreePort()
	HTTPSPort = FreePort()
)

// adminSocket is where the test Caddy's admin API listens: a unix socket of
// this process's own, not a port. Caddy opens a new admin listener at every
// config load, even a refused one, and closes the old one once it has
// answered; on a TCP port each listener has its own queue (SO_REUSEPORT),
// and a request queued at the old one when it closes is reset. The
// listeners of a unix socket share one queue.
var adminSocket = filepath.Join(os.TempDir(), fmt.Sprintf("wechat-login-caddy-%d.sock", os.Getpid()))

// GlobalOptions is the global block every test Caddyfile starts with: the
// test ports, debug logging (so that every log line the module can write is
// written and scanned), no HTTPS, and no copy of the config (secrets and
// all) saved in the home directory.
func GlobalOptions(extra string) string {
	return fmt.Sprintf(`{
	admin unix/%s
	persist_config off
	http_port %d
	https_port %d
	auto_https off
	grace_period 1s
	debug
	%s
}
`, adminSocket, HTTPPort, HTTPSPort, extra)
}

// BaseURL is where the test Caddy serves.
func BaseURL() string { return "http://localhost:" + strconv.Itoa(HTTPPort) }

var (
	caddyOnce    sync.Once
	caddyStarted error
)

// StartCaddy loads caddyfile (which should start with GlobalOptions) into the
// in-process test Caddy, starting it on first use. A refused config ends the
// test, with Caddy's answer, secrets hidden.
func StartCaddy(t testing.TB, caddyfile string) {
	t.Helper()
	caddyOnce.Do(func() {
		caddyStarted = caddy.Load([]byte(`{"admin":{"listen":"unix/`+adminSocket+`"}}`), true)
	})
	if caddyStarted != nil {
		t.Fatalf("testkit: starting Caddy: %v", caddyStarted)
	}
	if status, body := LoadConfig(t, caddyfile); status != http.StatusOK {
		t.Fatalf("testkit: Caddy refused the config: %d %s", status, Redact(body))
	}
	awaitOldListenerClosed(t, HTTPPort)
}

// awaitOldListenerClosed waits, after a config load, until the previous
// config no longer listens on port. The new config listens beside it (each
// socket with SO_REUSEPORT and a queue of its own), and a goroutine shuts
// the old one down after the load has answered: a request queued there
// meanwhile is reset, or read once the server is shutting down and dropped
// (EOF). The kernel's tables tell, not Caddy's own count of listeners,
// which drops just before the socket closes.
func awaitOldListenerClosed(t testing.TB, port int) {
	t.Helper()
	WaitFor(t, "the previous config stops listening", func() bool {
		n, known := listeningSockets(port)
		return !known || n <= 1
	})
}

// Admin sends a request to path on the test Caddy's admin API; headers are
// as Fetch's.
func Admin(method, path string, body io.Reader, headers ...string) (Response, error) {
	return adminDo(adminSocket, method, path, body, headers)
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
func Leaks(text string) []string { return leaksIn(text, Forbidden()) }

// leaksIn returns the strings of forbidden that text contains.
func leaksIn(text string, forbidden []string) []string {
	var leaks []string
	for _, s := range forbidden {
		if s != "" && strings.Contains(text, s) {
			leaks = append(leaks, s)
		}
	}
	return leaks
}

// Redact is text with every forbidden string in it replaced by ***.
func Redact(text string) string {
	for _, s := range Forbidden() {
		if s != "" {
			text = strings.ReplaceAll(text, s, "***")
		}
	}
	return text
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
	_ = os.Remove(adminSocket)
	if reportLeaks(logs) {
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

// reportLeaks prints the log lines that carry a forbidden string, each one
// replaced by ***, so that what wrote them shows (a module's log line, or
// a test harness printing a config), and reports whether there were any.
func reportLeaks(logs string) bool {
	const shown, width = 10, 300
	// The whole text first: the lines are looked at only when there is a
	// leak to show, and the forbidden strings (every code a simulator saw)
	// are gathered once.
	forbidden := Forbidden()
	if len(leaksIn(logs, forbidden)) == 0 {
		return false
	}
	var leaking []string
	for line := range strings.Lines(logs) {
		if len(leaksIn(line, forbidden)) > 0 {
			leaking = append(leaking, line)
		}
	}
	fmt.Fprintf(os.Stderr, "FAIL: %d log line(s) carry a secret, code or session_key (%d bytes scanned); each shown with them replaced by ***:\n", len(leaking), len(logs))
	for _, line := range leaking[:min(len(leaking), shown)] {
		line = Redact(strings.TrimSpace(line))
		if len(line) > width {
			line = line[:width] + "…"
		}
		fmt.Fprintln(os.Stderr, "\t"+line)
	}
	return true
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
	// A panic exits before the copy below can echo it: the runtime writes
	// its trace to the real stderr too.
	if err := debug.SetCrashOutput(echo, debug.CrashOptions{}); err != nil {
		return nil, err
	}
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

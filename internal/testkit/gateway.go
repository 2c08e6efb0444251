package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Gateway is a Caddy process of its own (cmd/caddy, built once per test
// binary), for tests where several gateways must not share the memory of one
// process: a fleet behind a load balancer.
type Gateway struct {
	// URL is where the gateway serves, e.g. http://127.0.0.1:41234.
	URL         string
	HTTPPort    int
	httpsPort   int    // unused (auto_https is off): set so that nothing defaults to 443
	adminSocket string // a unix socket, for the reason adminSocket gives
	cmd         *exec.Cmd
	exited      chan struct{} // closed once the process has exited
	logs        *lockedBuffer
	dir         string
}

var (
	buildOnce sync.Once
	caddyBin  string
	buildErr  error
)

// buildDirPrefix starts the name of each directory a test binary builds
// Caddy into, followed by that test binary's pid.
const buildDirPrefix = "wechat-login-caddy-bin-"

// caddyBinary builds ./cmd/caddy into a temporary directory, once.
func caddyBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		removeExitedBuilds()
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, os.Getpid()))
		if err != nil {
			buildErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building cmd/caddy: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return caddyBin
}

// removeExitedBuilds removes the build directories of test binaries that
// have exited. Nothing of a test binary runs after its last test (most
// have no TestMain to clean up in), and each directory holds a Caddy of
// some 90 MB, which would pile up in the temporary directory run after run.
func removeExitedBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*"))
	for _, dir := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), buildDirPrefix), "-")
		if pid, err := strconv.Atoi(pidText); err == nil && errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

// globalOptions is the global options block of a gateway: its own ports,
// debug logs (so that every line the module can write is written and
// scanned) and no HTTPS.
func (g *Gateway) globalOptions() string {
	return fmt.Sprintf("{\n\tadmin unix/%s\n\thttp_port %d\n\thttps_port %d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n\tdebug\n}\n",
		g.adminSocket, g.HTTPPort, g.httpsPort)
}

// Site is a site block of the gateway, on its HTTP port.
func (g *Gateway) Site(directives ...string) string {
	return fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s\n}\n", g.HTTPPort, strings.Join(directives, "\n"))
}

// StartGateway starts a Caddy process; configure returns its site blocks
// (use g.Site) given the gateway's ports. The process is stopped, and its
// logs scanned for secrets, when the test ends.
func StartGateway(t testing.TB, configure func(g *Gateway) string) *Gateway {
	t.Helper()
	bin := caddyBinary(t)
	g := &Gateway{HTTPPort: FreePort(), httpsPort: FreePort(), logs: new(lockedBuffer), dir: t.TempDir()}
	// Not in dir: a unix socket's path must stay short (108 bytes on Linux).
	socketDir, err := os.MkdirTemp("", "gw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(socketDir) })
	g.adminSocket = filepath.Join(socketDir, "admin.sock")
	g.URL = fmt.Sprintf("http://127.0.0.1:%d", g.HTTPPort)
	path := filepath.Join(g.dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(g.globalOptions()+configure(g)), 0o600); err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	g.cmd.Env = append(os.Environ(), "HOME="+g.dir, "XDG_DATA_HOME="+g.dir, "XDG_CONFIG_HOME="+g.dir)
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() { g.stop(t) })
	g.waitReady(t)
	return g
}

// Admin sends a request to path on the gateway's admin API; headers are
// as Fetch's.
func (g *Gateway) Admin(method, path string, body io.Reader, headers ...string) (Response, error) {
	return adminDo(g.adminSocket, method, path, body, headers)
}

// waitReady waits until the gateway's admin API answers.
func (g *Gateway) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if resp, err := g.Admin(http.MethodGet, "/config/", nil); err == nil && resp.StatusCode == http.StatusOK {
			return
		}
		why := ""
		select {
		case <-g.exited:
			why = "exited"
		case <-deadline:
			why = "did not answer in 30s"
		case <-time.After(50 * time.Millisecond):
			continue
		}
		t.Fatalf("the gateway %s:\n%s", why, Redact(g.logs.String()))
	}
}

// Reload loads a new configuration into the running gateway through its
// admin API, as `caddy reload` does.
func (g *Gateway) Reload(t testing.TB, configure func(g *Gateway) string) {
	t.Helper()
	before := g.lastReload(t)
	// Caddy skips a reload whose config is unchanged, unless told not to.
	resp, err := g.Admin(http.MethodPost, "/load", strings.NewReader(g.globalOptions()+configure(g)),
		"Content-Type: text/caddyfile", "Cache-Control: must-revalidate")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reload refused: %v", resp)
	}
	if g.lastReload(t) == before {
		t.Fatal("the gateway answered the reload without reloading")
	}
	awaitOldListenerClosed(t, g.HTTPPort)
}

// lastReload is when the gateway last loaded a config, as its metrics say.
func (g *Gateway) lastReload(t testing.TB) string {
	t.Helper()
	resp, err := g.Admin(http.MethodGet, "/metrics", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %v %v", resp, err)
	}
	const name = "caddy_config_last_reload_success_timestamp_seconds "
	for line := range strings.Lines(string(resp.Body)) {
		if value, ok := strings.CutPrefix(line, name); ok {
			return value
		}
	}
	t.Fatalf("the gateway's metrics have no %s", name)
	return ""
}

func (g *Gateway) stop(t testing.TB) {
	_ = g.cmd.Process.Signal(os.Interrupt)
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	if leaks := Leaks(g.logs.String()); len(leaks) > 0 {
		t.Errorf("%d secret(s), code(s) or session_key(s) appeared in a gateway's logs", len(leaks))
	}
}

// lockedBuffer is a bytes.Buffer that a process's output and a test may use
// at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

package testkit

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The in-process test Caddy (StartCaddy) is one instance per test binary:
// a fleet of gateways needs Caddy processes. BuildCaddy builds this
// repository's Caddy (cmd/caddy) once, from TestMain; StartGateway runs one
// process of it per gateway, each on its own free ports with its own
// Caddyfile, logs captured and scanned for secrets.

// BuildCaddy builds cmd/caddy into dir and returns the binary's path.
func BuildCaddy(dir string) (string, error) {
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..")
	bin := filepath.Join(dir, "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
}

// gatewayStartWithin bounds how long a starting Caddy may take to answer.
const gatewayStartWithin = 30 * time.Second

// Gateway is a Caddy process: one gateway of a fleet.
type Gateway struct {
	t         testing.TB
	URL       string // http://127.0.0.1:<port>
	HTTPPort  int
	AdminPort int
	dir       string
	cmd       *exec.Cmd
	exited    chan struct{}
	logs      *lockedBuffer
}

// GatewayConfig writes a gateway's Caddyfile from its ports.
type GatewayConfig func(httpPort, adminPort int) string

// GatewayGlobalOptions is the global block of a gateway's Caddyfile: its
// ports, debug logging (so that every line the module can write is
// scanned), no HTTPS.
func GatewayGlobalOptions(httpPort, adminPort int) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	https_port %d
	auto_https off
	grace_period 1s
	debug
}
`, adminPort, httpPort, FreePort())
}

// StartGateway runs bin (from BuildCaddy) with config, waits until it
// answers, and stops it when t ends, failing t if its logs hold anything
// Forbidden.
func StartGateway(t testing.TB, bin string, config GatewayConfig) *Gateway {
	t.Helper()
	g := &Gateway{t: t, HTTPPort: FreePort(), AdminPort: FreePort(), dir: t.TempDir(), logs: new(lockedBuffer)}
	g.URL = "http://127.0.0.1:" + strconv.Itoa(g.HTTPPort)
	caddyfile := filepath.Join(g.dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(config(g.HTTPPort, g.AdminPort)), 0o600); err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	// Caddy keeps its data and autosaved config under these; a gateway's
	// are its own.
	g.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+g.dir, "XDG_CONFIG_HOME="+g.dir, "HOME="+g.dir)
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func() {
		_ = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(g.Stop)
	deadline := time.Now().Add(gatewayStartWithin)
	for !g.answers() {
		select {
		case <-g.exited:
			t.Fatalf("testkit: the gateway exited:\n%s", g.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testkit: the gateway did not answer within %s:\n%s", gatewayStartWithin, g.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return g
}

// answers reports whether the gateway's admin endpoint has loaded a config
// and its HTTP port accepts requests.
func (g *Gateway) answers() bool {
	for _, url := range []string{fmt.Sprintf("http://127.0.0.1:%d/config/", g.AdminPort), g.URL} {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
	}
	return true
}

// Reload gives the running gateway a new Caddyfile through its admin API,
// as `caddy reload` does.
func (g *Gateway) Reload(config GatewayConfig) {
	g.t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/load", g.AdminPort)
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(config(g.HTTPPort, g.AdminPort)))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("testkit: reloading the gateway: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		g.t.Fatalf("testkit: reloading the gateway: %s\n%s", resp.Status, g.logs)
	}
}

// Stop ends the gateway (gracefully, then by force) and fails the test if
// its logs hold anything Forbidden.
func (g *Gateway) Stop() {
	if g.cmd == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	g.cmd = nil
	if leaks := Leaks(g.logs.String()); len(leaks) > 0 {
		// Say how many, not what: the log is the leak.
		g.t.Errorf("testkit: %d secret(s), code(s) or session_key(s) in the gateway's log", len(leaks))
	}
}

// Logs is what the gateway has logged so far.
func (g *Gateway) Logs() string { return g.logs.String() }

// lockedBuffer collects a process's output, written by os/exec's copying
// goroutine and read by the test.
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

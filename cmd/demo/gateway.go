package main

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// fleetGatewayCommand, as the demo's only argument, makes it run one gateway
// of the fleet with Caddyfile.fleet; its addresses come in the environment.
const fleetGatewayCommand = "fleet-gateway"

// fleetCaddyfile is every gateway's configuration.
//
//go:embed Caddyfile.fleet
var fleetCaddyfile []byte

// fleetStartWithin bounds how long a gateway may take to start, and to stop.
const fleetStartWithin = 30 * time.Second

// gatewayReady is what a gateway writes on its standard output once it
// serves.
const gatewayReady = "gateway ready"

// runFleetGateway is one gateway of the fleet. It serves until its standard
// input ends (the demo that started it stopped, or died) or it is
// interrupted.
func runFleetGateway() {
	if err := startCaddy(fleetCaddyfile, "cmd/demo/Caddyfile.fleet", nil); err != nil {
		fatalf("caddy: %v", err)
	}
	fmt.Println(gatewayReady)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	<-ctx.Done()
	if err := caddy.Stop(); err != nil {
		fatalf("stopping caddy: %v", err)
	}
}

// gateway is a running gateway process.
type gateway struct {
	name       string // A, B or C
	url        string // where players reach it
	metricsURL string
	cmd        *exec.Cmd
	stdin      io.Closer // closing it stops the gateway
}

// startGateway runs the demo itself as the gateway name on host:port, with
// env (the DEMO_* addresses it shares with the others).
func startGateway(name, host, port string, env []string) (*gateway, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	g := &gateway{
		name:       name,
		url:        "http://" + net.JoinHostPort(host, port),
		metricsURL: "http://" + net.JoinHostPort("127.0.0.1", metricsPort) + "/metrics",
		cmd:        exec.Command(self, fleetGatewayCommand),
	}
	g.cmd.Env = append(append(os.Environ(), env...), "DEMO_HOST="+host, "DEMO_PORT="+port, "DEMO_METRICS_PORT="+metricsPort)
	g.cmd.Stderr = &linePrefixer{prefix: "gateway " + name + " | ", out: os.Stderr}
	if g.stdin, err = g.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan bool, 1)
	go func() {
		lines := bufio.NewScanner(stdout)
		for lines.Scan() && lines.Text() != gatewayReady {
		}
		ready <- lines.Err() == nil && lines.Text() == gatewayReady
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if ok {
			return g, nil
		}
		err = fmt.Errorf("gateway %s on %s did not start (its lines above say why)", name, g.url)
	case <-time.After(fleetStartWithin):
		err = fmt.Errorf("gateway %s on %s did not start within %s", name, g.url, fleetStartWithin)
	}
	g.stop()
	return nil, err
}

// stop ends the gateway's input, on which it stops, and waits for it.
func (g *gateway) stop() {
	_ = g.stdin.Close()
	exited := make(chan struct{})
	go func() {
		_ = g.cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(fleetStartWithin):
		_ = g.cmd.Process.Kill()
		<-exited
	}
}

// shared reports whether the gateway uses Redis, as its metrics say.
func (g *gateway) shared(client *http.Client) bool {
	resp, err := client.Get(g.metricsURL)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	metrics, err := io.ReadAll(resp.Body)
	return err == nil && strings.Contains(string(metrics), "\ncaddy_wechat_login_store_fallback 0\n")
}

// linePrefixer writes each line of a gateway's output with its name first.
// Only the exec package's copier writes to it.
type linePrefixer struct {
	prefix  string
	out     io.Writer
	midLine bool
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	var prefixed []byte
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if !p.midLine {
			prefixed = append(prefixed, p.prefix...)
		}
		prefixed = append(prefixed, line...)
		p.midLine = !strings.HasSuffix(line, "\n")
	}
	_, err := p.out.Write(prefixed)
	return len(b), err
}

// Command demo runs the whole login path on one machine, with no internet
// and no WeChat account: a WeChat simulator, a sample game backend that knows
// nothing about WeChat, and Caddy with wechat_login in front of it. It prints
// curl commands to try, and serves until Ctrl-C.
//
// With -check it instead walks through those commands itself, prints each
// answer and exits non-zero if the gateway did not behave as documented; it
// then runs on free loopback ports, except those given by flags, so that it
// never collides with anything else on the machine (CI runs it).
//
// With -fleet it runs three gateways sharing one redis-server instead, as
// behind a load balancer (see fleet.go).
//
// Usage:
//
//	go run ./cmd/demo [-listen 127.0.0.1:8080] [-backend 127.0.0.1:9000] [-wechat 127.0.0.1:8931] [-api 127.0.0.1:8081] [-fleet] [-check]
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/gamebackend"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// caddyfile is the gateway's configuration; its {$DEMO_*} addresses are
// filled in from the flags.
//
//go:embed Caddyfile
var caddyfile []byte

// demoApp is the mini-game the simulator knows, as in the Caddyfile. It is
// bound to an Open Platform account so that logins show a unionid too.
var demoApp = wechatsim.App{AppID: "wx1234567890abcdef", Secret: "demo-secret-0123456789abcdef", UnionBound: true,
	AppKey: "demo-app-key-0123456789abcdef", SandboxAppKey: "demo-sandbox-app-key-0123456789"}

// demoDouyinApp is the same game on Douyin, as in the Caddyfile.
var demoDouyinApp = wechatsim.App{Platform: wechatsim.Douyin, AppID: "tt1234567890abcdef", Secret: demoApp.Secret, UnionBound: true}

func main() {
	if len(os.Args) == 2 && os.Args[1] == fleetGatewayCommand {
		runFleetGateway()
		return
	}
	listen := flag.String("listen", "127.0.0.1:8080", "`address` of the Caddy gateway (what you curl)")
	backend := flag.String("backend", "127.0.0.1:9000", "`address` of the sample game backend")
	wechat := flag.String("wechat", "127.0.0.1:8931", "`address` of the WeChat simulator")
	api := flag.String("api", "127.0.0.1:8081", "`address` of wechat_api, for the backend's WeChat API calls (see api.go)")
	fleet := flag.Bool("fleet", false, "run three gateways sharing one redis-server (it must be installed) on -listen's port and the next two, or on free ports with -check; -api is not used")
	check := flag.Bool("check", false, "run the walk-through against the demo on free ports, print every answer, and exit non-zero if any is wrong")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %q", flag.Args())
	}
	if *check {
		given := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, addr := range map[string]*string{"listen": listen, "backend": backend, "wechat": wechat, "api": api} {
			if !given[name] {
				*addr = "127.0.0.1:0"
			}
		}
	}

	sim := wechatsim.New(wechatsim.Options{Apps: []wechatsim.App{demoApp, demoDouyinApp}})
	// -check prints the calls of each step itself.
	wechatHandler := http.Handler(sim)
	if !*check {
		wechatHandler = logCalls(sim)
	}
	wechatHandler = withGroupEnterInfo(sim, wechatHandler)
	host, port, err := net.SplitHostPort(*listen)
	if err != nil || host == "" {
		fatalf("-listen %q: want host:port, such as 127.0.0.1:8080", *listen)
	}
	if *fleet {
		os.Exit(runFleet(demoAddresses{host: host, port: port, backend: *backend, wechat: *wechat}, sim, wechatHandler, *check))
	}
	apiHost, apiPort, err := net.SplitHostPort(*api)
	if err != nil || apiHost == "" {
		fatalf("-api %q: want host:port, such as 127.0.0.1:8081", *api)
	}
	// Caddy cannot report the ports it picked: pick them for it.
	for _, p := range []struct {
		host string
		port *string
	}{{host, &port}, {apiHost, &apiPort}} {
		if *p.port == "0" {
			if *p.port, err = freePort(p.host); err != nil {
				fatalf("%v", err)
			}
		}
	}
	received := &backendLog{}
	running, err := start(demoAddresses{host, port, *backend, *wechat, apiHost, apiPort}, wechatHandler, received.record(gamebackend.Handler()))
	if err != nil {
		fatalf("%v\n(is another demo running? -listen, -backend, -wechat and -api choose other addresses)", err)
	}
	defer running.stop()

	w := newWalkthrough("http://"+net.JoinHostPort(host, port), sim, received)
	if *check {
		apiWalkthrough := newAPIWalkthrough("http://"+net.JoinHostPort(apiHost, apiPort), "http://"+running.wechat, sim)
		ok := w.check(os.Stdout)
		ok = apiWalkthrough.check(os.Stdout) && ok
		running.stop()
		if !ok {
			os.Exit(1)
		}
		return
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	w.printGuide(os.Stdout, running.backend, running.wechat)
	newAPIWalkthrough("http://"+net.JoinHostPort(apiHost, apiPort), "http://"+running.wechat, sim).printAPIGuide(os.Stdout)
	<-ctx.Done()
	cancel() // a second Ctrl-C ends the demo at once
	fmt.Println("\nshutting down")
}

// demo is the running simulator, backend and Caddy.
type demo struct {
	backend, wechat string // the addresses they listen on
	servers         []*http.Server
	stopped         bool
}

// stop stops all three; it is safe to call more than once.
func (d *demo) stop() {
	if d.stopped {
		return
	}
	d.stopped = true
	if err := caddy.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: stopping caddy: %v\n", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range d.servers {
		_ = srv.Shutdown(ctx)
	}
}

// serve serves h on addr (port 0: any free port) and returns the address it
// listens on.
func (d *demo) serve(addr string, h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	d.servers = append(d.servers, srv)
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), nil
}

// demoAddresses are where the demo's parts listen: Caddy's gateway and
// wechat_api sites on host:port and apiHost:apiPort, the simulator and the
// backend on their own addresses.
type demoAddresses struct {
	host, port, backend, wechat, apiHost, apiPort string
}

// start runs the simulator, the backend and Caddy.
func start(at demoAddresses, wechatHandler, backendHandler http.Handler) (*demo, error) {
	d, err := startServers(at, wechatHandler, backendHandler)
	if err != nil {
		return nil, err
	}
	if err := startCaddy(caddyfile, "cmd/demo/Caddyfile", map[string]string{
		"DEMO_HOST":     at.host,
		"DEMO_PORT":     at.port,
		"DEMO_BACKEND":  d.backend,
		"DEMO_WECHAT":   d.wechat,
		"DEMO_API_HOST": at.apiHost,
		"DEMO_API_PORT": at.apiPort,
	}); err != nil {
		d.stop()
		return nil, fmt.Errorf("caddy: %w", err)
	}
	return d, nil
}

// startServers runs the simulator and the backend, without Caddy.
func startServers(at demoAddresses, wechatHandler, backendHandler http.Handler) (*demo, error) {
	d := &demo{}
	var err error
	if d.wechat, err = d.serve(at.wechat, wechatHandler); err != nil {
		return nil, fmt.Errorf("WeChat simulator: %w", err)
	}
	if d.backend, err = d.serve(at.backend, backendHandler); err != nil {
		d.stop()
		return nil, fmt.Errorf("game backend: %w", err)
	}
	return d, nil
}

// freePort returns a TCP port that was free on host a moment ago.
func freePort(host string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	return port, err
}

// startCaddy adapts an embedded Caddyfile (filename names it in errors), as
// `caddy run` would, and runs it in this process. The Caddyfile reads its
// addresses from the environment ({$DEMO_PORT} and so on), so they are set
// first.
func startCaddy(config []byte, filename string, env map[string]string) error {
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(config, map[string]any{"filename": filename})
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "demo: Caddyfile warning: %s\n", w)
	}
	return caddy.Load(cfgJSON, true)
}

// logCalls serves the simulator and notes each WeChat call on the terminal
// (without the code), so that logins answered from the cache or by a
// session visibly cost none.
func logCalls(sim *wechatsim.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sim.ServeHTTP(w, r)
		fmt.Printf("WeChat simulator: jscode2session call #%d\n", sim.Calls())
	})
}

// backendLog keeps what reached the game backend, for -check: how many
// requests, and the X-WX- headers of the latest, in every spelling.
type backendLog struct {
	mu       sync.Mutex
	requests int
	headers  http.Header
}

func (l *backendLog) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers := http.Header{}
		for name, values := range r.Header {
			if strings.HasPrefix(strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name)), "x-wx-") {
				headers[name] = values
			}
		}
		l.mu.Lock()
		l.requests++
		l.headers = headers
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// seen is the number of requests received so far and the X-WX- headers of
// the latest.
func (l *backendLog) seen() (int, http.Header) {
	if l == nil { // a walk-through that does not reach the game backend
		return 0, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.requests, l.headers
}

// fatalf reports a failure and exits. Not through the log package: once
// Caddy has loaded a config, that writes into Caddy's JSON log.
func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
	os.Exit(1)
}

// Command demo runs the whole login path on one machine, with no internet
// and no WeChat account: a WeChat simulator, a sample game backend that knows
// nothing about WeChat, and Caddy with wechat_login in front of it. It prints
// curl commands to try, and serves until Ctrl-C.
//
// With -check it instead walks through those commands itself, prints each
// answer and exits non-zero if the gateway did not behave as documented.
//
// Usage:
//
//	go run ./cmd/demo [-listen 127.0.0.1:8080] [-backend 127.0.0.1:9000] [-wechat 127.0.0.1:8931] [-api 127.0.0.1:8081] [-check]
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
var demoApp = wechatsim.App{AppID: "wx1234567890abcdef", Secret: "demo-secret-0123456789abcdef", UnionBound: true}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` of the Caddy gateway (what you curl)")
	backend := flag.String("backend", "127.0.0.1:9000", "`address` of the sample game backend")
	wechat := flag.String("wechat", "127.0.0.1:8931", "`address` of the WeChat simulator")
	api := flag.String("api", "127.0.0.1:8081", "`address` of wechat_api, for the backend's WeChat API calls (see api.go)")
	check := flag.Bool("check", false, "run the walk-through against the demo, print every answer, and exit non-zero if any is wrong")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %q", flag.Args())
	}

	sim := wechatsim.New(wechatsim.Options{Apps: []wechatsim.App{demoApp}})
	// -check prints the calls of each step itself.
	wechatHandler := http.Handler(sim)
	if !*check {
		wechatHandler = logCalls(sim)
	}
	host, port, err := net.SplitHostPort(*listen)
	if err != nil || host == "" {
		fatalf("-listen %q: want host:port, such as 127.0.0.1:8080", *listen)
	}
	if h, _, err := net.SplitHostPort(*api); err != nil || h == "" {
		fatalf("-api %q: want host:port, such as 127.0.0.1:8081", *api)
	}
	stop, err := start(host, port, *backend, *wechat, *api, wechatHandler)
	if err != nil {
		fatalf("%v\n(is another demo running? -listen, -backend, -wechat and -api choose other addresses)", err)
	}
	defer stop()

	w := newWalkthrough("http://"+*listen, sim)
	if *check {
		ok := w.check(os.Stdout)
		ok = newAPIWalkthrough("http://"+*api, sim).check(os.Stdout) && ok
		stop()
		if !ok {
			os.Exit(1)
		}
		return
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	w.printGuide(os.Stdout, *backend, *wechat)
	newAPIWalkthrough("http://"+*api, sim).printAPIGuide(os.Stdout)
	<-ctx.Done()
	cancel() // a second Ctrl-C ends the demo at once
	fmt.Println("\nshutting down")
}

// start runs the simulator, the backend and Caddy, and returns a function
// that stops all three (safe to call more than once).
func start(host, port, backend, wechat, api string, wechatHandler http.Handler) (stop func(), err error) {
	var servers []*http.Server
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if err := caddy.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "demo: stopping caddy: %v\n", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range servers {
			_ = srv.Shutdown(ctx)
		}
	}
	serve := func(addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
		return nil
	}
	if err := serve(wechat, wechatHandler); err != nil {
		return nil, fmt.Errorf("WeChat simulator: %w", err)
	}
	if err := serve(backend, gamebackend.Handler()); err != nil {
		stop()
		return nil, fmt.Errorf("game backend: %w", err)
	}
	apiHost, apiPort, _ := net.SplitHostPort(api)
	if err := startCaddy(map[string]string{
		"DEMO_HOST":     host,
		"DEMO_PORT":     port,
		"DEMO_BACKEND":  backend,
		"DEMO_WECHAT":   wechat,
		"DEMO_API_HOST": apiHost,
		"DEMO_API_PORT": apiPort,
	}); err != nil {
		stop()
		return nil, fmt.Errorf("caddy: %w", err)
	}
	return stop, nil
}

// startCaddy adapts the embedded Caddyfile, as `caddy run` would, and runs
// it in this process. The Caddyfile reads its addresses from the environment
// ({$DEMO_PORT} and so on), so they are set first.
func startCaddy(env map[string]string) error {
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile, map[string]any{"filename": "cmd/demo/Caddyfile"})
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
		fmt.Printf("WeChat simulator: %s call #%d\n", r.URL.Path, sim.CallsTo(r.URL.Path))
	})
}

// fatalf reports a failure and exits. Not through the log package: once
// Caddy has loaded a config, that writes into Caddy's JSON log.
func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
	os.Exit(1)
}

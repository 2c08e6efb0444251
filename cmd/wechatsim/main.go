// Command wechatsim serves a simulated WeChat server API (login, access
// tokens, a few APIs that need one) and the logins of QQ, Douyin, TapTap and
// Bilibili mini-games, each under its own prefix (/qq, /douyin, /taptap,
// /bilibili), for local development and end-to-end tests. See package
// wechatsim for its behaviour.
//
// Usage:
//
//	wechatsim [-listen 127.0.0.1:8931] [-app [platform/]appid:secret[:unionid]]... \
//	          [-app-key appid:app_key[:sandbox_app_key]]... \
//	          [-busy-rate 0.0] [-latency 0s] [-seed 0]
//
// An -app without a platform is a WeChat app. -app-key gives a WeChat app
// its virtual payment AppKeys (production, and sandbox), with which its
// payment calls must be signed; the demo app has
// demo-app-key-0123456789abcdef and demo-sandbox-app-key-0123456789. Without -app, one demo app
// per platform is registered, each with the secret
// demo-secret-0123456789abcdef: WeChat's wx1234567890abcdef, QQ's
// 1112223334, Douyin's tt1234567890abcdef, TapTap's tap1234567890 and
// Bilibili's bili1234567890.
//
// POST /sim/revoke-tokens?appid=<appid> revokes the app's current access
// tokens, as if they had leaked and been reset: calls made with them get
// errcode 40001 from then on.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const demoSecret = "demo-secret-0123456789abcdef"

var demoApp = wechatsim.App{AppID: "wx1234567890abcdef", Secret: demoSecret,
	AppKey: "demo-app-key-0123456789abcdef", SandboxAppKey: "demo-sandbox-app-key-0123456789"}

// demoApps are registered when no -app is given: one per platform.
var demoApps = []wechatsim.App{
	demoApp,
	{Platform: wechatsim.QQ, AppID: "1112223334", Secret: demoSecret},
	{Platform: wechatsim.Douyin, AppID: "tt1234567890abcdef", Secret: demoSecret},
	{Platform: wechatsim.TapTap, AppID: "tap1234567890", Secret: demoSecret},
	{Platform: wechatsim.Bilibili, AppID: "bili1234567890", Secret: demoSecret},
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8931", "`address` to listen on")
	// -app values are parsed after flag.Parse: the flag package would echo an
	// invalid value, secret included, in its error.
	var appSpecs []string
	flag.Func("app", appUsage(), func(v string) error {
		appSpecs = append(appSpecs, v)
		return nil
	})
	var keySpecs []string // parsed after flag.Parse too
	flag.Func("app-key", "give the WeChat app appid virtual payment AppKeys as `appid:app_key[:sandbox_app_key]` (repeatable)", func(v string) error {
		keySpecs = append(keySpecs, v)
		return nil
	})
	busyRate := flag.Float64("busy-rate", 0, "probability (0..1) that a call fails with errcode -1")
	latency := flag.Duration("latency", 0, "delay added before every answer")
	seed := flag.Int64("seed", 0, "seed for busy failures and session keys (0 = random)")
	flag.Parse()
	log.SetPrefix("wechatsim: ")
	log.SetFlags(0)

	if flag.NArg() > 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	if !(*busyRate >= 0 && *busyRate <= 1) {
		log.Fatalf("-busy-rate must be between 0 and 1")
	}
	if *latency < 0 {
		log.Fatalf("-latency must not be negative")
	}
	apps, err := parseApps(appSpecs)
	if err != nil {
		log.Fatal(err)
	}
	desc := "demo apps"
	if len(apps) == 0 {
		apps = demoApps
	} else {
		desc = "apps"
	}
	if apps, err = withAppKeys(apps, keySpecs); err != nil {
		log.Fatal(err)
	}
	names := make([]string, len(apps))
	for i, a := range apps {
		names[i] = appName(a)
	}
	desc += " " + strings.Join(names, ", ")

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving WeChat's API on http://%s, and QQ's, Douyin's, TapTap's and Bilibili's logins under /qq, /douyin, /taptap and /bilibili, for %s", ln.Addr(), desc)
	sim := wechatsim.New(wechatsim.Options{Apps: apps, BusyRate: *busyRate, Latency: *latency, Seed: *seed})
	// Allow for the latency so that answers already being delayed are delivered.
	if err := serve(ln, withAdmin(sim), *latency+5*time.Second); err != nil {
		log.Fatal(err)
	}
}

// appUsage is -app's help: it names the demo apps and their secret, which a
// gateway needs in its config before it can log anyone in.
func appUsage() string {
	names := make([]string, len(demoApps))
	for i, a := range demoApps {
		names[i] = appName(a)
	}
	return "register a mini-game as `[platform/]appid:secret[:unionid]` (repeatable); platform is wechat (the default), qq, douyin, taptap or bilibili; a literal third field \"unionid\" makes answers carry unionid. Without -app: " +
		strings.Join(names, ", ") + ", each with the secret " + demoSecret + " (and the WeChat one the AppKeys " + demoApp.AppKey + " and " + demoApp.SandboxAppKey + ")"
}

// parseApps parses -app values. Errors name the platform and appid but
// never the secret.
func parseApps(specs []string) ([]wechatsim.App, error) {
	apps := make([]wechatsim.App, 0, len(specs))
	seen := make(map[string]bool)
	for i, spec := range specs {
		// A platform is a prefix before the first colon: a slash in the
		// secret is part of the secret.
		platform, rest := string(wechatsim.WeChat), spec
		if slash, colon := strings.IndexByte(spec, '/'), strings.IndexByte(spec, ':'); slash >= 0 && (colon < 0 || slash < colon) {
			platform, rest = spec[:slash], spec[slash+1:]
		}
		f := strings.Split(rest, ":")
		if len(f) < 2 || len(f) > 3 || f[0] == "" || f[1] == "" || (len(f) == 3 && f[2] != "unionid") {
			return nil, fmt.Errorf("-app #%d: want [platform/]appid:secret or [platform/]appid:secret:unionid", i+1)
		}
		a := wechatsim.App{Platform: wechatsim.Platform(platform), AppID: f[0], Secret: f[1], UnionBound: len(f) == 3}
		if !a.Platform.Known() {
			return nil, fmt.Errorf("-app #%d: unknown platform %q", i+1, platform)
		}
		if seen[appName(a)] {
			return nil, fmt.Errorf("-app %s given twice", appName(a))
		}
		seen[appName(a)] = true
		apps = append(apps, a)
	}
	return apps, nil
}

// withAppKeys gives the WeChat apps that -app-key values name their
// virtual payment AppKeys. Errors name the appid but never a key.
func withAppKeys(apps []wechatsim.App, specs []string) ([]wechatsim.App, error) {
	apps = slices.Clone(apps)
	for i, spec := range specs {
		f := strings.Split(spec, ":")
		if len(f) < 2 || len(f) > 3 || slices.Contains(f, "") {
			return nil, fmt.Errorf("-app-key #%d: want appid:app_key or appid:app_key:sandbox_app_key", i+1)
		}
		j := slices.IndexFunc(apps, func(a wechatsim.App) bool { return appName(a) == string(wechatsim.WeChat)+"/"+f[0] })
		if j < 0 {
			return nil, fmt.Errorf("-app-key #%d: no WeChat app %s (give it with -app)", i+1, f[0])
		}
		apps[j].AppKey, apps[j].SandboxAppKey = f[1], ""
		if len(f) == 3 {
			apps[j].SandboxAppKey = f[2]
		}
	}
	return apps, nil
}

// appName is how the command names an app: platform/appid.
func appName(a wechatsim.App) string {
	p := a.Platform
	if p == "" {
		p = wechatsim.WeChat
	}
	return string(p) + "/" + a.AppID
}

// withAdmin serves sim, and the simulator's own admin endpoint beside it.
func withAdmin(sim *wechatsim.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", sim)
	mux.HandleFunc("POST /sim/revoke-tokens", func(w http.ResponseWriter, r *http.Request) {
		appid := r.URL.Query().Get("appid")
		if appid == "" {
			http.Error(w, "appid is required", http.StatusBadRequest)
			return
		}
		sim.RevokeTokens(appid)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// serve answers on ln with h until SIGINT or SIGTERM, then lets in-flight
// requests finish for up to drain.
func serve(ln net.Listener, h http.Handler, drain time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

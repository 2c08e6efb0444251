package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/gamebackend"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/redisserver"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// As in Caddyfile.fleet: the budget of a player, and how many gateways
// share it.
const (
	fleetBudget = 5
	fleetSize   = 3
)

// fleet is the running fleet demo: the simulator and the backend in this
// process, redis-server and three gateways in processes of their own.
//
// Each gateway is a process of its own, as behind a real load balancer: the
// demo runs itself again with the hidden argument fleet-gateway. Three sites
// in one process would not do: handlers of the same app, endpoint and secret
// share one in-memory state within a process, so the three would agree
// without Redis and prove nothing; and a different endpoint for each would
// also give each its own scope in Redis, so they would share nothing at all.
type fleet struct {
	servers  *demo
	redisDir string
	redis    *redisserver.Server
	gateways []*gateway
	stopOnce sync.Once
}

// stop stops everything that was started; it is safe to call more than
// once, and from a signal's goroutine.
func (f *fleet) stop() {
	f.stopOnce.Do(func() {
		for _, g := range f.gateways {
			g.stop()
		}
		if f.redis != nil {
			f.redis.Kill()
		}
		if f.redisDir != "" {
			_ = os.RemoveAll(f.redisDir)
		}
		if f.servers != nil {
			f.servers.stop()
		}
	})
}

// fleetPorts are the gateways' ports: port and the next two, or free ports
// for port 0.
func fleetPorts(host, port string) ([]string, error) {
	first, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("-listen port %q: want a number", port)
	}
	ports := make([]string, fleetSize)
	for i := range ports {
		if first == 0 {
			if ports[i], err = freePort(host); err != nil {
				return nil, err
			}
		} else {
			ports[i] = strconv.Itoa(first + i)
		}
	}
	return ports, nil
}

// start starts the parts of the fleet demo, Redis first: when it is not
// installed, nothing else need start. Whatever it started, stop stops.
func (f *fleet) start(at demoAddresses, wechatHandler, backendHandler http.Handler) error {
	ports, err := fleetPorts(at.host, at.port)
	if err != nil {
		return err
	}
	if f.redisDir, err = os.MkdirTemp("", "wechat-login-demo-redis-"); err != nil {
		return err
	}
	if f.redis, err = redisserver.Start(f.redisDir); err != nil {
		return err
	}
	if f.servers, err = startServers(at, wechatHandler, backendHandler); err != nil {
		return err
	}
	env := []string{"DEMO_BACKEND=" + f.servers.backend, "DEMO_WECHAT=" + f.servers.wechat, "DEMO_REDIS=" + f.redis.Addr()}
	for i, port := range ports {
		g, err := startGateway(string(rune('A'+i)), at.host, port, env)
		if err != nil {
			return fmt.Errorf("%w\n(is something else on %s? -listen chooses other ports)", err, port)
		}
		f.gateways = append(f.gateways, g)
	}
	return nil
}

// runFleet is the -fleet demo; it returns the exit code.
func runFleet(at demoAddresses, sim *wechatsim.Server, wechatHandler http.Handler, check bool) int {
	// WeChat answers a login in about a fifth of a second from afar: logins
	// sent at once to several gateways meet while the call is in flight.
	sim.SetLatency(200 * time.Millisecond)
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(interrupted)

	f := &fleet{}
	defer f.stop()
	received := &backendLog{}
	if err := f.start(at, wechatHandler, received.record(gamebackend.Handler())); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	w := f.walkthrough(sim, received)
	if !check {
		f.printGuide(os.Stdout, w)
		<-interrupted
		signal.Stop(interrupted) // a second Ctrl-C ends the demo at once
		fmt.Println("\nshutting down")
		return 0
	}
	go func() {
		<-interrupted
		fmt.Fprintln(os.Stderr, "\ndemo: interrupted")
		f.stop()
		os.Exit(1)
	}()
	w.steps = append(w.steps, f.redisFaultSteps()...)
	if !w.check(os.Stdout) {
		return 1
	}
	return 0
}

// walkthrough is a returning player's logins spread over the three gateways,
// one code sent to all three, and a retry on another gateway.
func (f *fleet) walkthrough(sim *wechatsim.Server, received *backendLog) *walkthrough {
	a, b, c := f.gateways[0].url, f.gateways[1].url, f.gateways[2].url
	dave := wechatsim.OpenID(demoApp.AppID, "dave")
	erin := wechatsim.OpenID(demoApp.AppID, "erin")
	frank := wechatsim.OpenID(demoApp.AppID, "frank")
	w := &walkthrough{baseURL: a, sim: sim, backend: received}
	w.steps = append(w.steps, step{
		title:     "Dave, a returning player, logs in on gateway A; keep his session token in $TOKEN.",
		path:      "/wx/login?code=dave.1",
		saveToken: true,
		expect:    all(forwardedAs(dave, 1), issuesToken),
	})
	for i := 2; i <= fleetBudget; i++ {
		g := f.gateways[(i-1)%len(f.gateways)]
		w.steps = append(w.steps, step{
			title: fmt.Sprintf("Dave logs in again with a fresh code and his token, and the load balancer sends him to gateway %s: login %d of the %d a minute that his budget allows, wherever they land.",
				g.name, i, fleetBudget),
			at:     []string{g.url},
			path:   fmt.Sprintf("/wx/login?code=dave.%d", i),
			bearer: true,
			expect: forwardedAs(dave, 1),
		})
	}
	last := f.gateways[fleetBudget%len(f.gateways)]
	w.steps = append(w.steps, step{
		title: fmt.Sprintf("Dave's login %d, on gateway %s: 429 rate_limited with Retry-After, and no WeChat call. The three gateways keep one budget in Redis; each on its own would have let %d through.",
			fleetBudget+1, last.name, fleetSize*fleetBudget),
		at:     []string{last.url},
		path:   fmt.Sprintf("/wx/login?code=dave.%d", fleetBudget+1),
		bearer: true,
		expect: all(refused(http.StatusTooManyRequests, "rate_limited"), hasHeader("Retry-After"), madeWechatCalls(0)),
	}, step{
		title:  "Erin's code sent to all three gateways at once (a client and a load balancer both retrying): one WeChat call, and all three forward the same identity.",
		at:     []string{a, b, c},
		path:   "/wx/login?code=erin.1",
		expect: all(everyReply(sawIdentity(erin)), forwardedRequests(3), madeWechatCalls(1)),
	}, step{
		title:  "Frank logs in on gateway A.",
		path:   "/wx/login?code=frank.1",
		expect: forwardedAs(frank, 1),
	}, step{
		title:  "Frank's client retries the same code, and lands on gateway C: served from the cache in Redis, with no WeChat call. Alone, gateway C would have spent the code again and failed with 401 code_used.",
		at:     []string{c},
		path:   "/wx/login?code=frank.1",
		expect: forwardedAs(frank, 0),
	})
	return w
}

// redisFaultSteps stop Redis, log in on every gateway all the same, and
// bring Redis back: -check only, since they kill the demo's redis-server.
func (f *fleet) redisFaultSteps() []step {
	gina := wechatsim.OpenID(demoApp.AppID, "gina")
	henry := wechatsim.OpenID(demoApp.AppID, "henry")
	a, b, c := f.gateways[0], f.gateways[1], f.gateways[2]
	return []step{
		{
			title:     "Redis stops (the demo kills it). Gina logs in on gateway A all the same, served from A's memory; gateway A says once that it lost Redis.",
			before:    func() error { f.redis.Kill(); return nil },
			at:        []string{a.url},
			path:      "/wx/login?code=gina.1",
			saveToken: true,
			expect:    all(forwardedAs(gina, 1), issuesToken),
		},
		{
			title:  "Gina logs in on gateway B with a fresh code and her token: served from B's memory.",
			at:     []string{b.url},
			path:   "/wx/login?code=gina.2",
			bearer: true,
			expect: forwardedAs(gina, 1),
		},
		{
			title:  "And on gateway C: served from C's memory.",
			at:     []string{c.url},
			path:   "/wx/login?code=gina.3",
			bearer: true,
			expect: forwardedAs(gina, 1),
		},
		{
			title:  fmt.Sprintf("Gina once more on gateway A: 429. Without Redis each gateway allows a player budget / fleet_size = %d / %d = %d login a minute, so that the fleet as a whole stays near its budget.", fleetBudget, fleetSize, max(1, fleetBudget/fleetSize)),
			at:     []string{a.url},
			path:   "/wx/login?code=gina.4",
			bearer: true,
			expect: all(refused(http.StatusTooManyRequests, "rate_limited"), madeWechatCalls(0)),
		},
		{
			title:  "Redis comes back, empty (the demo starts it again on the same port). Within a second or so every gateway finds it and says so. Henry logs in on gateway B.",
			before: f.restartRedis,
			at:     []string{b.url},
			path:   "/wx/login?code=henry.1",
			expect: forwardedAs(henry, 1),
		},
		{
			title:  "Henry's code again, on gateway A: from the cache in Redis, with no WeChat call. The gateways share again.",
			at:     []string{a.url},
			path:   "/wx/login?code=henry.1",
			expect: forwardedAs(henry, 0),
		},
	}
}

// restartRedis starts Redis again and waits until every gateway uses it.
func (f *fleet) restartRedis() error {
	if err := f.redis.Restart(); err != nil {
		return err
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(fleetStartWithin)
	for _, g := range f.gateways {
		for !g.shared(client) {
			if time.Now().After(deadline) {
				return fmt.Errorf("gateway %s did not return to Redis within %s", g.name, fleetStartWithin)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// printGuide tells a person what is running and what to try.
func (f *fleet) printGuide(out io.Writer, w *walkthrough) {
	fmt.Fprintf(out, `
The wechat_login fleet demo is running (Ctrl-C stops it): three gateways, each
a Caddy process of its own with cmd/demo/Caddyfile.fleet, sharing one Redis,
as behind a load balancer.

`)
	for _, g := range f.gateways {
		fmt.Fprintf(out, "  %-24s gateway %s (metrics: %s)\n", g.url, g.name, g.metricsURL)
	}
	fmt.Fprintf(out, `  %-24s redis-server (pid %d), nothing saved to disk
  http://%-17s the sample game backend
  http://%-17s the WeChat simulator: a code is <player> or
                           <player>.<anything>

Try these in another terminal (bash or zsh). This one shows each WeChat call,
and what the gateways say when Redis goes away and comes back.
`, f.redis.Addr(), f.redis.Pid(), f.servers.backend, f.servers.wechat)
	w.printSteps(out)
	pid := f.redis.Pid()
	for i, more := range []struct{ title, command string }{
		{"What the gateways keep in Redis: names hashed with a key derived from the app secret, no code, no session_key, and every key with an expiry.",
			fmt.Sprintf("redis-cli -p %d --scan", f.redis.Port())},
		{fmt.Sprintf("Freeze Redis, then log in on each gateway with fresh codes: every login is answered, after Redis' timeout (100ms) at most, from the gateway's own memory, which allows a player budget / fleet_size = %d login a minute. Each gateway says once that it lost Redis, and its metrics show caddy_wechat_login_store_fallback 1.",
			max(1, fleetBudget/fleetSize)),
			fmt.Sprintf("kill -STOP %d", pid)},
		{"Let Redis go on: within a second or so every gateway says it shares again.",
			fmt.Sprintf("kill -CONT %d", pid)},
	} {
		fmt.Fprintf(out, "%s\n%s\n\n", comment(fmt.Sprintf("%d. %s", len(w.steps)+i+1, more.title)), more.command)
	}
}

package fleet

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// fleetBudget is the per-player budget of the fleet's gateways: small, so
// that three separate budgets (15) would be told from one shared (5).
const fleetBudget = 5

// redisTimeout is the gateways' Redis timeout: the longest a Redis
// operation may hold a login.
const redisTimeout = 250 * time.Millisecond

// loginBound is how long any login may take while Redis is frozen or gone:
// one Redis operation that times out (after which the gateway serves from
// memory without asking Redis again: TestFleetSurvivesRedisFailures counts
// its operations), the simulator's answer (at once), and room for a loaded
// machine. A gateway that waited for Redis seven times its timeout would
// exceed it.
const loginBound = redisTimeout + 1500*time.Millisecond

// fleet is three gateways sharing one Redis, in front of one backend and one
// simulator.
type fleet struct {
	redis    *testkit.Redis
	sim      *wechatsim.Server
	backend  *testkit.Backend
	gateways []*testkit.Gateway
	config   func(g *testkit.Gateway) string
}

func startFleet(t *testing.T) *fleet {
	t.Helper()
	f := &fleet{redis: testkit.StartRedis(t), backend: testkit.NewBackend(t, nil)}
	var simURL string
	f.sim, simURL = testkit.NewSim(t, fleetSimOptions())
	f.config = func(g *testkit.Gateway) string {
		return g.Site(testkit.WechatLogin(fleetApp.AppID, fleetApp.Secret, simURL,
			fmt.Sprintf("budget %d 1m", fleetBudget),
			"ip_budget off",
			"retry 1",
			fmt.Sprintf("redis {\n\t\taddress %s\n\t\tfleet_size 3\n\t\ttimeout %s\n\t}", f.redis.Addr(), redisTimeout),
			"session {\n\t\tsecret "+sessionSecret+"\n\t}",
		), testkit.ProxyTo(f.backend))
	}
	for range 3 {
		f.gateways = append(f.gateways, testkit.StartGateway(t, f.config))
	}
	return f
}

// login sends a login with code to gateway i, with the session token if any,
// and returns the response and how long it took.
func (f *fleet) login(t *testing.T, i int, code, token string) (testkit.Response, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := f.loginOn(code, token)(f.gateways[i%len(f.gateways)])
	if err != nil {
		t.Fatalf("login %s on gateway %d: %v", code, i, err)
	}
	return resp, time.Since(start)
}

// loopLogins is a returning player's login loop, round-robin over the
// gateways: one login without a session, then attempts more with its token
// and fresh codes. It returns how many were let through.
func (f *fleet) loopLogins(t *testing.T, player string, attempts int) int {
	t.Helper()
	first, _ := f.login(t, 0, player+".0", "")
	if first.StatusCode != http.StatusOK {
		t.Fatalf("first login: %v", first)
	}
	token := first.Header.Get("X-Wx-Session")
	passed := 1
	for i := 1; i < attempts; i++ {
		resp, _ := f.login(t, i, fmt.Sprintf("%s.%d", player, i), token)
		switch resp.StatusCode {
		case http.StatusOK:
			passed++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("login %d: %v", i, resp)
		}
	}
	return passed
}

// 1. A returning player's logins round-robin over three gateways: one budget.
func TestFleetSharesThePlayerBudget(t *testing.T) {
	f := startFleet(t)
	passed := f.loopLogins(t, "alice", 30)
	calls := f.sim.CallsFor(wechatsim.OpenID(fleetApp.AppID, "alice"))
	if passed != fleetBudget || calls != fleetBudget {
		t.Errorf("%d logins passed and %d WeChat calls over three gateways, want %d: one budget for the fleet", passed, calls, fleetBudget)
	}
}

// 2. One code sent to all three at once, many times each: one WeChat call,
// and every gateway answers with the same identity.
func TestFleetMakesOneCallPerCode(t *testing.T) {
	f := startFleet(t)
	f.sim.SetLatency(300 * time.Millisecond) // every login arrives while the call is in flight
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, f.gateways[i%3].URL+"/wx/login?code=bob.1", nil)
			resp, err := testkit.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				statuses[0]++
				return
			}
			statuses[resp.StatusCode]++
		})
	}
	wg.Wait()
	if statuses[http.StatusOK] != 24 || f.sim.Calls() != 1 {
		t.Fatalf("statuses %v with %d WeChat calls, want 24 × 200 and one call", statuses, f.sim.Calls())
	}
	want := wechatsim.OpenID(fleetApp.AppID, "bob")
	for _, got := range f.backend.HeaderValues("X-Wx-Openid") {
		if got != want {
			t.Fatalf("a gateway forwarded openid %q, want %q", got, want)
		}
	}
}

// 3. A client retry that lands on another gateway after the first answered
// is served from the shared cache, never 40163.
func TestFleetServesARetryOnAnotherGateway(t *testing.T) {
	f := startFleet(t)
	for i := range 3 {
		if resp, _ := f.login(t, i, "carol.1", ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("carol.1 on gateway %d: %v", i, resp)
		}
	}
	if f.sim.Calls() != 1 {
		t.Errorf("%d WeChat calls for one code on three gateways, want 1", f.sim.Calls())
	}
}

// 4. Redis frozen mid-load, then resumed; killed and restarted empty: every
// login is answered, none waits on Redis, and the fleet shares its budgets
// again once Redis is back.
func TestFleetSurvivesRedisFailures(t *testing.T) {
	f := startFleet(t)
	loadWhile := func(what string, fault func()) {
		t.Helper()
		stop := make(chan struct{})
		var mu sync.Mutex
		var failures []string
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Go(func() {
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					code := fmt.Sprintf("p%s%d-%d.1", strings.ReplaceAll(what, " ", ""), w, n)
					req, _ := http.NewRequest(http.MethodGet, f.gateways[(w+n)%3].URL+"/wx/login?code="+code, nil)
					start := time.Now()
					resp, err := testkit.Do(req)
					took := time.Since(start)
					mu.Lock()
					switch {
					case err != nil:
						failures = append(failures, err.Error())
					case resp.StatusCode != http.StatusOK:
						failures = append(failures, resp.String())
					case took > loginBound:
						failures = append(failures, fmt.Sprintf("a login took %s", took))
					}
					mu.Unlock()
				}
			})
		}
		stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
		defer stopLoad() // also when fault ends the test
		time.Sleep(300 * time.Millisecond)
		fault()
		time.Sleep(300 * time.Millisecond)
		stopLoad()
		if len(failures) > 0 {
			t.Errorf("%s: %d logins failed or waited, e.g. %s", what, len(failures), failures[0])
		}
	}
	loadWhile("frozen", func() {
		f.redis.Freeze()
		defer f.redis.Resume()
		// Once a gateway has found Redis down, its logins leave Redis alone
		// (only the background probe asks it) until it answers again.
		if !f.waitAllDown(t) {
			return
		}
		time.Sleep(2 * redisTimeout) // operations begun before it was marked down end
		before := f.redisOperations(t)
		time.Sleep(500 * time.Millisecond)
		if after := f.redisOperations(t); after != before {
			t.Errorf("with Redis frozen and found down, the gateways still made %v Redis operations", after-before)
		}
	})
	f.waitShared(t)
	loadWhile("restarted", f.redis.Restart)
	f.waitShared(t)

	if passed := f.loopLogins(t, "dave", 30); passed != fleetBudget {
		t.Errorf("after Redis recovered, %d logins passed over three gateways, want %d: the budget is shared again", passed, fleetBudget)
	}
}

// waitAllDown waits until every gateway has found Redis down, reporting
// false (and failing t) if they do not.
func (f *fleet) waitAllDown(t *testing.T) bool {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); f.gatewaysDown(t) < len(f.gateways); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("the gateways did not find Redis down")
			return false
		}
	}
	return true
}

// gatewaysDown is how many gateways serve from memory (their fallback
// gauge is 1).
func (f *fleet) gatewaysDown(t *testing.T) int {
	down := 0
	for _, g := range f.gateways {
		if metricValue(t, scrapeAdminMetrics(t, g), "caddy_wechat_login_store_fallback") >= 1 {
			down++
		}
	}
	return down
}

// redisOperations is the fleet's Redis operations so far.
func (f *fleet) redisOperations(t *testing.T) float64 {
	var sum float64
	for _, g := range f.gateways {
		sum += redisOperations(t, g)
	}
	return sum
}

// waitShared waits until every gateway uses Redis again (its fallback gauge
// is 0): the prober reconnects within a couple of seconds.
func (f *fleet) waitShared(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); f.gatewaysDown(t) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the gateways did not return to Redis")
		}
	}
}

// 5. A reload of one gateway loses nothing: the fleet's budgets and cached
// codes are in Redis.
func TestFleetReloadLosesNothing(t *testing.T) {
	f := startFleet(t)
	if passed := f.loopLogins(t, "erin", 10); passed != fleetBudget {
		t.Fatalf("%d logins passed, want %d", passed, fleetBudget)
	}
	if resp, _ := f.login(t, 0, "frank.1", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("frank.1: %v", resp)
	}
	calls := f.sim.Calls()
	f.gateways[1].Reload(t, f.config)

	if resp, _ := f.login(t, 1, "frank.1", ""); resp.StatusCode != http.StatusOK || f.sim.Calls() != calls {
		t.Errorf("frank's code after the reload: %v with %d more WeChat calls, want it from the shared cache", resp, f.sim.Calls()-calls)
	}
	if resp, _ := f.login(t, 1, "erin.99", ""); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("erin after the reload: %v, want 429: the reload must not refill her budget", resp)
	}
}

// Non-login requests never touch Redis: with Redis gone, session-verified
// requests are served on every gateway, and no gateway even notices that
// Redis is gone (its fallback gauge stays 0: nothing asked Redis anything).
func TestFleetSessionsNeverTouchRedis(t *testing.T) {
	f := startFleet(t)
	token := f.session(t, "ivan.1")
	f.redis.Stop()
	want := wechatsim.OpenID(fleetApp.AppID, "ivan")
	for i, g := range f.gateways {
		resp, err := gameRequest(g, token)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("gateway %d with Redis gone: %v %v", i, resp, err)
		}
		if got := f.backend.Last(t).Header.Get("X-Wx-Openid"); got != want {
			t.Errorf("gateway %d forwarded openid %q, want %q", i, got, want)
		}
		if metricValue(t, scrapeAdminMetrics(t, g), "caddy_wechat_login_store_fallback") != 0 {
			t.Errorf("gateway %d asked Redis something for a session-verified request", i)
		}
	}
}

// What each request costs Redis, as docs/fleet.md tells operators sizing
// it, counted by the gateway's store_duration_seconds (one observation per
// Redis operation). The fleet's ip_budget is off.
func TestFleetRedisOperationsPerRequest(t *testing.T) {
	f := startFleet(t)
	token := f.session(t, "judy.1")
	steps := []struct {
		what    string
		gateway int
		send    func(g *testkit.Gateway) (testkit.Response, error)
		want    float64
	}{
		{"a login with a new code", 1, f.loginOn("judy.2", ""), 2},
		{"the same code again at that gateway (its cache)", 1, f.loginOn("judy.2", ""), 1},
		{"the same code at another gateway (the fleet's result)", 2, f.loginOn("judy.2", ""), 2},
		{"a login with the player's session and a new code", 1, f.loginOn("judy.3", token), 3},
		{"a login with the player's session and another player's code", 1, f.loginOn("kate.1", token), 3},
		{"a session-verified game request", 2, func(g *testkit.Gateway) (testkit.Response, error) { return gameRequest(g, token) }, 0},
	}
	for _, step := range steps {
		g := f.gateways[step.gateway]
		before := redisOperations(t, g)
		if resp, err := step.send(g); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %v %v", step.what, resp, err)
		}
		if got := redisOperations(t, g) - before; got != step.want {
			t.Errorf("%s: %v Redis operations, want %v", step.what, got, step.want)
		}
	}
}

// loginOn is a login with code (and token, if any) for a step to send.
func (f *fleet) loginOn(code, token string) func(g *testkit.Gateway) (testkit.Response, error) {
	return func(g *testkit.Gateway) (testkit.Response, error) {
		req, err := http.NewRequest(http.MethodGet, g.URL+"/wx/login?code="+code, nil)
		if err != nil {
			return testkit.Response{}, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return testkit.Do(req)
	}
}

// session logs in on gateway 0 with code and returns the session token.
func (f *fleet) session(t *testing.T, code string) string {
	t.Helper()
	resp, _ := f.login(t, 0, code, "")
	token := resp.Header.Get("X-Wx-Session")
	if resp.StatusCode != http.StatusOK || token == "" {
		t.Fatalf("login with %s: %v", code, resp)
	}
	return token
}

// gameRequest is a game request to g with a session token.
func gameRequest(g *testkit.Gateway, token string) (testkit.Response, error) {
	req, err := http.NewRequest(http.MethodGet, g.URL+"/game/state", nil)
	if err != nil {
		return testkit.Response{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	return testkit.Do(req)
}

// redisOperations is how many Redis operations a gateway has made: the sum
// of store_duration_seconds_count over its operations.
func redisOperations(t *testing.T, g *testkit.Gateway) float64 {
	t.Helper()
	return metricValue(t, scrapeAdminMetrics(t, g), "caddy_wechat_login_store_duration_seconds_count")
}

// metricValue is the sum of a metric's values over its labels in a
// Prometheus text exposition.
func metricValue(t *testing.T, exposition, name string) float64 {
	t.Helper()
	var sum float64
	for line := range strings.Lines(exposition) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(line[strings.LastIndexByte(line, ' ')+1:]), 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += n
	}
	return sum
}

package wechatlogin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestGatewaysWithTheSameSettingsShareOneClient(t *testing.T) {
	srv := testkit.StartRedis(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	cfg := &RedisConfig{Address: []string{srv.Addr()}}
	a, err := newAppRedis(ctx, cfg, fleetAppID, fleetEndpoint, fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	// Another app, another key_prefix: the same connections.
	other := &RedisConfig{Address: []string{"redis://" + srv.Addr()}, KeyPrefix: "other:", FleetSize: 3}
	b, err := newAppRedis(ctx, other, "wxanother", fleetEndpoint, "another-secret")
	if err != nil {
		t.Fatal(err)
	}
	if a.redis != b.redis {
		t.Error("handlers with the same redis settings have a client each")
	}
	if a.prefix == b.prefix {
		t.Error("two apps share a key space")
	}
	withPassword, err := newAppRedis(ctx, &RedisConfig{Address: []string{srv.Addr()}, Password: "x"}, fleetAppID, fleetEndpoint, fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	if withPassword.redis == a.redis {
		t.Error("different settings share a client")
	}
	_ = withPassword.release()

	_ = a.release()
	if err := a.redis.client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("released while another handler uses it: %v", err)
	}
	_ = b.release()
	if err := a.redis.client.Ping(context.Background()).Err(); !errors.Is(err, redis.ErrClosed) {
		t.Errorf("the last release left the client open: %v", err)
	}
}

func TestStagingAndProductionNeverShareState(t *testing.T) {
	// Same app_id, same Redis, same key_prefix: a staging site on a
	// simulator must not see what production proved, nor spend its budgets.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	cfg := &RedisConfig{Address: []string{"127.0.0.1:1"}}
	prod, err := newAppRedis(ctx, cfg, fleetAppID, fleetEndpoint, fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.release()
	staging, err := newAppRedis(ctx, cfg, fleetAppID, "http://127.0.0.1:8931", fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer staging.release()
	if prod.prefix == staging.prefix || prod.hide([]byte("oAlice")) == staging.hide([]byte("oAlice")) {
		t.Error("two endpoints of one app share Redis keys")
	}
	if !strings.HasPrefix(prod.prefix, defaultRedisKeyPrefix) {
		t.Errorf("keys do not start with key_prefix: %q", prod.prefix)
	}
}

func TestRedisClientNeverRetriesACommand(t *testing.T) {
	// A charge that timed out may have run; go-redis must not send it again.
	gw := newGateway(t, "127.0.0.1:1", 0, nil)
	opts := gw.redis.client.(*redis.Client).Options()
	if opts.MaxRetries != 0 {
		t.Errorf("go-redis retries commands %d times", opts.MaxRetries)
	}
	if opts.ReadTimeout != defaultRedisTimeout || opts.DialTimeout != defaultRedisTimeout || !opts.ContextTimeoutEnabled {
		t.Errorf("operations are not bounded by the timeout: %+v", opts)
	}
}

func TestRedisFailureIsLoggedOnceAndRecovers(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, nil)
	budget := gw.budget("player", Budget{Events: 10, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now)
	ctx := context.Background()
	fallbackBefore := gaugeValue(storeMetrics.fallback)
	errorsBefore := counterValue(storeMetrics.errors.WithLabelValues("spend"))

	if _, ok := budget.spend(ctx, "oAlice"); !ok {
		t.Fatal("the first login was refused")
	}
	srv.Freeze()
	for range 5 {
		if _, ok := budget.spend(ctx, "oAlice"); !ok {
			t.Fatal("a login was refused because Redis is frozen")
		}
	}
	gw.waitDown(t)
	if got := gaugeValue(storeMetrics.fallback) - fallbackBefore; got != 1 {
		t.Errorf("store_fallback rose by %v, want 1", got)
	}
	if got := counterValue(storeMetrics.errors.WithLabelValues("spend")) - errorsBefore; got != 1 {
		t.Errorf("store_errors_total counted %v failures; while down, logins must not try Redis", got)
	}
	if warns := gw.logs.FilterLevelExact(zapcore.WarnLevel).Len(); warns != 1 {
		t.Errorf("%d warnings for one failure, want 1", warns)
	}

	srv.Resume()
	testkit.WaitFor(t, "the prober finds Redis again", func() bool { return !gw.redis.down.Load() })
	if got := gaugeValue(storeMetrics.fallback); got != fallbackBefore {
		t.Errorf("store_fallback is %v after recovery, want %v", got, fallbackBefore)
	}
	if infos := gw.logs.FilterMessageSnippet("redis answers again").Len(); infos != 1 {
		t.Errorf("%d recovery lines, want 1", infos)
	}
	if gw.logs.Len() != 2 {
		t.Errorf("%d log lines for one failure and one recovery, want 2: %v", gw.logs.Len(), gw.logs.All())
	}
}

// A Redis restarted empty is used again, and starts the fleet's budgets
// afresh; a gateway still counts the charges it made itself.
func TestRedisRestartedEmptyIsUsedAgain(t *testing.T) {
	srv := testkit.StartRedis(t)
	limit := Budget{Events: 3, Window: caddy.Duration(time.Minute)}
	gw := newGateway(t, srv.Addr(), 0, nil)
	budget := gw.budget("player", limit, leasedBudgetTable(100), time.Now)
	ctx := context.Background()
	for range 3 {
		budget.spend(ctx, "oAlice")
	}
	srv.Restart() // empty: no keys, no scripts
	// Served whether the failure is noticed now or the pooled connections
	// were already found dead.
	if _, ok := budget.spend(ctx, "oBob"); !ok {
		t.Fatal("a login was refused because Redis restarted")
	}
	testkit.WaitFor(t, "Redis is used again", func() bool { return !gw.redis.down.Load() })
	rdb := newTestRedisClient(t, srv.Addr())
	before := rdb.DBSize(ctx).Val()
	if _, ok := budget.spend(ctx, "oAlice"); ok {
		t.Error("the gateway forgot the charges it made when Redis lost them")
	}
	other := newGateway(t, srv.Addr(), 1, nil).budget("player", limit, leasedBudgetTable(100), time.Now)
	for range 3 {
		if _, ok := other.spend(ctx, "oAlice"); !ok {
			t.Fatal("the restarted Redis did not start oAlice's budget afresh")
		}
	}
	if _, ok := other.spend(ctx, "oAlice"); ok {
		t.Error("the restarted Redis does not keep the budget")
	}
	if rdb.DBSize(ctx).Val() <= before {
		t.Error("the budget was not written to the restarted Redis")
	}
}

func TestRedisThatFailsAgainSoonIsProbedLessOften(t *testing.T) {
	// A replica that refuses writes answers PING: each recovery is followed
	// by a failure. Probing backs off so that the log lines stay few.
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, nil)
	refused := errors.New("READONLY You can't write against a read only replica")
	var intervals []time.Duration
	for range 3 {
		gw.redis.markDown("spend", refused)
		gw.redis.mu.Lock()
		intervals = append(intervals, gw.redis.probeWait)
		gw.redis.mu.Unlock()
		testkit.WaitFor(t, "the probe finds Redis", func() bool { return !gw.redis.down.Load() })
	}
	first := gw.redis.probeEvery
	if want := []time.Duration{first, 2 * first, 4 * first}; fmt.Sprint(intervals) != fmt.Sprint(want) {
		t.Errorf("probe intervals %v, want %v", intervals, want)
	}
}

// Every command a script calls is in the documented ACL, whether or not a
// test reaches the branch that calls it (a slot pruned, a ledger entry a
// day old): a command the ACL lacks fails only when that branch runs.
func TestDocumentedACLNamesEveryScriptCommand(t *testing.T) {
	allowed := map[string]bool{}
	for _, rule := range documentedACL(t) {
		allowed[rule.(string)] = true
	}
	call := regexp.MustCompile(`redis\.call\('([A-Za-z]+)'`)
	sources, _ := filepath.Glob("redis_*.go")
	lua, _ := filepath.Glob("*.lua")
	found := 0
	for _, path := range append(sources, lua...) {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(src), -1) {
			found++
			if command := strings.ToLower(m[1]); !allowed["+"+command] {
				t.Errorf("%s calls %s, which the ACL of docs/fleet.md does not allow", path, m[1])
			}
		}
	}
	if found == 0 {
		t.Fatal("no script command found: the scan is broken")
	}
}

// runEveryScript runs every script the gateways run, each path that touches
// Redis: a charge, a check, a charge given back, a code redeemed and one
// refused, and wechat_api's token fetched and force-refreshed. It fails t if
// any of them failed (the gateway then serves from memory).
func runEveryScript(t *testing.T, gw gateway) {
	t.Helper()
	ctx := context.Background()
	budget := gw.budget("player", Budget{Events: 5, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now)
	codes := gw.fleetCodes(time.Minute)
	budget.spend(ctx, "oAlice")
	budget.check(ctx, "oAlice")
	if undo, _, ok := budget.reserve(ctx, "oAlice"); ok {
		undo()
	}
	exchange := func(charge chargeFunc) codeResult { // the player charged with the result stored
		if _, ok := charge(ctx, fleetIdentity); !ok {
			t.Fatal("the player's charge was refused")
		}
		return codeResult{id: fleetIdentity}
	}
	if res, _, _ := codes.redeem(ctx, newCodeKey(fleetAppID, credentials{code: fleetCode}), exchange); !res.proved() {
		t.Fatalf("%+v", res)
	}
	refuse := func(chargeFunc) codeResult {
		return codeResult{failure: wechatErrcodes.failure(errcodeInvalidCode, "")}
	}
	codes.redeem(ctx, newCodeKey(fleetAppID, credentials{code: "refused-code"}), refuse)
	gw.keepSessionKey(ctx, fleetIdentity.OpenID, fleetSessionKey, time.Now())
	if _, found, _ := gw.lookupSessionKey(ctx, fleetIdentity.OpenID, time.Now()); !found {
		t.Error("the kept session_key does not read back")
	}
	tokens := gw.tokenStore()
	fetch := func(context.Context) (accessToken, error) {
		return accessToken{value: "every-script-access-token", expires: time.Now().Add(time.Hour)}, nil
	}
	if _, err := tokens.refresh(ctx, time.Now(), accessToken{}, fetch); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.allowForcedRefresh(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if gw.redis.down.Load() || gw.logs.Len() > 0 {
		t.Fatalf("a script failed: %v", gw.logs.All())
	}
}

func TestFleetWorksWithTheDocumentedACL(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	ctx := context.Background()
	const password = "acl-test-password-x9"
	gw := newGateway(t, srv.Addr(), 0, addFleetUser(t, rdb, password))
	runEveryScript(t, gw)
	if rdb.DBSize(ctx).Val() < 2 {
		t.Error("nothing was stored")
	}
	// The same user with another password is refused: the password is sent.
	impostor := newGateway(t, srv.Addr(), 1, func(c *RedisConfig) { c.Username, c.Password = "gateway", "not-"+password })
	impostor.budget("player", Budget{Events: 5, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now).spend(ctx, "oAlice")
	if !impostor.redis.down.Load() {
		t.Error("a gateway with a wrong password was let in")
	}
}

// A fleet on Redis Cluster: every script's keys hash to one slot (one whose
// keys did not would fail with CROSSSLOT and put the gateway on memory), and
// two gateways share one budget through it.
func TestFleetWorksOnRedisCluster(t *testing.T) {
	addrs := testkit.StartRedisCluster(t)
	onCluster := func(c *RedisConfig) { c.Address = addrs }
	runEveryScript(t, newGateway(t, addrs[0], 0, onCluster))

	ctx := context.Background()
	limit := Budget{Events: 3, Window: caddy.Duration(time.Minute)}
	var budgets []budgetStore
	for n := 1; n <= 2; n++ {
		budgets = append(budgets, newGateway(t, addrs[0], n, onCluster).budget("player", limit, leasedBudgetTable(100), time.Now))
	}
	passed := 0
	for i := range 6 {
		if _, ok := budgets[i%2].spend(ctx, "oClusterPlayer"); ok {
			passed++
		}
	}
	if passed != limit.Events {
		t.Errorf("%d charges passed over two gateways on the cluster, want %d: one budget", passed, limit.Events)
	}
}

// A fleet through Redis Sentinel: the gateways ask the Sentinel for the
// master and keep their state there.
func TestFleetWorksThroughSentinel(t *testing.T) {
	master := testkit.StartRedis(t)
	sentinel := testkit.StartRedisSentinel(t, master, "mymaster")
	runEveryScript(t, newGateway(t, sentinel.Addr(), 0, func(c *RedisConfig) { c.MasterName = "mymaster" }))
	if n := newTestRedisClient(t, master.Addr()).DBSize(context.Background()).Val(); n < 2 {
		t.Errorf("the master holds %d keys: the state went elsewhere", n)
	}
}

// withPool gives gw a client of its own with size connections, as a
// process with that many processors would have.
func withPool(t *testing.T, gw gateway, size int) {
	t.Helper()
	settings, err := (&RedisConfig{Address: []string{gw.redis.addrs}, Timeout: caddy.Duration(gw.redis.timeout)}).resolve(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	c := newRedisClient(settings, gw.redis.logger, size)
	c.probeEvery = gw.redis.probeEvery
	t.Cleanup(func() { _ = c.Destruct() })
	gw.redis = c
}

// A gateway too busy for its own pool (many logins at once over two
// connections, a 20ms timeout, so that logins wait for a connection longer
// than the timeout) is not a Redis that failed: Redis stays up, and
// nothing is logged. A frozen Redis is still found down.
func TestRedisBusyGatewayIsNotARedisFailure(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(20 * time.Millisecond) })
	withPool(t, gw, 2)
	budget := gw.budget("player", Budget{Events: 100, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(1000), time.Now)
	ctx := context.Background()
	fallbackBefore := gaugeValue(storeMetrics.fallback)

	var wentDown, overTimeout atomic.Bool
	// A second at least, and on until some login has waited past the
	// timeout (a fast Redis may need longer to saturate the pool), ten at most.
	began := time.Now()
	busy := func() bool {
		elapsed := time.Since(began)
		return elapsed < time.Second || (!overTimeout.Load() && elapsed < 10*time.Second)
	}
	var wg sync.WaitGroup
	for w := range 200 {
		wg.Go(func() {
			for n := 0; busy(); n++ {
				start := time.Now()
				budget.spend(ctx, fmt.Sprintf("oPlayer%d-%d", w, n))
				if time.Since(start) > gw.redis.timeout {
					overTimeout.Store(true) // it waited for a connection longer than an operation may take
				}
				if gw.redis.down.Load() || gaugeValue(storeMetrics.fallback) != fallbackBefore {
					wentDown.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if wentDown.Load() {
		t.Error("a busy gateway marked Redis down")
	}
	if lines := gw.logs.FilterMessageSnippet("redis failed").Len(); lines > 0 {
		t.Errorf("%d \"redis failed\" lines for a gateway that was only busy: %v", lines, gw.logs.All()[0].ContextMap())
	}
	if !overTimeout.Load() {
		t.Fatal("no login waited longer than the timeout: the test did not saturate the pool")
	}

	srv.Freeze()
	defer srv.Resume()
	budget.spend(ctx, "oAlice")
	testkit.WaitFor(t, "the frozen Redis is found down", gw.redis.down.Load)
}

// A client that hangs up while its login's WeChat call is in flight does
// not make Redis look broken: the call's result is still stored, no Redis
// failure is counted, and the gateway stays on Redis.
func TestClientHangingUpDoesNotMarkRedisDown(t *testing.T) {
	srv := testkit.StartRedis(t)
	sim, _ := newTestSim(t)
	gate := testkit.NewGate(t, sim)
	h := newTestHandler(t, gate.URL, withRedis(srv.Addr(), defaultRedisTimeout))
	errorsBefore, fallbackBefore := storeErrorsTotal(), gaugeValue(storeMetrics.fallback)

	ctx, hangUp := context.WithCancel(context.Background())
	first := goLogin(ctx, h, testLogin{code: "alice.hangup"})
	gate.AwaitArrivals(t, 1)
	hangUp()
	if res := awaitLogin(t, first); res.forwarded() {
		t.Fatalf("the login whose client hung up was forwarded: %d", res.w.Code)
	}
	gate.Open()
	// The client's retry joins the call, which has stored its result once
	// it answers.
	if retry := (testLogin{code: "alice.hangup"}).serve(context.Background(), h).checked(t); !retry.forwarded() {
		t.Fatalf("the retry: %d %s", retry.w.Code, retry.w.Body)
	}
	if got := storeErrorsTotal() - errorsBefore; got != 0 {
		t.Errorf("store_errors_total rose by %v after a client hung up, want 0", got)
	}
	if got := gaugeValue(storeMetrics.fallback) - fallbackBefore; got != 0 {
		t.Errorf("store_fallback rose by %v after a client hung up: the gateway left Redis", got)
	}
	if sim.Calls() != 1 {
		t.Errorf("WeChat saw %d calls, want 1", sim.Calls())
	}
}

package wechatlogin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// gatewayCodes is gateway n's code store on the Redis at addr.
func gatewayCodes(t testing.TB, addr string, n int, cacheTTL time.Duration) (gateway, *redisCodes) {
	gw := newGateway(t, addr, n, nil)
	return gw, gw.codes(newLocalCodes(cacheTTL), cacheTTL, 10*time.Second, true).(*redisCodes)
}

// twoGateways starts a Redis and the code stores of two gateways on it,
// and returns them with a client to look inside Redis.
func twoGateways(t *testing.T, cacheTTL time.Duration) (rdb *redis.Client, a, b *redisCodes) {
	t.Helper()
	srv := testkit.StartRedis(t)
	_, a = gatewayCodes(t, srv.Addr(), 0, cacheTTL)
	_, b = gatewayCodes(t, srv.Addr(), 1, cacheTTL)
	return newTestRedisClient(t, srv.Addr()), a, b
}

// countingExchange is WeChat for a test: it counts its calls and answers
// with result, once released.
type countingExchange struct {
	calls   atomic.Int32
	started chan struct{} // closed at the first call
	release chan struct{} // closed to let calls answer
	once    sync.Once
	result  codeResult
}

func newCountingExchange(result codeResult) *countingExchange {
	return &countingExchange{started: make(chan struct{}), release: make(chan struct{}), result: result}
}

// released is an exchange that answers at once.
func released(result codeResult) *countingExchange {
	l := newCountingExchange(result)
	close(l.release)
	return l
}

func (l *countingExchange) exchange() codeResult {
	l.calls.Add(1)
	l.once.Do(func() { close(l.started) })
	<-l.release
	return l.result
}

// proving is the result of an exchange that proved id.
func proving(id Identity) codeResult { return codeResult{id: id} }

// failing is the result of an exchange WeChat refused with errcode.
func failing(errcode int) codeResult { return codeResult{failure: wechatErrcodes.failure(errcode, "")} }

type redeemed struct {
	res     codeResult
	outcome redeemOutcome
	err     error
}

// proved reports whether the login was answered with id alone.
func (r redeemed) proved(id Identity) bool {
	return r.err == nil && r.res.failure == nil && r.res.budgetWait == 0 && r.res.id == id
}

func redeemIn(codes codeStore, key codeKey, l *countingExchange) <-chan redeemed {
	done := make(chan redeemed, 1)
	go func() {
		res, outcome, err := codes.redeem(context.Background(), key, l.exchange)
		done <- redeemed{res, outcome, err}
	}()
	return done
}

// joinInFlight starts n logins with key at a second gateway while the call
// that wechat holds back is in flight for the first, and returns once the
// second gateway has asked Redis (and so found the call).
func joinInFlight(t *testing.T, rdb *redis.Client, second codeStore, key codeKey, wechat *countingExchange, n int) []<-chan redeemed {
	t.Helper()
	<-wechat.started
	claimsBefore := redisCalls(t, rdb, "evalsha")
	var waiters []<-chan redeemed
	for range n {
		waiters = append(waiters, redeemIn(second, key, wechat))
	}
	testkit.WaitFor(t, "the second gateway finds the call in flight", func() bool { return redisCalls(t, rdb, "evalsha") > claimsBefore })
	return waiters
}

func TestRedisCodesOneCallAcrossGateways(t *testing.T) {
	rdb, a, b := twoGateways(t, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(proving(fleetIdentity))

	// Gateway A calls WeChat; the same code reaches gateway B, many times,
	// while A's call is in flight.
	first := redeemIn(a, key, wechat)
	results := joinInFlight(t, rdb, b, key, wechat, 8)
	close(wechat.release)

	got := <-first
	if !got.proved(fleetIdentity) || got.outcome != redeemedByCall {
		t.Fatalf("gateway A: %+v", got)
	}
	joined := 0
	for _, r := range results {
		got := <-r
		if !got.proved(fleetIdentity) {
			t.Fatalf("gateway B: %+v", got)
		}
		if got.outcome == redeemedByCall {
			t.Error("gateway B reports a WeChat call it did not make")
		}
		if got.outcome == redeemedByJoining {
			joined++
		}
	}
	if joined == 0 {
		t.Error("no login at gateway B joined A's call")
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Errorf("%d WeChat calls for one code, want 1", calls)
	}
}

func TestRedisCodesRetryOnAnotherGatewayIsServedFromCache(t *testing.T) {
	_, a, b := twoGateways(t, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := released(proving(fleetIdentity))
	ctx := context.Background()
	if res, outcome, _ := a.redeem(ctx, key, wechat.exchange); !res.proved() || outcome != redeemedByCall {
		t.Fatalf("first login: %v %+v", outcome, res)
	}
	// The client did not get the answer and retries; the balancer picks B.
	res, outcome, _ := b.redeem(ctx, key, wechat.exchange)
	if res != proving(fleetIdentity) || outcome != redeemedFromCache {
		t.Fatalf("retry at gateway B: %+v %v", res, outcome)
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Errorf("%d WeChat calls, want 1: the retry spent the code again (40163)", calls)
	}
}

func TestRedisCodesRefusalReachesWaitersButIsNotCached(t *testing.T) {
	rdb, a, b := twoGateways(t, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(failing(errcodeInvalidCode))

	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)

	for name, r := range map[string]redeemed{"A": <-first, "B": <-waiter} {
		if f := r.res.failure; f == nil || f.kind != kindInvalidCode || f.errcode != 40029 || !f.hasErrcode || r.res.id.proves() {
			t.Errorf("gateway %s answered %+v, want the invalid code of errcode 40029", name, r.res)
		}
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Fatalf("%d WeChat calls while one was in flight, want 1", calls)
	}
	// A new login with the code asks WeChat again: refusals are not cached.
	if res, outcome, _ := b.redeem(context.Background(), key, wechat.exchange); res.failure == nil || outcome != redeemedByCall {
		t.Errorf("a later login: %v %+v, want a new call", outcome, res)
	}
	if calls := wechat.calls.Load(); calls != 2 {
		t.Errorf("%d WeChat calls, want 2", calls)
	}
}

// A code that proved a player over budget is spent at WeChat all the same:
// its identity is shared, so that the client's retry at another gateway is
// answered from it (and checked against the budget there), not with a new
// call and 40163. The logins of the call itself get the refusal, as in
// memory.
func TestRedisCodesOverBudgetIdentityIsSharedForRetries(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	_, c := gatewayCodes(t, srv.Addr(), 2, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(codeResult{id: fleetIdentity, budgetWait: time.Minute})

	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)
	for name, r := range map[string]redeemed{"A": <-first, "B": <-waiter} {
		if r.res.budgetWait != time.Minute {
			t.Errorf("gateway %s, in the call: %+v, want the budget's wait", name, r)
		}
	}
	res, outcome, _ := c.redeem(context.Background(), key, wechat.exchange)
	if res != proving(fleetIdentity) || outcome != redeemedFromCache {
		t.Errorf("the retry at gateway C: %+v %v, want the shared identity, from the cache", res, outcome)
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Errorf("%d WeChat calls, want 1: the retry spent the code again (40163)", calls)
	}
}

func TestRedisCodesWaiterTakesOverFromAVanishedHolder(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	k := b.keysFor(key)
	ctx := context.Background()
	// A gateway took the lock and died.
	if err := rdb.Set(ctx, k.lock, "a-dead-gateway", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	wechat := released(proving(fleetIdentity))
	claimsBefore := redisCalls(t, rdb, "evalsha")
	waiter := redeemIn(b, key, wechat)
	testkit.WaitFor(t, "gateway B waits on the lock", func() bool { return redisCalls(t, rdb, "evalsha") > claimsBefore })
	if calls := wechat.calls.Load(); calls != 0 {
		t.Fatal("gateway B called WeChat while the lock was held")
	}
	rdb.Del(ctx, k.lock) // its expiry, without waiting for it
	got := <-waiter
	if !got.proved(fleetIdentity) || got.outcome != redeemedByCall || wechat.calls.Load() != 1 {
		t.Fatalf("gateway B: %+v after %d calls", got, wechat.calls.Load())
	}
}

func TestRedisCodesCodeUsedLooksForAnotherGatewaysResult(t *testing.T) {
	srv := testkit.StartRedis(t)
	gwA, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	rdb := newTestRedisClient(t, srv.Addr())
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	k := a.keysFor(key)
	// B calls WeChat and hears 40163: gateway A (whose lock had run out)
	// spent the code and stored the identity meanwhile.
	usedAtWeChat := func() codeResult {
		rdb.Set(context.Background(), k.result, a.sealResult(k, proving(fleetIdentity)), time.Minute)
		return failing(errcodeCodeUsed)
	}
	res, outcome, _ := b.redeem(context.Background(), key, usedAtWeChat)
	if res != proving(fleetIdentity) || outcome != redeemedFromCache {
		t.Fatalf("got %+v %v, want A's identity from the cache", res, outcome)
	}
	if gwA.redis.down.Load() {
		t.Fatal("Redis failed")
	}
}

func TestRedisCodesCacheOffStillAnswersWaiters(t *testing.T) {
	rdb, a, b := twoGateways(t, 0)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(proving(fleetIdentity))
	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)
	if got := <-first; !got.proved(fleetIdentity) {
		t.Fatalf("gateway A: %+v", got)
	}
	if got := <-waiter; !got.proved(fleetIdentity) || got.outcome != redeemedByJoining {
		t.Fatalf("gateway B: %+v", got)
	}
	// With cache_ttl 0, a later login is a new exchange, and whoever waits
	// for it gets its answer, not the earlier call's.
	again := newCountingExchange(failing(errcodeCodeUsed))
	later := redeemIn(b, key, again)
	laterWaiter := joinInFlight(t, rdb, a, key, again, 1)[0]
	close(again.release)
	if got := <-later; got.outcome != redeemedByCall || again.calls.Load() != 1 {
		t.Errorf("a later login with the cache off: %+v after %d calls, want a new call", got, again.calls.Load())
	}
	if got := <-laterWaiter; got.res.failure == nil || got.res.failure.kind != kindCodeUsed {
		t.Errorf("a waiter on the later call: %+v, want its code_used", got)
	}
}

func TestRedisCodesStoredIdentityIsCheckedAsWechatsIs(t *testing.T) {
	// A stored identity is not forwarded unless WeChat could have sent it:
	// it becomes header values and session claims.
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	ctx := context.Background()
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	k := a.keysFor(key)
	rdb.Set(ctx, k.result, a.sealResult(k, proving(Identity{OpenID: "oAlice\r\nX-Wx-Openid: oMallory"})), time.Minute)
	res, outcome, _ := a.redeem(ctx, key, released(proving(fleetIdentity)).exchange)
	if res != proving(fleetIdentity) || outcome != redeemedByCall {
		t.Fatalf("a stored identity WeChat could not have sent was used: %+v %v", res, outcome)
	}
}

func TestRedisCodesResultIsBoundToItsCode(t *testing.T) {
	// Whoever can write to Redis cannot give one code another's identity.
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	ctx := context.Background()
	alice, mallory := newCodeKey(fleetAppID, credentials{code: "alice-code"}), newCodeKey(fleetAppID, credentials{code: "mallory-code"})
	if res, _, _ := a.redeem(ctx, mallory, released(proving(Identity{OpenID: "oMallory"})).exchange); !res.proved() {
		t.Fatal(res)
	}
	stored := rdb.Get(ctx, a.keysFor(mallory).result).Val()
	rdb.Set(ctx, a.keysFor(alice).result, stored, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	res, outcome, _ := b.redeem(ctx, alice, released(proving(Identity{OpenID: "oAlice"})).exchange)
	if res.id.OpenID != "oAlice" || outcome != redeemedByCall {
		t.Fatalf("a moved result was believed: %+v %v", res, outcome)
	}
}

func TestRedisCodesServeWhileRedisIsDown(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	fallbackBefore := gaugeValue(storeMetrics.fallback)
	srv.Freeze()
	defer srv.Resume()
	wechat := released(proving(fleetIdentity))
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	res, outcome, _ := a.redeem(context.Background(), key, wechat.exchange)
	if res != proving(fleetIdentity) || outcome != redeemedByCall {
		t.Fatalf("with Redis frozen: %+v %v", res, outcome)
	}
	if !gw.redis.down.Load() || gaugeValue(storeMetrics.fallback) != fallbackBefore+1 {
		t.Error("the fallback is not shown")
	}
	// The gateway's own cache still serves the retry.
	if _, outcome, _ := a.redeem(context.Background(), key, wechat.exchange); outcome != redeemedFromCache || wechat.calls.Load() != 1 {
		t.Errorf("retry at the same gateway: %v after %d calls", outcome, wechat.calls.Load())
	}
}

func TestNothingReadableInRedis(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	ctx := context.Background()
	gw, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	players := gw.budget("player", Budget{Events: 10, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now)
	ips := gw.budget("ip", Budget{Events: 10, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now)
	const ip = "203.0.113.77"
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	refusedKey := newCodeKey(fleetAppID, credentials{code: fleetCode + "-refused"})

	// A call in flight (its lock), one refused with waiters (a refusal),
	// one answered (an identity), and budgets charged.
	wechat := newCountingExchange(proving(fleetIdentity))
	inFlight := redeemIn(a, key, wechat)
	<-wechat.started
	if res, _, _ := b.redeem(ctx, refusedKey, released(failing(errcodeInvalidCode)).exchange); res.failure == nil {
		t.Fatal("the failure was lost")
	}
	players.spend(ctx, fleetIdentity.OpenID)
	ips.spend(ctx, ip)
	seen := dumpRedis(t, rdb)
	close(wechat.release)
	<-inFlight
	for k, v := range dumpRedis(t, rdb) {
		seen[k] = v
	}
	if gw.redis.down.Load() {
		t.Fatal("Redis failed: nothing was stored")
	}

	hex := fmt.Sprintf("%x", key[:])
	forbidden := []string{fleetCode, fleetSessionKey, fleetSecret, fleetIdentity.OpenID, fleetIdentity.UnionID, ip, hex, "40029", "invalid_code"}
	kinds := map[string]int{}
	for k, v := range seen {
		for _, f := range forbidden {
			if strings.Contains(k, f) || strings.Contains(v, f) {
				t.Errorf("key %q holds %q in readable form", k, f)
			}
		}
		for _, kind := range []string{":budget:player:", ":budget:ip:", ":code:", ":lock:", ":skey:"} {
			if strings.Contains(k, kind) {
				kinds[kind]++
			}
		}
	}
	for _, kind := range []string{":budget:player:", ":budget:ip:", ":code:", ":lock:", ":skey:"} {
		if kinds[kind] == 0 {
			t.Errorf("no %s key was seen: the test looked at less than it should", kind)
		}
	}
}

// BenchmarkRedeemFreshCode compares redeeming codes never seen before (one
// WeChat call each, answered at once) in memory and through a real Redis
// (two round trips: the claim, then the result), with the processor time
// each costs: on a machine whose cores Redis shares with the gateways, that
// time, not the latency, is what bounds the fleet's logins per second.
func BenchmarkRedeemFreshCode(b *testing.B) {
	exchange := func() codeResult { return proving(fleetIdentity) }
	b.Run("memory", func(b *testing.B) {
		reportCPU(b, nil, func() { benchmarkRedeem(b, newLocalCodes(time.Minute), exchange) })
	})
	b.Run("redis", func(b *testing.B) {
		srv := testkit.StartRedis(b)
		gw := newGateway(b, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(time.Second) })
		codes := gw.codes(newLocalCodes(time.Minute), time.Minute, 10*time.Second, true)
		reportCPU(b, srv, func() { benchmarkRedeem(b, codes, exchange) })
		if gw.redis.down.Load() {
			b.Fatal("Redis failed during the benchmark: the numbers are memory's")
		}
	})
}

func benchmarkRedeem(b *testing.B, codes codeStore, exchange func() codeResult) {
	ctx := context.Background()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := newCodeKey(fleetAppID, credentials{code: fmt.Sprintf("bench-code-%d", n.Add(1))})
			if res, _, _ := codes.redeem(ctx, key, exchange); !res.proved() {
				b.Error(res)
				return
			}
		}
	})
}

// redisCalls is how many times the server ran command, from its own
// statistics: proof of what reached Redis, whatever the client believes.
func redisCalls(t testing.TB, rdb *redis.Client, command string) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		rest, found := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+command+":calls=")
		if found {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

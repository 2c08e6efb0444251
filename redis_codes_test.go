package wechatlogin

import (
	"context"
	"encoding/json"
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
	return gw, gw.fleetCodes(cacheTTL)
}

// gatewaysOnOneRedis starts a Redis and the code stores of n gateways on
// it, and returns them with a client to look inside Redis.
func gatewaysOnOneRedis(t *testing.T, cacheTTL time.Duration, n int) (*redis.Client, []*redisCodes) {
	t.Helper()
	srv := testkit.StartRedis(t)
	codes := make([]*redisCodes, n)
	for i := range codes {
		_, codes[i] = gatewayCodes(t, srv.Addr(), i, cacheTTL)
	}
	return newTestRedisClient(t, srv.Addr()), codes
}

// twoGateways is gatewaysOnOneRedis of two gateways.
func twoGateways(t *testing.T, cacheTTL time.Duration) (rdb *redis.Client, a, b *redisCodes) {
	t.Helper()
	rdb, codes := gatewaysOnOneRedis(t, cacheTTL, 2)
	return rdb, codes[0], codes[1]
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

func (l *countingExchange) exchange(charge chargeFunc) codeResult {
	l.calls.Add(1)
	l.once.Do(func() { close(l.started) })
	<-l.release
	if l.result.proved() {
		if wait, ok := charge(context.Background(), l.result.id); !ok {
			return codeResult{id: l.result.id, budgetWait: wait}
		}
	}
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

// A login whose client hangs up while it waits for another gateway's call
// leaves its gateway on Redis: the wait goes on for the code's result with
// that login's context, ended, and an ended context is not Redis failing
// (were it, the gateway would leave Redis and call WeChat with a code that
// is already spent).
func TestRedisCodesWaiterWhoseClientHangsUpStaysOnRedis(t *testing.T) {
	rdb, a, b := twoGateways(t, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(proving(fleetIdentity))
	errorsBefore := storeErrorsTotal()

	first := redeemIn(a, key, wechat)
	<-wechat.started
	ctx, hangUp := context.WithCancel(context.Background())
	claimsBefore := redisCalls(t, rdb, "evalsha")
	waiter := make(chan error, 1)
	go func() {
		_, _, err := b.redeem(ctx, key, wechat.exchange)
		waiter <- err
	}()
	testkit.WaitFor(t, "gateway B finds the call in flight", func() bool { return redisCalls(t, rdb, "evalsha") > claimsBefore })
	hangUp()
	if err := <-waiter; err == nil {
		t.Fatal("the login whose client hung up was answered as if it waited on")
	}
	polled := redisCalls(t, rdb, "evalsha")
	testkit.WaitFor(t, "gateway B looks for the result again", func() bool {
		return redisCalls(t, rdb, "evalsha") >= polled+2 || b.app.redis.down.Load()
	})
	close(wechat.release)
	if got := <-first; !got.proved(fleetIdentity) {
		t.Fatalf("gateway A: %+v", got)
	}

	// The client's retry at B gets what A's call proved, with no call of its own.
	if res, _, err := b.redeem(context.Background(), key, wechat.exchange); err != nil || !(redeemed{res: res}).proved(fleetIdentity) {
		t.Errorf("the retry at gateway B: %+v %v, want A's identity", res, err)
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Errorf("%d WeChat calls for one code, want 1", calls)
	}
	if b.app.redis.down.Load() {
		t.Error("gateway B left Redis after a client hung up")
	}
	if got := storeErrorsTotal() - errorsBefore; got != 0 {
		t.Errorf("store_errors_total rose by %v after a client hung up, want 0", got)
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
	wantRetryFromCache(t, b, key, wechat, 1)
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
// memory; a login at another gateway that waited on the call gets the
// identity as from the cache, for the same check.
func TestRedisCodesOverBudgetIdentityIsSharedForRetries(t *testing.T) {
	rdb, codes := gatewaysOnOneRedis(t, time.Minute, 3)
	a, b, c := codes[0], codes[1], codes[2]
	ctx := context.Background()
	for range codesPlayerLimit.Events {
		c.players.spend(ctx, fleetIdentity.OpenID) // at another gateway: A's memory knows none
	}
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	wechat := newCountingExchange(proving(fleetIdentity))

	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)
	if r := <-first; r.res.id != fleetIdentity || r.res.budgetWait <= 0 {
		t.Errorf("gateway A, which made the call: %+v, want the budget's wait", r)
	}
	if r := <-waiter; r.res != proving(fleetIdentity) || r.outcome != redeemedFromCache {
		t.Errorf("gateway B, which waited on the call: %+v, want the identity as from the cache", r)
	}
	if _, ok := b.players.check(ctx, fleetIdentity.OpenID); ok {
		t.Error("the budget's check lets the waiter in")
	}
	wantRetryFromCache(t, c, key, wechat, 1)
}

func TestRedisCodesWaiterTakesOverFromAVanishedHolder(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})
	k := b.claimFor(key)
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
	k := a.claimFor(key)
	// B calls WeChat and hears 40163: gateway A (whose lock had run out)
	// spent the code and stored the identity meanwhile.
	usedAtWeChat := func(chargeFunc) codeResult {
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
	k := a.claimFor(key)
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
	stored := rdb.Get(ctx, a.claimFor(mallory).result).Val()
	rdb.Set(ctx, a.claimFor(alice).result, stored, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	res, outcome, _ := b.redeem(ctx, alice, released(proving(Identity{OpenID: "oAlice"})).exchange)
	if res.id.OpenID != "oAlice" || outcome != redeemedByCall {
		t.Fatalf("a moved result was believed: %+v %v", res, outcome)
	}
}

// A result that whoever can write to Redis keeps past its expiry (PERSIST
// on the key, or SET again once Redis dropped it) is not served: the
// expiry sealed inside it has passed, so the next login with the code asks
// WeChat, which says what it says of a spent code. Within its expiry (and
// the clock skew allowed) it serves, as the control. A result an older
// gateway sealed without an expiry inside does not open either.
func TestRedisCodesResultKeptPastItsExpiryIsRefused(t *testing.T) {
	const cacheTTL = time.Minute
	used := failing(errcodeCodeUsed)
	for _, keep := range []struct {
		name string
		keep func(ctx context.Context, rdb *redis.Client, key, captured string) error
	}{
		{"PERSIST", func(ctx context.Context, rdb *redis.Client, key, _ string) error { return rdb.Persist(ctx, key).Err() }},
		{"SET again", func(ctx context.Context, rdb *redis.Client, key, captured string) error {
			rdb.Del(ctx, key) // as Redis does once the key's expiry passes
			return rdb.Set(ctx, key, captured, 0).Err()
		}},
	} {
		t.Run(keep.name, func(t *testing.T) {
			srv := testkit.StartRedis(t)
			rdb := newTestRedisClient(t, srv.Addr())
			clock := testkit.NewClock(time.Now())
			gateways := make([]*redisCodes, 3)
			for n := range gateways {
				_, gateways[n] = gatewayCodes(t, srv.Addr(), n, cacheTTL)
				gateways[n].now = clock.Now
			}
			ctx := context.Background()
			key := newCodeKey(fleetAppID, credentials{code: fleetCode})
			result := gateways[0].claimFor(key).result
			if res, _, _ := gateways[0].redeem(ctx, key, released(proving(fleetIdentity)).exchange); !res.proved() {
				t.Fatalf("%+v", res)
			}
			captured := rdb.Get(ctx, result).Val()

			clock.Advance(cacheTTL + sealClockSkew - time.Millisecond)
			if err := keep.keep(ctx, rdb, result, captured); err != nil {
				t.Fatal(err)
			}
			control := released(used)
			if res, outcome, _ := gateways[1].redeem(ctx, key, control.exchange); outcome != redeemedFromCache || res.id.OpenID != fleetIdentity.OpenID || control.calls.Load() != 0 {
				t.Fatalf("within its expiry, the result was not served (%+v %v, %d WeChat calls): the test proves nothing", res, outcome, control.calls.Load())
			}

			clock.Advance(time.Millisecond)
			if err := keep.keep(ctx, rdb, result, captured); err != nil {
				t.Fatal(err)
			}
			wechat := released(used)
			res, outcome, _ := gateways[2].redeem(ctx, key, wechat.exchange)
			if res.proved() || outcome != redeemedByCall || res.failure == nil || res.failure.kind != kindCodeUsed || wechat.calls.Load() != 1 {
				t.Errorf("past its expiry: %+v %v after %d WeChat calls; want WeChat asked, and its code_used", res, outcome, wechat.calls.Load())
			}
		})
	}

	t.Run("sealed by an older gateway, without an expiry inside", func(t *testing.T) {
		rdb, a, b := twoGateways(t, cacheTTL)
		ctx := context.Background()
		key := newCodeKey(fleetAppID, credentials{code: fleetCode})
		k := a.claimFor(key)
		plain, _ := json.Marshal(storedResult{OpenID: "oOlderGateway"})
		nonce := make([]byte, a.app.sealer.NonceSize())
		older := a.app.sealer.Seal(append([]byte{resultIdentity}, nonce...), nonce, plain, append([]byte{resultIdentity}, k.result...))
		rdb.Set(ctx, k.result, older, time.Minute)
		wechat := released(proving(fleetIdentity))
		if res, outcome, _ := b.redeem(ctx, key, wechat.exchange); res != proving(fleetIdentity) || outcome != redeemedByCall || wechat.calls.Load() != 1 {
			t.Errorf("a result without an expiry inside: %+v %v after %d WeChat calls; want WeChat's answer", res, outcome, wechat.calls.Load())
		}
	})
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
	gw.waitDown(t)
	if gaugeValue(storeMetrics.fallback) != fallbackBefore+1 {
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
	exchange := func(chargeFunc) codeResult { return proving(fleetIdentity) }
	b.Run("memory", func(b *testing.B) {
		reportCPU(b, nil, func() { benchmarkRedeem(b, newLocalCodes(time.Minute, unlimited{}), exchange) })
	})
	b.Run("redis", func(b *testing.B) {
		srv := testkit.StartRedis(b)
		gw := newGateway(b, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(time.Second) })
		codes := gw.fleetCodes(time.Minute)
		reportCPU(b, srv, func() { benchmarkRedeem(b, codes, exchange) })
		if gw.redis.down.Load() {
			b.Fatal("Redis failed during the benchmark: the numbers are memory's")
		}
	})
}

func benchmarkRedeem(b *testing.B, codes codeStore, exchange exchangeFunc) {
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

// A refusal never replaces a stored identity: gateway A's lock ran out
// while its call was slow, gateway B took the code and heard WeChat time
// out, and A stored the identity before B stored its refusal. A retry at a
// third gateway gets A's identity, with no WeChat call (which would answer
// 40163).
func TestRedisCodesRefusalNeverReplacesAnIdentity(t *testing.T) {
	rdb, codes := gatewaysOnOneRedis(t, time.Minute, 3)
	a, b, c := codes[0], codes[1], codes[2]
	key := newCodeKey(fleetAppID, credentials{code: fleetCode})

	wechatA := newCountingExchange(proving(fleetIdentity))
	atA := redeemIn(a, key, wechatA)
	<-wechatA.started
	rdb.Del(context.Background(), a.claimFor(key).lock) // its expiry, without waiting for it
	wechatB := newCountingExchange(codeResult{failure: &platformError{kind: kindTimeout}})
	atB := redeemIn(b, key, wechatB)
	<-wechatB.started
	close(wechatA.release)
	if got := <-atA; got.res != proving(fleetIdentity) {
		t.Fatalf("gateway A: %+v", got)
	}
	close(wechatB.release)
	<-atB
	wantRetryFromCache(t, c, key, released(proving(fleetIdentity)), 0)
}

// The lock on a code lasts the exchange's longest time (every attempt and
// backoff) plus the Redis timeout, the time to store the result: the
// gateway calling WeChat keeps it to the end, and one that vanished frees
// it soon after.
func TestRedisCodesLockLastsTheLongestExchange(t *testing.T) {
	srv := testkit.StartRedis(t)
	sim, _ := newTestSim(t)
	gate := testkit.NewGate(t, sim)
	// Longer than any pause between taking the lock and reading it.
	const redisTimeout = 3 * time.Second
	h := newTestHandler(t, gate.URL, withRedis(srv.Addr(), redisTimeout), func(h *Handler) {
		h.Timeout = caddy.Duration(2 * time.Second)
		h.Retry = &RetryConfig{Attempts: 2, Base: caddy.Duration(100 * time.Millisecond), Max: caddy.Duration(100 * time.Millisecond)}
	})
	const longestExchange = 2*time.Second + 100*time.Millisecond + 2*time.Second // as docs/configuration.md counts it

	login := goLogin(context.Background(), h, testLogin{code: "alice.lock"})
	gate.AwaitArrivals(t, 1)
	ttl := keyPTTL(t, newTestRedisClient(t, srv.Addr()), "*:lock:*")
	if ttl <= longestExchange || ttl > longestExchange+redisTimeout {
		t.Errorf("the code's lock expires in %v while WeChat is called, want more than %v and at most %v", ttl, longestExchange, longestExchange+redisTimeout)
	}
	gate.Open()
	awaitLogin(t, login)
}

// A Redis that answers a PING but no operation within the timeout (an
// overloaded or distant one) is slow, not stalled: a login asks it about
// its code through one such silence, not again and again until the lock
// would run out, and is then served by a call of its own.
func TestRedisCodesSlowRedisHoldsALoginThroughOneSilenceOnly(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(5 * time.Millisecond) })
	codes := gw.fleetCodes(time.Minute)
	// Redis runs 100ms scripts one after another: the gateway's operations
	// are mostly answered after their timeout, its PING (a dial, a
	// handshake and the PING, each behind one script) well within its
	// second.
	hog := newTestRedisClient(t, srv.Addr())
	stop := make(chan struct{})
	var hogging sync.WaitGroup
	hogging.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			hog.Eval(context.Background(), `
local start = redis.call('TIME')
repeat
	local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + now[2] - start[2] >= tonumber(ARGV[1])
return 0`, nil, 100000)
		}
	})
	defer hogging.Wait()
	defer close(stop)
	operations := func() (n uint64) {
		for _, operation := range []string{"claim", "finish"} {
			n += operationsOf(operation)
		}
		return n
	}
	before := operations()
	wechat := released(proving(fleetIdentity))
	res, _, err := codes.redeem(context.Background(), newCodeKey(fleetAppID, credentials{code: fleetCode}), wechat.exchange)
	if err != nil || !(redeemed{res: res}).proved(fleetIdentity) || wechat.calls.Load() != 1 {
		t.Fatalf("with Redis slow: %+v %v after %d calls", res, err, wechat.calls.Load())
	}
	// Two silences (each followed by a PING), whether the claim or the
	// result's storing meets them; more operations only if one was answered.
	if asked := operations() - before; asked > 4 {
		t.Errorf("the login asked a slow Redis %d times, want at most 4: it waited for Redis until the lock ran out", asked)
	}
	if gw.redis.down.Load() {
		t.Errorf("a Redis that answers a PING within its second was marked down (%v): the test did not make it slow, but stalled", gw.logs.All()[0].ContextMap())
	}
}

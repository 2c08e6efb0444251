package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// countingLead is WeChat for a test: it counts its calls and answers with
// identity or refusal once released, charging the identity's player as
// the handler does (a player over budget gets the identity and the
// budget's refusal).
type countingLead struct {
	calls    atomic.Int32
	started  chan struct{} // closed at the first call
	release  chan struct{} // closed to let calls answer
	once     sync.Once
	identity Identity
	refusal  *jsonRefusal
}

func newCountingLead(id Identity, refusal *jsonRefusal) *countingLead {
	l := &countingLead{started: make(chan struct{}), release: make(chan struct{}), identity: id, refusal: refusal}
	return l
}

// released is a lead that answers at once.
func released(id Identity, refusal *jsonRefusal) *countingLead {
	l := newCountingLead(id, refusal)
	close(l.release)
	return l
}

func (l *countingLead) lead(charge chargeFunc) (Identity, *jsonRefusal) {
	l.calls.Add(1)
	l.once.Do(func() { close(l.started) })
	<-l.release
	if l.identity.OpenID != "" {
		if wait, ok := charge(context.Background(), l.identity); !ok {
			return l.identity, playerRateLimited(wait)
		}
	}
	return l.identity, l.refusal
}

type redeemed struct {
	id      Identity
	outcome redeemOutcome
	refusal *jsonRefusal
}

func redeemIn(codes codeStore, key codeKey, lead *countingLead) <-chan redeemed {
	done := make(chan redeemed, 1)
	go func() {
		id, outcome, refusal := codes.redeem(context.Background(), key, lead.lead)
		done <- redeemed{id, outcome, refusal}
	}()
	return done
}

// joinInFlight starts n logins with key at a second gateway while the call
// that wechat holds back is in flight for the first, and returns once the
// second gateway has asked Redis (and so found the call).
func joinInFlight(t *testing.T, rdb *redis.Client, second codeStore, key codeKey, wechat *countingLead, n int) []<-chan redeemed {
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
	key := newCodeKey(fleetAppID, fleetCode)
	wechat := newCountingLead(fleetIdentity, nil)

	// Gateway A calls WeChat; the same code reaches gateway B, many times,
	// while A's call is in flight.
	first := redeemIn(a, key, wechat)
	results := joinInFlight(t, rdb, b, key, wechat, 8)
	close(wechat.release)

	got := <-first
	if got.refusal != nil || got.id != fleetIdentity || got.outcome != redeemedByCall {
		t.Fatalf("gateway A: %+v", got)
	}
	joined := 0
	for _, r := range results {
		got := <-r
		if got.refusal != nil || got.id != fleetIdentity {
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
	key := newCodeKey(fleetAppID, fleetCode)
	wechat := released(fleetIdentity, nil)
	ctx := context.Background()
	if _, outcome, refusal := a.redeem(ctx, key, wechat.lead); refusal != nil || outcome != redeemedByCall {
		t.Fatalf("first login: %v %v", outcome, refusal)
	}
	// The client did not get the answer and retries; the balancer picks B.
	wantRetryFromCache(t, b, key, wechat, 1)
}

func TestRedisCodesRefusalReachesWaitersButIsNotCached(t *testing.T) {
	rdb, a, b := twoGateways(t, time.Minute)
	key := newCodeKey(fleetAppID, fleetCode)
	refusal := &jsonRefusal{status: http.StatusUnauthorized, code: errInvalidCode, message: "the login code is invalid", errcode: 40029, hasErrcode: true}
	wechat := newCountingLead(Identity{}, refusal)

	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)

	for name, r := range map[string]redeemed{"A": <-first, "B": <-waiter} {
		if r.refusal == nil || r.refusal.status != refusal.status || r.refusal.code != refusal.code || r.refusal.errcode != 40029 || !r.refusal.hasErrcode || r.refusal.message != refusal.message {
			t.Errorf("gateway %s answered %+v, want %+v", name, r.refusal, refusal)
		}
	}
	if calls := wechat.calls.Load(); calls != 1 {
		t.Fatalf("%d WeChat calls while one was in flight, want 1", calls)
	}
	// A new login with the code asks WeChat again: refusals are not cached.
	if _, outcome, refusal := b.redeem(context.Background(), key, wechat.lead); refusal == nil || outcome != redeemedByCall {
		t.Errorf("a later login: %v %v, want a new call", outcome, refusal)
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
	key := newCodeKey(fleetAppID, fleetCode)
	wechat := newCountingLead(fleetIdentity, nil)

	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)
	if r := <-first; r.refusal == nil || r.refusal.code != errRateLimited || r.refusal.retryAfter <= 0 {
		t.Errorf("gateway A, which made the call: %+v, want the budget's refusal", r)
	}
	if r := <-waiter; r.refusal != nil || r.id != fleetIdentity || r.outcome != redeemedFromCache {
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
	key := newCodeKey(fleetAppID, fleetCode)
	k := b.keysFor(key)
	ctx := context.Background()
	// A gateway took the lock and died.
	if err := rdb.Set(ctx, k.lock, "a-dead-gateway", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	wechat := released(fleetIdentity, nil)
	claimsBefore := redisCalls(t, rdb, "evalsha")
	waiter := redeemIn(b, key, wechat)
	testkit.WaitFor(t, "gateway B waits on the lock", func() bool { return redisCalls(t, rdb, "evalsha") > claimsBefore })
	if calls := wechat.calls.Load(); calls != 0 {
		t.Fatal("gateway B called WeChat while the lock was held")
	}
	rdb.Del(ctx, k.lock) // its expiry, without waiting for it
	got := <-waiter
	if got.refusal != nil || got.id != fleetIdentity || got.outcome != redeemedByCall || wechat.calls.Load() != 1 {
		t.Fatalf("gateway B: %+v after %d calls", got, wechat.calls.Load())
	}
}

func TestRedisCodesCodeUsedLooksForAnotherGatewaysResult(t *testing.T) {
	srv := testkit.StartRedis(t)
	gwA, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	rdb := newTestRedisClient(t, srv.Addr())
	key := newCodeKey(fleetAppID, fleetCode)
	k := a.keysFor(key)
	// B calls WeChat and hears 40163: gateway A (whose lock had run out)
	// spent the code and stored the identity meanwhile.
	usedAtWeChat := func(chargeFunc) (Identity, *jsonRefusal) {
		rdb.Set(context.Background(), k.result, a.sealIdentity(k, fleetIdentity, false), time.Minute)
		return Identity{}, newRefusal(http.StatusUnauthorized, errCodeUsed, "the login code was already used")
	}
	id, outcome, refusal := b.redeem(context.Background(), key, usedAtWeChat)
	if refusal != nil || id != fleetIdentity || outcome != redeemedFromCache {
		t.Fatalf("got %+v %v %v, want A's identity from the cache", id, outcome, refusal)
	}
	if gwA.redis.down.Load() {
		t.Fatal("Redis failed")
	}
}

func TestRedisCodesCacheOffStillAnswersWaiters(t *testing.T) {
	rdb, a, b := twoGateways(t, 0)
	key := newCodeKey(fleetAppID, fleetCode)
	wechat := newCountingLead(fleetIdentity, nil)
	first := redeemIn(a, key, wechat)
	waiter := joinInFlight(t, rdb, b, key, wechat, 1)[0]
	close(wechat.release)
	if got := <-first; got.refusal != nil || got.id != fleetIdentity {
		t.Fatalf("gateway A: %+v", got)
	}
	if got := <-waiter; got.refusal != nil || got.id != fleetIdentity || got.outcome != redeemedByJoining {
		t.Fatalf("gateway B: %+v", got)
	}
	// With cache_ttl 0, a later login is a new exchange, and whoever waits
	// for it gets its answer, not the earlier call's.
	used := newRefusal(http.StatusUnauthorized, errCodeUsed, "the login code was already used")
	again := newCountingLead(Identity{}, used)
	later := redeemIn(b, key, again)
	laterWaiter := joinInFlight(t, rdb, a, key, again, 1)[0]
	close(again.release)
	if got := <-later; got.outcome != redeemedByCall || again.calls.Load() != 1 {
		t.Errorf("a later login with the cache off: %+v after %d calls, want a new call", got, again.calls.Load())
	}
	if got := <-laterWaiter; got.refusal == nil || got.refusal.code != errCodeUsed {
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
	key := newCodeKey(fleetAppID, fleetCode)
	k := a.keysFor(key)
	rdb.Set(ctx, k.result, a.sealIdentity(k, Identity{OpenID: "oAlice\r\nX-Wx-Openid: oMallory"}, false), time.Minute)
	id, outcome, refusal := a.redeem(ctx, key, released(fleetIdentity, nil).lead)
	if refusal != nil || id != fleetIdentity || outcome != redeemedByCall {
		t.Fatalf("a stored identity WeChat could not have sent was used: %+v %v %v", id, outcome, refusal)
	}
}

func TestRedisCodesResultIsBoundToItsCode(t *testing.T) {
	// Whoever can write to Redis cannot give one code another's identity.
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	_, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	ctx := context.Background()
	alice, mallory := newCodeKey(fleetAppID, "alice-code"), newCodeKey(fleetAppID, "mallory-code")
	if _, _, refusal := a.redeem(ctx, mallory, released(Identity{OpenID: "oMallory"}, nil).lead); refusal != nil {
		t.Fatal(refusal)
	}
	stored := rdb.Get(ctx, a.keysFor(mallory).result).Val()
	rdb.Set(ctx, a.keysFor(alice).result, stored, time.Minute)
	_, b := gatewayCodes(t, srv.Addr(), 1, time.Minute)
	id, outcome, refusal := b.redeem(ctx, alice, released(Identity{OpenID: "oAlice"}, nil).lead)
	if refusal != nil || id.OpenID != "oAlice" || outcome != redeemedByCall {
		t.Fatalf("a moved result was believed: %+v %v %v", id, outcome, refusal)
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
	used := newRefusal(http.StatusUnauthorized, errCodeUsed, "the login code was already used")
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
			key := newCodeKey(fleetAppID, fleetCode)
			result := gateways[0].keysFor(key).result
			if _, _, refusal := gateways[0].redeem(ctx, key, released(fleetIdentity, nil).lead); refusal != nil {
				t.Fatal(refusal)
			}
			captured := rdb.Get(ctx, result).Val()

			clock.Advance(cacheTTL + sealClockSkew - time.Millisecond)
			if err := keep.keep(ctx, rdb, result, captured); err != nil {
				t.Fatal(err)
			}
			control := released(Identity{}, used)
			if id, outcome, _ := gateways[1].redeem(ctx, key, control.lead); outcome != redeemedFromCache || id.OpenID != fleetIdentity.OpenID || control.calls.Load() != 0 {
				t.Fatalf("within its expiry, the result was not served (%+v %v, %d WeChat calls): the test proves nothing", id, outcome, control.calls.Load())
			}

			clock.Advance(time.Millisecond)
			if err := keep.keep(ctx, rdb, result, captured); err != nil {
				t.Fatal(err)
			}
			wechat := released(Identity{}, used)
			id, outcome, refusal := gateways[2].redeem(ctx, key, wechat.lead)
			if id.OpenID != "" || outcome != redeemedByCall || refusal == nil || refusal.code != errCodeUsed || wechat.calls.Load() != 1 {
				t.Errorf("past its expiry: %+v %v %v after %d WeChat calls; want WeChat asked, and its code_used", id, outcome, refusal, wechat.calls.Load())
			}
		})
	}

	t.Run("sealed by an older gateway, without an expiry inside", func(t *testing.T) {
		rdb, a, b := twoGateways(t, cacheTTL)
		ctx := context.Background()
		key := newCodeKey(fleetAppID, fleetCode)
		k := a.keysFor(key)
		plain, _ := json.Marshal(storedResult{OpenID: "oOlderGateway"})
		nonce := make([]byte, a.fleet.sealer.NonceSize())
		older := a.fleet.sealer.Seal(append([]byte{resultIdentity}, nonce...), nonce, plain, append([]byte{resultIdentity}, k.result...))
		rdb.Set(ctx, k.result, older, time.Minute)
		wechat := released(fleetIdentity, nil)
		if id, outcome, refusal := b.redeem(ctx, key, wechat.lead); id != fleetIdentity || outcome != redeemedByCall || refusal != nil || wechat.calls.Load() != 1 {
			t.Errorf("a result without an expiry inside: %+v %v %v after %d WeChat calls; want WeChat's answer", id, outcome, refusal, wechat.calls.Load())
		}
	})
}

func TestRedisCodesServeWhileRedisIsDown(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	fallbackBefore := gaugeValue(storeMetrics.fallback)
	srv.Freeze()
	defer srv.Resume()
	wechat := released(fleetIdentity, nil)
	key := newCodeKey(fleetAppID, fleetCode)
	id, outcome, refusal := a.redeem(context.Background(), key, wechat.lead)
	if refusal != nil || id != fleetIdentity || outcome != redeemedByCall {
		t.Fatalf("with Redis frozen: %+v %v %v", id, outcome, refusal)
	}
	gw.waitDown(t)
	if gaugeValue(storeMetrics.fallback) != fallbackBefore+1 {
		t.Error("the fallback is not shown")
	}
	// The gateway's own cache still serves the retry.
	if _, outcome, _ := a.redeem(context.Background(), key, wechat.lead); outcome != redeemedFromCache || wechat.calls.Load() != 1 {
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
	key := newCodeKey(fleetAppID, fleetCode)
	refusedKey := newCodeKey(fleetAppID, fleetCode+"-refused")

	// A call in flight (its lock), one refused with waiters (a refusal),
	// one answered (an identity), and budgets charged.
	wechat := newCountingLead(fleetIdentity, nil)
	inFlight := redeemIn(a, key, wechat)
	<-wechat.started
	refusal := newRefusal(http.StatusUnauthorized, errInvalidCode, "the login code is invalid")
	if _, _, refusal := b.redeem(ctx, refusedKey, released(Identity{}, refusal).lead); refusal == nil {
		t.Fatal("the refusal was lost")
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
	forbidden := []string{fleetCode, fleetSessionKey, fleetSecret, fleetIdentity.OpenID, fleetIdentity.UnionID, ip, hex, "40029", "invalid"}
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
	lead := func(chargeFunc) (Identity, *jsonRefusal) { return fleetIdentity, nil }
	b.Run("memory", func(b *testing.B) {
		reportCPU(b, nil, func() { benchmarkRedeem(b, newLocalCodes(time.Minute, unlimited{}), lead) })
	})
	b.Run("redis", func(b *testing.B) {
		srv := testkit.StartRedis(b)
		gw := newGateway(b, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(time.Second) })
		codes := gw.fleetCodes(time.Minute)
		reportCPU(b, srv, func() { benchmarkRedeem(b, codes, lead) })
		if gw.redis.down.Load() {
			b.Fatal("Redis failed during the benchmark: the numbers are memory's")
		}
	})
}

func benchmarkRedeem(b *testing.B, codes codeStore, lead func(chargeFunc) (Identity, *jsonRefusal)) {
	ctx := context.Background()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := newCodeKey(fleetAppID, fmt.Sprintf("bench-code-%d", n.Add(1)))
			if _, _, refusal := codes.redeem(ctx, key, lead); refusal != nil {
				b.Error(refusal)
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
	key := newCodeKey(fleetAppID, fleetCode)

	wechatA := newCountingLead(fleetIdentity, nil)
	atA := redeemIn(a, key, wechatA)
	<-wechatA.started
	rdb.Del(context.Background(), a.keysFor(key).lock) // its expiry, without waiting for it
	wechatB := newCountingLead(Identity{}, newRefusal(http.StatusGatewayTimeout, errWechatTimeout, "WeChat did not answer in time"))
	atB := redeemIn(b, key, wechatB)
	<-wechatB.started
	close(wechatA.release)
	if got := <-atA; got.id != fleetIdentity {
		t.Fatalf("gateway A: %+v", got)
	}
	close(wechatB.release)
	<-atB
	wantRetryFromCache(t, c, key, released(fleetIdentity, nil), 0)
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
			var m dto.Metric
			_ = storeMetrics.duration.WithLabelValues(operation).(prometheus.Histogram).Write(&m)
			n += m.GetHistogram().GetSampleCount()
		}
		return n
	}
	before := operations()
	wechat := released(fleetIdentity, nil)
	id, _, refusal := codes.redeem(context.Background(), newCodeKey(fleetAppID, fleetCode), wechat.lead)
	if refusal != nil || id != fleetIdentity || wechat.calls.Load() != 1 {
		t.Fatalf("with Redis slow: %+v %v after %d calls", id, refusal, wechat.calls.Load())
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

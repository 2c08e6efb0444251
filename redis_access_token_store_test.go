package wechatlogin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// fleetTokenManager is a test token manager of gateway n, sharing the
// token through the Redis at addr; the ledger of forced refreshes runs on
// the test's clock.
type fleetTokenManager struct {
	testTokenManager
	gateway gateway
	store   *redisTokenStore
}

func newFleetTokenManager(t *testing.T, endpoint string, clock *testkit.Clock, addr string, n int, configure func(*RedisConfig)) fleetTokenManager {
	t.Helper()
	gw := newGateway(t, addr, n, configure)
	m := newTestTokenManager(t, endpoint, clock)
	store := gw.tokenStore()
	store.scriptClock = clock.Now
	m.store = store
	return fleetTokenManager{m, gw, store}
}

// twoTokenGateways starts a Redis and the token managers of two gateways
// on it, both on clock, fetching from endpoint.
func twoTokenGateways(t *testing.T, endpoint string, clock *testkit.Clock) (rdb *redis.Client, a, b fleetTokenManager) {
	t.Helper()
	srv := testkit.StartRedis(t)
	a = newFleetTokenManager(t, endpoint, clock, srv.Addr(), 0, nil)
	b = newFleetTokenManager(t, endpoint, clock, srv.Addr(), 1, nil)
	return newTestRedisClient(t, srv.Addr()), a, b
}

// concurrently runs each of fns n times at once and waits for them all.
func concurrently(n int, fns ...func()) {
	var wg sync.WaitGroup
	for range n {
		for _, fn := range fns {
			wg.Go(fn)
		}
	}
	wg.Wait()
}

func TestRedisTokenStoreColdStartMakesOneFetchForTheFleet(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	sim.SetLatency(20 * time.Millisecond) // long enough for the gateways to meet
	_, a, b := twoTokenGateways(t, simURL, clock)

	var mu sync.Mutex
	got := map[string]int{}
	take := func(m fleetTokenManager) func() {
		return func() {
			tok, err := m.token(context.Background(), 5*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				got["failed: "+err.Error()]++
				return
			}
			got[tok.value]++
		}
	}
	concurrently(20, take(a), take(b))
	if len(got) != 1 || sim.CallsTo(stableTokenPath) != 1 {
		t.Fatalf("two gateways on a cold start got %d distinct answers with %d stable_token calls; want one token, 1 call", len(got), sim.CallsTo(stableTokenPath))
	}
	for value := range got {
		if !sim.TokenValid(apiAppID, value) {
			t.Error("the fleet's token is not valid")
		}
	}
	if a.gateway.redis.down.Load() || b.gateway.redis.down.Load() {
		t.Error("Redis failed: the gateways met in memory, not in Redis")
	}
}

func TestRedisTokenStoreRefusedTokenReplacedOnceForTheFleet(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	_, a, b := twoTokenGateways(t, simURL, clock)
	refused := a.mustToken(t)
	if b.mustToken(t).value != refused.value || sim.CallsTo(stableTokenPath) != 1 {
		t.Fatal("the gateways do not share their first token")
	}
	sim.RevokeTokens(apiAppID)

	var mu sync.Mutex
	replacements := map[string]int{}
	replace := func(m fleetTokenManager) func() {
		return func() {
			r, err := m.replace(context.Background(), 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI)
			if err != nil {
				r = accessToken{value: "failed: " + err.Error()}
			}
			mu.Lock()
			replacements[r.value]++
			mu.Unlock()
		}
	}
	concurrently(10, replace(a), replace(b))
	if len(replacements) != 1 {
		t.Fatalf("the gateways got %d different replacements; want one for the fleet", len(replacements))
	}
	for r := range replacements {
		if r == refused.value || !sim.TokenValid(apiAppID, r) {
			t.Fatal("the refused token was not replaced by a valid one")
		}
	}
	if calls, forced := sim.CallsTo(stableTokenPath), sim.ForcedRefreshes(apiAppID); calls != 2 || forced != 0 {
		t.Errorf("%d stable_token calls, %d forced; want 2 (the first token and one replacement for the fleet), none forced", calls, forced)
	}
}

func TestRedisTokenStoreForcedRefreshesSpacedForTheFleet(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	wechat, url := newStuckWechat(t)
	_, a, b := twoTokenGateways(t, url, clock)
	refused := a.mustToken(t)
	b.mustToken(t)

	// Gateway A forces a refresh; B, refused the same token, takes A's.
	forced, err := a.replace(context.Background(), 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI)
	if err != nil || forced.value == refused.value || wechat.forcedRefreshes() != 1 {
		t.Fatalf("gateway A: %v, %d forced; want one forced refresh", err, wechat.forcedRefreshes())
	}
	if got, err := b.replace(context.Background(), 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI); err != nil || got.value != forced.value || wechat.forcedRefreshes() != 1 {
		t.Fatalf("gateway B: %v, %d forced; want A's token, no forced refresh of its own", err, wechat.forcedRefreshes())
	}
	// WeChat refuses the new token at B within 30 s of A's forced refresh:
	// B has forced none itself, but the fleet has.
	clock.Advance(forcedRefreshSpacing - time.Second)
	if _, err := b.replace(context.Background(), 5*time.Second, forced, errcodeTokenExpired, secCheckAPI); err == nil || wechat.forcedRefreshes() != 1 {
		t.Fatalf("gateway B within 30 s of A's forced refresh: %v, %d forced; want a refusal and no force_refresh", err, wechat.forcedRefreshes())
	}
	clock.Advance(time.Second)
	if again, err := b.replace(context.Background(), 5*time.Second, forced, errcodeTokenExpired, secCheckAPI); err != nil || again.value == forced.value || wechat.forcedRefreshes() != 2 {
		t.Errorf("gateway B 30 s after A's forced refresh: %v, %d forced; want a second force_refresh", err, wechat.forcedRefreshes())
	}
	if a.gateway.redis.down.Load() || b.gateway.redis.down.Load() {
		t.Error("Redis failed: the ledger was the gateways' own")
	}
}

func TestRedisForcedRefreshLedgerKeepsWechatLimits(t *testing.T) {
	srv := testkit.StartRedis(t)
	clock := testkit.NewClock(accessTokenEpoch)
	gw := newGateway(t, srv.Addr(), 0, nil)
	store := gw.tokenStore()
	store.scriptClock = clock.Now
	assertForcedRefreshRule(t, func(at time.Time) bool {
		clock.Set(at)
		allowed, err := store.allowForcedRefresh(context.Background(), at)
		if err != nil {
			t.Fatal(err)
		}
		return allowed
	})
	if gw.redis.down.Load() {
		t.Error("Redis failed: the memory fallback answered")
	}
}

func TestRedisTokenStoreServesWhileRedisIsFrozen(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	srv := testkit.StartRedis(t)
	a := newFleetTokenManager(t, simURL, clock, srv.Addr(), 0, nil)
	srv.Freeze()
	defer srv.Resume()

	tok := a.mustToken(t)
	if !sim.TokenValid(apiAppID, tok.value) {
		t.Fatal("with Redis frozen, the token was not fetched by the gateway alone")
	}
	a.gateway.waitDown(t)
	// Refused, it is replaced without Redis too, force_refresh included.
	sim.RevokeTokens(apiAppID)
	if r, err := a.replace(context.Background(), 5*time.Second, tok, errcodeInvalidCredential, secCheckAPI); err != nil || !sim.TokenValid(apiAppID, r.value) {
		t.Fatalf("with Redis frozen, a refused token was not replaced: %v", err)
	}
	if allowed, err := a.store.allowForcedRefresh(context.Background(), clock.Now()); err != nil || !allowed {
		t.Errorf("with Redis frozen, the gateway's own ledger did not answer: %t %v", allowed, err)
	}
}

func TestRedisTokenStoreWaiterTakesOverFromAVanishedHolder(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	rdb, a, _ := twoTokenGateways(t, simURL, clock)
	// A gateway took the lock and vanished; the lock runs out on its own.
	if err := rdb.Set(context.Background(), a.store.claim.lock, "vanished", 200*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	tok := a.mustToken(t)
	if !sim.TokenValid(apiAppID, tok.value) || sim.CallsTo(stableTokenPath) != 1 {
		t.Errorf("after the lock ran out: %d stable_token calls; want the waiter's 1", sim.CallsTo(stableTokenPath))
	}
}

// A token that whoever can write to Redis keeps there past the end of its
// use (PERSIST on its key) is not handed out: another gateway fetches a new
// one. openToken refuses it for the expiry sealed inside, whatever the
// stored fields say.
func TestRedisTokenStoreRefusesATokenKeptPastItsUse(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	rdb, a, b := twoTokenGateways(t, simURL, clock)
	ctx := context.Background()
	kept := a.mustToken(t)
	stored := rdb.Get(ctx, a.store.claim.result).Val()
	if err := rdb.Persist(ctx, a.store.claim.result).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.openToken(stored, kept.usableUntil().Add(sealClockSkew-time.Millisecond)); err != nil {
		t.Fatalf("within its expiry, the stored token does not open (%v): the test proves nothing", err)
	}
	if _, err := b.store.openToken(stored, kept.usableUntil().Add(sealClockSkew)); err == nil {
		t.Error("a stored token opened past the expiry sealed inside it")
	}

	clock.Set(kept.usableUntil().Add(sealClockSkew))
	calls := sim.CallsTo(stableTokenPath)
	tok := b.mustToken(t)
	if tok.value == kept.value || !sim.TokenValid(apiAppID, tok.value) || sim.CallsTo(stableTokenPath) != calls+1 {
		t.Errorf("past its use, the kept token was handed out (%t), or no new one fetched (%d calls)", tok.value == kept.value, sim.CallsTo(stableTokenPath)-calls)
	}
}

func TestRedisTokenStoreDistrustsWhatDoesNotOpen(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	rdb, a, b := twoTokenGateways(t, simURL, clock)
	ctx := context.Background()
	for _, tc := range []struct{ name, stored string }{
		{"short", "x"},
		{"garbage", strings.Repeat("f", 32) + "t" + strings.Repeat("0", 64)},
		// A token sealed for another key: bound to its own.
		{"moved", b.store.app.hide([]byte("80_moved")) + string(b.store.app.seal(sealedToken, "elsewhere", storedToken{Value: "80_moved", ExpiresMS: accessTokenEpoch.Add(time.Hour).UnixMilli()}, accessTokenEpoch.Add(time.Hour)))},
	} {
		if err := rdb.Set(ctx, a.store.claim.result, tc.stored, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		calls := sim.CallsTo(stableTokenPath)
		tok, err := a.store.refresh(ctx, clock.Now(), accessToken{}, func(ctx context.Context) (accessToken, error) {
			return a.fetch(ctx, false)
		})
		if err != nil || !sim.TokenValid(apiAppID, tok.value) || sim.CallsTo(stableTokenPath) != calls+1 {
			t.Errorf("%s: the stored value was trusted, or not replaced: %v", tc.name, err)
		}
		a.store.local.token = accessToken{} // the next case starts cold again
	}
}

func TestRedisTokenStoreKeepsNothingReadable(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	clock := testkit.NewClock(accessTokenEpoch)
	const token = "80_fleet-token-never-readable"
	testkit.Forbid(token)
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(started) })
		<-release
		fmt.Fprintf(w, `{"access_token":%q,"expires_in":7200}`, token)
	}))
	t.Cleanup(wechat.Close)
	// A Redis timeout a loaded machine cannot miss: an operation served from
	// memory would leave nothing in Redis to look at.
	a := newFleetTokenManager(t, wechat.URL, clock, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(2 * time.Second) })

	// The lock while the fetch is in flight, then the token, then a
	// forced refresh.
	fetched := make(chan accessToken, 1)
	go func() {
		tok, _ := a.token(context.Background(), 5*time.Second)
		fetched <- tok
	}()
	<-started
	seen := dumpRedis(t, rdb)
	close(release)
	if tok := <-fetched; tok.value != token {
		t.Fatal("no token was fetched")
	}
	if allowed, _ := a.store.allowForcedRefresh(context.Background(), clock.Now()); !allowed {
		t.Fatal("the first forced refresh was refused")
	}
	for k, v := range dumpRedis(t, rdb) {
		seen[k] = v
	}
	if a.gateway.redis.down.Load() {
		t.Fatal("Redis failed: nothing was stored")
	}

	kinds := map[string]int{}
	for k, v := range seen {
		for _, f := range []string{token, apiSecret, fleetSecret} {
			if strings.Contains(k, f) || strings.Contains(v, f) {
				t.Errorf("key %q holds %q in readable form", k, f)
			}
		}
		for _, kind := range []string{":access-token:", ":access-token-lock:", ":forced-refreshes:"} {
			if strings.Contains(k, kind) {
				kinds[kind]++
			}
		}
	}
	for _, kind := range []string{":access-token:", ":access-token-lock:", ":forced-refreshes:"} {
		if kinds[kind] == 0 {
			t.Errorf("no %s key was seen: the test looked at less than it should", kind)
		}
	}
}

func TestRedisTokenStoreWorksWithTheDocumentedACL(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	wechat, url := newStuckWechat(t)
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	ctx := context.Background()
	a := newFleetTokenManager(t, url, clock, srv.Addr(), 0, addFleetUser(t, rdb, "acl-token-password-x9"))
	gw := a.gateway

	refused := a.mustToken(t)
	if _, err := a.replace(ctx, 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI); err != nil || wechat.forcedRefreshes() != 1 {
		t.Fatalf("a forced refresh: %v", err)
	}
	if gw.redis.down.Load() || gw.logs.Len() > 0 {
		t.Fatalf("the documented ACL is not enough for the access token: %v", gw.logs.All())
	}
	if n := rdb.DBSize(ctx).Val(); n != 2 {
		t.Errorf("%d keys stored; want 2, the token and the ledger", n)
	}
}

// FuzzOpenToken: nothing read from Redis, however malformed or tampered
// with, opens to a token the gateway would put on a call, unless it is one
// the fleet sealed.
func FuzzOpenToken(f *testing.F) {
	// No Redis is needed to seal and open; the client never connects.
	store := newGateway(f, "127.0.0.1:1", 0, nil).tokenStore()
	sealed := store.sealToken(accessToken{value: "80_sealed", expires: accessTokenEpoch.Add(time.Hour)})
	f.Add(sealed)
	f.Add(sealed[:len(sealed)-1])
	f.Add(strings.Repeat("0", 32) + sealed[32:])
	f.Add("x")
	f.Fuzz(func(t *testing.T, stored string) {
		tok, err := store.openToken(stored, accessTokenEpoch)
		if err != nil {
			return
		}
		// Only what the fleet's key sealed opens (each fuzzing process seals
		// the seed anew, with another nonce, under the same key).
		if tok.value != "80_sealed" || !tok.expires.Equal(accessTokenEpoch.Add(time.Hour)) {
			t.Fatalf("%q opened to a token the fleet never sealed", stored)
		}
	})
}

// The token's lock lasts the fetch's timeout plus the Redis timeout, the
// time to store the token: the gateway fetching keeps it to the end, and
// one that vanished frees it soon after.
func TestRedisTokenStoreLockLastsTheFetch(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, _ := newTokenSim(t, clock)
	gate := testkit.NewGate(t, sim)
	srv := testkit.StartRedis(t)
	// Longer than any pause between taking the lock and reading it.
	const redisTimeout = 3 * time.Second
	a := newFleetTokenManager(t, gate.URL, clock, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(redisTimeout) })
	const fetchTimeout = 5 * time.Second

	fetched := make(chan *platformError, 1)
	go func() {
		_, err := a.token(context.Background(), fetchTimeout)
		fetched <- err
	}()
	gate.AwaitArrivals(t, 1)
	ttl := keyPTTL(t, newTestRedisClient(t, srv.Addr()), "*access-token-lock:*")
	if ttl <= fetchTimeout || ttl > fetchTimeout+redisTimeout {
		t.Errorf("the token's lock expires in %v while stable_token is called, want more than %v and at most %v", ttl, fetchTimeout, fetchTimeout+redisTimeout)
	}
	gate.Open()
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
}

// TestRedisForcedRefreshLedgerDropsWhatItCannotRead: a ledger entry that
// is not a time (written by hand, or by another program sharing the
// prefix) is dropped like an old one, rather than making the script fail,
// which would count as Redis failing and send the gateway to its memory.
func TestRedisForcedRefreshLedgerDropsWhatItCannotRead(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	clock := testkit.NewClock(accessTokenEpoch)
	gw := newGateway(t, srv.Addr(), 0, nil)
	store := gw.tokenStore()
	store.scriptClock = clock.Now
	ctx := context.Background()
	rdb.HSet(ctx, store.ledger, "by-hand", "not a time")
	if allowed, err := store.allowForcedRefresh(ctx, clock.Now()); err != nil || !allowed {
		t.Errorf("over an unreadable entry, a first forced refresh is allowed: %t (%v)", allowed, err)
	}
	if gw.redis.down.Load() {
		t.Fatal("an unreadable ledger entry counts as Redis failing")
	}
	if rdb.HExists(ctx, store.ledger, "by-hand").Val() {
		t.Error("the unreadable entry is kept")
	}
	if allowed, _ := store.allowForcedRefresh(ctx, clock.Now()); allowed {
		t.Error("a second forced refresh at once is allowed: the ledger lost the first")
	}
}

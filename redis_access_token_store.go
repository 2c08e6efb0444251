package wechatlogin

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// How a fleet shares one access token: a claim (see redisClaim). Per app,
// three keys that hash to one Cluster slot (the {…} tag):
//
//	<prefix>access-token:{t}      the token: its fingerprint (a MAC, so
//	                              that the scripts can compare tokens
//	                              without reading them), then the token
//	                              sealed; expires when it stops being usable
//	<prefix>access-token-lock:{t} held, with an expiry, by the gateway
//	                              calling stable_token
//	<prefix>forced-refreshes:{t}  the force_refresh calls of the last 24
//	                              hours, a hash of random ids to their time
//
// A gateway whose token is stale (absent, expiring or refused) takes a
// token other than its own from the first key, or takes the lock and calls
// stable_token for the fleet, or waits.

// tokenClaims are the claims on the app's token: impatient, as a gateway
// that fetches the token alone gets the one the others have (stable_token
// hands out the same token while it is valid), and a waiter waits no
// longer than its caller.
var tokenClaims = &claimKind{claimScript: tokenClaimScript, finishScript: tokenFinishScript, claimOp: "token_claim", finishOp: "token_finish"}

// tokenClaimScript takes the stored token unless it is the caller's stale
// one (ARGV[3], a fingerprint).
var tokenClaimScript = redis.NewScript(claimLua + `
return claim(function(stored)
	return string.sub(stored, 1, #ARGV[3]) ~= ARGV[3]
end, false)
`)

// tokenFinishScript stores a token (ARGV[3], if any). A caller whose lock
// ran out replaces only the stale token it set out to replace (ARGV[4], a
// fingerprint): never one another gateway stored meanwhile.
var tokenFinishScript = redis.NewScript(claimLua + `
finish(ARGV[3], function(stored, held)
	return held or string.sub(stored, 1, #ARGV[4]) == ARGV[4]
end)
return 1
`)

// forcedRefreshScript spends one of WeChat's force_refresh allowances for
// the fleet, as forcedRefreshLedger does for one gateway: it returns 1 and
// records the refresh (as field ARGV[4]) when the last was ARGV[1] ms ago
// or more and fewer than ARGV[2] were made in the last ARGV[3] ms, 0
// otherwise; an entry that is not a time is dropped as an old one. ARGV[5]
// is the time in ms, given by tests only; otherwise the server's clock, so
// that the gateways' clocks do not matter. A hash (of at most ARGV[2]
// fields) rather than a sorted set, so that the commands the budgets need
// are all it needs.
var forcedRefreshScript = redis.NewScript(`
if redis.replicate_commands then
	redis.replicate_commands()
end
local t = tonumber(ARGV[5] or '')
if not t then
	local now = redis.call('TIME')
	t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local spacing, perDay, day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local count, last, old = 0, nil, {}
for n = 1, #fields, 2 do
	local at = tonumber(fields[n + 1])
	if not at or t - at >= day then
		old[#old + 1] = fields[n]
	else
		count = count + 1
		if not last or at > last then
			last = at
		end
	end
end
if #old > 0 then
	redis.call('HDEL', KEYS[1], unpack(old))
end
if count >= perDay or (last and t - last < spacing) then
	return 0
end
redis.call('HSET', KEYS[1], ARGV[4], string.format('%.0f', t))
redis.call('PEXPIRE', KEYS[1], day)
return 1
`)

// sealedToken is the kind byte of a sealed access token.
const sealedToken = 't'

// redisTokenStore is a tokenStore shared by a fleet: one stable_token call
// for every gateway, and one ledger of forced refreshes. The memory store
// in front sends one caller per gateway to Redis, and keeps the gateway's
// last token; while Redis is down, it alone serves.
type redisTokenStore struct {
	app *appRedis
	// claim is the claim on the token but for its lockTTL, each refresh's
	// own (see claimFor).
	claim  redisClaim
	local  *memoryTokenStore
	ledger string
	// scriptClock is nil except in tests, which drive the ledger's clock;
	// otherwise time is the Redis server's.
	scriptClock func() time.Time
}

// tokenStore returns the fleet's tokenStore of the app.
func (a *appRedis) tokenStore() *redisTokenStore {
	tag := "{" + a.hide([]byte("access token")) + "}"
	claim := a.claim(tokenClaims, a.prefix+"access-token:"+tag, a.prefix+"access-token-lock:"+tag, 0)
	return &redisTokenStore{app: a, claim: claim, local: newMemoryTokenStore(), ledger: a.prefix + "forced-refreshes:" + tag}
}

func (s *redisTokenStore) refresh(ctx context.Context, now time.Time, stale accessToken, fetch func(context.Context) (accessToken, error)) (accessToken, error) {
	return s.local.refresh(ctx, now, stale, func(ctx context.Context) (accessToken, error) {
		return s.refreshShared(ctx, now, stale, fetch)
	})
}

// refreshShared runs on behalf of every caller at this gateway that holds
// stale. A waiter waits as long as ctx lets it, which is no longer than the
// lock it waits on lasts.
func (s *redisTokenStore) refreshShared(ctx context.Context, now time.Time, stale accessToken, fetch func(context.Context) (accessToken, error)) (accessToken, error) {
	claim := s.claimFor(ctx)
	lock := newUniqueID()
	// held is the fingerprint of the token this gateway will not take.
	held := s.app.hide([]byte(stale.value))
	for {
		reply, _, ok := claim.await(ctx, lock, func(bool) string { return held })
		switch {
		case !ok && ctx.Err() != nil:
			return accessToken{}, &platformError{kind: kindTimeout}
		case !ok:
			return fetch(ctx) // Redis is down: this gateway fetches alone
		case reply.kind == claimLead:
			return s.leadForFleet(ctx, claim, now, lock, held, fetch)
		}
		t, err := s.openToken(reply.value, now)
		if err == nil && t.usable(now) {
			return t, nil
		}
		// Not usable (expiring, or unreadable): to be replaced like the
		// caller's own.
		held = reply.value[:min(len(reply.value), len(held))]
	}
}

// claimFor is the claim of a refresh under ctx: its lock lasts as long as
// the fetch may, by ctx's deadline, plus one Redis operation to store
// what it fetched.
func (s *redisTokenStore) claimFor(ctx context.Context) redisClaim {
	fetchTime := maxAPITimeout
	if deadline, ok := ctx.Deadline(); ok {
		fetchTime = time.Until(deadline)
	}
	claim := s.claim
	claim.lockTTL = max(fetchTime, 0) + s.app.redis.timeout
	return claim
}

// leadForFleet calls stable_token holding the lock, and stores the token
// for the other gateways. A failure is not stored: each waiter then takes
// the lock in turn and learns WeChat's answer for itself.
func (s *redisTokenStore) leadForFleet(ctx context.Context, claim redisClaim, now time.Time, lock, held string, fetch func(context.Context) (accessToken, error)) (accessToken, error) {
	t, err := fetch(ctx)
	var stored string
	var ttl time.Duration
	if err == nil {
		ttl = t.usableUntil().Sub(now)
		if ttl >= time.Millisecond { // a token not usable at all is not shared
			stored = s.sealToken(t)
		}
	}
	claim.finish(ctx, lock, ttl, stored, nil, held)
	return t, err
}

// storedToken is what the token key holds, sealed.
type storedToken struct {
	Value     string `json:"value"`
	ExpiresMS int64  `json:"expires_ms"`
}

// sealToken is t as stored: its fingerprint, then t sealed.
func (s *redisTokenStore) sealToken(t accessToken) string {
	sealed := s.app.seal(sealedToken, s.claim.result, storedToken{Value: t.value, ExpiresMS: t.expires.UnixMilli()}, t.usableUntil())
	return s.app.hide([]byte(t.value)) + string(sealed)
}

// openToken reads a stored token; one that does not open (tampered with,
// or kept past the end of its use), or whose fingerprint is not its own, is
// not trusted.
func (s *redisTokenStore) openToken(stored string, now time.Time) (accessToken, error) {
	fingerprintLen := len(s.app.hide(nil))
	if len(stored) <= fingerprintLen || stored[fingerprintLen] != sealedToken {
		return accessToken{}, errors.New("not a stored token")
	}
	var st storedToken
	if err := s.app.open(s.claim.result, stored[fingerprintLen:], &st, now); err != nil {
		return accessToken{}, err
	}
	if !isTokenValue(st.Value) || s.app.hide([]byte(st.Value)) != stored[:fingerprintLen] {
		return accessToken{}, errors.New("a stored token that does not match its fingerprint")
	}
	return accessToken{value: st.Value, expires: time.UnixMilli(st.ExpiresMS)}, nil
}

func (s *redisTokenStore) allowForcedRefresh(ctx context.Context, now time.Time) (bool, error) {
	var allowed bool
	served := s.app.redis.do(ctx, "token_forced_refresh", func(ctx context.Context) error {
		n, err := forcedRefreshScript.Run(ctx, s.app.redis.client, []string{s.ledger},
			forcedRefreshSpacing.Milliseconds(), forcedRefreshesPerDay, (24 * time.Hour).Milliseconds(), newUniqueID(), scriptTime(s.scriptClock)).Int()
		allowed = n == 1
		return err
	})
	if !served {
		return s.local.allowForcedRefresh(ctx, now)
	}
	if allowed {
		// Should Redis fail later, this gateway's own ledger knows of it.
		s.local.forced.spend(now)
	}
	return allowed, nil
}

package wechatlogin

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// How a code is redeemed across a fleet. Per code, two keys that hash to
// one Cluster slot (the {…} tag):
//
//	<prefix>code:{h}  the result: an identity, or for the waiters only, a
//	                  refusal; sealed, with an expiry
//	<prefix>lock:{h}  held, with an expiry, by the gateway calling WeChat
//
// A gateway that finds the result uses it; one that takes the lock calls
// WeChat, stores the result and lets the lock go; the others poll until
// the result is there, or the lock is gone without one (its holder
// vanished), in which case they take it themselves.

// claimScript, in one round trip, returns a result the caller accepts
// (ARGV[3]: "any" for a waiter, "identity" for a new login, "none" when the
// cache is off), or takes the lock, or says to wait. Taking the lock drops
// an old result (a failure, or with the cache off an identity), so that
// the new call's waiters never read it.
var claimScript = redis.NewScript(`
local result = redis.call('GET', KEYS[1])
if result then
	local kind = string.sub(result, 1, 1)
	if ARGV[3] == 'any' or (ARGV[3] == 'identity' and (kind == 'i' or kind == 'o')) then
		return {'result', result}
	end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
	if result then
		redis.call('DEL', KEYS[1])
	end
	return {'lead'}
end
return {'wait'}
`)

// finishScript stores a result (ARGV[2], if any, for ARGV[3] ms) and lets go
// of the lock if it is still the caller's (ARGV[1]). A failure never
// replaces an identity.
var finishScript = redis.NewScript(`
if ARGV[2] ~= '' then
	local kind = string.sub(ARGV[2], 1, 1)
	if kind == 'i' or kind == 'o' then
		redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
	else
		redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
	end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
	redis.call('DEL', KEYS[2])
end
return 1
`)

// What a login accepts from the result key, as claimScript's ARGV[3].
const (
	acceptAny      = "any"      // a waiter: the answer of the call it waited for
	acceptIdentity = "identity" // a new login, with the cache on
	acceptNone     = "none"     // a new login, with the cache off
)

// Stored results start with their kind, readable by the scripts: an
// identity; an identity whose player was over budget (the call's logins
// were refused, a later retry may use it); or no identity (a failure, or a
// budget that refused before the call), for the call's waiters only. A
// gateway from before platforms stored refusals as 'e', with HTTP wording:
// such a value is not opened, and the code is asked about anew; and an
// older gateway opens none of 'o' and 'f', and asks its platform too.
const (
	resultIdentity           = 'i'
	resultIdentityOverBudget = 'o'
	resultFailure            = 'f'
)

// minResultTTL keeps a result long enough for every waiter to poll it.
const minResultTTL = time.Second

// redisCodes is a codeStore shared by a fleet: one WeChat call per code
// whichever gateways receive it. The local store in front sends one login
// per gateway and code to Redis; while Redis is down, it alone serves.
type redisCodes struct {
	fleet       *fleet
	local       codeStore
	fresh       string        // what a new login accepts
	identityTTL time.Duration // of a stored identity
	lockTTL     time.Duration // of the lock, and of a refusal kept for waiters
	// keepSessionKeys: the session_keys the app's calls prove are kept in
	// Redis too, in the round trip that stores the result.
	keepSessionKeys bool
}

// codes returns the fleet's codeStore in front of local (the memory store
// shared across reloads). lockTTL is the longest an exchange can take,
// retries included: a lock older than that has lost its holder.
func (f *fleet) codes(local codeStore, cacheTTL, lockTTL time.Duration, keepSessionKeys bool) codeStore {
	// The lock outlives the exchange by one Redis operation: storing its result.
	lockTTL += f.redis.timeout
	c := &redisCodes{fleet: f, local: local, fresh: acceptIdentity, identityTTL: cacheTTL, lockTTL: lockTTL, keepSessionKeys: keepSessionKeys}
	if cacheTTL <= 0 {
		// Stored only for the waiters of the call that made it.
		c.fresh, c.identityTTL = acceptNone, lockTTL
	}
	c.identityTTL = max(c.identityTTL, minResultTTL)
	c.lockTTL = max(c.lockTTL, minResultTTL)
	return c
}

func (c *redisCodes) redeem(ctx context.Context, key codeKey, exchange func() codeResult) (codeResult, redeemOutcome, error) {
	// The local store reports redeemedByCall to the login whose function
	// ran; what that function found in Redis says how it was really redeemed.
	var shared atomic.Int32
	res, outcome, err := c.local.redeem(ctx, key, func() codeResult {
		res, how := c.redeemShared(ctx, key, exchange)
		shared.Store(int32(how))
		return res
	})
	if outcome == redeemedByCall {
		outcome = redeemOutcome(shared.Load())
	}
	return res, outcome, err
}

// codeKeys are the Redis keys of one code.
type codeKeys struct {
	result, lock string
	keys         []string // both, for the scripts
}

func (c *redisCodes) keysFor(key codeKey) codeKeys {
	tag := "{" + c.fleet.hide(key[:]) + "}"
	k := codeKeys{result: c.fleet.prefix + "code:" + tag, lock: c.fleet.prefix + "lock:" + tag}
	k.keys = []string{k.result, k.lock}
	return k
}

// redeemShared runs on behalf of every login for key at this gateway.
func (c *redisCodes) redeemShared(ctx context.Context, key codeKey, exchange func() codeResult) (codeResult, redeemOutcome) {
	k := c.keysFor(key)
	token := newUniqueID()
	claim, ok := c.claim(ctx, k, token, c.fresh)
	if !ok {
		return leadAlone(exchange)
	}
	switch claim.kind {
	case "result":
		return c.answer(k, claim.value, redeemedFromCache, exchange)
	case "lead":
		return c.leadForFleet(ctx, k, token, exchange)
	}
	// Another gateway is calling the platform for this code. Its lock expires by
	// lockTTL; the deadline only guards against a Redis that misbehaves.
	deadline := time.Now().Add(2 * c.lockTTL)
	for time.Now().Before(deadline) {
		time.Sleep(pollPause())
		claim, ok := c.claim(ctx, k, token, acceptAny)
		if !ok {
			break
		}
		switch claim.kind {
		case "result":
			return c.answer(k, claim.value, redeemedByJoining, exchange)
		case "lead":
			return c.leadForFleet(ctx, k, token, exchange)
		}
	}
	return leadAlone(exchange)
}

// leadAlone calls the platform without the fleet: Redis is down, or said
// nothing usable.
func leadAlone(exchange func() codeResult) (codeResult, redeemOutcome) {
	return exchange(), redeemedByCall
}

// leadForFleet calls WeChat holding the lock and stores the result for the
// other gateways.
func (c *redisCodes) leadForFleet(ctx context.Context, k codeKeys, token string, exchange func() codeResult) (codeResult, redeemOutcome) {
	res := exchange()
	if res.failure != nil && res.failure.kind == kindCodeUsed && c.fresh == acceptIdentity {
		// A gateway whose lock ran out may have spent the code and stored
		// what it proved.
		if claim, ok := c.claim(ctx, k, token, acceptIdentity); ok && claim.kind == "result" {
			if stored, err := c.openResult(k, claim.value); err == nil {
				c.finish(ctx, k, token, nil, 0, nil)
				return codeResult{id: stored.id}, redeemedFromCache
			}
		}
	}
	if res.proved() {
		// Stored even for a player over budget: the code is spent at the
		// platform, and a retry elsewhere must find its result.
		c.finish(ctx, k, token, c.sealResult(k, res), c.identityTTL, c.custodyWrite(res.id))
	} else {
		c.finish(ctx, k, token, c.sealResult(k, res), c.lockTTL, nil)
	}
	return res, redeemedByCall
}

// custodyWrite is the fleet's copy of the session_key a call proved, for
// the app's wechat_api handlers; nil when the app's keys are not kept or
// the identity has no openid (an anonymous Douyin player).
func (c *redisCodes) custodyWrite(id Identity) *sessionKeyWrite {
	if !c.keepSessionKeys || id.OpenID == "" {
		return nil
	}
	return c.fleet.sessionKeyWrite(id.OpenID, id.SessionKey, time.Now())
}

// claim runs claimScript; ok is false when Redis failed or is down.
func (c *redisCodes) claim(ctx context.Context, k codeKeys, token, accept string) (claim claimReply, ok bool) {
	ok = c.fleet.redis.do(ctx, "claim", func(ctx context.Context) error {
		var err error
		claim, err = parseClaim(claimScript.Run(ctx, c.fleet.redis.client, k.keys, token, c.lockTTL.Milliseconds(), accept), "result")
		return err
	})
	return claim, ok
}

// finish stores result (none when nil) and releases the lock, and makes
// the custody write, if any, in the same round trip.
func (c *redisCodes) finish(ctx context.Context, k codeKeys, token string, result []byte, ttl time.Duration, custody *sessionKeyWrite) {
	c.fleet.redis.do(ctx, "finish", func(ctx context.Context) error {
		if custody != nil {
			return custody.alongside(ctx, c.fleet.redis.client, finishScript, k.keys, token, result, ttl.Milliseconds())
		}
		return finishScript.Run(ctx, c.fleet.redis.client, k.keys, token, result, ttl.Milliseconds()).Err()
	})
}

// answer turns a stored result into the login's answer; one that does not
// open (written under another secret, or tampered with) is not trusted and
// the code is redeemed at WeChat instead. A waiter gets what the call's own
// logins got; a login served from the cache gets the identity alone, which
// the login checks against the budget as it is now.
func (c *redisCodes) answer(k codeKeys, stored string, outcome redeemOutcome, exchange func() codeResult) (codeResult, redeemOutcome) {
	res, err := c.openResult(k, stored)
	if err != nil {
		return leadAlone(exchange)
	}
	if outcome == redeemedFromCache && res.proved() {
		res = codeResult{id: res.id}
	}
	return res, outcome
}

// storedResult is what the result key holds, sealed: an identity, or why
// there is none (the platform's failure, by kind and the platform's own
// errcode), and how long the player's budget said to wait, if it refused.
// Nothing in it is HTTP: the refusal is each gateway's to write.
type storedResult struct {
	OpenID          string `json:"openid,omitempty"`
	UnionID         string `json:"unionid,omitempty"`
	SessionKey      string `json:"session_key,omitempty"`
	AnonymousOpenID string `json:"anonymous_openid,omitempty"`
	Failure         string `json:"failure,omitempty"`
	Errcode         *int   `json:"errcode,omitempty"`
	BudgetWaitMS    int64  `json:"budget_wait_ms,omitempty"`
}

func (c *redisCodes) sealResult(k codeKeys, res codeResult) []byte {
	r := storedResult{
		OpenID: res.id.OpenID, UnionID: res.id.UnionID, SessionKey: res.id.SessionKey, AnonymousOpenID: res.id.AnonymousOpenID,
		BudgetWaitMS: res.budgetWait.Milliseconds(),
	}
	if res.failure != nil {
		r.Failure = kindNames[res.failure.kind]
		if res.failure.hasErrcode {
			r.Errcode = &res.failure.errcode
		}
	}
	kind := byte(resultIdentity)
	switch {
	case !res.proved():
		kind = resultFailure
	case res.budgetWait > 0:
		kind = resultIdentityOverBudget
	}
	return c.fleet.seal(kind, k.result, r)
}

// openResult reads a stored result, refusing what a gateway of this
// version cannot have written.
func (c *redisCodes) openResult(k codeKeys, stored string) (codeResult, error) {
	if stored == "" || (stored[0] != resultIdentity && stored[0] != resultIdentityOverBudget && stored[0] != resultFailure) {
		return codeResult{}, errors.New("a stored result of a kind this gateway does not know")
	}
	var r storedResult
	if err := c.fleet.open(k.result, stored, &r); err != nil {
		return codeResult{}, err
	}
	res := codeResult{
		id:         Identity{OpenID: r.OpenID, UnionID: r.UnionID, SessionKey: r.SessionKey, AnonymousOpenID: r.AnonymousOpenID},
		budgetWait: time.Duration(r.BudgetWaitMS) * time.Millisecond,
	}
	if r.Failure != "" {
		kind, ok := kindNamed(r.Failure)
		if !ok {
			return codeResult{}, errors.New("a stored failure of a kind this gateway does not know")
		}
		res.failure = &platformError{kind: kind, detail: "stored by the fleet"}
		if r.Errcode != nil {
			res.failure.errcode, res.failure.hasErrcode = *r.Errcode, true
		}
	}
	switch stored[0] {
	case resultFailure:
		if res.id.proves() || (res.failure == nil) == (res.budgetWait <= 0) {
			return codeResult{}, errors.New("a stored failure that is not exactly one failure")
		}
	default:
		if !res.id.wellFormed() || res.failure != nil || (stored[0] == resultIdentityOverBudget) != (res.budgetWait > 0) {
			// Written by whoever holds the secret, or by a gateway that did
			// not check what the platform sent.
			return codeResult{}, errors.New("a stored identity unlike a platform's")
		}
	}
	return res, nil
}

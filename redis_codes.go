package wechatlogin

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// How a code is redeemed across a fleet: a claim (see redisClaim), whose
// keys are in the app's Cluster slot, as every key of the app is, so that
// one script can also charge the player:
//
//	<prefix>code:h  the result: an identity, or for the waiters only, a
//	                failure; sealed with its expiry inside, and with the
//	                same expiry on the key
//	<prefix>lock:h  held, with an expiry, by the gateway calling the platform
//
// The gateway that takes the lock calls the platform, then in one round
// trip charges the player the call proved, stores the result and lets the
// lock go.

// codeClaims are the claims on codes: patient, as a login that calls the
// platform alone may spend a code another gateway is exchanging.
var codeClaims = &claimKind{claimScript: codeClaimScript, finishScript: codeFinishScript, claimOp: "claim", finishOp: "finish", patient: true}

// codeClaimScript takes the stored result when ARGV[3] accepts it ("any"
// for a waiter, "identity" for a new login, "none" when the cache is off).
// Taking the lock drops the result left there (a failure, or with the
// cache off an identity).
var codeClaimScript = redis.NewScript(claimLua + `
return claim(function(result)
	local kind = string.sub(result, 1, 1)
	return ARGV[3] == 'any' or (ARGV[3] == 'identity' and (kind == 'i' or kind == 'o'))
end, true)
`)

// codeFinishScript stores ARGV[3]: with a third key, it first charges that
// player's budget (chargeBudget, with ARGV[5..9]) and answers as
// chargeBudget does, and stores ARGV[4] instead when the charge was
// refused. A failure never replaces what is stored (an identity). Whatever
// else is to be kept with a call's result is one more key and value at the
// end.
var codeFinishScript = redis.NewScript(budgetLua + claimLua + `
local answer, result = {1}, ARGV[3]
if KEYS[3] then
	answer = chargeBudget(KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
	if answer[1] == 0 then
		result = ARGV[4]
	end
end
local kind = string.sub(result, 1, 1)
finish(result, function()
	return kind == 'i' or kind == 'o'
end)
return answer
`)

// What a login accepts from the result key, as codeClaimScript's ARGV[3].
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

// redisCodes is a codeStore shared by a fleet: one platform call per code
// whichever gateways receive it. The local store in front sends one login
// per gateway and code to Redis; while Redis is down, it alone serves.
type redisCodes struct {
	app         *appRedis
	local       codeStore
	players     *redisBudget     // charged in the operation that stores a result
	fresh       string           // what a new login accepts
	identityTTL time.Duration    // of a stored identity
	lockTTL     time.Duration    // of the lock, and of a failure kept for waiters
	now         func() time.Time // the clock of the expiries sealed in results
	// keepSessionKeys: the session_keys the app's calls prove are kept in
	// Redis too, in the round trip that stores the result.
	keepSessionKeys bool
}

// codes returns the fleet's codeStore in front of local (the memory store
// shared across reloads). lockTTL is the longest an exchange can take,
// retries included: a lock older than that has lost its holder.
func (a *appRedis) codes(local codeStore, players *redisBudget, cacheTTL, lockTTL time.Duration, keepSessionKeys bool) codeStore {
	// The lock outlives the exchange by one Redis operation: storing its result.
	lockTTL += a.redis.timeout
	c := &redisCodes{app: a, local: local, players: players, fresh: acceptIdentity, identityTTL: cacheTTL, lockTTL: lockTTL, now: time.Now,
		keepSessionKeys: keepSessionKeys}
	if cacheTTL <= 0 {
		// Stored only for the waiters of the call that made it.
		c.fresh, c.identityTTL = acceptNone, lockTTL
	}
	c.identityTTL = max(c.identityTTL, minResultTTL)
	c.lockTTL = max(c.lockTTL, minResultTTL)
	return c
}

func (c *redisCodes) redeem(ctx context.Context, key codeKey, exchange exchangeFunc) (codeResult, redeemOutcome, error) {
	// The local store reports redeemedByCall to the login whose function
	// ran; what that function found in Redis says how it was really redeemed.
	var shared atomic.Int32
	res, outcome, err := c.local.redeem(ctx, key, func(charge chargeFunc) codeResult {
		res, how := c.redeemShared(ctx, key, exchange, charge)
		shared.Store(int32(how))
		return res
	})
	if outcome == redeemedByCall {
		outcome = redeemOutcome(shared.Load())
	}
	return res, outcome, err
}

// claimFor is the claim on the code key.
func (c *redisCodes) claimFor(key codeKey) redisClaim {
	h := c.app.hide(key[:])
	return c.app.claim(codeClaims, c.app.prefix+"code:"+h, c.app.prefix+"lock:"+h, c.lockTTL)
}

// redeemShared runs on behalf of every login for key at this gateway;
// charge is the local store's, for a call made without the fleet.
func (c *redisCodes) redeemShared(ctx context.Context, key codeKey, exchange exchangeFunc, charge chargeFunc) (codeResult, redeemOutcome) {
	k := c.claimFor(key)
	token := newUniqueID()
	claim, waited, ok := k.await(ctx, token, func(waiting bool) string {
		if waiting {
			return acceptAny
		}
		return c.fresh
	})
	switch {
	case !ok:
		return leadAlone(exchange, charge)
	case claim.kind == claimLead:
		return c.leadForFleet(ctx, k, token, exchange)
	case waited:
		return c.answer(k, claim.value, redeemedByJoining, exchange, charge)
	}
	return c.answer(k, claim.value, redeemedFromCache, exchange, charge)
}

// leadAlone calls the platform without the fleet: Redis is down, or said
// nothing usable.
func leadAlone(exchange exchangeFunc, charge chargeFunc) (codeResult, redeemOutcome) {
	return exchange(charge), redeemedByCall
}

// leadForFleet calls the platform holding the lock and stores the result
// for the other gateways: in the operation that charges the player, when
// the call proved one to charge.
func (c *redisCodes) leadForFleet(ctx context.Context, k redisClaim, token string, exchange exchangeFunc) (codeResult, redeemOutcome) {
	finished := false
	res := exchange(func(ctx context.Context, id Identity) (time.Duration, bool) {
		_, wait, ok := c.players.reserveThrough(ctx, id.player(), k.kind.finishOp, func(ctx context.Context) (budgetAnswer, error) {
			args := append([]any{token, c.identityTTL.Milliseconds(), c.sealIdentity(k, id, false), c.sealIdentity(k, id, true)}, c.players.scriptArgs(true)...)
			answer, err := budgetAnswerOf(k.finishWith(ctx, []string{c.players.key(id.player())}, c.custodyWrite(id), args...))
			finished = err == nil
			return answer, err
		})
		return wait, ok
	})
	if res.failure != nil && res.failure.kind == kindCodeUsed && c.fresh == acceptIdentity {
		// A gateway whose lock ran out may have spent the code and stored
		// what it proved.
		if claim, outcome := k.claim(ctx, token, acceptIdentity); outcome == redisAnswered && claim.kind == claimResult {
			if stored, _, err := c.openResult(k, claim.value); err == nil {
				k.finish(ctx, token, 0, nil, nil)
				return codeResult{id: stored.id}, redeemedFromCache
			}
		}
	}
	switch {
	case finished:
	case res.proved():
		// Stored even for a player over budget: the code is spent at the
		// platform, and a retry elsewhere must find its result.
		k.finish(ctx, token, c.identityTTL, c.sealResult(k, res), c.custodyWrite(res.id))
	default:
		k.finish(ctx, token, c.lockTTL, c.sealResult(k, res), nil)
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
	return c.app.sessionKeyWrite(id.OpenID, id.SessionKey, time.Now())
}

// answer turns a stored result into the login's answer; one that does not
// open (written under another secret, tampered with, or past its expiry)
// is not trusted and the code is redeemed at the platform instead. A
// waiter gets what the call's own logins got, except that an identity
// whose player was over budget is answered as from the cache: alone, for
// the login to check against the budget as it is now (which gives the
// wait), as every login served from the cache is.
func (c *redisCodes) answer(k redisClaim, stored string, outcome redeemOutcome, exchange exchangeFunc, charge chargeFunc) (codeResult, redeemOutcome) {
	res, overBudget, err := c.openResult(k, stored)
	if err != nil {
		return leadAlone(exchange, charge)
	}
	if overBudget || (outcome == redeemedFromCache && res.proved()) {
		return codeResult{id: res.id}, redeemedFromCache
	}
	return res, outcome
}

// storedResult is what the result key holds, sealed: an identity, or why
// there is none (the platform's failure, by kind and the platform's own
// errcode, or how long the player's budget said to wait when it refused
// before the call). Nothing in it is HTTP: the refusal is each gateway's
// to write. Whether an identity's player was over budget is its kind.
type storedResult struct {
	OpenID          string `json:"openid,omitempty"`
	UnionID         string `json:"unionid,omitempty"`
	SessionKey      string `json:"session_key,omitempty"`
	AnonymousOpenID string `json:"anonymous_openid,omitempty"`
	Failure         string `json:"failure,omitempty"`
	Errcode         *int   `json:"errcode,omitempty"`
	BudgetWaitMS    int64  `json:"budget_wait_ms,omitempty"`
}

// sealResult seals res for the result key: an identity as sealIdentity
// does, marked over budget when res has a budgetWait; no identity as 'f',
// for the call's waiters, until the lock's TTL.
func (c *redisCodes) sealResult(k redisClaim, res codeResult) []byte {
	if res.proved() {
		return c.sealIdentity(k, res.id, res.budgetWait > 0)
	}
	r := storedResult{BudgetWaitMS: res.budgetWait.Milliseconds()}
	if res.failure != nil {
		r.Failure = kindNames[res.failure.kind]
		if res.failure.hasErrcode {
			r.Errcode = &res.failure.errcode
		}
	}
	return c.app.seal(resultFailure, k.result, r, c.now().Add(c.lockTTL))
}

// sealIdentity seals id until the identity TTL: as 'i', or as 'o' when its
// player was over budget (the wait itself is not kept: a login served it
// asks the budget as it is then).
func (c *redisCodes) sealIdentity(k redisClaim, id Identity, overBudget bool) []byte {
	kind := byte(resultIdentity)
	if overBudget {
		kind = resultIdentityOverBudget
	}
	r := storedResult{OpenID: id.OpenID, UnionID: id.UnionID, SessionKey: id.SessionKey, AnonymousOpenID: id.AnonymousOpenID}
	return c.app.seal(kind, k.result, r, c.now().Add(c.identityTTL))
}

// openResult reads a stored result, and whether its identity's player was
// over budget, refusing what a gateway of this version cannot have
// written.
func (c *redisCodes) openResult(k redisClaim, stored string) (res codeResult, overBudget bool, err error) {
	if stored == "" || (stored[0] != resultIdentity && stored[0] != resultIdentityOverBudget && stored[0] != resultFailure) {
		return codeResult{}, false, errors.New("a stored result of a kind this gateway does not know")
	}
	var r storedResult
	if err := c.app.open(k.result, stored, &r, c.now()); err != nil {
		return codeResult{}, false, err
	}
	res = codeResult{
		id:         Identity{OpenID: r.OpenID, UnionID: r.UnionID, SessionKey: r.SessionKey, AnonymousOpenID: r.AnonymousOpenID},
		budgetWait: time.Duration(r.BudgetWaitMS) * time.Millisecond,
	}
	if r.Failure != "" {
		kind, ok := kindNamed(r.Failure)
		if !ok {
			return codeResult{}, false, errors.New("a stored failure of a kind this gateway does not know")
		}
		res.failure = &platformError{kind: kind, detail: "stored by the fleet"}
		if r.Errcode != nil {
			res.failure.errcode, res.failure.hasErrcode = *r.Errcode, true
		}
	}
	if stored[0] == resultFailure {
		if res.id.proves() || (res.failure == nil) == (res.budgetWait <= 0) {
			return codeResult{}, false, errors.New("a stored failure that is not exactly one failure")
		}
		return res, false, nil
	}
	if !res.id.wellFormed() || res.failure != nil || res.budgetWait != 0 {
		// Written by whoever holds the secret, or by a gateway that did
		// not check what the platform sent.
		return codeResult{}, false, errors.New("a stored identity unlike a platform's")
	}
	return res, stored[0] == resultIdentityOverBudget, nil
}

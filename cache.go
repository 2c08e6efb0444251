package wechatlogin

import (
	"context"
	"crypto/sha256"
	"time"

	"golang.org/x/sync/singleflight"
)

// codeKey names a code in the cache and among calls in flight: a hash of
// (app_id, code), so the code itself is never kept.
type codeKey [sha256.Size]byte

func newCodeKey(appID, code string) codeKey {
	var buf [256]byte // on the stack: hashing allocates nothing for codes of up to maxCodeLen
	return sha256.Sum256(append(append(append(buf[:0], appID...), 0), code...))
}

// redeemOutcome says how a code was redeemed: for the metrics, and for the
// budget, which charges a WeChat call but only checks a reused result.
type redeemOutcome int

const (
	redeemedByCall    redeemOutcome = iota // this login ran the WeChat call
	redeemedFromCache                      // a stored result
	redeemedByJoining                      // waited for a call already in flight
)

// codeStore finds what a code proved, making at most one WeChat call per code
// however many logins present it: double taps and client retries get the
// identity instead of WeChat's 40163 (code already used). The in-memory store
// is the default; with Redis, a fleet of gateways shares one. Implementations
// are safe for concurrent use.
type codeStore interface {
	// redeem returns the identity for key: from the cache; else by waiting
	// for a call in flight for key; else by running lead, whose identity is
	// cached whenever it has one, even alongside a refusal (a player over
	// budget keeps the code's result for a later retry). lead may outlive
	// the login that started it (it serves every login waiting for the
	// code), so it must not depend on ctx; redeem itself returns when ctx
	// ends. lead charges the player its call proved with the charge it is
	// given: the store's, so that a fleet's store can make the charge in
	// the Redis operation that stores the call's result.
	redeem(ctx context.Context, key codeKey, lead leadFunc) (Identity, redeemOutcome, *jsonRefusal)
}

// leadFunc makes the one WeChat call for a code, charging the player it
// proves with charge.
type leadFunc func(charge chargeFunc) (Identity, *jsonRefusal)

// chargeFunc charges the player of id one event of the player budget for
// the WeChat call that proved them; it reports how long until the budget
// has room when it has none.
type chargeFunc func(ctx context.Context, id Identity) (wait time.Duration, ok bool)

// codeTable holds one configuration's cached results, shared by its handlers
// across reloads; each handler reads it under its own cache_ttl.
type codeTable = leasedLRU[codeKey, cachedIdentity]

func newCodeTable() *codeTable { return newLeasedLRU[codeKey, cachedIdentity]() }

type cachedIdentity struct {
	Identity
	cachedAt time.Time
}

// memoryCodes is one handler's codeStore in memory: the shared table under
// the handler's cache_ttl (0: nothing is cached) and the shared calls in
// flight. Expiry is checked on read rather than by a sweeper goroutine, which
// would have to be stopped at every reload; an expired entry costs memory
// only until the LRU pushes it out.
type memoryCodes struct {
	table   *codeTable
	ttl     time.Duration
	flights *singleflight.Group
	now     func() time.Time
	players budgetStore // charged for the calls
}

// flightResult is what one WeChat call gave every login waiting on it.
type flightResult struct {
	id      Identity
	outcome redeemOutcome
	refusal *jsonRefusal
}

func (c memoryCodes) redeem(ctx context.Context, key codeKey, lead leadFunc) (Identity, redeemOutcome, *jsonRefusal) {
	if id, ok := c.cached(key); ok {
		return id, redeemedFromCache, nil
	}
	return c.redeemInFlight(ctx, key, lead)
}

// redeemInFlight is redeem for a code not in the cache: apart, so that a
// cache hit allocates nothing for the flight.
func (c memoryCodes) redeemInFlight(ctx context.Context, key codeKey, lead leadFunc) (Identity, redeemOutcome, *jsonRefusal) {
	ranLead := false
	ch := c.flights.DoChan(string(key[:]), func() (any, error) {
		// A flight for this code may have finished between the look above
		// and this one: its result is in the cache, and WeChat would answer
		// 40163.
		if id, ok := c.cached(key); ok {
			return flightResult{id: id, outcome: redeemedFromCache}, nil
		}
		ranLead = true
		id, refusal := lead(c.charge)
		if id.OpenID != "" {
			c.add(key, id)
		} else if refusal != nil && refusal.code == errCodeUsed {
			// Another gateway or an overlapping flight may have stored it.
			if cached, ok := c.cached(key); ok {
				return flightResult{id: cached, outcome: redeemedFromCache}, nil
			}
		}
		return flightResult{id: id, outcome: redeemedByCall, refusal: refusal}, nil
	})
	select {
	case res := <-ch:
		r := res.Val.(flightResult)
		if !ranLead && r.outcome == redeemedByCall {
			r.outcome = redeemedByJoining
		}
		if r.refusal != nil {
			return Identity{}, r.outcome, r.refusal
		}
		return r.id, r.outcome, nil
	case <-ctx.Done():
		return Identity{}, redeemedByJoining, clientGone()
	}
}

// charge spends one event of the player budget of id.
func (c memoryCodes) charge(ctx context.Context, id Identity) (time.Duration, bool) {
	return c.players.spend(ctx, id.OpenID)
}

func (c memoryCodes) cached(key codeKey) (Identity, bool) {
	if c.ttl <= 0 {
		return Identity{}, false
	}
	entry, ok := c.table.Get(key)
	if !ok || !c.now().Before(entry.cachedAt.Add(c.ttl)) {
		return Identity{}, false
	}
	return entry.Identity, true
}

func (c memoryCodes) add(key codeKey, id Identity) {
	if c.ttl > 0 {
		c.table.Add(key, cachedIdentity{Identity: id, cachedAt: c.now()})
	}
}

// clientGone is the refusal recorded when the client hung up before its
// login was decided: 499, as reverse_proxy records it, so the access log
// shows the disconnect. Nobody reads the body.
func clientGone() *jsonRefusal {
	return newRefusal(statusClientClosedRequest, errInvalidRequest, "the client went away")
}

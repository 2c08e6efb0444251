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

func newCodeKey(appID string, creds credentials) codeKey {
	var buf [512]byte // on the stack: hashing allocates nothing for codes of up to maxCodeLen
	key := append(append(append(buf[:0], appID...), 0), creds.code...)
	if creds.anonymousCode != "" {
		// Only then, so that a code's key is the same as before anonymous
		// codes existed (a fleet mid-upgrade agrees on it).
		key = append(append(key, 0), creds.anonymousCode...)
	}
	return sha256.Sum256(key)
}

// redeemOutcome says how a code was redeemed: for the metrics, and for the
// budget, which charges a WeChat call but only checks a reused result.
type redeemOutcome int

const (
	redeemedByCall    redeemOutcome = iota // this login ran the WeChat call
	redeemedFromCache                      // a stored result
	redeemedByJoining                      // waited for a call already in flight
)

// codeResult is what one exchange of a code gave every login waiting on it:
// the identity the code proved (none when it proved nobody), or why the
// platform proved nobody, or how long until the player's budget has room
// again. An identity comes with a budgetWait when its player is over
// budget: the code is spent at the platform, and its result is kept for a
// later retry.
type codeResult struct {
	id         Identity
	failure    *platformError
	budgetWait time.Duration
}

// proved reports whether the exchange named a player.
func (r codeResult) proved() bool { return r.id.proves() }

// codeStore finds what a code proved, making at most one platform call per code
// however many logins present it: double taps and client retries get the
// identity instead of WeChat's 40163 (code already used). The in-memory store
// is the default; with Redis, a fleet of gateways shares one. Implementations
// are safe for concurrent use.
type codeStore interface {
	// redeem returns the result for key: from the cache; else by waiting
	// for a call in flight for key; else by running exchange, whose
	// identity is cached whenever it has one, even beside a budgetWait. A
	// result from the cache is the identity alone. exchange may outlive the
	// login that started it (it serves every login waiting for the code),
	// so it must not depend on ctx; redeem itself returns ctx's error when
	// ctx ends first. exchange charges the player its call proved with the
	// charge it is given: the store's, so that a fleet's store can make the
	// charge in the Redis operation that stores the call's result.
	redeem(ctx context.Context, key codeKey, exchange exchangeFunc) (codeResult, redeemOutcome, error)
}

// exchangeFunc makes the one platform call for a code, charging the player
// it proves with charge.
type exchangeFunc func(charge chargeFunc) codeResult

// chargeFunc charges the player of id one event of the player budget for
// the platform call that proved them; it reports how long until the budget
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

// flightResult is what one call gave every login waiting on it.
type flightResult struct {
	codeResult
	outcome redeemOutcome
}

func (c memoryCodes) redeem(ctx context.Context, key codeKey, exchange exchangeFunc) (codeResult, redeemOutcome, error) {
	if id, ok := c.cached(key); ok {
		return codeResult{id: id}, redeemedFromCache, nil
	}
	return c.redeemInFlight(ctx, key, exchange)
}

// redeemInFlight is redeem for a code not in the cache: apart, so that a
// cache hit allocates nothing for the flight.
func (c memoryCodes) redeemInFlight(ctx context.Context, key codeKey, exchange exchangeFunc) (codeResult, redeemOutcome, error) {
	ranExchange := false
	ch := c.flights.DoChan(string(key[:]), func() (any, error) {
		// A flight for this code may have finished between the look above
		// and this one: its result is in the cache, and the platform would
		// answer that the code is used.
		if id, ok := c.cached(key); ok {
			return flightResult{codeResult{id: id}, redeemedFromCache}, nil
		}
		ranExchange = true
		res := exchange(c.charge)
		if res.proved() {
			c.add(key, res.id)
		} else if res.failure != nil && res.failure.kind == kindCodeUsed {
			// Another gateway or an overlapping flight may have stored it.
			if cached, ok := c.cached(key); ok {
				return flightResult{codeResult{id: cached}, redeemedFromCache}, nil
			}
		}
		return flightResult{res, redeemedByCall}, nil
	})
	select {
	case res := <-ch:
		r := res.Val.(flightResult)
		if !ranExchange && r.outcome == redeemedByCall {
			r.outcome = redeemedByJoining
		}
		return r.codeResult, r.outcome, nil
	case <-ctx.Done():
		return codeResult{}, redeemedByJoining, ctx.Err()
	}
}

// charge spends one event of the player budget of id.
func (c memoryCodes) charge(ctx context.Context, id Identity) (time.Duration, bool) {
	return c.players.spend(ctx, id.player())
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

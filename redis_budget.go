package wechatlogin

import (
	"context"
	_ "embed"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// budgetLua defines chargeBudget, the budget algorithm (the same as the
// in-memory one), for every script that charges a budget.
//
//go:embed redis_budget.lua
var budgetLua string

// budgetScript charges or checks one budget in one round trip. go-redis
// runs it with EVALSHA, and sends the source with EVAL only when the server
// does not have it yet (after a restart, say).
var budgetScript = redis.NewScript(budgetLua + "return chargeBudget(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])")

// redisBudget is a budgetStore shared by a fleet: one Redis hash per key,
// so the promise of at most Events in any Window holds however the logins
// spread over the gateways. In front of Redis, the gateway's memory counts
// every charge the gateway allowed, through Redis or not: while Redis
// cannot be asked, a fallback share starts from them, and once it answers
// again, the charges it missed still count at this gateway, so a fallback
// never lets a player past the limit at one gateway.
type redisBudget struct {
	app    *appRedis
	prefix string // of this kind's keys
	events int
	slotMS int64
	known  memoryBudget // this gateway's own charges, under the full limit
	share  memoryBudget // the same charges, under the fleet's share of it
	// scriptClock is nil except in tests, which drive the script's clock;
	// otherwise time is the Redis server's.
	scriptClock func() time.Time
}

// budget returns the fleet's budgetStore for kind ("player" or "ip") under
// one handler's limit; table holds this gateway's own charges, shared
// across reloads like the memory budgets'.
func (a *appRedis) budget(kind string, limit Budget, table *budgetTable, now func() time.Time) *redisBudget {
	return &redisBudget{
		app:    a,
		prefix: a.prefix + "budget:" + kind + ":",
		events: limit.Events,
		slotMS: budgetSlotMillis(time.Duration(limit.Window)),
		known:  newMemoryBudget(table, limit, now),
		share:  newMemoryBudget(table, fleetShare(limit, a.size), now),
	}
}

// budgetSlotMillis is the window's slot length in whole milliseconds,
// rounded up: k slots must cover at least the window for the promise to hold.
func budgetSlotMillis(window time.Duration) int64 {
	const perSlots = budgetSlots * time.Millisecond
	return max(1, int64((window+perSlots-1)/perSlots))
}

// fleetShare is one gateway's part of a budget while the gateways cannot
// share it: never below one event, so nobody is locked out.
func fleetShare(limit Budget, fleetSize int) Budget {
	limit.Events = max(1, limit.Events/fleetSize)
	return limit
}

func (b *redisBudget) spend(ctx context.Context, key string) (time.Duration, bool) {
	_, wait, ok := b.reserve(ctx, key)
	return wait, ok
}

func (b *redisBudget) check(ctx context.Context, key string) (time.Duration, bool) {
	if wait, ok := b.known.check(ctx, key); !ok {
		return wait, false
	}
	var answer budgetAnswer
	served := b.app.redis.do(ctx, "check", func(ctx context.Context) (err error) {
		answer, err = budgetAnswerOf(budgetScript.Run(ctx, b.app.redis.client, []string{b.key(key)}, b.scriptArgs(false)...))
		return err
	})
	if !served {
		return b.share.check(ctx, key)
	}
	return answer.wait, answer.ok
}

func (b *redisBudget) reserve(ctx context.Context, key string) (func(), time.Duration, bool) {
	return b.reserveThrough(ctx, key, "spend", func(ctx context.Context) (budgetAnswer, error) {
		return budgetAnswerOf(budgetScript.Run(ctx, b.app.redis.client, []string{b.key(key)}, b.scriptArgs(true)...))
	})
}

// reserveThrough charges key by op, a Redis operation that charges it (and
// may do more: store a code's result), behind this gateway's memory of its
// own charges: refused there, the charge is not asked of Redis; allowed by
// Redis, it is counted there too. When Redis cannot be asked, the charge
// is made in memory alone, under the fleet's share.
func (b *redisBudget) reserveThrough(ctx context.Context, key, operation string, op func(context.Context) (budgetAnswer, error)) (func(), time.Duration, bool) {
	undoKnown, wait, ok := b.known.reserve(ctx, key)
	if !ok {
		return nil, wait, false
	}
	var answer budgetAnswer
	served := b.app.redis.do(ctx, operation, func(ctx context.Context) (err error) {
		answer, err = op(ctx)
		return err
	})
	if !served {
		undoKnown()
		return b.share.reserve(ctx, key)
	}
	if !answer.ok {
		undoKnown()
		return nil, answer.wait, false
	}
	return onlyOnce(func() {
		undoKnown()
		b.refund(key, answer.slot, answer.unitMS, answer.generation)
	}), 0, true
}

// budgetAnswer is what the budget script said.
type budgetAnswer struct {
	ok   bool
	wait time.Duration
	// Where the charge was made, when ok and charged: the slot, its length
	// in milliseconds, and the generation of the budget (a budget Redis
	// lost and made anew has another), so that a refund gives back this
	// charge and no other.
	slot, unitMS, generation int64
}

// scriptArgs are chargeBudget's arguments after the key, for a charge or
// a check.
func (b *redisBudget) scriptArgs(charge bool) []any {
	chargeArg := "0"
	if charge {
		chargeArg = "1"
	}
	return []any{b.events, b.slotMS, chargeArg, scriptTime(b.scriptClock), mathrand.Int64N(1<<48) + 1}
}

// budgetAnswerOf reads chargeBudget's answer.
func budgetAnswerOf(cmd *redis.Cmd) (budgetAnswer, error) {
	reply, err := cmd.Int64Slice()
	if err != nil {
		return budgetAnswer{}, err
	}
	switch {
	case len(reply) == 5 && reply[0] == 1:
		return budgetAnswer{ok: true, slot: reply[2], generation: reply[3], unitMS: reply[4]}, nil
	case len(reply) == 2 && reply[0] == 0:
		return budgetAnswer{wait: time.Duration(reply[1]) * time.Millisecond}, nil
	}
	return budgetAnswer{}, fmt.Errorf("a budget script answered %d values", len(reply))
}

func (b *redisBudget) key(key string) string { return b.prefix + b.app.hide([]byte(key)) }

// refundScript gives back one charge in a slot, if it is still counted: in
// the same generation of the budget (Redis did not lose it since) and under
// the same slot length (a longer window since has moved it).
var refundScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') == ARGV[3] and redis.call('HGET', KEYS[1], 'slot') == ARGV[2]
	and (tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '') or 0) > 0 then
	redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
return 0
`)

// refund gives back a charge made in slot, of unitMS milliseconds, of
// generation. It runs on its own deadline: the login that made it may be
// gone, and a refund that Redis misses only keeps a budget stricter than it
// needs to be.
func (b *redisBudget) refund(key string, slot, unitMS, generation int64) {
	b.app.redis.do(context.Background(), "refund", func(ctx context.Context) error {
		return refundScript.Run(ctx, b.app.redis.client, []string{b.key(key)},
			strconv.FormatInt(slot, 10), strconv.FormatInt(unitMS, 10), strconv.FormatInt(generation, 10)).Err()
	})
}

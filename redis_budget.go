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

// budgetScript charges or checks one budget in one round trip; see the
// script for the algorithm, the same as the in-memory one.
//
//go:embed redis_budget.lua
var budgetScriptSource string

// go-redis runs it with EVALSHA, and sends the source with EVAL only when
// the server does not have it yet (after a restart, say).
var budgetScript = redis.NewScript(budgetScriptSource)

// redisBudget is a budgetStore shared by a fleet: one Redis hash per key,
// so the promise of at most Events in any Window holds however the logins
// spread over the gateways. While Redis is down it answers from memory,
// under the fleet's share of the limit.
type redisBudget struct {
	fleet    *fleet
	prefix   string // of this kind's keys
	events   int
	slotMS   int64
	fallback budgetStore
	// scriptClock is nil except in tests, which drive the script's clock;
	// otherwise time is the Redis server's.
	scriptClock func() time.Time
}

// budget returns the fleet's budgetStore for kind ("player" or "ip") under
// one handler's limit; table holds the memory fallback's state, shared
// across reloads like the memory budgets'.
func (f *fleet) budget(kind string, limit Budget, table *budgetTable, now func() time.Time) budgetStore {
	return &redisBudget{
		fleet:    f,
		prefix:   f.prefix + "budget:" + kind + ":",
		events:   limit.Events,
		slotMS:   budgetSlotMillis(time.Duration(limit.Window)),
		fallback: newMemoryBudget(table, fleetShare(limit, f.size), now),
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
	answer, served := b.run(ctx, "check", key, "0")
	if !served {
		return b.fallback.check(ctx, key)
	}
	return answer.wait, answer.ok
}

func (b *redisBudget) reserve(ctx context.Context, key string) (func(), time.Duration, bool) {
	answer, served := b.run(ctx, "spend", key, "1")
	if !served {
		return b.fallback.reserve(ctx, key)
	}
	if !answer.ok {
		return nil, answer.wait, false
	}
	return onlyOnce(func() { b.refund(key, answer.slot, answer.unitMS, answer.generation) }), 0, true
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

// run runs the budget script; served is false when Redis did not answer,
// and the fallback must.
func (b *redisBudget) run(ctx context.Context, operation, key, chargeArg string) (answer budgetAnswer, served bool) {
	var reply []int64
	served = b.fleet.redis.do(ctx, operation, func(ctx context.Context) error {
		var err error
		reply, err = budgetScript.Run(ctx, b.fleet.redis.client, []string{b.key(key)},
			b.events, b.slotMS, chargeArg, scriptTime(b.scriptClock), mathrand.Int64N(1<<48)+1).Int64Slice()
		if err == nil && len(reply) != 2 && len(reply) != 5 {
			err = fmt.Errorf("the budget script answered %d values, not 2 or 5", len(reply))
		}
		return err
	})
	if !served {
		return budgetAnswer{}, false
	}
	if reply[0] == 1 {
		answer = budgetAnswer{ok: true}
		if len(reply) == 5 {
			answer.slot, answer.generation, answer.unitMS = reply[2], reply[3], reply[4]
		}
		return answer, true
	}
	return budgetAnswer{wait: time.Duration(reply[1]) * time.Millisecond}, true
}

func (b *redisBudget) key(key string) string { return b.prefix + b.fleet.hide([]byte(key)) }

// refundScript gives back one charge in a slot, if it is still counted: in
// the same generation of the budget (Redis did not lose it since) and under
// the same slot length (a longer window since has moved it).
var refundScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') == ARGV[3] and redis.call('HGET', KEYS[1], 'slot') == ARGV[2]
	and tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') > 0 then
	redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
return 0
`)

// refund gives back a charge made in slot, of unitMS milliseconds, of
// generation. It runs on its own deadline: the login that made it may be
// gone, and a refund that Redis misses only keeps a budget stricter than it
// needs to be.
func (b *redisBudget) refund(key string, slot, unitMS, generation int64) {
	b.fleet.redis.do(context.Background(), "refund", func(ctx context.Context) error {
		return refundScript.Run(ctx, b.fleet.redis.client, []string{b.key(key)},
			strconv.FormatInt(slot, 10), strconv.FormatInt(unitMS, 10), strconv.FormatInt(generation, 10)).Err()
	})
}

package wechatlogin

import (
	"context"
	_ "embed"
	"fmt"
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
	return b.run(ctx, key, true)
}

func (b *redisBudget) check(ctx context.Context, key string) (time.Duration, bool) {
	return b.run(ctx, key, false)
}

func (b *redisBudget) run(ctx context.Context, key string, charge bool) (time.Duration, bool) {
	operation, chargeArg := "check", "0"
	if charge {
		operation, chargeArg = "spend", "1"
	}
	clockArg := ""
	if b.scriptClock != nil {
		clockArg = strconv.FormatInt(b.scriptClock().UnixMilli(), 10)
	}
	var answer []int64
	served := b.fleet.redis.do(ctx, operation, func(ctx context.Context) error {
		var err error
		answer, err = budgetScript.Run(ctx, b.fleet.redis.client, []string{b.prefix + b.fleet.hide([]byte(key))},
			b.events, b.slotMS, chargeArg, clockArg).Int64Slice()
		if err == nil && len(answer) != 2 {
			err = fmt.Errorf("the budget script answered %d values, not 2", len(answer))
		}
		return err
	})
	if !served {
		if charge {
			return b.fallback.spend(ctx, key)
		}
		return b.fallback.check(ctx, key)
	}
	if answer[0] == 1 {
		return 0, true
	}
	return time.Duration(answer[1]) * time.Millisecond, false
}

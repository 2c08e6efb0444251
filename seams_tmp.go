package wechatlogin

// TEMPORARY, branch redis only: the seams the lead is building in main
// (budgetStore, codeStore, redeemOutcome, newMemoryBudget and a memory
// codeStore), declared here so that the Redis stores compile and are tested
// against them. Deleted at merge in favour of main's budget.go and cache.go.

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// budgetStore keeps one budget per key under one handler's limits. Safe for concurrent use.
type budgetStore interface {
	// spend charges one event to key if the budget has room; otherwise it charges nothing
	// and reports how long until it has.
	spend(ctx context.Context, key string) (wait time.Duration, ok bool)
	// check reports what spend would, without charging.
	check(ctx context.Context, key string) (wait time.Duration, ok bool)
}

// redeemOutcome says how a code was redeemed, for metrics and for the budget rule
// (a cached result is checked against the player's budget, not charged).
type redeemOutcome int

const (
	redeemedByCall    redeemOutcome = iota // this caller ran lead
	redeemedFromCache                      // a stored result
	redeemedByJoining                      // waited for a call already in flight (here or on another gateway)
)

// codeStore finds what a code proved, making at most one WeChat call per code however many
// logins (on however many gateways) present it. Safe for concurrent use.
type codeStore interface {
	redeem(ctx context.Context, key codeKey, lead func() (Identity, *loginError)) (Identity, redeemOutcome, *loginError)
}

// budgetSlots is k, the number of slots a window is cut into.
const budgetSlots = 20

// tmpWindows stands in for main's budgetTable contents: the slotted windows
// of the keys charged through one *budgetTable.
var tmpWindows sync.Map // *budgetTable -> *tmpWindowTable

type tmpWindowTable struct {
	mu   sync.Mutex
	keys map[string]*tmpWindow
}

type tmpWindow struct {
	counts map[int64]int
	last   int64
}

type tmpMemoryBudget struct {
	table *tmpWindowTable
	limit Budget
	now   func() time.Time
}

func newMemoryBudget(table *budgetTable, limit Budget, now func() time.Time) budgetStore {
	t, _ := tmpWindows.LoadOrStore(table, &tmpWindowTable{keys: map[string]*tmpWindow{}})
	return &tmpMemoryBudget{table: t.(*tmpWindowTable), limit: limit, now: now}
}

func (b *tmpMemoryBudget) spend(_ context.Context, key string) (time.Duration, bool) {
	return b.decide(key, true)
}

func (b *tmpMemoryBudget) check(_ context.Context, key string) (time.Duration, bool) {
	return b.decide(key, false)
}

func (b *tmpMemoryBudget) decide(key string, charge bool) (time.Duration, bool) {
	b.table.mu.Lock()
	defer b.table.mu.Unlock()
	w := b.table.keys[key]
	if w == nil {
		w = &tmpWindow{counts: map[int64]int{}, last: -1 << 62}
		b.table.keys[key] = w
	}
	s := int64(time.Duration(b.limit.Window) / budgetSlots)
	t := b.now().UnixNano()
	i := max(t/s, w.last)
	counted := 0
	for slot, n := range w.counts {
		if slot < i-budgetSlots {
			delete(w.counts, slot)
			continue
		}
		counted += n
	}
	if counted < b.limit.Events {
		if charge {
			w.counts[i]++
			w.last = i
		}
		return 0, true
	}
	left := counted
	for j := i - budgetSlots; j <= i; j++ {
		left -= w.counts[j]
		if left < b.limit.Events {
			return max(time.Duration((j+budgetSlots+1)*s-t), time.Millisecond), false
		}
	}
	return time.Duration(b.limit.Window), false // unreachable: the last slot empties the sum
}

type tmpMemoryCodes struct {
	cache   codeCache
	flights *singleflight.Group
	now     func() time.Time
}

func newMemoryCodeStore(cache codeCache, flights *singleflight.Group, now func() time.Time) codeStore {
	return &tmpMemoryCodes{cache: cache, flights: flights, now: now}
}

func (c *tmpMemoryCodes) redeem(ctx context.Context, key codeKey, lead func() (Identity, *loginError)) (Identity, redeemOutcome, *loginError) {
	if id, ok := c.cache.get(key, c.now()); ok {
		return id, redeemedFromCache, nil
	}
	type result struct {
		id      Identity
		outcome redeemOutcome
	}
	led := false
	ch := c.flights.DoChan(string(key[:]), func() (any, error) {
		led = true
		if id, ok := c.cache.get(key, c.now()); ok {
			return result{id, redeemedFromCache}, nil
		}
		id, lerr := lead()
		if lerr != nil {
			if lerr.code == errCodeUsed {
				if id, ok := c.cache.get(key, c.now()); ok {
					return result{id, redeemedFromCache}, nil
				}
			}
			return nil, lerr
		}
		c.cache.add(key, id, c.now())
		return result{id, redeemedByCall}, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			if !led {
				return Identity{}, redeemedByJoining, res.Err.(*loginError)
			}
			return Identity{}, redeemedByCall, res.Err.(*loginError)
		}
		r := res.Val.(result)
		if !led {
			r.outcome = redeemedByJoining
		}
		return r.id, r.outcome, nil
	case <-ctx.Done():
		return Identity{}, redeemedByJoining, newLoginError(499, errInvalidRequest, "the client went away")
	}
}

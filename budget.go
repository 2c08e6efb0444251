package wechatlogin

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Budget is a number of logins allowed in any interval of length Window: a
// sliding window, so that no burst at the edge of a window can double it.
type Budget struct {
	// Events allowed in any interval of length Window.
	Events int `json:"events,omitempty"`
	// The length of the sliding window.
	Window caddy.Duration `json:"window,omitempty"`
	// Off disables the budget (ip_budget only).
	Off bool `json:"off,omitempty"`
}

// withinQuota refuses a player budget that would let a client exceed p's
// own per-player minute quota: more than the quota in one burst, or more
// per minute as a rate (so 200 per 2m is refused under WeChat's 100). A
// platform that documents no quota takes any budget.
func (b Budget) withinQuota(p *platform) error {
	if p.quota == 0 {
		return nil
	}
	if b.Events > p.quota || float64(b.Events)/time.Duration(b.Window).Minutes() > float64(p.quota) {
		return fmt.Errorf("%d per %s is more than %s allows (%d per player per minute; past it %s answers %d)",
			b.Events, time.Duration(b.Window), p.title, p.quota, p.title, p.quotaErrcode)
	}
	return nil
}

// budgetStore keeps one budget per key under one handler's limits. The
// in-memory store is the default; with Redis, the fleet's gateways share
// one. Implementations are safe for concurrent use.
type budgetStore interface {
	// spend charges one event to key if the budget has room; otherwise it
	// charges nothing and reports how long until it has.
	spend(ctx context.Context, key string) (wait time.Duration, ok bool)
	// check reports what spend would, without charging.
	check(ctx context.Context, key string) (wait time.Duration, ok bool)
	// reserve is spend, made undoable: undo gives the charge back, when
	// what it paid for did not happen; calling it again does nothing. undo
	// is nil when nothing was charged.
	reserve(ctx context.Context, key string) (undo func(), wait time.Duration, ok bool)
}

// budgetSlots is how many slots a window is cut into. A budget counts the
// slots that overlap the last window, one more than fit in it, so a steady
// client gets Events per Window + Window/budgetSlots: 20/21 of the nominal
// rate (57 a minute under the default 60 per 1m), in exchange for a promise
// that holds for every interval and costs a fixed 108 bytes a key (84 of
// them counters).
const budgetSlots = 20

// slidingWindow is one key's charges, counted per slot of its window.
//
// Any interval of length Window lies within budgetSlots+1 consecutive slots,
// and a charge is only made while the last budgetSlots+1 slots hold fewer
// than Events: so no interval of length Window ever holds more than Events.
//
// Handlers of one app with different window lengths share the key's
// window (two sites, or a reload or a fleet's rolling change midway). The
// slots only ever get longer while they hold charges: a shorter window is
// judged over the longer slots, counting as many as cover it (stricter,
// never looser), so no handler's charges can make another's forgotten.
type slidingWindow struct {
	mu     sync.Mutex // guards the fields below
	slot   time.Duration
	last   int64 // the latest slot index seen: this key's clock never moves back
	counts [budgetSlots + 1]uint32
}

// charge is spend (or check, when spend is false) for one key at now, under
// events per window. When it charges, chargedSlot is where, in slots of
// unit, for uncharge.
func (w *slidingWindow) charge(now time.Time, events int, window time.Duration, spend bool) (wait time.Duration, ok bool, chargedSlot int64, unit time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	want := slotLength(window)
	if want > w.slot {
		// The first charge, or a longer window than the slots cover.
		w.rescale(now, want)
	}
	current := max(now.UnixNano()/int64(w.slot), w.last)
	w.advance(current)
	if want < w.slot && w.counted(current, budgetSlots+1) == 0 {
		// A shorter window, and nothing counted that shorter slots would
		// lose: take them.
		w.slot, w.last = want, now.UnixNano()/int64(want)
		current = w.last
	}
	unit = w.slot
	span := slotsCovering(want, unit)

	counted := w.counted(current, span)
	if counted < events {
		if spend {
			w.counts[current%int64(len(w.counts))]++
		}
		return 0, true, current, unit
	}
	// Refused: wait until enough of the oldest slots have left the window.
	for oldest := current - span + 1; oldest <= current; oldest++ {
		counted -= int(w.counts[oldest%int64(len(w.counts))])
		if counted < events {
			leaves := time.Unix(0, (oldest+span)*int64(unit))
			return max(leaves.Sub(now), time.Millisecond), false, 0, 0
		}
	}
	// Only reachable when events shrank below what one slot holds.
	return window, false, 0, 0
}

// slotsCovering is how many consecutive slots of length unit any interval
// of a window whose own slots are want long lies within: the window's own
// budgetSlots+1 when unit is want, fewer longer ones otherwise. The window
// is taken as budgetSlots*want, which is at least its length.
func slotsCovering(want, unit time.Duration) int64 {
	return min((budgetSlots*int64(want)+int64(unit)-1)/int64(unit), budgetSlots) + 1
}

// counted is the sum of the span slots up to current.
func (w *slidingWindow) counted(current, span int64) int {
	n := 0
	for i := current - span + 1; i <= current; i++ {
		n += int(w.counts[i%int64(len(w.counts))])
	}
	return n
}

// uncharge gives back a charge made in slot under slotLength, if it is
// still counted: a charge that has left the window, or that longer slots
// moved, is not given back twice.
func (w *slidingWindow) uncharge(slot int64, slotLength time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := slot % int64(len(w.counts))
	if w.slot == slotLength && slot > w.last-int64(len(w.counts)) && w.counts[i] > 0 {
		w.counts[i]--
	}
}

// slotLength is the length of one of a window's slots, rounded up: the
// counted slots must cover at least the window.
func slotLength(window time.Duration) time.Duration {
	return max((window+budgetSlots-1)/budgetSlots, 1)
}

// advance empties the slots between the last one seen and current.
func (w *slidingWindow) advance(current int64) {
	for i := w.last + 1; i <= current && i <= w.last+int64(len(w.counts)); i++ {
		w.counts[i%int64(len(w.counts))] = 0
	}
	w.last = max(w.last, current)
}

// rescale adopts longer slots (a longer window): every charge still
// counted at now moves to the current slot, so it is forgiven no earlier
// than a full new window from now. Never a refill.
func (w *slidingWindow) rescale(now time.Time, slot time.Duration) {
	if w.slot > 0 {
		w.advance(max(now.UnixNano()/int64(w.slot), w.last)) // what has left the old slots stays gone
	}
	var total uint32
	for i, n := range w.counts {
		total += n
		w.counts[i] = 0
	}
	current := now.UnixNano() / int64(slot)
	w.slot, w.last = slot, current
	w.counts[current%int64(len(w.counts))] = total
}

// budgetTable holds the in-memory windows of one configuration's players
// or IPs, shared by its handlers across reloads (each applies its own
// limits); bounded, so memory stays flat however many keys arrive. Dropping
// the least recently used key can only forgive a client, never punish one
// wrongly.
type budgetTable = leasedLRU[string, *slidingWindow]

func newBudgetTable() *budgetTable { return newLeasedLRU[string, *slidingWindow]() }

// memoryBudget is one handler's view of a budget table: the table's windows
// under the handler's limits and clock.
type memoryBudget struct {
	table *budgetTable
	limit Budget
	now   func() time.Time
}

func newMemoryBudget(table *budgetTable, limit Budget, now func() time.Time) memoryBudget {
	return memoryBudget{table: table, limit: limit, now: now}
}

func (b memoryBudget) window(key string) *slidingWindow {
	if w, ok := b.table.Get(key); ok {
		return w
	}
	// Two first charges for one key may race here; PeekOrAdd keeps one
	// window for both.
	w := new(slidingWindow)
	if prev, found, _ := b.table.PeekOrAdd(key, w); found {
		return prev
	}
	return w
}

func (b memoryBudget) spend(ctx context.Context, key string) (time.Duration, bool) {
	_, wait, ok := b.reserve(ctx, key)
	return wait, ok
}

func (b memoryBudget) reserve(_ context.Context, key string) (func(), time.Duration, bool) {
	w, window := b.window(key), time.Duration(b.limit.Window)
	// The clock is read here, at the charge, never earlier: a slow request
	// cannot hand its budget a time that has passed.
	wait, ok, slot, unit := w.charge(b.now(), b.limit.Events, window, true)
	if !ok {
		return nil, wait, false
	}
	return onlyOnce(func() { w.uncharge(slot, unit) }), 0, true
}

func (b memoryBudget) check(_ context.Context, key string) (time.Duration, bool) {
	wait, ok, _, _ := b.window(key).charge(b.now(), b.limit.Events, time.Duration(b.limit.Window), false)
	return wait, ok
}

// unlimited is the budget of ip_budget off.
type unlimited struct{}

func (unlimited) spend(context.Context, string) (time.Duration, bool) { return 0, true }
func (unlimited) check(context.Context, string) (time.Duration, bool) { return 0, true }
func (unlimited) reserve(context.Context, string) (func(), time.Duration, bool) {
	return nil, 0, true
}

// onlyOnce makes an undo safe to call more than once: a second call must not
// give back another charge of the same slot.
func onlyOnce(undo func()) func() {
	var once sync.Once
	return func() { once.Do(undo) }
}

// ipBudgetKey is the budget key of a client address: an IPv4 address as it
// is, an IPv6 address by its /64, the prefix one subscriber is given, so
// that the 2^64 addresses of one subscriber share one budget.
func ipBudgetKey(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Is4() {
		return ip // an IPv4 address parses only in its one dotted-decimal form
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String()
	}
	prefix, _ := addr.WithZone("").Prefix(64)
	return prefix.String()
}

package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// memoryBudgetAt is a fresh in-memory budget of events per window on clock,
// over a table of size keys.
func memoryBudgetAt(clock *testkit.Clock, events int, window time.Duration, size int) memoryBudget {
	return newMemoryBudget(leasedBudgetTable(size), Budget{Events: events, Window: caddy.Duration(window)}, clock.Now)
}

// spendAll spends from key until refused (or far past any sane budget) and
// returns how many charges passed and the wait of the refusal.
func spendAll(store budgetStore, key string) (passed int, wait time.Duration) {
	for passed < 10000 {
		wait, ok := store.spend(context.Background(), key)
		if !ok {
			return passed, wait
		}
		passed++
	}
	return passed, 0
}

// The promise: at most events charges in ANY interval of length window,
// whatever the rhythm of the client.
func TestBudgetNeverExceedsEventsInAnyWindow(t *testing.T) {
	for _, tc := range []struct {
		events int
		window time.Duration
	}{
		{60, time.Minute},
		{100, time.Minute},
		{5, 10 * time.Second},
		{1, time.Hour},
		{7, 3 * time.Second},
	} {
		t.Run(fmt.Sprintf("%d per %s", tc.events, tc.window), func(t *testing.T) {
			clock := newTestClock()
			budget := memoryBudgetAt(clock, tc.events, tc.window, 10)
			rng := rand.New(rand.NewPCG(uint64(tc.events), uint64(tc.window)))
			var charged []time.Time
			const windows = 30
			end := testEpoch.Add(windows * tc.window)
			for clock.Now().Before(end) {
				// Bursts and pauses: mostly quick retries, sometimes a long wait.
				step := time.Duration(rng.Int64N(int64(tc.window) / int64(4*tc.events)))
				if rng.IntN(20) == 0 {
					step = time.Duration(rng.Int64N(int64(tc.window)))
				}
				clock.Advance(step + time.Nanosecond)
				if _, ok := budget.spend(context.Background(), "oAlice"); ok {
					charged = append(charged, clock.Now())
				}
			}
			for i, at := range charged {
				inWindow := 0
				for _, other := range charged[:i+1] {
					if at.Sub(other) < tc.window {
						inWindow++
					}
				}
				if inWindow > tc.events {
					t.Fatalf("%d charges in the window ending %s, want at most %d", inWindow, at.Sub(testEpoch), tc.events)
				}
			}
		})
	}
}

// A client that keeps asking gets the documented sustained rate: events per
// window and one slot (20/21 of the nominal rate), less the first window.
func TestBudgetSustainedRate(t *testing.T) {
	clock := newTestClock()
	budget := memoryBudgetAt(clock, 60, time.Minute, 10)
	charged := 0
	for end := testEpoch.Add(21 * time.Minute); clock.Now().Before(end); clock.Advance(100 * time.Millisecond) {
		if _, ok := budget.spend(context.Background(), "oAlice"); ok {
			charged++
		}
	}
	// 21 minutes are 20 windows of 63s: 20 x 60 charges, give or take the
	// last window's.
	if charged < 20*60 || charged > 21*60 {
		t.Errorf("%d charges in 21 minutes at 60 per 1m, want 1200 to 1260", charged)
	}
}

func TestBudgetRefusalSaysWhenTheOldestChargeLeaves(t *testing.T) {
	clock := newTestClock() // at the start of a slot of every window below
	budget := memoryBudgetAt(clock, 3, time.Minute, 10)
	budget.spend(context.Background(), "oAlice")
	clock.Advance(20 * time.Second)
	budget.spend(context.Background(), "oAlice")
	budget.spend(context.Background(), "oAlice")
	// The first charge sits in the slot [0s, 3s): it leaves the counted
	// slots at 63s, 43s from now.
	wait, ok := budget.spend(context.Background(), "oAlice")
	if ok || wait != 43*time.Second {
		t.Fatalf("spend on a full budget: ok=%v wait %s, want refused for 43s", ok, wait)
	}
	if again, ok := budget.check(context.Background(), "oAlice"); ok || again != wait {
		t.Errorf("check: ok=%v wait %s, want what spend said", ok, again)
	}
	clock.Advance(wait - time.Millisecond)
	if _, ok := budget.spend(context.Background(), "oAlice"); ok {
		t.Fatal("charged before the wait was over")
	}
	clock.Advance(time.Millisecond)
	if _, ok := budget.spend(context.Background(), "oAlice"); !ok {
		t.Error("refused once the wait was over")
	}
}

func TestBudgetCheckDoesNotSpend(t *testing.T) {
	budget := memoryBudgetAt(newTestClock(), 3, time.Minute, 10)
	for range 10 {
		if _, ok := budget.check(context.Background(), "oAlice"); !ok {
			t.Fatal("check refused a fresh key")
		}
	}
	if passed, _ := spendAll(budget, "oAlice"); passed != 3 {
		t.Fatalf("after checks, %d charges passed, want 3", passed)
	}
}

// A budget's clock only moves forward: a charge stamped earlier than one
// already made (a slow request that read the time before its body) lands in
// the latest slot, and cannot find room in the past.
func TestBudgetClockNeverMovesBack(t *testing.T) {
	clock := newTestClock()
	budget := memoryBudgetAt(clock, 2, time.Minute, 10)
	clock.Advance(time.Hour)
	spendAll(budget, "oAlice")
	clock.Set(testEpoch) // an hour earlier: every slot of then is empty
	if _, ok := budget.spend(context.Background(), "oAlice"); ok {
		t.Fatal("a charge stamped in the past found room")
	}
	clock.Set(testEpoch.Add(time.Hour + 30*time.Second))
	if _, ok := budget.spend(context.Background(), "oAlice"); ok {
		t.Fatal("the budget refilled after its clock was turned back")
	}
}

func TestBudgetEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	t.Run("an idle key pushed out starts fresh", func(t *testing.T) {
		budget := memoryBudgetAt(newTestClock(), 2, time.Minute, 2)
		spendAll(budget, "oAlice")
		budget.spend(ctx, "oBob")
		budget.spend(ctx, "oCarol") // pushes out oAlice, the least recently used
		if passed, _ := spendAll(budget, "oAlice"); passed != 2 {
			t.Errorf("evicted key: %d passed, want a fresh budget of 2", passed)
		}
	})
	t.Run("a key in use stays", func(t *testing.T) {
		budget := memoryBudgetAt(newTestClock(), 2, time.Minute, 2)
		spendAll(budget, "oAlice")
		budget.spend(ctx, "oBob")
		budget.spend(ctx, "oAlice") // refused, but a use all the same
		budget.spend(ctx, "oCarol") // pushes out oBob
		if _, ok := budget.spend(ctx, "oAlice"); ok {
			t.Error("a looping client escaped its budget because other keys arrived")
		}
	})
	t.Run("memory is bounded", func(t *testing.T) {
		budget := memoryBudgetAt(newTestClock(), 2, time.Minute, 100)
		for i := range 10000 {
			budget.spend(ctx, strconv.Itoa(i))
			budget.check(ctx, "checked-"+strconv.Itoa(i))
		}
		if n := budget.table.Len(); n > 100 {
			t.Errorf("%d keys tracked, want at most budget_size 100", n)
		}
	})
}

// A reload reads the same windows under the new handler's limits: a spent
// budget is not refilled, whatever the new limits.
func TestBudgetReloadAppliesNewLimitsWithoutRefill(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reloaded Budget
		passed   int // right after the reload
	}{
		{"raised", Budget{Events: 20, Window: caddy.Duration(time.Minute)}, 10},
		{"lowered", Budget{Events: 5, Window: caddy.Duration(time.Minute)}, 0},
		{"longer window", Budget{Events: 10, Window: caddy.Duration(time.Hour)}, 0},
		{"shorter window", Budget{Events: 10, Window: caddy.Duration(10 * time.Second)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newTestClock()
			old := memoryBudgetAt(clock, 10, time.Minute, 10)
			spendAll(old, "oAlice")
			reloaded := newMemoryBudget(old.table, tc.reloaded, clock.Now)
			if passed, _ := spendAll(reloaded, "oAlice"); passed != tc.passed {
				t.Errorf("%d passed after the reload, want %d", passed, tc.passed)
			}
			clock.Advance(2 * time.Duration(tc.reloaded.Window))
			if passed, _ := spendAll(reloaded, "oAlice"); passed != tc.reloaded.Events {
				t.Errorf("%d passed once the new window was over, want %d", passed, tc.reloaded.Events)
			}
		})
	}
}

func TestIPBudgetKeyGroupsIPv6By64(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", true},
		{"2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{"198.51.100.1", "198.51.100.2", false},
		{"::ffff:198.51.100.1", "198.51.100.1", true},
		{"fe80::1%eth0", "fe80::2%eth1", true},
	} {
		if got := ipBudgetKey(tc.a) == ipBudgetKey(tc.b); got != tc.same {
			t.Errorf("%s and %s share a budget: %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
	// An IPv4 address is its own key, in the one form netip writes it.
	for _, ip := range []string{"198.51.100.1", "::ffff:198.51.100.1", "0.0.0.0", "255.255.255.255"} {
		if got, want := ipBudgetKey(ip), netip.MustParseAddr(ip).Unmap().String(); got != want {
			t.Errorf("ipBudgetKey(%s) = %s, want %s", ip, got, want)
		}
	}
}

func TestBudgetWithinWechatQuota(t *testing.T) {
	for _, tc := range []struct {
		events int
		window time.Duration
		ok     bool
	}{
		{100, time.Minute, true},
		{60, time.Minute, true},
		{50, 30 * time.Second, true},
		{1, time.Second, true},
		{101, time.Minute, false},
		{200, 2 * time.Minute, false}, // a burst of 200 is past the minute quota
		{10, time.Second, false},      // 600 per minute as a rate
		{100, 59 * time.Second, false},
	} {
		err := Budget{Events: tc.events, Window: caddy.Duration(tc.window)}.withinQuota(wechatPlatform)
		if (err == nil) != tc.ok {
			t.Errorf("%d per %s: got %v, want ok=%v", tc.events, tc.window, err, tc.ok)
		}
	}
}

func TestBudgetIPIsChargedBeforeWechat(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, func(h *Handler) {
		h.IPBudget = &Budget{Events: 2, Window: caddy.Duration(time.Minute)}
	})
	const nat = "198.51.100.1"
	for _, player := range []string{"alice", "bob"} {
		if w, forwarded := serveTestLogin(t, h, player+".1", nat); !forwarded {
			t.Fatalf("%s: %d %s", player, w.Code, w.Body)
		}
	}
	w, forwarded := serveTestLogin(t, h, "carol.1", nat)
	wantRateLimited(t, w, forwarded, "63")
	if sim.Calls() != 2 {
		t.Errorf("WeChat saw %d calls, want 2: an address over budget must cost no call", sim.Calls())
	}

	clock.Advance(10*time.Second + 500*time.Millisecond)
	w, forwarded = serveTestLogin(t, h, "carol.2", nat)
	wantRateLimited(t, w, forwarded, "53") // 52.5s, rounded up

	if w, forwarded := serveTestLogin(t, h, "dave.1", "198.51.100.2"); !forwarded {
		t.Errorf("another address was refused: %d %s", w.Code, w.Body)
	}
	clock.Advance(52*time.Second + 500*time.Millisecond)
	if w, forwarded := serveTestLogin(t, h, "carol.3", nat); !forwarded {
		t.Errorf("refused once Retry-After had passed: %d %s", w.Code, w.Body)
	}
}

func TestBudgetPlayerIsChargedPerOpenID(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withBudget(2, time.Minute))
	for _, code := range []string{"alice.1", "alice.2", "bob.1"} {
		if w, forwarded := serveTestLogin(t, h, code, "198.51.100.1"); !forwarded {
			t.Fatalf("%s: %d %s", code, w.Code, w.Body)
		}
	}
	w, forwarded := serveTestLogin(t, h, "alice.3", "198.51.100.2") // another address does not help
	wantRateLimited(t, w, forwarded, "63")
	if got := sim.CallsFor(wechatsim.OpenID(testAppID, "alice")); got != 3 {
		t.Errorf("WeChat exchanged %d codes for alice, want 3 (the openid is only known after the call)", got)
	}
	clock.Advance(15 * time.Second)
	w, forwarded = serveTestLogin(t, h, "alice.4", "198.51.100.2")
	wantRateLimited(t, w, forwarded, "48")
}

// WeChat's own per-player minute quota (45011) is passed on as a 429 that
// tells the client to come back next minute.
func TestBudgetWechatQuotaIsRateLimited(t *testing.T) {
	var calls atomic.Int32
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, `{"errcode":45011,"errmsg":"api minute-quota reach limit  mustslower  retry next minute, rid: 6543-abcd"}`)
	}))
	t.Cleanup(fake.Close)
	clock := newTestClock()
	clock.Advance(15*time.Second + 500*time.Millisecond) // 12:00:45.5, 14.5s before the next minute
	h := newClockedHandler(t, fake.URL, clock)

	w, forwarded := serveTestLogin(t, h, "alice.1", "198.51.100.1")
	if w.Code != http.StatusTooManyRequests || forwarded {
		t.Fatalf("got %d %s, want 429", w.Code, w.Body)
	}
	var body errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error != refusalRateLimited || body.Errcode == nil || *body.Errcode != 45011 {
		t.Errorf("body %s, want rate_limited with errcode 45011", w.Body)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("45011 was retried: %d calls", n)
	}
	if got := w.Header().Get("Retry-After"); got != "15" {
		t.Errorf("Retry-After %q, want 15: until the next minute, rounded up", got)
	}
}

// BenchmarkBudgetSpend is the cost of one budget charge.
func BenchmarkBudgetSpend(b *testing.B) {
	ctx := context.Background()
	b.Run("hot key allowed", func(b *testing.B) {
		clock := newTestClock()
		budget := memoryBudgetAt(clock, 60, time.Minute, defaultBudgetSize)
		b.ReportAllocs()
		for b.Loop() {
			clock.Advance(time.Second) // one event frees up per charge
			if _, ok := budget.spend(ctx, "oAliceAliceAliceAliceAlice01"); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("hot key refused", func(b *testing.B) {
		budget := memoryBudgetAt(newTestClock(), 60, time.Minute, defaultBudgetSize)
		spendAll(budget, "oAliceAliceAliceAliceAlice01")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := budget.spend(ctx, "oAliceAliceAliceAliceAlice01"); ok {
				b.Fatal("allowed")
			}
		}
	})
	b.Run("many keys", func(b *testing.B) {
		keys := budgetKeys(defaultBudgetSize)
		budget := memoryBudgetAt(newTestClock(), 60, time.Minute, defaultBudgetSize)
		for _, key := range keys { // steady state: every key already tracked
			budget.spend(ctx, key)
		}
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			budget.spend(ctx, keys[i%len(keys)])
			i++
		}
	})
}

// budgetKey is a distinct 28-character openid-like key for i.
func budgetKey(i int) string {
	return fmt.Sprintf("o%027d", i)
}

func budgetKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = budgetKey(i)
	}
	return keys
}

// BenchmarkBudgetMemoryPerKey measures the heap a budget table holds per
// tracked key, the key string included, with every key's window in use.
func BenchmarkBudgetMemoryPerKey(b *testing.B) {
	for _, tc := range []struct {
		name       string
		size, keys int
	}{
		{"size 1M, 1M keys", 1_000_000, 1_000_000},
		// Past budget_size the table stays at its size.
		{"size 100k, 1M keys", 100_000, 1_000_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var bytesPerKey float64
			for b.Loop() {
				b.StopTimer()
				before := heapAlloc()
				b.StartTimer()
				budget := memoryBudgetAt(newTestClock(), 60, time.Minute, tc.size)
				for i := range tc.keys {
					budget.spend(context.Background(), budgetKey(i))
				}
				b.StopTimer()
				if n := budget.table.Len(); n != tc.size {
					b.Fatalf("%d keys tracked, want %d", n, tc.size)
				}
				bytesPerKey = float64(heapAlloc()-before) / float64(tc.size)
				runtime.KeepAlive(budget)
				b.StartTimer()
			}
			b.ReportMetric(bytesPerKey, "B/key")
		})
	}
}

func heapAlloc() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A reserved charge given back leaves the budget as if it had not been
// made; one that has left the window, or that a new window moved, is not
// given back.
func TestBudgetReserveUndo(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	budget := memoryBudgetAt(clock, 2, time.Minute, 10)
	undo, _, ok := budget.reserve(ctx, "oAlice")
	if !ok {
		t.Fatal("a fresh budget refused")
	}
	budget.spend(ctx, "oAlice")
	undo()
	undo() // a second time gives back nothing more
	if passed, _ := spendAll(budget, "oAlice"); passed != 1 {
		t.Errorf("after giving back one of two charges, %d passed, want 1", passed)
	}

	clock.Advance(time.Hour)
	undo, _, _ = budget.reserve(ctx, "oBob")
	clock.Advance(2 * time.Minute) // the charge has left the window
	budget.spend(ctx, "oBob")
	budget.spend(ctx, "oBob")
	undo()
	if _, ok := budget.spend(ctx, "oBob"); ok {
		t.Error("giving back a charge that had left the window refilled the budget")
	}

	undo, _, _ = budget.reserve(ctx, "oCarol")
	budget.spend(ctx, "oCarol")
	rewindowed := newMemoryBudget(budget.table, Budget{Events: 2, Window: caddy.Duration(time.Hour)}, clock.Now)
	rewindowed.check(ctx, "oCarol") // the new window moves both charges
	undo()
	if _, ok := rewindowed.spend(ctx, "oCarol"); ok {
		t.Error("a charge moved by a new window was given back")
	}
}

// The promise, for every handler of a key whatever the others' windows:
// whenever one admits a charge at t, the charges (any handler's, not given
// back) in the last min(its window, theirs) are at most its events; and a
// refusal's wait, with nothing else happening, lets it pass then. Random
// handlers of four window lengths, gaps from 10ms to a minute, refunds.
func TestBudgetPromiseHoldsForEveryWindow(t *testing.T) {
	limits := []Budget{
		{Events: 10, Window: caddy.Duration(time.Minute)},
		{Events: 10, Window: caddy.Duration(10 * time.Second)},
		{Events: 3, Window: caddy.Duration(time.Second)},
		{Events: 50, Window: caddy.Duration(time.Hour)},
	}
	gaps := []time.Duration{10 * time.Millisecond, 300 * time.Millisecond, 3 * time.Second, time.Minute}
	type charge struct {
		at       time.Time
		window   time.Duration
		refunded bool
	}
	type reservation struct {
		c          *charge
		slot       int64
		slotLength time.Duration
	}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 9))
		now := testEpoch
		w := new(slidingWindow)
		var charges []*charge
		var reserved []reservation
		for step := range 3000 {
			now = now.Add(time.Duration(rng.ExpFloat64() * float64(gaps[rng.IntN(len(gaps))])))
			limit := limits[rng.IntN(len(limits))]
			window := time.Duration(limit.Window)
			if rng.IntN(10) == 0 && len(reserved) > 0 {
				i := rng.IntN(len(reserved))
				r := reserved[i]
				reserved = append(reserved[:i], reserved[i+1:]...)
				before := w.counts
				w.uncharge(r.slot, r.slotLength)
				r.c.refunded = before != w.counts
				continue
			}
			before := slidingWindow{slot: w.slot, last: w.last, counts: w.counts}
			wait, ok, slot, slotLength := w.charge(now, limit.Events, window, true)
			if !ok {
				if _, ok, _, _ := before.charge(now.Add(wait), limit.Events, window, true); !ok {
					t.Fatalf("seed %d step %d: %d per %s said wait %v, and still refused then", seed, step, limit.Events, window, wait)
				}
				continue
			}
			c := &charge{at: now, window: window}
			charges = append(charges, c)
			counted := 0
			for _, x := range charges {
				if !x.refunded && x.at.After(now.Add(-min(window, x.window))) {
					counted++
				}
			}
			if counted > limit.Events {
				t.Fatalf("seed %d step %d: %d per %s admitted a charge making %d in its window", seed, step, limit.Events, window, counted)
			}
			if rng.IntN(3) == 0 {
				reserved = append(reserved, reservation{c, slot, slotLength})
			}
		}
	}
}

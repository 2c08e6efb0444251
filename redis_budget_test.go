package wechatlogin

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// scriptBudget is a Redis budget whose script runs on clock instead of the
// server's.
func scriptBudget(gw gateway, kind string, limit Budget, clock *testkit.Clock) *redisBudget {
	return tableScriptBudget(gw, kind, limit, leasedBudgetTable(100), clock)
}

// tableScriptBudget is scriptBudget counting the gateway's own charges in
// table: the table its handlers share.
func tableScriptBudget(gw gateway, kind string, limit Budget, table *budgetTable, clock *testkit.Clock) *redisBudget {
	b := gw.budget(kind, limit, table, clock.Now)
	b.scriptClock = clock.Now
	return b
}

// scriptAloneBudget is a Redis budget that answers as its script alone
// does: the gateway's memory in front of it allows everything (it decides
// first, by the very algorithm a test compares the script with, and would
// hide the script's mistakes). The script runs on scriptClock.
func scriptAloneBudget(gw gateway, kind string, limit Budget, scriptClock func() time.Time) *redisBudget {
	b := gw.budget(kind, limit, leasedBudgetTable(100), scriptClock)
	b.known = newMemoryBudget(leasedBudgetTable(100), Budget{Events: math.MaxInt32, Window: limit.Window}, scriptClock)
	b.scriptClock = scriptClock
	return b
}

// neverBehindRealTime reads clock for a script, after moving it on by at
// least the real time since the script last read it (in whole
// milliseconds, the script's unit): Redis expires a budget's key on its
// own clock, and a key gone while the test's clock, late on a loaded
// machine, still counts its charges makes Redis forget them.
func neverBehindRealTime(clock *testkit.Clock) func() time.Time {
	var given, givenAt time.Time
	return func() time.Time {
		now := clock.Now()
		if !givenAt.IsZero() {
			if floor := given.Add(time.Since(givenAt) + time.Millisecond - 1).Truncate(time.Millisecond); floor.After(now) {
				now = floor
				clock.Set(now)
			}
		}
		given, givenAt = now, time.Now()
		return now
	}
}

func TestRedisBudgetAgreesWithMemory(t *testing.T) {
	// The script and the memory budget are one algorithm: driven by the same
	// clock through the same requests, they give the same answers, waits
	// included.
	gw := newRedisGateway(t)
	for _, limit := range []Budget{
		{Events: 5, Window: caddy.Duration(2 * time.Second)},
		{Events: 60, Window: caddy.Duration(time.Minute)},
		{Events: 1, Window: caddy.Duration(20 * time.Millisecond)},
	} {
		t.Run(fmt.Sprintf("%d per %s", limit.Events, time.Duration(limit.Window)), func(t *testing.T) {
			clock := newTestClock()
			shared := scriptAloneBudget(gw, "player", limit, neverBehindRealTime(clock))
			memory := newMemoryBudget(leasedBudgetTable(100), limit, clock.Now)
			rng := rand.New(rand.NewPCG(1, uint64(limit.Events)))
			assertBudgetsAgree(t, gw, clock, rng, 2000, time.Duration(limit.Window)/time.Duration(2*limit.Events),
				func(int) (budgetStore, budgetStore) { return shared, memory })
		})
	}
}

// Handlers with different window lengths on one key (two sites of an app,
// or a fleet midway through a rolling change of the window) still give the
// same answers in memory and in Redis, whichever of them each request
// meets.
func TestRedisBudgetAgreesWithMemoryAcrossWindowLengths(t *testing.T) {
	gw := newRedisGateway(t)
	limits := []Budget{
		{Events: 6, Window: caddy.Duration(2 * time.Second)},
		{Events: 4, Window: caddy.Duration(400 * time.Millisecond)},
		{Events: 8, Window: caddy.Duration(6 * time.Second)},
	}
	clock := newTestClock()
	scriptClock := neverBehindRealTime(clock)
	table := leasedBudgetTable(100)
	var shared, memory []budgetStore
	for _, limit := range limits {
		shared = append(shared, scriptAloneBudget(gw, "player", limit, scriptClock))
		memory = append(memory, newMemoryBudget(table, limit, clock.Now))
	}
	rng := rand.New(rand.NewPCG(7, 11))
	assertBudgetsAgree(t, gw, clock, rng, 3000, 100*time.Millisecond, func(step int) (budgetStore, budgetStore) {
		// Long runs on one window length, then another, as handlers come
		// and go; sometimes a single request of another.
		h := (step / 200) % len(limits)
		if rng.IntN(5) == 0 {
			h = rng.IntN(len(limits))
		}
		return shared[h], memory[h]
	})
}

// assertBudgetsAgree drives a Redis and a memory budget (as pick chooses
// them at each step) through the same charges, checks and refunds, gap
// apart on average in whole milliseconds (Redis' unit) with now and then a
// pause of 30 gaps, and fails at the first answer they disagree on, waits
// included.
func assertBudgetsAgree(t *testing.T, gw gateway, clock *testkit.Clock, rng *rand.Rand, steps int, gap time.Duration, pick func(step int) (shared, memory budgetStore)) {
	t.Helper()
	ctx := context.Background()
	refused := 0
	var undos [][2]func() // reservations of both, to give back later
	for step := range steps {
		pause := gap
		if rng.IntN(30) == 0 {
			pause = 30 * gap
		}
		clock.Advance(time.Duration(rng.ExpFloat64()*float64(pause)) / time.Millisecond * time.Millisecond)
		shared, memory := pick(step)
		var gotWait, wantWait time.Duration
		var gotOK, wantOK bool
		switch op := rng.IntN(8); {
		case op < 2:
			gotWait, gotOK = shared.check(ctx, t.Name())
			wantWait, wantOK = memory.check(ctx, t.Name())
		case op == 2 && len(undos) > 0:
			i := rng.IntN(len(undos))
			undos[i][0]()
			undos[i][1]()
			undos = append(undos[:i], undos[i+1:]...)
			continue
		default:
			var gotUndo, wantUndo func()
			gotUndo, gotWait, gotOK = shared.reserve(ctx, t.Name())
			wantUndo, wantWait, wantOK = memory.reserve(ctx, t.Name())
			if gotOK && wantOK && rng.IntN(4) == 0 {
				undos = append(undos, [2]func(){gotUndo, wantUndo})
			}
		}
		if gotOK != wantOK || gotWait != wantWait {
			t.Fatalf("step %d: Redis says (%v, %v), memory (%v, %v)", step, gotWait, gotOK, wantWait, wantOK)
		}
		if !gotOK {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("the sequence never filled the budget: it tests nothing")
	}
	if gw.redis.down.Load() {
		t.Fatal("Redis failed: the answers came from memory")
	}
}

// A longer window moves to the present only the charges still counted:
// not those the shorter window has already let go of, whether or not a
// request has been seen since (the memory budget empties old slots on
// every request, the script only when it charges). The script is compared
// alone: the gateway's memory in front of it allows at most the longer
// window's events, and would hide a script that forgets what it moved.
// The windows are hours long and Redis is given a minute to answer, so
// that nothing depends on how fast the machine is: Redis expires a
// budget's key on its own clock, (k+1) slots after its last charge, and a
// key gone while the test's clock still counts it made the script forget
// the charge still counted (8 through, want 7, seen under load).
func TestBudgetLongerWindowMovesOnlyWhatIsStillCounted(t *testing.T) {
	gw := newGateway(t, testkit.StartRedis(t).Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(maxRedisTimeout) })
	ctx := context.Background()
	short := Budget{Events: 6, Window: caddy.Duration(2 * time.Hour)}
	long := Budget{Events: 8, Window: caddy.Duration(6 * time.Hour)}
	for _, pause := range []time.Duration{time.Hour, 1000 * time.Hour} {
		t.Run(pause.String(), func(t *testing.T) {
			clock := newTestClock()
			table := leasedBudgetTable(10)
			stores := map[string][2]budgetStore{
				"redis":  {scriptAloneBudget(gw, "player", short, clock.Now), scriptAloneBudget(gw, "player", long, clock.Now)},
				"memory": {newMemoryBudget(table, short, clock.Now), newMemoryBudget(table, long, clock.Now)},
			}
			key := t.Name()
			for _, s := range stores {
				for range 5 {
					s[0].spend(ctx, key)
				}
			}
			clock.Advance(90 * time.Minute)
			for _, s := range stores {
				s[0].spend(ctx, key) // the sixth, in the short window until 3.6h
				s[0].check(ctx, key)
			}
			clock.Advance(pause) // the first five have left the short window; after 1000h, all
			stillCounted := 1
			if pause > time.Duration(short.Window) {
				stillCounted = 0
			}
			for name, s := range stores {
				passed := 0
				for range 10 {
					if _, ok := s[1].spend(ctx, key); ok {
						passed++
					}
				}
				if want := long.Events - stillCounted; passed != want {
					t.Errorf("%s: the 6h window let %d charges through, want %d: only what the 2h window still counted may move", name, passed, want)
				}
			}
			if gw.redis.down.Load() {
				t.Fatal("Redis failed: the answers came from memory")
			}
		})
	}
}

// A shorter window's requests never make a longer window's charges
// forgotten: a client whose logins alternate between two handlers of one
// app gets no more than the longer window allows (an attacker review found
// 60 a minute through a 10-a-minute budget when each new length moved the
// charges).
func TestBudgetShorterWindowNeverForgivesALongerOnesCharges(t *testing.T) {
	long := Budget{Events: 10, Window: caddy.Duration(time.Minute)}
	short := Budget{Events: 10, Window: caddy.Duration(10 * time.Second)}
	stores := map[string]func(t *testing.T, clock *testkit.Clock) (long, short budgetStore){
		"memory": func(t *testing.T, clock *testkit.Clock) (budgetStore, budgetStore) {
			table := leasedBudgetTable(10)
			return newMemoryBudget(table, long, clock.Now), newMemoryBudget(table, short, clock.Now)
		},
		"redis": func(t *testing.T, clock *testkit.Clock) (budgetStore, budgetStore) {
			gw := newRedisGateway(t)
			return scriptBudget(gw, "player", long, clock), scriptBudget(gw, "player", short, clock)
		},
	}
	for name, newStores := range stores {
		t.Run(name+", refunds", func(t *testing.T) {
			// A charge made under the shorter window, over the longer
			// one's slots, is given back where it was made.
			ctx := context.Background()
			clock := newTestClock()
			longer, shorter := newStores(t, clock)
			longer.spend(ctx, "oAlice")
			undo, _, ok := shorter.reserve(ctx, "oAlice")
			if !ok {
				t.Fatal("refused")
			}
			undo()
			passed := 1
			for {
				if _, ok := longer.spend(ctx, "oAlice"); !ok {
					break
				}
				passed++
			}
			if passed != 10 {
				t.Errorf("%d charges counted after one was given back, want 10", passed)
			}
		})
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clock := newTestClock()
			longer, shorter := newStores(t, clock)
			passed := 0
			for range 6 { // a minute: fill the long window, touch the short one, wait
				for {
					if _, ok := longer.spend(ctx, "oMallory"); !ok {
						break
					}
					passed++
				}
				shorter.check(ctx, "oMallory")
				clock.Advance(11 * time.Second)
				shorter.check(ctx, "oMallory")
			}
			if passed > 10 {
				t.Errorf("%d charges passed a budget of 10 a minute within a minute", passed)
			}
		})
	}
}

func TestRedisBudgetClockNeverMovesBack(t *testing.T) {
	gw := newRedisGateway(t)
	ctx := context.Background()
	start := testEpoch
	clock := testkit.NewClock(start)
	budget := scriptBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(time.Second)}, clock)
	budget.spend(ctx, "oAlice")
	budget.spend(ctx, "oAlice")
	// The server's clock steps back an hour: the budget still remembers.
	clock.Set(start.Add(-time.Hour))
	if _, ok := budget.spend(ctx, "oAlice"); ok {
		t.Fatal("a clock stepping back gave the budget back")
	}
	clock.Set(start.Add(time.Second + 50*time.Millisecond)) // the slot after the window
	if _, ok := budget.spend(ctx, "oAlice"); !ok {
		t.Fatal("the budget did not refill after its window")
	}
}

func TestRedisBudgetNewWindowKeepsItsCharges(t *testing.T) {
	// A reload that changes the window moves the charges counted so far to
	// the present, as the memory budget does: no refill, and no budget
	// stranded by slot indexes counted in another unit.
	gw := newRedisGateway(t)
	ctx := context.Background()
	clock := newTestClock()
	minute := scriptBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(time.Minute)}, clock)
	minute.spend(ctx, "oAlice")
	minute.spend(ctx, "oAlice")
	longer := scriptBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(2 * time.Minute)}, clock)
	if _, ok := longer.spend(ctx, "oAlice"); ok {
		t.Fatal("a new window refilled the budget")
	}
	clock.Advance(2*time.Minute + 6*time.Second) // the new window and its partial slot
	if _, ok := longer.spend(ctx, "oAlice"); !ok {
		t.Fatal("the charges moved to the new window never left it")
	}
	shorter := scriptBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(10 * time.Second)}, clock)
	if _, ok := shorter.check(ctx, "oAlice"); !ok {
		t.Fatal("a shorter window stranded the budget")
	}
}

func TestRedisBudgetHoldsAcrossGatewaysInAnyWindow(t *testing.T) {
	// Two gateways, one Redis, charges in turn on the server's own clock:
	// at most events in any window for the pair. Each charge happened at a
	// server time within its call, so events+1 successes closer than the
	// window (from the first's start to the last's end) break the promise.
	srv := testkit.StartRedis(t)
	limit := Budget{Events: 5, Window: caddy.Duration(time.Second)}
	var gateways []budgetStore
	for n := range 2 {
		gw := newGateway(t, srv.Addr(), n, nil)
		gateways = append(gateways, gw.budget("player", limit, leasedBudgetTable(100), time.Now))
	}
	ctx := context.Background()
	type charge struct{ start, end time.Time }
	var charged []charge
	perGateway := [2]int{}
	for i := 0; time.Duration(len(charged)) < 3*time.Duration(limit.Events) && i < 100000; i++ {
		n := i % len(gateways)
		start := time.Now()
		_, ok := gateways[n].spend(ctx, "oAlice")
		if ok {
			charged = append(charged, charge{start, time.Now()})
			perGateway[n]++
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(charged) < 3*limit.Events || perGateway[0] == 0 || perGateway[1] == 0 {
		t.Fatalf("charges per gateway %v: the test did not exercise the window", perGateway)
	}
	for i := 0; i+limit.Events < len(charged); i++ {
		first, last := charged[i], charged[i+limit.Events]
		if span := last.end.Sub(first.start); span <= time.Duration(limit.Window) {
			t.Fatalf("charges %d to %d (%d of them) fit in %s, less than the window", i, i+limit.Events, limit.Events+1, span)
		}
	}
}

func TestRedisBudgetFallbackIsTheFleetShare(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, func(c *RedisConfig) { c.FleetSize = 3 })
	budget := gw.budget("ip", Budget{Events: 7, Window: caddy.Duration(time.Minute)}, leasedBudgetTable(100), time.Now)
	ctx := context.Background()
	srv.Stop()
	for i := range 2 { // 7/3 is 2 per gateway while they cannot share
		if _, ok := budget.spend(ctx, "203.0.113.7"); !ok {
			t.Fatalf("login %d refused within this gateway's share", i+1)
		}
	}
	if _, ok := budget.check(ctx, "203.0.113.7"); ok {
		t.Error("check allows past this gateway's share")
	}
	if wait, ok := budget.spend(ctx, "203.0.113.7"); ok || wait <= 0 {
		t.Errorf("spend past the share: (%v, %v), want a refusal with a wait", wait, ok)
	}
	if !gw.redis.down.Load() {
		t.Error("Redis is not marked down")
	}
}

func TestFleetShareNeverLocksOut(t *testing.T) {
	for _, tc := range []struct{ events, fleet, want int }{{60, 1, 60}, {60, 3, 20}, {7, 3, 2}, {2, 3, 1}, {1, 1000, 1}} {
		if got := fleetShare(Budget{Events: tc.events}, tc.fleet).Events; got != tc.want {
			t.Errorf("%d over %d gateways: %d, want %d", tc.events, tc.fleet, got, tc.want)
		}
	}
}

func TestBudgetSlotCoversTheWindow(t *testing.T) {
	for _, tc := range []struct {
		window time.Duration
		want   int64
	}{{time.Minute, 3000}, {2 * time.Second, 100}, {1010 * time.Millisecond, 51}, {time.Millisecond, 1}, {0, 1}} {
		if got := budgetSlotMillis(tc.window); got != tc.want || got*budgetSlots < tc.window.Milliseconds() {
			t.Errorf("%s: slot %dms, want %dms", tc.window, got, tc.want)
		}
	}
}

// BenchmarkBudgetSpendMemoryOrRedis compares a charge in memory with one
// through a real Redis on loopback (one EVALSHA round trip), with the
// processor time each costs this process and Redis.
func BenchmarkBudgetSpendMemoryOrRedis(b *testing.B) {
	limit := Budget{Events: 1 << 30, Window: caddy.Duration(time.Minute)}
	b.Run("memory", func(b *testing.B) {
		budget := newMemoryBudget(leasedBudgetTable(100000), limit, time.Now)
		reportCPU(b, nil, func() { benchmarkSpend(b, budget) })
	})
	b.Run("redis", func(b *testing.B) {
		srv := testkit.StartRedis(b)
		gw := newGateway(b, srv.Addr(), 0, func(c *RedisConfig) { c.Timeout = caddy.Duration(time.Second) })
		budget := gw.budget("player", limit, leasedBudgetTable(100000), time.Now)
		reportCPU(b, srv, func() { benchmarkSpend(b, budget) })
		if gw.redis.down.Load() {
			b.Fatal("Redis failed during the benchmark: the numbers are memory's")
		}
	})
}

func benchmarkSpend(b *testing.B, budget budgetStore) {
	ctx := context.Background()
	var mu sync.Mutex
	next := 0
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		key := fmt.Sprintf("oPlayer%d", next)
		next++
		mu.Unlock()
		for pb.Next() {
			if _, ok := budget.spend(ctx, key); !ok {
				b.Error("refused")
				return
			}
		}
	})
}

// A charge reserved through Redis and given back leaves the fleet's budget
// as if it had not been made; giving it back twice gives back nothing more.
func TestRedisBudgetReserveUndo(t *testing.T) {
	gw := newRedisGateway(t)
	ctx := context.Background()
	clock := newTestClock()
	budget := scriptBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(time.Minute)}, clock)
	undo, _, ok := budget.reserve(ctx, "oAlice")
	if !ok || undo == nil {
		t.Fatal("a fresh budget refused")
	}
	budget.spend(ctx, "oAlice")
	undo()
	undo()
	if _, ok := budget.spend(ctx, "oAlice"); !ok {
		t.Fatal("the charge given back was still counted")
	}
	if _, ok := budget.spend(ctx, "oAlice"); ok {
		t.Error("giving back twice gave back two charges")
	}
}

// A refund made after Redis lost the budget (restarted empty, or evicted)
// gives back nothing: the charge it was for is gone, and the budget now
// counts others.
func TestRedisBudgetRefundAfterTheBudgetWasLost(t *testing.T) {
	gw := newRedisGateway(t)
	ctx := context.Background()
	clock := newTestClock()
	budget := scriptBudget(gw, "player", Budget{Events: 1, Window: caddy.Duration(time.Minute)}, clock)
	undo, _, ok := budget.reserve(ctx, "oAlice")
	if !ok {
		t.Fatal("a fresh budget refused")
	}
	if err := gw.redis.client.FlushAll(ctx).Err(); err != nil { // as a restart empty would
		t.Fatal(err)
	}
	// Another gateway charges the budget made anew (this one still counts
	// its own charge).
	other := scriptBudget(newGateway(t, gw.redis.addrs, 1, nil), "player", Budget{Events: 1, Window: caddy.Duration(time.Minute)}, clock)
	if _, ok := other.spend(ctx, "oAlice"); !ok {
		t.Fatal("the budget made anew refused")
	}
	undo()
	if _, ok := other.spend(ctx, "oAlice"); ok {
		t.Error("the refund of a lost charge gave back another")
	}
}

// The attacker's burst: a player's charges through Redis, then a fallback
// on the gateway (Redis frozen mid-window), then Redis back. With
// fleet_size 1 the fallback's share is the whole budget, so a fallback that
// forgot the charges made through Redis, or a Redis that never heard of
// the charges made in memory, would let the player have the budget twice
// in one window. The gateway counts every charge it allowed: never more
// than the budget in the window, whichever way the gateway serves.
func TestRedisBudgetFallbackNeverPassesTheBudget(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, nil)
	limit := Budget{Events: 6, Window: caddy.Duration(time.Minute)}
	budget := gw.budget("player", limit, leasedBudgetTable(100), time.Now)
	ctx := context.Background()
	burst := func(player string, n int) (passed int) {
		for range n {
			if _, ok := budget.spend(ctx, player); ok {
				passed++
			}
		}
		return passed
	}

	if passed := burst("oAttacker", 10); passed != limit.Events {
		t.Fatalf("%d of the first burst passed through Redis, want %d", passed, limit.Events)
	}
	if passed := burst("oLater", 2); passed != 2 {
		t.Fatalf("%d of oLater's first logins passed through Redis, want 2", passed)
	}
	srv.Freeze()
	// oLater's logins find Redis silent: served from memory.
	if passed := burst("oLater", 10); passed != limit.Events-2 {
		t.Errorf("the fallback let %d of oLater's charges through, want %d: the rest of the budget", passed, limit.Events-2)
	}
	gw.waitDown(t)
	if passed := burst("oAttacker", 10); passed > 0 {
		t.Errorf("the fallback let %d more charges through after the budget was spent through Redis", passed)
	}

	srv.Resume()
	testkit.WaitFor(t, "Redis is used again", func() bool { return !gw.redis.down.Load() })
	if passed := burst("oLater", 10); passed > 0 {
		t.Errorf("back on Redis, %d more of oLater's charges passed after the fallback spent the budget", passed)
	}
}

// TestRedisBudgetIgnoresWhatItCannotRead: a budget's field that is not a
// slot's count (written by hand, or by another program sharing the
// prefix) counts nothing, rather than making the script fail, which would
// count as Redis failing and send the gateway to its memory; so does a
// count that is not a number when a charge is given back or made.
func TestRedisBudgetIgnoresWhatItCannotRead(t *testing.T) {
	gw := newRedisGateway(t)
	ctx := context.Background()
	clock := newTestClock()
	budget := scriptAloneBudget(gw, "player", Budget{Events: 2, Window: caddy.Duration(time.Minute)}, clock.Now)
	gw.redis.client.HSet(ctx, budget.key("oAlice"), "by-hand", "1")
	if _, ok := budget.spend(ctx, "oAlice"); !ok {
		t.Error("over an unreadable field, a fresh budget refused")
	}
	if gw.redis.down.Load() {
		t.Fatal("an unreadable budget field counts as Redis failing")
	}
	if _, ok := budget.spend(ctx, "oAlice"); !ok {
		t.Error("the unreadable field was counted as a charge")
	}
	if _, ok := budget.spend(ctx, "oAlice"); ok {
		t.Error("the budget lost its charges")
	}

	undo, _, ok := budget.reserve(ctx, "oBob")
	if !ok {
		t.Fatal("a fresh budget refused")
	}
	fields := gw.redis.client.HGetAll(ctx, budget.key("oBob")).Val()
	gw.redis.client.HSet(ctx, budget.key("oBob"), fields["last"], "not a count")
	undo()
	if gw.redis.down.Load() {
		t.Fatal("giving back a charge whose count is unreadable counts as Redis failing")
	}
	if _, ok := budget.spend(ctx, "oBob"); !ok || gw.redis.down.Load() {
		t.Errorf("a charge in a slot whose count is unreadable: allowed %v, Redis down %v; want allowed on Redis", ok, gw.redis.down.Load())
	}
}

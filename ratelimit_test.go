package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const (
	rlAppID  = "wxbudgettest"
	rlSecret = "budget-test-secret"
)

// rlEpoch is where fake clocks start: mid-minute, so that a minute boundary
// is never hit by accident.
var rlEpoch = time.Date(2026, 11, 23, 12, 0, 20, 0, time.UTC)

// rlNewClock is a fake clock standing at rlEpoch.
func rlNewClock() *testkit.Clock { return testkit.NewClock(rlEpoch) }

func rlTable(events int, window time.Duration, size int) budgetView {
	return newBudgetView(newBudgetTable(size), Budget{Events: events, Window: caddy.Duration(window)})
}

// rlReload is what a reload does to a budget: the same buckets, resized,
// under the new handler's limits.
func rlReload(v budgetView, b Budget, size int) budgetView {
	v.buckets.Resize(size)
	return newBudgetView(v.budgetTable, b)
}

// rlSpend takes from key until refused (or far past any sane budget) and
// returns how many takes passed and the wait of the refusal.
func rlSpend(store tokenBudgetStore, key string, now time.Time) (passed int, wait time.Duration) {
	for passed < 10000 {
		wait, ok := store.take(key, now)
		if !ok {
			return passed, wait
		}
		passed++
	}
	return passed, 0
}

// rlNear compares durations computed in floating point.
func rlNear(got, want time.Duration) bool {
	d := got - want
	return -time.Microsecond < d && d < time.Microsecond
}

func TestBudgetPassesEventsPerWindowThenRefuses(t *testing.T) {
	for _, tc := range []struct {
		events int
		window time.Duration
		wait   time.Duration // until one event is free again
	}{
		{60, time.Minute, time.Second},
		{100, time.Minute, 600 * time.Millisecond},
		{10, time.Second, 100 * time.Millisecond},
		{1, time.Hour, time.Hour},
	} {
		t.Run(fmt.Sprintf("%d per %s", tc.events, tc.window), func(t *testing.T) {
			table := rlTable(tc.events, tc.window, 10)
			passed, wait := rlSpend(table, "oAlice", rlEpoch)
			if passed != tc.events {
				t.Fatalf("%d takes passed, want %d", passed, tc.events)
			}
			if !rlNear(wait, tc.wait) {
				t.Errorf("refused with wait %s, want %s", wait, tc.wait)
			}
			// A refused take spends nothing: asking again waits no longer.
			if again, ok := table.take("oAlice", rlEpoch); ok || !rlNear(again, tc.wait) {
				t.Errorf("second refusal: ok=%v wait %s, want refused with %s", ok, again, tc.wait)
			}
			// The wait is what is left of it, not a constant.
			if later, ok := table.take("oAlice", rlEpoch.Add(tc.wait/4)); ok || !rlNear(later, tc.wait*3/4) {
				t.Errorf("a quarter of the wait later: ok=%v wait %s, want refused with %s", ok, later, tc.wait*3/4)
			}
			if _, ok := table.take("oAlice", rlEpoch.Add(tc.wait)); !ok {
				t.Error("refused once the wait was over")
			}
		})
	}
}

func TestBudgetRefillsOverTime(t *testing.T) {
	table := rlTable(60, time.Minute, 10)
	if passed, _ := rlSpend(table, "oAlice", rlEpoch); passed != 60 {
		t.Fatalf("%d passed, want 60", passed)
	}
	if passed, _ := rlSpend(table, "oAlice", rlEpoch.Add(30*time.Second)); passed != 30 {
		t.Errorf("half a window later %d passed, want 30", passed)
	}
	// However long the player is away, the bucket holds one window at most.
	if passed, _ := rlSpend(table, "oAlice", rlEpoch.Add(24*time.Hour)); passed != 60 {
		t.Errorf("a day later %d passed, want 60", passed)
	}
}

func TestBudgetCheckDoesNotSpend(t *testing.T) {
	table := rlTable(3, time.Minute, 10)
	for range 10 {
		if _, ok := table.check("oAlice", rlEpoch); !ok {
			t.Fatal("check refused a fresh key")
		}
	}
	if passed, takeWait := rlSpend(table, "oAlice", rlEpoch); passed != 3 {
		t.Fatalf("after checks, %d takes passed, want 3", passed)
	} else if checkWait, ok := table.check("oAlice", rlEpoch); ok || !rlNear(checkWait, takeWait) || !rlNear(checkWait, 20*time.Second) {
		t.Errorf("check on a spent key: ok=%v wait %s, want refused with %s like take", ok, checkWait, takeWait)
	}
}

func TestBudgetEvictsLeastRecentlyUsed(t *testing.T) {
	t.Run("an idle key pushed out starts fresh", func(t *testing.T) {
		table := rlTable(2, time.Minute, 2)
		rlSpend(table, "oAlice", rlEpoch)
		table.take("oBob", rlEpoch)
		table.take("oCarol", rlEpoch) // pushes out oAlice, the least recently used
		if passed, _ := rlSpend(table, "oAlice", rlEpoch); passed != 2 {
			t.Errorf("evicted key: %d passed, want a fresh budget of 2", passed)
		}
	})
	t.Run("a key in use stays", func(t *testing.T) {
		table := rlTable(2, time.Minute, 2)
		rlSpend(table, "oAlice", rlEpoch)
		table.take("oBob", rlEpoch)
		table.take("oAlice", rlEpoch) // refused, but a use all the same
		table.take("oCarol", rlEpoch) // pushes out oBob
		if _, ok := table.take("oAlice", rlEpoch); ok {
			t.Error("a looping client escaped its budget because other keys arrived")
		}
	})
	t.Run("memory is bounded", func(t *testing.T) {
		table := rlTable(2, time.Minute, 100)
		for i := range 10000 {
			table.take(strconv.Itoa(i), rlEpoch)
			table.check("checked-"+strconv.Itoa(i), rlEpoch)
		}
		if n := table.buckets.Len(); n > 100 {
			t.Errorf("%d keys tracked, want at most budget_size 100", n)
		}
	})
}

func TestBudgetConfigureAppliesToExistingKeysWithoutRefill(t *testing.T) {
	t.Run("raised", func(t *testing.T) {
		table := rlTable(10, time.Minute, 10)
		rlSpend(table, "oAlice", rlEpoch)
		table = rlReload(table, Budget{Events: 20, Window: caddy.Duration(time.Minute)}, 10)
		wait, ok := table.take("oAlice", rlEpoch)
		if ok {
			t.Fatal("the new budget refilled a spent key")
		}
		if !rlNear(wait, 3*time.Second) {
			t.Errorf("wait %s, want 3s (one event every 3s at 20 per minute)", wait)
		}
		if passed, _ := rlSpend(table, "oAlice", rlEpoch.Add(time.Hour)); passed != 20 {
			t.Errorf("refilled under the new budget: %d passed, want 20", passed)
		}
	})
	t.Run("lowered", func(t *testing.T) {
		table := rlTable(10, time.Minute, 10)
		table.take("oAlice", rlEpoch)
		table = rlReload(table, Budget{Events: 5, Window: caddy.Duration(time.Minute)}, 10)
		if passed, _ := rlSpend(table, "oAlice", rlEpoch); passed != 5 {
			t.Errorf("%d passed after lowering the budget to 5, want 5", passed)
		}
	})
	t.Run("resized", func(t *testing.T) {
		table := rlTable(10, time.Minute, 10)
		for i := range 10 {
			table.take(strconv.Itoa(i), rlEpoch)
		}
		table = rlReload(table, Budget{Events: 10, Window: caddy.Duration(time.Minute)}, 3)
		if n := table.buckets.Len(); n != 3 {
			t.Errorf("%d keys tracked after budget_size 3, want 3", n)
		}
	})
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
		err := Budget{Events: tc.events, Window: caddy.Duration(tc.window)}.withinWechatQuota()
		if (err == nil) != tc.ok {
			t.Errorf("%d per %s: got %v, want ok=%v", tc.events, tc.window, err, tc.ok)
		}
	}
}

// rlSim starts a simulator knowing the test app.
func rlSim(t testing.TB) (*wechatsim.Server, string) {
	t.Helper()
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: rlAppID, Secret: rlSecret}}})
	return sim, simURL
}

// rlHandler provisions a handler for the test app on clock.
func rlHandler(t testing.TB, endpoint string, clock *testkit.Clock, configure func(*Handler)) *Handler {
	t.Helper()
	return mtHandler(t, endpoint, func(h *Handler) {
		h.AppID, h.AppSecret, h.now = rlAppID, rlSecret, clock.Now
		if configure != nil {
			configure(h)
		}
	})
}

// rlLogin serves a login with code from ip and reports the response and
// whether it was forwarded.
func rlLogin(t testing.TB, h *Handler, code, ip string) (*httptest.ResponseRecorder, bool) {
	t.Helper()
	r, _ := mtRequest(context.Background(), http.MethodGet, "/wx/login?code="+code, nil)
	caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, ip)
	up := &mtUpstream{}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, up.handler()); err != nil {
		t.Fatal(err)
	}
	return w, up.count() == 1
}

// rlWantRateLimited checks a 429 as the contract words it.
func rlWantRateLimited(t *testing.T, w *httptest.ResponseRecorder, forwarded bool, retryAfter string) {
	t.Helper()
	var body errorBody
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != http.StatusTooManyRequests || body.Error != errRateLimited || forwarded {
		t.Fatalf("got %d %s (forwarded: %v), want 429 rate_limited and nothing forwarded", w.Code, w.Body, forwarded)
	}
	if got := w.Header().Get("Retry-After"); got != retryAfter {
		t.Errorf("Retry-After %q, want %q", got, retryAfter)
	}
}

func TestBudgetIPIsChargedBeforeWechat(t *testing.T) {
	sim, endpoint := rlSim(t)
	clock := rlNewClock()
	h := rlHandler(t, endpoint, clock, func(h *Handler) {
		h.IPBudget = &Budget{Events: 2, Window: caddy.Duration(time.Minute)}
	})
	const nat = "198.51.100.1"
	for _, player := range []string{"alice", "bob"} {
		if w, forwarded := rlLogin(t, h, player+".1", nat); !forwarded {
			t.Fatalf("%s: %d %s", player, w.Code, w.Body)
		}
	}
	w, forwarded := rlLogin(t, h, "carol.1", nat)
	rlWantRateLimited(t, w, forwarded, "30")
	if sim.Calls() != 2 {
		t.Errorf("WeChat saw %d calls, want 2: an address over budget must cost no call", sim.Calls())
	}

	clock.Advance(10 * time.Second)
	w, forwarded = rlLogin(t, h, "carol.2", nat)
	rlWantRateLimited(t, w, forwarded, "20")

	if w, forwarded := rlLogin(t, h, "dave.1", "198.51.100.2"); !forwarded {
		t.Errorf("another address was refused: %d %s", w.Code, w.Body)
	}
	clock.Advance(20 * time.Second)
	if w, forwarded := rlLogin(t, h, "carol.3", nat); !forwarded {
		t.Errorf("refused once Retry-After had passed: %d %s", w.Code, w.Body)
	}
}

func TestBudgetPlayerIsChargedPerOpenID(t *testing.T) {
	sim, endpoint := rlSim(t)
	clock := rlNewClock()
	h := rlHandler(t, endpoint, clock, func(h *Handler) {
		h.Budget = &Budget{Events: 2, Window: caddy.Duration(time.Minute)}
	})
	for _, code := range []string{"alice.1", "alice.2", "bob.1"} {
		if w, forwarded := rlLogin(t, h, code, "198.51.100.1"); !forwarded {
			t.Fatalf("%s: %d %s", code, w.Code, w.Body)
		}
	}
	w, forwarded := rlLogin(t, h, "alice.3", "198.51.100.2") // another address does not help
	rlWantRateLimited(t, w, forwarded, "30")
	if got := sim.CallsFor(wechatsim.OpenID(rlAppID, "alice")); got != 3 {
		t.Errorf("WeChat exchanged %d codes for alice, want 3 (the openid is only known after the call)", got)
	}
	clock.Advance(15 * time.Second)
	w, forwarded = rlLogin(t, h, "alice.4", "198.51.100.2")
	rlWantRateLimited(t, w, forwarded, "15")
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
	clock := rlNewClock()
	clock.Advance(25 * time.Second) // 12:00:45, 15s before the next minute
	h := rlHandler(t, fake.URL, clock, nil)

	w, forwarded := rlLogin(t, h, "alice.1", "198.51.100.1")
	if w.Code != http.StatusTooManyRequests || forwarded {
		t.Fatalf("got %d %s, want 429", w.Code, w.Body)
	}
	var body errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error != errRateLimited || body.Errcode == nil || *body.Errcode != 45011 {
		t.Errorf("body %s, want rate_limited with errcode 45011", w.Body)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("45011 was retried: %d calls", n)
	}
	if got := w.Header().Get("Retry-After"); got != "15" {
		t.Errorf("Retry-After %q, want 15: until the next minute", got)
	}
}

// BenchmarkBudgetTake is the cost of one budget charge.
func BenchmarkBudgetTake(b *testing.B) {
	b.Run("hot key allowed", func(b *testing.B) {
		table := rlTable(60, time.Minute, defaultBudgetSize)
		now := rlEpoch
		b.ReportAllocs()
		for b.Loop() {
			now = now.Add(time.Second) // one event refills per take
			if _, ok := table.take("oAliceAliceAliceAliceAlice01", now); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("hot key refused", func(b *testing.B) {
		table := rlTable(60, time.Minute, defaultBudgetSize)
		rlSpend(table, "oAliceAliceAliceAliceAlice01", rlEpoch)
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := table.take("oAliceAliceAliceAliceAlice01", rlEpoch); ok {
				b.Fatal("allowed")
			}
		}
	})
	b.Run("many keys", func(b *testing.B) {
		keys := rlKeys(defaultBudgetSize)
		table := rlTable(60, time.Minute, defaultBudgetSize)
		for _, key := range keys { // steady state: every key already tracked
			table.take(key, rlEpoch)
		}
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			table.take(keys[i%len(keys)], rlEpoch)
			i++
		}
	})
}

// rlKey is a distinct 28-character openid-like key for i.
func rlKey(i int) string {
	return fmt.Sprintf("o%027d", i)
}

func rlKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = rlKey(i)
	}
	return keys
}

// BenchmarkBudgetMemoryPerKey measures the heap a budget table holds per
// tracked key, the key string included, with every key's bucket in use.
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
				before := rlHeapAlloc()
				b.StartTimer()
				table := rlTable(60, time.Minute, tc.size)
				for i := range tc.keys {
					table.take(rlKey(i), rlEpoch)
				}
				b.StopTimer()
				if n := table.buckets.Len(); n != tc.size {
					b.Fatalf("%d keys tracked, want %d", n, tc.size)
				}
				bytesPerKey = float64(rlHeapAlloc()-before) / float64(tc.size)
				runtime.KeepAlive(table)
				b.StartTimer()
			}
			b.ReportMetric(bytesPerKey, "B/key")
		})
	}
}

func rlHeapAlloc() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

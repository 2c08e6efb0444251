package wechatlogin

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// stateReferences is how many provisioned handlers hold the state of the
// test app at endpoint.
func stateReferences(endpoint string) int {
	refs, _ := appStates.References(stateKey(testAppID, endpoint, testSecret))
	return refs
}

// A reload provisions the new handler before cleaning up the old one; the
// state in between must carry over, so a looping client stays limited.
func TestStateReloadKeepsBudgets(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	old := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	if w, forwarded := serveTestLogin(t, old, "alice.1", "198.51.100.1"); !forwarded {
		t.Fatalf("first login: %d %s", w.Code, w.Body)
	}
	w, forwarded := serveTestLogin(t, old, "alice.2", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")

	reloaded := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	if refs := stateReferences(endpoint); refs != 2 {
		t.Fatalf("%d references to the app state during the reload, want 2", refs)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	w, forwarded = serveTestLogin(t, reloaded, "alice.3", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")

	// A reload that raises the budget applies it without refilling: the
	// window that counted one login has room for one more.
	raised := newClockedHandler(t, endpoint, clock, withBudget(2, time.Minute))
	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if w, forwarded := serveTestLogin(t, raised, "alice.4", "198.51.100.1"); !forwarded {
		t.Fatalf("under the raised budget: %d %s", w.Code, w.Body)
	}
	w, forwarded = serveTestLogin(t, raised, "alice.5", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")

	// Once the last handler is cleaned up the state is released, and the
	// next config starts afresh.
	if err := raised.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if refs, ok := appStates.References(stateKey(testAppID, endpoint, testSecret)); ok || refs != 0 {
		t.Fatalf("the app state is still held (%d references) after the last cleanup", refs)
	}
	fresh := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	if w, forwarded := serveTestLogin(t, fresh, "alice.6", "198.51.100.1"); !forwarded {
		t.Errorf("a fresh config kept released state: %d %s", w.Code, w.Body)
	}
}

// A config that fails to provision must not touch the running one's state.
func TestStateFailedProvisionTouchesNothing(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	running := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	serveTestLogin(t, running, "alice.1", "198.51.100.1")

	bad := &Handler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint, now: clock.Now,
		Budget: &Budget{Events: 2, Window: caddy.Duration(time.Second)}} // over WeChat's quota
	if err := provisionHandler(t, bad); err == nil {
		t.Fatal("a budget over WeChat's quota was accepted")
	}
	if err := bad.Cleanup(); err != nil { // Caddy cleans up a module whose provision failed
		t.Fatal(err)
	}
	if refs := stateReferences(endpoint); refs != 1 {
		t.Errorf("%d references after a failed provision, want 1", refs)
	}
	w, forwarded := serveTestLogin(t, running, "alice.2", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")
}

// The code cache carries over a reload; each handler reads it under its own
// cache_ttl.
func TestStateReloadKeepsCodeCache(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	withCache := func(ttl time.Duration, size int) func(*Handler) {
		return func(h *Handler) {
			d := caddy.Duration(ttl)
			h.CacheTTL, h.CacheSize = &d, size
		}
	}
	old := newClockedHandler(t, endpoint, clock, withCache(5*time.Minute, 100))
	serveTestLogin(t, old, "alice.cached", "198.51.100.1")

	resized := newClockedHandler(t, endpoint, clock, withCache(5*time.Minute, 50))
	if w, forwarded := serveTestLogin(t, resized, "alice.cached", "198.51.100.1"); !forwarded || sim.Calls() != 1 {
		t.Errorf("after a reload changing cache_size the cached code was not reused: %d, %d calls", w.Code, sim.Calls())
	}

	clock.Advance(90 * time.Second)
	retimed := newClockedHandler(t, endpoint, clock, withCache(time.Minute, 50))
	if w, _ := serveTestLogin(t, retimed, "alice.cached", "198.51.100.1"); w.Code != http.StatusUnauthorized || sim.Calls() != 2 {
		t.Errorf("90s after the login, under cache_ttl 1m: %d with %d calls, want it expired (401 code_used from WeChat)", w.Code, sim.Calls())
	}
	if w, forwarded := serveTestLogin(t, old, "alice.cached", "198.51.100.1"); !forwarded || sim.Calls() != 2 {
		t.Errorf("under the old handler's cache_ttl of 5m the code is still cached: %d, %d calls", w.Code, sim.Calls())
	}
}

// A new config can provision fine and still be abandoned, when another
// module of it fails: the running handlers must keep their own limits, the
// size of their tables and their cached codes.
func TestStateAbandonedReloadChangesNothing(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	running := newClockedHandler(t, endpoint, clock, withBudget(2, time.Hour))
	if w, forwarded := serveTestLogin(t, running, "carol.1", "198.51.100.9"); !forwarded {
		t.Fatalf("carol's login: %d %s", w.Code, w.Body)
	}
	abandoned := newClockedHandler(t, endpoint, clock, withBudget(60, time.Minute), func(h *Handler) {
		h.BudgetSize = 1
		ttl := caddy.Duration(time.Minute)
		h.CacheTTL = &ttl
	})
	if err := abandoned.Cleanup(); err != nil {
		t.Fatal(err)
	}

	for _, code := range []string{"alice.1", "alice.2"} {
		if w, forwarded := serveTestLogin(t, running, code, "198.51.100.1"); !forwarded {
			t.Fatalf("%s: %d %s", code, w.Code, w.Body)
		}
	}
	serveTestLogin(t, running, "bob.1", "198.51.100.1") // would push alice out of a 1-key table
	w, forwarded := serveTestLogin(t, running, "alice.3", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "3750") // the 3-minute slot of 12:00:30 leaves the window at 13:03:00

	// The next good reload still has carol's code cached: her client's
	// retry gets her identity, not 40163.
	calls := sim.Calls()
	next := newClockedHandler(t, endpoint, clock)
	if err := running.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if w, forwarded := serveTestLogin(t, next, "carol.1", "198.51.100.9"); !forwarded || sim.Calls() != calls {
		t.Errorf("carol's code after the reload: %d, %d WeChat calls; want it served from the cache", w.Code, sim.Calls()-calls)
	}
}

package wechatlogin

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// rlReferences is how many provisioned handlers hold the test app's state.
func rlReferences() int {
	refs, _ := appStates.References(rlAppID)
	return refs
}

// A reload provisions the new handler before cleaning up the old one; the
// state in between must carry over, so a looping client stays limited.
func TestStateReloadKeepsBudgets(t *testing.T) {
	_, endpoint := rlSim(t)
	clock := rlNewClock()
	withBudget := func(events int) func(*Handler) {
		return func(h *Handler) { h.Budget = &Budget{Events: events, Window: caddy.Duration(time.Minute)} }
	}
	old := rlHandler(t, endpoint, clock, withBudget(1))
	if w, forwarded := rlLogin(t, old, "alice.1", "198.51.100.1"); !forwarded {
		t.Fatalf("first login: %d %s", w.Code, w.Body)
	}
	w, forwarded := rlLogin(t, old, "alice.2", "198.51.100.1")
	rlWantRateLimited(t, w, forwarded, "60")

	reloaded := rlHandler(t, endpoint, clock, withBudget(1))
	if refs := rlReferences(); refs != 2 {
		t.Fatalf("%d references to the app state during the reload, want 2", refs)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	w, forwarded = rlLogin(t, reloaded, "alice.3", "198.51.100.1")
	rlWantRateLimited(t, w, forwarded, "60")

	// A reload that raises the budget applies it without refilling.
	raised := rlHandler(t, endpoint, clock, withBudget(2))
	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	w, forwarded = rlLogin(t, raised, "alice.4", "198.51.100.1")
	rlWantRateLimited(t, w, forwarded, "30")

	// Once the last handler is cleaned up the state is released, and the
	// next config starts afresh.
	if err := raised.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if refs, ok := appStates.References(rlAppID); ok || refs != 0 {
		t.Fatalf("the app state is still held (%d references) after the last cleanup", refs)
	}
	fresh := rlHandler(t, endpoint, clock, withBudget(1))
	if w, forwarded := rlLogin(t, fresh, "alice.5", "198.51.100.1"); !forwarded {
		t.Errorf("a fresh config kept released state: %d %s", w.Code, w.Body)
	}
}

// A config that fails to provision must not touch the running one's state.
func TestStateFailedProvisionTouchesNothing(t *testing.T) {
	_, endpoint := rlSim(t)
	clock := rlNewClock()
	running := rlHandler(t, endpoint, clock, func(h *Handler) {
		h.Budget = &Budget{Events: 1, Window: caddy.Duration(time.Minute)}
	})
	rlLogin(t, running, "alice.1", "198.51.100.1")

	bad := &Handler{AppID: rlAppID, AppSecret: rlSecret, Endpoint: endpoint, now: clock.Now,
		Budget: &Budget{Events: 2, Window: caddy.Duration(time.Second)}} // over WeChat's quota
	if err := mtProvision(t, bad); err == nil {
		t.Fatal("a budget over WeChat's quota was accepted")
	}
	if err := bad.Cleanup(); err != nil { // Caddy cleans up a module whose provision failed
		t.Fatal(err)
	}
	if refs := rlReferences(); refs != 1 {
		t.Errorf("%d references after a failed provision, want 1", refs)
	}
	w, forwarded := rlLogin(t, running, "alice.2", "198.51.100.1")
	rlWantRateLimited(t, w, forwarded, "60")
}

// The code cache carries over a reload unless its TTL changes.
func TestStateReloadKeepsCodeCacheUnlessTTLChanges(t *testing.T) {
	sim, endpoint := rlSim(t)
	clock := rlNewClock()
	withCache := func(ttl time.Duration, size int) func(*Handler) {
		return func(h *Handler) {
			d := caddy.Duration(ttl)
			h.CacheTTL, h.CacheSize = &d, size
		}
	}
	old := rlHandler(t, endpoint, clock, withCache(5*time.Minute, 100))
	rlLogin(t, old, "alice.cached", "198.51.100.1")

	resized := rlHandler(t, endpoint, clock, withCache(5*time.Minute, 50))
	if w, forwarded := rlLogin(t, resized, "alice.cached", "198.51.100.1"); !forwarded || sim.Calls() != 1 {
		t.Errorf("after a reload changing cache_size the cached code was not reused: %d, %d calls", w.Code, sim.Calls())
	}

	retimed := rlHandler(t, endpoint, clock, withCache(time.Minute, 50))
	if w, _ := rlLogin(t, retimed, "alice.cached", "198.51.100.1"); w.Code != http.StatusUnauthorized || sim.Calls() != 2 {
		t.Errorf("after a reload changing cache_ttl: %d with %d calls, want a new cache (401 code_used from WeChat)", w.Code, sim.Calls())
	}
}

// A new config can provision fine and still be abandoned, when another
// module of it fails: the running handlers must keep their own limits, the
// size of their tables and their cached codes.
func TestStateAbandonedReloadChangesNothing(t *testing.T) {
	sim, endpoint := rlSim(t)
	clock := rlNewClock()
	running := rlHandler(t, endpoint, clock, func(h *Handler) {
		h.Budget = &Budget{Events: 2, Window: caddy.Duration(time.Hour)}
	})
	if w, forwarded := rlLogin(t, running, "carol.1", "198.51.100.9"); !forwarded {
		t.Fatalf("carol's login: %d %s", w.Code, w.Body)
	}
	abandoned := rlHandler(t, endpoint, clock, func(h *Handler) {
		h.Budget = &Budget{Events: 60, Window: caddy.Duration(time.Minute)}
		h.BudgetSize = 1
		ttl := caddy.Duration(time.Minute)
		h.CacheTTL = &ttl
	})
	if err := abandoned.Cleanup(); err != nil {
		t.Fatal(err)
	}

	for _, code := range []string{"alice.1", "alice.2"} {
		if w, forwarded := rlLogin(t, running, code, "198.51.100.1"); !forwarded {
			t.Fatalf("%s: %d %s", code, w.Code, w.Body)
		}
	}
	rlLogin(t, running, "bob.1", "198.51.100.1") // would push alice out of a 1-key table
	w, forwarded := rlLogin(t, running, "alice.3", "198.51.100.1")
	rlWantRateLimited(t, w, forwarded, "1800")

	// The next good reload still has carol's code cached: her client's
	// retry gets her identity, not 40163.
	calls := sim.Calls()
	next := rlHandler(t, endpoint, clock, nil)
	if err := running.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if w, forwarded := rlLogin(t, next, "carol.1", "198.51.100.9"); !forwarded || sim.Calls() != calls {
		t.Errorf("carol's code after the reload: %d, %d WeChat calls; want it served from the cache", w.Code, sim.Calls()-calls)
	}
}

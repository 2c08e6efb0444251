package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// Retry-After is the wait rounded up to whole seconds: a client that waits
// as long as it is told is not refused again for being early.
func TestRetryAfterRoundsTheWaitUp(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	if w, forwarded := serveTestLogin(t, h, "alice.1", "198.51.100.1"); !forwarded {
		t.Fatalf("first login: %d %s", w.Code, w.Body)
	}
	// The charge leaves the window 63 s after it was made (a minute, and the
	// three-second slot it was counted in); 300 ms later, 62.7 s remain.
	clock.Advance(300 * time.Millisecond)
	w, forwarded := serveTestLogin(t, h, "alice.2", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")

	clock.Advance(62600 * time.Millisecond)
	w, forwarded = serveTestLogin(t, h, "alice.3", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "1")
	clock.Advance(100 * time.Millisecond) // exactly the 62.7 s first told
	if w, forwarded := serveTestLogin(t, h, "alice.4", "198.51.100.1"); !forwarded {
		t.Errorf("a login after the wait Retry-After gave: %d %s", w.Code, w.Body)
	}
}

// A reload provisions the new handler before the old one is cleaned up: a
// login on the new one with a code whose WeChat call the old one has in
// flight joins that call instead of making a second, which WeChat would
// answer with 40163.
func TestCallInFlightIsSharedAcrossAReload(t *testing.T) {
	sim, _ := newTestSim(t)
	gate := testkit.NewGate(t, sim)
	old := newTestHandler(t, gate.URL)
	first := goLogin(context.Background(), old, testLogin{code: "alice.reload"})
	gate.AwaitArrivals(t, 1)

	reloaded := newTestHandler(t, gate.URL, withBudget(50, time.Minute)) // a changed config of the same app
	waiting := newWaitingContext(context.Background())
	second := goLogin(waiting, reloaded, testLogin{code: "alice.reload"})
	waiting.await(t)
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	gate.Open()

	want := wechatsim.OpenID(testAppID, "alice")
	for name, done := range map[string]<-chan loginResult{"old handler": first, "reloaded handler": second} {
		res := awaitLogin(t, done)
		if !res.forwarded() || res.upstream.Get("X-Wx-Openid") != want {
			t.Errorf("login on the %s: %d %s, want it forwarded as alice", name, res.w.Code, res.w.Body)
		}
	}
	if calls := gate.Arrivals(); calls != 1 {
		t.Errorf("WeChat saw %d calls for one code across the reload, want 1", calls)
	}
}

// A returning player whose client loops on login with fresh codes for three
// minutes makes at most 60 WeChat calls in any minute under the default
// budget, so WeChat never answers 45011 (its limit is 100 per minute); the
// rest is refused at the gateway with 429 and nothing forwarded.
func TestLoopingPlayerStaysWithinEveryWindow(t *testing.T) {
	clock := newTestClock()
	sim, endpoint := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret}}, Now: clock.Now})
	h := newClockedHandler(t, endpoint, clock, withSessions(nil), withBudget(60, time.Minute), func(h *Handler) {
		h.IPBudget = &Budget{Off: true} // one player's loop, not its address, is under test
	})
	first := testLogin{code: "alice.0"}.serve(context.Background(), h)
	token := first.w.Header().Get(wechatHeaders.session)
	if !first.forwarded() || token == "" {
		t.Fatalf("first login: %d %s, session %q", first.w.Code, first.w.Body, token)
	}
	calls := []time.Time{clock.Now()}

	const step = 250 * time.Millisecond
	start := clock.Now()
	for n := 1; clock.Now().Sub(start) < 3*time.Minute; n++ {
		clock.Advance(step)
		before := sim.Calls()
		res := testLogin{code: "alice." + strconv.Itoa(n), header: bearerHeader(token)}.serve(context.Background(), h)
		if sim.Calls() > before {
			calls = append(calls, clock.Now())
		}
		switch {
		case res.forwarded():
		case res.w.Code == http.StatusTooManyRequests:
			var body errorBody
			_ = json.Unmarshal(res.w.Body.Bytes(), &body)
			if body.Errcode != nil {
				t.Fatalf("login %d: WeChat refused the player with errcode %d", n, *body.Errcode)
			}
			if sim.Calls() != before {
				t.Fatalf("login %d: refused by the budget after a WeChat call", n)
			}
		default:
			t.Fatalf("login %d: %d %s", n, res.w.Code, res.w.Body)
		}
	}
	for i := 60; i < len(calls); i++ {
		if gap := calls[i].Sub(calls[i-60]); gap < time.Minute {
			t.Fatalf("WeChat calls %d to %d came within %v: 61 calls in less than a minute", i-60, i, gap)
		}
	}
	// The window refills: a sliding window lets through 60 in each of the
	// three minutes, not 60 once.
	if len(calls) < 3*60 {
		t.Errorf("%d WeChat calls in three minutes, want 180", len(calls))
	}
}

// A flight can finish between a login's look in the cache and its joining
// the flight: the login then leads a flight of its own, which must look in
// the cache again rather than call WeChat for a code WeChat has spent
// (40163, a spurious code_used).
func TestCodeStoreLooksAgainInsideTheFlight(t *testing.T) {
	clock := newTestClock()
	c := memoryCodesAt(clock, time.Minute, 10)
	k := newCodeKey("wx", credentials{code: "alice"})
	alice := Identity{OpenID: "oAlice"}
	// A look reads the clock only when it finds an entry, so the first look
	// is given an expired one, and the other flight finishes, storing its
	// result, while that look reads the clock.
	c.add(k, alice)
	clock.Advance(time.Minute)
	var otherFlight sync.Once
	c.now = func() time.Time {
		otherFlight.Do(func() { c.table.Add(k, cachedIdentity{Identity: alice, cachedAt: clock.Now()}) })
		return clock.Now()
	}
	var calls atomic.Int32
	res, outcome, _ := c.redeem(context.Background(), k, func(chargeFunc) codeResult {
		calls.Add(1)
		return codeResult{failure: wechatErrcodes.failure(errcodeCodeUsed, "")}
	})
	if calls.Load() != 0 {
		t.Errorf("the flight called WeChat %d times for a code whose result was cached", calls.Load())
	}
	if res.failure != nil || res.id != alice || outcome != redeemedFromCache {
		t.Errorf("got %+v %v, want alice from the cache", res, outcome)
	}
}

// Whoever holds a player's token (even one that expired, within the day it
// still names the player) cannot spend the player's budget with junk codes:
// the charge made before the call is given back when WeChat refuses the
// code. A token with codes of another player still stops the loop before
// WeChat: that charge is kept.
func TestSessionChargeGivenBackWhenWechatRefusesTheCode(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withSessions(nil), withBudget(2, time.Minute))
	first := testLogin{code: "alice.1"}.serve(context.Background(), h)
	token := first.w.Header().Get(wechatHeaders.session)
	if !first.forwarded() || token == "" {
		t.Fatalf("alice's first login: %d %s", first.w.Code, first.w.Body)
	}
	clock.Advance(3 * time.Hour) // the token has expired, but still names alice for a day
	for i := range 5 {
		res := testLogin{code: fmt.Sprintf("invalid.%d", i), header: bearerHeader(token)}.serve(context.Background(), h)
		if res.w.Code != http.StatusUnauthorized {
			t.Fatalf("a junk code with alice's token: %d %s, want 401 invalid_code", res.w.Code, res.w.Body)
		}
		// A high-risk account's codes (a bot farm's) prove nobody either.
		res = testLogin{code: fmt.Sprintf("blocked.%d", i), header: bearerHeader(token)}.serve(context.Background(), h)
		if res.w.Code != http.StatusForbidden {
			t.Fatalf("a blocked account's code with alice's token: %d %s, want 403 user_blocked", res.w.Code, res.w.Body)
		}
	}
	if res := (testLogin{code: "alice.2", header: bearerHeader(token)}).serve(context.Background(), h); !res.forwarded() {
		t.Errorf("alice after the junk codes: %d %s, want her budget untouched", res.w.Code, res.w.Body)
	}

	// Alice's token with bob's codes: charged to both, so the loop stops
	// at alice's budget, before WeChat.
	for i := range 10 {
		testLogin{code: fmt.Sprintf("bob.%d", i), header: bearerHeader(token)}.serve(context.Background(), h)
	}
	if got := sim.CallsFor(wechatsim.OpenID(testAppID, "bob")); got != 1 {
		t.Errorf("bob's codes with alice's token made %d WeChat calls, want 1: the loop stops at alice's budget", got)
	}
}

// WeChat's 45011 says the code's player (maybe the token's) is over its
// quota: it proves nobody, but the charge made for the player's session is
// kept, so a looping player with a session is stopped at the gateway, not
// sent to WeChat once per login.
func TestSessionChargeKeptWhenWechatAnswersQuota(t *testing.T) {
	sim, _ := newTestSim(t)
	var calls atomic.Int32
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 { // the login that earns the session
			sim.ServeHTTP(w, r)
			return
		}
		fmt.Fprint(w, `{"errcode":45011,"errmsg":"api minute-quota reach limit  mustslower  retry next minute, rid: 6543-abcd"}`)
	}))
	t.Cleanup(wechat.Close)
	clock := newTestClock()
	h := newClockedHandler(t, wechat.URL, clock, withSessions(nil), withBudget(1, time.Minute))
	first := testLogin{code: "alice.1"}.serve(context.Background(), h).checked(t)
	token := first.w.Header().Get(wechatHeaders.session)
	if !first.forwarded() || token == "" {
		t.Fatalf("alice's first login: %d %s", first.w.Code, first.w.Body)
	}
	clock.Advance(2 * time.Minute) // her budget is whole again

	for i := range 2 {
		res := testLogin{code: fmt.Sprintf("alice.loop.%d", i), header: bearerHeader(token)}.serve(context.Background(), h).checked(t)
		if res.w.Code != http.StatusTooManyRequests || res.forwarded() {
			t.Fatalf("login %d with alice's token: %d %s, want 429 and nothing forwarded", i+2, res.w.Code, res.w.Body)
		}
	}
	if got := calls.Load() - 1; got != 1 {
		t.Errorf("two logins with alice's token while WeChat answers 45011 made %d WeChat calls, want 1: the second is stopped by her budget", got)
	}
}

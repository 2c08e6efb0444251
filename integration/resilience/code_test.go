package resilience

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// TestOneCallPerCode: concurrent and repeated logins with one code cost one
// WeChat call and all get the same identity; without a cache (cache_ttl 0),
// a repeated code is WeChat's 40163. (Expiry at cache_ttl is tested on a
// fake clock, in the unit tests.)
func TestOneCallPerCode(t *testing.T) {
	const secret = "one-call-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxonecall", Secret: secret},
		{AppID: "wxnocache", Secret: secret},
	}})
	gate := testkit.NewGate(t, sim)
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("game", "wxonecall", secret, gate.URL, backend),
		testkit.Route("nocache", "wxnocache", secret, simURL, backend, "cache_ttl 0"),
	))
	openID := wechatsim.OpenID("wxonecall", "alice")

	t.Run("100 concurrent", func(t *testing.T) {
		// The gate holds the first call while the others arrive; those that
		// arrive after it is released are served from the cache.
		calls, forwarded := sim.Calls(), backend.Count()
		const logins = 100
		done := make(chan struct{})
		go func() {
			defer close(done)
			testkit.Parallel(logins, logins, func(int) {
				r, err := testkit.Fetch(context.Background(), http.MethodGet, "/game/wx/login?code=alice.together", nil)
				if err != nil || r.StatusCode != http.StatusOK {
					t.Errorf("login: %v %v", r, err)
				}
			})
		}()
		gate.AwaitArrivals(t, 1)
		gate.Open()
		<-done
		if made := sim.Calls() - calls; made != 1 {
			t.Errorf("%d concurrent logins with one code made %d WeChat calls, want 1", logins, made)
		}
		assertForwarded(t, backend.HeaderValues("X-WX-OPENID")[forwarded:], logins, openID)
	})

	t.Run("the same code later", func(t *testing.T) {
		calls, forwarded := sim.Calls(), backend.Count()
		if r := testkit.Get(t, "/game/wx/login?code=alice.together"); r.StatusCode != http.StatusOK {
			t.Fatalf("the same code again: %v", r)
		}
		if sim.Calls() != calls {
			t.Error("the same code again called WeChat")
		}
		assertForwarded(t, backend.HeaderValues("X-WX-OPENID")[forwarded:], 1, openID)
	})

	t.Run("without a cache", func(t *testing.T) {
		if r := testkit.Get(t, "/nocache/wx/login?code=alice.once"); r.StatusCode != http.StatusOK {
			t.Fatalf("first login: %v", r)
		}
		r := testkit.Get(t, "/nocache/wx/login?code=alice.once")
		if err := testkit.CheckRefusal(r, http.StatusUnauthorized, "code_used"); err != nil {
			t.Error(err)
		}
		if errcodeOf(r) != 40163 {
			t.Errorf("%v: want errcode 40163", r)
		}
	})
}

// assertForwarded checks that the backend received want logins, all with
// openID.
func assertForwarded(t *testing.T, received []string, want int, openID string) {
	t.Helper()
	if len(received) != want {
		t.Errorf("the backend received %d logins, want %d", len(received), want)
	}
	for _, got := range received {
		if got != openID {
			t.Errorf("the backend received X-WX-OPENID %q, want %q", got, openID)
			return
		}
	}
}

// TestFirstClientLeaving: the client whose login started the WeChat call
// hanging up does not fail the others waiting on that call.
func TestFirstClientLeaving(t *testing.T) {
	const appID, secret = "wxleaving", "leaving-secret"
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	gate := testkit.NewGate(t, sim) // holds the call until the first client has left
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, gate.URL, backend)))
	openID := wechatsim.OpenID(appID, "alice")
	const path = "/game/wx/login?code=alice.shared"

	ctx, leave := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := testkit.Fetch(ctx, http.MethodGet, path, nil)
		firstDone <- err
	}()
	gate.AwaitArrivals(t, 1)

	const others = 49
	var sent, answered sync.WaitGroup
	sent.Add(others)
	answered.Add(others)
	for range others {
		go func() {
			defer answered.Done()
			var once sync.Once
			defer once.Do(sent.Done) // in case the request was never written
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(sent.Done) }}
			r, err := testkit.Fetch(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, path, nil)
			if err != nil || r.StatusCode != http.StatusOK {
				t.Errorf("a client waiting on the call: %v %v", r, err)
			}
		}()
	}
	sent.Wait()
	leave()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Errorf("the first client's request ended with %v, want it cancelled", err)
	}
	gate.Open()
	answered.Wait()

	if calls := sim.Calls(); calls != 1 {
		t.Errorf("WeChat was called %d times, want 1", calls)
	}
	assertForwarded(t, backend.HeaderValues("X-WX-OPENID"), others, openID)
}

// TestEndpointsShareNoCache: a staging site on a simulator and a production
// site of the same app_id on another endpoint keep apart what they proved:
// a code redeemed on one is no cache hit on the other, which asks its own
// WeChat.
func TestEndpointsShareNoCache(t *testing.T) {
	const appID, secret = "wxtwoendpoints", "two-endpoints-secret"
	staging, stagingURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	production, productionURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("staging", appID, secret, stagingURL, backend),
		testkit.Route("production", appID, secret, productionURL, backend),
	))
	for _, site := range []string{"staging", "production"} {
		if r := testkit.Get(t, "/"+site+"/wx/login?code=alice.1"); r.StatusCode != http.StatusOK {
			t.Fatalf("login on %s: %v", site, r)
		}
	}
	if staging.Calls() != 1 || production.Calls() != 1 {
		t.Errorf("staging's WeChat saw %d calls, production's %d; want one each", staging.Calls(), production.Calls())
	}
}

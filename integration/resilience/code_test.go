package resilience

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// TestOneCallPerCode: concurrent and repeated logins with one code cost one
// WeChat call and all get the same identity, for as long as cache_ttl.
func TestOneCallPerCode(t *testing.T) {
	const secret = "one-call-secret"
	const cacheTTL = time.Second
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxonecall", Secret: secret},
		{AppID: "wxshortcache", Secret: secret},
	}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("game", "wxonecall", secret, simURL, backend),
		testkit.Route("short", "wxshortcache", secret, simURL, backend, "cache_ttl "+cacheTTL.String()),
	))
	openID := wechatsim.OpenID("wxonecall", "alice")

	t.Run("100 concurrent", func(t *testing.T) {
		// Latency keeps the first call in flight while the others arrive.
		sim.SetLatency(200 * time.Millisecond)
		defer sim.SetLatency(0)
		calls, forwarded := sim.Calls(), backend.Count()
		const logins = 100
		testkit.Parallel(logins, logins, func(int) {
			r, err := testkit.Fetch(context.Background(), http.MethodGet, "/game/wx/login?code=alice.together", nil)
			if err != nil || r.StatusCode != http.StatusOK {
				t.Errorf("login: %v %v", r, err)
			}
		})
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

	t.Run("after cache_ttl", func(t *testing.T) {
		for range 2 { // the second is answered from the cache
			if r := testkit.Get(t, "/short/wx/login?code=alice.short"); r.StatusCode != http.StatusOK {
				t.Fatalf("login within cache_ttl: %v", r)
			}
		}
		time.Sleep(cacheTTL + 200*time.Millisecond)
		r := testkit.Get(t, "/short/wx/login?code=alice.short")
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
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, simURL, backend)))
	openID := wechatsim.OpenID(appID, "alice")
	const path = "/game/wx/login?code=alice.shared"
	// The call lasts long enough for every client to be waiting on it when
	// the first leaves.
	sim.SetLatency(time.Second)

	ctx, leave := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := testkit.Fetch(ctx, http.MethodGet, path, nil)
		firstDone <- err
	}()
	waitFor(t, "the first login to call WeChat", func() bool { return sim.Calls() > 0 })

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
	time.Sleep(50 * time.Millisecond) // for Caddy to read the requests just written
	leave()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Errorf("the first client's request ended with %v, want it cancelled", err)
	}
	answered.Wait()

	if calls := sim.Calls(); calls != 1 {
		t.Errorf("WeChat was called %d times, want 1", calls)
	}
	assertForwarded(t, backend.HeaderValues("X-WX-OPENID"), others, openID)
}

package fleet

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// The game on Douyin and QQ, beside fleetApp on WeChat.
var (
	fleetDouyinApp = wechatsim.App{Platform: wechatsim.Douyin, AppID: "ttfleettest", Secret: "fleet-douyin-secret"}
	fleetQQApp     = wechatsim.App{Platform: wechatsim.QQ, AppID: "1119990001", Secret: "fleet-qq-secret"}
)

// TestPlatformsShareThroughRedis: two gateways with a redis block serving
// WeChat, Douyin and QQ share every platform's state exactly as WeChat's:
// a Douyin code exchanged at one is answered at the other from the fleet
// (one Douyin call), a QQ player's budget is one budget, and each
// gateway's session verifies at the other.
func TestPlatformsShareThroughRedis(t *testing.T) {
	redis := testkit.StartRedis(t)
	backend := testkit.NewBackend(t, nil)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{fleetApp, fleetDouyinApp, fleetQQApp}})
	config := func(g *testkit.Gateway) string {
		return g.Site(testkit.WechatLogin(fleetApp.AppID, fleetApp.Secret, simURL,
			"ip_budget off",
			"retry 1",
			fmt.Sprintf("app douyin %s {\n\t\tapp_secret %s\n\t\tendpoint %s\n\t}", fleetDouyinApp.AppID, fleetDouyinApp.Secret, wechatsim.Douyin.Endpoint(simURL)),
			fmt.Sprintf("app qq %s {\n\t\tapp_secret %s\n\t\tendpoint %s\n\t\tbudget 2 1m\n\t}", fleetQQApp.AppID, fleetQQApp.Secret, wechatsim.QQ.Endpoint(simURL)),
			fmt.Sprintf("redis {\n\t\taddress %s\n\t\tfleet_size 2\n\t\ttimeout %s\n\t}", redis.Addr(), redisTimeout),
			"session {\n\t\tsecret "+sessionSecret+"\n\t}",
		), testkit.ProxyTo(backend))
	}
	a, b := testkit.StartGateway(t, config), testkit.StartGateway(t, config)
	get := func(g *testkit.Gateway, path string, headers ...string) testkit.Response {
		t.Helper()
		req := mustRequest(t, g.URL+path)
		for _, h := range headers {
			name, value, _ := strings.Cut(h, ": ")
			req.Header.Set(name, value)
		}
		resp, err := testkit.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	first := get(a, "/tt/login?code=alice.1")
	retry := get(b, "/tt/login?code=alice.1")
	openID := wechatsim.Douyin.OpenID(fleetDouyinApp.AppID, "alice")
	if first.StatusCode != http.StatusOK || retry.StatusCode != http.StatusOK || backend.Last(t).Header.Get("X-Tt-Openid") != openID {
		t.Fatalf("a Douyin code at A, then at B: %v, %v", first, retry)
	}
	if calls := sim.CallsOn(wechatsim.Douyin); calls != 1 {
		t.Errorf("%d Douyin exchanges for one code on two gateways, want 1", calls)
	}
	token := first.Header.Get("X-Tt-Session")
	if game := get(b, "/game", "Authorization: Bearer "+token); game.StatusCode != http.StatusOK || backend.Last(t).Header.Get("X-Tt-Openid") != openID {
		t.Errorf("A's Douyin session at B: %v", game)
	}

	// QQ's budget of 2 per minute, one for the fleet: the third login of
	// one player, wherever it lands, is refused.
	for i, g := range []*testkit.Gateway{a, b} {
		if resp := get(g, fmt.Sprintf("/qq/login?code=bob.%d", i)); resp.StatusCode != http.StatusOK {
			t.Fatalf("QQ login %d: %v", i, resp)
		}
	}
	if resp := get(a, "/qq/login?code=bob.2"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the fleet's third QQ login of one player: %v, want 429", resp)
	}
}

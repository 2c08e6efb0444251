package fleet

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// fleetGameApps are the game on every other platform, beside fleetApp on
// WeChat.
var fleetGameApps = []wechatsim.App{
	{Platform: wechatsim.Douyin, AppID: "ttfleettest", Secret: "fleet-douyin-secret"},
	{Platform: wechatsim.QQ, AppID: "1119990001", Secret: "fleet-qq-secret"},
	{Platform: wechatsim.TapTap, AppID: "tapfleettest", Secret: "fleet-taptap-secret"},
	{Platform: wechatsim.Bilibili, AppID: "bilifleettest", Secret: "fleet-bilibili-secret"},
}

// TestPlatformsShareThroughRedis: two gateways with a redis block serving
// the game on every platform share each platform's state exactly as
// WeChat's: a code exchanged at one is answered at the other from the fleet
// (one call to the platform), each gateway's session verifies at the other,
// and a player's budget (2 per minute here) is one budget for the fleet.
func TestPlatformsShareThroughRedis(t *testing.T) {
	redis := testkit.StartRedis(t)
	backend := testkit.NewBackend(t, nil)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: append([]wechatsim.App{fleetApp}, fleetGameApps...)})
	config := func(g *testkit.Gateway) string {
		directives := []string{
			"ip_budget off",
			"retry 1",
			fmt.Sprintf("redis {\n\t\taddress %s\n\t\tfleet_size 2\n\t\ttimeout %s\n\t}", redis.Addr(), redisTimeout),
			"session {\n\t\tsecret " + sessionSecret + "\n\t}",
		}
		for _, app := range fleetGameApps {
			directives = append(directives, testkit.AppBlock(app, simURL, "budget 2 1m"))
		}
		return g.Site(testkit.WechatLogin(fleetApp.AppID, fleetApp.Secret, simURL, directives...), testkit.ProxyTo(backend))
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

	for _, app := range fleetGameApps {
		t.Run(string(app.Platform), func(t *testing.T) {
			front := testkit.PlatformFronts[app.Platform]
			openIDHeader := front.Header("openid")
			openID := app.Platform.OpenID(app.AppID, "alice")
			first := get(a, front.LoginPath+"?code=alice.1")
			retry := get(b, front.LoginPath+"?code=alice.1")
			if first.StatusCode != http.StatusOK || retry.StatusCode != http.StatusOK || backend.Last(t).Header.Get(openIDHeader) != openID {
				t.Fatalf("a code at A, then at B: %v, %v", first, retry)
			}
			if calls := sim.CallsOn(app.Platform); calls != 1 {
				t.Errorf("%d exchanges for one code on two gateways, want 1", calls)
			}
			token := first.Header.Get(front.Header("session"))
			if game := get(b, "/game", "Authorization: Bearer "+token); game.StatusCode != http.StatusOK || backend.Last(t).Header.Get(openIDHeader) != openID {
				t.Errorf("A's session at B: %v", game)
			}

			// The fleet's third login of one player, wherever it lands, is
			// refused.
			for i, g := range []*testkit.Gateway{a, b} {
				if resp := get(g, fmt.Sprintf("%s?code=bob.%d", front.LoginPath, i)); resp.StatusCode != http.StatusOK {
					t.Fatalf("login %d: %v", i, resp)
				}
			}
			if resp := get(a, front.LoginPath+"?code=bob.2"); resp.StatusCode != http.StatusTooManyRequests {
				t.Errorf("the fleet's third login of one player: %v, want 429", resp)
			}
		})
	}
}

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// The apps of one game on every platform, as the simulator knows them.
var (
	gameOnWechat = wechatsim.App{AppID: "wxplatformsgame", Secret: "platforms-wechat-secret", UnionBound: true}
	gameOnDouyin = wechatsim.App{Platform: wechatsim.Douyin, AppID: "ttplatformsgame", Secret: "platforms-douyin-secret", UnionBound: true}
)

// gameApps are the game's apps beside WeChat, each with the errcodes its
// platform documents for an invalid code and past its per-player quota (0
// where it documents none).
var gameApps = []struct {
	app                    wechatsim.App
	invalidCode, overQuota int
}{
	{gameOnDouyin, 40018, 0},
	{wechatsim.App{Platform: wechatsim.QQ, AppID: "1112223334", Secret: "platforms-qq-secret"}, 40029, 45011},
	{wechatsim.App{Platform: wechatsim.TapTap, AppID: "tapplatformsgame", Secret: "platforms-taptap-secret", UnionBound: true}, 1040029, 0},
	{wechatsim.App{Platform: wechatsim.Bilibili, AppID: "biliplatformsgame", Secret: "platforms-bilibili-secret"}, 40029, 0},
}

// playerBudget is every game app's player budget in these tests.
const playerBudget = 3

// startPlatformsGateway starts Caddy with one wechat_login serving the
// game's apps on every platform against the simulator, each with a budget
// of playerBudget logins per player per minute, a busy platform retried
// once, and sessions (with the session options given), in front of a
// backend.
func startPlatformsGateway(t *testing.T, sessionOptions []string, more ...string) (*wechatsim.Server, *testkit.Backend) {
	t.Helper()
	apps := []wechatsim.App{gameOnWechat}
	for _, g := range gameApps {
		apps = append(apps, g.app)
	}
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: apps})
	backend := testkit.NewBackend(t, nil)
	directives := []string{"retry 2 10ms 20ms", sessionBlock(append([]string{"secret " + sessionSecretA}, sessionOptions...)...)}
	for _, g := range gameApps {
		directives = append(directives, testkit.AppBlock(g.app, simURL, fmt.Sprintf("budget %d 1m", playerBudget)))
	}
	login := testkit.WechatLogin(gameOnWechat.AppID, gameOnWechat.Secret, simURL, append(directives, more...)...)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(login, testkit.ProxyTo(backend)))
	return sim, backend
}

// spoofedFamilies is a client's try at every family's identity, in several
// spellings.
var spoofedFamilies = []string{
	"X-WX-OPENID: spoofed", "X-TT-OPENID: spoofed", "X_QQ_OPENID: spoofed",
	"x-tap-openid: spoofed", "X.Bili.Openid: spoofed", "Connection: X-TT-APPID",
}

// TestPlatformLoginsEndToEnd: through a real Caddy against the simulator,
// a login on each platform reaches the backend with the identity in that
// platform's family and earns a session in it, which a later request
// presents; a double tap is answered from the first exchange; and nothing
// of another family reaches the backend.
func TestPlatformLoginsEndToEnd(t *testing.T) {
	sim, backend := startPlatformsGateway(t, nil)
	for _, g := range gameApps {
		t.Run(string(g.app.Platform), func(t *testing.T) {
			front := testkit.PlatformFronts[g.app.Platform]
			openID := g.app.Platform.OpenID(g.app.AppID, "alice")
			unionID := ""
			if g.app.UnionBound {
				unionID = g.app.Platform.UnionID("alice")
			}
			login := testkit.Get(t, front.LoginPath+"?code=alice.1", spoofedFamilies...)
			assertStatus(t, login, http.StatusOK)
			assertNoLeaks(t, login)
			seen := backend.Last(t).Header
			assertIdentity(t, seen, front.Header("openid"), openID)
			assertIdentity(t, seen, front.Header("appid"), g.app.AppID)
			assertIdentity(t, seen, front.Header("unionid"), unionID)
			assertIdentity(t, seen, front.Header("source"), front.Source)
			assertIdentity(t, seen, front.Header("session-key"), "")
			assertOnlyFamily(t, seen, front)
			token := login.Header.Get(front.Header("session"))
			if token == "" || login.Header.Get("X-WX-SESSION") != "" {
				t.Fatalf("the login's session: %v", login.Header)
			}

			// The double tap: the same code again is the same player, with
			// no second exchange.
			calls := sim.CallsOn(g.app.Platform)
			again := testkit.Get(t, front.LoginPath+"?code=alice.1")
			assertStatus(t, again, http.StatusOK)
			assertIdentity(t, backend.Last(t).Header, front.Header("openid"), openID)
			if sim.CallsOn(g.app.Platform) != calls {
				t.Error("a double tap made a second exchange")
			}

			game := testkit.Get(t, "/game", append([]string{front.Header("session") + ": " + token}, spoofedFamilies...)...)
			assertStatus(t, game, http.StatusOK)
			seen = backend.Last(t).Header
			assertIdentity(t, seen, front.Header("openid"), openID)
			assertIdentity(t, seen, front.Header("appid"), g.app.AppID)
			assertOnlyFamily(t, seen, front)
		})
	}
}

// assertOnlyFamily checks that h carries no other family's openid than
// front's.
func assertOnlyFamily(t *testing.T, h http.Header, front testkit.PlatformFront) {
	t.Helper()
	others := []string{"x-wx-openid"}
	for _, f := range testkit.PlatformFronts {
		others = append(others, f.Header("openid"))
	}
	for _, other := range others {
		if other != front.Header("openid") {
			assertIdentity(t, h, other, "")
		}
	}
}

// TestEachPlatformsErrorsEndToEnd: each platform's own errors, as the
// simulator answers them, reach the client through the one refusal table
// with the platform's errcode, and nothing is forwarded: an invalid code,
// a busy platform (retried once, then 503), and the platform's quota where
// it documents one (where it documents none, the player named "quota" logs
// in like any other).
func TestEachPlatformsErrorsEndToEnd(t *testing.T) {
	sim, backend := startPlatformsGateway(t, nil)
	for _, g := range gameApps {
		t.Run(string(g.app.Platform), func(t *testing.T) {
			front := testkit.PlatformFronts[g.app.Platform]
			type refusal struct {
				code    string
				status  int
				error   string
				errcode int
				calls   int64 // the exchanges the login makes
			}
			refusals := []refusal{
				{"invalid.e1", http.StatusUnauthorized, "invalid_code", g.invalidCode, 1},
				{"busy.e2", http.StatusServiceUnavailable, "wechat_unavailable", -1, 2},
				{"", http.StatusBadRequest, "invalid_request", noErrcode, 0},
			}
			if g.overQuota != 0 {
				refusals = append(refusals, refusal{"quota.e3", http.StatusTooManyRequests, "rate_limited", g.overQuota, 1})
			}
			for _, r := range refusals {
				forwarded, calls := backend.Count(), sim.CallsOn(g.app.Platform)
				resp := testkit.Get(t, front.LoginPath+"?code="+r.code)
				assertError(t, resp, r.status, r.error, r.errcode)
				assertNoLeaks(t, resp)
				if backend.Count() != forwarded {
					t.Errorf("code %q was forwarded", r.code)
				}
				if got := sim.CallsOn(g.app.Platform) - calls; got != r.calls {
					t.Errorf("code %q: %d exchanges, want %d", r.code, got, r.calls)
				}
			}
			if g.overQuota == 0 {
				quota := testkit.Get(t, front.LoginPath+"?code=quota.e3")
				assertStatus(t, quota, http.StatusOK)
				assertIdentity(t, backend.Last(t).Header, front.Header("openid"), g.app.Platform.OpenID(g.app.AppID, "quota"))
			}
		})
	}
	// Douyin's anonymous code has its own invalid errcode.
	assertError(t, testkit.Get(t, "/tt/login?anonymous_code=invalid.e1"), http.StatusUnauthorized, "invalid_code", 40019)
}

// TestDouyinAnonymousPlayerEndToEnd: a Douyin player not logged in to
// Douyin logs in with an anonymous_code; the backend gets
// X-TT-ANONYMOUS-OPENID and no openid, on the login and on every request
// of the session; with a code too, both.
func TestDouyinAnonymousPlayerEndToEnd(t *testing.T) {
	_, backend := startPlatformsGateway(t, []string{"respond"})
	anonymousID := wechatsim.AnonymousOpenID(gameOnDouyin.AppID, "phone")
	login := testkit.Get(t, "/tt/login?anonymous_code=phone.1")
	assertStatus(t, login, http.StatusOK)
	var body map[string]string
	if err := json.Unmarshal(login.Body, &body); err != nil || body["anonymous_openid"] != anonymousID || body["openid"] != "" || body["token"] == "" {
		t.Fatalf("the login answered %s", login.Body)
	}
	game := testkit.Get(t, "/game", "X-TT-SESSION: "+body["token"])
	assertStatus(t, game, http.StatusOK)
	assertIdentity(t, backend.Last(t).Header, "x-tt-anonymous-openid", anonymousID)
	assertIdentity(t, backend.Last(t).Header, "x-tt-openid", "")
	assertIdentity(t, backend.Last(t).Header, "x-tt-appid", gameOnDouyin.AppID)

	both := testkit.Get(t, "/tt/login", "X-TT-CODE: carol.1", "X-TT-ANONYMOUS-CODE: phone.2")
	assertStatus(t, both, http.StatusOK)
	if err := json.Unmarshal(both.Body, &body); err != nil || body["openid"] != wechatsim.Douyin.OpenID(gameOnDouyin.AppID, "carol") || body["anonymous_openid"] != anonymousID {
		t.Fatalf("a login with both codes answered %s", both.Body)
	}
}

// TestBudgetsPerPlatformEndToEnd: each app keeps its own player budget
// (playerBudget per minute here), so that a player refused on one platform
// has his whole budget on the next, and the per-IP budget is one per client
// address across the platforms.
func TestBudgetsPerPlatformEndToEnd(t *testing.T) {
	// Each platform below takes playerBudget+1 logins from this address;
	// three WeChat logins then reach the ip_budget.
	ipBudget := len(gameApps)*(playerBudget+1) + 3
	startPlatformsGateway(t, nil, fmt.Sprintf("ip_budget %d 1m", ipBudget))
	for _, g := range gameApps {
		front := testkit.PlatformFronts[g.app.Platform]
		// dave's budget here is whole, whatever he spent on another platform.
		for i := range playerBudget {
			assertStatus(t, testkit.Get(t, fmt.Sprintf("%s?code=dave.%d", front.LoginPath, i)), http.StatusOK)
		}
		assertError(t, testkit.Get(t, front.LoginPath+"?code=dave.over"), http.StatusTooManyRequests, "rate_limited", noErrcode)
	}
	for i := range 3 {
		assertStatus(t, testkit.Get(t, fmt.Sprintf("/wx/login?code=erin.%d", i)), http.StatusOK)
	}
	assertError(t, testkit.Get(t, "/bili/login?code=frank.1"), http.StatusTooManyRequests, "rate_limited", noErrcode)
}

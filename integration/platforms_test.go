package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// The apps of one game on three platforms, as the simulator knows them.
var (
	gameOnWechat = wechatsim.App{AppID: "wxplatformsgame", Secret: "platforms-wechat-secret", UnionBound: true}
	gameOnDouyin = wechatsim.App{Platform: wechatsim.Douyin, AppID: "ttplatformsgame", Secret: "platforms-douyin-secret", UnionBound: true}
	gameOnQQ     = wechatsim.App{Platform: wechatsim.QQ, AppID: "1112223334", Secret: "platforms-qq-secret"}
)

// startPlatformsGateway starts Caddy with one wechat_login serving the
// game's WeChat, Douyin and QQ apps against the simulator, with sessions
// (and the session options given), in front of a backend.
func startPlatformsGateway(t *testing.T, sessionOptions []string, more ...string) (*wechatsim.Server, *testkit.Backend) {
	t.Helper()
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{gameOnWechat, gameOnDouyin, gameOnQQ}})
	backend := testkit.NewBackend(t, nil)
	login := testkit.WechatLogin(gameOnWechat.AppID, gameOnWechat.Secret, simURL, append([]string{
		"retry 1",
		fmt.Sprintf("app douyin %s {\n\t\tapp_secret %s\n\t\tendpoint %s\n\t\tbudget 3 1m\n\t}", gameOnDouyin.AppID, gameOnDouyin.Secret, wechatsim.Douyin.Endpoint(simURL)),
		fmt.Sprintf("app qq %s {\n\t\tapp_secret %s\n\t\tendpoint %s\n\t}", gameOnQQ.AppID, gameOnQQ.Secret, wechatsim.QQ.Endpoint(simURL)),
		sessionBlock(append([]string{"secret " + sessionSecretA}, sessionOptions...)...),
	}, more...)...)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(login, testkit.ProxyTo(backend)))
	return sim, backend
}

// TestQQAndDouyinLoginsEndToEnd: through a real Caddy against the
// simulator, a QQ and a Douyin login each reach the backend with the
// identity in their platform's family and earn a session in it, which
// later requests present; a double tap is answered from the first
// exchange; and nothing of another family reaches the backend.
func TestQQAndDouyinLoginsEndToEnd(t *testing.T) {
	sim, backend := startPlatformsGateway(t, nil)
	spoofed := []string{"X-TT-OPENID: spoofed", "X_QQ_OPENID: spoofed", "X-WX-OPENID: spoofed", "Connection: X-TT-APPID"}

	for _, tc := range []struct {
		platform            wechatsim.Platform
		app                 wechatsim.App
		loginPath, family   string
		source, sessionName string
		unionID             string
	}{
		{wechatsim.Douyin, gameOnDouyin, "/tt/login", "x-tt-", "tt_client", "X-TT-SESSION", wechatsim.Douyin.UnionID("alice")},
		{wechatsim.QQ, gameOnQQ, "/qq/login", "x-qq-", "qq_client", "X-QQ-SESSION", ""},
	} {
		t.Run(string(tc.platform), func(t *testing.T) {
			openID := tc.platform.OpenID(tc.app.AppID, "alice")
			login := testkit.Get(t, tc.loginPath+"?code=alice.1", spoofed...)
			assertStatus(t, login, http.StatusOK)
			assertNoLeaks(t, login)
			seen := backend.Last(t).Header
			assertIdentity(t, seen, tc.family+"openid", openID)
			assertIdentity(t, seen, tc.family+"appid", tc.app.AppID)
			assertIdentity(t, seen, tc.family+"unionid", tc.unionID)
			assertIdentity(t, seen, tc.family+"source", tc.source)
			assertIdentity(t, seen, tc.family+"session-key", "")
			for _, other := range []string{"x-wx-openid", "x-tt-openid", "x-qq-openid"} {
				if other != tc.family+"openid" {
					assertIdentity(t, seen, other, "")
				}
			}
			token := login.Header.Get(tc.sessionName)
			if token == "" || login.Header.Get("X-WX-SESSION") != "" {
				t.Fatalf("the login's session: %v", login.Header)
			}

			// The double tap: the same code again is the same player, with
			// no second exchange.
			calls := sim.CallsOn(tc.platform)
			again := testkit.Get(t, tc.loginPath+"?code=alice.1")
			assertStatus(t, again, http.StatusOK)
			assertIdentity(t, backend.Last(t).Header, tc.family+"openid", openID)
			if sim.CallsOn(tc.platform) != calls {
				t.Error("a double tap made a second exchange")
			}

			game := testkit.Get(t, "/game", append([]string{"Authorization: Bearer " + token}, spoofed...)...)
			assertStatus(t, game, http.StatusOK)
			assertIdentity(t, backend.Last(t).Header, tc.family+"openid", openID)
			assertIdentity(t, backend.Last(t).Header, tc.family+"appid", tc.app.AppID)
			assertIdentity(t, backend.Last(t).Header, "x-wx-openid", "")
		})
	}
}

// TestEachPlatformsErrorsEndToEnd: each platform's own errors, as the
// simulator answers them, reach the client through the one refusal table
// with the platform's errcode, and nothing is forwarded.
func TestEachPlatformsErrorsEndToEnd(t *testing.T) {
	_, backend := startPlatformsGateway(t, nil)
	for _, tc := range []struct {
		path    string
		status  int
		code    string
		errcode int
	}{
		{"/tt/login?code=invalid.e1", http.StatusUnauthorized, "invalid_code", 40018},
		{"/tt/login?anonymous_code=invalid.e1", http.StatusUnauthorized, "invalid_code", 40019},
		{"/tt/login?code=busy.e3", http.StatusServiceUnavailable, "wechat_unavailable", -1},
		{"/qq/login?code=invalid.e1", http.StatusUnauthorized, "invalid_code", 40029},
		{"/qq/login?code=busy.e5", http.StatusServiceUnavailable, "wechat_unavailable", -1},
		{"/qq/login?code=quota.e6", http.StatusTooManyRequests, "rate_limited", 45011},
		{"/qq/login", http.StatusBadRequest, "invalid_request", noErrcode},
	} {
		before := backend.Count()
		resp := testkit.Get(t, tc.path)
		assertError(t, resp, tc.status, tc.code, tc.errcode)
		assertNoLeaks(t, resp)
		if backend.Count() != before {
			t.Errorf("%s was forwarded", tc.path)
		}
	}
	// A reused Douyin code is a bad code at Douyin (40018) once the
	// gateway's own record of it is gone; within it, a double tap.
	assertStatus(t, testkit.Get(t, "/tt/login?code=bob.1"), http.StatusOK)
	assertStatus(t, testkit.Get(t, "/tt/login?code=bob.1"), http.StatusOK)
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
// (Douyin's 3 per minute here), and the per-IP budget is one per client
// address across the platforms.
func TestBudgetsPerPlatformEndToEnd(t *testing.T) {
	startPlatformsGateway(t, nil, "ip_budget 8 1m")
	for i := range 3 {
		assertStatus(t, testkit.Get(t, fmt.Sprintf("/tt/login?code=dave.%d", i)), http.StatusOK)
	}
	resp := testkit.Get(t, "/tt/login?code=dave.3")
	assertError(t, resp, http.StatusTooManyRequests, "rate_limited", noErrcode)
	// Dave on QQ is another app's player: his budget there is whole.
	assertStatus(t, testkit.Get(t, "/qq/login?code=dave.4"), http.StatusOK)
	// Five logins so far from this address on two platforms; three more
	// reach the ip_budget of 8, on a third platform.
	for i := range 3 {
		assertStatus(t, testkit.Get(t, fmt.Sprintf("/wx/login?code=erin.%d", i)), http.StatusOK)
	}
	assertError(t, testkit.Get(t, "/qq/login?code=frank.1"), http.StatusTooManyRequests, "rate_limited", noErrcode)
}

package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// Session secrets: 32 bytes or more. TestMain forbids them in the logs.
const (
	sessionSecretA = "session-secret-A-0123456789abcdef"
	sessionSecretB = "session-secret-B-0123456789abcdef"
	sessionSecretC = "session-secret-C-0123456789abcdef"
)

// sessionBlock is a session subdirective block.
func sessionBlock(lines ...string) string {
	return "session {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}"
}

// tokenClaims decodes a token's payload without verifying it, as a client
// can.
func tokenClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("session %q is not a JWT", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("session payload is not base64url: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("session payload %s is not JSON: %v", payload, err)
	}
	return claims
}

// signToken signs claims with HS256 and key, as the gateway would.
func signToken(t *testing.T, claims jwt.MapClaims, key string) string {
	t.Helper()
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// login makes the login request to path and returns the session it was given.
func login(t *testing.T, path string) string {
	t.Helper()
	resp := testkit.Get(t, path)
	assertStatus(t, resp, http.StatusOK)
	token := resp.Header.Get("X-WX-SESSION")
	if token == "" {
		t.Fatalf("login %s gave no X-WX-SESSION", resp.Request.URL.Path)
	}
	return token
}

// TestSessions: a login gives a session; the session gives every later
// request the player's identity without a WeChat call; anything else that
// looks like a session is refused.
func TestSessions(t *testing.T) {
	const secret = "sessions-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxsessions", Secret: secret},
		{AppID: "wxsessionsunion", Secret: secret, UnionBound: true},
		{AppID: "wxsessionsother", Secret: secret},
	}})
	backend := testkit.NewBackend(t, nil)
	route := func(prefix, appID string) string {
		return testkit.Route(prefix, appID, secret, simURL, backend, sessionBlock("secret "+sessionSecretA))
	}
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		route("game", "wxsessions"),
		route("union", "wxsessionsunion"),
		route("other", "wxsessionsother"), // same session secret, another app
	))
	openID := wechatsim.OpenID("wxsessions", "alice")

	token := login(t, "/game/wx/login?code=alice.1")
	assertOnlyIdentity(t, backend.Last(t).Header, "wxsessions", openID)

	t.Run("token claims", func(t *testing.T) {
		claims := tokenClaims(t, token)
		if claims["sub"] != openID || claims["appid"] != "wxsessions" {
			t.Errorf("claims %v: want sub %s and appid wxsessions", claims, openID)
		}
		iat, iatOK := claims["iat"].(float64)
		exp, expOK := claims["exp"].(float64)
		if !iatOK || !expOK || exp <= iat {
			t.Errorf("claims %v: want numeric iat before exp", claims)
		}
		for name := range claims {
			if name != "sub" && name != "appid" && name != "iat" && name != "exp" {
				t.Errorf("claims %v carry %q; only sub, appid, iat and exp are expected without a unionid", claims, name)
			}
		}
		if leaks := testkit.Leaks(token + fmt.Sprint(claims)); len(leaks) > 0 {
			t.Errorf("the session carries %d secret(s) or session_key(s)", len(leaks))
		}

		unionToken := login(t, "/union/wx/login?code=alice.2")
		if got := tokenClaims(t, unionToken)["unionid"]; got != wechatsim.UnionID("alice") {
			t.Errorf("unionid claim %v, want %s", got, wechatsim.UnionID("alice"))
		}
	})

	t.Run("presented on game requests", func(t *testing.T) {
		calls := sim.Calls()
		for _, presented := range []string{"Authorization: Bearer " + token, "X-WX-SESSION: " + token} {
			for range 3 {
				assertStatus(t, testkit.Get(t, "/game/play", presented), http.StatusOK)
				got := backend.Last(t).Header
				assertOnlyIdentity(t, got, "wxsessions", openID)
				if got.Get("Authorization") != "" || got.Get("X-WX-SESSION") != "" {
					t.Errorf("the backend saw the session token (Authorization %q, X-WX-SESSION %q)", got.Get("Authorization"), got.Get("X-WX-SESSION"))
				}
			}
		}
		if sim.Calls() != calls {
			t.Errorf("game requests called WeChat %d times", sim.Calls()-calls)
		}
	})

	now := time.Now()
	valid := jwt.MapClaims{"sub": openID, "appid": "wxsessions", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	t.Run("a token signed as the gateway signs is accepted", func(t *testing.T) {
		// The control for the refusals below: they differ from it in one way each.
		assertStatus(t, testkit.Get(t, "/game/play", "X-WX-SESSION: "+signToken(t, valid, sessionSecretA)), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxsessions", openID)
	})

	edited := strings.Split(token, ".")
	edited[1] = base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"sub":%q,"appid":"wxsessions","iat":%d,"exp":%d}`,
		wechatsim.OpenID("wxsessions", "mallory"), now.Unix(), now.Add(time.Hour).Unix()))
	expired := jwt.MapClaims{"sub": openID, "appid": "wxsessions", "iat": now.Add(-3 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, valid).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, presented string }{
		{"no session", ""},
		{"empty bearer", "Authorization: Bearer "},
		{"not a JWT", "X-WX-SESSION: not-a-token"},
		{"edited payload", "X-WX-SESSION: " + strings.Join(edited, ".")},
		{"another secret", "Authorization: Bearer " + signToken(t, valid, sessionSecretB)},
		{"alg none", "X-WX-SESSION: " + none},
		{"expired", "X-WX-SESSION: " + signToken(t, expired, sessionSecretA)},
		{"another app_id on the same Caddy", "X-WX-SESSION: " + login(t, "/other/wx/login?code=alice.3")},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			var headers []string
			if tc.presented != "" {
				headers = append(headers, tc.presented)
			}
			assertSessionRefused(t, backend, "/game/play", headers...)
		})
	}
}

// assertSessionRefused sends a GET for path with headers and checks that it
// is refused with 401 invalid_session and a Bearer challenge, and that
// nothing reached the backend.
func assertSessionRefused(t *testing.T, backend *testkit.Backend, path string, headers ...string) {
	t.Helper()
	forwarded := backend.Count()
	resp := testkit.Get(t, path, headers...)
	assertError(t, resp, http.StatusUnauthorized, "invalid_session", noErrcode)
	if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
		t.Errorf("WWW-Authenticate %q, want a Bearer challenge", got)
	}
	if backend.Count() != forwarded {
		t.Error("a request without a valid session reached the backend")
	}
}

// TestOptionalSession lets requests without a session through, without
// identity.
func TestOptionalSession(t *testing.T) {
	const appID, secret = "wxoptional", "optional-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA, "optional")), testkit.ProxyTo(backend)))

	assertStatus(t, testkit.Get(t, "/lobby", spoofedIdentity...), http.StatusOK)
	assertOnlyIdentity(t, backend.Last(t).Header, "", "")

	token := login(t, "/wx/login?code=alice.1")
	assertStatus(t, testkit.Get(t, "/lobby", "Authorization: Bearer "+token), http.StatusOK)
	assertOnlyIdentity(t, backend.Last(t).Header, appID, wechatsim.OpenID(appID, "alice"))
}

// TestSessionSecretRotation: a new secret put first signs; the old one,
// kept second, still verifies until it is removed.
func TestSessionSecretRotation(t *testing.T) {
	const appID, secret = "wxrotation", "rotation-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	load := func(secrets ...string) {
		t.Helper()
		var lines []string
		for _, s := range secrets {
			lines = append(lines, "secret "+s)
		}
		testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.WechatLogin(appID, secret, simURL, sessionBlock(lines...)), testkit.ProxyTo(backend)))
	}
	verifies := func(token, key string) bool {
		_, err := jwt.Parse(token, func(*jwt.Token) (any, error) { return []byte(key), nil }, jwt.WithValidMethods([]string{"HS256"}))
		return err == nil
	}

	load(sessionSecretA)
	tokenA := login(t, "/wx/login?code=alice.1")

	load(sessionSecretB, sessionSecretA)
	assertStatus(t, testkit.Get(t, "/play", "X-WX-SESSION: "+tokenA), http.StatusOK)
	tokenB := login(t, "/wx/login?code=alice.2")
	if !verifies(tokenB, sessionSecretB) {
		t.Error("after rotation, new sessions are not signed with the secret listed first")
	}

	load(sessionSecretB, sessionSecretC)
	assertError(t, testkit.Get(t, "/play", "X-WX-SESSION: "+tokenA), http.StatusUnauthorized, "invalid_session", noErrcode)
	assertStatus(t, testkit.Get(t, "/play", "X-WX-SESSION: "+tokenB), http.StatusOK)
	assertOnlyIdentity(t, backend.Last(t).Header, appID, wechatsim.OpenID(appID, "alice"))
}

// TestRespondMode answers logins at the gateway for backends without a
// login endpoint.
func TestRespondMode(t *testing.T) {
	const secret = "respond-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxrespond", Secret: secret},
		{AppID: "wxrespondunion", Secret: secret, UnionBound: true},
	}})
	backend := testkit.NewBackend(t, http.NotFound) // no login endpoint
	route := func(prefix, appID string) string {
		return testkit.Route(prefix, appID, secret, simURL, backend, sessionBlock("secret "+sessionSecretA, "ttl 1h", "respond"))
	}
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(route("plain", "wxrespond"), route("union", "wxrespondunion")))

	for _, tc := range []struct{ prefix, appID, unionID string }{
		{"plain", "wxrespond", ""},
		{"union", "wxrespondunion", wechatsim.UnionID("alice")},
	} {
		t.Run(tc.appID, func(t *testing.T) {
			resp := testkit.Get(t, "/"+tc.prefix+"/wx/login?code=alice.1")
			assertStatus(t, resp, http.StatusOK)
			assertNoLeaks(t, resp)
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var body map[string]string
			if err := json.Unmarshal(resp.Body, &body); err != nil {
				t.Fatalf("body %s: %v", resp.Body, err)
			}
			want := map[string]string{"openid": wechatsim.OpenID(tc.appID, "alice"), "token": body["token"], "expires_at": body["expires_at"]}
			if tc.unionID != "" {
				want["unionid"] = tc.unionID
			}
			if fmt.Sprint(body) != fmt.Sprint(want) || body["token"] == "" {
				t.Errorf("body %s, want exactly openid, token, expires_at (and unionid when bound)", resp.Body)
			}
			expires, err := time.Parse(time.RFC3339, body["expires_at"])
			if err != nil {
				t.Errorf("expires_at %q is not RFC 3339", body["expires_at"])
			} else if exp := tokenClaims(t, body["token"])["exp"]; exp != float64(expires.Unix()) {
				t.Errorf("expires_at %s is not the token's exp %v", body["expires_at"], exp)
			}
			if backend.Count() != 0 {
				t.Error("a login in respond mode was forwarded")
			}

			// The token is a session like any other.
			assertStatus(t, testkit.Get(t, "/"+tc.prefix+"/play", "Authorization: Bearer "+body["token"]), http.StatusNotFound)
			got := backend.Last(t).Header
			assertIdentity(t, got, "x-wx-openid", wechatsim.OpenID(tc.appID, "alice"))
			assertIdentity(t, got, "x-wx-unionid", tc.unionID)
			backend.Reset()
		})
	}
}

// TestNoSessionForFailedLogin: the token is only added to a successful
// upstream answer.
func TestNoSessionForFailedLogin(t *testing.T) {
	const appID, secret = "wxfailedlogin", "failed-login-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "database down", http.StatusInternalServerError)
	})
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend)))

	resp := testkit.Get(t, "/wx/login?code=alice.1")
	assertStatus(t, resp, http.StatusInternalServerError)
	if token := resp.Header.Get("X-WX-SESSION"); token != "" {
		t.Error("a login the backend failed was given a session")
	}
}

// TestSessionChargesPlayerBudget: a player looping on logins is stopped by
// the session it presents, before its code costs a WeChat call.
func TestSessionChargesPlayerBudget(t *testing.T) {
	const appID, secret = "wxloop", "loop-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.WechatLogin(appID, secret, simURL, "budget 2 1m", sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend)))

	token := login(t, "/wx/login?code=alice.1")
	login(t, "/wx/login?code=alice.2") // the budget is spent

	calls, forwarded := sim.Calls(), backend.Count()
	testkit.Forbid("alice.3") // never sent to WeChat
	resp := testkit.Get(t, "/wx/login?code=alice.3", "Authorization: Bearer "+token)
	assertError(t, resp, http.StatusTooManyRequests, "rate_limited", noErrcode)
	if sim.Calls() != calls || backend.Count() != forwarded {
		t.Error("an over-budget login with a session reached WeChat or the backend")
	}
}

// TestLoginResponseIsNotCached: a response that carries a player's token is
// never stored by a shared cache, whatever caching the backend allowed.
func TestLoginResponseIsNotCached(t *testing.T) {
	const appID, secret = "wxnostore", "no-store-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=600")
		w.Write([]byte("ok"))
	})
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA, "optional")), testkit.ProxyTo(backend)))

	login := testkit.Get(t, "/wx/login?code=alice.1")
	assertStatus(t, login, http.StatusOK)
	if login.Header.Get("X-WX-SESSION") == "" {
		t.Fatal("the login gave no session: the test proves nothing")
	}
	if got := login.Header.Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
		t.Errorf("a login response carrying a token has Cache-Control %q, want exactly no-store", got)
	}
	// Control: other responses keep the backend's caching.
	if got := testkit.Get(t, "/catalog").Header.Get("Cache-Control"); got != "public, max-age=600" {
		t.Errorf("a response without a token has Cache-Control %q, want the backend's", got)
	}
}

// TestEitherSessionHeaderWillDo: a request presenting two tokens is served
// when either is valid; a bearer token that is not ours stays for the
// backend.
func TestEitherSessionHeaderWillDo(t *testing.T) {
	const appID, secret = "wxeither", "either-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend)))
	openID := wechatsim.OpenID(appID, "alice")
	token := login(t, "/wx/login?code=alice.1")
	now := time.Now()
	expired := signToken(t, jwt.MapClaims{"sub": openID, "appid": appID, "iat": now.Add(-3 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()}, sessionSecretA)

	for _, tc := range []struct {
		name          string
		headers       []string
		authorization string // what the backend receives
	}{
		{"invalid X-WX-SESSION, valid bearer", []string{"X-WX-SESSION: not-a-token", "Authorization: Bearer " + token}, ""},
		{"expired X-WX-SESSION, valid bearer", []string{"X-WX-SESSION: " + expired, "Authorization: Bearer " + token}, ""},
		{"valid X-WX-SESSION, the backend's own bearer", []string{"X-WX-SESSION: " + token, "Authorization: Bearer backend-token"}, "Bearer backend-token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assertStatus(t, testkit.Get(t, "/game", tc.headers...), http.StatusOK)
			got := backend.Last(t).Header
			assertOnlyIdentity(t, got, appID, openID)
			if got.Get("Authorization") != tc.authorization || got.Get("X-WX-SESSION") != "" {
				t.Errorf("the backend saw Authorization %q and X-WX-SESSION %q, want %q and none", got.Get("Authorization"), got.Get("X-WX-SESSION"), tc.authorization)
			}
		})
	}
	t.Run("both invalid", func(t *testing.T) {
		assertSessionRefused(t, backend, "/game", "X-WX-SESSION: "+expired, "Authorization: Bearer backend-token")
	})
}

// TestSessionsFollowRFC7519: tokens signed with the gateway's key by a
// third-party library (golang-jwt) are accepted with the headers JWT
// libraries write (a kid, no typ); those that RFC 7519, or the gateway's
// header rules, say to refuse are refused with 401 invalid_session, a
// Bearer challenge, and their reason counted.
func TestSessionsFollowRFC7519(t *testing.T) {
	const appID, secret = "wxrfc7519", "rfc7519-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("metrics")+testkit.Site(
		"handle /metrics {\n\tmetrics\n}",
		testkit.Handle("", testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend))))
	openID := wechatsim.OpenID(appID, "alice")
	now := time.Now()
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": openID, "appid": appID, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		edit(c)
		return c
	}
	sign := func(edit func(jwt.MapClaims)) string { return signToken(t, claims(edit), sessionSecretA) }
	withHeader := func(edit func(map[string]any)) string {
		token := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(func(jwt.MapClaims) {}))
		edit(token.Header)
		signed, err := token.SignedString([]byte(sessionSecretA))
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}

	// The controls: differing from each refused token in one way, accepted.
	for _, token := range []string{
		sign(func(jwt.MapClaims) {}),
		withHeader(func(h map[string]any) { h["kid"] = "2026-11" }),
		withHeader(func(h map[string]any) { delete(h, "typ") }), // as jose writes it
	} {
		assertStatus(t, testkit.Get(t, "/game", "Authorization: Bearer "+token), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, appID, openID)
	}

	for _, tc := range []struct{ name, token, reason string }{
		{"nbf an hour away", sign(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }), "not_yet_valid"},
		{"iat an hour away", sign(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Hour).Unix() }), "not_yet_valid"},
		{"an aud", sign(func(c jwt.MapClaims) { c["aud"] = "https://game.example.com" }), "wrong_audience"},
		{"exp as a string", sign(func(c jwt.MapClaims) { c["exp"] = strconv.FormatInt(now.Add(time.Hour).Unix(), 10) }), "malformed"},
		{"sub as a number", sign(func(c jwt.MapClaims) { c["sub"] = 42 }), "malformed"},
		{"no exp", sign(func(c jwt.MapClaims) { delete(c, "exp") }), "malformed"},
		{"a header with crit", withHeader(func(h map[string]any) { h["crit"] = []string{"exp"} }), "malformed"},
		{"a header with jku", withHeader(func(h map[string]any) { h["jku"] = "https://attacker.example/keys" }), "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sample := `app_id="` + appID + `",reason="` + tc.reason + `"`
			before := metricValue(t, scrapeMetrics(t), "caddy_wechat_login_sessions_rejected_total", sample)
			assertSessionRefused(t, backend, "/game", "Authorization: Bearer "+tc.token)
			assertSessionRefused(t, backend, "/game", "X-WX-SESSION: "+tc.token)
			if got := metricValue(t, scrapeMetrics(t), "caddy_wechat_login_sessions_rejected_total", sample) - before; got != 2 {
				t.Errorf("sessions_rejected_total{%s} grew by %v, want 2", sample, got)
			}
		})
	}
}

package wechatsim_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

// t0 is 10:00 in Beijing, so that a few hours later is still the same
// WeChat day.
var t0 = time.Date(2024, 5, 1, 2, 0, 0, 0, time.UTC)

// newClockedSim starts a simulator of testApps on a test clock at t0.
func newClockedSim(t *testing.T) (*wechatsim.Server, *httptest.Server, *testkit.Clock) {
	t.Helper()
	clock := testkit.NewClock(t0)
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps, Now: clock.Now})
	return s, ts, clock
}

func stableTokenBody(appid, secret string, force bool) string {
	return fmt.Sprintf(`{"grant_type":"client_credential","appid":%q,"secret":%q,"force_refresh":%t}`, appid, secret, force)
}

// wantToken checks r is a token answer and returns the token and its
// expires_in.
func wantToken(t *testing.T, r result) (string, int) {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != wantContentType(r.path) {
		t.Errorf("status %d, Content-Type %q; want 200, %s", r.status, r.contentType, wantContentType(r.path))
	}
	token, _ := r.fields["access_token"].(string)
	expiresIn, _ := r.fields["expires_in"].(float64)
	if token == "" || expiresIn <= 0 || len(r.fields) != 2 {
		t.Fatalf("answer %v; want only access_token and a positive expires_in", r.fields)
	}
	return token, int(expiresIn)
}

func stableToken(t *testing.T, ts *httptest.Server, force bool) (string, int) {
	t.Helper()
	return wantToken(t, call(t, ts, http.MethodPost, "/cgi-bin/stable_token", nil, stableTokenBody(appID, appSecret, force)))
}

func classicToken(t *testing.T, ts *httptest.Server) string {
	t.Helper()
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appID}, "secret": {appSecret}}
	token, expiresIn := wantToken(t, call(t, ts, http.MethodGet, "/cgi-bin/token", q, ""))
	if expiresIn != 7200 {
		t.Errorf("classic token expires_in %d; want 7200", expiresIn)
	}
	return token
}

// secCheck calls msg_sec_check with token.
func secCheck(t *testing.T, ts *httptest.Server, token string) result {
	t.Helper()
	return call(t, ts, http.MethodPost, "/wxa/msg_sec_check", url.Values{"access_token": {token}},
		`{"content":"hello","version":2,"scene":2,"openid":"o123"}`)
}

// wantAccepted checks that WeChat takes token for an API call.
func wantAccepted(t *testing.T, ts *httptest.Server, token string) {
	t.Helper()
	if code, _ := secCheck(t, ts, token).errcode(); code != 0 {
		t.Errorf("a call with the token got errcode %d; want 0", code)
	}
}

func TestStableTokenNormalModeKeepsOneTokenUntilItsLastMinutes(t *testing.T) {
	s, ts, clock := newClockedSim(t)
	first, expiresIn := stableToken(t, ts, false)
	if expiresIn != 7200 {
		t.Errorf("expires_in %d; want 7200", expiresIn)
	}
	clock.Advance(time.Hour)
	again, expiresIn := stableToken(t, ts, false)
	if again != first || expiresIn != 3600 {
		t.Errorf("an hour later: same token %t, expires_in %d; want the same token, 3600", again == first, expiresIn)
	}
	wantAccepted(t, ts, first)

	// In its last 5 minutes, the next token is handed out; both work until
	// the first runs out.
	clock.Set(t0.Add(7200*time.Second - 5*time.Minute))
	next, expiresIn := stableToken(t, ts, false)
	if next == first || expiresIn != 7200 {
		t.Errorf("5 minutes before expiry: new token %t, expires_in %d; want a new token, 7200", next != first, expiresIn)
	}
	if again, _ := stableToken(t, ts, false); again != next {
		t.Error("the next token was not kept")
	}
	wantAccepted(t, ts, first)
	wantAccepted(t, ts, next)
	clock.Set(t0.Add(7200 * time.Second))
	wantError(t, secCheck(t, ts, first), 42001, "access_token expired")
	wantAccepted(t, ts, next)
	if !s.TokenValid(appID, next) || s.TokenValid(appID, first) || s.TokenValid(boundID, next) {
		t.Error("TokenValid disagrees with the API calls")
	}
	if got := s.CallsTo("/cgi-bin/stable_token"); got != 4 {
		t.Errorf("CallsTo(stable_token) = %d; want 4", got)
	}
}

func TestStableTokenForceRefreshFollowsWechatLimits(t *testing.T) {
	s, ts, clock := newClockedSim(t)
	first, _ := stableToken(t, ts, false)
	forced, _ := stableToken(t, ts, true)
	if forced == first || s.ForcedRefreshes(appID) != 1 {
		t.Fatalf("force_refresh: new token %t, %d forced; want a new token, 1", forced != first, s.ForcedRefreshes(appID))
	}
	// The replaced token works a few seconds more, then is invalid (not
	// expired).
	wantAccepted(t, ts, first)
	clock.Advance(5 * time.Second)
	wantError(t, secCheck(t, ts, first), 40001, "invalid credential, access_token is invalid or not latest")
	if again, _ := stableToken(t, ts, false); again != forced {
		t.Error("normal mode after a force_refresh did not hand out the new token")
	}

	// Within 30 s of the last, a force_refresh refreshes nothing.
	clock.Advance(24 * time.Second)
	if again, _ := stableToken(t, ts, true); again != forced || s.ForcedRefreshes(appID) != 1 {
		t.Errorf("force_refresh after 29 s: new token %t, %d forced; want the same token, 1", again != forced, s.ForcedRefreshes(appID))
	}
	// 20 a day.
	for i := 2; i <= 20; i++ {
		clock.Advance(30 * time.Second)
		stableToken(t, ts, true)
	}
	clock.Advance(30 * time.Second)
	wantError(t, call(t, ts, http.MethodPost, "/cgi-bin/stable_token", nil, stableTokenBody(appID, appSecret, true)),
		45009, "reach max api daily quota limit")
	if got := s.ForcedRefreshes(appID); got != 20 {
		t.Errorf("ForcedRefreshes = %d; want 20", got)
	}
	// Normal mode is not limited, and Beijing's next day brings 20 more.
	stableToken(t, ts, false)
	clock.Set(time.Date(2024, 5, 1, 16, 0, 0, 0, time.UTC)) // 00:00 on May 2 in Beijing
	stableToken(t, ts, true)
	if got := s.ForcedRefreshes(appID); got != 21 {
		t.Errorf("ForcedRefreshes the next day = %d; want 21", got)
	}
}

func TestTokenRequestErrors(t *testing.T) {
	s, ts, _ := newClockedSim(t)
	for _, tt := range []struct {
		name, method, body string
		code               int
		msg                string
	}{
		{"GET", http.MethodGet, stableTokenBody(appID, appSecret, false), 43002, "require POST method"},
		{"not JSON", http.MethodPost, "appid=" + appID, 47001, "data format error"},
		{"grant_type", http.MethodPost, `{"grant_type":"authorization_code","appid":"` + appID + `","secret":"` + appSecret + `"}`, 40002, "invalid grant_type"},
		{"no appid", http.MethodPost, stableTokenBody("", appSecret, false), 41002, "appid missing"},
		{"no secret", http.MethodPost, stableTokenBody(appID, "", false), 41004, "appsecret missing"},
		{"unknown appid", http.MethodPost, stableTokenBody("wxunknown", appSecret, false), 40013, "invalid appid"},
		{"wrong secret", http.MethodPost, stableTokenBody(appID, "not-the-secret", false), 40125, "invalid appsecret"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, call(t, ts, tt.method, "/cgi-bin/stable_token", nil, tt.body), tt.code, tt.msg)
		})
	}
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appID}, "secret": {"classic-wrong"}}
	wantError(t, call(t, ts, http.MethodGet, "/cgi-bin/token", q, ""), 40125, "invalid appsecret")
	// A gateway must not log a wrong secret either.
	for _, secret := range []string{"not-the-secret", "classic-wrong"} {
		if !slices.Contains(s.Sensitive(), secret) {
			t.Errorf("Sensitive() lacks the wrong secret %q", secret)
		}
	}
}

func TestClassicTokenReplacesThePreviousOne(t *testing.T) {
	_, ts, clock := newClockedSim(t)
	stable, _ := stableToken(t, ts, false)
	first := classicToken(t, ts)
	second := classicToken(t, ts)
	if first == second || first == stable {
		t.Fatal("classic calls did not issue distinct tokens of their own")
	}
	// The previous token has 5 minutes of grace; the stable one is untouched.
	clock.Advance(5*time.Minute - time.Second)
	wantAccepted(t, ts, first)
	clock.Advance(time.Second)
	wantError(t, secCheck(t, ts, first), 40001, "invalid credential, access_token is invalid or not latest")
	wantAccepted(t, ts, second)
	wantAccepted(t, ts, stable)
}

func TestRevokeTokens(t *testing.T) {
	s, ts, _ := newClockedSim(t)
	stable, _ := stableToken(t, ts, false)
	classic := classicToken(t, ts)
	s.RevokeTokens(appID)
	for _, token := range []string{stable, classic} {
		wantError(t, secCheck(t, ts, token), 40001, "invalid credential, access_token is invalid or not latest")
	}
	next, _ := stableToken(t, ts, false)
	if next == stable {
		t.Fatal("normal mode handed out the revoked token")
	}
	wantAccepted(t, ts, next)
	if s.ForcedRefreshes(appID) != 0 {
		t.Error("a revocation counted as a force_refresh")
	}
}

func TestTokensAreSensitive(t *testing.T) {
	s, ts, _ := newClockedSim(t)
	stable, _ := stableToken(t, ts, false)
	classic := classicToken(t, ts)
	for _, token := range []string{stable, classic} {
		if !slices.Contains(s.Sensitive(), token) {
			t.Error("Sensitive() lacks an issued access token")
		}
	}
}

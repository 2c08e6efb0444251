package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const (
	stableTokenPath  = "/cgi-bin/stable_token"
	classicTokenPath = "/cgi-bin/token"
)

// TestCallForwardedByteForByte: WeChat receives the backend's call as sent,
// with the gateway's token added, and the backend receives WeChat's answer
// as WeChat sent it.
func TestCallForwardedByteForByte(t *testing.T) {
	const appID, secret = "wxforward", "forward-secret"
	sim, simURL := startGateway(t, appID, secret, secret)

	// Spacing, escapes and non-ASCII that a re-encoding would change.
	body := "{ \"content\" : \"h\u00e9llo\\tw\u00f6rld\",\"version\":2, \"scene\":2,\n\"openid\":\"o123\" }"
	const query, contentType = "lang=zh_CN&x=%20y", "application/json; charset=utf-8"
	resp := testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check?"+query, strings.NewReader(body), "Content-Type: "+contentType)
	assertErrcode(t, resp, 0)
	if got := resp.Header.Get("Content-Type"); got != "application/json; encoding=utf-8" {
		t.Errorf("the backend got Content-Type %q, not WeChat's", got)
	}

	received := sim.APIRequests()
	if len(received) != 1 {
		t.Fatalf("WeChat received %d calls; want 1", len(received))
	}
	got := received[0]
	if got.Method != http.MethodPost || got.Path != "/wxa/msg_sec_check" || got.ContentType != contentType || !bytes.Equal(got.Body, []byte(body)) {
		t.Errorf("WeChat received %s %s (%s) %q; want POST /wxa/msg_sec_check (%s) %q", got.Method, got.Path, got.ContentType, got.Body, contentType, body)
	}
	token, n := tokenOf(t, got)
	if n != 1 || !sim.TokenValid(appID, token) || got.RawQuery != query+"&access_token="+url.QueryEscape(token) {
		t.Errorf("WeChat received the query %q: want %q and one valid access_token", got.RawQuery, query)
	}
	if stable, classic := sim.CallsTo(stableTokenPath), sim.CallsTo(classicTokenPath); stable != 1 || classic != 0 {
		t.Errorf("%d stable_token and %d /cgi-bin/token calls; want 1 and 0", stable, classic)
	}

	// A GET with its query: checksession, with a session_key from a login.
	loginResp, err := http.Get(simURL + "/sns/jscode2session?appid=" + appID + "&secret=" + secret + "&js_code=alice.1&grant_type=authorization_code")
	if err != nil {
		t.Fatal(err)
	}
	var login struct {
		SessionKey string `json:"session_key"`
	}
	_ = json.NewDecoder(loginResp.Body).Decode(&login)
	loginResp.Body.Close()
	check := url.Values{"openid": {wechatsim.OpenID(appID, "alice")}, "signature": {wechatsim.SessionSignature(login.SessionKey)}, "sig_method": {"hmac_sha256"}}
	assertErrcode(t, testkit.Get(t, "/wxa/checksession?"+check.Encode()), 0)
	if received := sim.APIRequests(); len(received) != 2 || received[1].Method != http.MethodGet || !strings.HasPrefix(received[1].RawQuery, check.Encode()+"&") {
		t.Errorf("the GET reached WeChat as %+v", received[len(received)-1])
	}
	// WeChat's own errors come back as WeChat gave them.
	resp = testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check", strings.NewReader(`{"content":"x","version":2,"scene":9,"openid":"o1"}`), "Content-Type: application/json")
	assertErrcode(t, resp, 40129)
}

// TestColdStartMakesOneTokenCall: requests that find no token share one
// stable_token call.
func TestColdStartMakesOneTokenCall(t *testing.T) {
	sim, _ := startGateway(t, "wxcold", "cold-secret", "cold-secret")
	sim.SetLatency(50 * time.Millisecond) // the requests meet while the token is fetched
	const n = 50
	failures := make(chan string, n)
	testkit.Parallel(n, n, func(int) {
		resp, err := testkit.Fetch(context.Background(), http.MethodPost, "/wxa/msg_sec_check", strings.NewReader(secCheckBody), "Content-Type: application/json")
		var answer struct{ Errcode int }
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(resp.Body, &answer) != nil || answer.Errcode != 0 {
			failures <- fmt.Sprintf("%v %v", resp, err)
		}
	})
	close(failures)
	for f := range failures {
		t.Errorf("a request failed: %s", f)
	}
	if got := sim.CallsTo(stableTokenPath); got != 1 {
		t.Errorf("%d requests on a cold start made %d stable_token calls; want 1", n, got)
	}
}

// TestRevokedTokenIsReplaced: when WeChat refuses the token, the call is
// made again with a new one, and the backend sees only the success.
func TestRevokedTokenIsReplaced(t *testing.T) {
	const appID = "wxrevoke"
	sim, _ := startGateway(t, appID, "revoke-secret", "revoke-secret")
	assertErrcode(t, secCheck(t), 0)
	sim.RevokeTokens(appID)
	assertErrcode(t, secCheck(t), 0)

	received := sim.APIRequests()
	if len(received) != 3 {
		t.Fatalf("WeChat received %d calls; want 3 (one, then a refused one and its repeat)", len(received))
	}
	first, _ := tokenOf(t, received[0])
	refused, _ := tokenOf(t, received[1])
	repeated, _ := tokenOf(t, received[2])
	if refused != first || repeated == first || !sim.TokenValid(appID, repeated) || !bytes.Equal(received[2].Body, []byte(secCheckBody)) {
		t.Error("the refused call was not repeated, body and all, with a new token")
	}
	if calls, forced := sim.CallsTo(stableTokenPath), sim.ForcedRefreshes(appID); calls != 2 || forced != 0 {
		t.Errorf("%d stable_token calls, %d forced; want 2, none forced (normal mode hands out the new token)", calls, forced)
	}
}

// TestLargeBodyStreamedNotRepeated: a body over 1 MiB is streamed to WeChat
// as it is; if WeChat refuses the token, its answer comes back as it is (the
// body cannot be sent again) and the next call has a new token.
func TestLargeBodyStreamedNotRepeated(t *testing.T) {
	const appID = "wxlarge"
	sim, _ := startGateway(t, appID, "large-secret", "large-secret")
	large := `{"content":"` + strings.Repeat("x", 2<<20) + `","version":2,"scene":2,"openid":"o1"}`
	send := func() testkit.Response {
		return testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check", strings.NewReader(large), "Content-Type: application/json")
	}
	assertErrcode(t, send(), 0)
	if received := sim.APIRequests(); len(received) != 1 || !bytes.Equal(received[0].Body, []byte(large)) {
		t.Fatal("WeChat did not receive the large body byte for byte")
	}
	sim.RevokeTokens(appID)
	assertErrcode(t, send(), 40001)
	assertErrcode(t, send(), 0)
	if received := sim.APIRequests(); len(received) != 3 {
		t.Errorf("WeChat received %d calls; want 3 (no repeat of a streamed body)", len(received))
	}
}

// TestSDKTokenRequestsAnsweredByTheGateway: a backend whose SDK fetches its
// own tokens gets the gateway's, and WeChat is not asked.
func TestSDKTokenRequestsAnsweredByTheGateway(t *testing.T) {
	const appID = "wxsdk"
	sim, _ := startGateway(t, appID, "sdk-secret", "sdk-secret")
	assertErrcode(t, secCheck(t), 0) // the gateway has its token
	type tokenAnswer struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	decode := func(resp testkit.Response) tokenAnswer {
		t.Helper()
		var a tokenAnswer
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || json.Unmarshal(resp.Body, &a) != nil {
			t.Fatalf("the token answer is %v", resp)
		}
		return a
	}
	// The SDK needs no real secret: the gateway has it.
	classic := decode(testkit.Get(t, "/cgi-bin/token?grant_type=client_credential&appid="+appID+"&secret=placeholder"))
	stable := decode(testkit.Send(t, http.MethodPost, "/cgi-bin/stable_token",
		strings.NewReader(`{"grant_type":"client_credential","appid":"`+appID+`","secret":"placeholder","force_refresh":true}`), "Content-Type: application/json"))
	if !sim.TokenValid(appID, classic.AccessToken) || stable.AccessToken != classic.AccessToken {
		t.Error("the SDKs did not get the gateway's valid token")
	}
	if classic.ExpiresIn <= 7000 || classic.ExpiresIn > 7200-60 {
		t.Errorf("expires_in %d; want what the token has left on the gateway (under 7140 s)", classic.ExpiresIn)
	}
	if stableCalls, classicCalls, forced := sim.CallsTo(stableTokenPath), sim.CallsTo(classicTokenPath), sim.ForcedRefreshes(appID); stableCalls != 1 || classicCalls != 0 || forced != 0 {
		t.Errorf("WeChat saw %d stable_token calls (%d forced) and %d /cgi-bin/token calls; want only the gateway's 1", stableCalls, forced, classicCalls)
	}
}

// TestClientAccessTokenReplaced: an access_token a backend sends, however
// spelled, never reaches WeChat.
func TestClientAccessTokenReplaced(t *testing.T) {
	const appID = "wxclienttoken"
	sim, _ := startGateway(t, appID, "clienttoken-secret", "clienttoken-secret")
	resp := testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check?access_token=backend-token&scene=1&access%5Ftoken=another",
		strings.NewReader(secCheckBody), "Content-Type: application/json")
	assertErrcode(t, resp, 0)
	received := sim.APIRequests()
	token, n := tokenOf(t, received[0])
	if n != 1 || !sim.TokenValid(appID, token) || !strings.HasPrefix(received[0].RawQuery, "scene=1&access_token=") {
		t.Errorf("WeChat received the query %q; want the backend's tokens replaced by the gateway's", received[0].RawQuery)
	}
}

// TestNoTokenNoCall: when WeChat gives no token, the backend gets the
// documented refusal and no call is made.
func TestNoTokenNoCall(t *testing.T) {
	const appID, wrongSecret = "wxnotoken", "not-the-notoken-secret"
	testkit.Forbid(wrongSecret)
	sim, _ := startGateway(t, appID, "notoken-secret", wrongSecret)
	assertRefusal(t, secCheck(t), http.StatusBadGateway, "wechat_token_unavailable", 40125)
	assertRefusal(t, testkit.Get(t, "/cgi-bin/token"), http.StatusBadGateway, "wechat_token_unavailable", 40125)
	if len(sim.APIRequests()) != 0 {
		t.Error("a call went to WeChat without a token")
	}
}

// TestWechatBusyOrSlow: -1 and silence get the documented refusals.
func TestWechatBusyOrSlow(t *testing.T) {
	sim, _ := startGateway(t, "wxslow", "slow-secret", "slow-secret", "timeout 200ms")
	sim.SetBusyRate(1)
	resp := secCheck(t)
	assertRefusal(t, resp, http.StatusServiceUnavailable, "wechat_unavailable", -1)
	sim.SetBusyRate(0)
	sim.SetLatency(time.Hour) // answers only once the gateway has given up
	assertRefusal(t, secCheck(t), http.StatusGatewayTimeout, "wechat_timeout", 0)
}

// TestTokenKeptAcrossReloads: a reload keeps the token; only a different
// app, endpoint or secret would fetch another.
func TestTokenKeptAcrossReloads(t *testing.T) {
	const appID, secret = "wxreload", "reload-secret"
	sim, simURL := startGateway(t, appID, secret, secret)
	assertErrcode(t, secCheck(t), 0)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(wechatAPI(appID, secret, simURL, "timeout 7s")))
	assertErrcode(t, secCheck(t), 0)
	if got := sim.CallsTo(stableTokenPath); got != 1 {
		t.Errorf("%d stable_token calls across a reload; want 1", got)
	}
}

// TestMetrics counts calls and token fetches by outcome.
func TestMetrics(t *testing.T) {
	const appID, secret, wrongSecret = "wxapimetrics", "apimetrics-secret", "apimetrics-wrong"
	testkit.Forbid(wrongSecret)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}, {AppID: appID + "2", Secret: secret}}})
	testkit.StartCaddy(t, testkit.GlobalOptions("metrics")+testkit.Site(
		"handle /metrics {\n\tmetrics\n}",
		"handle_path /wrong/* {\n"+wechatAPI(appID+"2", wrongSecret, simURL)+"\n}",
		testkit.Handle("", wechatAPI(appID, secret, simURL)),
	))
	scrape := func() string {
		t.Helper()
		resp := testkit.Get(t, "/metrics")
		if leaks := testkit.Leaks(string(resp.Body)); resp.StatusCode != http.StatusOK || len(leaks) > 0 {
			t.Fatalf("metrics: status %d, %d secret(s) or token(s)", resp.StatusCode, len(leaks))
		}
		return string(resp.Body)
	}
	samples := map[string]float64{
		`caddy_wechat_api_calls_total{app_id="wxapimetrics",outcome="forwarded"}`:                         2,
		`caddy_wechat_api_calls_total{app_id="wxapimetrics",outcome="repeated"}`:                          1,
		`caddy_wechat_api_calls_total{app_id="wxapimetrics",outcome="token"}`:                             1,
		`caddy_wechat_api_calls_total{app_id="wxapimetrics2",outcome="wechat_token_unavailable"}`:         1,
		`caddy_wechat_api_token_fetches_total{app_id="wxapimetrics",outcome="ok"}`:                        2,
		`caddy_wechat_api_token_fetches_total{app_id="wxapimetrics2",outcome="wechat_token_unavailable"}`: 1,
	}
	before := scrape()
	assertErrcode(t, secCheck(t), 0)
	assertErrcode(t, secCheck(t), 0)
	sim.RevokeTokens(appID)
	assertErrcode(t, secCheck(t), 0)
	if resp := testkit.Get(t, "/cgi-bin/token"); resp.StatusCode != http.StatusOK {
		t.Fatalf("token request: %v", resp)
	}
	assertRefusal(t, testkit.Send(t, http.MethodPost, "/wrong/wxa/msg_sec_check", strings.NewReader(secCheckBody)), http.StatusBadGateway, "wechat_token_unavailable", 40125)
	after := scrape()
	for sample, want := range samples {
		if got := sampleValue(after, sample) - sampleValue(before, sample); got != want {
			t.Errorf("%s grew by %v; want %v", sample, got, want)
		}
	}
}

// sampleValue is the value of a sample in a Prometheus text exposition, 0
// when absent.
func sampleValue(exposition, sample string) float64 {
	for line := range strings.Lines(exposition) {
		if value, ok := strings.CutPrefix(strings.TrimSpace(line), sample+" "); ok {
			var v float64
			_, _ = fmt.Sscan(value, &v)
			return v
		}
	}
	return 0
}

// TestBodyOverRequestBodyLimit: a body over request_body's max_size, sent
// without a length, is refused in the JSON shape, and nothing reaches WeChat.
func TestBodyOverRequestBodyLimit(t *testing.T) {
	const appID, secret = "wxbodylimit", "bodylimit-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site("request_body {\n\tmax_size 1KB\n}", wechatAPI(appID, secret, simURL)))
	// A MultiReader hides the length, so the body is sent chunked and the
	// limit is met while the handler reads it.
	body := io.MultiReader(strings.NewReader(`{"content":"` + strings.Repeat("x", 2000) + `"}`))
	assertRefusal(t, testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check", body, "Content-Type: application/json"),
		http.StatusRequestEntityTooLarge, "invalid_request", 0)
	if len(sim.APIRequests()) != 0 {
		t.Error("an oversized body reached WeChat")
	}
}

// TestTokenAnswersShapedLikeWechats: what the gateway answers in WeChat's
// name is what WeChat answers, byte for byte in shape: the JSON object and
// nothing after it (an SDK that escapes control characters before parsing
// fails on a trailing newline), and WeChat's Content-Type.
func TestTokenAnswersShapedLikeWechats(t *testing.T) {
	const appID, secret = "wxshape", "shape-secret"
	_, simURL := startGateway(t, appID, secret, secret)
	stableRequest := `{"grant_type":"client_credential","appid":"` + appID + `","secret":"` + secret + `"}`
	wechat, err := http.Post(simURL+stableTokenPath, "application/json", strings.NewReader(stableRequest))
	if err != nil {
		t.Fatal(err)
	}
	wechat.Body.Close()
	wechatType := wechat.Header.Get("Content-Type")

	for _, resp := range []testkit.Response{
		testkit.Get(t, classicTokenPath+"?grant_type=client_credential&appid="+appID+"&secret=placeholder"),
		testkit.Send(t, http.MethodPost, stableTokenPath, strings.NewReader(stableRequest), "Content-Type: application/json"),
	} {
		var answer struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(resp.Body, &answer) != nil {
			t.Fatalf("%s: %v", resp.Request.URL.Path, resp)
		}
		want := fmt.Sprintf(`{"access_token":%q,"expires_in":%d}`, answer.AccessToken, answer.ExpiresIn)
		if string(resp.Body) != want {
			// The token stays out of the test's output.
			shown := strings.ReplaceAll(string(resp.Body), answer.AccessToken, "…")
			t.Errorf("%s: the body is %q; want WeChat's bytes, {\"access_token\":\"…\",\"expires_in\":%d}", resp.Request.URL.Path, shown, answer.ExpiresIn)
		}
		if got := resp.Header.Get("Content-Type"); got != wechatType {
			t.Errorf("%s: Content-Type %q; want WeChat's %q", resp.Request.URL.Path, got, wechatType)
		}
		if resp.ContentLength != int64(len(want)) {
			t.Errorf("%s: Content-Length %d; want %d", resp.Request.URL.Path, resp.ContentLength, len(want))
		}
	}
}

// TestRefusalOfAnotherCredentialCostsLittle: an API that refuses another
// credential a backend's call carries (here a third-party platform's
// component_access_token) answers 40001 like a refused token. The gateway
// asks WeChat once whether it takes the token; it does, so the call is not
// repeated, the backend gets WeChat's answer, and refusals in the next 30 s
// cost WeChat nothing more: 10 such calls cost at most 15 requests in all.
func TestRefusalOfAnotherCredentialCostsLittle(t *testing.T) {
	const appID, secret = "wxothercred", "othercred-secret"
	const componentPath = "/cgi-bin/component/api_query_auth"
	const refusal = `{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest"}`
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	var requests, componentCalls atomic.Int64
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.URL.Path != componentPath {
			sim.ServeHTTP(w, r)
			return
		}
		componentCalls.Add(1)
		w.Header().Set("Content-Type", "application/json; encoding=utf-8")
		fmt.Fprint(w, refusal)
	}))
	t.Cleanup(wechat.Close)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(wechatAPI(appID, secret, wechat.URL)))

	for range 10 {
		resp := testkit.Send(t, http.MethodPost, componentPath+"?component_access_token=bogus",
			strings.NewReader(`{"component_appid":"wxc","authorization_code":"x"}`), "Content-Type: application/json")
		if resp.StatusCode != http.StatusOK || string(resp.Body) != refusal {
			t.Fatalf("got %v; want WeChat's 40001 as WeChat sent it", resp)
		}
	}
	stable, checks := sim.CallsTo(stableTokenPath), sim.CallsTo("/cgi-bin/get_api_domain_ip")
	if componentCalls.Load() != 10 || checks != 1 || stable != 2 || sim.ForcedRefreshes(appID) != 0 {
		t.Errorf("10 calls made %d API calls, %d token checks, %d stable_token calls (%d forced); want 10 (none repeated), 1, 2 (the first fetch, one look), none forced",
			componentCalls.Load(), checks, stable, sim.ForcedRefreshes(appID))
	}
	if n := requests.Load(); n > 15 {
		t.Errorf("10 calls cost WeChat %d requests; want at most 15", n)
	}
	// A call the token's own refusal spoils is still repeated with a new one.
	assertErrcode(t, secCheck(t), 0)
	sim.RevokeTokens(appID)
	assertErrcode(t, secCheck(t), 0)
}

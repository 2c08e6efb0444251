package wechatlogin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// badApps are app configurations refused at load, as a Caddyfile block
// (after the top-level lines, which give no WeChat app) and as the
// handler's JSON: the same message either way, the Caddyfile's with its
// line.
var badApps = []struct{ caddyfile, json, want string }{
	{"app tiktok tt1 {\n\tapp_secret s\n}", `{"apps":[{"platform":"tiktok","app_id":"tt1","app_secret":"s"}]}`,
		`app: unknown platform "tiktok": one of bilibili, douyin, qq, taptap, wechat`},
	{"app douyin tt1 {\n\tlogin_path /tt/login\n}", `{"apps":[{"platform":"douyin","app_id":"tt1"}]}`,
		"app douyin tt1: app_secret is required"},
	{"app qq 111 {\n\tapp_secret s\n\tbudget 101 1m\n}", `{"apps":[{"platform":"qq","app_id":"111","app_secret":"s","budget":{"events":101,"window":60000000000}}]}`,
		"app qq 111: budget: 101 per 1m0s is more than QQ allows (100 per player per minute; past it QQ answers 45011)"},
	{"app douyin tt1 {\n\tapp_secret s\n\tlogin_path tt\n}", `{"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"s","login_path":"tt"}]}`,
		`app douyin tt1: login_path must start with /: "tt"`},
	{"app douyin tt1 {\n\tapp_secret s\n\tendpoint ftp://x\n}", `{"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"s","endpoint":"ftp://x"}]}`,
		`app douyin tt1: endpoint must be an http or https base URL without a query or fragment, got scheme "ftp", host "x"`},
	// What only the whole configuration shows, Provision judges.
	{"app douyin tt1 {\n\tapp_secret s\n}\napp douyin tt2 {\n\tapp_secret s\n}",
		`{"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"s"},{"platform":"douyin","app_id":"tt2","app_secret":"s"}]}`,
		"login_path /tt/login is given to two apps: each app needs its own"},
	{"app douyin tt1 {\n\tapp_secret s\n}\napp qq tt1 {\n\tapp_secret s\n}",
		`{"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"s"},{"platform":"qq","app_id":"tt1","app_secret":"s"}]}`,
		"app_id tt1 is configured twice"},
	{"app douyin tt1 {\n\tapp_secret s\n}\nbudget 10 1m",
		`{"budget":{"events":10,"window":60000000000},"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"s"}]}`,
		"app_secret, login_path, endpoint and budget at the top are the WeChat app's, which needs app_id; an app block takes its own"},
	{"app douyin tt1 {\n\tapp_secret {env.WXL_NO_SUCH_VARIABLE}\n}", `{"apps":[{"platform":"douyin","app_id":"tt1","app_secret":"{env.WXL_NO_SUCH_VARIABLE}"}]}`,
		"app douyin tt1: app_secret is empty once its placeholders are resolved (is the environment variable or file there?)"},
}

func TestBadAppsRefusedAlikeInCaddyfileAndJSON(t *testing.T) {
	for _, tc := range badApps {
		t.Run(tc.want, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("wechat_login {\n" + tc.caddyfile + "\n}"))
			if err == nil {
				raw, _ := json.Marshal(&h)
				err = provisionConfig(t, raw)
			} else if msg, _, found := strings.Cut(err.Error(), ", at Testfile:"); found {
				err = errorString(msg)
			}
			if err == nil || err.Error() != tc.want {
				t.Errorf("Caddyfile:\ngot  %v\nwant %s", err, tc.want)
			}
			if err := provisionConfig(t, []byte(tc.json)); err == nil || err.Error() != tc.want {
				t.Errorf("JSON:\ngot  %v\nwant %s", err, tc.want)
			}
		})
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// provisionConfig provisions a handler from its JSON as Caddy would.
func provisionConfig(t *testing.T, raw []byte) error {
	t.Helper()
	var h Handler
	if err := caddy.StrictUnmarshalJSON(raw, &h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	defer h.Cleanup()
	if err := h.Provision(ctx); err != nil {
		return err
	}
	return h.Validate()
}

// A Douyin-only game configures Douyin alone: no WeChat app is made up.
func TestDouyinOnlyConfig(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("wechat_login {\n\tapp douyin tt1 {\n\t\tapp_secret s\n\t}\n}")); err != nil {
		t.Fatal(err)
	}
	if err := provisionHandler(t, &h); err != nil {
		t.Fatal(err)
	}
	if len(h.apps) != 1 || h.apps[0].platform != douyinPlatform || h.apps[0].loginPath != "/tt/login" ||
		h.apps[0].client.requestURL != "https://minigame.zijieapi.com/mgplatform/api/apps/jscode2session?appid=tt1&secret=s" {
		t.Fatalf("apps %+v", h.apps[0])
	}
	if h.appFor("/wx/login") != nil {
		t.Error("a WeChat login path was made up")
	}
}

// fakePlatforms answers every platform's exchange as the test sets it,
// recording the queries it was asked.
type fakePlatforms struct {
	mu      sync.Mutex
	answers map[string]string // path -> body
	queries []url.Values
}

func newFakePlatforms(t *testing.T, answers map[string]string) (*fakePlatforms, string) {
	f := &fakePlatforms{answers: answers}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.queries = append(f.queries, r.URL.Query())
		body, ok := f.answers[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakePlatforms) set(path, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[path] = body
}

func (f *fakePlatforms) last() url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries[len(f.queries)-1]
}

const (
	douyinExchangePath   = "/douyin/mgplatform/api/apps/jscode2session"
	qqExchangePath       = "/qq/sns/jscode2session"
	taptapExchangePath   = "/taptap/auth/v1/jscode2session"
	bilibiliExchangePath = "/bilibili/api/sns/jscode2session"
)

// withPlatformApps adds a Douyin, a QQ, a TapTap and a Bilibili app at the
// fake's endpoint.
func withPlatformApps(endpoint string) func(*Handler) {
	return func(h *Handler) {
		h.Apps = []*PlatformApp{
			{Platform: "douyin", AppID: "ttunittest", AppSecret: "douyin-unit-secret", Endpoint: endpoint + "/douyin"},
			{Platform: "qq", AppID: "1110000001", AppSecret: "qq-unit-secret", Endpoint: endpoint + "/qq"},
			{Platform: "taptap", AppID: "tapunittest", AppSecret: "taptap-unit-secret", Endpoint: endpoint + "/taptap"},
			{Platform: "bilibili", AppID: "biliunittest", AppSecret: "bilibili-unit-secret", Endpoint: endpoint + "/bilibili"},
		}
	}
}

// serveAt serves a request to target through h, with headers.
func serveAt(h *Handler, target string, header http.Header) loginResult {
	r, _ := newTestRequest(context.Background(), http.MethodGet, target, nil)
	for name, values := range header {
		r.Header[name] = values
	}
	up := &recordingUpstream{}
	res := loginResult{w: httptest.NewRecorder()}
	res.err = h.ServeHTTP(res.w, r, up.handler())
	if up.count() > 0 {
		res.upstream = up.headers[0]
	}
	return res
}

// Each platform's login asks its own exchange with its own parameters and
// gives the upstream the identity in its own family, and a session that
// names its app; the WeChat app is the v2 one, unchanged.
func TestLoginsOfEveryPlatformInOneHandler(t *testing.T) {
	_, wechatEndpoint := newTestSim(t)
	fake, endpoint := newFakePlatforms(t, map[string]string{
		douyinExchangePath: `{"error":0,"session_key":"dHQtc2Vzc2lvbi1rZXk=","openid":"ttOpenAlice","anonymous_openid":"","unionid":"ttUnionAlice"}`,
		qqExchangePath:     `{"errcode":0,"errmsg":"","openid":"qqOpenAlice","session_key":"cXEtc2Vzc2lvbi1rZXk=","unionid":""}`,
	})
	h := newTestHandler(t, wechatEndpoint, withPlatformApps(endpoint), withSessions(nil))

	wechat := serveAt(h, "/wx/login?code=alice.1", nil).checked(t)
	if wechat.upstream.Get("X-Wx-Openid") == "" || wechat.upstream.Get("X-Wx-Appid") != testAppID || wechat.w.Header().Get("X-Wx-Session") == "" {
		t.Fatalf("WeChat login: %d %s, upstream %v", wechat.w.Code, wechat.w.Body, wechat.upstream)
	}

	douyin := serveAt(h, "/tt/login?code=alice.2", nil).checked(t)
	if q := fake.last(); q.Get("code") != "alice.2" || q.Get("appid") != "ttunittest" || q.Get("secret") != "douyin-unit-secret" || q.Has("js_code") || q.Has("anonymous_code") {
		t.Errorf("Douyin was asked %v", q)
	}
	wantHeaders(t, "Douyin login", douyin.upstream, map[string]string{
		"X-Tt-Openid": "ttOpenAlice", "X-Tt-Unionid": "ttUnionAlice", "X-Tt-Appid": "ttunittest", "X-Tt-Source": "tt_client",
		"X-Tt-Anonymous-Openid": "", "X-Wx-Openid": "", "X-Tt-Session-Key": "",
	})
	douyinToken := douyin.w.Header().Get("X-Tt-Session")
	if douyinToken == "" || douyin.w.Header().Get("X-Wx-Session") != "" {
		t.Fatalf("Douyin login answered %v", douyin.w.Header())
	}

	qq := serveAt(h, "/qq/login?code=alice.3", nil).checked(t)
	if q := fake.last(); q.Get("js_code") != "alice.3" || q.Get("grant_type") != "authorization_code" || q.Get("appid") != "1110000001" {
		t.Errorf("QQ was asked %v", q)
	}
	wantHeaders(t, "QQ login", qq.upstream, map[string]string{
		"X-Qq-Openid": "qqOpenAlice", "X-Qq-Unionid": "", "X-Qq-Appid": "1110000001", "X-Qq-Source": "qq_client", "X-Wx-Openid": "",
	})
	qqToken := qq.w.Header().Get("X-Qq-Session")

	// A later request with each token gets its own app's identity, in its
	// own family, whichever header the token came in.
	for _, tc := range []struct {
		name   string
		header http.Header
		want   map[string]string
	}{
		{"Douyin bearer", bearerHeader(douyinToken), map[string]string{"X-Tt-Openid": "ttOpenAlice", "X-Tt-Appid": "ttunittest", "X-Wx-Openid": "", "X-Qq-Openid": ""}},
		{"Douyin X-TT-SESSION", http.Header{"X-Tt-Session": {douyinToken}}, map[string]string{"X-Tt-Openid": "ttOpenAlice", "X-Tt-Source": "tt_client"}},
		{"QQ in X-WX-SESSION", http.Header{"X-Wx-Session": {qqToken}}, map[string]string{"X-Qq-Openid": "qqOpenAlice", "X-Qq-Appid": "1110000001", "X-Tt-Openid": ""}},
		{"WeChat", bearerHeader(wechat.w.Header().Get("X-Wx-Session")), map[string]string{"X-Wx-Appid": testAppID, "X-Wx-Source": "wx_client", "X-Tt-Openid": ""}},
	} {
		res := serveAt(h, "/game", tc.header).checked(t)
		if !res.forwarded() {
			t.Fatalf("%s: %d %s", tc.name, res.w.Code, res.w.Body)
		}
		wantHeaders(t, tc.name, res.upstream, tc.want)
	}
}

func wantHeaders(t *testing.T, name string, got http.Header, want map[string]string) {
	t.Helper()
	for header, value := range want {
		if values := got.Values(header); (value == "" && len(values) != 0) || (value != "" && (len(values) != 1 || values[0] != value)) {
			t.Errorf("%s: the upstream got %s %q, want %q", name, header, values, value)
		}
	}
}

// A token of one app never passes as another's: the same claims with
// another app's id or platform are refused, and an app the handler does
// not serve is another app.
func TestSessionOfOneAppIsNoOtherAppsSession(t *testing.T) {
	clock := newTestClock()
	wechat := &loginApp{platform: wechatPlatform, appID: "wxgame"}
	douyin := &loginApp{platform: douyinPlatform, appID: "ttgame"}
	qq := &loginApp{platform: qqPlatform, appID: "wxgame2"}
	both := newSessionTokens([]*loginApp{wechat, douyin}, [][]byte{[]byte(sessionSecret)}, time.Hour, clock.Now)
	token, _ := both.issue(douyin, aliceIdentity)
	if _, app, err := both.verifyWithin(token, 0); err != nil || app != douyin {
		t.Fatalf("a Douyin token: %v %v", app, err)
	}
	// The same secret, the same app id, but WeChat's: refused.
	sameIDOnWechat := &loginApp{platform: wechatPlatform, appID: "ttgame"}
	other := newSessionTokens([]*loginApp{sameIDOnWechat, qq}, [][]byte{[]byte(sessionSecret)}, time.Hour, clock.Now)
	if _, _, err := other.verifyWithin(token, 0); err != errForeignSession {
		t.Errorf("a Douyin token verified at a WeChat app of the same id: %v", err)
	}
	wechatToken, _ := both.issue(wechat, aliceIdentity)
	if _, _, err := other.verifyWithin(wechatToken, 0); err != errForeignSession {
		t.Errorf("a token of an app the handler does not serve: %v", err)
	}
	// A WeChat token reads as it always did: no platform claim.
	if strings.Contains(string(decodeSegment(t, strings.Split(wechatToken, ".")[1])), "platform") {
		t.Error("a WeChat token names its platform: older gateways' tokens would not match")
	}
	// A login at one app is not charged to a player of another's token.
	r := httptest.NewRequest(http.MethodGet, "/tt/login", nil)
	if player := both.presentedPlayer(r, douyin, wechatToken, 0); player != "" {
		t.Errorf("a WeChat token charged Douyin player %q", player)
	}
}

// Douyin's anonymous players: an anonymous_code alone gives the upstream
// X-TT-ANONYMOUS-OPENID and no openid, and a session that carries it; with
// a code too, both.
func TestDouyinAnonymousLogin(t *testing.T) {
	_, wechatEndpoint := newTestSim(t)
	fake, endpoint := newFakePlatforms(t, map[string]string{
		douyinExchangePath: `{"error":0,"session_key":"","openid":"","anonymous_openid":"ttAnonPhone","unionid":""}`,
	})
	h := newTestHandler(t, wechatEndpoint, withPlatformApps(endpoint), withSessions(nil))

	anon := serveAt(h, "/tt/login?anonymous_code=phone.1&keep=1", nil).checked(t)
	if q := fake.last(); q.Get("anonymous_code") != "phone.1" || q.Has("code") {
		t.Errorf("Douyin was asked %v", q)
	}
	wantHeaders(t, "anonymous login", anon.upstream, map[string]string{
		"X-Tt-Anonymous-Openid": "ttAnonPhone", "X-Tt-Openid": "", "X-Tt-Appid": "ttunittest", "X-Tt-Source": "tt_client",
	})
	token := anon.w.Header().Get("X-Tt-Session")
	if later := serveAt(h, "/game", bearerHeader(token)).checked(t); !later.forwarded() {
		t.Fatalf("an anonymous player's session: %d %s", later.w.Code, later.w.Body)
	} else {
		wantHeaders(t, "anonymous session", later.upstream, map[string]string{"X-Tt-Anonymous-Openid": "ttAnonPhone", "X-Tt-Openid": ""})
	}

	fake.set(douyinExchangePath, `{"error":0,"session_key":"a2V5","openid":"ttOpenBob","anonymous_openid":"ttAnonPhone2","unionid":""}`)
	both := serveAt(h, "/tt/login", http.Header{"X-Tt-Code": {"bob.1"}, "X-Tt-Anonymous-Code": {"phone.2"}}).checked(t)
	if q := fake.last(); q.Get("code") != "bob.1" || q.Get("anonymous_code") != "phone.2" {
		t.Errorf("Douyin was asked %v", q)
	}
	wantHeaders(t, "login with both codes", both.upstream, map[string]string{"X-Tt-Openid": "ttOpenBob", "X-Tt-Anonymous-Openid": "ttAnonPhone2"})

	// WeChat has no anonymous codes: one alone is no login code.
	for _, header := range []http.Header{nil, {"X-Tt-Anonymous-Code": {"phone.3"}}} {
		if res := serveAt(h, "/wx/login?anonymous_code=phone.3", header); res.forwarded() || res.w.Code != http.StatusBadRequest {
			t.Errorf("a WeChat login with an anonymous code only: %d %s", res.w.Code, res.w.Body)
		}
	}
}

// tt.login gives a player who is not logged in to Douyin an anonymousCode
// and an empty code: a client that sends both as it got them, in the query
// or a JSON body, logs in anonymously rather than getting "the login code
// is empty"; Douyin is asked without the empty code. Both empty is still no
// code, and so is WeChat's empty code.
func TestDouyinEmptyCodeBesideAnonymousCode(t *testing.T) {
	_, wechatEndpoint := newTestSim(t)
	fake, endpoint := newFakePlatforms(t, map[string]string{
		douyinExchangePath: `{"error":0,"session_key":"","openid":"","anonymous_openid":"ttAnonPhone","unionid":""}`,
	})
	h := newTestHandler(t, wechatEndpoint, withPlatformApps(endpoint))

	query := serveAt(h, "/tt/login?code=&anonymous_code=phone.1", nil).checked(t)
	if !query.forwarded() {
		t.Fatalf("an empty code beside an anonymous code in the query: %d %s", query.w.Code, query.w.Body)
	}
	if q := fake.last(); q.Get("anonymous_code") != "phone.1" || q.Has("code") {
		t.Errorf("Douyin was asked %v", q)
	}
	wantHeaders(t, "anonymous login", query.upstream, map[string]string{"X-Tt-Anonymous-Openid": "ttAnonPhone", "X-Tt-Openid": ""})

	r, _ := newTestRequest(context.Background(), http.MethodPost, "/tt/login", strings.NewReader(`{"code":"","anonymous_code":"phone.2"}`))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	up := &recordingUpstream{}
	if err := h.ServeHTTP(w, r, up.handler()); err != nil || up.count() != 1 {
		t.Fatalf("an empty code beside an anonymous code in a JSON body: %v %d %s", err, w.Code, w.Body)
	}
	if q := fake.last(); q.Get("anonymous_code") != "phone.2" || q.Has("code") {
		t.Errorf("Douyin was asked %v", q)
	}

	for _, target := range []string{"/tt/login?code=&anonymous_code=", "/wx/login?code=&anonymous_code=phone.3"} {
		if res := serveAt(h, target, nil); res.forwarded() || res.w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d %s", target, res.w.Code, res.w.Body)
		}
	}
}

// Each platform's errors reach the client through the one refusal table,
// naming the platform and its own errcode.
func TestPlatformErrorsAreRefusedByKind(t *testing.T) {
	_, wechatEndpoint := newTestSim(t)
	fake, endpoint := newFakePlatforms(t, map[string]string{})
	h := newTestHandler(t, wechatEndpoint, withPlatformApps(endpoint), withBudget(60, time.Minute), func(h *Handler) {
		h.Retry = &RetryConfig{Attempts: 1}
	})
	for i, tc := range []struct {
		path, login, answer string
		status              int
		code                string
		errcode             int
		message             string
	}{
		{douyinExchangePath, "/tt/login", `{"error":1,"errcode":40018,"errmsg":"bad code","message":"bad code"}`, 401, refusalInvalidCode, 40018, "call tt.login again"},
		{douyinExchangePath, "/tt/login", `{"error":1,"errcode":40019,"errmsg":"bad anonymous code"}`, 401, refusalInvalidCode, 40019, "call tt.login again"},
		{douyinExchangePath, "/tt/login", `{"error":1,"errcode":40017,"errmsg":"bad secret"}`, 502, refusalMisconfigured, 40017, "misconfigured"},
		{douyinExchangePath, "/tt/login", `{"error":1,"errcode":-1,"errmsg":"system error"}`, 503, refusalUnavailable, -1, "Douyin is busy"},
		{douyinExchangePath, "/tt/login", `{"error":0,"session_key":"","openid":"","anonymous_openid":""}`, 502, refusalBadResponse, 0, "Douyin answered"},
		{qqExchangePath, "/qq/login", `{"errcode":40029,"errmsg":"invalid code"}`, 401, refusalInvalidCode, 40029, "call qq.login again"},
		{qqExchangePath, "/qq/login", `{"errcode":45011,"errmsg":"api minute-quota reach limit"}`, 429, refusalRateLimited, 45011, "QQ's per-player login limit"},
		{qqExchangePath, "/qq/login", `{"errcode":-1,"errmsg":"system busy"}`, 503, refusalUnavailable, -1, "QQ is busy"},
		// TapTap's error table says 1040029, its sample 40029.
		{taptapExchangePath, "/tap/login", `{"errcode":1040029,"errmsg":"invalid code"}`, 401, refusalInvalidCode, 1040029, "call tap.login again"},
		{taptapExchangePath, "/tap/login", `{"errcode":40029,"errmsg":"invalid code"}`, 401, refusalInvalidCode, 40029, "call tap.login again"},
		{bilibiliExchangePath, "/bili/login", `{"errcode":40029,"errmsg":"invalid code"}`, 401, refusalInvalidCode, 40029, "call bl.login again"},
		{bilibiliExchangePath, "/bili/login", `{"errcode":40001,"errmsg":"invalid appsecret"}`, 502, refusalMisconfigured, 40001, "misconfigured"},
		{bilibiliExchangePath, "/bili/login", `{"errcode":-1,"errmsg":"system busy"}`, 503, refusalUnavailable, -1, "Bilibili is busy"},
	} {
		fake.set(tc.path, tc.answer)
		res := serveAt(h, tc.login+"?code=player."+string(rune('a'+i)), nil).checked(t)
		var body errorBody
		_ = json.Unmarshal(res.w.Body.Bytes(), &body)
		gotErrcode := 0
		if body.Errcode != nil {
			gotErrcode = *body.Errcode
		}
		if res.forwarded() || res.w.Code != tc.status || body.Error != tc.code || gotErrcode != tc.errcode || !strings.Contains(body.Message, tc.message) {
			t.Errorf("%s %s: %d %s, want %d %s errcode %d", tc.login, tc.answer, res.w.Code, res.w.Body, tc.status, tc.code, tc.errcode)
		}
		if (tc.status == 429 || tc.status == 503) && res.w.Header().Get("Retry-After") == "" {
			t.Errorf("%s %s: no Retry-After", tc.login, tc.answer)
		}
	}
}

// The per-IP budget is one per client address across the apps; each app
// has its own player budget, within its platform's quota.
func TestBudgetsAcrossPlatforms(t *testing.T) {
	_, wechatEndpoint := newTestSim(t)
	_, endpoint := newFakePlatforms(t, map[string]string{
		douyinExchangePath: `{"error":0,"session_key":"a2V5","openid":"ttOpenAlice"}`,
		qqExchangePath:     `{"errcode":0,"openid":"qqOpenAlice","session_key":"a2V5"}`,
	})
	h := newTestHandler(t, wechatEndpoint, withPlatformApps(endpoint), func(h *Handler) {
		h.IPBudget = &Budget{Events: 3, Window: caddy.Duration(time.Minute)}
	})
	for i, login := range []string{"/wx/login?code=alice.1", "/tt/login?code=a.2", "/qq/login?code=a.3"} {
		if res := serveAt(h, login, nil).checked(t); !res.forwarded() {
			t.Fatalf("login %d: %d %s", i, res.w.Code, res.w.Body)
		}
	}
	if res := serveAt(h, "/tt/login?code=a.4", nil).checked(t); res.forwarded() || res.w.Code != http.StatusTooManyRequests {
		t.Errorf("a 4th login from one address, on another platform: %d %s", res.w.Code, res.w.Body)
	}
	if h.apps[1].budget != (Budget{Events: defaultBudgetEvents, Window: caddy.Duration(defaultBudgetWindow)}) {
		t.Errorf("Douyin's default budget: %+v", h.apps[1].budget)
	}
}

func TestReadDouyinAnswer(t *testing.T) {
	for _, tc := range []struct {
		body    string
		want    Identity
		kind    failureKind
		errcode int
	}{
		{body: `{"error":0,"session_key":"k","openid":"o1","anonymous_openid":"","unionid":"u1"}`, want: Identity{OpenID: "o1", UnionID: "u1", SessionKey: "k"}},
		{body: `{"error":0,"session_key":"","openid":"","anonymous_openid":"a1"}`, want: Identity{AnonymousOpenID: "a1"}},
		{body: `{"error":0,"session_key":"k","openid":"o1","anonymous_openid":"a1"}`, want: Identity{OpenID: "o1", AnonymousOpenID: "a1", SessionKey: "k"}},
		{body: `{"error":1,"errcode":40018,"errmsg":"bad code","message":"bad code"}`, kind: kindInvalidCode, errcode: 40018},
		{body: `{"error":1,"errcode":40015,"errmsg":"bad appid"}`, kind: kindMisconfigured, errcode: 40015},
		{body: `{"error":1,"errcode":-1,"errmsg":"system error"}`, kind: kindBusy, errcode: -1},
		{body: `{"error":2}`, kind: kindMisconfigured, errcode: 2},
		{body: `{"error":0,"openid":"o1"}`, kind: kindBadResponse},
		{body: `{"error":0}`, kind: kindBadResponse},
		{body: `{"error":"0","openid":"o1","session_key":"k"}`, kind: kindBadResponse},
		{body: `{"error":0,"openid":"o\u0000","session_key":"k"}`, kind: kindBadResponse},
		{body: `<html>`, kind: kindBadResponse},
	} {
		id, err := douyinPlatform.answer.read([]byte(tc.body))
		if tc.kind == 0 {
			if err != nil || id != tc.want {
				t.Errorf("%s: got %+v, %v; want %+v", tc.body, id, err, tc.want)
			}
			continue
		}
		if err == nil || err.kind != tc.kind || err.errcode != tc.errcode || err.hasErrcode != (tc.errcode != 0) {
			t.Errorf("%s: got %+v, want kind %d errcode %d", tc.body, err, tc.kind, tc.errcode)
		}
	}
}

// FuzzReadDouyinAnswer: whatever Douyin answers, an identity accepted names
// a player in header-safe values and earns a session that verifies as
// itself; a failure is refused from the table.
func FuzzReadDouyinAnswer(f *testing.F) {
	f.Add([]byte(`{"error":0,"session_key":"k","openid":"o1","anonymous_openid":"a1","unionid":"u1"}`))
	f.Add([]byte(`{"error":1,"errcode":40018,"errmsg":"bad code"}`))
	f.Add([]byte(`{"error":0,"anonymous_openid":"a\u00001"}`))
	douyin := &loginApp{platform: douyinPlatform, appID: "ttfuzz"}
	tokens := newSessionTokens([]*loginApp{douyin}, [][]byte{[]byte(sessionSecret)}, time.Hour, newTestClock().Now)
	f.Fuzz(func(t *testing.T, body []byte) {
		id, err := douyinPlatform.answer.read(body)
		if err != nil {
			_ = loginRefuser(douyinPlatform, retryPolicy{attempts: 1}).refusal(err, time.Now())
			return
		}
		if !id.wellFormed() {
			t.Fatalf("accepted %q as %+v", body, id)
		}
		token, _ := tokens.issue(douyin, id)
		got, app, verr := tokens.verifyWithin(token, 0)
		if verr != nil || app != douyin || got != (Identity{OpenID: id.OpenID, UnionID: id.UnionID, AnonymousOpenID: id.AnonymousOpenID}) {
			t.Fatalf("accepted %q, whose session verifies as %+v %v", body, got, verr)
		}
	})
}

// What the fleet stores is platform-neutral: a failure is its kind and the
// platform's errcode, under a tag an older gateway does not open (its 'e'
// refusals held HTTP status and message), an identity over budget is not
// an older gateway's plain identity ('i'), and a refusal an older gateway
// stored is not believed: the code is asked about anew.
func TestStoredResultsArePlatformNeutral(t *testing.T) {
	srv := testkit.StartRedis(t)
	_, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	k := a.claimFor(newCodeKey(fleetAppID, credentials{code: fleetCode}))
	var plain map[string]any
	open := func(stored []byte) {
		t.Helper()
		plain = nil
		if err := a.app.open(k.result, string(stored), &plain, time.Now()); err != nil {
			t.Fatal(err)
		}
	}

	failure := a.sealResult(k, failing(errcodeInvalidCode))
	open(failure)
	if failure[0] != 'f' || len(plain) != 2 || plain["failure"] != "invalid_code" || plain["errcode"] != float64(40029) {
		t.Errorf("a stored failure: %c %v, want 'f' with its kind and errcode alone", failure[0], plain)
	}
	overBudget := a.sealResult(k, codeResult{id: fleetIdentity, budgetWait: 1500 * time.Millisecond})
	open(overBudget)
	if overBudget[0] != 'o' || len(plain) != 3 || plain["openid"] != fleetIdentity.OpenID {
		t.Errorf("a stored identity over budget: %c %v, want 'o' with the identity alone (a login served it asks the budget)", overBudget[0], plain)
	}
	identity := a.sealResult(k, proving(fleetIdentity))
	open(identity)
	if identity[0] != 'i' || len(plain) != 3 {
		t.Errorf("a stored identity: %c %v, want 'i' with openid, unionid and session_key as before", identity[0], plain)
	}

	// What a gateway before platforms stored for the waiters of a call
	// WeChat refused.
	legacy := a.app.seal('e', k.result, map[string]any{"status": 401, "code": "invalid_code", "message": "the login code is invalid or expired; call wx.login again", "errcode": 40029}, time.Now().Add(time.Minute))
	if _, _, err := a.openResult(k, string(legacy)); err == nil {
		t.Error("an older gateway's refusal was opened")
	}
	exchange := released(proving(fleetIdentity))
	if res, outcome := a.answer(k, string(legacy), redeemedByJoining, exchange.exchange, newLocalCodes(time.Minute, unlimited{}).charge); res != proving(fleetIdentity) || outcome != redeemedByCall || exchange.calls.Load() != 1 {
		t.Errorf("a waiter on an older gateway's refusal: %+v %v after %d calls, want the platform asked", res, outcome, exchange.calls.Load())
	}
}

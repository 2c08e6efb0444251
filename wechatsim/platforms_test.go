package wechatsim_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

// One app per platform (WeChat's is testApps' first), and a bound one for
// each platform other than WeChat.
const (
	qqID, ttID, tapID, biliID = "1110000001", "tt0000000000000001", "tap0000000001", "bili0000000001"
	otherSecret               = "secret-other"
)

var platformApps = []wechatsim.App{
	{Platform: wechatsim.QQ, AppID: qqID, Secret: otherSecret},
	{Platform: wechatsim.Douyin, AppID: ttID, Secret: otherSecret},
	{Platform: wechatsim.TapTap, AppID: tapID, Secret: otherSecret},
	{Platform: wechatsim.Bilibili, AppID: biliID, Secret: otherSecret},
	{Platform: wechatsim.QQ, AppID: "bound-" + qqID, Secret: otherSecret, UnionBound: true},
	{Platform: wechatsim.Douyin, AppID: "bound-" + ttID, Secret: otherSecret, UnionBound: true},
	{Platform: wechatsim.TapTap, AppID: "bound-" + tapID, Secret: otherSecret, UnionBound: true},
	{Platform: wechatsim.Bilibili, AppID: "bound-" + biliID, Secret: otherSecret, UnionBound: true},
}

func newPlatformSim(t *testing.T, opts wechatsim.Options) (*wechatsim.Server, *httptest.Server) {
	t.Helper()
	opts.Apps = append(slices.Clone(testApps), platformApps...)
	return wechatsimtest.NewTestServer(t, opts)
}

// login calls p's login endpoint through the base URL a gateway would be
// given, with query q.
func login(t *testing.T, ts *httptest.Server, p wechatsim.Platform, q url.Values) result {
	t.Helper()
	r, err := loginAt(ts, p, q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// loginAt is login for goroutines and loops that must not stop the test.
func loginAt(ts *httptest.Server, p wechatsim.Platform, q url.Values) (result, error) {
	realPath := map[wechatsim.Platform]string{
		wechatsim.WeChat:   "/sns/jscode2session",
		wechatsim.QQ:       "/sns/jscode2session",
		wechatsim.Douyin:   "/mgplatform/api/apps/jscode2session",
		wechatsim.TapTap:   "/auth/v1/jscode2session",
		wechatsim.Bilibili: "/api/sns/jscode2session",
	}[p]
	base := wechatsimtest.Endpoint(ts, p)
	resp, err := ts.Client().Get(base + realPath + "?" + q.Encode())
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	r := result{path: p.LoginPath(), status: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
	return r, decodeJSON(resp, &r.fields)
}

func TestPlatformLoginPaths(t *testing.T) {
	want := map[wechatsim.Platform]string{
		wechatsim.WeChat:   "/sns/jscode2session",
		"":                 "/sns/jscode2session",
		wechatsim.QQ:       "/qq/sns/jscode2session",
		wechatsim.Douyin:   "/douyin/mgplatform/api/apps/jscode2session",
		wechatsim.TapTap:   "/taptap/auth/v1/jscode2session",
		wechatsim.Bilibili: "/bilibili/api/sns/jscode2session",
	}
	for p, path := range want {
		if got := p.LoginPath(); got != path {
			t.Errorf("%q.LoginPath() = %q; want %q", p, got, path)
		}
		if !p.Known() {
			t.Errorf("%q.Known() = false", p)
		}
	}
	if wechatsim.Platform("kuaishou").Known() {
		t.Error(`"kuaishou" is known`)
	}
	if got := wechatsim.Douyin.Endpoint("http://127.0.0.1:8931/"); got != "http://127.0.0.1:8931/douyin" {
		t.Errorf("Endpoint = %q", got)
	}
	if got := wechatsim.WeChat.Endpoint("http://127.0.0.1:8931"); got != "http://127.0.0.1:8931" {
		t.Errorf("WeChat's Endpoint = %q", got)
	}
	if got := wechatsim.Platforms(); len(got) != 5 {
		t.Errorf("Platforms() = %v", got)
	}

	// Only the logins are simulated under a prefix, and each only at its own
	// platform's path.
	_, ts := newPlatformSim(t, wechatsim.Options{})
	for _, path := range []string{"/qq/cgi-bin/token", "/douyin/sns/jscode2session", "/qq/mgplatform/api/apps/jscode2session", "/taptap/sns/jscode2session", "/wechat/sns/jscode2session"} {
		resp, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d; want 404", path, resp.StatusCode)
		}
	}
}

// wechatShaped is what a platform with WeChat's jscode2session says where
// it differs from WeChat.
type wechatShaped struct {
	platform    wechatsim.Platform
	appid       string
	contentType string
	// every is true when every answer carries all fields (QQ: errcode 0 and
	// empty strings on success, empty openid etc. on failure).
	every                        bool
	invalid, reused, badSecret   int
	refusesBlocked, refusesQuota bool
	openID, unionID              *regexp.Regexp
	quotaCode                    int
}

var (
	oID      = regexp.MustCompile(`^o[A-Za-z0-9_-]{27}$`)
	upperHex = regexp.MustCompile(`^[0-9A-F]{32}$`)
	uid      = regexp.MustCompile(`^UID_[0-9A-F]{32}$`)
	dyID     = regexp.MustCompile(`^_000[A-Za-z0-9_-]{32}$`)
	uuid     = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

var wechatShapedPlatforms = []wechatShaped{
	{platform: wechatsim.QQ, appid: qqID, contentType: "application/json", every: true,
		invalid: 40029, reused: 40029, badSecret: 40125, refusesQuota: true, quotaCode: 45011,
		openID: upperHex, unionID: uid},
	{platform: wechatsim.TapTap, appid: tapID, contentType: "application/json; charset=utf-8",
		invalid: 1040029, reused: 1040029, badSecret: 40125, openID: oID, unionID: oID},
	{platform: wechatsim.Bilibili, appid: biliID, contentType: "application/json; charset=utf-8",
		invalid: 40029, reused: 40029, badSecret: 40001, openID: oID, unionID: oID},
}

// wantFields checks r has exactly the given fields with these values.
func wantFields(t *testing.T, r result, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got, ok := r.fields[k]; !ok || got != v {
			t.Errorf("%s: %s = %v; want %v (answer %v)", r.path, k, got, v, r.fields)
		}
	}
	for k := range r.fields {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected field %q in %v", r.path, k, r.fields)
		}
	}
}

func (w wechatShaped) wantError(t *testing.T, r result, code int) {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != w.contentType {
		t.Errorf("%s: status %d, Content-Type %q; want 200, %s", w.platform, r.status, r.contentType, w.contentType)
	}
	errmsg, _ := r.fields["errmsg"].(string)
	if errmsg == "" || ridSuffix.MatchString(errmsg) {
		t.Errorf("%s: errmsg %q; want a message without WeChat's rid", w.platform, errmsg)
	}
	want := map[string]any{"errcode": float64(code), "errmsg": errmsg}
	if w.every {
		for _, k := range []string{"openid", "session_key", "uin", "unionid"} {
			want[k] = ""
		}
	}
	wantFields(t, r, want)
}

// wantSession checks r is player's login in appid and returns its
// session_key.
func (w wechatShaped) wantSession(t *testing.T, r result, appid, player string, bound bool) string {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != w.contentType {
		t.Errorf("%s: status %d, Content-Type %q; want 200, %s", w.platform, r.status, r.contentType, w.contentType)
	}
	key, _ := r.fields["session_key"].(string)
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		t.Errorf("%s: session_key %q; want base64 of 16 bytes", w.platform, key)
	}
	openid := w.platform.OpenID(appid, player)
	want := map[string]any{"openid": openid, "session_key": key}
	if !w.openID.MatchString(openid) {
		t.Errorf("%s: openid %q does not look like the platform's", w.platform, openid)
	}
	if bound {
		want["unionid"] = w.platform.UnionID(player)
		if !w.unionID.MatchString(w.platform.UnionID(player)) {
			t.Errorf("%s: unionid %q does not look like the platform's", w.platform, w.platform.UnionID(player))
		}
	}
	if w.every {
		want["errcode"], want["errmsg"], want["uin"] = float64(0), "", ""
		if !bound {
			want["unionid"] = ""
		}
	}
	wantFields(t, r, want)
	return key
}

// The WeChat-shaped platforms answer as their docs say: QQ's
// (q.qq.com/wiki/develop/miniprogram/server/open_port/port_login.html)
// errcode -1, 0, 40029 and 45011; TapTap's
// (developer.taptap.cn/minigameapidoc/dev/server/login/code2Session/)
// 1040029; Bilibili's WeChat's codes with getAccessToken's 40001 for a bad
// secret.
func TestWeChatShapedPlatforms(t *testing.T) {
	for _, w := range wechatShapedPlatforms {
		t.Run(string(w.platform), func(t *testing.T) {
			s, ts := newPlatformSim(t, wechatsim.Options{})
			get := func(appid, secret, code string) result {
				t.Helper()
				return login(t, ts, w.platform, params(appid, secret, code))
			}

			w.wantSession(t, get(w.appid, otherSecret, "alice"), w.appid, "alice", false)
			w.wantSession(t, get(w.appid, otherSecret, "alice.2"), w.appid, "alice", false)
			w.wantSession(t, get("bound-"+w.appid, otherSecret, "alice"), "bound-"+w.appid, "alice", true)
			if got := s.CallsFor(w.platform.OpenID(w.appid, "alice")); got != 2 {
				t.Errorf("CallsFor(alice) = %d; want 2", got)
			}

			// A code redeems once.
			w.wantError(t, get(w.appid, otherSecret, "alice"), w.reused)

			// Reserved players, twice: a refusal spends no code.
			for range 2 {
				w.wantError(t, get(w.appid, otherSecret, "invalid.1"), w.invalid)
				w.wantError(t, get(w.appid, otherSecret, ".1"), w.invalid)
				w.wantError(t, get(w.appid, otherSecret, "busy.1"), -1)
			}
			if w.refusesQuota {
				w.wantError(t, get(w.appid, otherSecret, "quota.1"), w.quotaCode)
			} else {
				w.wantSession(t, get(w.appid, otherSecret, "quota.1"), w.appid, "quota", false)
			}
			// No platform but WeChat documents a blocked user's refusal.
			w.wantSession(t, get(w.appid, otherSecret, "blocked.1"), w.appid, "blocked", false)

			// Credentials, checked with the platform's own words; an app of
			// another platform is unknown here.
			w.wantError(t, get(w.appid, "wrong", "carol"), w.badSecret)
			w.wantError(t, get(appID, appSecret, "carol"), 40013)
			w.wantError(t, get("nope", otherSecret, "carol"), 40013)
			w.wantError(t, get("", otherSecret, "carol"), 41002)
			w.wantError(t, get(w.appid, "", "carol"), 41004)
			w.wantError(t, get(w.appid, otherSecret, ""), 41008)
			q := params(w.appid, otherSecret, "carol")
			q.Set("grant_type", "client_credential")
			w.wantError(t, login(t, ts, w.platform, q), 40002)
			// None of those spent carol's code.
			w.wantSession(t, get(w.appid, otherSecret, "carol"), w.appid, "carol", false)

			if s.Calls() != 0 {
				t.Errorf("WeChat's Calls() = %d; want 0", s.Calls())
			}
		})
	}
}

func TestPlatformsRequireGET(t *testing.T) {
	_, ts := newPlatformSim(t, wechatsim.Options{})
	for _, w := range wechatShapedPlatforms {
		resp, err := ts.Client().PostForm(ts.URL+w.platform.LoginPath(), params(w.appid, otherSecret, "alice"))
		if err != nil {
			t.Fatal(err)
		}
		r := result{path: w.platform.LoginPath(), status: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
		err = decodeJSON(resp, &r.fields)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		w.wantError(t, r, 43001)
	}
}

// QQ allows 100 exchanges per user per minute, like WeChat; TapTap and
// Bilibili document no limit.
func TestPlatformMinuteQuota(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 30, 0, time.UTC)
	clock := testkit.NewClock(t0)
	_, ts := newPlatformSim(t, wechatsim.Options{Now: clock.Now})
	for _, w := range wechatShapedPlatforms {
		clock.Set(t0)
		for i := range 100 {
			w.wantSession(t, login(t, ts, w.platform, params(w.appid, otherSecret, fmt.Sprintf("dave.%d", i))), w.appid, "dave", false)
		}
		over := login(t, ts, w.platform, params(w.appid, otherSecret, "dave.over"))
		if w.quotaCode == 0 {
			w.wantSession(t, over, w.appid, "dave", false)
			continue
		}
		w.wantError(t, over, w.quotaCode)
		// Another player is fine, and a minute later so is dave, with the
		// same code: 45011 did not spend it.
		w.wantSession(t, login(t, ts, w.platform, params(w.appid, otherSecret, "erin")), w.appid, "erin", false)
		clock.Set(t0.Add(time.Minute))
		w.wantSession(t, login(t, ts, w.platform, params(w.appid, otherSecret, "dave.over")), w.appid, "dave", false)
	}
}

// douyinParams is a Douyin code2Session query; empty values are left out.
func douyinParams(appid, secret, code, anonymousCode string) url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"appid": appid, "secret": secret, "code": code, "anonymous_code": anonymousCode} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

const douyinJSON = "application/json; charset=utf-8"

// wantDouyinError checks r is Douyin's failure: a non-zero error, errcode,
// and errmsg repeated in message.
func wantDouyinError(t *testing.T, r result, errcode int) {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != douyinJSON {
		t.Errorf("status %d, Content-Type %q; want 200, %s", r.status, r.contentType, douyinJSON)
	}
	if e, _ := r.fields["error"].(float64); e == 0 {
		t.Errorf("error = %v; want non-zero", r.fields["error"])
	}
	msg, _ := r.fields["errmsg"].(string)
	if msg == "" {
		t.Errorf("errmsg empty in %v", r.fields)
	}
	wantFields(t, r, map[string]any{"error": r.fields["error"], "errcode": float64(errcode), "errmsg": msg, "message": msg})
}

// wantDouyinLogin checks r is Douyin's success for player (code) and/or
// device (anonymous_code), "" for neither, and returns the session_key.
func wantDouyinLogin(t *testing.T, r result, appid, player, device string, bound bool) string {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != douyinJSON {
		t.Errorf("status %d, Content-Type %q; want 200, %s", r.status, r.contentType, douyinJSON)
	}
	key, _ := r.fields["session_key"].(string)
	want := map[string]any{"error": float64(0), "session_key": "", "openid": "", "anonymous_openid": "", "unionid": ""}
	if player != "" {
		if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
			t.Errorf("session_key %q; want base64 of 16 bytes", key)
		}
		want["session_key"], want["openid"] = key, wechatsim.Douyin.OpenID(appid, player)
		if bound {
			want["unionid"] = wechatsim.Douyin.UnionID(player)
		}
	}
	if device != "" {
		want["anonymous_openid"] = wechatsim.AnonymousOpenID(appid, device)
	}
	wantFields(t, r, want)
	return key
}

// Douyin's code2Session
// (developer.open-douyin.com/docs/resource/zh-CN/mini-game/develop/server/log-in/code-2-session):
// code gives openid, session_key and unionid; anonymous_code gives
// anonymous_openid; each code is used once.
func TestDouyinLogin(t *testing.T) {
	s, ts := newPlatformSim(t, wechatsim.Options{})
	get := func(appid, code, anonymousCode string) result {
		t.Helper()
		return login(t, ts, wechatsim.Douyin, douyinParams(appid, otherSecret, code, anonymousCode))
	}
	bound := "bound-" + ttID

	wantDouyinLogin(t, get(ttID, "alice", ""), ttID, "alice", "", false)
	wantDouyinLogin(t, get(bound, "alice", ""), bound, "alice", "", true)
	// A player not logged in to Douyin has only an anonymous code.
	wantDouyinLogin(t, get(ttID, "", "phone1"), ttID, "", "phone1", false)
	wantDouyinLogin(t, get(ttID, "", "phone1.2"), ttID, "", "phone1", false)
	// A logged-in player's anonymous code comes along for data migration.
	wantDouyinLogin(t, get(bound, "alice.2", "phone1"), bound, "alice", "phone1", true)

	if got := s.CallsFor(wechatsim.Douyin.OpenID(ttID, "alice")); got != 1 {
		t.Errorf("CallsFor(alice) = %d; want 1", got)
	}
	if got := s.CallsFor(wechatsim.AnonymousOpenID(ttID, "phone1")); got != 2 {
		t.Errorf("CallsFor(phone1) = %d; want 2", got)
	}
	// Reserved names Douyin documents no error for are ordinary players.
	wantDouyinLogin(t, get(ttID, "blocked", ""), ttID, "blocked", "", false)
	wantDouyinLogin(t, get(ttID, "quota", ""), ttID, "quota", "", false)
	// No per-user quota is documented.
	for i := range 101 {
		wantDouyinLogin(t, get(ttID, fmt.Sprintf("dave.%d", i), ""), ttID, "dave", "", false)
	}
}

func TestDouyinErrors(t *testing.T) {
	_, ts := newPlatformSim(t, wechatsim.Options{})
	tests := []struct {
		name                               string
		appid, secret, code, anonymousCode string
		want                               int
	}{
		{"no appid", "", otherSecret, "alice", "", 40014},
		{"no secret", ttID, "", "alice", "", 40014},
		{"neither code", ttID, otherSecret, "", "", 40014},
		{"unknown appid", "tt-nope", otherSecret, "alice", "", 40015},
		{"a WeChat app", appID, appSecret, "alice", "", 40015},
		{"wrong secret", ttID, "wrong", "alice", "", 40017},
		{"invalid code", ttID, otherSecret, "invalid.1", "", 40018},
		{"empty player", ttID, otherSecret, ".1", "", 40018},
		{"invalid anonymous code", ttID, otherSecret, "", "invalid.1", 40019},
		{"valid code, invalid anonymous code", ttID, otherSecret, "alice", "invalid", 40019},
		{"busy code", ttID, otherSecret, "busy", "", -1},
		{"busy anonymous code", ttID, otherSecret, "", "busy", -1},
	}
	for _, tt := range tests {
		// Twice: a refusal spends nothing.
		for range 2 {
			r := login(t, ts, wechatsim.Douyin, douyinParams(tt.appid, tt.secret, tt.code, tt.anonymousCode))
			t.Run(tt.name, func(t *testing.T) { wantDouyinError(t, r, tt.want) })
		}
	}
	// alice's code was refused with the invalid anonymous code, and is
	// still good.
	wantDouyinLogin(t, login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, "alice", "")), ttID, "alice", "", false)
}

// Douyin has no "code used" error: a second use is a bad code (40018), or
// a bad anonymous code (40019).
func TestDouyinCodesRedeemOnce(t *testing.T) {
	_, ts := newPlatformSim(t, wechatsim.Options{})
	get := func(code, anonymousCode string) result {
		t.Helper()
		return login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, code, anonymousCode))
	}
	wantDouyinLogin(t, get("alice.1", "phone.1"), ttID, "alice", "phone", false)
	wantDouyinError(t, get("alice.1", ""), 40018)
	wantDouyinError(t, get("", "phone.1"), 40019)
	// A code and an anonymous code of the same text are distinct codes.
	wantDouyinLogin(t, get("bob.1", ""), ttID, "bob", "", false)
	wantDouyinLogin(t, get("", "bob.1"), ttID, "", "bob", false)
}

// A player's ids differ per app and per platform (a platform gives each app
// its own openid), and look like each platform's.
func TestPlatformIDs(t *testing.T) {
	seen := map[string]string{}
	add := func(what, id string) {
		t.Helper()
		if prev, dup := seen[id]; dup {
			t.Errorf("%s and %s are both %q", prev, what, id)
		}
		seen[id] = what
	}
	shapes := map[wechatsim.Platform][2]*regexp.Regexp{
		wechatsim.WeChat: {oID, oID}, wechatsim.QQ: {upperHex, uid}, wechatsim.Douyin: {dyID, uuid},
		wechatsim.TapTap: {oID, oID}, wechatsim.Bilibili: {oID, oID},
	}
	for _, p := range wechatsim.Platforms() {
		for _, appid := range []string{"app1", "app2"} {
			id := p.OpenID(appid, "alice")
			if id != p.OpenID(appid, "alice") || !shapes[p][0].MatchString(id) {
				t.Errorf("%s.OpenID(%s, alice) = %q: unstable or not the platform's shape", p, appid, id)
			}
			add(fmt.Sprintf("%s openid in %s", p, appid), id)
		}
		id := p.UnionID("alice")
		if !shapes[p][1].MatchString(id) {
			t.Errorf("%s.UnionID(alice) = %q: not the platform's shape", p, id)
		}
		add(string(p)+" unionid", id)
	}
	add("anonymous_openid", wechatsim.AnonymousOpenID("app1", "alice"))
	if wechatsim.Platform("").OpenID("app1", "alice") != wechatsim.OpenID("app1", "alice") {
		t.Error(`the zero Platform is not WeChat`)
	}
}

func TestCallsOn(t *testing.T) {
	s, ts := newPlatformSim(t, wechatsim.Options{})
	redeem(t, ts, appID, appSecret, "alice")
	for i, w := range wechatShapedPlatforms {
		for range i + 1 {
			login(t, ts, w.platform, params(w.appid, "wrong", "alice"))
		}
	}
	for range 4 {
		login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, "", ""))
	}
	want := map[wechatsim.Platform]int64{wechatsim.WeChat: 1, wechatsim.QQ: 1, wechatsim.TapTap: 2, wechatsim.Bilibili: 3, wechatsim.Douyin: 4}
	for p, n := range want {
		if got := s.CallsOn(p); got != n {
			t.Errorf("CallsOn(%s) = %d; want %d", p, got, n)
		}
	}
	if s.Calls() != 1 {
		t.Errorf("Calls() = %d; want WeChat's 1", s.Calls())
	}
	s.ResetCalls()
	for p := range want {
		if got := s.CallsOn(p); got != 0 {
			t.Errorf("after ResetCalls, CallsOn(%s) = %d", p, got)
		}
	}
}

// BusyRate fails every platform's calls with its own system error, before
// the code is spent.
func TestBusyRateOnEveryPlatform(t *testing.T) {
	s, ts := newPlatformSim(t, wechatsim.Options{BusyRate: 1})
	for _, w := range wechatShapedPlatforms {
		w.wantError(t, login(t, ts, w.platform, params(w.appid, otherSecret, "alice")), -1)
	}
	wantDouyinError(t, login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, "alice", "phone")), -1)
	s.SetBusyRate(0)
	for _, w := range wechatShapedPlatforms {
		w.wantSession(t, login(t, ts, w.platform, params(w.appid, otherSecret, "alice")), w.appid, "alice", false)
	}
	wantDouyinLogin(t, login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, "alice", "phone")), ttID, "alice", "phone", false)
}

// An appid is unique on its platform only: the same appid on two platforms
// is two apps, each with its own secret and codes.
func TestSameAppIDOnTwoPlatforms(t *testing.T) {
	_, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: []wechatsim.App{
		{Platform: wechatsim.QQ, AppID: "shared", Secret: "qq-secret"},
		{Platform: wechatsim.Bilibili, AppID: "shared", Secret: "bili-secret"},
	}})
	qq, bili := wechatShapedPlatforms[0], wechatShapedPlatforms[2]
	qq.wantSession(t, login(t, ts, wechatsim.QQ, params("shared", "qq-secret", "alice")), "shared", "alice", false)
	bili.wantSession(t, login(t, ts, wechatsim.Bilibili, params("shared", "bili-secret", "alice")), "shared", "alice", false)
	qq.wantError(t, login(t, ts, wechatsim.QQ, params("shared", "bili-secret", "bob")), 40125)
	bili.wantError(t, login(t, ts, wechatsim.Bilibili, params("shared", "qq-secret", "bob")), 40001)
	// WeChat knows no such app.
	wantError(t, redeem(t, ts, "shared", "qq-secret", "bob"), 40013, "invalid appid")
}

func TestSensitiveOnEveryPlatform(t *testing.T) {
	s, ts := newPlatformSim(t, wechatsim.Options{})
	var keys []string
	for _, w := range wechatShapedPlatforms {
		keys = append(keys, w.wantSession(t, login(t, ts, w.platform, params(w.appid, otherSecret, "code-"+string(w.platform))), w.appid, "code-"+string(w.platform), false))
	}
	keys = append(keys, wantDouyinLogin(t, login(t, ts, wechatsim.Douyin, douyinParams(ttID, otherSecret, "dycode", "dyanon")), ttID, "dycode", "dyanon", false))
	login(t, ts, wechatsim.Douyin, douyinParams(ttID, "guessed-secret", "x", ""))
	sensitive := s.Sensitive()
	for _, v := range append(keys, otherSecret, "guessed-secret", "code-qq", "code-taptap", "code-bilibili", "dycode", "dyanon") {
		if !slices.Contains(sensitive, v) {
			t.Errorf("Sensitive() lacks %q", v)
		}
	}
}

// decodeJSON decodes resp's body into v.
func decodeJSON(resp *http.Response, v any) error {
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decoding body: %w", err)
	}
	return nil
}

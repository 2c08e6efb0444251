package wechatsim_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

const (
	appID       = "wx1111111111111111"
	appSecret   = "secret-one"
	boundID     = "wx2222222222222222"
	boundSecret = "secret-two"
	bound2ID    = "wx3333333333333333"
	// appID's virtual payment keys
	appKey        = "prod-app-key"
	sandboxAppKey = "sandbox-app-key"
)

var testApps = []wechatsim.App{
	{AppID: appID, Secret: appSecret, AppKey: appKey, SandboxAppKey: sandboxAppKey},
	{AppID: boundID, Secret: boundSecret, UnionBound: true},
	{AppID: bound2ID, Secret: boundSecret, UnionBound: true},
}

// result is one decoded answer from the simulator.
type result struct {
	path        string
	status      int
	contentType string
	fields      map[string]any
}

func (r result) errcode() (int, bool) {
	v, ok := r.fields["errcode"].(float64)
	return int(v), ok
}

func do(t *testing.T, ts *httptest.Server, method string, q url.Values) result {
	t.Helper()
	r, err := fetch(ts, method, q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fetch is do for goroutines, which must not call t.Fatal.
func fetch(ts *httptest.Server, method string, q url.Values) (result, error) {
	return fetchPath(ts, method, "/sns/jscode2session", q, "")
}

// fetchPath sends a request for path with query q and, unless empty, a JSON
// body.
func fetchPath(ts *httptest.Server, method, path string, q url.Values, body string) (result, error) {
	req, err := http.NewRequest(method, ts.URL+path+"?"+q.Encode(), strings.NewReader(body))
	if err != nil {
		return result{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	r := result{path: path, status: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
	if err := decodeJSON(resp, &r.fields); err != nil {
		return result{}, err
	}
	return r, nil
}

// call is fetchPath for the test goroutine.
func call(t *testing.T, ts *httptest.Server, method, path string, q url.Values, body string) result {
	t.Helper()
	r, err := fetchPath(ts, method, path, q, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// wantContentType is the Content-Type WeChat gives the answers of path:
// jscode2session's is text/plain, the others' a JSON type of its own.
func wantContentType(path string) string {
	if path == "/sns/jscode2session" {
		return "text/plain"
	}
	return "application/json; encoding=utf-8"
}

func params(appid, secret, code string) url.Values {
	return url.Values{"appid": {appid}, "secret": {secret}, "js_code": {code}, "grant_type": {"authorization_code"}}
}

func redeem(t *testing.T, ts *httptest.Server, appid, secret, code string) result {
	t.Helper()
	return do(t, ts, http.MethodGet, params(appid, secret, code))
}

var ridSuffix = regexp.MustCompile(`^(.*), rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$`)

// wantError checks r is a WeChat error answer with the given errcode and
// errmsg text (before the rid).
func wantError(t *testing.T, r result, code int, msg string) {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != wantContentType(r.path) {
		t.Errorf("status %d, Content-Type %q; want 200, %s", r.status, r.contentType, wantContentType(r.path))
	}
	if got, ok := r.errcode(); !ok || got != code {
		t.Fatalf("answer %v; want errcode %d", r.fields, code)
	}
	errmsg, _ := r.fields["errmsg"].(string)
	m := ridSuffix.FindStringSubmatch(errmsg)
	if m == nil || m[1] != msg {
		t.Errorf("errmsg %q; want %q followed by a rid", errmsg, msg)
	}
	if len(r.fields) != 2 {
		t.Errorf("answer %v; want only errcode and errmsg", r.fields)
	}
}

// wantSession checks r is a successful answer for player in appid and
// returns its session_key.
func wantSession(t *testing.T, r result, appid, player string, unionBound bool) string {
	t.Helper()
	if r.status != http.StatusOK || r.contentType != "text/plain" {
		t.Errorf("status %d, Content-Type %q; want 200, text/plain", r.status, r.contentType)
	}
	want := map[string]bool{"session_key": true, "openid": true, "unionid": unionBound}
	for k := range r.fields {
		if !want[k] {
			t.Errorf("unexpected key %q in success answer %v", k, r.fields)
		}
	}
	if got := r.fields["openid"]; got != wechatsim.OpenID(appid, player) {
		t.Errorf("openid %v; want %s", got, wechatsim.OpenID(appid, player))
	}
	if unionBound && r.fields["unionid"] != wechatsim.UnionID(player) {
		t.Errorf("unionid %v; want %s", r.fields["unionid"], wechatsim.UnionID(player))
	}
	key, _ := r.fields["session_key"].(string)
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(key) != 24 || len(raw) != 16 {
		t.Errorf("session_key %q; want base64 of 16 bytes", key)
	}
	return key
}

func TestRequestErrors(t *testing.T) {
	_, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	with := func(q url.Values, kv ...string) url.Values {
		out := url.Values{}
		for k, v := range q {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				out.Del(kv[i])
			} else {
				out.Set(kv[i], kv[i+1])
			}
		}
		return out
	}
	good := params(appID, appSecret, "alice")
	tests := []struct {
		name string
		q    url.Values
		code int
		msg  string
	}{
		{"nothing", url.Values{}, 41002, "appid missing"},
		{"no appid", with(good, "appid", ""), 41002, "appid missing"},
		{"no secret", with(good, "secret", ""), 41004, "appsecret missing"},
		{"no code", with(good, "js_code", ""), 41008, "missing code"},
		{"presence before appid", with(good, "appid", "wxunknown", "js_code", ""), 41008, "missing code"},
		{"unknown appid", with(good, "appid", "wxunknown"), 40013, "invalid appid"},
		{"appid before secret", with(good, "appid", "wxunknown", "secret", "nope"), 40013, "invalid appid"},
		{"wrong secret", with(good, "secret", "nope"), 40125, "invalid appsecret"},
		{"other app's secret", with(good, "secret", boundSecret), 40125, "invalid appsecret"},
		{"secret before grant_type", with(good, "secret", "nope", "grant_type", "x"), 40125, "invalid appsecret"},
		{"wrong grant_type", with(good, "grant_type", "client_credential"), 40002, "invalid grant_type"},
		{"no grant_type", with(good, "grant_type", ""), 40002, "invalid grant_type"},
		{"grant_type before code", with(good, "grant_type", "x", "js_code", "invalid"), 40002, "invalid grant_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, do(t, ts, http.MethodGet, tt.q), tt.code, tt.msg)
		})
	}
	// None of the above consumed the code.
	wantSession(t, redeem(t, ts, appID, appSecret, "alice"), appID, "alice", false)
}

func TestRequireGET(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		wantError(t, do(t, ts, m, params(appID, appSecret, "alice")), 43001, "require GET method")
	}
	if got := s.Calls(); got != 3 {
		t.Errorf("Calls() = %d; want 3", got)
	}
	wantSession(t, redeem(t, ts, appID, appSecret, "alice"), appID, "alice", false)
}

func TestNotFound(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	for _, path := range []string{"/", "/sns/jscode2session/", "/sns/oauth2/access_token"} {
		resp, err := ts.Client().Get(ts.URL + path + "?" + params(appID, appSecret, "alice").Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d; want 404", path, resp.StatusCode)
		}
	}
	if got := s.Calls(); got != 0 {
		t.Errorf("Calls() = %d; want 0", got)
	}
}

func TestReservedPlayers(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	tests := []struct {
		code string
		want int
		msg  string
	}{
		{"invalid", 40029, "invalid code"},
		{"invalid.1", 40029, "invalid code"},
		{".1", 40029, "invalid code"},
		{"blocked", 40226, "code blocked"},
		{"blocked.x", 40226, "code blocked"},
		{"busy", -1, "system error"},
		{"busy.x", -1, "system error"},
		{"quota", 45011, "api minute-quota reach limit  mustslower  retry next minute"},
		{"quota.x", 45011, "api minute-quota reach limit  mustslower  retry next minute"},
	}
	for _, tt := range tests {
		// Twice: failures never consume the code, so the answer repeats.
		for range 2 {
			wantError(t, redeem(t, ts, appID, appSecret, tt.code), tt.want, tt.msg)
		}
	}
	if got := s.Calls(); got != int64(2*len(tests)) {
		t.Errorf("Calls() = %d; want %d", got, 2*len(tests))
	}
}

func TestSuccess(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	wantSession(t, redeem(t, ts, appID, appSecret, "alice"), appID, "alice", false)
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.2"), appID, "alice", false)
	wantSession(t, redeem(t, ts, appID, appSecret, "bob.2"), appID, "bob", false)
	if got := s.CallsFor(wechatsim.OpenID(appID, "alice")); got != 2 {
		t.Errorf("CallsFor(alice) = %d; want 2", got)
	}
	if got := s.CallsFor(wechatsim.OpenID(appID, "bob")); got != 1 {
		t.Errorf("CallsFor(bob) = %d; want 1", got)
	}
	if got := s.CallsFor(wechatsim.OpenID(boundID, "alice")); got != 0 {
		t.Errorf("CallsFor(alice in another app) = %d; want 0", got)
	}
}

func TestUnionID(t *testing.T) {
	_, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	a := redeem(t, ts, boundID, boundSecret, "alice")
	b := redeem(t, ts, bound2ID, boundSecret, "alice")
	wantSession(t, a, boundID, "alice", true)
	wantSession(t, b, bound2ID, "alice", true)
	if a.fields["openid"] == b.fields["openid"] {
		t.Errorf("same openid %v in two apps", a.fields["openid"])
	}
	if a.fields["unionid"] != b.fields["unionid"] {
		t.Errorf("unionid differs across apps: %v, %v", a.fields["unionid"], b.fields["unionid"])
	}
	// wantSession rejects a unionid key for an unbound app.
	wantSession(t, redeem(t, ts, appID, appSecret, "alice"), appID, "alice", false)
}

func TestIDs(t *testing.T) {
	idChars := regexp.MustCompile(`^o[A-Za-z0-9_-]{27}$`)
	ids := map[string]string{}
	for _, appid := range []string{appID, boundID} {
		for _, player := range []string{"alice", "bob", "a", ""} {
			id := wechatsim.OpenID(appid, player)
			if !idChars.MatchString(id) {
				t.Errorf("OpenID(%q, %q) = %q; want o + 27 base64url chars", appid, player, id)
			}
			if id != wechatsim.OpenID(appid, player) {
				t.Errorf("OpenID(%q, %q) is not stable", appid, player)
			}
			if prev, dup := ids[id]; dup {
				t.Errorf("OpenID(%q, %q) = %q, same as %s", appid, player, id, prev)
			}
			ids[id] = appid + "/" + player
		}
	}
	// Guard against naive concatenation: ("wx1", "2x") and ("wx12", "x") differ.
	if wechatsim.OpenID("wx1", "2x") == wechatsim.OpenID("wx12", "x") {
		t.Error("OpenID is ambiguous across the appid/player boundary")
	}
	for _, player := range []string{"alice", "bob"} {
		id := wechatsim.UnionID(player)
		if !idChars.MatchString(id) || id != wechatsim.UnionID(player) {
			t.Errorf("UnionID(%q) = %q; want stable o + 27 base64url chars", player, id)
		}
		if _, dup := ids[id]; dup {
			t.Errorf("UnionID(%q) collides with an openid", player)
		}
		ids[id] = "union/" + player
	}
}

func TestPlayerOf(t *testing.T) {
	for code, want := range map[string]string{
		"alice":       "alice",
		"alice.1":     "alice",
		"alice.1.2":   "alice",
		"alice.":      "alice",
		".x":          "",
		"":            "",
		"blocked.abc": "blocked",
	} {
		if got := wechatsim.PlayerOf(code); got != want {
			t.Errorf("PlayerOf(%q) = %q; want %q", code, got, want)
		}
	}
}

func TestCodeSingleUse(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	first := wantSession(t, redeem(t, ts, appID, appSecret, "alice.1"), appID, "alice", false)
	wantError(t, redeem(t, ts, appID, appSecret, "alice.1"), 40163, "code been used")
	wantError(t, redeem(t, ts, appID, appSecret, "alice.1"), 40163, "code been used")
	second := wantSession(t, redeem(t, ts, appID, appSecret, "alice.2"), appID, "alice", false)
	if first == second {
		t.Errorf("two exchanges returned the same session_key %q", first)
	}
	// Codes are per app: the same string is a fresh code elsewhere.
	wantSession(t, redeem(t, ts, boundID, boundSecret, "alice.1"), boundID, "alice", true)
	if got := s.CallsFor(wechatsim.OpenID(appID, "alice")); got != 2 {
		t.Errorf("CallsFor = %d; want 2 (40163 is not a success)", got)
	}
	if got := s.Calls(); got != 5 {
		t.Errorf("Calls() = %d; want 5", got)
	}
}

func TestMinuteQuota(t *testing.T) {
	// Start half-way through a minute so that a fixed per-calendar-minute
	// window would give different answers from WeChat's sliding one.
	t0 := time.Date(2024, 5, 1, 12, 0, 30, 0, time.UTC)
	clock := testkit.NewClock(t0)
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps, Now: clock.Now})
	code := 0
	next := func(player string) string { code++; return fmt.Sprintf("%s.%d", player, code) }

	for range 50 {
		wantSession(t, redeem(t, ts, appID, appSecret, next("alice")), appID, "alice", false)
	}
	clock.Set(t0.Add(30 * time.Second))
	for range 50 {
		wantSession(t, redeem(t, ts, appID, appSecret, next("alice")), appID, "alice", false)
	}
	const msg = "api minute-quota reach limit  mustslower  retry next minute"
	clock.Set(t0.Add(59 * time.Second))
	held := next("alice")
	wantError(t, redeem(t, ts, appID, appSecret, held), 45011, msg)
	wantError(t, redeem(t, ts, appID, appSecret, held), 45011, msg)
	// The quota is per openid: another player, and alice in another app, are fine.
	wantSession(t, redeem(t, ts, appID, appSecret, next("bob")), appID, "bob", false)
	wantSession(t, redeem(t, ts, boundID, boundSecret, next("alice")), boundID, "alice", true)

	// At t0+60s the first 50 leave the window; 45011 did not consume the code.
	clock.Set(t0.Add(60 * time.Second))
	wantSession(t, redeem(t, ts, appID, appSecret, held), appID, "alice", false)
	for range 49 {
		wantSession(t, redeem(t, ts, appID, appSecret, next("alice")), appID, "alice", false)
	}
	wantError(t, redeem(t, ts, appID, appSecret, next("alice")), 45011, msg)

	if got := s.CallsFor(wechatsim.OpenID(appID, "alice")); got != 150 {
		t.Errorf("CallsFor = %d; want 150", got)
	}
}

func TestBusyRate(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps, BusyRate: 1})
	for range 3 {
		wantError(t, redeem(t, ts, appID, appSecret, "alice.1"), -1, "system error")
	}
	// Credentials are checked first, so configuration errors stay visible.
	wantError(t, redeem(t, ts, appID, "nope", "alice.1"), 40125, "invalid appsecret")
	s.SetBusyRate(0)
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.1"), appID, "alice", false)
	if got := s.CallsFor(wechatsim.OpenID(appID, "alice")); got != 1 {
		t.Errorf("CallsFor = %d; want 1", got)
	}
}

func TestBusyRateFraction(t *testing.T) {
	_, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps, BusyRate: 0.3, Seed: 42})
	const n = 400
	busy := 0
	for i := range n {
		r := redeem(t, ts, appID, appSecret, fmt.Sprintf("p%d", i))
		if code, ok := r.errcode(); ok {
			if code != -1 {
				t.Fatalf("errcode %d; want -1 or success", code)
			}
			busy++
		}
	}
	if busy < n*2/10 || busy > n*4/10 {
		t.Errorf("%d of %d calls busy; want about 30%%", busy, n)
	}
}

func TestSeed(t *testing.T) {
	keys := func(seed int64) []string {
		_, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps, Seed: seed})
		var out []string
		for i := range 3 {
			r := redeem(t, ts, appID, appSecret, fmt.Sprintf("alice.%d", i))
			out = append(out, wantSession(t, r, appID, "alice", false))
		}
		return out
	}
	a, b := keys(7), keys(7)
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("seed 7 gave %v, then %v", a, b)
	}
	if c := keys(8); strings.Join(a, ",") == strings.Join(c, ",") {
		t.Errorf("seeds 7 and 8 both gave %v", a)
	}
	if x, y := keys(0), keys(0); strings.Join(x, ",") == strings.Join(y, ",") {
		t.Errorf("seed 0 is not random: %v twice", x)
	}
}

func TestConcurrentRedeem(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	const n = 50
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r, err := fetch(ts, http.MethodGet, params(appID, appSecret, "alice.race"))
			if err != nil {
				t.Error(err)
				return
			}
			results <- r
		})
	}
	wg.Wait()
	close(results)
	ok := 0
	for r := range results {
		if _, isErr := r.errcode(); !isErr {
			wantSession(t, r, appID, "alice", false)
			ok++
			continue
		}
		wantError(t, r, 40163, "code been used")
	}
	if ok != 1 {
		t.Errorf("%d successes; want exactly 1", ok)
	}
	if got := s.Calls(); got != n {
		t.Errorf("Calls() = %d; want %d", got, n)
	}
	if got := s.CallsFor(wechatsim.OpenID(appID, "alice")); got != 1 {
		t.Errorf("CallsFor = %d; want 1", got)
	}
}

func TestLatency(t *testing.T) {
	s := wechatsim.New(wechatsim.Options{Apps: testApps, Latency: 30 * time.Millisecond})
	ts := httptest.NewServer(s)
	defer ts.Close()
	start := time.Now()
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.1"), appID, "alice", false)
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("answer after %v; want at least 30ms", d)
	}

	// A caller that gives up ends the wait at once, and its code is untouched.
	s.SetLatency(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/sns/jscode2session?"+params(appID, appSecret, "alice.2").Encode(), nil)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeHTTP(rec, req)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHTTP ignored the cancelled request context")
	}
	if rec.Body.Len() != 0 {
		t.Errorf("answered a cancelled request: %q", rec.Body)
	}
	s.SetLatency(0)
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.2"), appID, "alice", false)
}

func TestResetCalls(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: testApps})
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.1"), appID, "alice", false)
	wantError(t, redeem(t, ts, appID, appSecret, "invalid"), 40029, "invalid code")
	s.ResetCalls()
	if s.Calls() != 0 || s.CallsFor(wechatsim.OpenID(appID, "alice")) != 0 {
		t.Errorf("after ResetCalls: Calls() = %d, CallsFor = %d; want 0, 0", s.Calls(), s.CallsFor(wechatsim.OpenID(appID, "alice")))
	}
	// Resetting counters does not make used codes redeemable again.
	wantError(t, redeem(t, ts, appID, appSecret, "alice.1"), 40163, "code been used")
	wantSession(t, redeem(t, ts, appID, appSecret, "alice.2"), appID, "alice", false)
	if s.Calls() != 2 || s.CallsFor(wechatsim.OpenID(appID, "alice")) != 1 {
		t.Errorf("Calls() = %d, CallsFor = %d; want 2, 1", s.Calls(), s.CallsFor(wechatsim.OpenID(appID, "alice")))
	}
}

func TestAddApp(t *testing.T) {
	s, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{})
	wantError(t, redeem(t, ts, appID, appSecret, "alice"), 40013, "invalid appid")
	s.AddApp(wechatsim.App{AppID: appID, Secret: appSecret})
	wantSession(t, redeem(t, ts, appID, appSecret, "alice"), appID, "alice", false)
	// Re-adding replaces the app: the old secret stops working.
	s.AddApp(wechatsim.App{AppID: appID, Secret: "rotated", UnionBound: true})
	wantError(t, redeem(t, ts, appID, appSecret, "alice.2"), 40125, "invalid appsecret")
	wantSession(t, redeem(t, ts, appID, "rotated", "alice.2"), appID, "alice", true)
}

func TestSensitiveListsSecretsCodesAndSessionKeys(t *testing.T) {
	sim, ts := wechatsimtest.NewTestServer(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: "wxsens", Secret: "sens-secret"}}})
	resp, err := http.Get(ts.URL + "/sns/jscode2session?appid=wxsens&secret=sens-secret&grant_type=authorization_code&js_code=carol.1")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		SessionKey string `json:"session_key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := strings.Join(sim.Sensitive(), "\n")
	for _, want := range []string{"sens-secret", "carol.1", body.SessionKey} {
		if want == "" || !strings.Contains(got, want) {
			t.Errorf("Sensitive() lacks %q: %q", want, got)
		}
	}
}

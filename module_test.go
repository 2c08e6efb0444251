package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestProvisionRefusesBadConfig(t *testing.T) {
	const secretValue = "s3cr3t-value-never-printed"
	t.Setenv("WXL_TEST_SECRET", secretValue)
	for _, tc := range []struct {
		name      string
		configure func(*Handler)
		want      string
	}{
		{"no app_id", func(h *Handler) { h.AppID = "" }, "app_id is required"},
		{"app_id with a slash", func(h *Handler) { h.AppID = "wx/1" }, "app_id"},
		{"no app_secret", func(h *Handler) { h.AppSecret = "" }, "app_secret is required"},
		{"unset environment variable", func(h *Handler) { h.AppSecret = "{env.WXL_TEST_SURELY_UNSET}" }, "app_secret is empty once its placeholders are resolved"},
		{"endpoint not http", func(h *Handler) { h.Endpoint = "ftp://example.com" }, "endpoint must be an http or https base URL"},
		{"endpoint with a query", func(h *Handler) { h.Endpoint = "https://example.com/?x=1" }, "endpoint"},
		{"login_path relative", func(h *Handler) { h.LoginPath = "wx/login" }, "login_path must start with /"},
		{"budget too high", func(h *Handler) { h.Budget = &Budget{Events: 200, Window: caddy.Duration(2 * time.Minute)} }, "more than WeChat allows"},
		{"budget off", func(h *Handler) { h.Budget = &Budget{Off: true} }, "budget cannot be off"},
		{"ip_budget empty", func(h *Handler) { h.IPBudget = &Budget{} }, "ip_budget needs a positive number"},
		{"negative cache_ttl", func(h *Handler) { ttl := caddy.Duration(-1); h.CacheTTL = &ttl }, "cache_ttl must not be negative"},
		{"retry max below base", func(h *Handler) { h.Retry = &RetryConfig{Attempts: 2, Base: 10, Max: 5} }, "retry"},
		{"retry too many attempts", func(h *Handler) { h.Retry = &RetryConfig{Attempts: 11} }, "retry: attempts must be from 1 to 10"},
		{"session without secret", func(h *Handler) { h.Session = &SessionConfig{} }, "session: at least one secret"},
		{"session secret short", func(h *Handler) { h.Session = &SessionConfig{Secrets: []string{strings.Repeat("k", 31)}} }, "secret 1 is 31 bytes"},
		{"session secret from env too short", func(h *Handler) {
			h.Session = &SessionConfig{Secrets: []string{strings.Repeat("k", 40), "{env.WXL_TEST_SECRET}"}}
		}, "secret 2 is 26 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{AppID: testAppID, AppSecret: "{env.WXL_TEST_SECRET}", Endpoint: "http://127.0.0.1:1"}
			tc.configure(h)
			err := provisionHandler(t, h)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Fatal("the error shows the secret")
			}
		})
	}
}

func TestProvisionResolvesSecretPlaceholders(t *testing.T) {
	sim, endpoint := newTestSim(t)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(testSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WXL_TEST_APP_SECRET", testSecret)
	for i, secret := range []string{"{env.WXL_TEST_APP_SECRET}", "{file." + secretFile + "}"} {
		h := newTestHandler(t, endpoint, func(h *Handler) { h.AppSecret = secret })
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.placeholder"+string(rune('a'+i)), nil)
		w := httptest.NewRecorder()
		up := &recordingUpstream{}
		if err := h.ServeHTTP(w, r, up.handler()); err != nil || up.count() != 1 {
			t.Fatalf("%s: login failed: %v %d %s", secret, err, w.Code, w.Body)
		}
	}
	if sim.Calls() != 2 {
		t.Fatalf("simulator saw %d calls, want 2", sim.Calls())
	}
}

func TestLoginSetsIdentityHeadersAndPlaceholders(t *testing.T) {
	_, endpoint := newTestSim(t)
	h := newTestHandler(t, endpoint)
	r, repl := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.1&level=3", nil)
	// The module overwrites X-WX-OPENID, but sets no session_key without
	// forward_session_key: only stripping keeps the client's copies out.
	r.Header.Set("x-wx-openid", "spoofed")
	r.Header.Set("X-WX-SESSION-KEY", "spoofed-key")
	r.Header["X_WX_SESSION_KEY"] = []string{"spoofed-key"}
	up := &recordingUpstream{}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if up.count() != 1 {
		t.Fatalf("not forwarded: %d %s", w.Code, w.Body)
	}
	got := up.headers[0]
	wantOpenID := wechatsim.OpenID(testAppID, "alice")
	if v := spelledValues(got, "x-wx-openid"); len(v) != 1 || v[0] != wantOpenID {
		t.Errorf("X-WX-OPENID = %q, want only %q", v, wantOpenID)
	}
	if got.Get("X-WX-UNIONID") != wechatsim.UnionID("alice") || got.Get("X-WX-APPID") != testAppID {
		t.Errorf("unionid/appid headers wrong: %v", got)
	}
	if v := spelledValues(got, "x-wx-session-key"); v != nil {
		t.Errorf("X-WX-SESSION-KEY %q reached the upstream without forward_session_key", v)
	}
	for name, want := range map[string]string{"http.wechat.openid": wantOpenID, "http.wechat.unionid": wechatsim.UnionID("alice"), "http.wechat.appid": testAppID} {
		if v, _ := repl.GetString(name); v != want {
			t.Errorf("{%s} = %q, want %q", name, v, want)
		}
	}
	if r.URL.RawQuery != "level=3" {
		t.Errorf("forwarded query %q, want the code removed and level kept", r.URL.RawQuery)
	}
}

// spelledValues is every value of header want ("x-wx-openid") in h, under
// any spelling a backend might fold to it: any case, '_' or '.' for '-'.
// It is written apart from the module's own matching, which it checks.
func spelledValues(h http.Header, want string) []string {
	var values []string
	for name, vs := range h {
		if strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name)) == want {
			values = append(values, vs...)
		}
	}
	return values
}

func TestRefusedLoginsForwardNothing(t *testing.T) {
	sim, endpoint := newTestSim(t)
	h := newTestHandler(t, endpoint)
	for _, tc := range []struct {
		target string
		status int
		error  string
	}{
		{"/wx/login", http.StatusBadRequest, refusalInvalidRequest},
		{"/wx/login?code=", http.StatusBadRequest, refusalInvalidRequest},
		{"/wx/login?code=invalid.1", http.StatusUnauthorized, refusalInvalidCode},
		{"/wx/login?code=blocked.1", http.StatusForbidden, refusalUserBlocked},
	} {
		r, _ := newTestRequest(context.Background(), http.MethodGet, tc.target, nil)
		up := &recordingUpstream{}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up.handler()); err != nil {
			t.Fatal(err)
		}
		var body errorBody
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != tc.status || body.Error != tc.error || body.Message == "" {
			t.Errorf("%s: %d %s, want %d %s with a message", tc.target, w.Code, w.Body, tc.status, tc.error)
		}
		if up.count() != 0 {
			t.Errorf("%s: the refused login was forwarded", tc.target)
		}
		if w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", tc.target, w.Header().Get("Content-Type"))
		}
	}
	if sim.Calls() != 2 {
		t.Errorf("only the two well-formed codes should reach WeChat; it saw %d calls", sim.Calls())
	}
}

func TestNonLoginRequestsPassStrippedWithoutSessions(t *testing.T) {
	h := newTestHandler(t, "http://127.0.0.1:1")
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/game/state", nil)
	r.Header["X_WX_OPENID"] = []string{"spoofed"}
	r.Header.Set("X-WX-APPID", "spoofed")
	up := &recordingUpstream{}
	if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil || up.count() != 1 {
		t.Fatalf("not forwarded: %v", err)
	}
	for _, name := range []string{"x-wx-openid", "x-wx-appid"} {
		if v := spelledValues(up.headers[0], name); v != nil {
			t.Errorf("%s %q reached the upstream", name, v)
		}
	}
}

// Concurrent logins with one code share one WeChat call, and the first
// client leaving does not fail the others.
func TestConcurrentLoginsShareOneCall(t *testing.T) {
	sim, _ := newTestSim(t)
	gate := testkit.NewGate(t, sim)
	h := newTestHandler(t, gate.URL)

	firstCtx, leave := context.WithCancel(context.Background())
	defer leave()
	first := goLogin(firstCtx, h, testLogin{code: "alice.shared"})
	gate.AwaitArrivals(t, 1)
	const others = 49
	results := make([]<-chan loginResult, others)
	for i := range results {
		waiting := newWaitingContext(context.Background())
		results[i] = goLogin(waiting, h, testLogin{code: "alice.shared"})
		waiting.await(t)
	}
	leave()
	if res := awaitLogin(t, first); res.w.Code != statusClientClosedRequest || res.forwarded() {
		t.Errorf("the client that left: %d (forwarded: %v), want 499 and nothing forwarded", res.w.Code, res.forwarded())
	}
	gate.Open()

	want := wechatsim.OpenID(testAppID, "alice")
	for _, done := range results {
		if res := awaitLogin(t, done); res.w.Code != http.StatusNoContent || res.upstream.Get("X-Wx-Openid") != want {
			t.Fatalf("a client waiting on the call got %d %s (identity %q), want it forwarded as alice", res.w.Code, res.w.Body, res.upstream.Get("X-Wx-Openid"))
		}
	}
	if gate.Arrivals() != 1 {
		t.Errorf("WeChat saw %d calls for one code, want 1", gate.Arrivals())
	}

	// Later logins with the same code are served from the cache.
	if res := (testLogin{code: "alice.shared"}).serve(context.Background(), h); !res.forwarded() || gate.Arrivals() != 1 {
		t.Fatalf("repeat login: %d %s, WeChat calls %d", res.w.Code, res.w.Body, gate.Arrivals())
	}
}

func TestCacheTTLExpiresOnTheClock(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, func(h *Handler) {
		ttl := caddy.Duration(time.Minute)
		h.CacheTTL = &ttl
	})
	if w, forwarded := serveTestLogin(t, h, "alice.ttl", "198.51.100.1"); !forwarded {
		t.Fatalf("first login: %d %s", w.Code, w.Body)
	}
	clock.Advance(time.Minute - time.Millisecond)
	if w, forwarded := serveTestLogin(t, h, "alice.ttl", "198.51.100.1"); !forwarded {
		t.Fatalf("within cache_ttl: %d %s", w.Code, w.Body)
	}
	clock.Advance(time.Millisecond)
	w, _ := serveTestLogin(t, h, "alice.ttl", "198.51.100.1")
	var body errorBody
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != http.StatusUnauthorized || body.Error != refusalCodeUsed {
		t.Fatalf("after cache_ttl the code is spent at WeChat: got %d %s, want 401 code_used", w.Code, w.Body)
	}
}

// A misconfiguration is answered 502 at once, counted, and logged at error
// level with WeChat's errcode and rid, never its errmsg.
func TestMisconfigurationIsCountedNotRetried(t *testing.T) {
	sim, endpoint := newTestSim(t)
	testkit.Forbid("wrong-secret")
	h := newTestHandler(t, endpoint, func(h *Handler) { h.AppSecret = "wrong-secret" })
	observed, logs := observer.New(zapcore.ErrorLevel)
	h.logger = zap.New(zapcore.NewTee(h.logger.Core(), observed)) // still written to the scanned output
	before := counterValue(loginCollectors().logins.WithLabelValues(testAppID, refusalMisconfigured))
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.m", nil)
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, (&recordingUpstream{}).handler())
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), `"errcode":40125`) {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	if sim.Calls() != 1 {
		t.Errorf("a misconfiguration was retried: %d calls", sim.Calls())
	}
	if got := counterValue(loginCollectors().logins.WithLabelValues(testAppID, refusalMisconfigured)) - before; got != 1 {
		t.Errorf("logins_total{result=wechat_misconfigured} grew by %v, want 1", got)
	}
	lines := logs.All()
	if len(lines) != 1 {
		t.Fatalf("%d error lines, want 1: %v", len(lines), lines)
	}
	fields := lines[0].ContextMap()
	if fields["errcode"] != int64(40125) || fields["rid"] == "" || fields["app_id"] != testAppID {
		t.Errorf("the error line lacks what WeChat support needs: %v", fields)
	}
	if strings.Contains(lines[0].Message+fmt.Sprint(fields), "invalid appsecret") {
		t.Errorf("the error line repeats WeChat's errmsg: %s %v", lines[0].Message, fields)
	}
}

// BenchmarkLoginCacheHit is the login path when the code's result is cached:
// no WeChat call, only the budget check and the headers.
func BenchmarkLoginCacheHit(b *testing.B) {
	sim, simURL := testkit.NewSim(b, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret}}})
	h := newTestHandler(b, simURL, func(h *Handler) { h.IPBudget = &Budget{Off: true} })
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.bench", nil)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.bench", nil)
		_ = h.ServeHTTP(w, r, next)
	}
	if sim.Calls() != 1 {
		b.Fatalf("cache missed: %d calls", sim.Calls())
	}
}

// benchmarkSessionGame is a game with sessions in front of an upstream
// that answers 200, for the login benchmarks; logins log nothing, as in
// production (exchanges are logged at debug level).
func benchmarkSessionGame(b *testing.B) (*wechatsim.Server, *Handler, caddyhttp.Handler) {
	sim, simURL := testkit.NewSim(b, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret}}})
	h := newTestHandler(b, simURL, withSessions(nil), func(h *Handler) { h.IPBudget = &Budget{Off: true} })
	h.logger = zap.NewNop()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	return sim, h, next
}

// BenchmarkLoginCacheHitWithSession is the cached login of a game with
// sessions: every login, cached or not, answers with a session token.
func BenchmarkLoginCacheHitWithSession(b *testing.B) {
	sim, h, next := benchmarkSessionGame(b)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.bench", nil)
		_ = h.ServeHTTP(w, r, next)
	}
	if sim.Calls() != 1 || w.Header().Get(wechatHeaders.session) == "" {
		b.Fatalf("cache missed (%d calls) or no token issued", sim.Calls())
	}
}

// BenchmarkLoginFreshCode is a login with a code never seen before: one
// simulator call each, over loopback.
func BenchmarkLoginFreshCode(b *testing.B) {
	_, h, next := benchmarkSessionGame(b)
	w := httptest.NewRecorder()
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n++
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=p"+strconv.Itoa(n)+".fresh", nil)
		_ = h.ServeHTTP(w, r, next)
		if w.Code != http.StatusOK {
			b.Fatalf("login %d: %d %s", n, w.Code, w.Body)
		}
	}
}

// Logins that join a call in flight cost WeChat nothing: the exchange charged
// the player once, so they are not refused even when that took the last of
// the budget.
func TestConcurrentLoginsOfOneCodeShareOneCharge(t *testing.T) {
	sim, _ := newTestSim(t)
	gate := testkit.NewGate(t, sim)
	h := newClockedHandler(t, gate.URL, newTestClock(), withBudget(1, time.Minute))
	var results []<-chan loginResult
	for range 5 {
		waiting := newWaitingContext(context.Background())
		results = append(results, goLogin(waiting, h, testLogin{code: "alice.together"}))
		waiting.await(t)
	}
	gate.Open()
	for _, done := range results {
		if res := awaitLogin(t, done); !res.forwarded() {
			t.Errorf("a login on the one call: %d %s, want it forwarded", res.w.Code, res.w.Body)
		}
	}
	if gate.Arrivals() != 1 {
		t.Fatalf("%d WeChat calls for one code, want 1", gate.Arrivals())
	}
	// Replaying the code later is refused while the budget is spent.
	res := testLogin{code: "alice.together"}.serve(context.Background(), h)
	wantRateLimited(t, res.w, res.forwarded(), "63")
}

// Only requests to exactly login_path are logins: a path that merely starts
// with it is an ordinary request, passed on with no identity, its code
// untouched and no WeChat call.
func TestOnlyTheLoginPathItselfLogsIn(t *testing.T) {
	sim, endpoint := newTestSim(t)
	h := newTestHandler(t, endpoint)
	for _, target := range []string{"/wx/login/extra?code=alice.1", "/wx/loginx?code=alice.2"} {
		r, _ := newTestRequest(context.Background(), http.MethodGet, target, nil)
		query := r.URL.RawQuery
		up := &recordingUpstream{}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up.handler()); err != nil || up.count() != 1 {
			t.Fatalf("%s: %v %d %s, want it passed on", target, err, w.Code, w.Body)
		}
		if v := spelledValues(up.headers[0], "x-wx-openid"); v != nil {
			t.Errorf("%s reached the upstream with X-WX-OPENID %q", target, v)
		}
		if r.URL.RawQuery != query {
			t.Errorf("%s: the upstream got the query %q, want it untouched", target, r.URL.RawQuery)
		}
	}
	if sim.Calls() != 0 {
		t.Errorf("WeChat saw %d calls for requests that are not logins", sim.Calls())
	}
}

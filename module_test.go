package wechatlogin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

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
	h := newTestHandler(t, endpoint, nil)
	r, repl := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.1&level=3", nil)
	r.Header.Set("x-wx-openid", "spoofed")
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
	if got.Get("X-WX-OPENID") != wantOpenID || len(got.Values("X-WX-OPENID")) != 1 {
		t.Errorf("X-WX-OPENID = %q, want only %q", got.Values("X-WX-OPENID"), wantOpenID)
	}
	if got.Get("X-WX-UNIONID") != wechatsim.UnionID("alice") || got.Get("X-WX-APPID") != testAppID {
		t.Errorf("unionid/appid headers wrong: %v", got)
	}
	if got.Get("X-WX-SESSION-KEY") != "" {
		t.Error("session_key forwarded without forward_session_key")
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

func TestRefusedLoginsForwardNothing(t *testing.T) {
	sim, endpoint := newTestSim(t)
	h := newTestHandler(t, endpoint, nil)
	for _, target := range []string{"/wx/login", "/wx/login?code=", "/wx/login?code=invalid.1", "/wx/login?code=blocked.1"} {
		r, _ := newTestRequest(context.Background(), http.MethodGet, target, nil)
		up := &recordingUpstream{}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up.handler()); err != nil {
			t.Fatal(err)
		}
		if up.count() != 0 || w.Code < 400 {
			t.Errorf("%s: status %d, forwarded %d", target, w.Code, up.count())
		}
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] == nil || body["message"] == nil {
			t.Errorf("%s: body is not the documented JSON: %s", target, w.Body)
		}
		if w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", target, w.Header().Get("Content-Type"))
		}
	}
	if sim.Calls() != 2 {
		t.Errorf("only the two well-formed codes should reach WeChat; it saw %d calls", sim.Calls())
	}
}

func TestNonLoginRequestsPassStrippedWithoutSessions(t *testing.T) {
	h := newTestHandler(t, "http://127.0.0.1:1", nil)
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/game/state", nil)
	r.Header["X_WX_OPENID"] = []string{"spoofed"}
	r.Header.Set("X-WX-APPID", "spoofed")
	up := &recordingUpstream{}
	if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil || up.count() != 1 {
		t.Fatalf("not forwarded: %v", err)
	}
	for name := range up.headers[0] {
		if isIdentityHeader(name) {
			t.Errorf("%s reached the upstream", name)
		}
	}
}

// Concurrent logins with one code share one WeChat call, and the first
// client leaving does not fail the others.
func TestConcurrentLoginsShareOneCall(t *testing.T) {
	sim, endpoint := newTestSim(t)
	sim.SetLatency(300 * time.Millisecond)
	h := newTestHandler(t, endpoint, nil)
	coalescedBefore := counterValue(h.metrics.coalescedLogins)

	const clients = 50
	up := &recordingUpstream{}
	firstCtx, leave := context.WithCancel(context.Background())
	defer leave()
	var wg sync.WaitGroup
	statuses := make([]int, clients)
	for i := range clients {
		ctx := context.Background()
		if i == 0 {
			ctx = firstCtx
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _ := newTestRequest(ctx, http.MethodGet, "/wx/login?code=alice.shared", nil)
			w := httptest.NewRecorder()
			_ = h.ServeHTTP(w, r, up.handler())
			statuses[i] = w.Code
		}()
		if i == 0 {
			for sim.Calls() == 0 { // the first client's call is in flight
				time.Sleep(time.Millisecond)
			}
			leave()
		}
	}
	wg.Wait()
	if sim.Calls() != 1 {
		t.Errorf("simulator saw %d calls for one code, want 1", sim.Calls())
	}
	if up.count() != clients-1 {
		t.Errorf("%d logins forwarded, want the %d clients that stayed", up.count(), clients-1)
	}
	want := wechatsim.OpenID(testAppID, "alice")
	for _, hdr := range up.headers {
		if hdr.Get("X-WX-OPENID") != want {
			t.Fatalf("a client got identity %q, want %q", hdr.Get("X-WX-OPENID"), want)
		}
	}
	if got := counterValue(h.metrics.coalescedLogins) - coalescedBefore; got < clients-2 {
		t.Errorf("coalesced metric grew by %v, want at least %d", got, clients-2)
	}

	// Later logins with the same code are served from the cache.
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.shared", nil)
	if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil || up.count() != clients || sim.Calls() != 1 {
		t.Fatalf("repeat login: forwarded %d, calls %d, err %v", up.count(), sim.Calls(), err)
	}
}

func TestCacheTTLExpiresOnTheClock(t *testing.T) {
	_, endpoint := newTestSim(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	h := newTestHandler(t, endpoint, func(h *Handler) { h.now = func() time.Time { return now } })
	login := func() int {
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.ttl", nil)
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, (&recordingUpstream{}).handler())
		return w.Code
	}
	if c := login(); c != http.StatusNoContent {
		t.Fatalf("first login: %d", c)
	}
	now = now.Add(defaultCacheTTL - time.Second)
	if c := login(); c != http.StatusNoContent {
		t.Fatalf("within cache_ttl: %d", c)
	}
	now = now.Add(time.Second)
	if c := login(); c != http.StatusUnauthorized {
		t.Fatalf("after cache_ttl the code is spent at WeChat: got %d, want 401", c)
	}
}

func TestMisconfigurationIsCountedNotRetried(t *testing.T) {
	sim, endpoint := newTestSim(t)
	testkit.Forbid("wrong-secret")
	h := newTestHandler(t, endpoint, func(h *Handler) { h.AppSecret = "wrong-secret" })
	before := counterValue(wechatMetrics.logins.WithLabelValues(testAppID, errWechatMisconfigured))
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.m", nil)
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, (&recordingUpstream{}).handler())
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), `"errcode":40125`) {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	if sim.Calls() != 1 {
		t.Errorf("a misconfiguration was retried: %d calls", sim.Calls())
	}
	if got := counterValue(wechatMetrics.logins.WithLabelValues(testAppID, errWechatMisconfigured)) - before; got != 1 {
		t.Errorf("logins_total{result=wechat_misconfigured} grew by %v, want 1", got)
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

// Logins that join a call in flight cost WeChat nothing: the exchange charged
// the player once, so they are not refused even when that took the last token.
func TestConcurrentLoginsOfOneCodeShareOneCharge(t *testing.T) {
	sim, endpoint := newTestSim(t)
	sim.SetLatency(time.Second) // long enough for all five to join the one call
	h := newTestHandler(t, endpoint, func(h *Handler) { h.Budget = &Budget{Events: 1, Window: caddy.Duration(time.Minute)} })
	up := &recordingUpstream{}
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.together", nil)
			_ = h.ServeHTTP(httptest.NewRecorder(), r, up.handler())
		})
	}
	wg.Wait()
	if up.count() != 5 || sim.Calls() != 1 {
		t.Fatalf("%d of 5 logins forwarded with %d WeChat calls; want all 5 on one call", up.count(), sim.Calls())
	}
	// Replaying the code later is refused while the budget is spent.
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.together", nil)
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, up.handler())
	if w.Code != http.StatusTooManyRequests {
		t.Errorf("a replayed cached code with the budget spent: %d, want 429", w.Code)
	}
}

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// Codes the scripted fake WeChat answers in a particular way.
const (
	fakeRateLimited = "fake-45011.k1"
	fakeUnlisted    = "fake-40001.k2"
	fakeHTML        = "fake-html.k3"
	fakeHTTP500     = "fake-http500.k4"
	fakeSlow        = "fake-slow.k5"
)

// scriptedWechat starts a fake jscode2session whose answer the code
// chooses, for the failures the simulator does not produce.
func scriptedWechat(t *testing.T) string {
	t.Helper()
	testkit.Forbid(fakeRateLimited, fakeUnlisted, fakeHTML, fakeHTTP500, fakeSlow)
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("js_code") {
		case fakeRateLimited:
			io.WriteString(w, `{"errcode":45011,"errmsg":"api minute-quota reach limit  mustslower  retry next minute, rid: 1-2-3"}`)
		case fakeUnlisted:
			io.WriteString(w, `{"errcode":40001,"errmsg":"invalid credential, rid: 1-2-3"}`)
		case fakeHTML:
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
		case fakeHTTP500:
			http.Error(w, "internal error", http.StatusInternalServerError)
		case fakeSlow:
			<-r.Context().Done() // answers only once the gateway has given up
		default:
			t.Errorf("the fake WeChat got an unexpected code")
		}
	}))
	t.Cleanup(fake.Close)
	return fake.URL
}

// TestErrorTable produces every row of the README's error table through a real
// Caddy, and checks that none of them reaches the backend.
func TestErrorTable(t *testing.T) {
	const simSecret = "errors-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxerrors", Secret: simSecret},
		{AppID: "wxbadsecret", Secret: "the-real-secret"},
		{AppID: "wxtinyip", Secret: simSecret},
	}})
	fakeURL := scriptedWechat(t)
	const wrongSecret, fakeSecret = "not-the-secret", "fake-app-secret"
	testkit.Forbid(wrongSecret, fakeSecret)
	backend := testkit.NewBackend(t, nil)
	errorLog := filepath.Join(t.TempDir(), "errors.log")

	// Each route is a gateway with its own app_id (budgets are per app_id)
	// and its own login path.
	testkit.StartCaddy(t, testkit.GlobalOptions(fmt.Sprintf("log errors {\n\toutput file %s\n\tformat json\n\tlevel ERROR\n}", errorLog))+testkit.Site(
		testkit.Route("sim", "wxerrors", simSecret, simURL, backend, "retry 1", "cache_ttl 0"),
		testkit.Route("fake", "wxfake", fakeSecret, fakeURL, backend, "retry 1", "timeout 200ms"),
		testkit.Route("badsecret", "wxbadsecret", wrongSecret, simURL, backend),
		testkit.Route("unknownapp", "wxunknown", fakeSecret, simURL, backend),
		testkit.Route("tinyip", "wxtinyip", simSecret, simURL, backend, "ip_budget 2 1m"),
		testkit.Route("session", "wxerrsession", simSecret, simURL, backend, sessionBlock("secret "+sessionSecretA)),
	))

	// A spent code: with cache_ttl 0 nothing remembers its result.
	assertStatus(t, testkit.Get(t, "/sim/wx/login?code=alice.spent"), http.StatusOK)
	// Two logins use up the tiny per-IP budget.
	assertStatus(t, testkit.Get(t, "/tinyip/wx/login?code=alice.1"), http.StatusOK)
	assertStatus(t, testkit.Get(t, "/tinyip/wx/login?code=alice.2"), http.StatusOK)

	tooLong := strings.Repeat("a", 129)
	testkit.Forbid(tooLong)
	const jsonType, formType = "Content-Type: application/json", "Content-Type: application/x-www-form-urlencoded"
	rows := []struct {
		name         string
		method, path string
		body         string
		headers      []string
		status       int
		code         string
		errcode      int
		callsSim     bool // whether the request reaches the simulator
	}{
		{name: "no code", path: "/sim/wx/login", status: 400, code: "invalid_request"},
		{name: "empty code", path: "/sim/wx/login?code=", status: 400, code: "invalid_request"},
		{name: "129-byte code", path: "/sim/wx/login?code=" + tooLong, status: 400, code: "invalid_request"},
		{name: "control character", path: "/sim/wx/login?code=alice%01", status: 400, code: "invalid_request"},
		{name: "UTF-8", path: "/sim/wx/login?code=%C3%A9t%C3%A9", status: 400, code: "invalid_request"},
		{name: "empty X-WX-CODE", path: "/sim/wx/login", headers: []string{"X-WX-CODE: "}, status: 400, code: "invalid_request"},
		{name: "malformed JSON", method: "POST", path: "/sim/wx/login", body: `{"code":"alice.json"`, headers: []string{jsonType}, status: 400, code: "invalid_request"},
		{name: "JSON code not a string", method: "POST", path: "/sim/wx/login", body: `{"code":7}`, headers: []string{jsonType}, status: 400, code: "invalid_request"},
		{name: "malformed form", method: "POST", path: "/sim/wx/login", body: "code=%zz", headers: []string{formType}, status: 400, code: "invalid_request"},
		{name: "invalid code", path: "/sim/wx/login?code=invalid.1", status: 401, code: "invalid_code", errcode: 40029, callsSim: true},
		{name: "code used", path: "/sim/wx/login?code=alice.spent", status: 401, code: "code_used", errcode: 40163, callsSim: true},
		{name: "no session", path: "/session/game", status: 401, code: "invalid_session"},
		{name: "blocked", path: "/sim/wx/login?code=blocked.1", status: 403, code: "user_blocked", errcode: 40226, callsSim: true},
		{name: "IP budget", path: "/tinyip/wx/login?code=alice.3", status: 429, code: "rate_limited"},
		{name: "WeChat 45011", path: "/fake/wx/login?code=" + fakeRateLimited, status: 429, code: "rate_limited", errcode: 45011},
		{name: "wrong app_secret", path: "/badsecret/wx/login?code=alice.1", status: 502, code: "wechat_misconfigured", errcode: 40125, callsSim: true},
		{name: "unknown app_id", path: "/unknownapp/wx/login?code=alice.1", status: 502, code: "wechat_misconfigured", errcode: 40013, callsSim: true},
		{name: "unlisted errcode", path: "/fake/wx/login?code=" + fakeUnlisted, status: 502, code: "wechat_misconfigured", errcode: 40001},
		{name: "HTML answer", path: "/fake/wx/login?code=" + fakeHTML, status: 502, code: "wechat_bad_response"},
		{name: "WeChat busy", path: "/sim/wx/login?code=busy.1", status: 503, code: "wechat_unavailable", errcode: -1, callsSim: true},
		{name: "WeChat HTTP 500", path: "/fake/wx/login?code=" + fakeHTTP500, status: 503, code: "wechat_unavailable"},
		{name: "WeChat too slow", path: "/fake/wx/login?code=" + fakeSlow, status: 504, code: "wechat_timeout"},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			forwarded, calls := backend.Count(), sim.Calls()
			method := row.method
			if method == "" {
				method = http.MethodGet
			}
			resp := testkit.Send(t, method, row.path, strings.NewReader(row.body), row.headers...)
			assertError(t, resp, row.status, row.code, row.errcode)
			if got := backend.Count(); got != forwarded {
				t.Errorf("the refused request reached the backend")
			}
			if called := sim.Calls() != calls; called != row.callsSim {
				t.Errorf("WeChat called: %v, want %v", called, row.callsSim)
			}
		})
	}

	t.Run("misconfiguration is logged at error level", func(t *testing.T) {
		logged := errorLines(t, errorLog)
		var errcodes []int
		for _, line := range logged {
			if line.Logger == "http.handlers.wechat_login" && line.Level == "error" {
				errcodes = append(errcodes, line.Errcode)
			}
		}
		slices.Sort(errcodes)
		if want := []int{40001, 40013, 40125}; !slices.Equal(errcodes, want) {
			t.Errorf("wechat_login logged errcodes %v at error level, want %v (one per misconfiguration)", errcodes, want)
		}
	})
}

// logLine is the part of a JSON log line the tests read.
type logLine struct {
	Level   string `json:"level"`
	Logger  string `json:"logger"`
	Msg     string `json:"msg"`
	Errcode int    `json:"errcode"`
	Status  int    `json:"status"` // of a failed request (http.log.error)
	Request struct {
		URI     string              `json:"uri"`
		Headers map[string][]string `json:"headers"`
	} `json:"request"`
}

// errorLines reads a JSON log file, failing the test if it holds anything
// secret.
func errorLines(t *testing.T, path string) []logLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if leaks := testkit.Leaks(string(data)); len(leaks) > 0 {
		t.Errorf("the error log holds %d secret(s) or code(s)", len(leaks))
	}
	var lines []logLine
	scanner := bufio.NewScanner(strings.NewReader(string(data)))
	for scanner.Scan() {
		var line logLine
		if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", scanner.Text(), err)
		}
		lines = append(lines, line)
	}
	return lines
}

// TestCodeSources finds the code where a game client may put it, forwards
// what the backend needs byte for byte, and drops the spent code.
func TestCodeSources(t *testing.T) {
	const appID, secret = "wxsources", "sources-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		"request_body {\n\tmax_size 64\n}",
		testkit.Handle("custom", testkit.WechatLogin(appID, secret, simURL, "login_path /custom/enter", "code_field wxcode"), testkit.ProxyTo(backend)),
		testkit.Handle("", testkit.WechatLogin(appID, secret, simURL), testkit.ProxyTo(backend)),
	))
	const jsonType, formType = "Content-Type: application/json", "Content-Type: application/x-www-form-urlencoded"

	rows := []struct {
		name        string
		method      string
		path, body  string
		headers     []string
		player      string
		wantQuery   string // the query the backend receives
		wantForward string // the body the backend receives
	}{
		{name: "query", path: "/wx/login?a=1&code=query.1&b=2&a=3", player: "query", wantQuery: "a=1&b=2&a=3"},
		{name: "JSON body", method: "POST", path: "/wx/login", body: `{"code":"json.7","level":3}`, headers: []string{jsonType}, player: "json", wantForward: `{"code":"json.7","level":3}`},
		{name: "JSON+suffix body", method: "POST", path: "/wx/login", body: `{"level":3,"code":"jsonld.1"}`, headers: []string{"Content-Type: application/ld+json"}, player: "jsonld", wantForward: `{"level":3,"code":"jsonld.1"}`},
		{name: "form body", method: "POST", path: "/wx/login?v=2", body: "level=3&code=form.1", headers: []string{formType}, player: "form", wantQuery: "v=2", wantForward: "level=3&code=form.1"},
		{name: "X-WX-CODE header", path: "/wx/login", headers: []string{"X-WX-CODE: header.1"}, player: "header"},
		{name: "query wins over body and header", method: "POST", path: "/wx/login?code=first.1", body: `{"code":"second.1"}`, headers: []string{jsonType, "X-WX-CODE: third.1"}, player: "first", wantForward: `{"code":"second.1"}`},
		{name: "body wins over header", method: "POST", path: "/wx/login", body: "code=second.2", headers: []string{formType, "X-WX-CODE: third.2"}, player: "second", wantForward: "code=second.2"},
		{name: "custom login_path and code_field", path: "/custom/enter?code=other&wxcode=custom.1", player: "custom", wantQuery: "code=other"},
	}
	testkit.Forbid("second.1", "third.1", "third.2") // codes that lose, never sent to WeChat
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			method := row.method
			if method == "" {
				method = http.MethodGet
			}
			resp := testkit.Send(t, method, row.path, strings.NewReader(row.body), row.headers...)
			assertStatus(t, resp, http.StatusOK)
			got := backend.Last(t)
			assertIdentity(t, got.Header, "x-wx-openid", wechatsim.OpenID(appID, row.player))
			if got.RawQuery != row.wantQuery {
				t.Errorf("backend query %q, want %q", got.RawQuery, row.wantQuery)
			}
			if string(got.Body) != row.wantForward || got.ContentLength != int64(len(row.wantForward)) {
				t.Errorf("backend body %q (Content-Length %d), want %q byte for byte", got.Body, got.ContentLength, row.wantForward)
			}
			if code := identityValues(got.Header, "x-wx-code"); code != nil {
				t.Errorf("backend saw X-WX-CODE %q: the spent code must be dropped", code)
			}
		})
	}

	t.Run("default login_path is not a login under a custom one", func(t *testing.T) {
		resp := testkit.Get(t, "/custom/wx/login?wxcode=custom.2")
		assertStatus(t, resp, http.StatusOK)
		assertIdentity(t, backend.Last(t).Header, "x-wx-openid", "")
	})
	t.Run("the default code_field is not read under a custom one", func(t *testing.T) {
		assertError(t, testkit.Get(t, "/custom/enter?code=custom.3"), http.StatusBadRequest, "invalid_request", noErrcode)
	})
	t.Run("body over request_body max_size", func(t *testing.T) {
		body := `{"code":"big.1","padding":"` + strings.Repeat("x", 64) + `"}`
		testkit.Forbid("big.1")
		forwarded, calls := backend.Count(), sim.Calls()
		// Sent chunked, the body is found too large while the handler
		// reads it for the code, and refused in the documented JSON.
		chunked := io.MultiReader(strings.NewReader(body))
		resp := testkit.Send(t, http.MethodPost, "/wx/login", chunked, jsonType)
		assertError(t, resp, http.StatusRequestEntityTooLarge, "invalid_request", noErrcode)
		// With a Content-Length over the limit, request_body itself refuses
		// before wechat_login runs.
		resp = testkit.Send(t, http.MethodPost, "/wx/login", strings.NewReader(body), jsonType)
		assertStatus(t, resp, http.StatusRequestEntityTooLarge)
		if backend.Count() != forwarded || sim.Calls() != calls {
			t.Error("an oversized login reached the backend or WeChat")
		}
	})
}

// TestIdentityHeaders gives the backend the identity WeChat Cloud Hosting
// would, and the placeholders.
func TestIdentityHeaders(t *testing.T) {
	const secret = "identity-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxplain", Secret: secret},
		{AppID: "wxunion", Secret: secret, UnionBound: true},
	}})
	backend := testkit.NewBackend(t, nil)
	placeholders := testkit.ProxyTo(backend,
		"header_up X-Player {http.wechat.openid}",
		"header_up X-Player-Union {http.wechat.unionid}",
		"header_up X-Player-App {http.wechat.appid}")
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Handle("union", testkit.WechatLogin("wxunion", secret, simURL, testkit.LoginUnder("union")), placeholders),
		testkit.Handle("", testkit.WechatLogin("wxplain", secret, simURL), placeholders),
	))

	for _, tc := range []struct {
		name, appID, path string
		unionID           string
	}{
		{name: "app without unionid", appID: "wxplain", path: "/wx/login?code=alice.1"},
		{name: "app bound to an Open Platform account", appID: "wxunion", path: "/union/wx/login?code=alice.1", unionID: wechatsim.UnionID("alice")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assertStatus(t, testkit.Get(t, tc.path), http.StatusOK)
			got := backend.Last(t).Header
			openID := wechatsim.OpenID(tc.appID, "alice")
			assertIdentity(t, got, "x-wx-openid", openID)
			assertIdentity(t, got, "x-wx-appid", tc.appID)
			assertIdentity(t, got, "x-wx-unionid", tc.unionID)
			assertIdentity(t, got, "x-wx-session-key", "") // only with forward_session_key
			for header, want := range map[string]string{"X-Player": openID, "X-Player-Union": tc.unionID, "X-Player-App": tc.appID} {
				if got.Get(header) != want {
					t.Errorf("placeholder header %s = %q, want %q", header, got.Get(header), want)
				}
			}
		})
	}
}

// TestForwardSessionKey sends the session_key upstream and never to the
// client.
func TestForwardSessionKey(t *testing.T) {
	// Caddy's reverse_proxy logs the headers it sends upstream at debug
	// level, X-WX-SESSION-KEY included, so this config runs without the
	// debug option that GlobalOptions always sets.
	globals := testkit.GlobalOptions("")
	quiet := strings.Replace(globals, "\tdebug\n", "", 1)
	if quiet == globals {
		t.Fatal("testkit.GlobalOptions has no debug line to remove: update this test")
	}
	const appID, secret = "wxsessionkey", "session-key-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, quiet+testkit.Site(testkit.WechatLogin(appID, secret, simURL, "forward_session_key"), testkit.ProxyTo(backend)))

	resp := testkit.Get(t, "/wx/login?code=alice.1")
	assertStatus(t, resp, http.StatusOK)
	assertNoLeaks(t, resp)
	got := backend.Last(t).Header
	keys := identityValues(got, "x-wx-session-key")
	if len(keys) != 1 || !slices.Contains(sim.Sensitive(), keys[0]) {
		t.Fatalf("backend saw X-WX-SESSION-KEY %q, want the one session_key WeChat issued", keys)
	}
	assertIdentity(t, got, "x-wx-openid", wechatsim.OpenID(appID, "alice"))

	// A client cannot choose the session_key either.
	assertStatus(t, testkit.Get(t, "/game", "X-WX-SESSION-KEY: chosen"), http.StatusOK)
	assertIdentity(t, backend.Last(t).Header, "x-wx-session-key", "")
}

// spoofedIdentity is every way a client might try to choose its identity
// with hyphenated header names: in any case, repeated, and for each header.
var spoofedIdentity = []string{
	"x-wx-openid: spoofed-lower",
	"X-Wx-Openid: spoofed-canonical",
	"X-WX-OPENID: spoofed-copy-1",
	"X-WX-OPENID: spoofed-copy-2",
	"X-WX-UNIONID: spoofed-union",
	"X-WX-APPID: wxspoofed",
	"X-WX-SESSION-KEY: spoofed-key",
}

// assertOnlyIdentity checks that the backend saw exactly the identity of
// openID in appID, with X-WX-SOURCE: wx_client (none of them if openID is
// empty), whatever the client sent.
func assertOnlyIdentity(t *testing.T, h http.Header, appID, openID string) {
	t.Helper()
	source := "wx_client"
	if openID == "" {
		appID, source = "", ""
	}
	assertIdentity(t, h, "x-wx-openid", openID)
	assertIdentity(t, h, "x-wx-appid", appID)
	assertIdentity(t, h, "x-wx-source", source)
	assertIdentity(t, h, "x-wx-unionid", "")
	assertIdentity(t, h, "x-wx-session-key", "")
}

// TestSpoofedIdentityHeaders: a client can never choose an identity, on a
// login or on any other request.
func TestSpoofedIdentityHeaders(t *testing.T) {
	const secret = "spoof-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxspoof", Secret: secret},
		{AppID: "wxspoofsession", Secret: secret},
	}})
	backend := testkit.NewBackend(t, nil)
	withSession := testkit.Route("session", "wxspoofsession", secret, simURL, backend, sessionBlock("secret "+sessionSecretA))
	withoutSession := testkit.Handle("", testkit.WechatLogin("wxspoof", secret, simURL), testkit.ProxyTo(backend))
	mallory, malloryWithSession := wechatsim.OpenID("wxspoof", "mallory"), wechatsim.OpenID("wxspoofsession", "mallory")

	// spoofEverywhere sends the spoofed headers on a login, a game request,
	// a login with sessions and a game request presenting that session
	// (as tokenHeader), and checks that the backend saw only the real
	// identity each time.
	spoofEverywhere := func(t *testing.T, spoofed []string, round, tokenHeader string) {
		t.Helper()
		assertStatus(t, testkit.Get(t, "/wx/login?code=mallory."+round+"a", spoofed...), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxspoof", mallory)

		assertStatus(t, testkit.Get(t, "/game", spoofed...), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, "", "")

		login := testkit.Get(t, "/session/wx/login?code=mallory."+round+"b", spoofed...)
		assertStatus(t, login, http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxspoofsession", malloryWithSession)

		session := tokenHeader + login.Header.Get("X-WX-SESSION")
		assertStatus(t, testkit.Get(t, "/session/game", append([]string{session}, spoofed...)...), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxspoofsession", malloryWithSession)
	}

	t.Run("hyphenated, any case, repeated", func(t *testing.T) {
		testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(withSession, withoutSession))
		spoofEverywhere(t, spoofedIdentity, "1", "X-WX-SESSION: ")
	})

	t.Run("underscore and dot, allowed by the server", func(t *testing.T) {
		testkit.StartCaddy(t, testkit.GlobalOptions(`servers {
		expected_underscore_headers X_WX_OPENID X_WX_SESSION_KEY
		expected_dot_headers X.WX.OPENID X.WX.APPID
	}`)+testkit.Site(
			testkit.Handle("control", testkit.ProxyTo(backend)),
			withSession, withoutSession))
		spoofed := []string{
			"X_WX_OPENID: spoofed-underscore",
			"x.wx.openid: spoofed-dot",
			"X_WX_SESSION_KEY: spoofed-key",
			"X.WX.APPID: wxspoofed",
		}

		// Control: without wechat_login these names do reach the backend.
		assertStatus(t, testkit.Get(t, "/control/game", spoofed...), http.StatusOK)
		control := backend.Last(t).Header
		for _, name := range []string{"x-wx-openid", "x-wx-session-key", "x-wx-appid"} {
			if len(identityValues(control, name)) == 0 {
				t.Fatalf("the server dropped every spelling of %s by itself; the test proves nothing (headers %v)", name, control)
			}
		}

		spoofEverywhere(t, spoofed, "2", "Authorization: Bearer ")
	})
}

// TestCodeReuse: repeated or concurrent logins with one code (a client
// retry, a double tap) make one WeChat call and all get the identity.
func TestCodeReuse(t *testing.T) {
	const appID, secret = "wxreuse", "reuse-secret"
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	gate := testkit.NewGate(t, sim)
	gate.Open() // shut only where a call must stay in flight
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.WechatLogin(appID, secret, gate.URL), testkit.ProxyTo(backend)))
	openID := wechatsim.OpenID(appID, "alice")

	t.Run("repeated", func(t *testing.T) {
		calls := sim.Calls()
		for range 3 {
			assertStatus(t, testkit.Get(t, "/wx/login?code=alice.repeated"), http.StatusOK)
			assertIdentity(t, backend.Last(t).Header, "x-wx-openid", openID)
		}
		if made := sim.Calls() - calls; made != 1 {
			t.Errorf("three logins with one code made %d WeChat calls, want 1", made)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		// The gate holds the first call while the others arrive; any that
		// arrive after it is released are served from the cache.
		gate.Shut()
		defer gate.Open()
		calls, forwarded, arrived := sim.Calls(), backend.Count(), gate.Arrivals()
		const logins = 8
		statuses := make(chan int, logins)
		done := make(chan struct{})
		go func() {
			defer close(done)
			testkit.Parallel(logins, logins, func(int) {
				// Not testkit.Get: t.Fatal must not be called off the test goroutine.
				resp, err := testkit.Fetch(context.Background(), http.MethodGet, "/wx/login?code=alice.concurrent", nil)
				if err != nil {
					t.Error(err)
					return
				}
				statuses <- resp.StatusCode
			})
		}()
		gate.AwaitArrivals(t, arrived+1)
		gate.Open()
		<-done
		close(statuses)
		for status := range statuses {
			if status != http.StatusOK {
				t.Errorf("a concurrent login got status %d, want 200", status)
			}
		}
		if made := sim.Calls() - calls; made != 1 {
			t.Errorf("%d concurrent logins with one code made %d WeChat calls, want 1", logins, made)
		}
		if got := backend.Count() - forwarded; got != logins {
			t.Errorf("%d of %d logins reached the backend", got, logins)
		}
	})
}

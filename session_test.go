package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// The token goes out only with a successful upstream response, whichever
// way the upstream writes it, and a response that carries it is never
// cached, whatever the upstream allowed.
func TestSessionIssuingWriterOnlyOnSuccess(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upstream func(http.ResponseWriter)
		issued   bool
	}{
		{"WriteHeader 200", func(w http.ResponseWriter) { w.WriteHeader(http.StatusOK) }, true},
		{"WriteHeader 204", func(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }, true},
		{"implicit 200 by Write", func(w http.ResponseWriter) { io.WriteString(w, "ok") }, true},
		{"implicit 200 by ReadFrom", func(w http.ResponseWriter) { w.(io.ReaderFrom).ReadFrom(strings.NewReader("ok")) }, true},
		{"replacing the upstream's own", func(w http.ResponseWriter) {
			w.Header().Set(wechatHeaders.session, "upstream")
			w.WriteHeader(http.StatusOK)
		}, true},
		{"302", func(w http.ResponseWriter) { w.Header().Set("Location", "/"); w.WriteHeader(http.StatusFound) }, false},
		{"404", func(w http.ResponseWriter) { w.WriteHeader(http.StatusNotFound) }, false},
		{"500", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, false},
		{"500 with the upstream's own", func(w http.ResponseWriter) {
			w.Header().Set(wechatHeaders.session, "upstream")
			w.WriteHeader(http.StatusInternalServerError)
		}, false},
		{"103 then 500", func(w http.ResponseWriter) {
			w.Header().Set("Link", "</app.js>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusInternalServerError)
		}, false},
		{"103 then 200", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "ok")
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A real server, so that 1xx responses and ReadFrom behave as
			// they do behind Caddy.
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "public, max-age=600")
				tc.upstream(newSessionIssuingWriter(w, wechatHeaders.session, "the-token"))
			}))
			defer srv.Close()
			client := srv.Client()
			client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := resp.Header.Get(wechatHeaders.session)
			if tc.issued && got != "the-token" {
				t.Errorf("status %d: X-WX-SESSION %q, want the token", resp.StatusCode, got)
			}
			if !tc.issued && got != "" {
				t.Errorf("status %d: X-WX-SESSION %q, want none", resp.StatusCode, got)
			}
			wantCaching := "public, max-age=600" // the upstream's, on a response without a token
			if tc.issued {
				wantCaching = "no-store"
			}
			if got := resp.Header.Values("Cache-Control"); len(got) != 1 || got[0] != wantCaching {
				t.Errorf("status %d: Cache-Control %q, want %q", resp.StatusCode, got, wantCaching)
			}
		})
	}
}

func TestSessionIssuedAtLogin(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withSessions(nil))

	w := testLogin{code: "alice.1"}.serve(context.Background(), h).checked(t).w
	token := w.Header().Get(wechatHeaders.session)
	id, err := verified(h.sessions, token)
	if err != nil || id.OpenID != wechatsim.OpenID(testAppID, "alice") {
		t.Fatalf("login answered %d with token %q: %+v %v", w.Code, token, id, err)
	}
	if w := (testLogin{code: "bob.1", status: http.StatusInternalServerError}).serve(context.Background(), h).checked(t).w; w.Header().Get(wechatHeaders.session) != "" {
		t.Error("a failed upstream login response carried a session")
	}
	if w := (testLogin{code: "invalid.1"}).serve(context.Background(), h).checked(t).w; w.Header().Get(wechatHeaders.session) != "" {
		t.Errorf("a refused login (%d) carried a session", w.Code)
	}
}

func TestSessionRequiredOrOptional(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	valid := issueToken(newTestSessionTokens(clock, testAppID, sessionSecret), aliceIdentity)
	forged := issueToken(newTestSessionTokens(clock, testAppID, otherSessionSecret), aliceIdentity)

	for _, tc := range []struct {
		name     string
		optional bool
		header   http.Header
		status   int  // 0: forwarded
		identity bool // forwarded with alice's identity
	}{
		{"required, none", false, http.Header{}, http.StatusUnauthorized, false},
		{"required, forged", false, http.Header{"Authorization": {"Bearer " + forged}}, http.StatusUnauthorized, false},
		{"required, spoofed identity", false, http.Header{"X-Wx-Openid": {aliceIdentity.OpenID}}, http.StatusUnauthorized, false},
		{"required, bearer", false, http.Header{"Authorization": {"bearer " + valid}}, 0, true},
		{"required, X-WX-SESSION", false, http.Header{"X-Wx-Session": {valid}}, 0, true},
		{"optional, none", true, http.Header{}, 0, false},
		{"optional, forged and spoofed", true, http.Header{"X-Wx-Session": {forged}, "X_WX_OPENID": {aliceIdentity.OpenID}, "X-Wx-Source": {wechatHeaders.sourceValue}}, 0, false},
		{"optional, bearer", true, http.Header{"Authorization": {"Bearer " + valid}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newClockedHandler(t, endpoint, clock, withSessions(func(s *SessionConfig) { s.Optional = tc.optional }))
			r, _ := newTestRequest(context.Background(), http.MethodGet, "/game/state", nil)
			for k, v := range tc.header {
				r.Header[k] = v
			}
			up := &recordingUpstream{}
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, up.handler()); err != nil {
				t.Fatal(err)
			}
			if tc.status != 0 {
				var body errorBody
				_ = json.Unmarshal(w.Body.Bytes(), &body)
				if w.Code != tc.status || body.Error != refusalInvalidSession || up.count() != 0 {
					t.Fatalf("got %d %s, forwarded %d; want %d invalid_session", w.Code, w.Body, up.count(), tc.status)
				}
				return
			}
			if up.count() != 1 {
				t.Fatalf("not forwarded: %d %s", w.Code, w.Body)
			}
			got := up.headers[0]
			want := http.Header{}
			if tc.identity {
				want = http.Header{"X-Wx-Openid": {aliceIdentity.OpenID}, "X-Wx-Unionid": {aliceIdentity.UnionID}, "X-Wx-Appid": {testAppID}, "X-Wx-Source": {"wx_client"}}
			}
			for name := range got {
				if isIdentityHeader(name) && !slices.Equal(got[name], want[name]) {
					t.Errorf("upstream got %s: %q, want %q", name, got[name], want[name])
				}
			}
			for name, v := range want {
				if !slices.Equal(got[name], v) {
					t.Errorf("upstream got %s: %q, want %q", name, got[name], v)
				}
			}
			if got.Get(wechatHeaders.session) != "" || (tc.identity && got.Get("Authorization") != "") {
				t.Error("a session token reached the upstream")
			}
		})
	}
}

func TestSessionRespondAnswersAtTheGateway(t *testing.T) {
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret, UnionBound: true}}})
	clock := newTestClock()
	h := newClockedHandler(t, simURL, clock, withSessions(func(s *SessionConfig) { s.Respond = true }))

	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.1", nil)
	up := &recordingUpstream{}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusOK || up.count() != 0 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %q, forwarded %d; want a JSON 200 and nothing forwarded", w.Code, w.Header().Get("Content-Type"), up.count())
	}
	// The answer carries the session token: no cache may keep it.
	if got := w.Header().Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", got)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
	if body["openid"] != wechatsim.OpenID(testAppID, "alice") || body["unionid"] != wechatsim.UnionID("alice") {
		t.Errorf("body %v: wrong identity", body)
	}
	if body["expires_at"] != testEpoch.Add(sessionTTL).Format(time.RFC3339) {
		t.Errorf("expires_at %q, want %q", body["expires_at"], testEpoch.Add(sessionTTL).Format(time.RFC3339))
	}
	if id, err := verified(h.sessions, body["token"]); err != nil || id.OpenID != body["openid"] {
		t.Errorf("token does not verify: %+v %v", id, err)
	}
	for _, secret := range sim.Sensitive() {
		if strings.Contains(w.Body.String(), secret) {
			t.Error("the response carries a secret, code or session_key")
		}
	}
}

// A returning player in a login loop is stopped by the session it presents,
// before its code costs a WeChat call.
func TestSessionLoginOverBudgetRefusedBeforeWechat(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withSessions(nil), withBudget(2, time.Minute))
	token := testLogin{code: "alice.1"}.serve(context.Background(), h).checked(t).w.Header().Get(wechatHeaders.session)
	testLogin{code: "alice.2"}.serve(context.Background(), h).checked(t)

	w := testLogin{code: "alice.3", header: bearerHeader(token)}.serve(context.Background(), h).checked(t).w
	wantRateLimited(t, w, w.Code == http.StatusNoContent, "63")
	if sim.Calls() != 2 {
		t.Errorf("WeChat saw %d calls, want 2: the third login had to be refused before calling", sim.Calls())
	}
}

// sessBenchmarkGameRequest times a game request (not a login) presenting a
// bearer token through h, and returns it as the upstream last saw it.
func sessBenchmarkGameRequest(b *testing.B, h *Handler, token string) *http.Request {
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/game/state", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r.Header.Set("Authorization", "Bearer "+token) // removed when verified
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

func BenchmarkSessionVerifiedRequest(b *testing.B) {
	clock := newTestClock()
	h := newClockedHandler(b, "http://127.0.0.1:1", clock, withSessions(nil))
	token := issueToken(h.sessions, aliceIdentity)
	if r := sessBenchmarkGameRequest(b, h, token); r.Header.Get(wechatHeaders.openID) != aliceIdentity.OpenID {
		b.Fatal("the session was not verified")
	}
}

// BenchmarkSessionlessRequest is the same request through a handler without
// sessions: the baseline that verification adds to.
func BenchmarkSessionlessRequest(b *testing.B) {
	clock := newTestClock()
	h := newClockedHandler(b, "http://127.0.0.1:1", clock)
	sessBenchmarkGameRequest(b, h, issueToken(newTestSessionTokens(clock, testAppID, sessionSecret), aliceIdentity))
}

// Operators see why sessions are refused, by a bounded reason label.
func TestSessionRejectionReasonsAreCounted(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withSessions(nil))
	signed := func(claims string) string {
		return signRaw(`{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"sub":"o1","appid":%q,%s}`, testAppID, claims), sessionSecret)
	}
	now := clock.Now().Unix()
	for _, tc := range []struct{ reason, token string }{
		{"missing", ""},
		{"malformed", "garbage"},
		{"bad_signature", issueToken(newTestSessionTokens(clock, testAppID, otherSessionSecret), aliceIdentity)},
		{"expired", signed(fmt.Sprintf(`"exp":%d`, now-3600))},
		{"not_yet_valid", signed(fmt.Sprintf(`"exp":%d,"nbf":%d`, now+7200, now+3600))},
		{"wrong_audience", signed(fmt.Sprintf(`"exp":%d,"aud":"api"`, now+3600))},
		{"other_app", issueToken(newTestSessionTokens(clock, "wxanotherapp", sessionSecret), aliceIdentity)},
	} {
		counter := loginCollectors().sessionsRejected.WithLabelValues(testAppID, tc.reason)
		before := counterValue(counter)
		r, _ := newTestRequest(context.Background(), http.MethodGet, "/game/state", nil)
		if tc.token != "" {
			r.Header.Set("Authorization", "Bearer "+tc.token)
		}
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, (&recordingUpstream{}).handler())
		if w.Code != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", tc.reason, w.Code)
		}
		if got := counterValue(counter) - before; got != 1 {
			t.Errorf("sessions_rejected_total{reason=%q} grew by %v, want 1", tc.reason, got)
		}
	}
}

// With several apps in one handler, a refused session counts under the app
// its token names when its signature holds, and under the handler's first
// app when it names none of them: a forged token names nobody.
func TestSessionRejectionsCountUnderTheTokensApp(t *testing.T) {
	clock := newTestClock()
	h := newClockedHandler(t, "http://127.0.0.1:1", clock, withSessions(nil), withPlatformApps("http://127.0.0.1:1"))
	now := clock.Now().Unix()
	douyinClaims := func(claims string) string {
		return fmt.Sprintf(`{"sub":"o1","appid":"ttunittest","platform":"douyin",%s}`, claims)
	}
	for _, tc := range []struct{ appID, reason, token string }{
		{"ttunittest", "expired", signRaw(`{"alg":"HS256"}`, douyinClaims(fmt.Sprintf(`"exp":%d`, now-3600)), sessionSecret)},
		{"ttunittest", "not_yet_valid", signRaw(`{"alg":"HS256"}`, douyinClaims(fmt.Sprintf(`"exp":%d,"nbf":%d`, now+7200, now+3600)), sessionSecret)},
		{"ttunittest", "wrong_audience", signRaw(`{"alg":"HS256"}`, douyinClaims(fmt.Sprintf(`"exp":%d,"aud":"api"`, now+3600)), sessionSecret)},
		{testAppID, "bad_signature", signRaw(`{"alg":"HS256"}`, douyinClaims(fmt.Sprintf(`"exp":%d`, now-3600)), otherSessionSecret)},
		{testAppID, "missing", ""},
		{testAppID, "other_app", signRaw(`{"alg":"HS256"}`, fmt.Sprintf(`{"sub":"o1","appid":"ttunittest","exp":%d}`, now+3600), sessionSecret)},
	} {
		counter := loginCollectors().sessionsRejected.WithLabelValues(tc.appID, tc.reason)
		before := counterValue(counter)
		res := serveAt(h, "/game/state", bearerHeader(tc.token))
		if res.w.Code != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", tc.reason, res.w.Code)
		}
		if got := counterValue(counter) - before; got != 1 {
			t.Errorf("sessions_rejected_total{app_id=%q,reason=%q} grew by %v, want 1", tc.appID, tc.reason, got)
		}
	}
}

// Several login loops of one player running at once, each with the
// player's session, reach WeChat no more often than the budget allows: the
// event is spent before the exchange, not after it.
func TestSessionConcurrentLoopsStayWithinBudget(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, withSessions(nil), withBudget(5, time.Hour))
	sim.SetLatency(20 * time.Millisecond) // let the loops overlap
	player := Identity{OpenID: wechatsim.OpenID(testAppID, "alice")}
	token := issueToken(h.sessions, player)
	var forwarded atomic.Int32
	var wg sync.WaitGroup
	for loop := range 8 {
		wg.Go(func() {
			for i := range 10 {
				w := testLogin{code: fmt.Sprintf("alice.%d-%d", loop, i), header: bearerHeader(token)}.serve(context.Background(), h).checked(t).w
				if w.Code == http.StatusNoContent {
					forwarded.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if calls := sim.CallsFor(player.OpenID); calls > 5 || forwarded.Load() != 5 {
		t.Errorf("%d WeChat exchanges and %d logins forwarded for a budget of 5", calls, forwarded.Load())
	}
}

// The gateway's own bearer token never reaches the upstream, on a login
// either; a bearer token that is not the gateway's may be the backend's own.
func TestLoginDropsTheGatewaysBearerToken(t *testing.T) {
	_, endpoint := newTestSim(t)
	h := newTestHandler(t, endpoint, withSessions(nil))
	first := testLogin{code: "alice.1"}.serve(context.Background(), h)
	token := first.w.Header().Get(wechatHeaders.session)
	if token == "" {
		t.Fatalf("no token issued: %d %s", first.w.Code, first.w.Body)
	}
	res := testLogin{code: "alice.2", header: bearerHeader(token)}.serve(context.Background(), h)
	if !res.forwarded() || res.upstream.Get("Authorization") != "" {
		t.Errorf("login with the gateway's token: forwarded %v, upstream Authorization %q, want none", res.forwarded(), res.upstream.Get("Authorization"))
	}
	res = testLogin{code: "alice.3", header: bearerHeader("the-backends-own")}.serve(context.Background(), h)
	if !res.forwarded() || res.upstream.Get("Authorization") != "Bearer the-backends-own" {
		t.Errorf("login with another bearer token: forwarded %v, upstream Authorization %q, want it kept", res.forwarded(), res.upstream.Get("Authorization"))
	}
}

func TestHugeTokensAreRefusedUnread(t *testing.T) {
	clock := newTestClock()
	tokens := newSessionTokens([]*loginApp{{platform: wechatPlatform, appID: testAppID}}, [][]byte{[]byte(sessionSecret)}, time.Hour, clock.Now)
	valid, _ := tokens.issue(tokens.apps[0], Identity{OpenID: "oAlice"})
	huge := valid[:strings.LastIndexByte(valid, '.')] + strings.Repeat("A", maxSessionTokenLen) + valid[strings.LastIndexByte(valid, '.'):]
	if _, err := verified(tokens, huge); err != errMalformedSession {
		t.Errorf("a %d-byte token: %v, want malformed", len(huge), err)
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		authorization []string
		token         string
	}{
		{nil, ""},
		{[]string{"Bearer tok"}, "tok"},
		{[]string{"bearer tok"}, "tok"},
		{[]string{"BEARER tok"}, "tok"},
		{[]string{"BeArEr   tok  "}, "tok"},
		{[]string{"Basic dXNlcjpwYXNz"}, ""},
		{[]string{"Bearer"}, ""},
		{[]string{"Bearer "}, ""},
		{[]string{"Bearertok"}, ""},
		{[]string{"Bearer first", "Bearer second"}, "first"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tc.authorization != nil {
			r.Header["Authorization"] = tc.authorization
		}
		if got := bearerToken(r); got != tc.token {
			t.Errorf("Authorization %q: token %q, want %q", tc.authorization, got, tc.token)
		}
	}
}

// Either token a request presents will do; a bearer token is removed only
// once verified, since an invalid one may be the backend's own.
func TestPresentedSession(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
	expired := issueToken(tokens, aliceIdentity)
	clock.Advance(sessionTTL + maxClockSkew)
	valid := issueToken(tokens, aliceIdentity)
	const basic = "Basic dXNlcjpwYXNz"

	for _, tc := range []struct {
		name          string
		session       string // the X-WX-SESSION value
		authorization string
		reason        string // "" when accepted
		left          string // Authorization afterwards
	}{
		{name: "none", authorization: basic, reason: "missing", left: basic},
		{name: "valid bearer", authorization: "Bearer " + valid},
		{name: "valid X-WX-SESSION", session: valid, authorization: basic, left: basic},
		{name: "invalid bearer", authorization: "Bearer nope", reason: "malformed", left: "Bearer nope"},
		{name: "invalid X-WX-SESSION", session: "nope", reason: "malformed"},
		{name: "invalid X-WX-SESSION, valid bearer", session: expired, authorization: "Bearer " + valid},
		{name: "valid X-WX-SESSION, the backend's own bearer", session: valid, authorization: "Bearer backend-token", left: "Bearer backend-token"},
		{name: "valid X-WX-SESSION and bearer: the gateway's token never goes upstream", session: valid, authorization: "Bearer " + valid},
		{name: "both invalid: the X-WX-SESSION's reason", session: expired, authorization: "Bearer nope", reason: "expired", left: "Bearer nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.authorization != "" {
				r.Header.Set("Authorization", tc.authorization)
			}
			id, _, err := tokens.presentedSession(r, tc.session)
			if reason := rejectionReason(err); reason != tc.reason {
				t.Fatalf("%v (reason %q), want reason %q", err, reason, tc.reason)
			}
			if err == nil && id != publicIdentity(aliceIdentity) {
				t.Errorf("identity %+v", id)
			}
			if got := r.Header.Get("Authorization"); got != tc.left {
				t.Errorf("Authorization left %q, want %q", got, tc.left)
			}
		})
	}
}

// The login budget is charged to the player a token names while its
// signature proves it, up to a grace period past its expiry.
func TestPresentedPlayer(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
	const grace = 24 * time.Hour
	token := issueToken(tokens, aliceIdentity)
	forged := issueToken(newTestSessionTokens(clock, sessionAppID, otherSessionSecret), aliceIdentity)
	foreign := issueToken(newTestSessionTokens(clock, "wxanotherapp", sessionSecret), aliceIdentity)

	for _, tc := range []struct {
		name                   string
		at                     time.Duration // after issue
		session, authorization string
		player                 bool
	}{
		{name: "valid X-WX-SESSION", session: token, player: true},
		{name: "valid bearer", authorization: "Bearer " + token, player: true},
		{name: "invalid X-WX-SESSION, valid bearer", session: forged, authorization: "Bearer " + token, player: true},
		{name: "expired an hour ago", at: sessionTTL + time.Hour, session: token, player: true},
		{name: "expired just under the grace ago", at: sessionTTL + maxClockSkew + grace - time.Second, session: token, player: true},
		{name: "expired the grace ago", at: sessionTTL + maxClockSkew + grace, session: token},
		{name: "another key", session: forged},
		{name: "another app", authorization: "Bearer " + foreign},
		{name: "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.Set(sessionEpoch.Add(tc.at))
			r := httptest.NewRequest(http.MethodGet, "/wx/login", nil)
			if tc.authorization != "" {
				r.Header.Set("Authorization", tc.authorization)
			}
			player := tokens.presentedPlayer(r, tokens.apps[0], tc.session, grace)
			if (player != "") != tc.player || (player != "" && player != aliceIdentity.OpenID) {
				t.Errorf("got %q, want the player: %v", player, tc.player)
			}
			// The gateway's own bearer token is removed; another stays.
			wantAuthorization := tc.authorization
			if tc.player && strings.HasSuffix(tc.authorization, token) {
				wantAuthorization = ""
			}
			if got := r.Header.Get("Authorization"); got != wantAuthorization {
				t.Errorf("Authorization after presentedPlayer: %q, want %q", got, wantAuthorization)
			}
		})
	}
}

// FuzzPresentedSession feeds arbitrary X-WX-SESSION and Authorization
// values: nothing panics, anything accepted is a token issued with one of
// the keys (the signed part byte for byte), proving the identity issued,
// and only a verified bearer token is removed.
func FuzzPresentedSession(f *testing.F) {
	clock := testkit.NewClock(sessionEpoch)
	verifier := newTestSessionTokens(clock, sessionAppID, sessionSecret, otherSessionSecret)
	issued := map[string]Identity{} // signed part (header.payload) → identity
	for _, signer := range []*sessionTokens{verifier, newTestSessionTokens(clock, sessionAppID, otherSessionSecret)} {
		for _, id := range []Identity{aliceIdentity, bobIdentity} {
			token := issueToken(signer, id)
			issued[token[:strings.LastIndexByte(token, '.')]] = publicIdentity(id)
			f.Add(token, "")
			f.Add("", "Bearer "+token)
			f.Add("nope", "bearer "+token)
		}
	}
	f.Add(issueToken(newTestSessionTokens(clock, "wxanotherapp", sessionSecret), aliceIdentity), "Bearer a.b.c")
	f.Add("", "")
	f.Add(encodeSegment(`{"alg":"none","typ":"JWT"}`)+".e30.", "Basic dXNlcjpwYXNz")

	f.Fuzz(func(t *testing.T, session, authorization string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header["Authorization"] = []string{authorization}
		bearer := bearerToken(r)
		id, _, err := verifier.presentedSession(r, session)
		if (err == errNoSession) != (session == "" && bearer == "") {
			t.Fatalf("no session: %v, for session %q and bearer %q", err, session, bearer)
		}
		if err != nil {
			if r.Header.Get("Authorization") != authorization {
				t.Fatal("an unverified Authorization header was removed")
			}
			return
		}
		var from string
		if _, sessionErr := verified(verifier, session); sessionErr == nil {
			from = session
		} else {
			from = bearer
			if r.Header.Get("Authorization") != "" {
				t.Fatal("a verified bearer token was left for the upstream")
			}
		}
		if want, ok := issued[from[:strings.LastIndexByte(from, '.')]]; !ok || id != want {
			t.Fatalf("accepted %q as %+v; issued: %v %+v", from, id, ok, want)
		}
	})
}

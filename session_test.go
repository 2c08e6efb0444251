package wechatlogin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const (
	sessSecret      = "session-test-secret-0123456789abcdef"
	sessOtherSecret = "session-test-other-secret-0123456789"
	sessTTL         = 2 * time.Hour
)

var (
	sessAlice = Identity{OpenID: "oAliceAliceAliceAliceAlice01", UnionID: "oUnionAliceUnionAliceUnion01", SessionKey: "c2Vzc2lvbi1rZXktYWxpY2U="}
	sessBob   = Identity{OpenID: "oBobBobBobBobBobBobBobBobB01", SessionKey: "c2Vzc2lvbi1rZXktYm9i"}
)

// sessNew makes the sessions of appID on clock; the first secret signs.
func sessNew(clock *testkit.Clock, appID string, secrets ...string) *sessions {
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		keys[i] = []byte(s)
	}
	return newSessions(appID, keys, sessTTL, clock.Now)
}

// sessPayload decodes a token's claims without verifying it, as a client can.
func sessPayload(t testing.TB, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWS", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

// sessPublic is what a verified session proves: the identity without the
// session_key, which a token never carries.
func sessPublic(id Identity) Identity { return Identity{OpenID: id.OpenID, UnionID: id.UnionID} }

func TestSessionRoundTrip(t *testing.T) {
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	for _, id := range []Identity{sessAlice, sessBob} {
		token, expires, err := s.issue(id, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !expires.Equal(testEpoch.Add(sessTTL)) {
			t.Errorf("expires %s, want now+ttl %s", expires, testEpoch.Add(sessTTL))
		}
		got, err := s.verify(token)
		if err != nil || got != sessPublic(id) {
			t.Fatalf("verify: %+v %v, want %+v", got, err, sessPublic(id))
		}

		claims := sessPayload(t, token)
		want := map[string]any{
			"sub":   id.OpenID,
			"appid": testAppID,
			"iat":   float64(testEpoch.Unix()),
			"exp":   float64(testEpoch.Add(sessTTL).Unix()),
		}
		if id.UnionID != "" {
			want["unionid"] = id.UnionID
		}
		if !maps.Equal(claims, want) {
			t.Errorf("claims %v, want exactly %v", claims, want)
		}
		raw, _ := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[1])
		if strings.Contains(string(raw), id.SessionKey) || strings.Contains(strings.ToLower(string(raw)), "session") {
			t.Errorf("the token payload carries the session_key: %s", raw)
		}
	}
}

// sessSign signs claims with any method, as a forger holding (or guessing)
// a key would.
func sessSign(t testing.TB, method jwt.SigningMethod, claims jwt.Claims, key string) string {
	t.Helper()
	token, err := jwt.NewWithClaims(method, claims).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func TestSessionVerifyRefuses(t *testing.T) {
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	valid, _, err := s.issue(sessAlice, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(valid, ".")
	claims := func(edit func(*sessionClaims)) sessionClaims {
		c := sessionClaims{AppID: testAppID, RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sessAlice.OpenID,
			IssuedAt:  jwt.NewNumericDate(clock.Now()),
			ExpiresAt: jwt.NewNumericDate(clock.Now().Add(time.Hour)),
		}}
		edit(&c)
		return c
	}
	encode := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
	issuedBy := func(other *sessions, id Identity, at time.Time) string {
		token, _, err := other.issue(id, at)
		if err != nil {
			t.Fatal(err)
		}
		return token
	}

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"edited payload", parts[0] + "." + encode(strings.Replace(string(sessDecode(t, parts[1])), sessAlice.OpenID, sessBob.OpenID, 1)) + "." + parts[2]},
		{"edited signature", parts[0] + "." + parts[1] + "." + encode("not the signature")},
		{"other secret", issuedBy(sessNew(clock, testAppID, sessOtherSecret), sessAlice, clock.Now())},
		{"alg none without signature", encode(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + "."},
		{"alg none with the valid signature", encode(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + "." + parts[2]},
		{"HS384 with the same key", sessSign(t, jwt.SigningMethodHS384, claims(func(*sessionClaims) {}), sessSecret)},
		{"HS512 with the same key", sessSign(t, jwt.SigningMethodHS512, claims(func(*sessionClaims) {}), sessSecret)},
		{"no expiry", sessSign(t, jwt.SigningMethodHS256, claims(func(c *sessionClaims) { c.ExpiresAt = nil }), sessSecret)},
		{"issued in the future", issuedBy(s, sessAlice, clock.Now().Add(time.Hour))},
		{"another app_id", issuedBy(sessNew(clock, "wxanotherapp", sessSecret), sessAlice, clock.Now())},
		{"no app_id", sessSign(t, jwt.SigningMethodHS256, claims(func(c *sessionClaims) { c.AppID = "" }), sessSecret)},
		{"empty subject", issuedBy(s, Identity{}, clock.Now())},
		{"garbage", "garbage"},
		{"three garbage segments", "a.b.c"},
		{"dots", ".."},
		{"empty", ""},
		{"valid with a fourth segment", valid + "." + parts[2]},
		{"signature spelled with other unused bits", parts[0] + "." + parts[1] + "." + sessRespell(parts[2])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if id, err := s.verify(tc.token); err == nil {
				t.Errorf("accepted as %+v", id)
			}
		})
	}
}

// sessRespell changes the unused low bits of a segment's last character:
// lenient base64 decodes it to the same bytes.
func sessRespell(segment string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, segment[len(segment)-1])
	return segment[:len(segment)-1] + string(alphabet[last^1])
}

// Gateways behind one load balancer verify each other's tokens: a clock a
// little behind the issuer's must not refuse them.
func TestSessionToleratesClockSkew(t *testing.T) {
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	ahead, _, err := s.issue(sessAlice, clock.Now().Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.verify(ahead); err != nil {
		t.Errorf("refused a token from a gateway 30s ahead: %v", err)
	}
	if _, err := base64.RawURLEncoding.DecodeString(sessRespell(strings.Split(ahead, ".")[2])); err != nil {
		t.Fatal("sessRespell no longer makes a lenient-valid spelling")
	}
}

func sessDecode(t testing.TB, segment string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSessionExpires(t *testing.T) {
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	token, _, err := s.issue(sessAlice, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(sessTTL - time.Second)
	if _, err := s.verify(token); err != nil {
		t.Fatalf("refused a second before expiry: %v", err)
	}
	clock.Advance(time.Second)
	if _, err := s.verify(token); err == nil {
		t.Fatal("accepted at expiry")
	}
}

// Putting a new secret first rotates without logging anybody out.
func TestSessionSecretRotation(t *testing.T) {
	clock := newTestClock()
	before := sessNew(clock, testAppID, sessOtherSecret)
	rotating := sessNew(clock, testAppID, sessSecret, sessOtherSecret)
	after := sessNew(clock, testAppID, sessSecret)

	oldToken, _, _ := before.issue(sessAlice, clock.Now())
	if id, err := rotating.verify(oldToken); err != nil || id != sessPublic(sessAlice) {
		t.Errorf("a token signed by the old secret was refused during rotation: %v", err)
	}
	newToken, _, _ := rotating.issue(sessBob, clock.Now())
	if _, err := after.verify(newToken); err != nil {
		t.Errorf("the first secret did not sign: %v", err)
	}
	if _, err := before.verify(newToken); err == nil {
		t.Error("a new token is still signed by the old secret")
	}
	if _, err := after.verify(oldToken); err == nil {
		t.Error("an old token verified once its secret was removed")
	}
}

func TestSessionTokenFromHeaders(t *testing.T) {
	for _, tc := range []struct {
		name              string
		header            http.Header
		token             string
		fromAuthorization bool
	}{
		{"none", http.Header{}, "", false},
		{"X-WX-SESSION", http.Header{"X-Wx-Session": {"tok"}}, "tok", false},
		{"Bearer", http.Header{"Authorization": {"Bearer tok"}}, "tok", true},
		{"bearer", http.Header{"Authorization": {"bearer tok"}}, "tok", true},
		{"BEARER", http.Header{"Authorization": {"BEARER tok"}}, "tok", true},
		{"BeArEr with spaces", http.Header{"Authorization": {"BeArEr   tok  "}}, "tok", true},
		{"Basic", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, "", false},
		{"Bearer without token", http.Header{"Authorization": {"Bearer"}}, "", false},
		{"Bearer without space", http.Header{"Authorization": {"Bearertok"}}, "", false},
		{"X-WX-SESSION first", http.Header{"X-Wx-Session": {"tok"}, "Authorization": {"Bearer other"}}, "tok", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header = tc.header
			token, fromAuthorization := sessionToken(r)
			if token != tc.token || fromAuthorization != tc.fromAuthorization {
				t.Errorf("got (%q, %v), want (%q, %v)", token, fromAuthorization, tc.token, tc.fromAuthorization)
			}
		})
	}
}

// X-WX-SESSION never reaches the upstream; a bearer token is removed only
// once verified, since an invalid one may be the backend's own.
func TestSessionPresentedRemovesValidTokens(t *testing.T) {
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	valid, _, _ := s.issue(sessAlice, clock.Now())
	for _, tc := range []struct {
		name      string
		header    http.Header
		presented bool
		ok        bool
		left      http.Header
	}{
		{"none", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, false, false, http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}},
		{"valid bearer", http.Header{"Authorization": {"Bearer " + valid}}, true, true, http.Header{}},
		{"valid X-WX-SESSION", http.Header{"X-Wx-Session": {valid}, "Authorization": {"Basic dXNlcjpwYXNz"}}, true, true, http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}},
		{"invalid bearer", http.Header{"Authorization": {"Bearer nope"}}, true, false, http.Header{"Authorization": {"Bearer nope"}}},
		{"invalid X-WX-SESSION", http.Header{"X-Wx-Session": {"nope"}}, true, false, http.Header{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header = tc.header
			id, err := s.presentedSession(r)
			presented, ok := err != errNoSession, err == nil
			if presented != tc.presented || ok != tc.ok {
				t.Fatalf("presented=%v ok=%v, want %v %v", presented, ok, tc.presented, tc.ok)
			}
			if ok && id != sessPublic(sessAlice) {
				t.Errorf("identity %+v", id)
			}
			if !maps.EqualFunc(r.Header, tc.left, slices.Equal) {
				t.Errorf("headers left %v, want %v", r.Header, tc.left)
			}
		})
	}
}

// The token goes out only with a successful upstream response, whichever
// way the upstream writes it.
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
			w.Header().Set(headerSession, "upstream")
			w.WriteHeader(http.StatusOK)
		}, true},
		{"302", func(w http.ResponseWriter) { w.Header().Set("Location", "/"); w.WriteHeader(http.StatusFound) }, false},
		{"404", func(w http.ResponseWriter) { w.WriteHeader(http.StatusNotFound) }, false},
		{"500", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, false},
		{"500 with the upstream's own", func(w http.ResponseWriter) {
			w.Header().Set(headerSession, "upstream")
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
				tc.upstream(&sessionIssuingWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, token: "the-token"})
			}))
			defer srv.Close()
			client := srv.Client()
			client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := resp.Header.Get(headerSession)
			if tc.issued && got != "the-token" {
				t.Errorf("status %d: X-WX-SESSION %q, want the token", resp.StatusCode, got)
			}
			if !tc.issued && got != "" {
				t.Errorf("status %d: X-WX-SESSION %q, want none", resp.StatusCode, got)
			}
		})
	}
}

// sessConfigured turns sessions on for a handler of the test app.
func sessConfigured(configure func(*SessionConfig)) func(*Handler) {
	return func(h *Handler) {
		h.Session = &SessionConfig{Secrets: []string{sessSecret}}
		if configure != nil {
			configure(h.Session)
		}
	}
}

// sessLogin logs in through h with an upstream answering status, and
// returns the response.
func sessLogin(t testing.TB, h *Handler, code string, status int, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code="+code, nil)
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(status)
		return nil
	})
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestSessionIssuedAtLogin(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, sessConfigured(nil))

	w := sessLogin(t, h, "alice.1", http.StatusNoContent, nil)
	token := w.Header().Get(headerSession)
	id, err := h.sessions.verify(token)
	if err != nil || id.OpenID != wechatsim.OpenID(testAppID, "alice") {
		t.Fatalf("login answered %d with token %q: %+v %v", w.Code, token, id, err)
	}
	if w := sessLogin(t, h, "bob.1", http.StatusInternalServerError, nil); w.Header().Get(headerSession) != "" {
		t.Error("a failed upstream login response carried a session")
	}
	if w := sessLogin(t, h, "invalid.1", http.StatusNoContent, nil); w.Header().Get(headerSession) != "" {
		t.Errorf("a refused login (%d) carried a session", w.Code)
	}
}

func TestSessionRequiredOrOptional(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	s := sessNew(clock, testAppID, sessSecret)
	valid, _, _ := s.issue(sessAlice, clock.Now())
	forged, _, _ := sessNew(clock, testAppID, sessOtherSecret).issue(sessAlice, clock.Now())

	for _, tc := range []struct {
		name     string
		optional bool
		header   http.Header
		status   int  // 0: forwarded
		identity bool // forwarded with alice's identity
	}{
		{"required, none", false, http.Header{}, http.StatusUnauthorized, false},
		{"required, forged", false, http.Header{"Authorization": {"Bearer " + forged}}, http.StatusUnauthorized, false},
		{"required, spoofed identity", false, http.Header{"X-Wx-Openid": {sessAlice.OpenID}}, http.StatusUnauthorized, false},
		{"required, bearer", false, http.Header{"Authorization": {"bearer " + valid}}, 0, true},
		{"required, X-WX-SESSION", false, http.Header{"X-Wx-Session": {valid}}, 0, true},
		{"optional, none", true, http.Header{}, 0, false},
		{"optional, forged and spoofed", true, http.Header{"X-Wx-Session": {forged}, "X_WX_OPENID": {sessAlice.OpenID}}, 0, false},
		{"optional, bearer", true, http.Header{"Authorization": {"Bearer " + valid}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newClockedHandler(t, endpoint, clock, sessConfigured(func(s *SessionConfig) { s.Optional = tc.optional }))
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
				if w.Code != tc.status || body.Error != errInvalidSession || up.count() != 0 {
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
				want = http.Header{"X-Wx-Openid": {sessAlice.OpenID}, "X-Wx-Unionid": {sessAlice.UnionID}, "X-Wx-Appid": {testAppID}}
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
			if got.Get(headerSession) != "" || (tc.identity && got.Get("Authorization") != "") {
				t.Error("a session token reached the upstream")
			}
		})
	}
}

func TestSessionRespondAnswersAtTheGateway(t *testing.T) {
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret, UnionBound: true}}})
	clock := newTestClock()
	h := newClockedHandler(t, simURL, clock, sessConfigured(func(s *SessionConfig) { s.Respond = true }))

	r, _ := newTestRequest(context.Background(), http.MethodGet, "/wx/login?code=alice.1", nil)
	up := &recordingUpstream{}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusOK || up.count() != 0 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %q, forwarded %d; want a JSON 200 and nothing forwarded", w.Code, w.Header().Get("Content-Type"), up.count())
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
	if body["openid"] != wechatsim.OpenID(testAppID, "alice") || body["unionid"] != wechatsim.UnionID("alice") {
		t.Errorf("body %v: wrong identity", body)
	}
	if body["expires_at"] != testEpoch.Add(sessTTL).Format(time.RFC3339) {
		t.Errorf("expires_at %q, want %q", body["expires_at"], testEpoch.Add(sessTTL).Format(time.RFC3339))
	}
	if id, err := h.sessions.verify(body["token"]); err != nil || id.OpenID != body["openid"] {
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
	h := newClockedHandler(t, endpoint, clock, func(h *Handler) {
		sessConfigured(nil)(h)
		h.Budget = &Budget{Events: 2, Window: caddy.Duration(time.Minute)}
	})
	token := sessLogin(t, h, "alice.1", http.StatusNoContent, nil).Header().Get(headerSession)
	sessLogin(t, h, "alice.2", http.StatusNoContent, nil)

	w := sessLogin(t, h, "alice.3", http.StatusNoContent, http.Header{"Authorization": {"Bearer " + token}})
	wantRateLimited(t, w, w.Code == http.StatusNoContent, "63")
	if sim.Calls() != 2 {
		t.Errorf("WeChat saw %d calls, want 2: the third login had to be refused before calling", sim.Calls())
	}
}

// FuzzSessionToken feeds arbitrary tokens and headers to verification: it
// must never panic, and anything it accepts must be a token issued with one
// of the keys (the signed part byte for byte; base64 lets the signature's
// last character vary without changing it), proving the identity issued.
func FuzzSessionToken(f *testing.F) {
	clock := newTestClock()
	verifier := sessNew(clock, testAppID, sessSecret, sessOtherSecret)
	issued := map[string]Identity{} // signed part (header.payload) → identity
	for _, signer := range []*sessions{verifier, sessNew(clock, testAppID, sessOtherSecret)} {
		for _, id := range []Identity{sessAlice, sessBob} {
			token, _, err := signer.issue(id, clock.Now())
			if err != nil {
				f.Fatal(err)
			}
			issued[token[:strings.LastIndexByte(token, '.')]] = sessPublic(id)
			f.Add(token)
			f.Add("Bearer " + token)
		}
	}
	foreign, _, _ := sessNew(clock, "wxanotherapp", sessSecret).issue(sessAlice, clock.Now())
	f.Add(foreign)
	f.Add("")
	f.Add("bearer ")
	f.Add("a.b.c")
	f.Add(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + ".e30.")

	f.Fuzz(func(t *testing.T, input string) {
		if id, err := verifier.verify(input); err == nil {
			dot := strings.LastIndexByte(input, '.')
			want, ok := issued[input[:dot]]
			if !ok {
				t.Fatalf("accepted a token that was never issued: %q", input)
			}
			if id != want {
				t.Fatalf("token proves %+v, issued for %+v", id, want)
			}
		}

		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header["Authorization"] = []string{input}
		token, fromAuthorization := sessionToken(r)
		if token != "" && (!fromAuthorization || !strings.EqualFold(input[:7], "bearer ") || !strings.HasSuffix(strings.TrimSpace(input), token)) {
			t.Fatalf("token %q read from Authorization %q", token, input)
		}
		id, err := verifier.presentedSession(r)
		presented, ok := err != errNoSession, err == nil
		if presented != (token != "") {
			t.Fatalf("presented=%v for token %q", presented, token)
		}
		if ok {
			if want, err := verifier.verify(token); err != nil || id != want {
				t.Fatalf("presentedSession proved %+v, verify %+v %v", id, want, err)
			}
			if r.Header.Get("Authorization") != "" {
				t.Fatal("a valid bearer token was left for the upstream")
			}
		} else if r.Header.Get("Authorization") != input {
			t.Fatal("an invalid Authorization header was removed")
		}
	})
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
	h := newClockedHandler(b, "http://127.0.0.1:1", clock, sessConfigured(nil))
	token, _, _ := h.sessions.issue(sessAlice, clock.Now())
	if r := sessBenchmarkGameRequest(b, h, token); r.Header.Get(headerOpenID) != sessAlice.OpenID {
		b.Fatal("the session was not verified")
	}
}

// BenchmarkSessionlessRequest is the same request through a handler without
// sessions: the baseline that verification adds to.
func BenchmarkSessionlessRequest(b *testing.B) {
	clock := newTestClock()
	h := newClockedHandler(b, "http://127.0.0.1:1", clock, nil)
	token, _, _ := sessNew(clock, testAppID, sessSecret).issue(sessAlice, clock.Now())
	sessBenchmarkGameRequest(b, h, token)
}

// Operators see why sessions are refused, by a bounded reason label.
func TestSessionRejectionReasonsAreCounted(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, sessConfigured(nil))
	expired, _, _ := h.sessions.issue(sessAlice, clock.Now().Add(-3*time.Hour))
	forged, _, _ := sessNew(clock, testAppID, sessOtherSecret).issue(sessAlice, clock.Now())
	foreign, _, _ := sessNew(clock, "wxanotherapp", sessSecret).issue(sessAlice, clock.Now())
	for _, tc := range []struct{ reason, token string }{
		{"missing", ""},
		{"malformed", "garbage"},
		{"bad_signature", forged},
		{"expired", expired},
		{"other_app", foreign},
	} {
		counter := wechatMetrics.sessionsRejected.WithLabelValues(testAppID, tc.reason)
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

func TestSessionClaimsFastPathAgreesWithJSON(t *testing.T) {
	for _, payload := range []string{
		`{"appid":"wx1","unionid":"u1","sub":"o1","exp":1795470000,"iat":1795462800}`,
		`{"appid":"wx1","sub":"o1","exp":1795470000,"iat":1795462800}`,
		`{"sub":"o1","sub":"o2","exp":1}`,
		`{}`,
		`{"sub":"o1",}`,
		`{"sub":"o1"`,
		`{"sub":1}`,
		`{"exp":"1"}`,
		`{"exp":01}`,
		`{"exp":1.5}`,
		`{"exp":-1}`,
		`{"SUB":"o1"}`,
		`{"sub":"o\u0031"}`,
		`{"sub" :"o1"}`,
		`{"aud":["x"],"sub":"o1"}`,
		`{"sub":null}`,
	} {
		var fast verifiedClaims
		ok := fast.parseFlat([]byte(payload))
		var slow verifiedClaims
		err := json.Unmarshal([]byte(payload), &slow)
		if ok && (err != nil || fast != slow) {
			t.Errorf("%s: fast path read %+v, encoding/json %+v (%v)", payload, fast, slow, err)
		}
	}
	// What issue writes always takes the fast path.
	clock := newTestClock()
	token, _, _ := sessNew(clock, testAppID, sessSecret).issue(sessAlice, clock.Now())
	var c verifiedClaims
	if !c.parseFlat(sessDecode(t, strings.Split(token, ".")[1])) || c.Subject != sessAlice.OpenID || c.UnionID != sessAlice.UnionID || c.AppID != testAppID {
		t.Errorf("an issued token's claims missed the fast path: %+v", c)
	}
}

func FuzzSessionClaimsFastPath(f *testing.F) {
	f.Add([]byte(`{"appid":"wx1","unionid":"u1","sub":"o1","exp":1795470000,"iat":1795462800}`))
	f.Add([]byte(`{"sub":"o1",}`))
	f.Add([]byte(`{"exp":01}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var fast verifiedClaims
		if !fast.parseFlat(payload) {
			return
		}
		var slow verifiedClaims
		if err := json.Unmarshal(payload, &slow); err != nil || fast != slow {
			t.Fatalf("%q: fast path read %+v, encoding/json %+v (%v)", payload, fast, slow, err)
		}
	})
}

// Several login loops of one player running at once, each with the
// player's session, reach WeChat no more often than the budget allows: the
// event is spent before the exchange, not after it.
func TestSessionConcurrentLoopsStayWithinBudget(t *testing.T) {
	sim, endpoint := newTestSim(t)
	clock := newTestClock()
	h := newClockedHandler(t, endpoint, clock, func(h *Handler) {
		sessConfigured(nil)(h)
		h.Budget = &Budget{Events: 5, Window: caddy.Duration(time.Hour)}
	})
	sim.SetLatency(20 * time.Millisecond) // let the loops overlap
	player := Identity{OpenID: wechatsim.OpenID(testAppID, "alice")}
	token, _, _ := h.sessions.issue(player, clock.Now())
	var forwarded atomic.Int32
	var wg sync.WaitGroup
	for loop := range 8 {
		wg.Go(func() {
			for i := range 10 {
				w := sessLogin(t, h, fmt.Sprintf("alice.%d-%d", loop, i), http.StatusNoContent, http.Header{"Authorization": {"Bearer " + token}})
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

package wechatsim_test

import (
	"bytes"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestMsgSecCheck(t *testing.T) {
	s, ts, clock := newClockedSim(t)
	token, _ := stableToken(t, ts, false)
	withToken := url.Values{"access_token": {token}}
	check := func(content string) result {
		t.Helper()
		return call(t, ts, http.MethodPost, "/wxa/msg_sec_check", withToken,
			`{"content":"`+content+`","version":2,"scene":2,"openid":"o123"}`)
	}
	verdict := func(r result) (any, any) {
		t.Helper()
		if code, _ := r.errcode(); code != 0 || r.fields["errmsg"] != "ok" || r.fields["trace_id"] == "" {
			t.Fatalf("answer %v; want errcode 0, errmsg ok and a trace_id", r.fields)
		}
		result, _ := r.fields["result"].(map[string]any)
		return result["suggest"], result["label"]
	}
	if suggest, label := verdict(check("good game")); suggest != "pass" || label != 100.0 {
		t.Errorf("a harmless text: %v %v; want pass 100", suggest, label)
	}
	if suggest, label := verdict(check("a " + wechatsim.RiskyWord + " text")); suggest != "risky" || label != 20001.0 {
		t.Errorf("a risky text: %v %v; want risky 20001", suggest, label)
	}

	for _, tt := range []struct {
		name, method string
		q            url.Values
		body         string
		code         int
		msg          string
	}{
		{"no token", http.MethodPost, nil, `{}`, 41001, "access_token missing"},
		{"unknown token", http.MethodPost, url.Values{"access_token": {"80_forged"}}, `{}`, 40001, "invalid credential, access_token is invalid or not latest"},
		{"GET", http.MethodGet, withToken, "", 43302, "method should be post"},
		{"empty body", http.MethodPost, withToken, "", 44002, "empty post data"},
		{"not JSON", http.MethodPost, withToken, "content=x", 47001, "data format error"},
		{"version 1", http.MethodPost, withToken, `{"content":"x","version":1,"scene":2,"openid":"o1"}`, 47001, "data format error"},
		{"scene", http.MethodPost, withToken, `{"content":"x","version":2,"scene":5,"openid":"o1"}`, 40129, "invalid scene"},
		{"no openid", http.MethodPost, withToken, `{"content":"x","version":2,"scene":1}`, 40003, "invalid openid"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, call(t, ts, tt.method, "/wxa/msg_sec_check", tt.q, tt.body), tt.code, tt.msg)
		})
	}

	// Every call is recorded as it arrived.
	got := s.APIRequests()
	if len(got) != 10 {
		t.Fatalf("APIRequests() holds %d requests; want 10", len(got))
	}
	first := got[0]
	if first.Method != http.MethodPost || first.Path != "/wxa/msg_sec_check" || first.RawQuery != withToken.Encode() ||
		first.ContentType != "application/json" || !bytes.Equal(first.Body, []byte(`{"content":"good game","version":2,"scene":2,"openid":"o123"}`)) {
		t.Errorf("first recorded request %+v is not the one sent", first)
	}

	// A token past its end is expired.
	clock.Advance(7200 * time.Second)
	wantError(t, check("late"), 42001, "access_token expired")
}

func TestCheckSession(t *testing.T) {
	_, ts, _ := newClockedSim(t)
	token, _ := stableToken(t, ts, false)
	old := wantSession(t, redeem(t, ts, appID, appSecret, "alice.1"), appID, "alice", false)
	latest := wantSession(t, redeem(t, ts, appID, appSecret, "alice.2"), appID, "alice", false)
	checkSession := func(openid, sessionKey, method string) result {
		t.Helper()
		return call(t, ts, http.MethodGet, "/wxa/checksession", url.Values{
			"access_token": {token}, "openid": {openid},
			"signature": {wechatsim.SessionSignature(sessionKey)}, "sig_method": {method},
		}, "")
	}
	alice := wechatsim.OpenID(appID, "alice")
	if r := checkSession(alice, latest, "hmac_sha256"); len(r.fields) != 2 || r.fields["errcode"] != 0.0 || r.fields["errmsg"] != "ok" {
		t.Errorf("the latest session_key: %v; want errcode 0, errmsg ok", r.fields)
	}
	wantError(t, checkSession(alice, old, "hmac_sha256"), 87009, "invalid signature")
	wantError(t, checkSession(alice, latest, "md5"), 87009, "invalid signature")
	wantError(t, checkSession(wechatsim.OpenID(appID, "nobody"), latest, "hmac_sha256"), 87009, "invalid signature")
}

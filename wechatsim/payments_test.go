package wechatsim_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// hmacHex is hex HMAC-SHA256(key, msg), the tests' own.
func hmacHex(key, msg string) string {
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(msg))
	return hex.EncodeToString(mac.Sum(nil))
}

// payCall is a payment API call signed as WeChat documents, with appKey
// and sessionKey.
func payCall(t *testing.T, ts *httptest.Server, token, path, body, appKey, sessionKey string) result {
	t.Helper()
	q := url.Values{"access_token": {token}, "sig_method": {"hmac_sha256"},
		"pay_sig": {hmacHex(appKey, path+"&"+body)}, "signature": {hmacHex(sessionKey, body)}}
	return call(t, ts, http.MethodPost, path, q, body)
}

func sessionKeyOf(t *testing.T, r result) string {
	t.Helper()
	key, _ := r.fields["session_key"].(string)
	if key == "" {
		t.Fatalf("a login answered %v", r.fields)
	}
	return key
}

// TestPaymentsCheckBothSignatures: the payment APIs serve a call signed
// with the env's AppKey and the player's latest session_key, keep balances,
// and refuse what WeChat refuses: a wrong pay_sig (90011), a key replaced
// by a newer login (90010), a player with no session (90016), a bill_no
// used twice (90012), more than the balance (90013).
func TestPaymentsCheckBothSignatures(t *testing.T) {
	s, ts, _ := newClockedSim(t)
	token, _ := stableToken(t, ts, false)
	oldKey := sessionKeyOf(t, redeem(t, ts, appID, appSecret, "alice.1"))
	key := sessionKeyOf(t, redeem(t, ts, appID, appSecret, "alice.2"))
	alice := wechatsim.OpenID(appID, "alice")
	s.Deposit(appID, alice, wechatsim.EnvSandbox, 10)
	body := func(extra string) string {
		return fmt.Sprintf(`{"openid":%q,"offer_id":"1450000000","ts":1700000000,"zone_id":"1","env":1,"user_ip":"127.0.0.1"%s}`, alice, extra)
	}

	r := payCall(t, ts, token, "/wxa/game/getbalance", body(""), sandboxAppKey, key)
	if code, _ := r.errcode(); code != 0 || r.fields["balance"] != 10.0 {
		t.Fatalf("getbalance answered %v; want errcode 0, balance 10", r.fields)
	}
	r = payCall(t, ts, token, "/wxa/game/pay", body(`,"amount":4,"bill_no":"order-1"`), sandboxAppKey, key)
	if code, _ := r.errcode(); code != 0 || r.fields["balance"] != 6.0 || r.fields["bill_no"] != "order-1" {
		t.Fatalf("pay answered %v; want balance 6", r.fields)
	}
	wantError(t, payCall(t, ts, token, "/wxa/game/pay", body(`,"amount":4,"bill_no":"order-1"`), sandboxAppKey, key), 90012, "bill_no exists")
	wantError(t, payCall(t, ts, token, "/wxa/game/pay", body(`,"amount":7,"bill_no":"order-2"`), sandboxAppKey, key), 90013, "balance not enough")
	r = payCall(t, ts, token, "/wxa/game/cancelpay", body(`,"amount":4,"bill_no":"refund-1","pay_bill_no":"order-1"`), sandboxAppKey, key)
	if code, _ := r.errcode(); code != 0 {
		t.Fatalf("cancelpay answered %v", r.fields)
	}
	r = payCall(t, ts, token, "/wxa/game/present", body(`,"amount":5,"bill_no":"gift-1"`), sandboxAppKey, key)
	if code, _ := r.errcode(); code != 0 || r.fields["balance"] != 15.0 {
		t.Fatalf("present answered %v; want balance 15", r.fields)
	}
	if got := s.Balance(appID, alice, wechatsim.EnvSandbox); got != 15 {
		t.Errorf("balance %d; want 15", got)
	}

	wantError(t, payCall(t, ts, token, "/wxa/game/getbalance", body(""), appKey, key), 90011, "[pay_sig] pay_sig is invalid")
	wantError(t, payCall(t, ts, token, "/wxa/game/getbalance", body(""), sandboxAppKey, oldKey), 90010, "[signature] signature is invalid")
	stranger := fmt.Sprintf(`{"openid":%q,"offer_id":"1","ts":1700000000,"zone_id":"1","env":0}`, wechatsim.OpenID(appID, "bob"))
	wantError(t, payCall(t, ts, token, "/wxa/game/getbalance", stranger, appKey, key), 90016, "sessionkey fail")
	wantError(t, payCall(t, ts, token, "/wxa/game/getbalance", `{"openid":1}`, appKey, key), 90018, "post data type not right")
}

// TestResetUserSessionKey: a reset signed with the latest key answers a new
// key, which replaces it: the old one no longer signs anything.
func TestResetUserSessionKey(t *testing.T) {
	_, ts, _ := newClockedSim(t)
	token, _ := stableToken(t, ts, false)
	key := sessionKeyOf(t, redeem(t, ts, appID, appSecret, "carol.1"))
	carol := wechatsim.OpenID(appID, "carol")
	reset := func(key string) result {
		return call(t, ts, http.MethodGet, "/wxa/resetusersessionkey", url.Values{"access_token": {token}, "openid": {carol},
			"signature": {wechatsim.SessionSignature(key)}, "sig_method": {"hmac_sha256"}}, "")
	}
	r := reset(key)
	fresh, _ := r.fields["session_key"].(string)
	if code, _ := r.errcode(); code != 0 || r.fields["openid"] != carol || fresh == "" || fresh == key {
		t.Fatalf("reset answered %v; want a new session_key for %s", r.fields, carol)
	}
	wantError(t, reset(key), 87009, "invalid signature")
	check := call(t, ts, http.MethodGet, "/wxa/checksession", url.Values{"access_token": {token}, "openid": {carol},
		"signature": {wechatsim.SessionSignature(fresh)}, "sig_method": {"hmac_sha256"}}, "")
	if code, _ := check.errcode(); code != 0 {
		t.Errorf("checksession with the new key answered %v", check.fields)
	}
}

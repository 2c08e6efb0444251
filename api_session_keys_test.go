package wechatlogin

import (
	"context"
	"testing"
)

// TestVirtualPaymentKeysResolvedAtProvision: an AppKey written as a
// placeholder is the environment's value once provisioned.
func TestVirtualPaymentKeysResolvedAtProvision(t *testing.T) {
	t.Setenv("WECHAT_TEST_SANDBOX_APP_KEY", "resolved-sandbox-key")
	h := &APIHandler{AppID: "wxresolve", AppSecret: "s", VirtualPayment: &VirtualPaymentConfig{AppKey: "plain-key", SandboxAppKey: "{env.WECHAT_TEST_SANDBOX_APP_KEY}"}}
	provisionAPI(t, h)
	if h.appKeys != [2]string{"plain-key", "resolved-sandbox-key"} {
		t.Errorf("the AppKeys are %q once provisioned", h.appKeys)
	}
}

// TestAPIReadsTheLoginsSessionKeys: a wechat_api of the app (same app_id,
// endpoint and secret) reads the keys its wechat_login keeps; a staging
// site with another secret reads none of them.
func TestAPIReadsTheLoginsSessionKeys(t *testing.T) {
	const endpoint = "http://127.0.0.1:1"
	login := newTestHandler(t, endpoint)
	api := &APIHandler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint}
	provisionAPI(t, api)
	staging := &APIHandler{AppID: testAppID, AppSecret: "another secret", Endpoint: endpoint}
	provisionAPI(t, staging)

	login.sessionKeys.keep("alice", "key", login.now())
	if key, _ := api.playerKey(context.Background(), "alice"); key != "key" {
		t.Errorf("wechat_api of the app reads %q", key)
	}
	if _, refusal := staging.playerKey(context.Background(), "alice"); refusal == nil || refusal.code != errSessionKeyUnknown {
		t.Errorf("another secret's wechat_api read the key (%v)", refusal)
	}
}

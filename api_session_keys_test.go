package wechatlogin

import (
	"context"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
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

// TestAPIReadsTheLoginsSessionKeys: custody is per app. The wechat_api of
// an app (same app_id, endpoint and secret) reads the keys its
// wechat_login keeps, for a WeChat app in an app block as for the
// top-level one, and no other app's; a staging site with another secret
// reads none; a Douyin app's keys, which nothing reads, are not kept.
func TestAPIReadsTheLoginsSessionKeys(t *testing.T) {
	const secondAppID, secondSecret = "wxsecondunitapp", "second-unit-app-secret"
	sim, endpoint := newTestSim(t)
	sim.AddApp(wechatsim.App{AppID: secondAppID, Secret: secondSecret})
	_, fakeEndpoint := newFakePlatforms(t, map[string]string{
		douyinExchangePath: `{"error":0,"session_key":"dHQtc2Vzc2lvbi1rZXk=","openid":"ttOpenAlice","anonymous_openid":"","unionid":""}`,
	})
	login := newTestHandler(t, endpoint, func(h *Handler) {
		h.Apps = []*PlatformApp{
			{Platform: "wechat", AppID: secondAppID, AppSecret: secondSecret, LoginPath: "/wx2/login", Endpoint: endpoint},
			{Platform: "douyin", AppID: "ttunittest", AppSecret: "douyin-unit-secret", Endpoint: fakeEndpoint + "/douyin"},
		}
	})
	topAPI := &APIHandler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint}
	provisionAPI(t, topAPI)
	secondAPI := &APIHandler{AppID: secondAppID, AppSecret: secondSecret, Endpoint: endpoint}
	provisionAPI(t, secondAPI)
	staging := &APIHandler{AppID: testAppID, AppSecret: "another secret", Endpoint: endpoint}
	provisionAPI(t, staging)

	topOpenID := serveAt(login, "/wx/login?code=alice", nil).checked(t).upstream.Get("X-Wx-Openid")
	secondOpenID := serveAt(login, "/wx2/login?code=alice", nil).checked(t).upstream.Get("X-Wx-Openid")
	serveAt(login, "/tt/login?code=alice", nil).checked(t)
	for _, tc := range []struct {
		name   string
		api    *APIHandler
		openid string
	}{{"the top-level app's", topAPI, topOpenID}, {"the app block's", secondAPI, secondOpenID}} {
		kept, refusal := tc.api.playerKey(context.Background(), tc.openid)
		if refusal != nil {
			t.Fatalf("wechat_api of %s WeChat app: %s", tc.name, refusal.message)
		}
		if want, _ := sim.SignRawData(tc.openid, "raw"); rawDataSignature("raw", kept.key) != want {
			t.Errorf("wechat_api of %s WeChat app reads a key that is not the player's latest", tc.name)
		}
	}
	for _, tc := range []struct {
		name   string
		api    *APIHandler
		openid string
	}{{"the top-level app's wechat_api", topAPI, secondOpenID}, {"the app block's wechat_api", secondAPI, topOpenID}, {"another secret's wechat_api", staging, topOpenID}} {
		if _, refusal := tc.api.playerKey(context.Background(), tc.openid); refusal == nil || refusal.code != refusalSessionKeyUnknown {
			t.Errorf("%s read another app's key (%v)", tc.name, refusal)
		}
	}
	if douyin := login.appFor("/tt/login"); douyin.sessionKeys != nil || douyin.state.sessionKeys.entries.Len() != 0 {
		t.Error("a Douyin app's session_keys are kept")
	}
}

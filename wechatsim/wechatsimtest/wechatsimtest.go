// Package wechatsimtest starts the WeChat simulator for tests, so that
// importing package wechatsim does not import package testing.
package wechatsimtest

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// NewTestServer starts an httptest.Server running wechatsim.New(opts) and
// registers t.Cleanup to close it. Point the code under test's WeChat
// endpoint at ts.URL, and its endpoint for another platform at
// Endpoint(ts, platform).
func NewTestServer(t testing.TB, opts wechatsim.Options) (*wechatsim.Server, *httptest.Server) {
	t.Helper()
	s := wechatsim.New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// Endpoint is the base URL that sends platform p's API calls to ts:
// ts.URL for WeChat, ts.URL+"/qq" for QQ, ts.URL+"/douyin" for Douyin, and
// so on. A client appending the platform's real path to it (such as
// /mgplatform/api/apps/jscode2session) reaches the simulated endpoint.
func Endpoint(ts *httptest.Server, p wechatsim.Platform) string { return p.Endpoint(ts.URL) }

// EncryptedData is what a client of appid receives from an open-data API
// for the player openid: fields as JSON with WeChat's watermark (the appid
// and the time) added, encrypted with the player's latest session_key. The
// player must have logged in.
func EncryptedData(t testing.TB, sim *wechatsim.Server, appid, openid string, fields map[string]any) (encryptedData, iv string) {
	t.Helper()
	data := map[string]any{"watermark": map[string]any{"appid": appid, "timestamp": time.Now().Unix()}}
	for k, v := range fields {
		data[k] = v
	}
	plaintext, err := json.Marshal(data)
	if err != nil {
		t.Fatalf("wechatsimtest: the fields do not encode: %v", err)
	}
	encryptedData, iv, ok := sim.Encrypt(openid, plaintext)
	if !ok {
		t.Fatalf("wechatsimtest: %s has no session_key: log the player in first", openid)
	}
	return encryptedData, iv
}

// GroupEnterInfo is wx.getGroupEnterInfo's encryptedData and iv for a
// player who opened the game from the group chat opengid (chat_type 3: a
// WeChat group).
func GroupEnterInfo(t testing.TB, sim *wechatsim.Server, appid, openid, opengid string) (encryptedData, iv string) {
	t.Helper()
	return EncryptedData(t, sim, appid, openid, map[string]any{"opengid": opengid, "chat_type": 3})
}

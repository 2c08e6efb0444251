// Package api tests wechat_api through a real Caddy against the WeChat
// simulator: backends calling WeChat's server API without access tokens.
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestMain(m *testing.M) {
	os.Exit(testkit.RunScanningLogs(m, "wechat token fetch"))
}

// wechatAPI is a wechat_api directive for appID at endpoint, with more
// subdirectives (one per line).
func wechatAPI(appID, secret, endpoint string, more ...string) string {
	return fmt.Sprintf("wechat_api {\n\tapp_id %s\n\tapp_secret %s\n\tendpoint %s\n\t%s\n}",
		appID, secret, endpoint, strings.Join(more, "\n\t"))
}

// startGateway starts a simulator knowing appID with secret, and a Caddy
// whose site is a wechat_api for appID (configured with gatewaySecret) in
// front of it.
func startGateway(t *testing.T, appID, secret, gatewaySecret string, more ...string) (*wechatsim.Server, string) {
	t.Helper()
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(wechatAPI(appID, gatewaySecret, simURL, more...)))
	return sim, simURL
}

const secCheckBody = `{"content":"good game","version":2,"scene":2,"openid":"o123"}`

// secCheck is a backend's msg_sec_check call, with no access_token.
func secCheck(t *testing.T) testkit.Response {
	t.Helper()
	return testkit.Send(t, http.MethodPost, "/wxa/msg_sec_check", strings.NewReader(secCheckBody), "Content-Type: application/json")
}

// assertErrcode fails the test now unless resp is a 200 answer from WeChat
// with errcode want.
func assertErrcode(t *testing.T, resp testkit.Response, want int) {
	t.Helper()
	var answer struct{ Errcode *int }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(resp.Body, &answer) != nil || answer.Errcode == nil || *answer.Errcode != want {
		t.Fatalf("%s %s: got %v; want 200 with errcode %d", resp.Request.Method, resp.Request.URL.Path, resp, want)
	}
}

// assertRefusal checks that resp is the documented JSON refusal, with
// WeChat's errcode when wantErrcode is not 0.
func assertRefusal(t *testing.T, resp testkit.Response, status int, code string, wantErrcode int) {
	t.Helper()
	if err := testkit.CheckRefusal(resp, status, code); err != nil {
		t.Fatal(err)
	}
	var body map[string]json.RawMessage
	_ = json.Unmarshal(resp.Body, &body)
	raw, has := body["errcode"]
	if (wantErrcode == 0 && has) || (wantErrcode != 0 && string(raw) != strconv.Itoa(wantErrcode)) {
		t.Errorf("refusal %s: want errcode %d", resp.Body, wantErrcode)
	}
}

// tokenOf is the access_token a recorded request carried, and how many
// access_token parameters it had.
func tokenOf(t *testing.T, req wechatsim.Request) (string, int) {
	t.Helper()
	q, err := url.ParseQuery(req.RawQuery)
	if err != nil {
		t.Fatalf("WeChat got a query it cannot parse: %v", err)
	}
	return q.Get("access_token"), len(q["access_token"])
}

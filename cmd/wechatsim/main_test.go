package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestRevokeTokensEndpoint(t *testing.T) {
	sim := wechatsim.New(wechatsim.Options{Apps: []wechatsim.App{demoApp}})
	ts := httptest.NewServer(withAdmin(sim))
	defer ts.Close()
	post := func(path, body string) *http.Response {
		t.Helper()
		resp, err := http.Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	resp := post("/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"`+demoApp.AppID+`","secret":"`+demoApp.Secret+`"}`)
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || !sim.TokenValid(demoApp.AppID, answer.AccessToken) {
		t.Fatalf("stable_token through the admin mux: %d, %v", resp.StatusCode, err)
	}
	token := answer.AccessToken
	if resp := post("/sim/revoke-tokens", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("revoke without appid: %d; want 400", resp.StatusCode)
	}
	if resp := post("/sim/revoke-tokens?appid="+demoApp.AppID, ""); resp.StatusCode != http.StatusNoContent {
		t.Errorf("revoke: %d; want 204", resp.StatusCode)
	}
	if sim.TokenValid(demoApp.AppID, token) {
		t.Error("the token is still valid after the revocation")
	}
}

func TestParseApps(t *testing.T) {
	apps, err := parseApps([]string{"wx1:s1", "douyin/tt1:s2:unionid", "wx2:se/cret", "qq/wx1:s3", "wechat/wx3:s4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []wechatsim.App{
		{Platform: wechatsim.WeChat, AppID: "wx1", Secret: "s1"},
		{Platform: wechatsim.Douyin, AppID: "tt1", Secret: "s2", UnionBound: true},
		{Platform: wechatsim.WeChat, AppID: "wx2", Secret: "se/cret"},
		{Platform: wechatsim.QQ, AppID: "wx1", Secret: "s3"},
		{Platform: wechatsim.WeChat, AppID: "wx3", Secret: "s4"},
	}
	if len(apps) != len(want) {
		t.Fatalf("parseApps = %+v; want %+v", apps, want)
	}
	for i := range want {
		if apps[i] != want[i] {
			t.Errorf("app #%d = %+v; want %+v", i+1, apps[i], want[i])
		}
	}

	for _, specs := range [][]string{
		{"kuaishou/k1:top-secret"},
		{"wx1:top-secret", "wechat/wx1:top-secret"},
		{"qq/1:top-secret:bound"},
		{"douyin/:top-secret"},
		{"top-secret"},
	} {
		_, err := parseApps(specs)
		if err == nil {
			t.Errorf("parseApps(%q) accepted", specs)
		} else if strings.Contains(err.Error(), "top-secret") {
			t.Errorf("parseApps(%q) error shows the secret: %v", specs, err)
		}
	}
}

// TestWithAppKeys: -app-key gives a WeChat app its AppKeys; one naming no
// WeChat app, or malformed, is refused without showing the key.
func TestWithAppKeys(t *testing.T) {
	apps, err := parseApps([]string{"wx1:s1", "qq/wx2:s2", "wx3:s3"})
	if err != nil {
		t.Fatal(err)
	}
	keyed, err := withAppKeys(apps, []string{"wx1:key-1", "wx3:key-3:sandbox-3"})
	if err != nil {
		t.Fatal(err)
	}
	if keyed[0].AppKey != "key-1" || keyed[0].SandboxAppKey != "" || keyed[1].AppKey != "" || keyed[2].AppKey != "key-3" || keyed[2].SandboxAppKey != "sandbox-3" {
		t.Errorf("withAppKeys = %+v", keyed)
	}
	if apps[0].AppKey != "" {
		t.Error("withAppKeys changed the apps it was given")
	}
	for _, specs := range [][]string{{"wx2:top-secret"}, {"wx9:top-secret"}, {"wx1"}, {"wx1:top-secret:"}, {":top-secret"}} {
		if _, err := withAppKeys(apps, specs); err == nil {
			t.Errorf("withAppKeys(%q) accepted", specs)
		} else if strings.Contains(err.Error(), "top-secret") {
			t.Errorf("withAppKeys(%q) error shows the key: %v", specs, err)
		}
	}
}

// -h tells what a gateway's config needs to log in to the demo apps: every
// appid, the secret, and the WeChat app's AppKeys.
func TestAppUsageNamesTheDemoApps(t *testing.T) {
	usage := appUsage()
	for _, want := range []string{demoSecret, demoApp.AppKey, demoApp.SandboxAppKey} {
		if !strings.Contains(usage, want) {
			t.Errorf("-app's help lacks %q: %s", want, usage)
		}
	}
	for _, a := range demoApps {
		if !strings.Contains(usage, appName(a)) {
			t.Errorf("-app's help lacks the demo app %s: %s", appName(a), usage)
		}
	}
}

// Without -app, every platform has a demo app to log in to.
func TestDemoAppsLogInOnEveryPlatform(t *testing.T) {
	sim := wechatsim.New(wechatsim.Options{Apps: demoApps})
	ts := httptest.NewServer(withAdmin(sim))
	defer ts.Close()
	for _, a := range demoApps {
		p := a.Platform
		q := "?appid=" + a.AppID + "&secret=" + a.Secret + "&js_code=alice&grant_type=authorization_code"
		if p == wechatsim.Douyin {
			q = "?appid=" + a.AppID + "&secret=" + a.Secret + "&code=alice"
		}
		resp, err := http.Get(ts.URL + p.LoginPath() + q)
		if err != nil {
			t.Fatal(err)
		}
		var answer struct {
			OpenID string `json:"openid"`
		}
		err = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if err != nil || answer.OpenID != p.OpenID(a.AppID, "alice") {
			t.Errorf("%s demo login: openid %q, %v; want %s", appName(a), answer.OpenID, err, p.OpenID(a.AppID, "alice"))
		}
	}
	if len(demoApps) != len(wechatsim.Platforms()) {
		t.Errorf("%d demo apps for %d platforms", len(demoApps), len(wechatsim.Platforms()))
	}
}

package api

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// asHost sends a request to the test Caddy as if the gateway were called
// host (the listener is still on loopback), with headers as testkit.Fetch
// takes them.
func asHost(t *testing.T, host, method, path, body string, headers ...string) testkit.Response {
	t.Helper()
	req, err := http.NewRequest(method, testkit.BaseURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ": ")
		req.Header.Add(name, value)
	}
	resp, err := testkit.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestBrowsersRefused: a web page, in the browser of anyone who can reach
// the listener, gets nothing: not by rebinding its DNS name to the
// listener's address (the attacker's Host), not by a CORS-simple POST (it
// carries Origin), not by any fetch (Sec-Fetch-Site). Nothing is sent to
// WeChat, and no token is fetched for it. Backends, which send none of
// these, keep working, by address, localhost or a name in allow_host.
func TestBrowsersRefused(t *testing.T) {
	const appID, secret = "wxbrowser", "browser-secret"
	sim, _ := startGateway(t, appID, secret, secret, "allow_host wechat-api.internal")
	port := ":" + strconv.Itoa(testkit.HTTPPort)
	const simplePost = "Content-Type: text/plain"

	for _, tc := range []struct {
		name, host, method, path, body string
		headers                        []string
		status                         int
		code                           string
	}{
		{"DNS rebinding: a page reads the token", "evil.example" + port, http.MethodGet, "/cgi-bin/token", "", nil, http.StatusMisdirectedRequest, "host_not_allowed"},
		{"DNS rebinding: a page calls as the app", "evil.example" + port, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, []string{simplePost}, http.StatusMisdirectedRequest, "host_not_allowed"},
		{"a CORS-simple POST", "127.0.0.1" + port, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, []string{simplePost, "Origin: https://evil.example"}, http.StatusForbidden, "browser_request_refused"},
		{"a sandboxed page's POST", "localhost" + port, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, []string{simplePost, "Origin: null"}, http.StatusForbidden, "browser_request_refused"},
		{"a cross-site fetch", "127.0.0.1" + port, http.MethodGet, "/cgi-bin/token", "", []string{"Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors"}, http.StatusForbidden, "browser_request_refused"},
		{"a same-site fetch", "localhost" + port, http.MethodGet, "/cgi-bin/token", "", []string{"Sec-Fetch-Site: same-site"}, http.StatusForbidden, "browser_request_refused"},
		{"a rebound page, even at an allowed name", "wechat-api.internal" + port, http.MethodGet, "/cgi-bin/token", "", []string{"Sec-Fetch-Site: same-origin"}, http.StatusForbidden, "browser_request_refused"},
		{"a path that is not WeChat's", "evil.example" + port, http.MethodGet, "/cgi-bin/token%00", "", nil, http.StatusMisdirectedRequest, "host_not_allowed"},
	} {
		resp := asHost(t, tc.host, tc.method, tc.path, tc.body, tc.headers...)
		if err := testkit.CheckRefusal(resp, tc.status, tc.code); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if strings.Contains(string(resp.Body), "access_token") || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: the answer gives a browser something: %v", tc.name, resp)
		}
	}
	if calls, stable := len(sim.APIRequests()), sim.CallsTo(stableTokenPath); calls != 0 || stable != 0 {
		t.Fatalf("browsers' requests made %d WeChat calls and %d stable_token calls; want none", calls, stable)
	}

	// A backend's Go client, by address, localhost, a listed name (any
	// case), or a person typing the URL in a browser (Sec-Fetch-Site: none).
	for _, host := range []string{"127.0.0.1" + port, "[::1]" + port, "localhost" + port, "WeChat-API.internal" + port, "wechat-api.internal"} {
		assertErrcode(t, asHost(t, host, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, "Content-Type: application/json"), 0)
	}
	if resp := asHost(t, "127.0.0.1"+port, http.MethodGet, "/cgi-bin/token", "", "Sec-Fetch-Site: none"); resp.StatusCode != http.StatusOK {
		t.Errorf("the operator's own look at the token from the address bar: %v", resp)
	}
	if calls := len(sim.APIRequests()); calls != 5 {
		t.Errorf("WeChat received %d of the backends' 5 calls", calls)
	}
}

// TestUnlistedNameRefusedUntilAllowed: a backend on another machine that
// calls the gateway by a DNS name is refused until the operator lists the
// name in allow_host.
func TestUnlistedNameRefusedUntilAllowed(t *testing.T) {
	const appID, secret = "wxallowhost", "allowhost-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	host := "wechat-api.internal:" + strconv.Itoa(testkit.HTTPPort)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(wechatAPI(appID, secret, simURL)))
	if err := testkit.CheckRefusal(asHost(t, host, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, "Content-Type: application/json"), http.StatusMisdirectedRequest, "host_not_allowed"); err != nil {
		t.Fatal(err)
	}
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(wechatAPI(appID, secret, simURL, "allow_host wechat-api.internal")))
	assertErrcode(t, asHost(t, host, http.MethodPost, "/wxa/msg_sec_check", secCheckBody, "Content-Type: application/json"), 0)
	if calls := len(sim.APIRequests()); calls != 1 {
		t.Errorf("WeChat received %d calls; want the allowed one", calls)
	}
}

// Package wechatsimtest starts the WeChat simulator for tests, so that
// importing package wechatsim does not import package testing.
package wechatsimtest

import (
	"net/http/httptest"
	"testing"

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

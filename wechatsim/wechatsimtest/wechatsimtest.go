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
// endpoint at ts.URL.
func NewTestServer(t testing.TB, opts wechatsim.Options) (*wechatsim.Server, *httptest.Server) {
	t.Helper()
	s := wechatsim.New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

package testkit

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// Site is a Caddyfile site block on the test port.
func Site(directives ...string) string {
	return fmt.Sprintf("\n:%d {\n%s\n}\n", HTTPPort, strings.Join(directives, "\n"))
}

// Handle is a handle block for the paths under /prefix/, or for every other
// path if prefix is empty.
func Handle(prefix string, directives ...string) string {
	matcher := ""
	if prefix != "" {
		matcher = "/" + prefix + "/* "
	}
	return fmt.Sprintf("handle %s{\n%s\n}", matcher, strings.Join(directives, "\n"))
}

// WechatLogin is a wechat_login directive for appID at endpoint, with more
// subdirectives (one per line).
func WechatLogin(appID, secret, endpoint string, more ...string) string {
	return fmt.Sprintf("wechat_login {\n\tapp_id %s\n\tapp_secret %s\n\tendpoint %s\n\t%s\n}",
		appID, secret, endpoint, strings.Join(more, "\n\t"))
}

// ProxyTo is a reverse_proxy directive to backend, with more subdirectives.
func ProxyTo(backend *Backend, more ...string) string {
	return fmt.Sprintf("reverse_proxy %s {\n\t%s\n}", backend.Listener.Addr(), strings.Join(more, "\n\t"))
}

// LoginUnder is the login_path subdirective of a gateway under /prefix/.
func LoginUnder(prefix string) string { return "login_path /" + prefix + "/wx/login" }

// Route is a gateway under /prefix/: a wechat_login for appID at endpoint,
// with the login path /<prefix>/wx/login and more subdirectives, in front of
// backend. Giving each route its own app_id keeps budgets and cached codes
// (kept per app_id) apart.
func Route(prefix, appID, secret, endpoint string, backend *Backend, more ...string) string {
	login := WechatLogin(appID, secret, endpoint, append(slices.Clip(more), LoginUnder(prefix))...)
	return Handle(prefix, login, ProxyTo(backend))
}

// LoadConfig posts caddyfile to the test Caddy's admin API and returns the
// status and body of the answer; unlike StartCaddy, a refusal is not a
// failure.
func LoadConfig(t testing.TB, caddyfile string) (int, string) {
	t.Helper()
	return load(t, caddyfile, "text/caddyfile")
}

// LoadJSON is LoadConfig for a JSON config.
func LoadJSON(t testing.TB, config []byte) (int, string) {
	t.Helper()
	return load(t, string(config), "application/json")
}

func load(t testing.TB, config, contentType string) (int, string) {
	t.Helper()
	resp, err := Admin(http.MethodPost, "/load", strings.NewReader(config), "Content-Type: "+contentType)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(resp.Body)
}

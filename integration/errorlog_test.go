package integration

import (
	"net/http"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// errorLogFilter is the global logging that Caddyfile.example recommends:
// Caddy's error log records a failed request as the client sent it, code
// and all, before any handler ran, so it is filtered like the access log.
const errorLogFilter = `log filtered_errors {
		include http.log.error
		output stderr
		format filter {
			wrap json
			request>uri query {
				delete code
			}
			request>headers>X-Wx-Code delete
			request>headers>X-Wx-Session delete
		}
	}`

// A login whose upstream is down is an error Caddy logs with the original
// request; with the recommended filter, no code reaches that log line (the
// suite's log scan fails otherwise).
func TestErrorLogCarriesNoCode(t *testing.T) {
	const secret = "errorlog-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: "wxerrorlog", Secret: secret}}})
	dead := testkit.NewBackend(t, nil)
	dead.Close() // the upstream is down: reverse_proxy fails with 502

	testkit.StartCaddy(t, testkit.GlobalOptions(errorLogFilter)+testkit.Site(
		testkit.Handle("", testkit.WechatLogin("wxerrorlog", secret, simURL), testkit.ProxyTo(dead))))
	for _, tc := range []struct {
		path    string
		headers []string
	}{
		{"/wx/login?code=erin.query&level=2", nil},
		{"/wx/login", []string{"X-WX-CODE: erin.header"}},
	} {
		if got := testkit.Get(t, tc.path, tc.headers...); got.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %s, want 502 from the dead upstream", tc.path, got)
		}
	}
}

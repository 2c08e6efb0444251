package integration

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// errorLogFilter is the global logging that Caddyfile.example recommends,
// written to output: Caddy's error log records a failed request as the
// client sent it, code and all, before any handler ran, so it is filtered
// like the access log.
func errorLogFilter(output string) string {
	return fmt.Sprintf(`log filtered_errors {
		include http.log.error
		output %s
		format filter {
			wrap json
			request>uri query {
				delete code
			}
			request>headers>X-Wx-Code delete
			request>headers>X-Wx-Session delete
		}
	}`, output)
}

// A login whose upstream is down is an error Caddy logs with the original
// request; with the recommended filter, that line carries no code.
func TestErrorLogCarriesNoCode(t *testing.T) {
	const secret = "errorlog-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: "wxerrorlog", Secret: secret}}})
	dead := testkit.NewBackend(t, nil)
	dead.Close() // the upstream is down: reverse_proxy fails with 502
	errorLog := filepath.Join(t.TempDir(), "errors.log")

	testkit.StartCaddy(t, testkit.GlobalOptions(errorLogFilter("file "+errorLog))+testkit.Site(
		testkit.Handle("", testkit.WechatLogin("wxerrorlog", secret, simURL), testkit.ProxyTo(dead))))
	for i, tc := range []struct {
		path    string
		headers []string
	}{
		{"/wx/login?code=erin.query&level=2", nil},
		{"/wx/login", []string{"X-WX-CODE: erin.header"}},
	} {
		resp := testkit.Get(t, tc.path, tc.headers...)
		// reverse_proxy's own 502, empty, not a refusal of wechat_login:
		// the login passed, its code redeemed, before the proxy failed.
		if resp.StatusCode != http.StatusBadGateway || len(resp.Body) != 0 {
			t.Errorf("%s: %s, want reverse_proxy's empty 502", tc.path, resp)
		}
		if calls := sim.Calls(); calls != int64(i+1) {
			t.Errorf("%s: WeChat saw %d calls, want %d: the login itself must succeed", tc.path, calls, i+1)
		}
	}

	var uris []string
	for _, line := range errorLines(t, errorLog) {
		if line.Logger != "http.log.error" || line.Status != http.StatusBadGateway {
			continue
		}
		uris = append(uris, line.Request.URI)
		for name := range line.Request.Headers {
			if strings.EqualFold(name, "X-Wx-Code") {
				t.Errorf("the error line for %s keeps the %s header", line.Request.URI, name)
			}
		}
	}
	if want := []string{"/wx/login?level=2", "/wx/login"}; !slices.Equal(uris, want) {
		t.Errorf("error lines for %q, want one per failed login, without the code: %q", uris, want)
	}
}

package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestSmokeLogin(t *testing.T) {
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: "wxsmoke", Secret: "smoke-secret"}}})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Header.Get("X-WX-OPENID"))
	}))
	defer backend.Close()
	tester := testkit.StartCaddy(t, testkit.GlobalOptions("")+fmt.Sprintf(`
:%d {
	wechat_login {
		app_id wxsmoke
		app_secret smoke-secret
		endpoint %s
	}
	reverse_proxy %s
}`, testkit.HTTPPort, simURL, backend.Listener.Addr()))
	tester.AssertGetResponse(testkit.BaseURL()+"/wx/login?code=alice.1", 200, wechatsim.OpenID("wxsmoke", "alice"))
}

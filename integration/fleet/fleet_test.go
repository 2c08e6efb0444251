package fleet

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const (
	appID  = "wxfleetgateways"
	secret = "fleet-gateways-secret-0123456789"
)

// gatewayConfig is one gateway in front of backend, with more wechat_login
// subdirectives.
func gatewayConfig(endpoint string, backend *testkit.Backend, more ...string) testkit.GatewayConfig {
	return func(httpPort, adminPort int) string {
		return testkit.GatewayGlobalOptions(httpPort, adminPort) + fmt.Sprintf(":%d {\n%s\n%s\n}\n",
			httpPort, testkit.WechatLogin(appID, secret, endpoint, more...), testkit.ProxyTo(backend))
	}
}

// login sends code to gateway g's login path, in the header that is
// stripped before anything is logged or forwarded.
func login(t *testing.T, g *testkit.Gateway, code string) testkit.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/wx/login", nil)
	req.Header.Set("X-WX-CODE", code)
	resp, err := testkit.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestThreeGatewaysServeAndReload(t *testing.T) {
	testkit.Forbid(secret)
	sim, endpoint := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	var gateways []*testkit.Gateway
	for range 3 {
		gateways = append(gateways, testkit.StartGateway(t, caddyBinary, gatewayConfig(endpoint, backend)))
	}
	for i, g := range gateways {
		code := fmt.Sprintf("player%d.first", i)
		if resp := login(t, g, code); resp.StatusCode != http.StatusOK {
			t.Fatalf("gateway %d: %v\n%s", i, resp, g.Logs())
		}
		if got, want := backend.Last(t).Header.Get("X-WX-OPENID"), wechatsim.OpenID(appID, fmt.Sprintf("player%d", i)); got != want {
			t.Errorf("gateway %d forwarded openid %q, want %q", i, got, want)
		}
	}
	gateways[1].Reload(gatewayConfig(endpoint, backend, "budget 30 1m"))
	if resp := login(t, gateways[1], "player1.after-reload"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after a reload: %v", resp)
	}
	if calls := sim.Calls(); calls != 4 {
		t.Errorf("%d WeChat calls for 4 codes", calls)
	}
}

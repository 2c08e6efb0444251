// Package fleet tests several gateways acting as one: separate Caddy
// processes behind no load balancer but the test itself, sharing one Redis
// that the tests start on a free port.
package fleet

import (
	"os"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestMain(m *testing.M) {
	testkit.Forbid(fleetApp.Secret, sessionSecret)
	os.Exit(m.Run())
}

func TestGatewayProcessServesLogins(t *testing.T) {
	sim, simURL := testkit.NewSim(t, fleetSimOptions())
	backend := testkit.NewBackend(t, nil)
	g := testkit.StartGateway(t, func(g *testkit.Gateway) string {
		return g.Site(testkit.WechatLogin(fleetApp.AppID, fleetApp.Secret, simURL), testkit.ProxyTo(backend))
	})
	resp, err := testkit.Do(mustRequest(t, g.URL+"/wx/login?code=alice.1"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp, err)
	}
	if got := backend.Last(t).Header.Get("X-Wx-Openid"); got == "" || sim.Calls() != 1 {
		t.Fatalf("backend saw openid %q after %d calls", got, sim.Calls())
	}
}

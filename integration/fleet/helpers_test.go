package fleet

import (
	"net/http"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// fleetApp is the mini-game every gateway of the fleet serves.
var fleetApp = wechatsim.App{AppID: "wxfleettest", Secret: "fleet-test-app-secret"}

func fleetSimOptions() wechatsim.Options {
	return wechatsim.Options{Apps: []wechatsim.App{fleetApp}}
}

func mustRequest(t testing.TB, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// sessionSecret signs the fleet's session tokens: every gateway verifies
// every other's.
const sessionSecret = "fleet-session-secret-0123456789abcdef"

// scrapeAdminMetrics reads a gateway's /metrics from its admin endpoint.
func scrapeAdminMetrics(t testing.TB, g *testkit.Gateway) string {
	t.Helper()
	resp, err := g.Admin(http.MethodGet, "/metrics", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %v %v", resp, err)
	}
	return string(resp.Body)
}

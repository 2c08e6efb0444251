package fleet

import (
	"net/http"
	"testing"

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

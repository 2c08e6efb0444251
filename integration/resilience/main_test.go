// Package resilience tests how the gateway holds up when players loop,
// WeChat is busy, slow, silent or wrong, and clients give up: through a real
// Caddy, a reverse_proxy to a test backend and the WeChat simulator.
package resilience

import (
	"encoding/json"
	"os"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestMain(m *testing.M) {
	os.Exit(testkit.RunScanningLogs(m, "wechat exchange"))
}

// errcodeOf is the errcode of a refusal body, or 0 if it has none.
func errcodeOf(r testkit.Response) int {
	var body struct{ Errcode int }
	_ = json.Unmarshal(r.Body, &body)
	return body.Errcode
}

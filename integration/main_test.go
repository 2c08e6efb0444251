package integration

import (
	"os"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestMain(m *testing.M) {
	os.Exit(testkit.RunScanningLogs(m))
}

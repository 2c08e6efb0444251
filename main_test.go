package wechatlogin

import (
	"os"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// TestMain fails the run if a secret, a code or a session_key reaches any
// log line the unit tests produce. A handler provisioned outside a loaded
// config logs through zap's development logger: debug level, to standard
// error, so every exchange line is written and scanned; the run fails too
// if none was seen.
func TestMain(m *testing.M) {
	testkit.Forbid(exchangeSecret, "alice.secretcode", testSecret, sessionSecret, otherSessionSecret)
	os.Exit(testkit.RunScanningLogs(m, "wechat exchange"))
}

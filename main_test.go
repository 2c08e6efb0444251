package wechatlogin

import (
	"os"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// TestMain fails the run if a secret, a code or a session_key reaches any
// log line the unit tests produce (Caddy's default logger writes to standard
// error at info level, so the misconfiguration error lines are among them).
func TestMain(m *testing.M) {
	testkit.Forbid(exTestSecret, "alice.secretcode", mtSecret, rlSecret, tokenSecret, tokenOtherSecret)
	os.Exit(testkit.RunScanningLogs(m, "wechat refused the configured app_id or app_secret"))
}

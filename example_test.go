package wechatlogin_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
)

// The Caddyfiles users start from: they must load as shipped.
var shippedCaddyfiles = []string{"Caddyfile.example", "cmd/demo/Caddyfile"}

func setExampleSecrets(t *testing.T) {
	t.Setenv("WECHAT_APP_SECRET", "example-app-secret-0123456789abcdef")
	t.Setenv("DOUYIN_APP_SECRET", "example-douyin-secret-0123456789abcdef")
	t.Setenv("WECHAT_SESSION_SECRET", "example-session-secret-0123456789abcdef0123")
}

// adaptCaddyfile does what `caddy adapt` does, failing on any warning: a
// shipped file should not teach users something Caddy frowns upon.
func adaptCaddyfile(t *testing.T, path string) *caddy.Config {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting %s: %v", path, err)
	}
	for _, w := range warnings {
		t.Errorf("adapting %s: warning: %s", path, w)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatalf("decoding the adapted %s: %v", path, err)
	}
	return &cfg
}

// TestShippedCaddyfilesValidate is `caddy validate --config <file>` for each
// shipped Caddyfile: adapted, then every module provisioned and validated.
func TestShippedCaddyfilesValidate(t *testing.T) {
	setExampleSecrets(t)
	for _, path := range shippedCaddyfiles {
		t.Run(path, func(t *testing.T) {
			if err := caddy.Validate(adaptCaddyfile(t, path)); err != nil {
				t.Errorf("caddy validate --config %s: %v", path, err)
			}
		})
	}
}

// Validation reaches wechat_login: forgetting a secret is caught by
// `caddy validate`, not by the first player.
func TestExampleRefusedWithoutSecrets(t *testing.T) {
	for _, missing := range []string{"WECHAT_APP_SECRET", "DOUYIN_APP_SECRET", "WECHAT_SESSION_SECRET"} {
		t.Run(missing, func(t *testing.T) {
			setExampleSecrets(t)
			t.Setenv(missing, "")
			err := caddy.Validate(adaptCaddyfile(t, "Caddyfile.example"))
			if err == nil {
				t.Fatalf("Caddyfile.example validated with %s empty", missing)
			}
			if strings.Contains(err.Error(), "example-") {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

// TestAccessLogFilterHidesCredentials encodes an access log entry for a login
// with each shipped Caddyfile's log encoder: the code (in the query or the
// X-WX-CODE header) and the session token must not be written, while the
// rest of the request still is.
func TestAccessLogFilterHidesCredentials(t *testing.T) {
	const (
		code  = "alice.7f3e9b"
		token = "eyJhbGciOiJIUzI1NiJ9.session-token.signature"
	)
	req := httptest.NewRequest(http.MethodGet, "/wx/login?code="+code+"&anonymous_code="+code+"&level=3", nil)
	req.Header.Set("X-TT-ANONYMOUS-CODE", code)
	respHeader := http.Header{}
	// Every platform's code and session headers: a site that adds an app
	// block for QQ, TapTap or Bilibili to a shipped file keeps its logs clean.
	for _, family := range []string{"X-WX-", "X-TT-", "X-QQ-", "X-TAP-", "X-BILI-"} {
		req.Header.Set(family+"CODE", code)
		req.Header.Set(family+"SESSION", token)
		respHeader.Set(family+"SESSION", token)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "MicroMessenger")

	setExampleSecrets(t)
	for _, path := range shippedCaddyfiles {
		t.Run(path, func(t *testing.T) {
			encoder := accessLogEncoder(t, adaptCaddyfile(t, path))
			buf, err := encoder.EncodeEntry(
				zapcore.Entry{Level: zapcore.InfoLevel, Time: time.Now(), LoggerName: "http.log.access.log0", Message: "handled request"},
				[]zap.Field{
					zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: req}),
					zap.Int("status", http.StatusOK),
					zap.Object("resp_headers", caddyhttp.LoggableHTTPHeader{Header: respHeader}),
				})
			if err != nil {
				t.Fatal(err)
			}
			line := buf.String()
			for _, secret := range []string{code, token} {
				if strings.Contains(line, secret) {
					t.Errorf("the access log line contains %q:\n%s", secret, line)
				}
			}
			for _, kept := range []string{"/wx/login", "level=3", "MicroMessenger"} {
				if !strings.Contains(line, kept) {
					t.Errorf("the access log line lost %q:\n%s", kept, line)
				}
			}
		})
	}
}

// accessLogEncoder provisions the encoder of cfg's only access log.
func accessLogEncoder(t *testing.T, cfg *caddy.Config) zapcore.Encoder {
	t.Helper()
	if cfg.Logging == nil {
		t.Fatal("no access log is configured")
	}
	var access []*caddy.CustomLog
	for _, l := range cfg.Logging.Logs {
		for _, name := range l.Include {
			if strings.HasPrefix(name, "http.log.access") {
				access = append(access, l)
			}
		}
	}
	if len(access) != 1 {
		t.Fatalf("%d access logs are configured, want 1", len(access))
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	encoder, err := ctx.LoadModule(&access[0].BaseLog, "EncoderRaw")
	if err != nil {
		t.Fatalf("provisioning the access log encoder: %v", err)
	}
	return encoder.(zapcore.Encoder)
}

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// nearMaxDuration is math.MaxInt64 as float64 formats it, shortest.
const nearMaxDuration int64 = 9_223_372_036_854_775_000

// TestBadConfigIsRefusedAndTheRunningOneServes loads configs through the
// admin API, as `caddy reload` does. A value out of bounds is refused with
// its message and its Caddyfile line, the same value in JSON with the same
// message, and the running config goes on serving logins.
func TestBadConfigIsRefusedAndTheRunningOneServes(t *testing.T) {
	const appID, secret = "wxconfig", "config-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	config := func(more ...string) string {
		return testkit.GlobalOptions("") + testkit.Site(testkit.WechatLogin(appID, secret, simURL, more...), testkit.ProxyTo(backend))
	}
	testkit.StartCaddy(t, config())
	logins := 0
	stillServing := func(t *testing.T) {
		t.Helper()
		logins++
		assertStatus(t, testkit.Get(t, fmt.Sprintf("/wx/login?code=alice.%d", logins)), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, appID, wechatsim.OpenID(appID, "alice"))
	}
	stillServing(t)

	for _, tc := range []struct {
		line, want string
		field      string // the handler's JSON field, set to value
		value      any
	}{
		// Every login was an instant 504: the deadline overflowed.
		{"timeout 1000000h", "timeout must be at most 1m, got 1000000h", "timeout", int64(1_000_000 * 3600 * 1e9)},
		// The backoff's random draw panicked and took the process down.
		{"retry 2 100ms 2562047h", "retry: max must be at most 1m, got 2562047h", "", nil},
		// Caddy passes a JSON config's numbers through float64 on the way
		// in: this is about the largest Duration that reaches the module.
		{"", "retry: base must be at most 1m, got 2562047h47m16.854775s", "retry",
			map[string]any{"attempts": 2, "base": nearMaxDuration, "max": nearMaxDuration}},
		{"cache_ttl 10m", "cache_ttl must be at most 5m, got 10m", "cache_ttl", int64(600e9)},
		{"budget 50 48h", "budget: window must be at most 24h, got 48h", "budget", map[string]any{"events": 50, "window": int64(48 * 3600e9)}},
		{"budget_size 20000000", "budget_size must be from 1 to 10000000, got 20000000", "budget_size", 20_000_000},
	} {
		if tc.line != "" {
			t.Run(tc.line, func(t *testing.T) {
				caddyfile := config(tc.line)
				want := tc.want + ", at Caddyfile:" + strconv.Itoa(lineOf(t, caddyfile, tc.line))
				status, body := testkit.LoadConfig(t, caddyfile)
				assertLoadRefused(t, status, body, want)
				stillServing(t)
			})
		}
		if tc.field != "" {
			t.Run("JSON "+tc.field, func(t *testing.T) {
				status, body := testkit.LoadJSON(t, withHandlerField(t, config(), tc.field, tc.value))
				assertLoadRefused(t, status, body, tc.want)
				stillServing(t)
			})
		}
	}
}

// lineOf is the 1-based line of caddyfile that holds text.
func lineOf(t *testing.T, caddyfile, text string) int {
	t.Helper()
	for i, line := range strings.Split(caddyfile, "\n") {
		if strings.Contains(line, text) {
			return i + 1
		}
	}
	t.Fatalf("%q is not in the Caddyfile", text)
	return 0
}

// assertLoadRefused checks that the admin API refused a config with an
// error that says want.
func assertLoadRefused(t *testing.T, status int, body, want string) {
	t.Helper()
	var answer struct{ Error string }
	_ = json.Unmarshal([]byte(body), &answer)
	if status == http.StatusOK || !strings.Contains(answer.Error, want) {
		t.Errorf("load answered %d %s\nwant a refusal saying %q", status, body, want)
	}
}

// withHandlerField adapts caddyfile and sets field of its one wechat_login
// handler to value.
func withHandlerField(t *testing.T, caddyfile, field string, value any) []byte {
	t.Helper()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	var config map[string]any
	if err := json.Unmarshal(adapted, &config); err != nil {
		t.Fatal(err)
	}
	found := 0
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "wechat_login" {
				v[field] = value
				found++
			}
			for _, child := range v {
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(config)
	if found != 1 {
		t.Fatalf("%d wechat_login handlers in the adapted config, want 1", found)
	}
	out, _ := json.Marshal(config)
	return out
}

// TestValuesThatWouldBreakEveryRequestAreRefused: an app_id with a control
// character used to load, then fail every forwarded request (it is the
// X-WX-APPID header); a Redis address with a password before the host used
// to load as a host name, to be logged with every Redis error. Both are
// refused at load, in the Caddyfile and in JSON, the password in no answer
// and no log line (TestMain scans them), and the running config serves on.
func TestValuesThatWouldBreakEveryRequestAreRefused(t *testing.T) {
	const appID, secret, password = "wxbreaking", "breaking-secret", "redis-pw-7d1f0c9a"
	testkit.Forbid(password)
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	config := func(more ...string) string {
		return testkit.GlobalOptions("") + testkit.Site(testkit.WechatLogin(appID, secret, simURL, more...), testkit.ProxyTo(backend))
	}
	testkit.StartCaddy(t, config())
	stillServing := func(t *testing.T, code string) {
		t.Helper()
		assertStatus(t, testkit.Get(t, "/wx/login?code=alice."+code), http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, appID, wechatsim.OpenID(appID, "alice"))
	}
	stillServing(t, "0")

	const hostError = "not host:port: a host has no @, / or spaces"
	for i, tc := range []struct {
		name, want string
		load       func() (int, string)
	}{
		{"Caddyfile, password@host:port", hostError, func() (int, string) {
			return testkit.LoadConfig(t, config("redis {\n\t\taddress "+password+"@127.0.0.1:6379\n\t}"))
		}},
		{"Caddyfile, password@host", hostError, func() (int, string) {
			return testkit.LoadConfig(t, config("redis "+password+"@127.0.0.1"))
		}},
		{"JSON, password@host:port", hostError, func() (int, string) {
			return testkit.LoadJSON(t, withHandlerField(t, config(), "redis", map[string]any{"address": []string{password + "@127.0.0.1:6379"}}))
		}},
		{"JSON, user:password@host", "the port is not a port number", func() (int, string) {
			return testkit.LoadJSON(t, withHandlerField(t, config(), "redis", map[string]any{"address": []string{"game:" + password + "@127.0.0.1"}}))
		}},
		{"JSON, app_id with a control character", "app_id must be visible ASCII", func() (int, string) {
			return testkit.LoadJSON(t, withHandlerField(t, config(), "app_id", appID+"\x01"))
		}},
		{"Caddyfile, app_id with a tab", "app_id must be visible ASCII", func() (int, string) {
			return testkit.LoadConfig(t, strings.Replace(config(), "app_id "+appID, "app_id \""+appID+"\t\"", 1))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := tc.load()
			assertLoadRefused(t, status, body, tc.want)
			if strings.Contains(body, password) {
				t.Errorf("the refusal repeats the password: %s", body)
			}
			stillServing(t, strconv.Itoa(i+1))
		})
	}
}

// Both handlers send the app secret to their endpoint, so both warn once at
// load when it is plain http to a host that is not loopback, naming the host
// and never the secret.
func TestCleartextEndpointIsWarnedByBothHandlers(t *testing.T) {
	const appID, secret = "wxcleartext", "cleartext-secret"
	warnings := filepath.Join(t.TempDir(), "warnings.log")
	backend := testkit.NewBackend(t, nil)
	// 192.0.2.0/24 is reserved for documentation: nothing answers there.
	const endpoint = "http://192.0.2.10:9"
	testkit.StartCaddy(t, testkit.GlobalOptions(`log warnings {
		output file `+warnings+`
		level WARN
		include http.handlers.wechat_login http.handlers.wechat_api
	}`)+testkit.Site(
		testkit.Handle("api", fmt.Sprintf("wechat_api {\n\t\tapp_id %s\n\t\tapp_secret %s\n\t\tendpoint %s\n\t}", appID, secret, endpoint)),
		testkit.Handle("", testkit.WechatLogin(appID, secret, endpoint), testkit.ProxyTo(backend))))
	logged, err := os.ReadFile(warnings)
	if err != nil {
		t.Fatal(err)
	}
	for _, handler := range []string{"http.handlers.wechat_login", "http.handlers.wechat_api"} {
		found := 0
		for line := range strings.Lines(string(logged)) {
			if strings.Contains(line, `"logger":"`+handler+`"`) && strings.Contains(line, "plain http") && strings.Contains(line, "192.0.2.10:9") {
				found++
			}
		}
		if found != 1 {
			t.Errorf("%s logged %d cleartext warnings, want 1; the log:\n%s", handler, found, testkit.Redact(string(logged)))
		}
	}
	if strings.Contains(string(logged), secret) {
		t.Error("a warning shows the app secret")
	}
}

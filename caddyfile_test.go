package wechatlogin

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden adapt files from the current adapter output")

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`wechat_login {
		app_id      wx1234567890abcdef
		app_secret  {env.WECHAT_APP_SECRET}
		login_path  /api/login
		code_field  wxcode
		endpoint    http://127.0.0.1:8931
		timeout     2s
		retry       4 50ms 2s
		budget      30 1m
		ip_budget   off
		cache_ttl   0
		cache_size  500
		budget_size 1000
		forward_session_key
		session {
			secret {env.NEW_KEY}
			secret {env.OLD_KEY}
			ttl 30m
			optional
			respond
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	zero := caddy.Duration(0)
	want := Handler{
		AppID: "wx1234567890abcdef", AppSecret: "{env.WECHAT_APP_SECRET}", LoginPath: "/api/login", CodeField: "wxcode",
		Endpoint: "http://127.0.0.1:8931", Timeout: caddy.Duration(2 * time.Second),
		Retry:    &RetryConfig{Attempts: 4, Base: caddy.Duration(50 * time.Millisecond), Max: caddy.Duration(2 * time.Second)},
		Budget:   &Budget{Events: 30, Window: caddy.Duration(time.Minute)},
		IPBudget: &Budget{Off: true}, CacheTTL: &zero, CacheSize: 500, BudgetSize: 1000, ForwardSessionKey: true,
		Session: &SessionConfig{Secrets: []string{"{env.NEW_KEY}", "{env.OLD_KEY}"}, TTL: caddy.Duration(30 * time.Minute), Optional: true, Respond: true},
	}
	got, _ := json.Marshal(h)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Errorf("got  %s\nwant %s", got, wantJSON)
	}
}

// Syntax the Caddyfile alone can get wrong is refused with its line; bad
// values are in config_test.go, with their JSON twins.
func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		body, want string
		line       int
	}{
		{"app_id", "app_id: missing value", 2},
		{"app_id a b", "app_id: one value expected, got more", 2},
		{"app_id a\napp_id b", "app_id: given more than once", 3},
		{"appid wx1", "unrecognized subdirective: appid", 2},
		{"timeout soon", `timeout: bad duration "soon": time: invalid duration "soon"`, 2},
		{"retry", "retry: expected <attempts> [<base> [<max>]]", 2},
		{"retry three", `retry: "three" is not a whole number`, 2},
		{"retry 1 2 3 4", "retry: expected <attempts> [<base> [<max>]]", 2},
		{"budget 60", "budget: expected <events> <window>", 2},
		{"budget many 1m", `budget: "many" is not a whole number`, 2},
		{"budget 60 soon", `budget: bad duration "soon": time: invalid duration "soon"`, 2},
		{"ip_budget lots", "ip_budget: expected <events> <window> or off", 2},
		{"budget_size many", `budget_size: "many" is not a whole number`, 2},
		{"forward_session_key yes", "wrong argument count or unexpected line ending after 'yes'", 2},
		{"session {\n ttl 1h\n}", "session: at least one secret is required", 4},
		{"session {\n secret {env.K}\n sticky\n}", "session: unrecognized subdirective: sticky", 4},
		{"session {\n secret {env.K}\n ttl 1h\n ttl 2h\n}", "session: ttl given more than once", 5},
		{"session {\n secret {env.K}\n optional yes\n}", "wrong argument count or unexpected line ending after 'yes'", 4},
		{"session on", "wrong argument count or unexpected line ending after 'on'", 2},
	} {
		d := caddyfile.NewTestDispenser("wechat_login {\n" + tc.body + "\n}")
		want := fmt.Sprintf("%s, at Testfile:%d", tc.want, tc.line)
		if err := new(Handler).UnmarshalCaddyfile(d); err == nil || err.Error() != want {
			t.Errorf("%q:\ngot  %v\nwant %s", tc.body, err, want)
		}
	}
}

// A secret written with a space is refused without its second half in the
// error, which Caddy logs and prints.
func TestCaddyfileErrorsRepeatNoSecret(t *testing.T) {
	for _, tc := range []struct {
		directive   string
		unmarshaler caddyfile.Unmarshaler
		body        string
	}{
		{"wechat_login", new(Handler), "app_id wx1\napp_secret first SECRET-HALF"},
		{"wechat_login", new(Handler), "app douyin tt1 {\n app_secret first SECRET-HALF\n}"},
		{"wechat_login", new(Handler), "app_id wx1\napp_secret s\nsession {\n secret first SECRET-HALF\n}"},
		{"wechat_login", new(Handler), "app_id wx1\napp_secret s\nredis {\n address localhost:6379\n password first SECRET-HALF\n}"},
		{"wechat_api", new(APIHandler), "app_id wx1\napp_secret s\nvirtual_payment {\n app_key first SECRET-HALF\n}"},
	} {
		err := tc.unmarshaler.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.directive + " {\n" + tc.body + "\n}"))
		if err == nil || strings.Contains(err.Error(), "SECRET-HALF") {
			t.Errorf("%q: got %v, want an error without the secret", tc.body, err)
		}
	}
}

// TestAdaptGolden adapts each testdata/adapt/*.caddyfile and compares the JSON
// with the file's .json twin (go test -run TestAdaptGolden -update rewrites
// them). The handler's JSON must also round-trip through the Handler type.
func TestAdaptGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/adapt/*.caddyfile")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			input, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			goldenFile := strings.TrimSuffix(file, ".caddyfile") + ".json"
			if *updateGolden {
				adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(input, nil)
				if err != nil {
					t.Fatal(err)
				}
				var pretty bytes.Buffer
				_ = json.Indent(&pretty, adapted, "", "\t") // as CompareAdapt formats it
				_ = os.WriteFile(goldenFile, pretty.Bytes(), 0o644)
			}
			golden, err := os.ReadFile(goldenFile)
			if err != nil {
				t.Fatal(err)
			}
			if !caddytest.CompareAdapt(t, file, string(input), "caddyfile", string(golden)) {
				t.Fatalf("adapting %s does not give %s", file, goldenFile)
			}
			assertHandlersRoundTrip(t, golden)
		})
	}
}

// assertHandlersRoundTrip decodes every wechat_login handler in an adapted
// config into Handler and encodes it again: nothing may be lost or renamed.
func assertHandlersRoundTrip(t *testing.T, config []byte) {
	t.Helper()
	var found int
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "wechat_login" {
				found++
				raw, _ := json.Marshal(v)
				var h Handler
				if err := json.Unmarshal(raw, &h); err != nil {
					t.Fatal(err)
				}
				again, _ := json.Marshal(&h)
				var a, b map[string]any
				_ = json.Unmarshal(raw, &a)
				_ = json.Unmarshal(again, &b)
				b["handler"] = "wechat_login"
				if ja, jb := mustJSON(a), mustJSON(b); ja != jb {
					t.Errorf("the handler JSON does not round-trip:\n%s\n%s", ja, jb)
				}
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
	var v any
	if err := json.Unmarshal(config, &v); err != nil {
		t.Fatal(err)
	}
	walk(v)
	if found == 0 {
		t.Fatal("no wechat_login handler in the adapted config")
	}
}

// TestDocumentedJSONShowsTheDefaults keeps the JSON examples of README.md
// and docs/configuration.md honest: each must decode to exactly what
// Provision makes of the minimal config.
func TestDocumentedJSONShowsTheDefaults(t *testing.T) {
	minimal := Handler{AppID: "wx1234567890abcdef", AppSecret: "{env.WECHAT_APP_SECRET}",
		Session: &SessionConfig{Secrets: []string{"{env.WECHAT_SESSION_SECRET}"}}}
	minimal.setDefaults()
	for _, file := range []string{"README.md", "docs/configuration.md"} {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(string(text), "```json\n{\n\t\"handler\": \"wechat_login\"")
		block, _, closed := strings.Cut(rest, "```")
		if !ok || !closed {
			t.Errorf("%s has no JSON example of the handler", file)
			continue
		}
		var documented Handler
		if err := json.Unmarshal([]byte("{\"handler\": \"wechat_login\""+block), &documented); err != nil {
			t.Errorf("the JSON of %s does not decode: %v", file, err)
			continue
		}
		if got, want := mustJSON(documented), mustJSON(minimal); got != want {
			t.Errorf("the JSON of %s is not the defaults:\ndocumented %s\ndefaults   %s", file, got, want)
		}
	}
}

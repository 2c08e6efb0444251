package wechatlogin

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A longer session secret than the minimum, written in a config.
const longSessionSecret = "0123456789abcdef0123456789abcdef"

// badValues are values refused at load, each as the first lines of a
// wechat_login block (line 2 on) and, where JSON can say the same, as the
// handler's JSON fields. line is the Caddyfile line the error names, when
// not line 2.
var badValues = []struct {
	caddyfile, json, want string
	line                  int
}{
	{caddyfile: "app_id wx/1", json: `{"app_id":"wx/1"}`, want: "app_id is not a WeChat AppID"},
	// It becomes the X-WX-APPID header: a control character used to load,
	// then fail every forwarded request.
	{caddyfile: "app_id \"wx12\t34\"", json: `{"app_id":"wx12\u000134"}`, want: "app_id must be visible ASCII, without spaces or control characters"},
	{caddyfile: "app_id \"wx12 34\"", json: `{"app_id":"wx12\u00e934"}`, want: "app_id must be visible ASCII, without spaces or control characters"},
	{caddyfile: `app_secret ""`, want: "app_secret is required"},
	{caddyfile: "login_path wx/login", json: `{"login_path":"wx/login"}`, want: `login_path must start with /: "wx/login"`},
	{caddyfile: "login_path /wx/login?x=1", json: `{"login_path":"/wx/login?x=1"}`, want: `login_path must be a path alone, without ? or #: "/wx/login?x=1"`},
	{caddyfile: `code_field ""`, want: "code_field must not be empty"},
	{caddyfile: "endpoint ftp://example.com", json: `{"endpoint":"ftp://example.com"}`, want: `endpoint must be an http or https base URL without a query or fragment, got scheme "ftp", host "example.com"`},
	{caddyfile: "endpoint https://example.com/?x=1", json: `{"endpoint":"https://example.com/?x=1"}`, want: `endpoint must be an http or https base URL without a query or fragment, got scheme "https", host "example.com"`},
	// Neither the query nor user:password is echoed: either may hold a secret.
	{caddyfile: "endpoint https://me:pa55@example.com/?key=s3cr3t", json: `{"endpoint":"https://me:pa55@example.com/?key=s3cr3t"}`, want: `endpoint must be an http or https base URL without a query or fragment, got scheme "https", host "example.com"`},
	{caddyfile: "endpoint https://example.com/%zz?key=s3cr3t", json: `{"endpoint":"https://example.com/%zz?key=s3cr3t"}`, want: "endpoint must be an http or https base URL, got something that is not a URL"},

	// A timeout past the bound used to overflow the exchange's deadline:
	// every login an instant 504.
	{caddyfile: "timeout 1000000h", json: `{"timeout":3600000000000000000}`, want: "timeout must be at most 1m, got 1000000h"},
	{caddyfile: "timeout 61s", json: `{"timeout":61000000000}`, want: "timeout must be at most 1m, got 1m1s"},
	{caddyfile: "timeout 1ms", json: `{"timeout":1000000}`, want: "timeout must be at least 10ms, got 1ms"},
	{caddyfile: "timeout -1s", json: `{"timeout":-1000000000}`, want: "timeout must be at least 10ms, got -1s"},
	{caddyfile: "timeout 0s", want: "timeout must be at least 10ms, got 0s"}, // JSON's 0 is the default

	{caddyfile: "retry 0", want: "retry: attempts must be from 1 to 10, got 0"},
	{caddyfile: "retry -1", json: `{"retry":{"attempts":-1}}`, want: "retry: attempts must be from 1 to 10, got -1"},
	{caddyfile: "retry 11", json: `{"retry":{"attempts":11}}`, want: "retry: attempts must be from 1 to 10, got 11"},
	{caddyfile: "retry 3 2m", json: `{"retry":{"base":120000000000}}`, want: "retry: base must be at most 1m, got 2m"},
	{caddyfile: "retry 3 0s", want: "retry: base must be at least 1ms, got 0s"},
	{caddyfile: "retry 3 -1ms", json: `{"retry":{"base":-1000000}}`, want: "retry: base must be at least 1ms, got -1ms"},
	// A max of math.MaxInt64 made the backoff's random draw panic inside a
	// shared exchange, which took the whole process down.
	{json: `{"retry":{"max":9223372036854775807}}`, want: "retry: max must be at most 1m, got 2562047h47m16.854775807s"},
	{caddyfile: "retry 3 100ms 2m", json: `{"retry":{"max":120000000000}}`, want: "retry: max must be at most 1m, got 2m"},
	{caddyfile: "retry 3 1s 100ms", json: `{"retry":{"base":1000000000,"max":100000000}}`, want: "retry: max 100ms is below base 1s"},

	{caddyfile: "budget off", json: `{"budget":{"off":true}}`, want: "budget cannot be off: it keeps players under WeChat's limit"},
	{caddyfile: "budget 0 1m", json: `{"budget":{"window":60000000000}}`, want: "budget needs a positive number of events and a positive window"},
	{caddyfile: "budget 10 0s", json: `{"budget":{"events":10}}`, want: "budget needs a positive number of events and a positive window"},
	{caddyfile: "budget 101 1m", json: `{"budget":{"events":101,"window":60000000000}}`, want: "budget: 101 per 1m0s is more than WeChat allows (100 per player per minute; past it WeChat answers 45011)"},
	{caddyfile: "budget 200 2m", json: `{"budget":{"events":200,"window":120000000000}}`, want: "budget: 200 per 2m0s is more than WeChat allows (100 per player per minute; past it WeChat answers 45011)"},
	{caddyfile: "budget 1 500ms", json: `{"budget":{"events":1,"window":500000000}}`, want: "budget: window must be at least 1s, got 500ms"},
	{caddyfile: "budget 50 48h", json: `{"budget":{"events":50,"window":172800000000000}}`, want: "budget: window must be at most 24h, got 48h"},
	{caddyfile: "ip_budget 20000000 1m", json: `{"ip_budget":{"events":20000000,"window":60000000000}}`, want: "ip_budget: events must be at most 10000000, got 20000000"},
	{caddyfile: "ip_budget 600 25h", json: `{"ip_budget":{"events":600,"window":90000000000000}}`, want: "ip_budget: window must be at most 24h, got 25h"},
	{caddyfile: "ip_budget -5 1m", json: `{"ip_budget":{"events":-5,"window":60000000000}}`, want: "ip_budget needs a positive number of events and a positive window"},
	{json: `{"ip_budget":{"off":true,"events":600}}`, want: "ip_budget: off takes no events or window"},

	{caddyfile: "cache_ttl 10m", json: `{"cache_ttl":600000000000}`, want: "cache_ttl must be at most 5m, got 10m"},
	{caddyfile: "cache_ttl -1s", json: `{"cache_ttl":-1000000000}`, want: "cache_ttl must not be negative, got -1s"},
	{caddyfile: "cache_size 0", want: "cache_size must be from 1 to 10000000, got 0"},
	{caddyfile: "cache_size -1", json: `{"cache_size":-1}`, want: "cache_size must be from 1 to 10000000, got -1"},
	{caddyfile: "cache_size 10000001", json: `{"cache_size":10000001}`, want: "cache_size must be from 1 to 10000000, got 10000001"},
	{caddyfile: "budget_size 9223372036854775807", json: `{"budget_size":9223372036854775807}`, want: "budget_size must be from 1 to 10000000, got 9223372036854775807"},

	{caddyfile: "session", json: `{"session":{}}`, want: "session: at least one secret is required"},
	{caddyfile: "session {\n\tsecret short\n}", json: `{"session":{"secrets":["short"]}}`, line: 3,
		want: "session: secret 1 is 5 bytes once resolved; at least 32 are required"},
	{caddyfile: "session {\n\tsecret " + longSessionSecret + "\n\tsecret 31-bytes-is-one-too-few-for-it\n}", line: 4,
		json: `{"session":{"secrets":["` + longSessionSecret + `","31-bytes-is-one-too-few-for-it"]}}`,
		want: "session: secret 2 is 30 bytes once resolved; at least 32 are required"},
	{caddyfile: "session {\n\tsecret {env.K}\n\tttl 1000h\n}", line: 4,
		json: `{"session":{"secrets":["` + longSessionSecret + `"],"ttl":3600000000000000}}`,
		want: "session: ttl must be at most 720h, got 1000h"},
	{caddyfile: "session {\n\tsecret {env.K}\n\tttl 0s\n}", line: 4, want: "session: ttl must be at least 1s, got 0s"},
	{caddyfile: "session {\n\tsecret {env.K}\n\tttl -1m\n}", line: 4,
		json: `{"session":{"secrets":["` + longSessionSecret + `"],"ttl":-60000000000}}`,
		want: "session: ttl must be at least 1s, got -1m"},
}

// Every bad value is refused by the Caddyfile parser with its line, and the
// same value in JSON with the same message.
func TestBadValuesRefusedAlikeInCaddyfileAndJSON(t *testing.T) {
	for _, tc := range badValues {
		if tc.caddyfile != "" {
			t.Run(tc.caddyfile, func(t *testing.T) {
				block := []string{"wechat_login {", tc.caddyfile}
				if !strings.HasPrefix(tc.caddyfile, "app_id ") {
					block = append(block, "app_id wx1234567890abcdef")
				}
				if !strings.HasPrefix(tc.caddyfile, "app_secret ") {
					block = append(block, "app_secret {env.S}")
				}
				d := caddyfile.NewTestDispenser(strings.Join(append(block, "}"), "\n"))
				line := max(tc.line, 2)
				want := tc.want + ", at Testfile:" + strconv.Itoa(line)
				if err := new(Handler).UnmarshalCaddyfile(d); err == nil || err.Error() != want {
					t.Errorf("got  %v\nwant %s", err, want)
				}
			})
		}
		if tc.json != "" {
			t.Run(tc.json, func(t *testing.T) {
				if err := provisionJSON(t, tc.json); err == nil || err.Error() != tc.want {
					t.Errorf("got  %v\nwant %s", err, tc.want)
				}
			})
		}
	}
}

// provisionJSON provisions a handler from its JSON fields, over a valid
// app_id and app_secret, as Caddy would: Provision, then Validate.
func provisionJSON(t *testing.T, fields string) error {
	t.Helper()
	config := map[string]any{"app_id": "wx1234567890abcdef", "app_secret": "s3cr3t"}
	decoder := json.NewDecoder(strings.NewReader(fields))
	decoder.UseNumber() // math.MaxInt64 as it is
	if err := decoder.Decode(&config); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(config)
	var h Handler
	if err := caddy.StrictUnmarshalJSON(raw, &h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		return err
	}
	defer h.Cleanup()
	return h.Validate()
}

// The largest values allowed load, and the exchange they give has a
// deadline, not an overflow.
func TestBoundsAreAllowed(t *testing.T) {
	d := caddyfile.NewTestDispenser(`wechat_login {
		app_id wx1234567890abcdef
		app_secret s3cr3t
		timeout 1m
		retry 10 1m 1m
		budget 100 1m
		ip_budget 10000000 24h
		cache_ttl 5m
		cache_size 10000000
		budget_size 10000000
		session {
			secret ` + longSessionSecret + `
			ttl 720h
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(&h)
	if err := provisionJSON(t, string(raw)); err != nil {
		t.Fatal(err)
	}
	h.setDefaults()
	client := exchangeClient{timeout: time.Duration(h.Timeout),
		retry: retryPolicy{attempts: h.Retry.Attempts, base: time.Duration(h.Retry.Base), max: time.Duration(h.Retry.Max)}}
	if got, want := client.worstCase(), 19*time.Minute; got != want {
		t.Errorf("worst case %s, want %s", got, want)
	}
}

// What the parser cannot judge, because it needs placeholders resolved or
// the whole block, is judged at provision, with the same message.
func TestRequiredAndResolvedValues(t *testing.T) {
	for _, tc := range []struct{ caddyfile, want string }{
		{"app_secret {env.S}", "app_id is required, at Testfile:1"},
		{"app_id wx1234567890abcdef", "app_secret is required, at Testfile:1"},
	} {
		d := caddyfile.NewTestDispenser("wechat_login {\n" + tc.caddyfile + "\n}")
		if err := new(Handler).UnmarshalCaddyfile(d); err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %s", tc.caddyfile, err, tc.want)
		}
	}

	t.Setenv("WXL_CONFIG_SHORT", "too-short")
	t.Setenv("WXL_CONFIG_LONG", longSessionSecret)
	for _, tc := range []struct{ json, want string }{
		{`{"app_id":""}`, "app_id is required"},
		{`{"app_secret":""}`, "app_secret is required"},
		{`{"app_secret":"{env.WXL_CONFIG_SURELY_UNSET}"}`, "app_secret is empty once its placeholders are resolved (is the environment variable or file there?)"},
		{`{"session":{"secrets":["{env.WXL_CONFIG_LONG}","{env.WXL_CONFIG_SHORT}"]}}`, "session: secret 2 is 9 bytes once resolved; at least 32 are required"},
		{`{"session":{"secrets":["{env.WXL_CONFIG_LONG}"]}}`, ""},
	} {
		err := provisionJSON(t, tc.json)
		if (err == nil && tc.want != "") || (err != nil && err.Error() != tc.want) {
			t.Errorf("%s: got %v, want %q", tc.json, err, tc.want)
		}
	}
}

// Validate judges the secrets resolved at provision: it gives the same
// answer however often Caddy calls it, whatever the environment says by
// then.
func TestValidateUsesTheSecretsResolvedOnce(t *testing.T) {
	t.Setenv("WXL_CONFIG_APP", "app-secret")
	t.Setenv("WXL_CONFIG_SESSION", longSessionSecret)
	h := &Handler{AppID: "wx1234567890abcdef", AppSecret: "{env.WXL_CONFIG_APP}",
		Session: &SessionConfig{Secrets: []string{"{env.WXL_CONFIG_SESSION}"}}}
	h.setDefaults()
	h.resolveSecrets()
	t.Setenv("WXL_CONFIG_APP", "")
	t.Setenv("WXL_CONFIG_SESSION", "short")
	for range 2 {
		if err := h.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	if h.resolved.apps[0] != "app-secret" || string(h.resolved.session[0]) != longSessionSecret {
		t.Error("the secrets were not resolved at provision")
	}
}

func TestDefaultCacheTTLIsOneMinute(t *testing.T) {
	var h Handler
	h.setDefaults()
	if got := time.Duration(*h.CacheTTL); got != time.Minute {
		t.Errorf("default cache_ttl %s, want 1m", got)
	}
}

func TestCleartextEndpoint(t *testing.T) {
	for endpoint, want := range map[string]bool{
		"https://api.weixin.qq.com":         false,
		"http://api.weixin.qq.com":          true,
		"HTTP://api.weixin.qq.com":          true,
		"http://10.0.0.7:8931":              true,
		"http://[2001:db8::1]:8931":         true,
		"http://localhost.example.com":      true,
		"http://127.0.0.1.nip.io":           true,
		"http://127.0.0.1:8931":             false,
		"http://127.3.2.1":                  false,
		"http://[::1]:8931":                 false,
		"http://localhost:8931":             false,
		"http://LocalHost":                  false,
		"https://10.0.0.7:8931":             false,
		"http://user:pass@203.0.113.9:8931": true,
	} {
		if got := cleartextEndpoint(endpoint); got != want {
			t.Errorf("cleartextEndpoint(%q) = %v, want %v", endpoint, got, want)
		}
	}
}

// A cleartext endpoint is one warning line, naming the host but never the
// credentials an endpoint URL may carry; anything else is silent.
func TestWarnIfCleartext(t *testing.T) {
	for endpoint, wantWarnings := range map[string]int{
		"http://user:pass@203.0.113.9:8931": 1,
		"https://api.weixin.qq.com":         0,
		"http://127.0.0.1:8931":             0,
	} {
		core, logs := observer.New(zapcore.DebugLevel)
		warnIfCleartext(zap.New(core), "wx1234567890abcdef", endpoint)
		if got := logs.FilterLevelExact(zapcore.WarnLevel).Len(); got != wantWarnings || logs.Len() != wantWarnings {
			t.Errorf("%s: %d warnings of %d lines, want %d", endpoint, got, logs.Len(), wantWarnings)
		}
		for _, entry := range logs.All() {
			if host := entry.ContextMap()["endpoint_host"]; host != "203.0.113.9:8931" {
				t.Errorf("%s: the warning names host %v", endpoint, host)
			}
			line, _ := json.Marshal(entry.ContextMap())
			if strings.Contains(entry.Message+string(line), "pass") {
				t.Errorf("%s: the warning shows the endpoint's password", endpoint)
			}
		}
	}
}

func TestAddSaturating(t *testing.T) {
	for _, tc := range []struct{ a, b, want time.Duration }{
		{time.Second, time.Minute, time.Second + time.Minute},
		{math.MaxInt64 - 1, 5, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{math.MinInt64 + 1, -5, math.MinInt64},
		{-time.Second, time.Second, 0},
	} {
		if got := addSaturating(tc.a, tc.b); got != tc.want {
			t.Errorf("addSaturating(%d, %d) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// Nothing a JSON config says may panic, at load or in what a login computes
// from it (the exchange's deadline, each backoff), nor give an exchange a
// deadline already past.
func FuzzHandlerConfig(f *testing.F) {
	for _, seed := range []string{
		`{"app_id":"wx1","app_secret":"s"}`,
		`{"app_id":"wx1","app_secret":"s","timeout":3600000000000000000}`,
		`{"app_id":"wx1","app_secret":"s","retry":{"attempts":2,"base":9223372036854775807,"max":9223372036854775807}}`,
		`{"app_id":"wx1","app_secret":"s","retry":{"attempts":10,"max":9223372036854775807}}`,
		`{"app_id":"wx1","app_secret":"s","retry":{"attempts":10,"base":60000000000,"max":60000000000},"timeout":60000000000}`,
		`{"app_id":"wx1","app_secret":"s","budget":{"events":1,"window":1},"ip_budget":{"events":9223372036854775807,"window":9223372036854775807}}`,
		`{"app_id":"wx1","app_secret":"s","cache_ttl":-1,"cache_size":-5,"budget_size":9223372036854775807}`,
		`{"app_id":"wx1","app_secret":"s","session":{"secrets":["` + longSessionSecret + `"],"ttl":9223372036854775807}}`,
		`{"app_id":"wx1","app_secret":"s","endpoint":"http://203.0.113.9","ip_budget":{"off":true}}`,
	} {
		f.Add([]byte(seed))
	}
	// One context for every input: making one is most of the cost, and
	// Provision keeps nothing in it.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	f.Cleanup(cancel)
	f.Fuzz(func(t *testing.T, config []byte) {
		var h Handler
		if caddy.StrictUnmarshalJSON(config, &h) != nil {
			return
		}
		if h.Provision(ctx) != nil {
			return
		}
		defer h.Cleanup()
		if err := h.Validate(); err != nil {
			t.Fatalf("provisioned, then refused: %v", err)
		}
		if d := h.apps[0].client.worstCase(); d <= 0 {
			t.Fatalf("an exchange's deadline is %s from its start", d)
		}
		for attempt := 1; attempt < h.apps[0].client.retry.attempts; attempt++ {
			h.apps[0].client.retry.backoff(attempt)
		}
	})
}

func TestCanonicalEndpointFoldsSpellingsOfOneEndpoint(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"https://api.weixin.qq.com", "https://api.weixin.qq.com/", true},
		{"https://api.weixin.qq.com", "HTTPS://API.WEIXIN.QQ.COM:443//", true},
		{"http://127.0.0.1:80", "http://127.0.0.1", true},
		{"http://[::1]:80/", "http://[::1]", true},
		{"http://127.0.0.1:8931", "http://127.0.0.1:8932", false},
		{"https://api.weixin.qq.com", "https://api2.weixin.qq.com", false},
		{"https://h/a", "https://h/b", false},
	} {
		if got := canonicalEndpoint(tc.a) == canonicalEndpoint(tc.b); got != tc.same {
			t.Errorf("%s and %s share state: %v (%q, %q), want %v", tc.a, tc.b, got, canonicalEndpoint(tc.a), canonicalEndpoint(tc.b), tc.same)
		}
	}
}

// A reload that only respells the endpoint keeps the budgets: no refill.
func TestStateSurvivesAnEndpointRespelled(t *testing.T) {
	_, endpoint := newTestSim(t)
	clock := newTestClock()
	old := newClockedHandler(t, endpoint, clock, withBudget(1, time.Minute))
	if w, forwarded := serveTestLogin(t, old, "alice.1", "198.51.100.1"); !forwarded {
		t.Fatalf("first login: %d %s", w.Code, w.Body)
	}
	respelled := newClockedHandler(t, endpoint+"/", clock, withBudget(1, time.Minute))
	w, forwarded := serveTestLogin(t, respelled, "alice.2", "198.51.100.1")
	wantRateLimited(t, w, forwarded, "63")
}

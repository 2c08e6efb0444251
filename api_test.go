package wechatlogin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestAPIUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`wechat_api {
		app_id     wx1234567890abcdef
		app_secret {env.WECHAT_APP_SECRET}
		endpoint   http://127.0.0.1:8931/
		timeout    2s
		redis {
			address    redis://10.0.0.5:6379 10.0.0.6
			key_prefix game:
		}
		virtual_payment {
			app_key         {env.WECHAT_APP_KEY}
			sandbox_app_key sandbox-key
		}
		allow_host wechat-api.internal api_gateway
	}`)
	var h APIHandler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := APIHandler{AppID: "wx1234567890abcdef", AppSecret: "{env.WECHAT_APP_SECRET}",
		Endpoint: "http://127.0.0.1:8931/", Timeout: caddy.Duration(2 * time.Second),
		Redis:          &RedisConfig{Address: []string{"redis://10.0.0.5:6379", "10.0.0.6"}, KeyPrefix: "game:"},
		VirtualPayment: &VirtualPaymentConfig{AppKey: "{env.WECHAT_APP_KEY}", SandboxAppKey: "sandbox-key"},

		AllowHosts: []string{"wechat-api.internal", "api_gateway"}}
	if got, want := mustJSON(h), mustJSON(want); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAPIUnmarshalCaddyfileErrors(t *testing.T) {
	assertCaddyfileErrors(t, "wechat_api", func() caddyfile.Unmarshaler { return new(APIHandler) }, []caddyfileError{
		{"app_id", "app_id: missing value"},
		{"app_secret a b", "app_secret: one value expected"},
		{"app_id a\napp_id b", "app_id: given more than once"},
		{"redis {\n address localhost:6379\n}\nredis {\n address localhost:6380\n}", "redis: given more than once"},
		{"redis", "redis: address is required"},
		{"redis {\n address localhost:6379\n fleet_size 0\n}", "fleet_size"},
		{"redis {\n address localhost:6379\n lifetime 1h\n}", "redis: unrecognized subdirective: lifetime"},
		{"endpoint api.weixin.qq.com", "endpoint must be an http or https base URL"},
		{"timeout soon", `timeout: bad duration "soon"`},
		{"timeout 0s", "timeout must be positive and at most 1m0s"},
		{"timeout 2m", "timeout must be positive and at most 1m0s"},
		{"app_secret s", "app_id is required"},
		{"app_id wx1", "app_secret is required"},
		{"app_id wx/1\napp_secret s", "app_id is not a WeChat AppID"},
		{"virtual_payment", "virtual_payment needs app_key, sandbox_app_key or both"},
		{"virtual_payment {\n app_key a b\n}", "app_key: one value expected"},
		{"virtual_payment {\n app_key a\n app_key b\n}", "virtual_payment: app_key given more than once"},
		{"virtual_payment {\n appkey a\n}", "virtual_payment: unrecognized subdirective: appkey"},
		{"allow_host", "allow_host: missing value"},
		{"allow_host api.internal:8081", `allow_host: "api.internal:8081" is not a host name`},
		{"allow_host http://api.internal", "is not a host name"},
		{"allow_host a\nallow_host b", "allow_host: given more than once"},
	})
}

// caddyfileError is the body of a directive's block and the error it gives.
type caddyfileError struct{ body, want string }

// assertCaddyfileErrors checks that each body, in a block of directive, is
// refused with its error, which names the Caddyfile line once.
func assertCaddyfileErrors(t *testing.T, directive string, unmarshaler func() caddyfile.Unmarshaler, cases []caddyfileError) {
	t.Helper()
	for _, tc := range cases {
		d := caddyfile.NewTestDispenser(directive + " {\n" + tc.body + "\n}")
		err := unmarshaler().UnmarshalCaddyfile(d)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.body, err, tc.want)
			continue
		}
		if strings.Count(err.Error(), "Testfile:") != 1 {
			t.Errorf("%q: the error does not name the Caddyfile line once: %v", tc.body, err)
		}
	}
}

// TestAPIValidate: a JSON config gets the messages a Caddyfile gets.
func TestAPIValidate(t *testing.T) {
	valid := APIHandler{AppID: "wx1", AppSecret: "s", secret: "s", Endpoint: defaultEndpoint, Timeout: caddy.Duration(defaultAPITimeout)}
	if err := valid.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	for _, tc := range []struct {
		change func(*APIHandler)
		want   string
	}{
		{func(h *APIHandler) { h.AppID = "" }, "app_id is required"},
		{func(h *APIHandler) { h.AppSecret, h.secret = "", "" }, "app_secret is required"},
		{func(h *APIHandler) { h.AppSecret, h.secret = "{env.UNSET}", "" }, "app_secret is empty once its placeholders are resolved"},
		{func(h *APIHandler) { h.Endpoint = "ftp://example.com" }, "endpoint must be an http or https base URL"},
		{func(h *APIHandler) { h.Timeout = caddy.Duration(-time.Second) }, "timeout must be positive and at most 1m0s"},
		{func(h *APIHandler) { h.Timeout = caddy.Duration(time.Hour) }, "timeout must be positive and at most 1m0s"},
		{func(h *APIHandler) { h.Redis = &RedisConfig{} }, "redis: address is required"},
		{func(h *APIHandler) { h.Redis = &RedisConfig{Address: []string{"a:1"}, KeyPrefix: "{x}"} }, "key_prefix must not contain { or }"},
		{func(h *APIHandler) { h.VirtualPayment = &VirtualPaymentConfig{} }, "virtual_payment needs app_key, sandbox_app_key or both"},
		{func(h *APIHandler) {
			h.VirtualPayment = &VirtualPaymentConfig{SandboxAppKey: "{env.UNSET}"}
			h.appKeys = h.VirtualPayment.appKeys(caddy.NewReplacer())
		}, "virtual_payment sandbox_app_key is empty once its placeholders are resolved"},
		{func(h *APIHandler) {
			h.VirtualPayment = &VirtualPaymentConfig{AppKey: "two words"}
			h.appKeys = h.VirtualPayment.appKeys(nil)
		}, "virtual_payment app_key is not a WeChat AppKey"},
		{func(h *APIHandler) { h.AllowHosts = []string{"api.internal", ""} }, `allow_host: "" is not a host name`},
		{func(h *APIHandler) { h.AllowHosts = []string{"api\x7f.internal"} }, "is not a host name"},
		{func(h *APIHandler) { h.AllowHosts = []string{"user@api.internal"} }, "is not a host name"},
	} {
		h := valid
		tc.change(&h)
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}

// FuzzAPIConfig: nothing a JSON config of wechat_api says may panic at load,
// and what provisions validates.
func FuzzAPIConfig(f *testing.F) {
	for _, seed := range []string{
		`{"app_id":"wx1","app_secret":"s"}`,
		`{"app_id":"wx1","app_secret":"s","endpoint":"http://127.0.0.1:1/","timeout":9223372036854775807}`,
		`{"app_id":"wx1","app_secret":"{env.UNSET}","timeout":-1}`,
		`{"app_id":"wx1","app_secret":"s","redis":{"address":["127.0.0.1:1"],"timeout":1000000,"key_prefix":"x:"}}`,
		`{"app_id":"wx1","app_secret":"s","redis":{"address":["redis://:pw@h/1"],"db":2,"fleet_size":-3}}`,
		`{"app_id":"wx1","app_secret":"s","redis":{}}`,
		`{"app_id":"wx1","app_secret":"s","virtual_payment":{"app_key":"{env.UNSET}","sandbox_app_key":"k"}}`,
		`{"app_id":"wx1","app_secret":"s","virtual_payment":{}}`,
		`{"app_id":"wx1","app_secret":"s","allow_hosts":["api.internal","API_2",""]}`,
	} {
		f.Add([]byte(seed))
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	f.Cleanup(cancel)
	f.Fuzz(func(t *testing.T, config []byte) {
		var h APIHandler
		if caddy.StrictUnmarshalJSON(config, &h) != nil {
			return
		}
		err := h.Provision(ctx)
		defer h.Cleanup()
		if err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("provisioned, then refused: %v", err)
		}
	})
}

// TestAPIAdapt: the Caddyfile adapts to the JSON the handler documents,
// with no `order` option, and the JSON round-trips through APIHandler.
func TestAPIAdapt(t *testing.T) {
	const input = "http://127.0.0.1:8081 {\n\twechat_api {\n\t\tapp_id wx1234567890abcdef\n" +
		"\t\tapp_secret {env.WECHAT_APP_SECRET}\n\t\ttimeout 3s\n\t\tallow_host wechat-api.internal\n\t}\n}\n"
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("adapting: %v %v", err, warnings)
	}
	var config struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []struct {
							Routes []struct {
								Handle []json.RawMessage
							}
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(adapted, &config); err != nil {
		t.Fatal(err)
	}
	var handler json.RawMessage
	for _, server := range config.Apps.HTTP.Servers {
		handler = server.Routes[0].Handle[0].Routes[0].Handle[0]
	}
	const want = `{"allow_hosts":["wechat-api.internal"],"app_id":"wx1234567890abcdef","app_secret":"{env.WECHAT_APP_SECRET}","handler":"wechat_api","timeout":3000000000}`
	if got := mustJSON(json.RawMessage(handler)); got != want {
		t.Fatalf("adapted to %s\nwant        %s", got, want)
	}
	var h APIHandler
	if err := json.Unmarshal(handler, &h); err != nil {
		t.Fatal(err)
	}
	if got := `{"app_id":"wx1234567890abcdef","app_secret":"{env.WECHAT_APP_SECRET}","timeout":3000000000,"allow_hosts":["wechat-api.internal"]}`; mustJSON(h) != got {
		t.Errorf("the JSON does not round-trip: %s", mustJSON(h))
	}
}

func TestWithAccessToken(t *testing.T) {
	for _, tt := range []struct{ query, want string }{
		{"", "access_token=T%2B1"},
		{"a=1&b=2", "a=1&b=2&access_token=T%2B1"},
		{"access_token=mine", "access_token=T%2B1"},
		{"a=1&access_token=mine&b=%20x&access_token=again", "a=1&b=%20x&access_token=T%2B1"},
		{"access%5Ftoken=mine&a=1", "a=1&access_token=T%2B1"},
		{"access_token&a", "a&access_token=T%2B1"},
		{"cloudbase_access_token=c&access_tokens=x", "cloudbase_access_token=c&access_tokens=x&access_token=T%2B1"},
		{"&&a=1&", "a=1&access_token=T%2B1"},
	} {
		if got := withAccessToken(tt.query, "T+1"); got != tt.want {
			t.Errorf("withAccessToken(%q) = %q; want %q", tt.query, got, tt.want)
		}
	}
}

// FuzzWithAccessToken: whatever query a backend sends, WeChat sees exactly
// one access_token, ours, and every other parameter as it was, in order.
func FuzzWithAccessToken(f *testing.F) {
	for _, q := range []string{"", "a=1&access_token=x", "access%5ftoken=x", "%zz=1&=&&", "access_token=1;access_token=2"} {
		f.Add(q, "80_token")
	}
	f.Fuzz(func(t *testing.T, query, token string) {
		got := withAccessToken(query, token)
		var kept, tokens []string
		for param := range strings.SplitSeq(got, "&") {
			if isAccessTokenParam(param) {
				tokens = append(tokens, param)
			} else {
				kept = append(kept, param)
			}
		}
		if len(tokens) != 1 || !strings.HasSuffix(got, tokens[0]) {
			t.Fatalf("%q gives %q: want exactly one access_token, last", query, got)
		}
		if _, value, _ := strings.Cut(tokens[0], "="); value != url.QueryEscape(token) {
			t.Fatalf("the access_token is %q, not the gateway's", value)
		}
		var want []string
		for param := range strings.SplitSeq(query, "&") {
			if param != "" && !isAccessTokenParam(param) {
				want = append(want, param)
			}
		}
		if !slices.Equal(kept, want) {
			t.Fatalf("%q gives %q: the other parameters changed", query, got)
		}
	})
}

func TestAnswerErrcode(t *testing.T) {
	for _, tt := range []struct {
		answer string
		want   int
		ok     bool
	}{
		{`{"errcode":40001,"errmsg":"invalid credential"}`, 40001, true},
		{`{"errcode":0,"errmsg":"ok","result":{"errcode":42001}}`, 0, true},
		{` {"errmsg":"x", "errcode" : -1} `, -1, true},
		{`{"ErrCode":40001}`, 0, false},
		{`{"errcode":"40001"}`, 0, false},
		{`{"errcode":40001.5}`, 0, false},
		{`{"errcode":40001`, 0, false},
		{`[{"errcode":40001}]`, 0, false},
		{"\x89PNG\r\n", 0, false},
	} {
		if got, ok := answerErrcode([]byte(tt.answer)); got != tt.want || ok != tt.ok {
			t.Errorf("answerErrcode(%s) = %d, %t; want %d, %t", tt.answer, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzAnswerErrcode: the errcode read from an answer is the one a JSON
// decoder sees at its top level, and nothing else.
func FuzzAnswerErrcode(f *testing.F) {
	for _, a := range []string{`{"errcode":40001}`, `{"errcode":0,"errmsg":"ok"}`, `{"errcode":1e3}`, `{"errcode":1,"errcode":2}`, `null`} {
		f.Add([]byte(a))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		errcode, ok := answerErrcode(answer)
		var fields map[string]any
		decodes := json.Unmarshal(answer, &fields) == nil
		number, isNumber := fields["errcode"].(float64)
		if ok && (!decodes || !isNumber || number != float64(errcode)) {
			t.Fatalf("%q: errcode %d, but a decoder sees %v", answer, errcode, fields["errcode"])
		}
		if !ok && errcode != 0 {
			t.Fatalf("%q: errcode %d without ok", answer, errcode)
		}
	})
}

// provisionAPI provisions h as Caddy would and cleans it up after the test.
func provisionAPI(t *testing.T, h *APIHandler) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
}

// TestTokenManagersSharedByAppEndpointAndSecret: handlers of one app,
// endpoint and secret share a token; a different secret (a staging site)
// shares nothing.
func TestTokenManagersSharedByAppEndpointAndSecret(t *testing.T) {
	handler := func(secret string) *APIHandler {
		h := &APIHandler{AppID: apiAppID, AppSecret: secret, Endpoint: "http://127.0.0.1:1/"}
		provisionAPI(t, h)
		return h
	}
	a, b, other := handler(apiSecret), handler(apiSecret), handler("another-secret")
	if a.tokens != b.tokens || a.tokens == other.tokens {
		t.Error("token managers are not shared by exactly the handlers of one app, endpoint and secret")
	}
}

// TestAPIRedisSharesTheClientAndTheToken: wechat_api handlers with a redis
// block share a token manager that keeps the token in Redis, on the client
// wechat_login handlers with the same settings use; without the block, or
// with other settings, the manager is another.
func TestAPIRedisSharesTheClientAndTheToken(t *testing.T) {
	srv := testkit.StartRedis(t)
	const endpoint = "http://127.0.0.1:1"
	handler := func(redis *RedisConfig) *APIHandler {
		h := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, Endpoint: endpoint, Redis: redis}
		provisionAPI(t, h)
		return h
	}
	shared := &RedisConfig{Address: []string{srv.Addr()}}
	// a, the first, is cleaned up by the test itself.
	a := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, Endpoint: endpoint, Redis: shared}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	b := handler(&RedisConfig{Address: []string{"redis://" + srv.Addr()}})
	alone, otherPrefix := handler(nil), handler(&RedisConfig{Address: []string{srv.Addr()}, KeyPrefix: "other:"})
	login := newTestHandler(t, endpoint, func(h *Handler) { h.Redis = shared })

	if _, ok := a.tokens.store.(*redisTokenStore); !ok || a.tokens != b.tokens {
		t.Error("handlers with the same redis settings do not share a token manager keeping the token in Redis")
	}
	if alone.tokens == a.tokens || otherPrefix.tokens == a.tokens {
		t.Error("a handler without redis, or with another key_prefix, shares the fleet's token manager")
	}
	if a.appRedis.redis != login.apps[0].appRedis.redis || otherPrefix.appRedis.redis != a.appRedis.redis {
		t.Error("wechat_api and wechat_login with the same redis settings have a client each")
	}
	// The client outlives the handler that made the manager.
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := b.tokens.store.(*redisTokenStore).app.redis.client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("the token store's client closed while handlers use it: %v", err)
	}
}

// TestClientGoneRecorded499: a client that goes away while the token is
// fetched is recorded as 499, so that the access log shows the disconnect.
func TestClientGoneRecorded499(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	sim.SetLatency(time.Hour)
	h := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, Endpoint: simURL}
	provisionAPI(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := httptest.NewRecorder()
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1/wxa/msg_sec_check", strings.NewReader("{}"))
	if err := h.ServeHTTP(w, r, nil); err != nil || w.Code != 499 || w.Body.Len() != 0 {
		t.Errorf("got %d %q, %v; want 499 and no body", w.Code, w.Body, err)
	}
}

// TestAPIRefusalsByKind: wechat_api refuses a failed call to WeChat as
// docs/wechat-api.md lists it, whatever the kind: no token (502) unless
// WeChat is away (503, Retry-After) or slow (504), with WeChat's errcode
// when it gave one.
func TestAPIRefusalsByKind(t *testing.T) {
	for _, tc := range []struct {
		err        *platformError
		status     int
		code       string
		retryAfter time.Duration
	}{
		{wechatErrcodes.failure(40125, ""), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(40013, ""), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(45009, ""), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(45011, ""), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(40029, ""), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(40226, ""), 502, refusalTokenUnavailable, 0},
		{badResponse("no token"), 502, refusalTokenUnavailable, 0},
		{wechatErrcodes.failure(-1, ""), 503, refusalUnavailable, apiRetryAfter},
		{&platformError{kind: kindUnavailable}, 503, refusalUnavailable, apiRetryAfter},
		{&platformError{kind: kindTimeout}, 504, refusalTimeout, 0},
	} {
		e := apiRefuser.refusal(tc.err, time.Now())
		if e.status != tc.status || e.code != tc.code || e.retryAfter != tc.retryAfter ||
			e.hasErrcode != tc.err.hasErrcode || e.errcode != tc.err.errcode || strings.Contains(e.message, "{") {
			t.Errorf("%+v: got %+v", tc.err, e)
		}
	}
}

// TestOnlyTheAppsTokenCanBeRefused: a 40001 from an API that takes a
// player's credentials (/sns/) does not replace the app's token; a token
// path in another spelling is answered by the gateway, never sent to WeChat.
func TestOnlyTheAppsTokenCanBeRefused(t *testing.T) {
	var stableCalls, forwarded atomic.Int32
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case stableTokenPath:
			stableCalls.Add(1)
			fmt.Fprint(w, `{"access_token":"app-token-1","expires_in":7200}`)
		default:
			forwarded.Add(1)
			fmt.Fprint(w, `{"errcode":40001,"errmsg":"invalid credential"}`)
		}
	}))
	t.Cleanup(fake.Close)
	h := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, Endpoint: fake.URL}
	provisionAPI(t, h)

	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/sns/auth?openid=o1", nil), nil); err != nil || w.Code != http.StatusOK {
		t.Fatalf("/sns/auth: %d %v", w.Code, err)
	}
	if stableCalls.Load() != 1 || forwarded.Load() != 1 {
		t.Errorf("/sns/ answered 40001: %d stable_token calls and %d calls forwarded, want 1 and 1 (no new token, no repeat)", stableCalls.Load(), forwarded.Load())
	}
	for _, spelling := range []string{"//cgi-bin/token", "/cgi-bin/./token", "/cgi-bin//stable_token", "/CGI-BIN/TOKEN", "/cgi-bin/x/../token"} {
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1"+spelling+"?grant_type=client_credential", nil), nil); err != nil || !strings.Contains(w.Body.String(), `"access_token":"app-token-1"`) {
			t.Errorf("%s: %d %s, want the gateway's token", spelling, w.Code, w.Body)
		}
	}
	for _, odd := range []string{"/cgi-bin/token%00", "/cgi-bin/token;x", "/cgi-bin/token%20"} {
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1"+odd+"?grant_type=client_credential", nil), nil); err != nil || w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400: not a WeChat API path", odd, w.Code, w.Body)
		}
	}
	if forwarded.Load() != 1 {
		t.Errorf("a token path in another spelling reached WeChat: %d calls forwarded", forwarded.Load())
	}
}

// TestAnotherCredentialsRefusalForcesNoRefresh: an API that refuses some
// other credential a backend's call carried answers 40001 too; before a
// forced refresh, which would invalidate the token for the whole app, the
// gateway asks WeChat whether the token itself is refused. It is not: the
// call is not repeated with the same token (WeChat's answer goes back), and
// the confirmation is remembered, so the next refusals cost no more. When
// WeChat does not say (busy), the call is not repeated either, and nothing
// is remembered.
func TestAnotherCredentialsRefusalForcesNoRefresh(t *testing.T) {
	var forced, stable, checks, forwarded atomic.Int32
	var checkBusy atomic.Bool
	const refusal = `{"errcode":40001,"errmsg":"invalid credential"}`
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case stableTokenPath:
			stable.Add(1)
			body, _ := io.ReadAll(r.Body)
			if strings.Contains(string(body), `"force_refresh":true`) {
				forced.Add(1)
			}
			fmt.Fprint(w, `{"access_token":"app-token-1","expires_in":7200}`)
		case tokenCheckPath:
			checks.Add(1)
			if checkBusy.Load() {
				fmt.Fprint(w, `{"errcode":-1,"errmsg":"system error"}`)
				return
			}
			fmt.Fprint(w, `{"ip_list":["101.226.103.0/25"]}`)
		default:
			forwarded.Add(1)
			fmt.Fprint(w, refusal) // the component_access_token is bogus
		}
	}))
	t.Cleanup(fake.Close)
	h := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, Endpoint: fake.URL}
	provisionAPI(t, h)
	call := func(api string) {
		t.Helper()
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "http://localhost:8081"+api+"?component_access_token=bogus", strings.NewReader("{}"))
		if err := h.ServeHTTP(w, r, nil); err != nil || w.Code != http.StatusOK || w.Body.String() != refusal {
			t.Fatalf("got %d %s, %v; want WeChat's 40001 passed back", w.Code, w.Body, err)
		}
	}
	for range 3 {
		call("/cgi-bin/component/api_query_auth")
	}
	if forced.Load() != 0 || stable.Load() != 2 || checks.Load() != 1 || forwarded.Load() != 3 {
		t.Errorf("3 refusals of a token WeChat takes: %d calls, %d stable_token calls (%d forced), %d checks; want 3 (none repeated), 2 (the first fetch, one look), none forced, 1",
			forwarded.Load(), stable.Load(), forced.Load(), checks.Load())
	}

	checkBusy.Store(true)
	call("/cgi-bin/component/api_authorizer_token") // another API: looked into anew
	call("/cgi-bin/component/api_authorizer_token")
	if forced.Load() != 0 || checks.Load() != 3 || forwarded.Load() != 5 {
		t.Errorf("WeChat busy when asked: %d calls, %d forced, %d checks; want 5 (none repeated), none forced, 3 (nothing remembered)", forwarded.Load(), forced.Load(), checks.Load())
	}
}

// TestHostAllowed: a backend names the gateway by an IP address (v4 or v6,
// with or without a port), localhost or a name in allow_host, in any case;
// any other name is a DNS name someone could point at the listener. Over a
// Unix socket, which no browser reaches, any name does.
func TestHostAllowed(t *testing.T) {
	h := &APIHandler{AppID: apiAppID, AppSecret: apiSecret, AllowHosts: []string{"wechat-api.internal"}}
	provisionAPI(t, h)
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.0.0.1:8081": true, "10.0.0.5:8081": true, "[::1]:8081": true, "[::1]": true, "::1": true,
		"localhost": true, "LocalHost:8081": true, "wechat-api.internal:8081": true, "WECHAT-API.internal": true,
		"evil.example": false, "evil.example:8081": false, "localhost.evil.example": false, "127.0.0.1.nip.io:8081": false,
		"wechat-api.internal.evil.example": false, "": false, "[evil.example]:8081": false,
	} {
		r := httptest.NewRequest(http.MethodGet, "/cgi-bin/token", nil)
		r.Host = host
		if got := h.hostAllowed(r); got != want {
			t.Errorf("Host %q: allowed %t, want %t", host, got, want)
		}
	}
	overUnixSocket := context.WithValue(context.Background(), http.LocalAddrContextKey, &net.UnixAddr{Name: "/run/wechat-api.sock", Net: "unix"})
	r := httptest.NewRequestWithContext(overUnixSocket, http.MethodGet, "http://unix/cgi-bin/token", nil)
	if !h.hostAllowed(r) {
		t.Error("a request over a Unix socket was refused for its Host")
	}
}

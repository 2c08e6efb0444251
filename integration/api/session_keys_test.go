package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim/wechatsimtest"
)

const (
	custodyAppKey        = "custody-prod-app-key-0123456789ab"
	custodySandboxAppKey = "custody-sandbox-app-key-0123456789"
)

// startCustodyGateway starts a simulator knowing appID (with payment
// AppKeys) and a Caddy serving, for appID, logins under /game/ (in front of
// a backend) and wechat_api with virtual_payment on every other path.
func startCustodyGateway(t *testing.T, appID, secret string) (*wechatsim.Server, string) {
	t.Helper()
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: appID, Secret: secret, AppKey: custodyAppKey, SandboxAppKey: custodySandboxAppKey},
	}})
	startCustodyCaddy(t, appID, secret, simURL)
	return sim, simURL
}

// startCustodyCaddy is startCustodyGateway's Caddy, with WeChat at
// endpoint. Every wechat_api answer carries X-Request-Uri: the request's
// {http.request.uri} once wechat_api is done, as a log line or an error
// page written after it would show it.
func startCustodyCaddy(t *testing.T, appID, secret, endpoint string) {
	t.Helper()
	backend := testkit.NewBackend(t, nil)
	payment := fmt.Sprintf("virtual_payment {\n\t\tapp_key %s\n\t\tsandbox_app_key %s\n\t}", custodyAppKey, custodySandboxAppKey)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("game", appID, secret, endpoint, backend),
		testkit.Handle("", "header {\n\tdefer\n\tX-Request-Uri {http.request.uri}\n}", wechatAPI(appID, secret, endpoint, payment)),
	))
}

// assertRequestURI checks that once wechat_api was done, the request's
// URI was still the backend's: none of the signatures the gateway added.
func assertRequestURI(t *testing.T, resp testkit.Response, want string) {
	t.Helper()
	if got := resp.Header.Get("X-Request-Uri"); got != want {
		t.Errorf("after wechat_api, {http.request.uri} of %s is %q; want the backend's %q", resp.Request.URL.Path, got, want)
	}
}

// login logs the player in through the gateway with code.
func login(t *testing.T, code string) {
	t.Helper()
	if resp := testkit.Get(t, "/game/wx/login?code="+code); resp.StatusCode != http.StatusOK {
		t.Fatalf("login with %s: %v", code, resp)
	}
}

// gatewayCall posts body to the gateway's endpoint and checks that the
// answer shows no secret.
func gatewayCall(t *testing.T, endpoint string, body any) testkit.Response {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp := testkit.Send(t, http.MethodPost, "/gateway/"+endpoint, strings.NewReader(string(raw)), "Content-Type: application/json")
	if leaks := resp.Leaks(); len(leaks) > 0 {
		t.Errorf("/gateway/%s answered with secrets: %v", endpoint, leaks)
	}
	return resp
}

func decodeFields(t *testing.T, resp testkit.Response) map[string]any {
	t.Helper()
	var fields map[string]any
	if resp.StatusCode != http.StatusOK || json.Unmarshal(resp.Body, &fields) != nil {
		t.Fatalf("%s %s: %v; want 200 with a JSON object", resp.Request.Method, resp.Request.URL.Path, resp)
	}
	return fields
}

// TestBackendDecryptsThroughTheGateway: after a login, the backend decrypts
// a player's getGroupEnterInfo data without the key; a newer login replaces
// the key, so data fetched before it gets 422 and data fetched after it
// decrypts; rawData signatures verify; a player never seen gets 404.
func TestBackendDecryptsThroughTheGateway(t *testing.T) {
	const appID, secret = "wxcustody", "custody-secret"
	sim, _ := startCustodyGateway(t, appID, secret)
	alice := wechatsim.OpenID(appID, "alice")
	login(t, "alice.1")
	oldData, oldIV := wechatsimtest.GroupEnterInfo(t, sim, appID, alice, "G-before")
	fields := decodeFields(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": oldData, "iv": oldIV}))
	if fields["opengid"] != "G-before" || fields["watermark"].(map[string]any)["appid"] != appID {
		t.Errorf("decrypt answered %v; want the group and this app's watermark", fields)
	}

	login(t, "alice.2")
	assertRefusal(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": oldData, "iv": oldIV}), http.StatusUnprocessableEntity, "decrypt_failed", 0)
	newData, newIV := wechatsimtest.GroupEnterInfo(t, sim, appID, alice, "G-after")
	if fields := decodeFields(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": newData, "iv": newIV})); fields["opengid"] != "G-after" {
		t.Errorf("after a newer login, decrypt answered %v", fields)
	}
	// The first code again (a client's retry), served from the code cache:
	// its older key does not come back.
	calls := sim.Calls()
	login(t, "alice.1")
	if sim.Calls() != calls {
		t.Fatal("the retried code was not served from the cache")
	}
	if fields := decodeFields(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": newData, "iv": newIV})); fields["opengid"] != "G-after" {
		t.Errorf("after a cached retry of an older code, decrypt answered %v", fields)
	}

	const rawData = `{"nickName":"Alice","gender":0}`
	signature, _ := sim.SignRawData(alice, rawData)
	for _, tt := range []struct {
		signature string
		valid     bool
	}{{signature, true}, {strings.ToUpper(signature), true}, {strings.Repeat("0", 40), false}} {
		verdict := decodeFields(t, gatewayCall(t, "verify_signature", map[string]string{"openid": alice, "raw_data": rawData, "signature": tt.signature}))
		if verdict["valid"] != tt.valid {
			t.Errorf("verify_signature of %s: %v; want valid %t", tt.signature, verdict, tt.valid)
		}
	}

	bob := wechatsim.OpenID(appID, "bob")
	assertRefusal(t, gatewayCall(t, "decrypt", map[string]string{"openid": bob, "encrypted_data": newData, "iv": newIV}), http.StatusNotFound, "session_key_unknown", 0)
	assertRefusal(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": "not base64!", "iv": newIV}), http.StatusBadRequest, "invalid_request", 0)
	// Data that decrypts under alice's key but is watermarked for another app.
	foreignData, foreignIV := wechatsimtest.EncryptedData(t, sim, "wxanotherapp", alice, map[string]any{"opengid": "G-elsewhere"})
	assertRefusal(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": foreignData, "iv": foreignIV}), http.StatusUnprocessableEntity, "decrypt_failed", 0)
	assertRefusal(t, gatewayCall(t, "nothing", map[string]string{"openid": alice}), http.StatusNotFound, "invalid_request", 0)
	big := strings.Repeat("A", 300<<10)
	assertRefusal(t, gatewayCall(t, "decrypt", map[string]string{"openid": alice, "encrypted_data": big, "iv": newIV}), http.StatusRequestEntityTooLarge, "invalid_request", 0)
}

var lowerHex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TestPaymentsAreSignedOnTheWay: a backend's unsigned getbalance and pay
// succeed, the simulator checking pay_sig (the env's AppKey) and the
// user-state signature (the player's latest key) over the bytes it got; the
// gateway's sign answers what wx.requestMidasPaymentGameItem accepts; a
// player the gateway never saw gets 404 and WeChat sees nothing.
func TestPaymentsAreSignedOnTheWay(t *testing.T) {
	const appID, secret = "wxpayment", "payment-secret"
	sim, _ := startCustodyGateway(t, appID, secret)
	alice := wechatsim.OpenID(appID, "alice")
	login(t, "alice.1")
	login(t, "alice.2") // only the latest key signs
	sim.Deposit(appID, alice, wechatsim.EnvSandbox, 10)
	body := func(openid, extra string) string {
		// Spacing a re-encoding would change: the signature must cover these bytes.
		return fmt.Sprintf(`{"openid": %q, "offer_id": "1450000000", "ts": 1700000000, "zone_id": "1", "env": 1, "user_ip": "127.0.0.1"%s}`, openid, extra)
	}

	resp := testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(body(alice, "")), "Content-Type: application/json")
	assertErrcode(t, resp, 0)
	assertRequestURI(t, resp, "/wxa/game/getbalance")
	resp = testkit.Send(t, http.MethodPost, "/wxa/game/pay?sig_method=hmac_sha256", strings.NewReader(body(alice, `, "amount": 3, "bill_no": "order-1"`)), "Content-Type: application/json")
	assertErrcode(t, resp, 0)
	assertRequestURI(t, resp, "/wxa/game/pay?sig_method=hmac_sha256")
	if got := sim.Balance(appID, alice, wechatsim.EnvSandbox); got != 7 {
		t.Errorf("balance after paying 3 of 10: %d", got)
	}
	received := sim.APIRequests()
	last := received[len(received)-1]
	q, _ := url.ParseQuery(last.RawQuery)
	if q.Get("sig_method") != "hmac_sha256" || !lowerHex64.MatchString(q.Get("pay_sig")) || !lowerHex64.MatchString(q.Get("signature")) {
		t.Errorf("WeChat got the query %q; want sig_method, pay_sig and signature in lower-case hex", last.RawQuery)
	}

	// A backend that signs itself is left alone (and WeChat judges it).
	resp = testkit.Send(t, http.MethodPost, "/wxa/game/getbalance?sig_method=hmac_sha256&signature=00&pay_sig=00", strings.NewReader(body(alice, "")), "Content-Type: application/json")
	assertErrcode(t, resp, 90011)
	received = sim.APIRequests()
	if q, _ := url.ParseQuery(received[len(received)-1].RawQuery); len(q["pay_sig"]) != 1 || len(q["signature"]) != 1 || q.Get("pay_sig") != "00" || q.Get("signature") != "00" {
		t.Errorf("WeChat got the query %q; want the backend's own signatures alone", received[len(received)-1].RawQuery)
	}

	signData := `{"mode":"goods","offerId":"1450000000","buyQuantity":1,"env":1,"currencyType":"CNY","productId":"sword","goodsPrice":6,"outTradeNo":"o-1","attach":""}`
	signed := decodeFields(t, gatewayCall(t, "sign", map[string]any{"openid": alice, "sign_data": signData, "env": 1}))
	paySig, signature := signed["pay_sig"].(string), signed["signature"].(string)
	if code := sim.RequestMidasPaymentGameItem(appID, alice, signData, paySig, signature); code != 0 {
		t.Errorf("wx.requestMidasPaymentGameItem with the gateway's signatures failed: %d", code)
	}
	// signData names the env the client pays in (0 when it names none): a
	// request for another env, whose AppKey would make a pay_sig the client
	// cannot use, is refused; so is a signData that is not JSON.
	withoutEnv := strings.Replace(signData, `"env":1,`, "", 1)
	for _, refused := range []map[string]any{
		{"openid": alice, "sign_data": signData, "env": 0},
		{"openid": alice, "sign_data": withoutEnv, "env": 1},
		{"openid": alice, "sign_data": strings.Replace(signData, `"env":1`, `"env":"1"`, 1), "env": 1},
		{"openid": alice, "sign_data": "mode=goods&env=1", "env": 1},
	} {
		resp := gatewayCall(t, "sign", refused)
		if err := testkit.CheckRefusal(resp, http.StatusBadRequest, "invalid_request"); err != nil || !strings.Contains(string(resp.Body), "env") {
			t.Errorf("sign of %v: %v; want 400 invalid_request about env (%v)", refused, resp, err)
		}
	}
	production := decodeFields(t, gatewayCall(t, "sign", map[string]any{"openid": alice, "sign_data": withoutEnv, "env": 0}))
	if code := sim.RequestMidasPaymentGameItem(appID, alice, withoutEnv, production["pay_sig"].(string), production["signature"].(string)); code != 0 {
		t.Errorf("wx.requestMidasPaymentGameItem of a signData without env, signed for env 0, failed: %d", code)
	}
	mac := hmac.New(sha256.New, []byte(custodySandboxAppKey))
	mac.Write([]byte("requestMidasPaymentGameItem&" + signData))
	if paySig != hex.EncodeToString(mac.Sum(nil)) {
		t.Errorf("pay_sig %s is not HMAC-SHA256(sandbox AppKey, requestMidasPaymentGameItem&signData)", paySig)
	}

	calls := sim.CallsTo("/wxa/game/getbalance")
	resp = testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(body(wechatsim.OpenID(appID, "bob"), "")), "Content-Type: application/json")
	assertRefusal(t, resp, http.StatusNotFound, "session_key_unknown", 0)
	// Nothing to sign for: a body without openid and env, an env other than 0 or 1.
	assertRefusal(t, testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(`{"offer_id":"1"}`)), http.StatusBadRequest, "invalid_request", 0)
	assertRefusal(t, testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(strings.Replace(body(alice, ""), `"env": 1`, `"env": 2`, 1))), http.StatusBadRequest, "invalid_request", 0)
	if got := sim.CallsTo("/wxa/game/getbalance"); got != calls {
		t.Errorf("WeChat got %d getbalance calls it should not have", got-calls)
	}
	if leaks := resp.Leaks(); len(leaks) > 0 {
		t.Errorf("a refusal showed secrets: %v", leaks)
	}
}

// TestSessionKeyChecksAndRotation: check_session asks WeChat about the
// kept key (false once the player logged in elsewhere); a reset through
// wechat_api moves the custody to the new key, which the backend never
// sees, and payments keep working with it.
func TestSessionKeyChecksAndRotation(t *testing.T) {
	const appID, secret = "wxrotate", "rotate-secret"
	sim, simURL := startCustodyGateway(t, appID, secret)
	alice := wechatsim.OpenID(appID, "alice")
	login(t, "alice.1")
	assertSessionValid(t, alice, "after a login")

	resp := testkit.Get(t, "/wxa/resetusersessionkey?openid="+url.QueryEscape(alice))
	assertResetWithoutKey(t, resp, alice)
	assertRequestURI(t, resp, "/wxa/resetusersessionkey?openid="+url.QueryEscape(alice))
	assertSessionValid(t, alice, "after a reset (the custody must follow the new key)")
	sim.Deposit(appID, alice, wechatsim.EnvProduction, 1)
	body := fmt.Sprintf(`{"openid":%q,"offer_id":"1","ts":1700000000,"zone_id":"1","env":0,"user_ip":"127.0.0.1"}`, alice)
	assertErrcode(t, testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(body), "Content-Type: application/json"), 0)

	// The player logs in with a code the gateway never sees: its key is stale.
	direct, err := http.Get(simURL + "/sns/jscode2session?grant_type=authorization_code&appid=" + appID + "&secret=" + secret + "&js_code=alice.2")
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	if verdict := decodeFields(t, gatewayCall(t, "check_session", map[string]string{"openid": alice})); verdict["valid"] != false {
		t.Errorf("check_session after a login the gateway never saw: %v; want valid false", verdict)
	}
}

// TestResetSignedByTheGatewayDuringALogin: WeChat has reset the key the
// gateway signed with, and while its answer is on the way the player logs
// in again: the backend still gets the answer without the new key (the
// gateway signed, whatever it keeps by then), and the custody keeps the
// newer login's key.
func TestResetSignedByTheGatewayDuringALogin(t *testing.T) {
	const appID, secret = "wxresetrace", "resetrace-secret"
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	// WeChat answers the reset at once; the gate holds the answer.
	answers := make(chan *httptest.ResponseRecorder, 1)
	gate := testkit.NewGate(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		answer := <-answers
		w.WriteHeader(answer.Code)
		_, _ = w.Write(answer.Body.Bytes())
	}))
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/wxa/resetusersessionkey" {
			sim.ServeHTTP(w, r)
			return
		}
		answer := httptest.NewRecorder()
		sim.ServeHTTP(answer, r)
		answers <- answer
		gate.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(wechat.Close)
	startCustodyCaddy(t, appID, secret, wechat.URL)
	alice := wechatsim.OpenID(appID, "alice")
	login(t, "alice.1")

	reset := make(chan testkit.Response, 1)
	go func() {
		resp, err := testkit.Fetch(context.Background(), http.MethodGet, "/wxa/resetusersessionkey?openid="+url.QueryEscape(alice), nil)
		if err != nil {
			t.Error(err)
		}
		reset <- resp
	}()
	gate.AwaitArrivals(t, 1)
	login(t, "alice.2")
	gate.Open()
	resp := <-reset
	if resp.Response == nil {
		t.FailNow()
	}
	assertResetWithoutKey(t, resp, alice)
	assertSessionValid(t, alice, "after the reset and a newer login (the custody must keep the newer login's key)")
}

// assertResetWithoutKey checks that resp is WeChat's answer to a reset of
// openid's key, without the new key.
func assertResetWithoutKey(t *testing.T, resp testkit.Response, openid string) {
	t.Helper()
	assertErrcode(t, resp, 0)
	var answer map[string]any
	_ = json.Unmarshal(resp.Body, &answer)
	if _, has := answer["session_key"]; has || answer["openid"] != openid || len(resp.Leaks()) > 0 {
		t.Errorf("the backend got %s; want WeChat's answer without the new key", resp.Body)
	}
}

// assertSessionValid checks that check_session finds the kept key of
// openid valid at WeChat.
func assertSessionValid(t *testing.T, openid, when string) {
	t.Helper()
	if verdict := decodeFields(t, gatewayCall(t, "check_session", map[string]string{"openid": openid})); verdict["valid"] != true {
		t.Errorf("check_session %s: %v; want valid", when, verdict)
	}
}

// TestResetSignedByTheBackendKeepsItsNewKey: a backend that holds the key
// (forward_session_key) and signs resetusersessionkey itself gets WeChat's
// answer with the new key, and the custody follows it too.
func TestResetSignedByTheBackendKeepsItsNewKey(t *testing.T) {
	const appID, secret = "wxselfreset", "selfreset-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	// Without the debug option: reverse_proxy logs X-WX-SESSION-KEY at debug.
	quiet := strings.Replace(testkit.GlobalOptions(""), "\tdebug\n", "", 1)
	testkit.StartCaddy(t, quiet+testkit.Site(
		testkit.Route("game", appID, secret, simURL, backend, "forward_session_key"),
		testkit.Handle("", wechatAPI(appID, secret, simURL)),
	))
	alice := wechatsim.OpenID(appID, "alice")
	login(t, "alice.1")
	key := backend.Last(t).Header.Get("X-WX-SESSION-KEY")
	if key == "" {
		t.Fatal("the backend got no X-WX-SESSION-KEY")
	}
	reset := url.Values{"openid": {alice}, "signature": {wechatsim.SessionSignature(key)}, "sig_method": {"hmac_sha256"}}
	resp := testkit.Get(t, "/wxa/resetusersessionkey?"+reset.Encode())
	assertErrcode(t, resp, 0)
	var answer struct {
		SessionKey string `json:"session_key"`
	}
	if json.Unmarshal(resp.Body, &answer) != nil || answer.SessionKey == "" || answer.SessionKey == key {
		t.Errorf("the backend that signed the reset got %s; want WeChat's answer with the new key", resp.Body)
	}
	assertSessionValid(t, alice, "after the backend's reset (the custody must follow the new key)")
}

// TestFleetSignsWithAnotherGatewaysLogin: a player logs in at gateway A;
// gateway B's wechat_api, sharing A's Redis, decrypts the player's data and
// signs their payments; Redis holds none of it readable.
func TestFleetSignsWithAnotherGatewaysLogin(t *testing.T) {
	const appID, secret = "wxcustodyfleet", "custody-fleet-secret"
	testkit.Forbid(secret)
	rdb := testkit.StartRedis(t)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: appID, Secret: secret, AppKey: custodyAppKey, SandboxAppKey: custodySandboxAppKey},
	}})
	redisBlock := fmt.Sprintf("redis {\n\t\taddress %s\n\t}", rdb.Addr())
	backend := testkit.NewBackend(t, nil)
	gatewayA := testkit.StartGateway(t, func(g *testkit.Gateway) string {
		return g.Site(testkit.WechatLogin(appID, secret, simURL, redisBlock), testkit.ProxyTo(backend))
	})
	gatewayB := testkit.StartGateway(t, func(g *testkit.Gateway) string {
		payment := fmt.Sprintf("virtual_payment {\n\t\tapp_key %s\n\t}", custodyAppKey)
		return g.Site(wechatAPI(appID, secret, simURL, redisBlock, payment))
	})
	send := func(g *testkit.Gateway, method, path, body string) testkit.Response {
		t.Helper()
		req, _ := http.NewRequest(method, g.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := testkit.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if leaks := resp.Leaks(); len(leaks) > 0 {
			t.Errorf("%s answered with secrets: %v", path, leaks)
		}
		return resp
	}

	alice := wechatsim.OpenID(appID, "alice")
	if resp := send(gatewayA, http.MethodGet, "/wx/login?code=alice.1", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("login at gateway A: %v", resp)
	}
	data, iv := wechatsimtest.GroupEnterInfo(t, sim, appID, alice, "G-fleet")
	raw, _ := json.Marshal(map[string]string{"openid": alice, "encrypted_data": data, "iv": iv})
	if fields := decodeFields(t, send(gatewayB, http.MethodPost, "/gateway/decrypt", string(raw))); fields["opengid"] != "G-fleet" {
		t.Errorf("gateway B decrypted %v", fields)
	}
	sim.Deposit(appID, alice, wechatsim.EnvProduction, 5)
	body := fmt.Sprintf(`{"openid":%q,"offer_id":"1450000000","ts":1700000000,"zone_id":"1","env":0,"user_ip":"127.0.0.1"%%s}`, alice)
	assertErrcode(t, send(gatewayB, http.MethodPost, "/wxa/game/getbalance", fmt.Sprintf(body, "")), 0)
	assertErrcode(t, send(gatewayB, http.MethodPost, "/wxa/game/pay", fmt.Sprintf(body, `,"amount":2,"bill_no":"fleet-1"`)), 0)
	if got := sim.Balance(appID, alice, wechatsim.EnvProduction); got != 3 {
		t.Errorf("balance %d after paying 2 of 5 through gateway B", got)
	}

	// The player logs in again at A: B signs with the new key at once.
	if resp := send(gatewayA, http.MethodGet, "/wx/login?code=alice.2", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("second login at gateway A: %v", resp)
	}
	assertErrcode(t, send(gatewayB, http.MethodPost, "/wxa/game/getbalance", fmt.Sprintf(body, "")), 0)

	client := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
	defer client.Close()
	ctx := context.Background()
	skeys := 0
	for iter := client.Scan(ctx, 0, "*", 100).Iterator(); iter.Next(ctx); {
		key := iter.Val()
		value, _ := client.Get(ctx, key).Result() // a budget is a hash of counts: read as ""
		if strings.Contains(key, ":skey:") {
			skeys++
		}
		for _, s := range append(testkit.Forbidden(), alice) {
			if s != "" && (strings.Contains(key, s) || strings.Contains(value, s)) {
				t.Errorf("Redis key %q holds %q readable", key, s)
			}
		}
	}
	if skeys != 1 {
		t.Errorf("%d session_key records in Redis; want 1 (the player's newest)", skeys)
	}
}

// TestPaymentsWithoutVirtualPaymentGoAsSent: without a virtual_payment
// block the gateway signs no payment call (the backend's own signing keeps
// working): WeChat gets the call as sent and judges it.
func TestPaymentsWithoutVirtualPaymentGoAsSent(t *testing.T) {
	sim, _ := startGateway(t, "wxnopayment", "nopayment-secret", "nopayment-secret")
	body := fmt.Sprintf(`{"openid":%q,"offer_id":"1","ts":1700000000,"zone_id":"1","env":0}`, wechatsim.OpenID("wxnopayment", "alice"))
	assertErrcode(t, testkit.Send(t, http.MethodPost, "/wxa/game/getbalance", strings.NewReader(body), "Content-Type: application/json"), 90011)
	received := sim.APIRequests()
	if q, _ := url.ParseQuery(received[len(received)-1].RawQuery); q.Has("pay_sig") || q.Has("signature") {
		t.Errorf("WeChat got %q: signatures added without virtual_payment", received[len(received)-1].RawQuery)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// newAPIWalkthrough is the walk-through of wechat_api, on the listener at
// apiURL that only the game backend can reach: the backend calls WeChat's
// msg_sec_check without an access_token, an SDK gets the gateway's token,
// and the backend decrypts and signs for a player (the simulator at
// wechatURL stands in for her client's open data).
func newAPIWalkthrough(apiURL, wechatURL string, sim *wechatsim.Server) *walkthrough {
	alice := wechatsim.OpenID(demoApp.AppID, "alice")
	body := fmt.Sprintf(`{"content":"gg, well played","version":2,"scene":2,"openid":%q}`, alice)
	payment := func(openid, extra string) string {
		return fmt.Sprintf(`{"openid":%q,"offer_id":"1450000000","ts":1700000000,"zone_id":"1","env":0,"user_ip":"127.0.0.1"%s}`, openid, extra)
	}
	signData := `{"mode":"goods","offerId":"1450000000","buyQuantity":1,"env":0,"currencyType":"CNY","platform":"android","zoneId":"1","productId":"sword","goodsPrice":6,"outTradeNo":"demo-1","attach":""}`
	signRequest, _ := json.Marshal(map[string]any{"openid": alice, "env": 0, "sign_data": signData})
	return &walkthrough{baseURL: apiURL, sim: sim, steps: []step{
		{
			title:    "wechat_api: the game backend checks a player's text with WeChat's msg_sec_check, without an access_token. The gateway fetches one from stable_token, adds it, and passes WeChat's answer back as it is.",
			path:     "/wxa/msg_sec_check",
			jsonBody: body,
			expect:   all(wechatAnswered("pass"), madeWechatCalls(2)),
		},
		{
			title:    "wechat_api: the same call again. The gateway reuses its token, so the only WeChat call is the check itself.",
			path:     "/wxa/msg_sec_check",
			jsonBody: body,
			expect:   all(wechatAnswered("pass"), madeWechatCalls(1)),
		},
		{
			title:  "wechat_api: a backend SDK that fetches tokens itself gets the gateway's, with no secret and no WeChat call, so it can never invalidate the gateway's token.",
			path:   "/cgi-bin/token?grant_type=client_credential&appid=" + demoApp.AppID + "&secret=unused",
			expect: all(hasTokenAnswer, madeWechatCalls(0)),
		},
		{
			title:    "Session keys stay at the gateway: alice's client sends the backend her wx.getGroupEnterInfo data (the demo fetches it from the simulator, encrypted with her latest session_key), and the backend has the gateway decrypt it. The gateway checks the watermark names this app. No WeChat call.",
			path:     "/gateway/decrypt",
			bodyFrom: wechatURL + groupEnterInfoPath + "?player=alice",
			expect:   all(decrypted(demoGroup), madeWechatCalls(0)),
		},
		{
			title:    "The backend asks the gateway to sign alice's wx.requestMidasPaymentGameItem. The gateway keeps her newest session_key from her login; the signature and paySig it answers are what WeChat's client accepts. No WeChat call.",
			path:     "/gateway/sign",
			jsonBody: string(signRequest),
			expect:   all(signedForClient(sim, alice, signData), madeWechatCalls(0)),
		},
		{
			title:    "Alice has bought 10 coins. The backend asks her balance with /wxa/game/getbalance and no signature: the gateway adds sig_method, signature (her session_key) and pay_sig (the AppKey), and WeChat accepts them.",
			path:     "/wxa/game/getbalance",
			jsonBody: payment(alice, ""),
			before:   func() error { sim.Deposit(demoApp.AppID, alice, wechatsim.EnvProduction, 10); return nil },
			expect:   all(paymentAnswered(10), madeWechatCalls(1)),
		},
		{
			title:    "The backend spends 6 of alice's coins with /wxa/game/pay, unsigned too.",
			path:     "/wxa/game/pay",
			jsonBody: payment(alice, `,"amount":6,"bill_no":"demo-order-1"`),
			expect:   all(paymentAnswered(4), madeWechatCalls(1)),
		},
		{
			title:    "Bob never logged in through the gateway: 404 session_key_unknown, and nothing reaches WeChat.",
			path:     "/wxa/game/getbalance",
			jsonBody: payment(wechatsim.OpenID(demoApp.AppID, "bob"), ""),
			expect:   all(refused(http.StatusNotFound, "session_key_unknown"), madeWechatCalls(0)),
		},
	}}
}

// groupEnterInfoPath serves, beside the simulator, what a player's client
// gets from wx.getGroupEnterInfo, as the body of a /gateway/decrypt
// request: {"openid","encrypted_data","iv"}, encrypted with the player's
// latest session_key.
const groupEnterInfoPath = "/demo/group_enter_info"

// demoGroup is the group chat the demo's players opened the game from.
const demoGroup = "G-demo-group"

// withGroupEnterInfo serves groupEnterInfoPath for ?player= of the demo app,
// and everything else with next.
func withGroupEnterInfo(sim *wechatsim.Server, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != groupEnterInfoPath {
			next.ServeHTTP(w, r)
			return
		}
		openid := wechatsim.OpenID(demoApp.AppID, r.URL.Query().Get("player"))
		plaintext, _ := json.Marshal(map[string]any{"opengid": demoGroup, "chat_type": 3,
			"watermark": map[string]any{"appid": demoApp.AppID, "timestamp": time.Now().Unix()}})
		data, iv, ok := sim.Encrypt(openid, plaintext)
		if !ok {
			http.Error(w, "that player has not logged in yet", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"openid": openid, "encrypted_data": data, "iv": iv})
	})
}

// decrypted expects the gateway's decryption of group enter info for
// opengid.
func decrypted(opengid string) func(*answer) error {
	return func(a *answer) error {
		var body struct {
			OpenGID string `json:"opengid"`
		}
		if a.status != http.StatusOK || json.Unmarshal(a.body, &body) != nil || body.OpenGID != opengid {
			return fmt.Errorf("got %d %s; want the decrypted data with opengid %q", a.status, a.body, opengid)
		}
		return nil
	}
}

// signedForClient expects the gateway's signatures of signData for openid,
// as the simulator's wx.requestMidasPaymentGameItem judges them.
func signedForClient(sim *wechatsim.Server, openid, signData string) func(*answer) error {
	return func(a *answer) error {
		var body struct {
			Signature string `json:"signature"`
			PaySig    string `json:"pay_sig"`
		}
		if a.status != http.StatusOK || json.Unmarshal(a.body, &body) != nil {
			return fmt.Errorf("got %d %s; want the signature and pay_sig", a.status, a.body)
		}
		if code := sim.RequestMidasPaymentGameItem(demoApp.AppID, openid, signData, body.PaySig, body.Signature); code != 0 {
			return fmt.Errorf("wx.requestMidasPaymentGameItem would fail with %d", code)
		}
		return nil
	}
}

// paymentAnswered expects a payment API's success with balance.
func paymentAnswered(balance int64) func(*answer) error {
	return func(a *answer) error {
		var body struct {
			Errcode int   `json:"errcode"`
			Balance int64 `json:"balance"`
		}
		if a.status != http.StatusOK || json.Unmarshal(a.body, &body) != nil || body.Errcode != 0 || body.Balance != balance {
			return fmt.Errorf("got %d %s; want errcode 0 and balance %d", a.status, a.body, balance)
		}
		return nil
	}
}

// printAPIGuide tells a person what to try against wechat_api.
func (w *walkthrough) printAPIGuide(out io.Writer) {
	fmt.Fprintf(out, "wechat_api listens on %s, for the game backend only (loopback):\n", w.baseURL)
	w.printSteps(out)
}

// wechatCalls is every call the simulator has received.
func wechatCalls(sim *wechatsim.Server) int64 {
	var n int64
	for _, path := range []string{"/sns/jscode2session", "/cgi-bin/stable_token", "/cgi-bin/token", "/wxa/msg_sec_check", "/wxa/game/getbalance", "/wxa/game/pay"} {
		n += sim.CallsTo(path)
	}
	return n
}

// wechatAnswered expects WeChat's msg_sec_check answer with suggest.
func wechatAnswered(suggest string) func(*answer) error {
	return func(a *answer) error {
		var body struct {
			Errcode int
			Result  struct{ Suggest string }
		}
		if a.status != http.StatusOK || json.Unmarshal(a.body, &body) != nil || body.Errcode != 0 || body.Result.Suggest != suggest {
			return fmt.Errorf("got %d %s; want WeChat's answer with errcode 0 and suggest %q", a.status, a.body, suggest)
		}
		return nil
	}
}

func hasTokenAnswer(a *answer) error {
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if a.status != http.StatusOK || json.Unmarshal(a.body, &body) != nil || body.AccessToken == "" || body.ExpiresIn <= 0 {
		return fmt.Errorf("got %d %s; want an access_token and its expires_in", a.status, a.body)
	}
	return nil
}

func madeWechatCalls(n int64) func(*answer) error {
	return func(a *answer) error {
		if a.wechatCalls != n {
			return fmt.Errorf("%d WeChat calls, want %d", a.wechatCalls, n)
		}
		return nil
	}
}

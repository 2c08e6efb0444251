package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// newAPIWalkthrough is the walk-through of wechat_api, on the listener at
// apiURL that only the game backend can reach: the backend calls WeChat's
// msg_sec_check without an access_token, and an SDK gets the gateway's token.
func newAPIWalkthrough(apiURL string, sim *wechatsim.Server) *walkthrough {
	body := fmt.Sprintf(`{"content":"gg, well played","version":2,"scene":2,"openid":%q}`, wechatsim.OpenID(demoApp.AppID, "alice"))
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
	}}
}

// printAPIGuide tells a person what to try against wechat_api.
func (w *walkthrough) printAPIGuide(out io.Writer) {
	fmt.Fprintf(out, "wechat_api listens on %s, for the game backend only (loopback):\n", w.baseURL)
	w.printSteps(out)
}

// wechatCalls is every call the simulator has received.
func wechatCalls(sim *wechatsim.Server) int64 {
	var n int64
	for _, path := range []string{"/sns/jscode2session", "/cgi-bin/stable_token", "/cgi-bin/token", "/wxa/msg_sec_check"} {
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

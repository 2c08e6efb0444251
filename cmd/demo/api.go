package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// apiStep is a call the game backend makes to WeChat's server API through
// wechat_api, on the listener only it can reach.
type apiStep struct {
	title, method, path, jsonBody string
	expect                        func(a *answer) error
}

// apiSteps show a backend calling msg_sec_check without an access_token,
// and an SDK getting the gateway's token.
func apiSteps() []apiStep {
	body := fmt.Sprintf(`{"content":"gg, well played","version":2,"scene":2,"openid":%q}`, wechatsim.OpenID(demoApp.AppID, "alice"))
	return []apiStep{
		{
			title:    "The game backend checks a player's text with WeChat's msg_sec_check, without an access_token: wechat_api fetches one from stable_token, adds it, and passes WeChat's answer back as it is.",
			method:   http.MethodPost,
			path:     "/wxa/msg_sec_check",
			jsonBody: body,
			expect:   all(wechatAnswered("pass"), madeWechatCalls(2)),
		},
		{
			title:    "The same call again: the gateway reuses its token, so the only WeChat call is the check itself.",
			method:   http.MethodPost,
			path:     "/wxa/msg_sec_check",
			jsonBody: body,
			expect:   all(wechatAnswered("pass"), madeWechatCalls(1)),
		},
		{
			title:  "A backend SDK that fetches tokens itself gets the gateway's (no secret needed, no WeChat call), so it can never invalidate the gateway's token.",
			method: http.MethodGet,
			path:   "/cgi-bin/token?grant_type=client_credential&appid=" + demoApp.AppID + "&secret=unused",
			expect: all(hasTokenAnswer, madeWechatCalls(0)),
		},
	}
}

func (s apiStep) curl(apiURL string) string {
	args := []string{"curl", "-i"}
	if s.jsonBody != "" {
		args = append(args, "-H", shellQuote("Content-Type: application/json"), "-d", shellQuote(s.jsonBody))
	}
	return strings.Join(append(args, shellQuote(apiURL+s.path)), " ")
}

// printAPIGuide tells a person what to try against wechat_api.
func printAPIGuide(out io.Writer, apiURL string) {
	fmt.Fprintf(out, "wechat_api listens on %s, for the game backend only (loopback):\n", apiURL)
	for i, s := range apiSteps() {
		fmt.Fprintf(out, "\n%s\n%s\n", comment(fmt.Sprintf("A%d. %s", i+1, s.title)), s.curl(apiURL))
	}
	fmt.Fprintln(out)
}

// checkAPI runs the wechat_api steps, printing each answer, and reports
// whether all of them were as expected.
func checkAPI(out io.Writer, apiURL string, sim *wechatsim.Server) bool {
	client := &http.Client{Timeout: 30 * time.Second}
	steps := apiSteps()
	failed := 0
	for i, s := range steps {
		fmt.Fprintf(out, "\n== A%d. %s\n$ %s\n", i+1, s.title, s.curl(apiURL))
		a, err := sendAPIStep(client, apiURL, s, sim)
		if err == nil {
			printAnswer(out, a)
			if !bytes.HasSuffix(a.body, []byte("\n")) { // WeChat ends its JSON without one
				fmt.Fprintln(out)
			}
			err = s.expect(a)
		}
		if err != nil {
			failed++
			fmt.Fprintf(out, "FAIL: %v\n", err)
			continue
		}
		fmt.Fprintln(out, "ok")
	}
	if failed > 0 {
		fmt.Fprintf(out, "\nwechat_api check: %d of %d steps did not behave as documented\n", failed, len(steps))
		return false
	}
	fmt.Fprintf(out, "\nwechat_api check: all %d steps behaved as documented\n", len(steps))
	return true
}

func sendAPIStep(client *http.Client, apiURL string, s apiStep, sim *wechatsim.Server) (*answer, error) {
	req, err := http.NewRequest(s.method, apiURL+s.path, strings.NewReader(s.jsonBody))
	if err != nil {
		return nil, err
	}
	if s.jsonBody != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	callsBefore := wechatCalls(sim)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &answer{status: resp.StatusCode, header: resp.Header, body: body, wechatCalls: wechatCalls(sim) - callsBefore}, nil
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

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/gamebackend"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// step is one request of the walk-through: a person gets it as a curl
// command; -check sends it and judges the answer with expect.
type step struct {
	title string // what the step shows, and what to look for
	path  string // with the query
	// header is sent as is; a spoofed identity goes here.
	header [][2]string
	// jsonBody makes the step a POST with this JSON body.
	jsonBody string
	// bodyFrom makes the step a POST of the JSON body this URL answers
	// when the step is sent (data a player's client would hold by then).
	bodyFrom string
	// bearer sends the token saved by an earlier step.
	bearer bool
	// saveToken keeps the answer's X-WX-SESSION as $TOKEN.
	saveToken bool
	// at are the gateways (base URLs) the step is sent to, all at once;
	// by default the walk-through's own.
	at []string
	// before is done first by -check: a fault, such as Redis stopping,
	// that the title describes.
	before func() error
	expect func(a *answer) error
}

// answer is what -check received for a step.
type answer struct {
	status int
	header http.Header
	body   []byte
	// wechatCalls is how many calls the simulator received meanwhile.
	wechatCalls int64
	// forwarded is how many requests reached the game backend meanwhile;
	// backendHeaders are the X-WX- headers of the latest, in any spelling.
	forwarded      int
	backendHeaders http.Header
	// replies are each gateway's answer (status, header and body) when the
	// step went to several; the counts above are the step's.
	replies []*answer
}

// backend decodes the game backend's echo of what it received.
func (a *answer) backend() (gamebackend.Answer, error) {
	var got gamebackend.Answer
	if a.status != http.StatusOK {
		return got, fmt.Errorf("status %d, want 200 from the backend", a.status)
	}
	if err := json.Unmarshal(a.body, &got); err != nil {
		return got, fmt.Errorf("not the backend's answer: %v", err)
	}
	return got, nil
}

type walkthrough struct {
	baseURL string
	sim     *wechatsim.Server
	backend *backendLog
	steps   []step
	token   string // saved by a saveToken step, for -check
}

func newWalkthrough(baseURL string, sim *wechatsim.Server, backend *backendLog) *walkthrough {
	alice := wechatsim.OpenID(demoApp.AppID, "alice")
	bob := wechatsim.OpenID(demoApp.AppID, "bob")
	carol := wechatsim.OpenID(demoApp.AppID, "carol")
	const carolBody = `{"code":"carol.1"}`
	w := &walkthrough{baseURL: baseURL, sim: sim, backend: backend}
	w.steps = []step{
		{
			title:  "Log in as alice. The backend's JSON shows the X-WX-OPENID, X-WX-UNIONID, X-WX-APPID and X-WX-SOURCE (wx_client, which Cloud Hosting backends check before trusting the rest) it received; the response carries a session token in X-WX-SESSION.",
			path:   "/wx/login?code=alice.1",
			expect: all(forwardedAs(alice, 1), hasUnionID(wechatsim.UnionID("alice")), issuesToken),
		},
		{
			title:  "The same code again (a client retrying): the same identity, served from the cache, with no WeChat call.",
			path:   "/wx/login?code=alice.1",
			expect: forwardedAs(alice, 0),
		},
		{
			title:  "A fresh code for alice: one more WeChat call, and the same openid (it is stable per player and app).",
			path:   "/wx/login?code=alice.2",
			expect: forwardedAs(alice, 1),
		},
		{
			title:    "Log in as carol the way a mini-game does, with the code in a JSON body: the backend gets the body byte for byte.",
			path:     "/wx/login",
			jsonBody: carolBody,
			expect:   all(forwardedAs(carol, 1), bodyBytes(len(carolBody))),
		},
		{
			title:     "Log in as alice once more and keep her session token in $TOKEN.",
			path:      "/wx/login?code=alice.3",
			saveToken: true,
			expect:    all(forwardedAs(alice, 1), issuesToken),
		},
		{
			title:  "Play as alice with her token: the backend gets her identity, and WeChat is not called.",
			path:   "/game/state",
			bearer: true,
			expect: forwardedAs(alice, 0),
		},
		{
			title:  "Alice claims to be bob with a forged X-WX-OPENID, and sends a forged X-WX-SESSION-KEY: both are stripped. The backend still sees alice, and no session key (this gateway does not forward_session_key).",
			path:   "/game/state",
			header: [][2]string{{"X-WX-OPENID", bob}, {"X-WX-SESSION-KEY", "forged"}},
			bearer: true,
			expect: all(forwardedAs(alice, 0), backendSawNo("X-WX-SESSION-KEY")),
		},
		{
			title:  "A forged X-WX-OPENID without a session token: refused with 401 invalid_session, nothing reaches the backend.",
			path:   "/game/state",
			header: [][2]string{{"X-WX-OPENID", bob}},
			expect: refused(http.StatusUnauthorized, "invalid_session"),
		},
		{
			title:  "The same game on Douyin: alice logs in with tt.login's code at /tt/login. The same backend gets her Douyin identity in Douyin Cloud's headers (X-TT-OPENID, X-TT-UNIONID, X-TT-APPID: its platform is douyin), and the response carries her Douyin session in X-TT-SESSION.",
			path:   "/tt/login?code=alice.1",
			expect: all(sawPlatformIdentity("douyin", wechatsim.Douyin.OpenID(demoDouyinApp.AppID, "alice"), ""), forwardedRequests(1), hasHeader("X-TT-SESSION")),
		},
		{
			title:  "A Douyin player who is not logged in to Douyin sends tt.login's anonymous_code: the backend gets X-TT-ANONYMOUS-OPENID, and no openid.",
			path:   "/tt/login?anonymous_code=phone.1",
			expect: all(sawPlatformIdentity("douyin", "", wechatsim.AnonymousOpenID(demoDouyinApp.AppID, "phone")), forwardedRequests(1), hasHeader("X-TT-SESSION")),
		},
		{
			title:  "A login without a code: 400 invalid_request.",
			path:   "/wx/login",
			expect: refused(http.StatusBadRequest, "invalid_request"),
		},
		{
			title:  "A code WeChat does not know: 401 invalid_code.",
			path:   "/wx/login?code=invalid.1",
			expect: refused(http.StatusUnauthorized, "invalid_code"),
		},
		{
			title:  "A player WeChat has blocked: 403 user_blocked.",
			path:   "/wx/login?code=blocked.1",
			expect: refused(http.StatusForbidden, "user_blocked"),
		},
		{
			title:  "WeChat failing (errcode -1): retried, then 503 wechat_unavailable with Retry-After.",
			path:   "/wx/login?code=busy.1",
			expect: all(refused(http.StatusServiceUnavailable, "wechat_unavailable"), hasHeader("Retry-After")),
		},
	}
	return w
}

// targets are the base URLs s is sent to.
func (w *walkthrough) targets(s step) []string {
	if len(s.at) > 0 {
		return s.at
	}
	return []string{w.baseURL}
}

// curl is the command a person runs for s: several at once, in the
// background, when s goes to several gateways.
func (w *walkthrough) curl(s step) string {
	args := []string{"curl"}
	switch {
	case s.saveToken:
		args = append(args, "-s", "-o", "/dev/null", "-D", "-")
	case len(s.at) > 1:
		args = append(args, "-s") // answers arriving together: the bodies only, a line each
	default:
		args = append(args, "-i")
	}
	for _, h := range s.header {
		args = append(args, "-H", shellQuote(h[0]+": "+h[1]))
	}
	if s.bearer {
		args = append(args, "-H", `"Authorization: Bearer $TOKEN"`)
	}
	switch {
	case s.jsonBody != "":
		args = append(args, "-H", shellQuote("Content-Type: application/json"), "-d", shellQuote(s.jsonBody))
	case s.bodyFrom != "":
		args = append(args, "-H", shellQuote("Content-Type: application/json"), "-d", "@-")
	}
	var cmds []string
	for _, base := range w.targets(s) {
		cmds = append(cmds, strings.Join(append(args, shellQuote(base+s.path)), " "))
	}
	if len(cmds) > 1 {
		return strings.Join(cmds, " & ") + " & wait"
	}
	cmd := cmds[0]
	if s.bodyFrom != "" {
		cmd = "curl -s " + shellQuote(s.bodyFrom) + " | " + cmd
	}
	if s.saveToken {
		return `TOKEN=$(` + cmd + ` | awk 'tolower($1) == "x-wx-session:" {print $2}' | tr -d '\r'); echo "$TOKEN"`
	}
	return cmd
}

// comment renders text as shell comment lines of about 78 columns at most.
func comment(text string) string {
	var b strings.Builder
	line, prefix := "#", "#"
	for _, word := range strings.Fields(text) {
		if len(line)+1+len(word) > 78 && line != prefix {
			b.WriteString(line + "\n")
			line, prefix = "#   ", "#   "
		}
		line += " " + word
	}
	b.WriteString(line)
	return b.String()
}

// shellQuote quotes s for sh; the walk-through's strings hold no single quote.
func shellQuote(s string) string { return "'" + s + "'" }

// printGuide tells a person what is running and what to try.
func (w *walkthrough) printGuide(out io.Writer, backend, wechat string) {
	fmt.Fprintf(out, `
The wechat_login demo is running (Ctrl-C stops it):

  %s   Caddy with wechat_login (cmd/demo/Caddyfile)
  http://%s   the sample game backend: answers with the X-WX-* headers it got
  http://%s   the WeChat simulator: a code is <player> or <player>.<anything>;
                           the players invalid, blocked and busy fail

Try these in another terminal (bash or zsh). This one shows each WeChat call,
and Caddy's access log, in which no login code appears.
`, w.baseURL, backend, wechat)
	w.printSteps(out)
}

// printSteps prints each step as a numbered comment and its command.
func (w *walkthrough) printSteps(out io.Writer) {
	for i, s := range w.steps {
		fmt.Fprintf(out, "\n%s\n%s\n", comment(fmt.Sprintf("%d. %s", i+1, s.title)), w.curl(s))
	}
	fmt.Fprintln(out)
}

// check runs every step against the demo, printing each answer, and reports
// whether all of them were as expected.
func (w *walkthrough) check(out io.Writer) bool {
	client := &http.Client{Timeout: 30 * time.Second}
	failed := 0
	for i, s := range w.steps {
		fmt.Fprintf(out, "\n== %d. %s\n$ %s\n", i+1, s.title, w.curl(s))
		var a *answer
		var err error
		if s.before != nil {
			err = s.before()
		}
		if err == nil {
			a, err = w.send(client, s)
		}
		if err == nil {
			printAnswer(out, a)
			err = s.expect(a)
		}
		if err == nil && s.saveToken {
			w.token = a.header.Get("X-WX-SESSION")
		}
		if err != nil {
			failed++
			fmt.Fprintf(out, "FAIL: %v\n", err)
			continue
		}
		fmt.Fprintln(out, "ok")
	}
	if failed > 0 {
		fmt.Fprintf(out, "\ndemo check: %d of %d steps did not behave as documented\n", failed, len(w.steps))
		return false
	}
	fmt.Fprintf(out, "\ndemo check: all %d steps behaved as documented\n", len(w.steps))
	return true
}

// send sends s to each of its targets at once and counts what it caused.
func (w *walkthrough) send(client *http.Client, s step) (*answer, error) {
	callsBefore := wechatCalls(w.sim)
	forwardedBefore, _ := w.backend.seen()
	targets := w.targets(s)
	replies := make([]*answer, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, base := range targets {
		wg.Go(func() { replies[i], errs[i] = w.request(client, s, base) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	a := replies[0]
	if len(replies) > 1 {
		a = &answer{replies: replies}
	}
	forwarded, backendHeaders := w.backend.seen()
	a.wechatCalls, a.forwarded, a.backendHeaders = wechatCalls(w.sim)-callsBefore, forwarded-forwardedBefore, backendHeaders
	return a, nil
}

// request sends s to the gateway at base.
func (w *walkthrough) request(client *http.Client, s step, base string) (*answer, error) {
	method, jsonBody := http.MethodGet, s.jsonBody
	if s.bodyFrom != "" {
		var err error
		if jsonBody, err = fetchBody(client, s.bodyFrom); err != nil {
			return nil, err
		}
	}
	body := io.Reader(nil)
	if jsonBody != "" {
		method, body = http.MethodPost, strings.NewReader(jsonBody)
	}
	req, err := http.NewRequest(method, base+s.path, body)
	if err != nil {
		return nil, err
	}
	for _, h := range s.header {
		req.Header.Set(h[0], h[1])
	}
	if s.bearer {
		req.Header.Set("Authorization", "Bearer "+w.token)
	}
	if jsonBody != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &answer{status: resp.StatusCode, header: resp.Header, body: respBody}, nil
}

// fetchBody is the body url answers with 200.
func fetchBody(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s answered %d %s", url, resp.StatusCode, body)
	}
	return string(body), err
}

func printAnswer(out io.Writer, a *answer) {
	replies, calls := []*answer{a}, fmt.Sprintf("   (WeChat calls: %d)", a.wechatCalls)
	if len(a.replies) > 0 {
		fmt.Fprintf(out, "%d answers%s\n", len(a.replies), calls)
		replies, calls = a.replies, ""
	}
	for _, r := range replies {
		fmt.Fprintf(out, "HTTP %d %s%s\n", r.status, http.StatusText(r.status), calls)
		for _, name := range []string{"X-WX-SESSION", "Retry-After"} {
			if v := r.header.Get(name); v != "" {
				fmt.Fprintf(out, "%s: %s\n", http.CanonicalHeaderKey(name), v)
			}
		}
		fmt.Fprintln(out, strings.TrimSuffix(string(r.body), "\n")) // WeChat ends its JSON without a newline
	}
}

// all passes when every check does, reporting the first failure.
func all(checks ...func(*answer) error) func(*answer) error {
	return func(a *answer) error {
		for _, c := range checks {
			if err := c(a); err != nil {
				return err
			}
		}
		return nil
	}
}

// forwardedAs expects the backend to have received openid (and the demo
// app's appid) after exactly wechatCalls calls to WeChat.
func forwardedAs(openid string, wechatCalls int64) func(*answer) error {
	return all(sawIdentity(openid), forwardedRequests(1), madeWechatCalls(wechatCalls))
}

// sawIdentity expects the backend's answer to show openid, the demo app's
// appid and X-WX-SOURCE wx_client.
func sawIdentity(openid string) func(*answer) error {
	return func(a *answer) error {
		got, err := a.backend()
		switch {
		case err != nil:
			return err
		case got.OpenID != openid:
			return fmt.Errorf("the backend saw X-WX-OPENID %q, want %q", got.OpenID, openid)
		case got.AppID != demoApp.AppID:
			return fmt.Errorf("the backend saw X-WX-APPID %q, want %q", got.AppID, demoApp.AppID)
		case got.Source != "wx_client":
			return fmt.Errorf("the backend saw X-WX-SOURCE %q, want wx_client (Cloud Hosting backends answer nothing without it)", got.Source)
		}
		return nil
	}
}

// sawPlatformIdentity expects the backend's answer to show an identity of
// the demo game's app on platform: openid and anonymousOpenID ("" for
// none), in that platform's headers.
func sawPlatformIdentity(platform, openid, anonymousOpenID string) func(*answer) error {
	return func(a *answer) error {
		got, err := a.backend()
		switch {
		case err != nil:
			return err
		case got.Platform != platform || got.AppID != demoDouyinApp.AppID:
			return fmt.Errorf("the backend saw an identity of %s app %q, want %s app %q", got.Platform, got.AppID, platform, demoDouyinApp.AppID)
		case got.OpenID != openid || got.AnonymousOpenID != anonymousOpenID:
			return fmt.Errorf("the backend saw openid %q and anonymous_openid %q, want %q and %q", got.OpenID, got.AnonymousOpenID, openid, anonymousOpenID)
		}
		return nil
	}
}

func forwardedRequests(n int) func(*answer) error {
	return func(a *answer) error {
		if a.forwarded != n {
			return fmt.Errorf("%d requests reached the backend, want %d", a.forwarded, n)
		}
		return nil
	}
}

// everyReply applies check to each gateway's answer of a step sent to
// several.
func everyReply(check func(*answer) error) func(*answer) error {
	return func(a *answer) error {
		if len(a.replies) == 0 {
			return errors.New("the step went to one gateway, want several")
		}
		for i, r := range a.replies {
			if err := check(r); err != nil {
				return fmt.Errorf("answer %d: %w", i+1, err)
			}
		}
		return nil
	}
}

func hasUnionID(unionid string) func(*answer) error {
	return func(a *answer) error {
		got, err := a.backend()
		if err == nil && got.UnionID != unionid {
			err = fmt.Errorf("the backend saw X-WX-UNIONID %q, want %q", got.UnionID, unionid)
		}
		return err
	}
}

func bodyBytes(n int) func(*answer) error {
	return func(a *answer) error {
		got, err := a.backend()
		if err == nil && got.BodyBytes != int64(n) {
			err = fmt.Errorf("the backend received a %d-byte body, want %d", got.BodyBytes, n)
		}
		return err
	}
}

var issuesToken = hasHeader("X-WX-SESSION")

func hasHeader(name string) func(*answer) error {
	return func(a *answer) error {
		if a.header.Get(name) == "" {
			return fmt.Errorf("no %s header in the response", name)
		}
		return nil
	}
}

// refused expects the gateway's JSON error, with nothing forwarded.
func refused(status int, code string) func(*answer) error {
	return func(a *answer) error {
		var body struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(a.body, &body) // a body that is not the JSON error leaves Error empty
		if a.status != status || body.Error != code {
			return fmt.Errorf("got %d %q, want %d %q", a.status, body.Error, status, code)
		}
		if a.forwarded != 0 {
			return fmt.Errorf("refused, yet %d requests reached the backend", a.forwarded)
		}
		return nil
	}
}

// backendSawNo expects the backend to have received no header name, in any
// case or with '_' or '.' for '-'.
func backendSawNo(name string) func(*answer) error {
	want := strings.ToLower(name)
	return func(a *answer) error {
		for got, values := range a.backendHeaders {
			if strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(got)) == want {
				return fmt.Errorf("the backend received %s: %q", got, values)
			}
		}
		return nil
	}
}

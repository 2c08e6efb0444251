package resilience

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// silentWechat accepts connections and never answers on them, as a WeChat
// behind a black-holing middlebox would. It returns its base URL.
func silentWechat(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range held {
			conn.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// TestSilentWechat: when WeChat never answers, every client gets 504 once
// the attempts have timed out, and nothing is left running afterwards.
func TestSilentWechat(t *testing.T) {
	const appID, secret = "wxsilent", "silent-secret"
	testkit.Forbid(secret)
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, silentWechat(t), backend,
		"timeout 200ms", "retry 2 10ms 20ms")))

	login := func(code string) (testkit.Response, time.Duration, error) {
		testkit.Forbid(code)
		start := time.Now()
		r, err := testkit.Fetch(context.Background(), http.MethodGet, "/game/wx/login?code="+code, nil)
		if err == nil {
			err = testkit.CheckRefusal(r, http.StatusGatewayTimeout, "wechat_timeout")
		}
		return r, time.Since(start), err
	}
	// Warm up what Caddy starts once and keeps (the proxy's connection to
	// the backend, the WeChat client), then count what is running.
	if r := testkit.Get(t, "/game/lobby"); r.StatusCode != http.StatusOK {
		t.Fatalf("warm-up: %v", r)
	}
	if _, _, err := login("warmup.1"); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	baseline := runtime.NumGoroutine()

	const clients = 10
	// timeout × attempts + backoff is 420ms at most; this only bounds a hang.
	const hang = 3 * time.Second
	testkit.Parallel(clients, clients, func(i int) {
		r, took, err := login("hang" + strconv.Itoa(i) + ".1")
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
		if took > hang {
			t.Errorf("client %d waited %s for %v", i, took.Round(time.Millisecond), r)
		}
	})
	if got := backend.Count(); got != 1 {
		t.Errorf("the backend received %d requests; only the warm-up should have reached it", got)
	}

	const slack = 5
	var now int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= baseline+slack {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Errorf("%d goroutines are running after %d timed-out logins, %d before; stacks:\n%s",
		now, clients, baseline, buf[:runtime.Stack(buf, true)])
}

// Codes the scripted fake WeChat answers with a body that is not a login
// result; "good.<n>" gets a valid one.
var badBodies = map[string]string{
	"garbage":   "\x00\xff\x13 not json at all",
	"truncated": `{"openid":"oTruncated","session_key":"dHJ1bmNhdGVk`,
	"huge":      `{"openid":"oHuge","session_key":"aHVnZQ==","padding":"` + strings.Repeat("x", 10<<20) + `"}`,
	"html":      "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
	"errcode":   `{"errcode":"x"}`,
	"empty":     "",
}

const goodSessionKey = "Z29vZC1zZXNzaW9uLWtleQ=="

func init() { testkit.Forbid(goodSessionKey) }

// TestWechatBadResponse: whatever WeChat answers, the client gets the
// documented 502 and Caddy goes on serving.
func TestWechatBadResponse(t *testing.T) {
	const appID, secret = "wxgarbage", "garbage-secret"
	testkit.Forbid(secret)
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		player := wechatsim.PlayerOf(r.URL.Query().Get("js_code"))
		if player == "good" {
			fmt.Fprintf(w, `{"openid":"oGoodPlayer","session_key":%q}`, goodSessionKey)
			return
		}
		if player == "html" {
			w.Header().Set("Content-Type", "text/html")
		}
		io.WriteString(w, badBodies[player])
	}))
	t.Cleanup(fake.Close)
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, fake.URL, backend, "retry 1")))

	n := 0
	for player := range badBodies {
		t.Run(player, func(t *testing.T) {
			n++
			code := player + "." + strconv.Itoa(n)
			testkit.Forbid(code)
			if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code="+code), http.StatusBadGateway, "wechat_bad_response"); err != nil {
				t.Error(err)
			}
			code = "good." + strconv.Itoa(n)
			testkit.Forbid(code)
			if r := testkit.Get(t, "/game/wx/login?code="+code); r.StatusCode != http.StatusOK {
				t.Errorf("the next login: %v", r)
			}
		})
	}
	assertForwarded(t, backend.HeaderValues("X-WX-OPENID"), len(badBodies), "oGoodPlayer")
}

// TestCodeSpentByLostAttempt: when an attempt that timed out or failed had
// already spent the code at WeChat, the retry's 40163 is our doing, not the
// player's: the client is told WeChat was unavailable, not that its code was
// used.
func TestCodeSpentByLostAttempt(t *testing.T) {
	const appID, secret = "wxlostattempt", "lost-attempt-secret"
	testkit.Forbid(secret)
	const codeUsed = `{"errcode":40163,"errmsg":"code been used, rid: 6543-ab"}`
	var mu sync.Mutex
	spent := map[string]bool{}
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := r.URL.Query().Get("js_code")
		mu.Lock()
		first := !spent[code]
		spent[code] = true
		mu.Unlock()
		if !first {
			io.WriteString(w, codeUsed)
			return
		}
		// The first call spends the code, then its answer is lost.
		switch wechatsim.PlayerOf(code) {
		case "hangs":
			<-r.Context().Done()
		case "fails":
			http.Error(w, "upstream connect error", http.StatusBadGateway)
		case "used": // the control: a code already used when the player sent it
			io.WriteString(w, codeUsed)
		}
	}))
	t.Cleanup(fake.Close)
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, fake.URL, backend,
		"timeout 200ms", "retry 2 10ms 20ms")))

	for _, tc := range []struct {
		player string
		status int
		code   string
	}{
		{"hangs", http.StatusServiceUnavailable, "wechat_unavailable"},
		{"fails", http.StatusServiceUnavailable, "wechat_unavailable"},
		{"used", http.StatusUnauthorized, "code_used"},
	} {
		t.Run(tc.player, func(t *testing.T) {
			code := tc.player + ".1"
			testkit.Forbid(code)
			if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code="+code), tc.status, tc.code); err != nil {
				t.Error(err)
			}
		})
	}
	if got := backend.Count(); got != 0 {
		t.Errorf("the backend received %d failed logins", got)
	}
}

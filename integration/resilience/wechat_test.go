package resilience

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// silentWechat is a WeChat behind a black-holing middlebox: it accepts
// connections and never answers on them.
type silentWechat struct {
	ln   net.Listener
	mu   sync.Mutex
	open int // connections the gateway has not closed
}

// newSilentWechat starts a silent WeChat; its base URL is s.url().
func newSilentWechat(t *testing.T) *silentWechat {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentWechat{ln: ln}
	var conns []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open++
			conns = append(conns, conn)
			s.mu.Unlock()
			go func() {
				_, _ = io.Copy(io.Discard, conn) // until the gateway closes it
				s.mu.Lock()
				s.open--
				s.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, conn := range conns {
			conn.Close()
		}
	})
	return s
}

func (s *silentWechat) url() string { return "http://" + s.ln.Addr().String() }

func (s *silentWechat) openConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// TestSilentWechat: when WeChat never answers, every client gets 504 once
// the attempts have timed out, and the gateway leaves no call behind: it
// closes every connection it opened to WeChat.
func TestSilentWechat(t *testing.T) {
	const appID, secret = "wxsilent", "silent-secret"
	testkit.Forbid(secret)
	backend := testkit.NewBackend(t, nil)
	wechat := newSilentWechat(t)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, wechat.url(), backend,
		"timeout 200ms", "retry 2 10ms 20ms")))

	const clients = 10
	// timeout × attempts + backoff is 420ms at most; this only bounds a hang.
	const hang = 3 * time.Second
	testkit.Parallel(clients, clients, func(i int) {
		code := "hang" + strconv.Itoa(i) + ".1"
		testkit.Forbid(code)
		start := time.Now()
		r, err := testkit.Fetch(context.Background(), http.MethodGet, "/game/wx/login?code="+code, nil)
		if err == nil {
			err = testkit.CheckRefusal(r, http.StatusGatewayTimeout, "wechat_timeout")
		}
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
		if took := time.Since(start); took > hang {
			t.Errorf("client %d waited %s", i, took.Round(time.Millisecond))
		}
	})
	if got := backend.Count(); got != 0 {
		t.Errorf("the backend received %d timed-out logins", got)
	}
	testkit.WaitFor(t, "the gateway to close its connections to WeChat", func() bool { return wechat.openConnections() == 0 })
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

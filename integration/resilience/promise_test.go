package resilience

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// The budget's promise, through a real Caddy: at most `events` exchanges
// charged to a player in ANY interval of length `window`; one WeChat call
// charged once; a cache hit checked, not charged; a clock that never moves
// back; ip_budget per IPv6 /64.

// withMetrics turns on Caddy's HTTP metrics, whose requests_in_flight gauge
// tells when a request is inside the site's handle block.
const withMetrics = "metrics"

// awaitInFlight waits until n requests are in flight in the handle block of
// a route (testkit.Route), failing the test after 10 seconds.
func awaitInFlight(t *testing.T, n int) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%d requests in flight", n), func() bool {
		resp, err := testkit.Admin(http.MethodGet, "/metrics", nil)
		if err != nil {
			return false
		}
		scanner := bufio.NewScanner(bytes.NewReader(resp.Body))
		for scanner.Scan() {
			if scanner.Text() == `caddy_http_requests_in_flight{handler="subroute",server="srv0"} `+strconv.Itoa(n) {
				return true
			}
		}
		return false
	})
}

// sessionOf logs player in with code and returns its session token.
func sessionOf(t *testing.T, path string) string {
	t.Helper()
	r := testkit.Get(t, path)
	token := r.Header.Get("X-WX-SESSION")
	if r.StatusCode != http.StatusOK || token == "" {
		t.Fatalf("login %s: %v, session %q", path, r, token)
	}
	return token
}

// TestBudgetHoldsInEveryWindow: a returning player looping on login with
// fresh codes under `budget 5 10s` for 12 seconds of real time gets at most
// 5 exchanges in any 10 s, and is refused with 429 and Retry-After in
// between, nothing forwarded. A token bucket of the same size lets a burst
// of 5 through and then one every 2 s.
func TestBudgetHoldsInEveryWindow(t *testing.T) {
	const (
		appID, secret = "wxwindow", "window-secret"
		events        = 5
		window        = 10 * time.Second
		loop          = 12 * time.Second
		// The budget is charged before the WeChat call, the backend sees
		// the login after that call and the proxying: each observation lags
		// its charge by a few milliseconds on loopback, so two charges a
		// window apart may be seen up to that lag closer. 150 ms is ample.
		lag = 150 * time.Millisecond
	)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	var mu sync.Mutex
	var exchanges []time.Time
	backend := testkit.NewBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		exchanges = append(exchanges, time.Now())
		mu.Unlock()
		io.WriteString(w, "ok")
	})
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		fmt.Sprintf("budget %d %s", events, window), withSessions)))

	token := sessionOf(t, "/game/wx/login?code=alice.0")
	refused := 0
	for n, start := 1, time.Now(); time.Since(start) < loop; n++ {
		code := "alice." + strconv.Itoa(n)
		r := testkit.Get(t, "/game/wx/login?code="+code, "X-WX-SESSION: "+token)
		switch r.StatusCode {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			if err := testkit.CheckRefusal(r, http.StatusTooManyRequests, "rate_limited"); err != nil {
				t.Fatalf("login %d: %v", n, err)
			}
			// At most the window and the slot the oldest charge was
			// counted in, rounded up.
			if s, _ := strconv.Atoi(r.Header.Get("Retry-After")); s > 11 {
				t.Errorf("login %d: Retry-After %d, longer than the window", n, s)
			}
			refused++
			testkit.Forbid(code) // refused before WeChat
		default:
			t.Fatalf("login %d: %v", n, r)
		}
		time.Sleep(50 * time.Millisecond) // a client's loop, not a flood
	}

	mu.Lock()
	defer mu.Unlock()
	for i := events; i < len(exchanges); i++ {
		if gap := exchanges[i].Sub(exchanges[i-events]); gap < window-lag {
			t.Errorf("exchanges %d to %d within %v: %d in less than %v", i-events, i, gap.Round(time.Millisecond), events+1, window)
		}
	}
	if len(exchanges) <= events {
		t.Errorf("%d exchanges in %v: the window never moved on", len(exchanges), loop)
	}
	if refused == 0 {
		t.Error("no login was refused")
	}
	if calls := sim.CallsFor(wechatsim.OpenID(appID, "alice")); calls != int64(len(exchanges)) || sim.Calls() != calls {
		t.Errorf("WeChat was called %d times (%d exchanges for alice) for %d logins forwarded: refused logins must cost no call", sim.Calls(), calls, len(exchanges))
	}
}

// TestSlowLoginCannotTurnBackTheClock: a login whose body is sent slowly,
// started before the budget is spent, is charged when its body has come,
// against the budget as it is then: refused, and nothing refilled.
func TestSlowLoginCannotTurnBackTheClock(t *testing.T) {
	const appID, secret = "wxslowbody", "slow-body-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions(withMetrics)+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		"budget 3 1h", withSessions)))
	token := sessionOf(t, "/game/wx/login?code=alice.0")

	const slowCode = "alice.slow"
	testkit.Forbid(slowCode) // refused before WeChat
	body := `{"code":"` + slowCode + `"}`
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", testkit.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "POST /game/wx/login HTTP/1.1\r\nHost: localhost\r\nX-WX-SESSION: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		token, len(body), body[:5])
	awaitInFlight(t, 1) // the slow login is in the handler, reading its body

	for _, code := range []string{"alice.1", "alice.2"} {
		if r := testkit.Get(t, "/game/wx/login?code="+code, "X-WX-SESSION: "+token); r.StatusCode != http.StatusOK {
			t.Fatalf("login %s within the budget: %v", code, r)
		}
	}
	io.WriteString(conn, body[5:])
	slow, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	slowBody, _ := io.ReadAll(slow.Body)
	if err := testkit.CheckRefusal(testkit.Response{Response: slow, Body: slowBody}, http.StatusTooManyRequests, "rate_limited"); err != nil {
		t.Errorf("the slow login, over the budget when its body came: %v", err)
	}

	testkit.Forbid("alice.3")
	if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code=alice.3", "X-WX-SESSION: "+token), http.StatusTooManyRequests, "rate_limited"); err != nil {
		t.Errorf("a login after the slow one: %v", err)
	}
	if calls := sim.Calls(); calls != 3 {
		t.Errorf("WeChat was called %d times, want 3: the budget's", calls)
	}
}

// TestOneCallChargedOnce: a login with a session that joins the WeChat call
// of a login without one (same code) costs the player one charge, not two.
func TestOneCallChargedOnce(t *testing.T) {
	const appID, secret = "wxchargeonce", "charge-once-secret"
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	gate := testkit.NewGate(t, sim)
	gate.Open()
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions(withMetrics)+testkit.Site(testkit.Route("game", appID, secret, gate.URL, backend,
		"budget 4 1h", withSessions)))
	token := sessionOf(t, "/game/wx/login?code=carol.0") // the first charge

	gate.Shut()
	arrived := gate.Arrivals()
	results := make(chan error, 2)
	login := func(headers ...string) {
		r, err := testkit.Fetch(context.Background(), http.MethodGet, "/game/wx/login?code=carol.shared", nil, headers...)
		if err == nil && r.StatusCode != http.StatusOK {
			err = fmt.Errorf("%v", r)
		}
		results <- err
	}
	go login()
	gate.AwaitArrivals(t, arrived+1) // the login without a session leads the call
	go login("X-WX-SESSION: " + token)
	awaitInFlight(t, 2)
	gate.Open()
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("a login on the shared call: %v", err)
		}
	}
	if calls := gate.Arrivals(); calls != arrived+1 {
		t.Errorf("%d WeChat calls for one code, want 1", calls-arrived)
	}

	// Two charges so far: the budget of 4 has room for two more.
	for _, code := range []string{"carol.1", "carol.2"} {
		if r := testkit.Get(t, "/game/wx/login?code="+code, "X-WX-SESSION: "+token); r.StatusCode != http.StatusOK {
			t.Fatalf("login %s: %v; the shared call was charged more than once", code, r)
		}
	}
	testkit.Forbid("carol.3")
	if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code=carol.3", "X-WX-SESSION: "+token), http.StatusTooManyRequests, "rate_limited"); err != nil {
		t.Error(err)
	}
}

// TestCacheHitCheckedNotCharged: replaying a cached code costs the player
// nothing, but is refused while the player is over budget.
func TestCacheHitCheckedNotCharged(t *testing.T) {
	const appID, secret = "wxcachehit", "cache-hit-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, simURL, backend, "budget 3 1h")))

	for n := range 6 { // one charge, five cache hits
		if r := testkit.Get(t, "/game/wx/login?code=dave.1"); r.StatusCode != http.StatusOK {
			t.Fatalf("login %d with one code: %v", n, r)
		}
	}
	for _, code := range []string{"dave.2", "dave.3"} {
		if r := testkit.Get(t, "/game/wx/login?code="+code); r.StatusCode != http.StatusOK {
			t.Fatalf("login %s within the budget: %v; cache hits were charged", code, r)
		}
	}
	if calls := sim.Calls(); calls != 3 {
		t.Errorf("WeChat was called %d times for three codes", calls)
	}
	// Over budget (the exchange is made, then refused): the cached code too.
	forwarded := backend.Count()
	for _, code := range []string{"dave.4", "dave.1"} {
		if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code="+code), http.StatusTooManyRequests, "rate_limited"); err != nil {
			t.Errorf("login %s over the budget: %v", code, err)
		}
	}
	if backend.Count() != forwarded {
		t.Error("a login over the budget was forwarded")
	}
}

// TestExpiredSessionChargedBeforeWechat: a login presenting a session this
// gateway signed that expired less than 24 hours ago still names its player
// (the signature proves it), so a player over budget is refused before its
// code costs a WeChat call. A token expired longer ago, or not signed by the
// gateway, names nobody: its login is exchanged, then refused.
//
// Needs the 24-hour grace of session verification (identity work): until
// it is merged, the expired token is ignored and the test fails on its
// WeChat call count.
func TestExpiredSessionChargedBeforeWechat(t *testing.T) {
	const appID, secret = "wxexpired", "expired-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		"budget 2 1h", withSessions)))
	for _, code := range []string{"erin.1", "erin.2"} {
		if r := testkit.Get(t, "/game/wx/login?code="+code); r.StatusCode != http.StatusOK {
			t.Fatalf("login %s within the budget: %v", code, r)
		}
	}
	erin := wechatsim.OpenID(appID, "erin")
	token := func(expiredAgo time.Duration, key string) string {
		now := time.Now()
		signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": erin, "appid": appID,
			"iat": now.Add(-expiredAgo - 2*time.Hour).Unix(), "exp": now.Add(-expiredAgo).Unix(),
		}).SignedString([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}
	for _, tc := range []struct {
		name          string
		token         string
		code          string
		chargedBefore bool
	}{
		{"expired an hour ago", token(time.Hour, budgetSessionSecret), "erin.3", true},
		{"expired 25 hours ago", token(25*time.Hour, budgetSessionSecret), "erin.4", false},
		{"signed with another key", token(time.Hour, "not-the-gateway-key-0123456789abcdef"), "erin.5", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := sim.Calls()
			r := testkit.Get(t, "/game/wx/login?code="+tc.code, "Authorization: Bearer "+tc.token)
			if err := testkit.CheckRefusal(r, http.StatusTooManyRequests, "rate_limited"); err != nil {
				t.Error(err)
			}
			if called := sim.Calls() != calls; called == tc.chargedBefore {
				t.Errorf("WeChat called: %v; want it called only when the token names nobody", called)
			}
			if tc.chargedBefore {
				testkit.Forbid(tc.code)
			}
		})
	}
}

// TestIPBudgetPerIPv6Prefix: ip_budget counts an IPv6 client by its /64,
// the prefix one subscriber is given, so that its 2^64 addresses share one
// budget; another /64 has its own.
func TestIPBudgetPerIPv6Prefix(t *testing.T) {
	const appID, secret = "wxipv6", "ipv6-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions(trustLoopbackProxies)+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		"ip_budget 2 1h")))
	for i, tc := range []struct {
		client string
		status int
	}{
		{"2001:db8:1:2::1", http.StatusOK},
		{"2001:db8:1:2:ffff:ffff:ffff:fffe", http.StatusOK},
		{"2001:db8:1:2:1234::abcd", http.StatusTooManyRequests}, // the /64's third login
		{"2001:db8:1:3::1", http.StatusOK},                      // the next /64
		{"192.0.2.1", http.StatusOK},
		{"192.0.2.2", http.StatusOK},
		{"192.0.2.1", http.StatusOK},
		{"192.0.2.1", http.StatusTooManyRequests},
	} {
		code := "player" + strconv.Itoa(i) + ".1"
		r := testkit.Get(t, "/game/wx/login?code="+code, "X-Forwarded-For: "+tc.client)
		if r.StatusCode != tc.status {
			t.Errorf("login %d from %s: %v, want %d", i, tc.client, r, tc.status)
		}
		if r.StatusCode == http.StatusTooManyRequests {
			testkit.Forbid(code)
		}
	}
}

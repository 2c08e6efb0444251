package resilience

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

const budgetSessionSecret = "resilience-session-secret-0123456789abcdef"

func init() { testkit.Forbid(budgetSessionSecret) }

// withSessions is the session block of the gateways under test.
const withSessions = "session {\n\t\t\tsecret " + budgetSessionSecret + "\n\t\t}"

// trustLoopbackProxies lets tests present any client IP from loopback with
// X-Forwarded-For.
const trustLoopbackProxies = `servers {
		trusted_proxies static 127.0.0.1/8
		client_ip_headers X-Forwarded-For
	}`

// TestPlayerBudget: a player whose client keeps its session and loops on
// login costs WeChat no more than its budget, so WeChat never has to answer
// 45011; the rest is refused locally.
func TestPlayerBudget(t *testing.T) {
	const (
		appID, secret = "wxloopplayer", "loop-player-secret"
		events        = 30
		window        = time.Minute
		logins        = 500
	)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		fmt.Sprintf("budget %d %s", events, window), withSessions)))
	openID := wechatsim.OpenID(appID, "alice")

	start := time.Now()
	first := testkit.Get(t, "/game/wx/login?code=alice.0")
	token := first.Header.Get("X-WX-SESSION")
	if first.StatusCode != http.StatusOK || token == "" {
		t.Fatalf("first login: %v, session %q", first, token)
	}
	passed := 1
	for n := 1; n < logins; n++ {
		code := "alice." + strconv.Itoa(n)
		r := testkit.Get(t, "/game/wx/login?code="+code, "X-WX-SESSION: "+token)
		switch r.StatusCode {
		case http.StatusOK:
			passed++
		case http.StatusTooManyRequests:
			if err := testkit.CheckRefusal(r, http.StatusTooManyRequests, "rate_limited"); err != nil {
				t.Errorf("login %d: %v", n, err)
			}
			if errcodeOf(r) == 45011 {
				t.Fatalf("login %d: WeChat's own limit (45011) was reached: %v", n, r)
			}
			testkit.Forbid(code) // refused before WeChat, so it must not be logged either
		default:
			t.Fatalf("login %d: %v", n, r)
		}
	}
	elapsed := time.Since(start)

	// What refilled while the test ran may also have been spent.
	bound := events + int(math.Ceil(elapsed.Seconds()/window.Seconds()*events))
	exchanges := int(sim.CallsFor(openID))
	if exchanges > bound {
		t.Errorf("WeChat redeemed %d codes for the player in %s; the budget allows %d", exchanges, elapsed.Round(time.Millisecond), bound)
	}
	if passed < events || passed > bound {
		t.Errorf("%d of %d logins passed; want the budget: from %d to %d", passed, logins, events, bound)
	}
	if forwarded := backend.Count(); forwarded != passed {
		t.Errorf("the backend received %d logins, but %d passed", forwarded, passed)
	}
	if int(sim.Calls()) != exchanges {
		t.Errorf("WeChat was called %d times for %d exchanges: refused logins must cost no call", sim.Calls(), exchanges)
	}
}

// TestIPBudget: a flood of logins without a session from one address is cut
// at ip_budget before any WeChat call, while a player at another address
// logs in throughout.
func TestIPBudget(t *testing.T) {
	const (
		appID, secret = "wxflood", "flood-secret"
		ipEvents      = 20
		flood         = 100
		floodIP       = "192.0.2.66"
		playerIP      = "198.51.100.7"
	)
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	// An hour's window refills nothing while the test runs, so the cut is exact.
	testkit.StartCaddy(t, testkit.GlobalOptions(trustLoopbackProxies)+testkit.Site(testkit.Route("game", appID, secret, simURL, backend,
		fmt.Sprintf("ip_budget %d 1h", ipEvents))))
	mallory, bob := wechatsim.OpenID(appID, "mallory"), wechatsim.OpenID(appID, "bob")

	passed := 0
	for n := range flood {
		code := "mallory." + strconv.Itoa(n)
		r := testkit.Get(t, "/game/wx/login?code="+code, "X-Forwarded-For: "+floodIP)
		if n < ipEvents {
			if r.StatusCode != http.StatusOK {
				t.Fatalf("flood login %d, within ip_budget: %v", n, r)
			}
			passed++
		} else {
			if err := testkit.CheckRefusal(r, http.StatusTooManyRequests, "rate_limited"); err != nil {
				t.Fatalf("flood login %d, past ip_budget: %v", n, err)
			}
			testkit.Forbid(code)
		}
		if n%10 == 0 {
			code := "bob." + strconv.Itoa(n)
			if r := testkit.Get(t, "/game/wx/login?code="+code, "X-Forwarded-For: "+playerIP); r.StatusCode != http.StatusOK {
				t.Fatalf("the other player, during flood login %d: %v", n, r)
			}
		}
	}
	if calls := sim.CallsFor(mallory); calls != ipEvents {
		t.Errorf("WeChat redeemed %d of the flood's codes, want %d", calls, ipEvents)
	}
	if calls := sim.CallsFor(bob); calls != flood/10 {
		t.Errorf("WeChat redeemed %d of the other player's codes, want %d", calls, flood/10)
	}
}

// TestBudgetConfig: a player budget over WeChat's 100 per player per minute
// is refused at load, saying why, and the running config and its budgets
// stay; a reload keeps spent budgets spent.
func TestBudgetConfig(t *testing.T) {
	const appID, secret = "wxreload", "reload-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	config := func(more ...string) string {
		return testkit.GlobalOptions("") + testkit.Site(testkit.Route("game", appID, secret, simURL, backend, append(more, "ip_budget 3 1h")...))
	}
	testkit.StartCaddy(t, config())
	for n := range 3 {
		if r := testkit.Get(t, "/game/wx/login?code=alice."+strconv.Itoa(n)); r.StatusCode != http.StatusOK {
			t.Fatalf("login %d within ip_budget: %v", n, r)
		}
	}
	testkit.Forbid("alice.spent")
	stillLimited := func(t *testing.T) {
		t.Helper()
		if err := testkit.CheckRefusal(testkit.Get(t, "/game/wx/login?code=alice.spent"), http.StatusTooManyRequests, "rate_limited"); err != nil {
			t.Error(err)
		}
	}
	stillLimited(t)

	for _, budget := range []string{"101 1m", "200 2m", "10 1s"} {
		t.Run("refused: budget "+budget, func(t *testing.T) {
			status, message := testkit.LoadConfig(t, config("budget "+budget))
			if status == http.StatusOK {
				t.Fatalf("budget %s was loaded", budget)
			}
			// It must say which setting is wrong and what the limit is.
			if !strings.Contains(message, "budget") || !strings.Contains(message, "100") {
				t.Errorf("load refused with %q; want it to name budget and WeChat's limit of 100 per minute", message)
			}
			stillLimited(t)
		})
	}

	t.Run("reload", func(t *testing.T) {
		testkit.StartCaddy(t, config("timeout 2s")) // a changed config: the handler is provisioned anew
		stillLimited(t)
	})
}

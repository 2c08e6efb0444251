package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// scrapeMetrics reads the admin endpoint's /metrics, failing the test if it
// holds anything secret.
func scrapeMetrics(t *testing.T) string {
	t.Helper()
	resp, err := testkit.Admin(http.MethodGet, "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	assertStatus(t, resp, http.StatusOK)
	if leaks := testkit.Leaks(string(resp.Body)); len(leaks) > 0 {
		t.Errorf("the metrics carry %d secret(s), code(s) or session_key(s)", len(leaks))
	}
	return string(resp.Body)
}

// metricValue is the value of the sample name{labels} in a Prometheus text
// exposition, labels written in name order as client_golang writes them;
// 0 when absent, as an untouched counter would be.
func metricValue(t *testing.T, exposition, name, labels string) float64 {
	t.Helper()
	prefix := name + "{" + labels + "} "
	scanner := bufio.NewScanner(strings.NewReader(exposition))
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), prefix); ok {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("sample %s: %v", scanner.Text(), err)
			}
			return v
		}
	}
	return 0
}

// sample names one series of the exposition.
type sample struct{ name, labels string }

func (s sample) String() string { return s.name + "{" + s.labels + "}" }

// expectedMetrics follows every series the README lists for one app_id:
// what each held when the test began plus what each step of the test adds.
type expectedMetrics struct {
	want map[sample]float64
}

func newExpectedMetrics(t *testing.T, samples []sample) *expectedMetrics {
	t.Helper()
	e := &expectedMetrics{want: map[sample]float64{}}
	// Counters live as long as the process, so count from what they hold now.
	exposition := scrapeMetrics(t)
	for _, s := range samples {
		e.want[s] = metricValue(t, exposition, s.name, s.labels)
	}
	return e
}

// check adds deltas to what is expected, then checks every series, so that
// a step that moves a series it should not is caught too.
func (e *expectedMetrics) check(t *testing.T, step string, deltas map[sample]float64) {
	t.Helper()
	for s, d := range deltas {
		if _, ok := e.want[s]; !ok {
			t.Fatalf("%s: %v is not followed", step, s)
		}
		e.want[s] += d
	}
	exposition := scrapeMetrics(t)
	for s, v := range e.want {
		if got := metricValue(t, exposition, s.name, s.labels); got != v {
			t.Errorf("%s: %v = %v, want %v", step, s, got, v)
			e.want[s] = got // report each wrong move once, at the step that made it
		}
	}
}

// TestMetrics moves every metric the README lists, one step at a time, and
// checks after each step that exactly the expected series moved, by exactly
// the expected amount, across a config reload too.
func TestMetrics(t *testing.T) {
	const appID, otherAppID, secret = "wxmetrics", "wxmetricsother", "metrics-secret"
	sim, _ := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}, {AppID: otherAppID, Secret: secret}}})
	wechat := testkit.NewGate(t, sim)
	wechat.Open() // shut only where a call must stay in flight
	backend := testkit.NewBackend(t, nil)
	session := sessionBlock("secret " + sessionSecretA)
	load := func(timeout string) {
		t.Helper()
		testkit.StartCaddy(t, testkit.GlobalOptions(`metrics
	servers {
		trusted_proxies static 127.0.0.1/8
		client_ip_headers X-Forwarded-For
	}`)+testkit.Site(
			testkit.Route("other", otherAppID, secret, wechat.URL, backend, session),
			testkit.Handle("", testkit.WechatLogin(appID, secret, wechat.URL,
				"budget 2 1h", "ip_budget 3 1h", "retry 2 10ms 20ms", "timeout "+timeout, session), testkit.ProxyTo(backend)),
		))
	}
	labels := func(more string) string { return `app_id="` + appID + `"` + more }
	result := func(r string) sample {
		return sample{"caddy_wechat_login_logins_total", labels(`,result="` + r + `"`)}
	}
	rejected := func(reason string) sample {
		return sample{"caddy_wechat_login_sessions_rejected_total", labels(`,reason="` + reason + `"`)}
	}
	var (
		ok, invalidRequest, invalidCode = result("ok"), result("invalid_request"), result("invalid_code")
		unavailable, rateLimited        = result("wechat_unavailable"), result("rate_limited")
		calls                           = sample{"caddy_wechat_login_wechat_calls_total", labels("")}
		retries                         = sample{"caddy_wechat_login_wechat_retries_total", labels("")}
		exchanges                       = sample{"caddy_wechat_login_exchange_duration_seconds_count", labels("")}
		ipRejected                      = sample{"caddy_wechat_login_budget_rejections_total", labels(`,budget="ip"`)}
		playerRejected                  = sample{"caddy_wechat_login_budget_rejections_total", labels(`,budget="player"`)}
		cacheHits                       = sample{"caddy_wechat_login_cache_hits_total", labels("")}
		coalesced                       = sample{"caddy_wechat_login_coalesced_total", labels("")}
		issued                          = sample{"caddy_wechat_login_sessions_issued_total", labels("")}
		missing, malformed              = rejected("missing"), rejected("malformed")
		badSignature, otherApp          = rejected("bad_signature"), rejected("other_app")
	)
	load("3s")
	metrics := newExpectedMetrics(t, []sample{ok, invalidRequest, invalidCode, unavailable, rateLimited, calls, retries,
		exchanges, ipRejected, playerRejected, cacheHits, coalesced, issued, missing, malformed, badSignature, otherApp})

	// from sends a request from the client address ip.
	from := func(ip, path string, headers ...string) testkit.Response {
		t.Helper()
		return testkit.Get(t, path, append(headers, "X-Forwarded-For: "+ip)...)
	}
	login := from("192.0.2.1", "/wx/login?code=alice.1")
	assertStatus(t, login, http.StatusOK)
	metrics.check(t, "a login", map[sample]float64{ok: 1, calls: 1, exchanges: 1, issued: 1})
	assertStatus(t, from("192.0.2.1", "/wx/login?code=alice.1"), http.StatusOK)
	metrics.check(t, "the same code again", map[sample]float64{ok: 1, cacheHits: 1, issued: 1})

	assertStatus(t, from("192.0.2.2", "/wx/login"), http.StatusBadRequest)
	metrics.check(t, "no code", map[sample]float64{invalidRequest: 1})
	assertStatus(t, from("192.0.2.2", "/wx/login?code=invalid.1"), http.StatusUnauthorized)
	metrics.check(t, "an invalid code", map[sample]float64{invalidCode: 1, calls: 1, exchanges: 1})
	assertStatus(t, from("192.0.2.2", "/wx/login?code=busy.1"), http.StatusServiceUnavailable)
	metrics.check(t, "WeChat busy, retried", map[sample]float64{unavailable: 1, calls: 2, retries: 1, exchanges: 1})
	testkit.Forbid("bob.1") // refused before WeChat
	assertStatus(t, from("192.0.2.2", "/wx/login?code=bob.1"), http.StatusTooManyRequests)
	metrics.check(t, "over ip_budget", map[sample]float64{rateLimited: 1, ipRejected: 1})

	assertStatus(t, from("192.0.2.3", "/wx/login?code=alice.2"), http.StatusOK)
	metrics.check(t, "alice's second login", map[sample]float64{ok: 1, calls: 1, exchanges: 1, issued: 1})
	assertStatus(t, from("192.0.2.3", "/wx/login?code=alice.3"), http.StatusTooManyRequests)
	metrics.check(t, "over alice's budget", map[sample]float64{rateLimited: 1, playerRejected: 1, calls: 1, exchanges: 1})

	t.Run("coalesced", func(t *testing.T) {
		// The gate holds the one WeChat call until all three logins are in
		// the site's handle block (the route Caddy counts requests in
		// flight for), so on their way to wait for that call.
		wechat.Shut()
		defer wechat.Open()
		arrived := wechat.Arrivals()
		inFlight := func() float64 {
			return metricValue(t, scrapeMetrics(t), "caddy_http_requests_in_flight", `handler="subroute",server="srv0"`)
		}
		const logins = 3
		statuses := make(chan int, logins)
		for i := range logins {
			go func() {
				r, err := testkit.Fetch(context.Background(), http.MethodGet, "/wx/login?code=carol.shared", nil, fmt.Sprintf("X-Forwarded-For: 192.0.2.%d", 10+i))
				if err != nil {
					t.Error(err)
					statuses <- 0
					return
				}
				statuses <- r.StatusCode
			}()
			wechat.AwaitArrivals(t, arrived+1)
		}
		testkit.WaitFor(t, fmt.Sprintf("%d logins are in flight", logins), func() bool { return inFlight() >= logins })
		wechat.Open()
		for range logins {
			if status := <-statuses; status != http.StatusOK {
				t.Errorf("a login on the shared call: %d", status)
			}
		}
		metrics.check(t, "three logins on one call", map[sample]float64{ok: logins, calls: 1, exchanges: 1, coalesced: logins - 1, issued: logins})
	})

	t.Run("sessions rejected", func(t *testing.T) {
		token := login.Header.Get("X-WX-SESSION")
		other := testkit.Get(t, "/other/wx/login?code=dave.1")
		assertStatus(t, other, http.StatusOK)
		for _, tc := range []struct {
			name   string
			header []string
			reason sample
		}{
			{"no token", nil, missing},
			{"not a token", []string{"Authorization: Bearer not-a-token"}, malformed},
			{"signature altered", []string{"X-WX-SESSION: " + alterSignature(token)}, badSignature},
			{"another app's token", []string{"X-WX-SESSION: " + other.Header.Get("X-WX-SESSION")}, otherApp},
		} {
			assertError(t, testkit.Get(t, "/game", tc.header...), http.StatusUnauthorized, "invalid_session", noErrcode)
			metrics.check(t, tc.name, map[sample]float64{tc.reason: 1})
		}
	})

	load("2s") // a changed config: the handler is provisioned anew
	assertStatus(t, from("192.0.2.4", "/wx/login?code=erin.1"), http.StatusOK)
	metrics.check(t, "a login after a reload", map[sample]float64{ok: 1, calls: 1, exchanges: 1, issued: 1})
	assertStatus(t, from("192.0.2.4", "/wx/login?code=alice.4"), http.StatusTooManyRequests)
	metrics.check(t, "alice, still over budget after the reload", map[sample]float64{rateLimited: 1, playerRejected: 1, calls: 1, exchanges: 1})
}

// alterSignature changes one character in the middle of a token's signature.
func alterSignature(token string) string {
	i := strings.LastIndexByte(token, '.') + 10
	if i >= len(token) {
		return token + "x"
	}
	c := byte('A')
	if token[i] == 'A' {
		c = 'B'
	}
	return token[:i] + string(c) + token[i+1:]
}

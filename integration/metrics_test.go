package integration

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// scrapeMetrics reads /metrics, failing the test if it holds anything
// secret.
func scrapeMetrics(t *testing.T) string {
	t.Helper()
	resp := testkit.Get(t, "/metrics")
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

// TestMetrics counts logins by result, and keeps counting across config
// reloads.
func TestMetrics(t *testing.T) {
	const appID, secret = "wxmetrics", "metrics-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	load := func(budget string) {
		t.Helper()
		testkit.StartCaddy(t, testkit.GlobalOptions("metrics")+testkit.Site(
			"handle /metrics {\n\tmetrics\n}",
			testkit.Handle("", testkit.WechatLogin(appID, secret, simURL, "budget "+budget, "retry 1"), testkit.ProxyTo(backend)),
		))
	}
	type sample struct{ name, labels string }
	var (
		ok          = sample{"caddy_wechat_login_logins_total", `app_id="wxmetrics",result="ok"`}
		invalidCode = sample{"caddy_wechat_login_logins_total", `app_id="wxmetrics",result="invalid_code"`}
		badRequest  = sample{"caddy_wechat_login_logins_total", `app_id="wxmetrics",result="invalid_request"`}
		wechatCalls = sample{"caddy_wechat_login_wechat_calls_total", `app_id="wxmetrics"`}
	)
	load("50 1m")
	// Counters live as long as the process, so count from what they hold now.
	want := map[sample]float64{}
	baseline := scrapeMetrics(t)
	for _, s := range []sample{ok, invalidCode, badRequest, wechatCalls} {
		want[s] = metricValue(t, baseline, s.name, s.labels)
	}
	// Each round: log in, refuse a bad code and a missing one, then check
	// the counts so far.
	code := 0
	round := func() {
		t.Helper()
		for range 2 {
			code++
			assertStatus(t, testkit.Get(t, "/wx/login?code=alice."+strconv.Itoa(code)), http.StatusOK)
		}
		assertStatus(t, testkit.Get(t, "/wx/login?code=invalid."+strconv.Itoa(code)), http.StatusUnauthorized)
		assertStatus(t, testkit.Get(t, "/wx/login"), http.StatusBadRequest)
		want[ok] += 2
		want[invalidCode]++
		want[badRequest]++
		want[wechatCalls] += 3
		exposition := scrapeMetrics(t)
		for s, v := range want {
			if got := metricValue(t, exposition, s.name, s.labels); got != v {
				t.Errorf("%s{%s} = %v, want %v", s.name, s.labels, got, v)
			}
		}
	}

	round()
	load("40 1m") // a changed config: the handler is provisioned anew
	round()
	load("30 1m")
	round()
}

package resilience

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// TestRetriesRideOutBusyWechat: with WeChat answering -1 to one call in
// five, the default retry gets almost every login through, and what fails
// is the documented 503.
func TestRetriesRideOutBusyWechat(t *testing.T) {
	const secret = "busy-secret"
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxbusydefault", Secret: secret},
		{AppID: "wxbusyonce", Secret: secret},
	}})
	sim.SetBusyRate(0.2)
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("default", "wxbusydefault", secret, simURL, backend, "ip_budget off"),
		testkit.Route("once", "wxbusyonce", secret, simURL, backend, "ip_budget off", "retry 1"),
	))

	// logins sends n logins of distinct players to prefix from 16 clients,
	// and returns how many succeeded; the failures must all be 503
	// wechat_unavailable with errcode -1.
	logins := func(t *testing.T, prefix string, n int) (succeeded int) {
		var mu sync.Mutex
		testkit.Parallel(n, 16, func(i int) {
			r, err := testkit.Fetch(context.Background(), http.MethodGet, "/"+prefix+"/wx/login?code=p"+strconv.Itoa(i)+".1", nil)
			if err == nil && r.StatusCode != http.StatusOK {
				err = testkit.CheckRefusal(r, http.StatusServiceUnavailable, "wechat_unavailable")
				if err == nil && errcodeOf(r) != -1 {
					t.Errorf("login %d: %v, want errcode -1", i, r)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("login %d: %v", i, err)
			} else if r.StatusCode == http.StatusOK {
				succeeded++
			}
		})
		return succeeded
	}

	t.Run("default retry", func(t *testing.T) {
		const n = 1000
		calls := sim.Calls()
		succeeded := logins(t, "default", n)
		// All three attempts fail together with probability 0.2³ = 0.8%: 8
		// failures in 1,000 are expected. "At least 99%" (10 at most) would
		// fail by chance about one run in five; 20 at most fails by chance
		// about once in 10,000 runs (p = 9e-5), yet still fails a gateway making only
		// two attempts (40 failures expected).
		failed := n - succeeded
		t.Logf("%d of %d logins failed", failed, n)
		if failed > 20 {
			t.Errorf("%d of %d logins failed with WeChat busy 20%% of the time; want 2%% at most", failed, n)
		}
		if made := sim.Calls() - calls; made <= n || made > 3*n {
			t.Errorf("%d logins made %d WeChat calls; want retries, and 3 calls per login at most", n, made)
		}
	})

	t.Run("retry 1", func(t *testing.T) {
		const n = 200
		calls := sim.Calls()
		succeeded := logins(t, "once", n)
		if succeeded == 0 || succeeded == n {
			t.Errorf("%d of %d logins succeeded without retries with WeChat busy 20%% of the time; want some, not all", succeeded, n)
		}
		if made := sim.Calls() - calls; made != n {
			t.Errorf("%d logins made %d WeChat calls with retry 1; want one each", n, made)
		}
	})
}

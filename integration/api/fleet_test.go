package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// apiFleet is two gateways, separate Caddy processes, whose wechat_api
// share one Redis, in front of one simulator.
type apiFleet struct {
	redis    *testkit.Redis
	sim      *wechatsim.Server
	gateways []*testkit.Gateway
}

func startAPIFleet(t *testing.T, appID, secret string) *apiFleet {
	t.Helper()
	testkit.Forbid(secret)
	f := &apiFleet{redis: testkit.StartRedis(t)}
	var simURL string
	f.sim, simURL = testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret}}})
	config := func(g *testkit.Gateway) string {
		return g.Site(wechatAPI(appID, secret, simURL, fmt.Sprintf("redis {\n\t\taddress %s\n\t\ttimeout 100ms\n\t}", f.redis.Addr())))
	}
	for range 2 {
		f.gateways = append(f.gateways, testkit.StartGateway(t, config))
	}
	return f
}

// secCheckAll sends n msg_sec_check calls to every gateway at once, and
// returns the failures.
func (f *apiFleet) secCheckAll(n int) []string {
	var mu sync.Mutex
	var failures []string
	testkit.Parallel(n*len(f.gateways), n*len(f.gateways), func(i int) {
		g := f.gateways[i%len(f.gateways)]
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/wxa/msg_sec_check", strings.NewReader(secCheckBody)) // a valid URL
		req.Header.Set("Content-Type", "application/json")
		resp, err := testkit.Do(req)
		var answer struct{ Errcode *int }
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(resp.Body, &answer) != nil || answer.Errcode == nil || *answer.Errcode != 0 {
			mu.Lock()
			failures = append(failures, fmt.Sprintf("gateway %d: %v %v", i%len(f.gateways), resp, err))
			mu.Unlock()
		}
	})
	return failures
}

// tokensSeen is the set of access tokens WeChat's API calls carried.
func (f *apiFleet) tokensSeen(t *testing.T) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, req := range f.sim.APIRequests() {
		token, _ := tokenOf(t, req)
		seen[token] = true
	}
	return seen
}

// TestFleetMakesOneTokenCall: two gateways cold-started together, with
// calls arriving at both at once, make one stable_token call between them;
// when WeChat revokes the token, the fleet replaces it with one call.
func TestFleetMakesOneTokenCall(t *testing.T) {
	const appID = "wxapifleet"
	f := startAPIFleet(t, appID, "apifleet-secret")
	f.sim.SetLatency(50 * time.Millisecond) // the calls meet while the token is fetched

	for _, failure := range f.secCheckAll(20) {
		t.Error(failure)
	}
	if got := f.sim.CallsTo(stableTokenPath); got != 1 {
		t.Fatalf("two gateways on a cold start made %d stable_token calls; want 1", got)
	}
	if seen := f.tokensSeen(t); len(seen) != 1 {
		t.Fatalf("the gateways' calls carried %d tokens; want the fleet's one", len(seen))
	}

	f.sim.RevokeTokens(appID)
	for _, failure := range f.secCheckAll(10) {
		t.Error(failure)
	}
	if calls, forced := f.sim.CallsTo(stableTokenPath), f.sim.ForcedRefreshes(appID); calls != 2 || forced != 0 {
		t.Errorf("after a revocation, %d stable_token calls (%d forced); want 2, none forced: one replacement for the fleet", calls, forced)
	}
}

// TestFleetServesWhileRedisIsFrozen: with Redis frozen, each gateway gets
// its own token (stable_token's is the same for all) and no call fails.
func TestFleetServesWhileRedisIsFrozen(t *testing.T) {
	const appID = "wxapifrozen"
	f := startAPIFleet(t, appID, "apifrozen-secret")
	f.redis.Freeze()
	defer f.redis.Resume()
	for _, failure := range f.secCheckAll(5) {
		t.Error(failure)
	}
	if seen := f.tokensSeen(t); len(seen) != 1 {
		t.Errorf("the gateways' calls carried %d tokens; want stable_token's one", len(seen))
	}
	if got := f.sim.CallsTo(stableTokenPath); got < 1 || got > 2 {
		t.Errorf("%d stable_token calls with Redis frozen; want one per gateway at most", got)
	}
}

package wechatlogin

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func (m testTokenManager) mustToken(t *testing.T) accessToken {
	t.Helper()
	tok, err := m.token(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatalf("no token: %v", err)
	}
	return tok
}

func TestTokenRenewedAheadOfExpiryWithoutMakingRequestsWait(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	m := newTestTokenManager(t, simURL, clock)
	stableCalls := func() int64 { return sim.CallsTo(stableTokenPath) }

	first := m.mustToken(t)
	wait := m.waits.next(t)
	if want := 7200*time.Second - tokenRenewAhead; wait.d != want {
		t.Fatalf("the renewal waits %v; want %v (4 minutes before expiry)", wait.d, want)
	}
	// Until then, requests get the token without a call.
	clock.Advance(wait.d - time.Second)
	for range 100 {
		if m.mustToken(t) != first {
			t.Fatal("the token changed before its renewal")
		}
	}
	if stableCalls() != 1 {
		t.Fatalf("%d stable_token calls for one token; want 1", stableCalls())
	}

	clock.Advance(time.Second)
	wait.fire <- clock.Now()
	next := m.waits.next(t)
	renewed := m.mustToken(t)
	if renewed.value == first.value || stableCalls() != 2 {
		t.Fatalf("after the renewal: new token %t, %d stable_token calls; want a new token, 2", renewed.value != first.value, stableCalls())
	}
	if want := 7200*time.Second - tokenRenewAhead; next.d != want {
		t.Errorf("the next renewal waits %v; want %v", next.d, want)
	}
	// WeChat still takes the old token until it runs out, as the renewal
	// landed inside its switch-over.
	if !sim.TokenValid(apiAppID, first.value) || !sim.TokenValid(apiAppID, renewed.value) {
		t.Error("the renewal invalidated the token in use")
	}
}

func TestTokenRenewalFailureKeepsTheTokenAndRetries(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	m := newTestTokenManager(t, simURL, clock)
	first := m.mustToken(t)
	wait := m.waits.next(t)

	sim.SetBusyRate(1)
	for range 2 {
		clock.Advance(wait.d)
		wait.fire <- clock.Now()
		wait = m.waits.next(t)
		if wait.d != tokenRenewRetry {
			t.Fatalf("after a failed renewal the renewal waits %v; want %v", wait.d, tokenRenewRetry)
		}
		if m.mustToken(t) != first {
			t.Fatal("a failed renewal lost the token in use")
		}
	}
	// Past its usable life, a request fetches for itself, and is refused
	// while WeChat is busy.
	clock.Set(first.usableUntil())
	if _, err := m.token(context.Background(), 5*time.Second); err == nil || apiRefuser.refusal(err, time.Now()).status != http.StatusServiceUnavailable {
		t.Fatalf("a request after the token's end while WeChat is busy: %v; want 503", err)
	}
	sim.SetBusyRate(0)
	wait.fire <- clock.Now()
	m.waits.next(t)
	if m.mustToken(t).value == first.value {
		t.Error("the renewal did not recover")
	}
	if n := m.logs.FilterMessageSnippet("renewal failing").Len(); n != 1 {
		t.Errorf("%d lines say the renewal is failing; want 1 for the change of state", n)
	}
	if n := m.logs.FilterMessageSnippet("renewal recovered").Len(); n != 1 {
		t.Errorf("%d lines say the renewal recovered; want 1", n)
	}
}

func TestConcurrentRequestsOnAColdStartMakeOneFetch(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	sim.SetLatency(20 * time.Millisecond) // long enough for the requests to meet
	m := newTestTokenManager(t, simURL, clock)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 50 {
		wg.Go(func() {
			if _, err := m.token(context.Background(), 5*time.Second); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 || sim.CallsTo(stableTokenPath) != 1 {
		t.Errorf("%d of 50 failed, with %d stable_token calls; want none failed, 1 call", failed.Load(), sim.CallsTo(stableTokenPath))
	}
}

func TestRefusedTokenReplacedInNormalMode(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	m := newTestTokenManager(t, simURL, clock)
	refused := m.mustToken(t)
	sim.RevokeTokens(apiAppID)

	var wg sync.WaitGroup
	replacements := make([]accessToken, 20)
	for i := range replacements {
		wg.Go(func() {
			replacements[i], _ = m.replace(context.Background(), 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI)
		})
	}
	wg.Wait()
	for _, r := range replacements {
		if r.value == refused.value || r != replacements[0] || !sim.TokenValid(apiAppID, r.value) {
			t.Fatal("the refused token was not replaced by one valid token for every caller")
		}
	}
	if calls, forced := sim.CallsTo(stableTokenPath), sim.ForcedRefreshes(apiAppID); calls != 2 || forced != 0 {
		t.Errorf("%d stable_token calls, %d forced; want 2 (the first token and its replacement), none forced", calls, forced)
	}
	// A call refused with the token already replaced costs nothing more.
	if r, err := m.replace(context.Background(), 5*time.Second, refused, errcodeTokenExpired, secCheckAPI); err != nil || r != replacements[0] || sim.CallsTo(stableTokenPath) != 2 {
		t.Errorf("a late refusal of the old token made a call or changed the token: %v", err)
	}
}

func TestForceRefreshOnlyForATokenHandedBackAndWithinWechatLimits(t *testing.T) {
	clock := testkit.NewClock(accessTokenEpoch)
	wechat, url := newStuckWechat(t)
	m := newTestTokenManager(t, url, clock)
	refused := m.mustToken(t)

	forced, err := m.replace(context.Background(), 5*time.Second, refused, errcodeInvalidCredential, secCheckAPI)
	if err != nil || forced.value == refused.value || wechat.forcedRefreshes() != 1 {
		t.Fatalf("normal mode handed back the refused token: %v, %d forced; want a forced refresh", err, wechat.forcedRefreshes())
	}
	// Refused again at once: WeChat allows no second force_refresh within
	// 30 s, so none is made, and the caller learns WeChat's errcode.
	clock.Advance(forcedRefreshSpacing - time.Second)
	_, err = m.replace(context.Background(), 5*time.Second, forced, errcodeTokenExpired, secCheckAPI)
	if err == nil || wechat.forcedRefreshes() != 1 {
		t.Fatalf("a second refusal within 30 s: %v, %d forced; want a refusal and no force_refresh", err, wechat.forcedRefreshes())
	}
	if refusal := apiRefuser.refusal(err, time.Now()); refusal.status != http.StatusBadGateway || refusal.code != refusalTokenUnavailable || refusal.errcode != errcodeTokenExpired {
		t.Errorf("the refusal is %v; want 502 %s with errcode %d", refusal, refusalTokenUnavailable, errcodeTokenExpired)
	}
	clock.Advance(time.Second)
	if again, err := m.replace(context.Background(), 5*time.Second, forced, errcodeTokenExpired, secCheckAPI); err != nil || again.value == forced.value || wechat.forcedRefreshes() != 2 {
		t.Errorf("a refusal 30 s later: %v, %d forced; want a second force_refresh", err, wechat.forcedRefreshes())
	}
}

func TestRenewalDelay(t *testing.T) {
	tok := accessToken{value: "t", expires: accessTokenEpoch.Add(2 * time.Hour)}
	for _, tt := range []struct {
		now  time.Time
		want time.Duration
	}{
		{accessTokenEpoch, 2*time.Hour - tokenRenewAhead},
		{accessTokenEpoch.Add(2*time.Hour - tokenRenewAhead - time.Second), time.Second},
		{accessTokenEpoch.Add(2*time.Hour - tokenRenewAhead), tokenRenewRetry},
		{accessTokenEpoch.Add(3 * time.Hour), tokenRenewRetry},
	} {
		if got := renewalDelay(tok, tt.now); got != tt.want {
			t.Errorf("renewalDelay at %v = %v; want %v", tt.now.Sub(accessTokenEpoch), got, tt.want)
		}
	}
	if !tok.usable(accessTokenEpoch.Add(2*time.Hour-tokenExpirySafety-time.Nanosecond)) || tok.usable(accessTokenEpoch.Add(2*time.Hour-tokenExpirySafety)) {
		t.Error("a token is not usable until exactly a minute before it runs out")
	}
}

func TestDecodeStableToken(t *testing.T) {
	for _, tt := range []struct {
		answer  string
		token   string
		life    time.Duration
		kind    failureKind
		errcode int
	}{
		{`{"access_token":"80_abc","expires_in":7200}`, "80_abc", 2 * time.Hour, 0, 0},
		{`{"access_token":"80_abc","expires_in":300,"errcode":0}`, "80_abc", 5 * time.Minute, 0, 0},
		{`{"errcode":40125,"errmsg":"invalid appsecret, rid: 1-2-3"}`, "", 0, kindMisconfigured, 40125},
		{`{"errcode":-1,"errmsg":"system error"}`, "", 0, kindBusy, -1},
		{`{"access_token":"","expires_in":7200}`, "", 0, kindBadResponse, 0},
		{`{"access_token":"80 abc","expires_in":7200}`, "", 0, kindBadResponse, 0},
		{`{"access_token":"80_abc","expires_in":0}`, "", 0, kindBadResponse, 0},
		{`{"access_token":"80_abc","expires_in":86401}`, "", 0, kindBadResponse, 0},
		{`{"access_token":"80_abc","expires_in":"7200"}`, "", 0, kindBadResponse, 0},
		{`<html>502</html>`, "", 0, kindBadResponse, 0},
	} {
		token, life, err := decodeStableToken([]byte(tt.answer))
		switch {
		case tt.kind == 0 && (err != nil || token != tt.token || life != tt.life):
			t.Errorf("%s: %q %v %v; want %q %v", tt.answer, token, life, err, tt.token, tt.life)
		case tt.kind != 0 && (err == nil || err.kind != tt.kind || err.errcode != tt.errcode || token != ""):
			t.Errorf("%s: %q %v; want kind %d errcode %d", tt.answer, token, err, tt.kind, tt.errcode)
		}
	}
}

// FuzzDecodeStableToken: no answer, however malformed, makes the decoder
// panic or hand out an unusable token or lifetime.
func FuzzDecodeStableToken(f *testing.F) {
	f.Add([]byte(`{"access_token":"80_abc","expires_in":7200}`))
	f.Add([]byte(`{"errcode":40125,"errmsg":"invalid appsecret, rid: 1-2-3"}`))
	f.Add([]byte(`{"access_token":"80_abc","expires_in":9223372036854775807}`))
	f.Add([]byte(`{"access_token":"\u0000","expires_in":1}`))
	f.Fuzz(func(t *testing.T, answer []byte) {
		token, life, err := decodeStableToken(answer)
		if err != nil {
			if token != "" || life != 0 || (err.hasErrcode && err.errcode == 0) {
				t.Errorf("a failure with a token or errcode 0: %q %v %v", token, life, err)
			}
			return
		}
		if !isTokenValue(token) || life <= 0 || life > maxTokenLifetime {
			t.Errorf("accepted token %q with lifetime %v", token, life)
		}
	})
}

// TestTokenConfirmedGoodIsRememberedFor30Seconds: when an API refuses the
// token but WeChat confirms it takes it, the token is kept, and further
// refusals of it by that API within 30 s cost WeChat nothing; after that it
// is looked into again. Another API's refusal is looked into at once: a
// token revoked meanwhile is replaced.
func TestTokenConfirmedGoodIsRememberedFor30Seconds(t *testing.T) {
	const componentAPI = "/cgi-bin/component/api_query_auth"
	clock := testkit.NewClock(accessTokenEpoch)
	sim, simURL := newTokenSim(t, clock)
	m := newTestTokenManager(t, simURL, clock)
	good := m.mustToken(t)
	calls := func() (int64, int64) { return sim.CallsTo(stableTokenPath), sim.CallsTo(tokenCheckPath) }
	refusedBy := func(api string) (accessToken, *platformError) {
		return m.replace(context.Background(), 5*time.Second, good, errcodeInvalidCredential, api)
	}

	for range 10 {
		if kept, err := refusedBy(componentAPI); err != nil || kept != good {
			t.Fatalf("WeChat takes the token, yet replace gave another or failed: %v", err)
		}
		clock.Advance(2 * time.Second)
	}
	if stable, checks := calls(); stable != 2 || checks != 1 {
		t.Errorf("10 refusals of a good token within 30 s: %d stable_token calls and %d checks; want 2 (the first fetch, one look) and 1", stable, checks)
	}
	clock.Advance(tokenConfirmationTTL - 20*time.Second) // 30 s since the confirmation
	if kept, err := refusedBy(componentAPI); err != nil || kept != good {
		t.Fatalf("after 30 s: %v", err)
	}
	if stable, checks := calls(); stable != 3 || checks != 2 {
		t.Errorf("a refusal 30 s after the confirmation: %d stable_token calls and %d checks; want it looked into again (3, 2)", stable, checks)
	}

	sim.RevokeTokens(apiAppID)
	clock.Advance(time.Second)
	if replaced, err := refusedBy(secCheckAPI); err != nil || replaced == good || !sim.TokenValid(apiAppID, replaced.value) {
		t.Errorf("a revoked token, confirmed good for another API a second earlier, was not replaced: %v", err)
	}
}

// secCheckAPI is an API that takes the app's token and nothing else.
const secCheckAPI = "/wxa/msg_sec_check"

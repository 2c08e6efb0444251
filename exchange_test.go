package wechatlogin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// exClient points an exchangeClient for WeChat at url; its sleeps are
// recorded, not slept.
func exClient(url string, attempts int, timeout time.Duration) (*exchangeClient, *[]time.Duration) {
	var slept []time.Duration
	return &exchangeClient{
		platform:   wechatPlatform,
		http:       newHTTPClient(timeout),
		requestURL: wechatPlatform.exchangeURL(url, exchangeAppID, exchangeSecret),
		timeout:    timeout,
		retry:      retryPolicy{attempts: attempts, base: 100 * time.Millisecond, max: time.Second},
		sleep: func(ctx context.Context, d time.Duration) error {
			slept = append(slept, d)
			return ctx.Err()
		},
	}, &slept
}

// exScript serves the given bodies in turn (the last one repeats); a body of
// "500" answers HTTP 500 and "hang" waits for the request to end.
func exScript(t *testing.T, bodies ...string) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(calls.Add(1)) - 1
		body := bodies[min(n, len(bodies)-1)]
		switch body {
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
		case "hang":
			<-r.Context().Done()
		default:
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(body))
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

const exOK = `{"session_key":"c2Vzc2lvbi1rZXktMTIzNA==","openid":"oAlice"}`

func TestExchangeRetries(t *testing.T) {
	busy := `{"errcode":-1,"errmsg":"system error, rid: 1-2-3"}`
	for _, tc := range []struct {
		name     string
		bodies   []string
		attempts int
		wantErr  failureKind
		wantOK   bool
		calls    int32
	}{
		{name: "busy then ok", bodies: []string{busy, exOK}, attempts: 3, wantOK: true, calls: 2},
		{name: "5xx then ok", bodies: []string{"500", "500", exOK}, attempts: 3, wantOK: true, calls: 3},
		{name: "busy exhausts attempts", bodies: []string{busy}, attempts: 3, wantErr: kindBusy, calls: 3},
		{name: "retry 1 is one call", bodies: []string{busy, exOK}, attempts: 1, wantErr: kindBusy, calls: 1},
		{name: "invalid code is not retried", bodies: []string{`{"errcode":40029,"errmsg":"invalid code"}`, exOK}, attempts: 3, wantErr: kindInvalidCode, calls: 1},
		{name: "code used is not retried", bodies: []string{`{"errcode":40163}`, exOK}, attempts: 3, wantErr: kindCodeUsed, calls: 1},
		{name: "blocked is not retried", bodies: []string{`{"errcode":40226}`, exOK}, attempts: 3, wantErr: kindBlocked, calls: 1},
		{name: "quota is not retried", bodies: []string{`{"errcode":45011}`, exOK}, attempts: 3, wantErr: kindQuota, calls: 1},
		{name: "misconfiguration is not retried", bodies: []string{`{"errcode":40125}`, exOK}, attempts: 3, wantErr: kindMisconfigured, calls: 1},
		{name: "bad response is not retried", bodies: []string{`<html>`, exOK}, attempts: 3, wantErr: kindBadResponse, calls: 1},
		// An attempt that timed out or got a 5xx may have spent the code at
		// WeChat: the 40163 that follows is ours, not the player's.
		{name: "code used after a timeout", bodies: []string{"hang", `{"errcode":40163}`}, attempts: 3, wantErr: kindUnavailable, calls: 2},
		{name: "code used after a 5xx", bodies: []string{"500", `{"errcode":40163}`}, attempts: 3, wantErr: kindUnavailable, calls: 2},
		{name: "code used after busy stays code used", bodies: []string{busy, `{"errcode":40163}`}, attempts: 3, wantErr: kindCodeUsed, calls: 2},
		{name: "code used after a timeout, then busy", bodies: []string{"hang", busy, `{"errcode":40163}`}, attempts: 3, wantErr: kindUnavailable, calls: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, calls := exScript(t, tc.bodies...)
			c, slept := exClient(srv.URL, tc.attempts, 300*time.Millisecond)
			id, attempts, err := c.redeem(context.Background(), credentials{code: "alice.1"})
			if got := calls.Load(); got != tc.calls {
				t.Errorf("WeChat saw %d calls, want %d", got, tc.calls)
			}
			if attempts != int(tc.calls) {
				t.Errorf("attempts = %d, want %d", attempts, tc.calls)
			}
			if len(*slept) != int(tc.calls)-1 {
				t.Errorf("backed off %d times between %d calls", len(*slept), tc.calls)
			}
			if tc.wantOK {
				if err != nil || id.OpenID != "oAlice" {
					t.Fatalf("got %+v, %v; want oAlice", id, err)
				}
				return
			}
			if err == nil || err.kind != tc.wantErr {
				t.Fatalf("got error %v, want kind %d", err, tc.wantErr)
			}
		})
	}
}

func TestExchangeTimeout(t *testing.T) {
	srv, calls := exScript(t, "hang")
	c, _ := exClient(srv.URL, 2, 100*time.Millisecond)
	_, _, err := c.redeem(context.Background(), credentials{code: "alice.1"})
	if err == nil || err.kind != kindTimeout {
		t.Fatalf("got %v, want a timeout", err)
	}
	if calls.Load() != 2 {
		t.Errorf("a timeout is retried: got %d calls, want 2", calls.Load())
	}
}

func TestExchangeStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		io.WriteString(w, `{"errcode":-1}`)
		cancel() // the client leaves during its first attempt
	}))
	t.Cleanup(srv.Close)
	c, _ := exClient(srv.URL, 5, time.Second)
	c.sleep = sleepContext
	c.retry.base, c.retry.max = time.Hour, time.Hour // the first backoff outlives the context
	_, attempts, err := c.redeem(ctx, credentials{code: "alice.1"})
	if err == nil || attempts != 1 || calls.Load() != 1 {
		t.Fatalf("got %d attempts (%d calls), err %v; want 1 attempt and its error", attempts, calls.Load(), err)
	}
}

// A failed round trip must not carry the URL, which holds the secret and the
// code: Go's *url.Error prints it whole.
func TestExchangeErrorsAreRedacted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connection refused from now on

	c, _ := exClient("http://"+addr, 1, time.Second)
	_, _, perr := c.redeem(context.Background(), credentials{code: "alice.secretcode"})
	if perr == nil || perr.kind != kindUnavailable {
		t.Fatalf("got %v, want unavailable", perr)
	}
	refusal := loginRefuser(wechatPlatform, c.retry).refusal(perr, time.Now())
	for _, text := range []string{perr.Error(), refusal.message} {
		if strings.Contains(text, exchangeSecret) || strings.Contains(text, "alice.secretcode") || strings.Contains(text, "js_code") {
			t.Errorf("error text leaks the request: %q", text)
		}
	}
}

func TestExchangeDoesNotFollowRedirects(t *testing.T) {
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { leaked.Store(true) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal?"+r.URL.RawQuery, http.StatusFound)
	}))
	defer srv.Close()
	c, _ := exClient(srv.URL, 1, time.Second)
	if _, _, err := c.redeem(context.Background(), credentials{code: "alice.1"}); err == nil || err.kind != kindBadResponse {
		t.Fatalf("got %v, want a bad response", err)
	}
	if leaked.Load() {
		t.Fatal("the redirect was followed: the secret went to another host")
	}
}

func TestExchangeCapsTheBody(t *testing.T) {
	huge := `{"openid":"oAlice","session_key":"k","pad":"` + strings.Repeat("x", 10<<20) + `"}`
	srv, _ := exScript(t, huge)
	c, _ := exClient(srv.URL, 1, 5*time.Second)
	if _, _, err := c.redeem(context.Background(), credentials{code: "alice.1"}); err == nil || err.kind != kindBadResponse {
		t.Fatalf("got %v, want a bad response for a 10 MB body", err)
	}
}

func TestReadWechatAnswer(t *testing.T) {
	for _, tc := range []struct {
		body    string
		want    Identity
		kind    failureKind
		errcode int
		rid     string
	}{
		{body: exOK, want: Identity{OpenID: "oAlice", SessionKey: "c2Vzc2lvbi1rZXktMTIzNA=="}},
		{body: `{"openid":"o1","session_key":"k","unionid":"u1","errcode":0,"errmsg":"ok"}`, want: Identity{OpenID: "o1", UnionID: "u1", SessionKey: "k"}},
		{body: `{"errcode":40029,"errmsg":"invalid code, rid: 6543a1b2-1c2d3e4f-5a6b7c8d"}`, kind: kindInvalidCode, errcode: 40029, rid: "6543a1b2-1c2d3e4f-5a6b7c8d"},
		{body: `{"errcode":-1,"errmsg":"system error"}`, kind: kindBusy, errcode: -1},
		{body: `{"errcode":40125,"errmsg":"invalid appsecret"}`, kind: kindMisconfigured, errcode: 40125},
		{body: `{"openid":"o1"}`, kind: kindBadResponse},
		{body: `{"session_key":"k"}`, kind: kindBadResponse},
		{body: `{}`, kind: kindBadResponse},
		{body: `{"errcode":"40029"}`, kind: kindBadResponse},
		{body: `{"openid":"o1","session_key":"k"`, kind: kindBadResponse},
		{body: `[1,2]`, kind: kindBadResponse},
		{body: `<html><body>502 Bad Gateway</body></html>`, kind: kindBadResponse},
		{body: ``, kind: kindBadResponse},
	} {
		id, err := wechatPlatform.answer.read([]byte(tc.body))
		if tc.want.OpenID != "" {
			if err != nil || id != tc.want {
				t.Errorf("%s: got %+v, %v; want %+v", tc.body, id, err, tc.want)
			}
			continue
		}
		if err == nil || err.kind != tc.kind || err.errcode != tc.errcode || err.rid != tc.rid {
			t.Errorf("%s: got %+v, want kind %d errcode %d rid %q", tc.body, err, tc.kind, tc.errcode, tc.rid)
		}
	}
}

func FuzzReadWechatAnswer(f *testing.F) {
	for _, seed := range []string{exOK, `{"errcode":40029,"errmsg":"x, rid: 1-2"}`, `{"openid":"o"}`, `<html>`, `{"errcode":1e99}`, `null`,
		`{"openid":"o\n\u0000x","session_key":"k"}`, `{"openid":"o","session_key":"k","unionid":"` + strings.Repeat("u", 3000) + `"}`} {
		f.Add([]byte(seed))
	}
	tokens := newTestSessionTokens(newTestClock(), sessionAppID, sessionSecret)
	f.Fuzz(func(t *testing.T, body []byte) {
		id, err := wechatPlatform.answer.read(body)
		if err == nil && (id.OpenID == "" || id.SessionKey == "") {
			t.Fatalf("accepted a body without openid or session_key: %q", body)
		}
		if err == nil {
			// Every identity accepted earns a session that verifies as itself.
			token, _ := tokens.issue(tokens.apps[0], id)
			if got, verr := verified(tokens, token); verr != nil || got != publicIdentity(id) {
				t.Fatalf("accepted %q, whose session verifies as %+v, %v", body, got, verr)
			}
		}
		if err != nil && err.hasErrcode {
			if err.errcode == 0 {
				t.Fatal("errcode 0 reported as a failure")
			}
			if len(err.rid) > 64 {
				t.Fatalf("rid not bounded: %d bytes", len(err.rid))
			}
		}
		if err != nil {
			_ = loginRefuser(wechatPlatform, retryPolicy{attempts: 1}).refusal(err, time.Now())
		}
	})
}

func TestBackoffIsBoundedFullJitter(t *testing.T) {
	p := retryPolicy{attempts: 10, base: 100 * time.Millisecond, max: time.Second}
	for attempt, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		ceiling *= time.Millisecond
		var sawLow, sawHigh bool
		for range 2000 {
			d := p.backoff(attempt + 1)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: backoff %v outside [0, %v]", attempt+1, d, ceiling)
			}
			sawLow = sawLow || d < ceiling/4
			sawHigh = sawHigh || d > ceiling*3/4
		}
		if !sawLow || !sawHigh {
			t.Errorf("attempt %d: backoff is not spread over [0, %v]", attempt+1, ceiling)
		}
	}
	if got := (retryPolicy{attempts: 70, base: time.Second, max: time.Minute}).backoff(70); got > time.Minute {
		t.Errorf("a huge attempt number overflowed the ceiling: %v", got)
	}
}

func TestWorstCaseBoundsTheExchange(t *testing.T) {
	c := &exchangeClient{timeout: time.Second, retry: retryPolicy{attempts: 3, base: 100 * time.Millisecond, max: 150 * time.Millisecond}}
	if got, want := c.worstCase(), 3*time.Second+100*time.Millisecond+150*time.Millisecond; got != want {
		t.Errorf("worstCase = %v, want %v", got, want)
	}
}

func TestLoginErrorFor(t *testing.T) {
	retry := retryPolicy{attempts: 3, base: 100 * time.Millisecond, max: time.Second}
	for _, tc := range []struct {
		err        *platformError
		status     int
		code       string
		errcode    bool
		retryAfter bool
	}{
		{wechatErrcodes.failure(40029, ""), 401, refusalInvalidCode, true, false},
		{wechatErrcodes.failure(40163, ""), 401, refusalCodeUsed, true, false},
		{wechatErrcodes.failure(40226, ""), 403, refusalUserBlocked, true, false},
		{wechatErrcodes.failure(45011, ""), 429, refusalRateLimited, true, true},
		{wechatErrcodes.failure(-1, ""), 503, refusalUnavailable, true, true},
		{wechatErrcodes.failure(40013, ""), 502, refusalMisconfigured, true, false},
		{wechatErrcodes.failure(40125, ""), 502, refusalMisconfigured, true, false},
		{wechatErrcodes.failure(41002, ""), 502, refusalMisconfigured, true, false},
		{wechatErrcodes.failure(40164, ""), 502, refusalMisconfigured, true, false},
		{wechatErrcodes.failure(99999, ""), 502, refusalMisconfigured, true, false},
		{&platformError{kind: kindBadResponse}, 502, refusalBadResponse, false, false},
		{&platformError{kind: kindUnavailable}, 503, refusalUnavailable, false, true},
		{&platformError{kind: kindTimeout}, 504, refusalTimeout, false, false},
	} {
		e := loginRefuser(wechatPlatform, retry).refusal(tc.err, time.Date(2026, 11, 23, 10, 0, 50, 0, time.UTC))
		if e.status != tc.status || e.code != tc.code || e.hasErrcode != tc.errcode || (e.retryAfter > 0) != tc.retryAfter {
			t.Errorf("%+v: got %d %s errcode=%v retryAfter=%v", tc.err, e.status, e.code, e.hasErrcode, e.retryAfter)
		}
	}
}

func TestUntilNextMinute(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 45, 0, time.UTC)
	if got := untilNextMinute(now); got != 15*time.Second {
		t.Errorf("got %v, want 15s", got)
	}
}

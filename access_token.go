package wechatlogin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// The access token wechat_api puts on every call comes from WeChat's
// stable_token, whose normal mode hands every caller the same token while it
// is valid (so gateways and tools do not invalidate each other, as the
// classic /cgi-bin/token does), and the next one during the current one's
// last 5 minutes, when both work.
const (
	stableTokenPath  = "/cgi-bin/stable_token"
	classicTokenPath = "/cgi-bin/token"
	// tokenCheckPath is the cheapest API that takes the app's access token
	// and nothing else (it lists WeChat's API addresses): asked before a
	// forced refresh, whether WeChat really refuses the token.
	tokenCheckPath = "/cgi-bin/get_api_domain_ip"

	// tokenExpirySafety: a token is not put on a call in its last minute, so
	// that the call reaches WeChat before the token runs out, whatever the
	// clocks and the network do.
	tokenExpirySafety = time.Minute
	// tokenRenewAhead: the renewal asks stable_token for the next token when
	// 4 minutes are left, inside WeChat's 5-minute switch-over, so that no
	// request waits for a token in the steady state.
	tokenRenewAhead = 4 * time.Minute
	// tokenRenewRetry is the pause before a renewal that failed, or that got
	// the current token back, is tried again.
	tokenRenewRetry = 15 * time.Second
	// tokenRenewTimeout bounds one background renewal; no request waits on it.
	tokenRenewTimeout = 10 * time.Second
	// maxTokenLifetime: an expires_in beyond a day is not WeChat's (it says
	// "within 7200 seconds") and is refused rather than trusted.
	maxTokenLifetime = 24 * time.Hour
	// maxAccessTokenLen: WeChat asks for 512 characters of storage; four times
	// that is not a token.
	maxAccessTokenLen = 2048
	// maxTokenAnswer caps a stable_token or token check answer; a real one
	// is under 1 KiB.
	maxTokenAnswer = 16 << 10
	// tokenConfirmationTTL: after WeChat confirms that it takes the token
	// an API refused (the refusal was of another credential the call
	// carried), further refusals of that token by that API are passed on for
	// this long without asking again, so that a backend repeating such a
	// call costs WeChat that call alone.
	tokenConfirmationTTL = 30 * time.Second
	// maxConfirmedAPIs bounds the APIs remembered at once; the paths are the
	// backends' choice.
	maxConfirmedAPIs = 64
)

// WeChat's errcodes for an access_token it will not take.
const (
	errcodeInvalidCredential = 40001
	errcodeInvalidToken      = 40014
	errcodeTokenExpired      = 42001
)

// refusesToken reports whether errcode says the call's access_token was not
// accepted, so that the call did nothing and can be repeated with another.
func refusesToken(errcode int) bool {
	return errcode == errcodeInvalidCredential || errcode == errcodeInvalidToken || errcode == errcodeTokenExpired
}

// accessToken is a WeChat access_token. Its value is a credential: it never
// goes into a log line, an error or a metric label.
type accessToken struct {
	value string
	// expires is when WeChat said it runs out, counted from when we asked.
	expires time.Time
}

// usableUntil is when the token stops being put on calls.
func (t accessToken) usableUntil() time.Time { return t.expires.Add(-tokenExpirySafety) }

func (t accessToken) usable(now time.Time) bool {
	return t.value != "" && now.Before(t.usableUntil())
}

// renewalDelay is how long the renewal waits, after now, before asking for
// the token that follows t.
func renewalDelay(t accessToken, now time.Time) time.Duration {
	if d := t.expires.Add(-tokenRenewAhead).Sub(now); d > 0 {
		return d
	}
	return tokenRenewRetry
}

// stableTokenClient calls stable_token. It is safe for concurrent use.
type stableTokenClient struct {
	http          *http.Client
	url           string
	checkURL      string // tokenCheckPath at the endpoint
	appID, secret string
}

// stableTokenRequest is stable_token's JSON body.
type stableTokenRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

// fetch asks stable_token for the app's token, in normal mode or with
// force_refresh. now is when the question is asked.
func (c *stableTokenClient) fetch(ctx context.Context, force bool, now time.Time) (accessToken, *platformError) {
	// Marshalling a struct of strings and a bool cannot fail.
	body, _ := json.Marshal(stableTokenRequest{GrantType: "client_credential", AppID: c.appID, Secret: c.secret, ForceRefresh: force})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return accessToken{}, badResponse("could not build the stable_token request")
	}
	req.Header.Set("Content-Type", "application/json")
	answer, perr := callPlatform(c.http, req, maxTokenAnswer)
	if perr != nil {
		return accessToken{}, perr
	}
	value, lifetime, aerr := decodeStableToken(answer)
	if aerr != nil {
		return accessToken{}, aerr
	}
	return accessToken{value: value, expires: now.Add(lifetime)}, nil
}

// tokenVerdict is what WeChat says of a token, asked directly.
type tokenVerdict int

const (
	tokenVerdictUnknown tokenVerdict = iota // no answer, or one that says neither
	tokenAccepted
	tokenRefused
)

// check asks WeChat whether it takes t itself, calling an API that takes
// the app's token and nothing else: an answer without an errcode (or 0)
// accepts it, 40001, 40014 or 42001 refuse it.
func (c *stableTokenClient) check(ctx context.Context, t accessToken) tokenVerdict {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.checkURL+"?access_token="+url.QueryEscape(t.value), nil)
	if err != nil {
		return tokenVerdictUnknown
	}
	answer, perr := callPlatform(c.http, req, maxTokenAnswer)
	if perr != nil {
		return tokenVerdictUnknown
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(answer, &fields) != nil || fields == nil {
		return tokenVerdictUnknown
	}
	raw, has := fields["errcode"]
	if !has {
		return tokenAccepted // the API's data, as get_api_domain_ip's ip_list
	}
	var errcode int
	if json.Unmarshal(raw, &errcode) != nil {
		return tokenVerdictUnknown
	}
	switch {
	case errcode == 0:
		return tokenAccepted
	case refusesToken(errcode):
		return tokenRefused
	}
	return tokenVerdictUnknown
}

// decodeStableToken reads a stable_token answer: the token and its lifetime,
// or WeChat's errcode. The errmsg is WeChat's free text and is not kept,
// only its request id.
func decodeStableToken(answer []byte) (string, time.Duration, *platformError) {
	var a struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		ErrCode     int    `json:"errcode"`
		ErrMsg      string `json:"errmsg"`
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return "", 0, badResponse("stable_token answer is not the expected JSON")
	}
	if a.ErrCode != 0 {
		return "", 0, wechatErrcodes.failure(a.ErrCode, ridOf(a.ErrMsg))
	}
	if !isTokenValue(a.AccessToken) || a.ExpiresIn <= 0 || a.ExpiresIn > int64(maxTokenLifetime/time.Second) {
		return "", 0, badResponse("stable_token answer lacks a usable access_token and expires_in")
	}
	return a.AccessToken, time.Duration(a.ExpiresIn) * time.Second, nil
}

// isTokenValue reports whether s can be an access_token: visible ASCII, of a
// sane length.
func isTokenValue(s string) bool { return isVisibleASCII(s, maxAccessTokenLen) }

// tokenManagers holds a tokenManager per (app_id, endpoint, app_secret), so
// that the token, the fetches in flight and the renewal outlive config
// reloads, and a staging site pointing at a simulator never shares a token
// with production.
var tokenManagers = caddy.NewUsagePool()

// tokenManager keeps one app's access token: it fetches it once however
// many requests need it at once, renews it ahead of expiry in the
// background, and replaces it when WeChat refuses it. Safe for concurrent
// use.
type tokenManager struct {
	appID   string
	client  *stableTokenClient
	store   tokenStore
	metrics *apiMetrics
	now     func() time.Time
	// after waits before a renewal; tests swap it to drive time by hand.
	after func(time.Duration) <-chan time.Time
	// logger is the current config's, looked up at each line, as the
	// manager outlives the config that made it.
	logger func() *zap.Logger

	// current is this gateway's copy of the stored token, read on every
	// request without a lock; nil until the first fetch.
	current atomic.Pointer[accessToken]
	// confirmed remembers the APIs whose refusal of the token WeChat said
	// was not the token's fault.
	confirmed tokenConfirmations
	flights   singleflight.Group
	// renewed wakes the renewal when a request replaced the token.
	renewed        chan struct{}
	renewalFailing atomic.Bool // for one log line per change of state

	ctx  context.Context // ends when the last handler using the manager is cleaned up
	stop context.CancelFunc
	mu   sync.Mutex    // guards done
	done chan struct{} // closed when the renewal has stopped; nil until it starts
}

func newTokenManager(appID, endpoint, secret string, metrics *apiMetrics) *tokenManager {
	ctx, stop := context.WithCancel(context.Background())
	return &tokenManager{
		appID: appID,
		client: &stableTokenClient{
			http:     newHTTPClient(maxAPITimeout), // each fetch is bounded by its own deadline
			url:      endpoint + stableTokenPath,
			checkURL: endpoint + tokenCheckPath,
			// The secret stays in memory, in this one place, for the life of the manager.
			appID: appID, secret: secret,
		},
		store:   newMemoryTokenStore(),
		metrics: metrics,
		now:     time.Now,
		after:   time.After,
		logger:  func() *zap.Logger { return caddy.Log().Named("http.handlers.wechat_api") },
		renewed: make(chan struct{}, 1),
		ctx:     ctx,
		stop:    stop,
	}
}

// Destruct stops the renewal; the pool calls it once no handler uses the
// manager.
func (m *tokenManager) Destruct() error {
	m.mu.Lock()
	m.stop()
	done := m.done
	m.mu.Unlock()
	if done != nil {
		<-done
	}
	m.client.http.CloseIdleConnections()
	return nil
}

// token returns a usable token, fetching one only when there is none;
// a fetch waits at most timeout.
func (m *tokenManager) token(ctx context.Context, timeout time.Duration) (accessToken, *platformError) {
	current := m.current.Load()
	if current != nil && current.usable(m.now()) {
		return *current, nil
	}
	var stale accessToken
	if current != nil {
		stale = *current
	}
	return m.obtain(ctx, timeout, stale, 0, "")
}

// tokenConfirmations remembers the APIs whose refusal of a token WeChat
// said was not the token's fault, and when: per API, so that another API's
// refusal of the token (it was revoked meanwhile) still replaces it.
type tokenConfirmations struct {
	mu    sync.Mutex
	token string               // the token they are about
	at    map[string]time.Time // API path → when WeChat took the token after it refused it
}

// note records that WeChat took token after api refused it, at now.
func (c *tokenConfirmations) note(token, api string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != token || c.at == nil {
		c.token, c.at = token, make(map[string]time.Time)
	}
	maps.DeleteFunc(c.at, func(_ string, at time.Time) bool { return now.Sub(at) >= tokenConfirmationTTL })
	if len(c.at) < maxConfirmedAPIs {
		c.at[api] = now
	}
}

// cover reports whether WeChat took token, within tokenConfirmationTTL of
// now, after api refused it.
func (c *tokenConfirmations) cover(token, api string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.at[api]
	return ok && c.token == token && now.Sub(at) < tokenConfirmationTTL
}

// replace returns a usable token other than refused, which the API at path
// api refused with errcode; or refused itself when WeChat takes it (the API
// refused something else the call carried, and repeating the call would get
// the same answer), as it confirmed for that API within
// tokenConfirmationTTL, or does now. Calls refused together share one fetch.
func (m *tokenManager) replace(ctx context.Context, timeout time.Duration, refused accessToken, errcode int, api string) (accessToken, *platformError) {
	now := m.now()
	if current := m.current.Load(); current != nil && current.value != refused.value && current.usable(now) {
		return *current, nil // replaced already
	}
	if m.confirmed.cover(refused.value, api, now) {
		return refused, nil
	}
	return m.obtain(ctx, timeout, refused, errcode, api)
}

// obtain gets a usable token other than stale from the store, which fetches
// one unless another caller already has. refusedWith is WeChat's errcode if
// the API at path api refused stale, 0 if it is merely old (or absent).
// Callers asking about the same token and API share one fetch, which runs
// on the manager's lifetime (not the first caller's, who may go away)
// within timeout; each caller waits until its own ctx ends.
func (m *tokenManager) obtain(ctx context.Context, timeout time.Duration, stale accessToken, refusedWith int, api string) (accessToken, *platformError) {
	key := fmt.Sprintf("%d %s %s", refusedWith, stale.value, api)
	results := m.flights.DoChan(key, func() (any, error) {
		fetchCtx, cancel := context.WithTimeout(m.ctx, timeout)
		defer cancel()
		t, err := m.store.refresh(fetchCtx, m.now(), stale, func(ctx context.Context) (accessToken, error) {
			return m.fetchReplacing(ctx, stale, refusedWith, api)
		})
		if err != nil {
			return nil, err
		}
		m.adopt(t)
		return t, nil
	})
	select {
	case res := <-results:
		if res.Err != nil {
			return accessToken{}, asPlatformError(res.Err)
		}
		t, _ := res.Val.(accessToken)
		return t, nil
	case <-ctx.Done():
		return accessToken{}, &platformError{kind: kindTimeout}
	}
}

// asPlatformError presents a store's failure as a failed WeChat call; the
// fetches' own failures already are.
func asPlatformError(err error) *platformError {
	var perr *platformError
	if errors.As(err, &perr) {
		return perr
	}
	return &platformError{kind: kindUnavailable, detail: "token store: " + redact(err.Error())}
}

// fetchReplacing fetches the token that follows stale: in normal mode, and
// with force_refresh only when WeChat refused stale and normal mode hands it
// back, within WeChat's limits on forced refreshes.
func (m *tokenManager) fetchReplacing(ctx context.Context, stale accessToken, refusedWith int, api string) (accessToken, error) {
	t, err := m.fetch(ctx, false)
	if err != nil || refusedWith == 0 || t.value != stale.value {
		return t, err
	}
	// A forced refresh invalidates the token for every gateway and tool of
	// the app, and WeChat allows few: it is spent only on a token WeChat
	// refuses for sure.
	switch m.client.check(ctx, t) {
	case tokenAccepted:
		// The refusal was of something else (another credential the
		// backend's call carried): the token stays, and the call's answer
		// goes back as it is.
		m.confirmed.note(t.value, api, m.now())
		m.logger().Debug("an API refused a call with the app's access token, but WeChat accepts the token itself: no forced refresh",
			zap.String("app_id", m.appID), zap.Int("errcode", refusedWith))
		return t, nil
	case tokenVerdictUnknown:
		m.logger().Debug("an API refused a call with the app's access token, and WeChat did not say whether it accepts the token: no forced refresh",
			zap.String("app_id", m.appID), zap.Int("errcode", refusedWith))
		return t, nil
	}
	allowed, err := m.store.allowForcedRefresh(ctx, m.now())
	if err != nil {
		return accessToken{}, err
	}
	if !allowed {
		m.logger().Warn("wechat refuses the access token stable_token hands out, and WeChat's limit on forced refreshes (30 s apart, 20 a day) allows none now",
			zap.String("app_id", m.appID), zap.Int("errcode", refusedWith))
		return accessToken{}, wechatErrcodes.failure(refusedWith, "")
	}
	return m.fetch(ctx, true)
}

// fetch makes one stable_token call, counts it and logs it.
func (m *tokenManager) fetch(ctx context.Context, force bool) (accessToken, error) {
	start := m.now()
	t, err := m.client.fetch(ctx, force, start)
	outcome := "ok"
	if force {
		outcome = "forced"
	}
	if err != nil {
		outcome = apiRefuser.code(err)
	}
	m.metrics.tokenFetched(outcome)
	m.logFetch(force, outcome, t, err, m.now().Sub(start))
	if err != nil {
		return accessToken{}, err
	}
	return t, nil
}

// logFetch writes one line per stable_token call: at debug level normally,
// at error level when WeChat refuses the configured app_id or app_secret.
func (m *tokenManager) logFetch(force bool, outcome string, t accessToken, err *platformError, elapsed time.Duration) {
	level, msg := zap.DebugLevel, "wechat token fetch"
	if err != nil && err.hasErrcode && misconfigured(err.errcode) {
		level, msg = zap.ErrorLevel, "wechat refused the configured app_id or app_secret for an access token"
	}
	ce := m.logger().Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{zap.String("app_id", m.appID), zap.Bool("force_refresh", force), zap.String("result", outcome), zap.Duration("duration", elapsed)}
	if err != nil {
		if err.hasErrcode {
			fields = append(fields, zap.Int("errcode", err.errcode), zap.String("rid", err.rid))
		}
		fields = append(fields, zap.String("error", err.Error()))
	} else {
		fields = append(fields, zap.Time("expires", t.expires))
	}
	ce.Write(fields...)
}

// misconfigured reports whether a stable_token errcode blames the gateway's
// configuration: the appid (40013), the secret (40125, and 40001 in older
// answers), or the server's IP missing from the allow-list (40164).
func misconfigured(errcode int) bool {
	switch errcode {
	case errcodeInvalidCredential, 40013, 40125, 40164:
		return true
	}
	return false
}

// adopt makes t this gateway's token and keeps it renewed.
func (m *tokenManager) adopt(t accessToken) {
	if previous := m.current.Swap(&t); previous != nil && *previous != t {
		select {
		case m.renewed <- struct{}{}:
		default: // the renewal has a wake-up pending already
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done == nil && m.ctx.Err() == nil {
		m.done = make(chan struct{})
		go m.renew(m.done)
	}
}

// renew fetches the next token shortly before the current one runs out,
// until the manager is destroyed. A failure is retried; requests keep the
// current token meanwhile, and fetch one themselves only once it is no longer
// usable.
func (m *tokenManager) renew(done chan struct{}) {
	defer close(done)
	for {
		t := *m.current.Load()
		select {
		case <-m.ctx.Done():
			return
		case <-m.renewed:
			continue // a request replaced the token: schedule from the new one
		case <-m.after(renewalDelay(t, m.now())):
		}
		_, err := m.obtain(m.ctx, tokenRenewTimeout, t, 0, "")
		if m.ctx.Err() != nil {
			return
		}
		select {
		case <-m.renewed: // the wake-up this renewal's own token sent
		default:
		}
		m.noteRenewal(err)
	}
}

// noteRenewal logs a renewal's outcome when it differs from the last one's.
func (m *tokenManager) noteRenewal(err *platformError) {
	if err != nil && m.renewalFailing.CompareAndSwap(false, true) {
		var usableFor time.Duration
		if t := m.current.Load(); t != nil {
			usableFor = max(t.usableUntil().Sub(m.now()), 0)
		}
		m.logger().Warn("wechat access token renewal failing; the current token is used while it lasts, and the renewal retried",
			zap.String("app_id", m.appID), zap.Duration("usable_for", usableFor), zap.String("error", err.Error()))
	}
	if err == nil && m.renewalFailing.CompareAndSwap(true, false) {
		m.logger().Info("wechat access token renewal recovered", zap.String("app_id", m.appID))
	}
}

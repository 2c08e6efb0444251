// Package wechatlogin is a Caddy HTTP handler that puts WeChat mini-game and
// mini-program login in front of game servers that know nothing about WeChat.
// It exchanges a wx.login code at jscode2session and gives the upstream the
// player's identity in the headers WeChat Cloud Hosting uses (X-WX-OPENID,
// X-WX-UNIONID, X-WX-APPID), at login and, with sessions, on every request.
package wechatlogin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/singleflight"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the wechat_login HTTP handler. On a login (a request to
// LoginPath) it exchanges the WeChat code for the player's identity and
// forwards the request with trusted identity headers; on every request it
// first removes any identity header the client sent.
//
// After a login or a verified session, the placeholders
// {http.wechat.openid}, {http.wechat.unionid} and {http.wechat.appid} hold
// the identity.
type Handler struct {
	// The mini-game's AppID. Required.
	AppID string `json:"app_id,omitempty"`
	// The mini-game's AppSecret. Required. Placeholders such as {env.X} and
	// {file.PATH} are resolved at provision; use them rather than writing
	// the secret into the config.
	AppSecret string `json:"app_secret,omitempty"`
	// Requests to exactly this path are logins. Default /wx/login.
	LoginPath string `json:"login_path,omitempty"`
	// Name of the query, JSON or form field holding the code. Default code.
	CodeField string `json:"code_field,omitempty"`
	// Base URL of the WeChat API. Default https://api.weixin.qq.com.
	Endpoint string `json:"endpoint,omitempty"`
	// Time allowed for one WeChat call. Default 3s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// How transient WeChat failures are retried. Default 3 attempts,
	// backoff from 100ms up to 1s.
	Retry *RetryConfig `json:"retry,omitempty"`
	// Logins per player (openid). Default 60 per 1m; more than WeChat's own
	// 100 per minute is refused.
	Budget *Budget `json:"budget,omitempty"`
	// Logins per client IP, charged before any WeChat call. Default 600 per
	// 1m: carrier NAT puts many players behind one address.
	IPBudget *Budget `json:"ip_budget,omitempty"`
	// How long a code's result is reused for repeated logins with the same
	// code. Default 5m; 0 disables the cache.
	CacheTTL *caddy.Duration `json:"cache_ttl,omitempty"`
	// Most codes cached. Default 10000.
	CacheSize int `json:"cache_size,omitempty"`
	// Most keys (players, IPs) whose budgets are tracked; the least recently
	// used are dropped. Default 100000.
	BudgetSize int `json:"budget_size,omitempty"`
	// Send the session_key upstream as X-WX-SESSION-KEY. It never reaches
	// the client.
	ForwardSessionKey bool `json:"forward_session_key,omitempty"`
	// Issue and verify player sessions.
	Session *SessionConfig `json:"session,omitempty"`

	secret   string // AppSecret, resolved
	client   *wechatClient
	players  budgetStore
	ips      budgetStore // nil when ip_budget is off
	codes    codeCache
	flights  *singleflight.Group
	sessions *sessionTokens // nil without a session block
	state    *appState      // shared with the app's other handlers, across reloads
	metrics  *appMetrics
	logger   *zap.Logger
	// now is the clock; tests swap it.
	now func() time.Time
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.wechat_login",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, resolves secrets and attaches the state shared
// across reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	h.setDefaults()

	repl := caddy.NewReplacer()
	h.secret = repl.ReplaceKnown(h.AppSecret, "")
	var sessionSecrets [][]byte
	if h.Session != nil {
		for _, s := range h.Session.Secrets {
			sessionSecrets = append(sessionSecrets, []byte(repl.ReplaceKnown(s, "")))
		}
	}

	// Shared state is only touched by a valid config, so a bad reload
	// cannot disturb the running one.
	if err := h.validate(sessionSecrets); err != nil {
		return err
	}

	h.client = &wechatClient{
		http:       newHTTPClient(time.Duration(h.Timeout)),
		requestURL: jscode2sessionURL(h.Endpoint, h.AppID, h.secret),
		timeout:    time.Duration(h.Timeout),
		retry:      retryPolicy{attempts: h.Retry.Attempts, base: time.Duration(h.Retry.Base), max: time.Duration(h.Retry.Max)},
		sleep:      sleepContext,
	}
	if h.Session != nil {
		h.sessions = newSessionTokens(h.AppID, sessionSecrets, time.Duration(h.Session.TTL), h.now)
	}

	value, _, err := appStates.LoadOrNew(h.AppID, func() (caddy.Destructor, error) { return newAppState(), nil })
	if err != nil {
		return err
	}
	h.state = value.(*appState)
	players, ips, codes := h.state.attach(h)
	h.players = newBudgetView(players, *h.Budget)
	if !h.IPBudget.Off {
		h.ips = newBudgetView(ips, *h.IPBudget)
	}
	h.codes = noCodeCache{}
	if codes != nil {
		h.codes = codes
	}
	h.flights = &h.state.flights

	if h.ForwardSessionKey && h.logger.Core().Enabled(zapcore.DebugLevel) {
		h.logger.Warn("forward_session_key with debug logging: reverse_proxy logs the headers it sends upstream at debug level, X-WX-SESSION-KEY included; turn debug off in production")
	}
	h.metrics, err = newAppMetrics(ctx.GetMetricsRegistry(), h.AppID)
	return err
}

// Cleanup releases the shared state and idle WeChat connections.
func (h *Handler) Cleanup() error {
	if h.client != nil {
		h.client.http.CloseIdleConnections()
	}
	if h.state == nil { // never attached (provision failed before)
		return nil
	}
	h.state.detach(h)
	_, err := appStates.Delete(h.AppID)
	return err
}

// ServeHTTP strips client-sent identity, then serves a login or passes the
// request on with the identity of its session, if any.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	code, session := stripClientIdentity(r)
	if r.URL.Path == h.LoginPath {
		return h.serveLogin(w, r, next, code, session)
	}
	if h.sessions == nil {
		return next.ServeHTTP(w, r)
	}
	id, err := h.sessions.presentedSession(r, session)
	if err != nil {
		if h.Session.Optional {
			return next.ServeHTTP(w, r)
		}
		h.metrics.sessionRejected(sessionRejection(err))
		newLoginError(http.StatusUnauthorized, errInvalidSession, "a valid session is required: log in again").write(w)
		return nil
	}
	h.attachIdentity(r, id)
	return next.ServeHTTP(w, r)
}

func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, codeHeader, session string) error {
	now := h.now()
	if h.ips != nil {
		if wait, ok := h.ips.take(clientIP(r), now); !ok {
			h.metrics.budgetRejected("ip")
			h.refuseLogin(w, rateLimited("too many logins from this address", wait))
			return nil
		}
	}
	code, lerr := loginCode(r, h.CodeField, codeHeader)
	if lerr != nil {
		h.refuseLogin(w, lerr)
		return nil
	}
	var prepaid string // the player whose budget this login has already spent
	if h.sessions != nil {
		// A returning player in a login loop is stopped here, before any
		// WeChat call. Spending the event now, not after the exchange, is
		// what stops concurrent loops of one player too.
		if id, err := h.sessions.presentedSession(r, session); err == nil {
			if wait, ok := h.players.take(id.OpenID, now); !ok {
				h.metrics.budgetRejected("player")
				h.refuseLogin(w, playerRateLimited(wait))
				return nil
			}
			prepaid = id.OpenID
		}
	}

	id, lerr := h.redeem(r.Context(), code, prepaid)
	if lerr != nil {
		if r.Context().Err() != nil {
			return nil // the client has gone; nobody to answer
		}
		h.refuseLogin(w, lerr)
		return nil
	}
	dropCode(r, h.CodeField)
	h.attachIdentity(r, id)
	h.metrics.login("ok")
	if h.sessions == nil {
		return next.ServeHTTP(w, r)
	}

	token, expires, err := h.sessions.issue(id)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, errors.New("signing the session failed"))
	}
	h.metrics.sessionIssued()
	if h.Session.Respond {
		return respondLogin(w, id, token, expires)
	}
	return next.ServeHTTP(&sessionIssuingWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, token: token}, r)
}

func playerRateLimited(wait time.Duration) *loginError {
	return rateLimited("too many logins for this player", wait)
}

// respondLogin answers a login at the gateway (session respond mode).
func respondLogin(w http.ResponseWriter, id Identity, token string, expires time.Time) error {
	body := struct {
		OpenID    string `json:"openid"`
		UnionID   string `json:"unionid,omitempty"`
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}{id.OpenID, id.UnionID, token, expires.UTC().Format(time.RFC3339)}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	return json.NewEncoder(w).Encode(body)
}

// redeem turns a code into an identity: from the cache, by joining a call in
// flight for the same code, or by calling WeChat.
func (h *Handler) redeem(ctx context.Context, code, prepaid string) (Identity, *loginError) {
	key := newCodeKey(h.AppID, code)
	if id, ok := h.codes.get(key, h.now()); ok {
		h.metrics.cacheHit()
		if id.OpenID == prepaid {
			return id, nil
		}
		return h.admit(id)
	}

	led := false
	ch := h.flights.DoChan(string(key[:]), func() (any, error) {
		led = true
		return h.exchange(ctx, key, code, prepaid)
	})
	select {
	case res := <-ch:
		if !led {
			h.metrics.coalesced()
		}
		if res.Err != nil {
			return Identity{}, res.Err.(*loginError)
		}
		// The exchange charged the player's budget once for everyone who
		// asked for this code at the same time.
		return res.Val.(Identity), nil
	case <-ctx.Done():
		return Identity{}, newLoginError(http.StatusRequestTimeout, errInvalidRequest, "the client went away")
	}
}

// admit lets a cached result through only while the player has budget left;
// reusing a result costs no WeChat call, so it spends nothing, but a client
// replaying one code in a loop is stopped with the rest.
func (h *Handler) admit(id Identity) (Identity, *loginError) {
	if wait, ok := h.players.check(id.OpenID, h.now()); !ok {
		h.metrics.budgetRejected("player")
		return Identity{}, playerRateLimited(wait)
	}
	return id, nil
}

// exchange calls WeChat for a code on behalf of every login waiting for it,
// and charges the player's budget unless the login that started it had
// already paid for that player (prepaid). It runs on its own deadline,
// bounded by the retry policy, so that the first client hanging up does not
// fail the others.
func (h *Handler) exchange(reqCtx context.Context, key codeKey, code, prepaid string) (any, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), h.client.worstCase())
	defer cancel()

	start := time.Now()
	id, res, err := h.client.exchange(ctx, code)
	elapsed := time.Since(start)
	h.metrics.exchanged(res.attempts, elapsed)

	if err != nil {
		lerr := loginErrorFor(err, h.client.retry, h.now())
		h.logExchange(lerr.code, res, elapsed, err)
		return nil, lerr
	}
	h.logExchange("ok", res, elapsed, nil)
	h.codes.add(key, id, h.now())
	if id.OpenID == prepaid {
		return id, nil
	}
	if wait, ok := h.players.take(id.OpenID, h.now()); !ok {
		h.metrics.budgetRejected("player")
		return nil, playerRateLimited(wait)
	}
	return id, nil
}

// logExchange writes one line per exchange: at debug level normally, at
// error level when WeChat says our configuration is wrong. It logs WeChat's
// rid, never its errmsg or anything of the request.
func (h *Handler) logExchange(result string, res exchangeResult, elapsed time.Duration, err *attemptError) {
	level := zapcore.DebugLevel
	msg := "wechat exchange"
	if result == errWechatMisconfigured {
		level = zapcore.ErrorLevel
		msg = "wechat refused the configured app_id or app_secret"
	}
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("app_id", h.AppID),
		zap.String("result", result),
		zap.Int("attempts", res.attempts),
		zap.Duration("duration", elapsed),
	}
	if err != nil {
		if err.kind == kindErrcode {
			fields = append(fields, zap.Int("errcode", err.errcode), zap.String("rid", err.rid))
		}
		fields = append(fields, zap.String("error", err.Error()))
	}
	ce.Write(fields...)
}

// refuseLogin answers a login with the documented JSON error; nothing is
// forwarded.
func (h *Handler) refuseLogin(w http.ResponseWriter, e *loginError) {
	h.metrics.login(e.code)
	e.write(w)
}

// attachIdentity sets the identity headers and placeholders.
func (h *Handler) attachIdentity(r *http.Request, id Identity) {
	h.setIdentityHeaders(r.Header, id)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.wechat.openid", id.OpenID)
		repl.Set("http.wechat.unionid", id.UnionID)
		repl.Set("http.wechat.appid", h.AppID)
	}
}

// clientIP is the client address as Caddy determined it, which honours
// trusted_proxies behind a load balancer.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// Package wechatlogin is a Caddy HTTP handler that puts WeChat mini-game and
// mini-program login in front of game servers that know nothing about WeChat.
// It exchanges a wx.login code at jscode2session and gives the upstream the
// player's identity in the headers WeChat Cloud Hosting uses (X-WX-OPENID,
// X-WX-UNIONID, X-WX-APPID), at login and, with sessions, on every request.
package wechatlogin

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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
	// code. Default 1m, at most 5m; 0 disables the cache.
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
	// Share budgets, the code cache and calls in flight with the other
	// gateways of a fleet, through Redis. Default: none, every gateway keeps
	// its own state in memory.
	Redis *RedisConfig `json:"redis,omitempty"`

	resolved resolvedSecrets
	client   *wechatClient
	players  budgetStore
	ips      budgetStore // unlimited when ip_budget is off
	codes    codeStore
	sessions *sessionTokens // nil without a session block
	stateKey string         // this handler's entry in appStates
	release  func()         // ends this handler's leases on the shared state
	fleet    *fleet         // nil without a redis block
	metrics  *appMetrics
	logger   *zap.Logger
	// appIDPlaceholder is AppID as the placeholder's value, boxed once
	// rather than on every request.
	appIDPlaceholder any
	// now is the clock; tests swap it.
	now func() time.Time
	// sessionKeys keeps every session_key WeChat answers, for wechat_api.
	sessionKeys *sessionKeyCustody
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
	h.resolveSecrets()
	h.appIDPlaceholder = h.AppID
	// Shared state is only touched by a valid config, so a bad reload
	// cannot disturb the running one.
	if err := h.Validate(); err != nil {
		return err
	}
	h.warnIfCleartext(h.logger)

	h.client = &wechatClient{
		http:       newHTTPClient(time.Duration(h.Timeout)),
		requestURL: jscode2sessionURL(h.Endpoint, h.AppID, h.resolved.app),
		timeout:    time.Duration(h.Timeout),
		retry:      retryPolicy{attempts: h.Retry.Attempts, base: time.Duration(h.Retry.Base), max: time.Duration(h.Retry.Max)},
		sleep:      sleepContext,
	}
	if h.Session != nil {
		h.sessions = newSessionTokens(h.AppID, h.resolved.session, time.Duration(h.Session.TTL), h.now)
	}

	if err := h.attachState(ctx); err != nil {
		return err
	}
	if h.ForwardSessionKey && h.logger.Core().Enabled(zapcore.DebugLevel) {
		h.logger.Warn("forward_session_key with debug logging: reverse_proxy logs the headers it sends upstream at debug level, X-WX-SESSION-KEY included; turn debug off in production")
	}
	metrics, err := newAppMetrics(ctx.GetMetricsRegistry(), h.AppID)
	h.metrics = metrics
	return err
}

// attachState reads and writes the configuration's shared state through
// this handler's own limits, leasing the table sizes it wants until Cleanup.
// With a redis block the state is the fleet's, and the memory tables serve
// while Redis cannot.
func (h *Handler) attachState(ctx caddy.Context) error {
	endpoint := canonicalEndpoint(h.Endpoint)
	h.stateKey = stateKey(h.AppID, endpoint, h.resolved.app)
	value, _, _ := appStates.LoadOrNew(h.stateKey, func() (caddy.Destructor, error) { return newAppState(), nil })
	state := value.(*appState)
	releases := []func(){state.players.lease(h.BudgetSize), state.codes.lease(h.CacheSize), state.sessionKeys.entries.lease(sessionKeyCapacity)}
	h.sessionKeys = state.sessionKeys
	h.release = func() {
		for _, release := range releases {
			release()
		}
	}
	cacheTTL := time.Duration(*h.CacheTTL)
	h.players = newMemoryBudget(state.players, *h.Budget, h.now)
	h.ips = unlimited{}
	if !h.IPBudget.Off {
		releases = append(releases, state.ips.lease(h.BudgetSize))
		h.ips = newMemoryBudget(state.ips, *h.IPBudget, h.now)
	}
	local := memoryCodes{table: state.codes, ttl: cacheTTL, flights: &state.flights, now: h.now, players: h.players}
	h.codes = local
	if h.Redis == nil {
		return nil
	}

	fleet, err := newFleet(ctx, h.Redis, h.AppID, endpoint, h.resolved.app)
	if err != nil {
		return err
	}
	h.fleet = fleet
	players := fleet.budget("player", *h.Budget, state.players, h.now)
	h.players, local.players = players, players
	if !h.IPBudget.Off {
		h.ips = fleet.budget("ip", *h.IPBudget, state.ips, h.now)
	}
	h.codes = fleet.codes(local, players, cacheTTL, h.client.worstCase())
	return nil
}

// Cleanup releases the shared state and idle WeChat connections.
func (h *Handler) Cleanup() error {
	if h.client != nil {
		h.client.http.CloseIdleConnections()
	}
	if h.release == nil { // never attached (provision failed before)
		return nil
	}
	h.release()
	_, err := appStates.Delete(h.stateKey)
	if h.fleet != nil {
		err = errors.Join(err, h.fleet.release())
	}
	return err
}

// ServeHTTP strips client-sent identity, then serves a login or passes the
// request on with the identity of its session, if any. Every refusal is
// written in one place, refuse.
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
		h.refuse(w, newRefusal(http.StatusUnauthorized, errInvalidSession, "a valid session is required: log in again"))
		return nil
	}
	h.attachIdentity(r, id)
	return next.ServeHTTP(w, r)
}

// serveLogin serves a login; codeHeader and session are the X-WX-CODE and
// X-WX-SESSION values the client sent, already stripped from the request.
func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, codeHeader, session string) error {
	id, token, expires, refusal := h.decideLogin(r, codeHeader, session)
	if refusal != nil {
		if refusal.status != statusClientClosedRequest {
			h.metrics.login(refusal.code)
		}
		h.refuse(w, refusal)
		return nil
	}
	h.metrics.login(loginOK)
	dropCode(r, h.CodeField)
	h.attachIdentity(r, id)
	switch {
	case h.sessions == nil:
		return next.ServeHTTP(w, r)
	case h.Session.Respond:
		return respondLogin(w, id, token, expires)
	}
	return next.ServeHTTP(newSessionIssuingWriter(w, token), r)
}

// refuse answers with the documented JSON error; nothing is forwarded. A
// client that went away is recorded as 499, as reverse_proxy does, so the
// access log reflects the disconnect.
func (h *Handler) refuse(w http.ResponseWriter, refusal *jsonRefusal) {
	if refusal.status == statusClientClosedRequest {
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	refusal.write(w)
}

// respondLogin answers a login at the gateway (session respond mode).
func respondLogin(w http.ResponseWriter, id Identity, token string, expires time.Time) error {
	body := struct {
		OpenID    string `json:"openid"`
		UnionID   string `json:"unionid,omitempty"`
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}{id.OpenID, id.UnionID, token, expires.UTC().Format(time.RFC3339)}
	return writeJSON(w, http.StatusOK, "application/json", body)
}

// attachIdentity sets the identity headers and placeholders.
func (h *Handler) attachIdentity(r *http.Request, id Identity) {
	h.setIdentityHeaders(r.Header, id)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.wechat.openid", id.OpenID)
		repl.Set("http.wechat.unionid", id.UnionID)
		repl.Set("http.wechat.appid", h.appIDPlaceholder)
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// Package wechatlogin is a Caddy HTTP handler that puts mini-game login
// (WeChat, QQ, Douyin…) in front of game servers that know nothing about
// it. It exchanges a wx.login (qq.login, tt.login) code at the platform and
// gives the upstream the player's identity in the headers of the
// platform's cloud (X-WX-OPENID, X-TT-OPENID…), at login and, with
// sessions, on every request.
package wechatlogin

import (
	"cmp"
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
	// The WeChat mini-game's AppID. Required unless Apps names the game's
	// apps.
	AppID string `json:"app_id,omitempty"`
	// The WeChat mini-game's AppSecret. Required with AppID. Placeholders
	// such as {env.X} and {file.PATH} are resolved at provision; use them
	// rather than writing the secret into the config.
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
	// The game's apps on other platforms (or more WeChat apps), each with
	// its own login path; they share the rest of this configuration.
	Apps []*PlatformApp `json:"apps,omitempty"`

	resolved resolvedSecrets
	apps     []*loginApp    // the top-level WeChat app first, if any
	ips      budgetStore    // one per client address across the apps; unlimited when ip_budget is off
	sessions *sessionTokens // nil without a session block
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
	h.resolveSecrets()
	// Shared state is only touched by a valid config, so a bad reload
	// cannot disturb the running one.
	if err := h.Validate(); err != nil {
		return err
	}
	for i, cfg := range h.configuredApps() {
		warnIfCleartext(h.logger, cfg.AppID, cfg.Endpoint)
		app, err := h.attachApp(ctx, cfg, h.resolved.apps[i])
		h.apps = append(h.apps, app)
		if err != nil {
			return err
		}
	}
	h.attachIPBudget()
	if h.Session != nil {
		h.sessions = newSessionTokens(h.apps, h.resolved.session, time.Duration(h.Session.TTL), h.now)
	}
	if h.ForwardSessionKey && h.logger.Core().Enabled(zapcore.DebugLevel) {
		h.logger.Warn("forward_session_key with debug logging: reverse_proxy logs the headers it sends upstream at debug level, X-WX-SESSION-KEY included; turn debug off in production")
	}
	return nil
}

// Cleanup releases the shared state and idle connections.
func (h *Handler) Cleanup() error {
	var err error
	for _, app := range h.apps {
		err = errors.Join(err, app.detach())
	}
	return err
}

// ServeHTTP strips client-sent identity, then serves a login or passes the
// request on with the identity of its session, if any.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	presented := stripClientIdentity(r)
	if app := h.appFor(r.URL.Path); app != nil {
		return h.serveLogin(w, r, next, app, presented)
	}
	if h.sessions == nil {
		return next.ServeHTTP(w, r)
	}
	id, app, err := h.sessions.presentedSession(r, presented.session)
	if err != nil {
		if h.Session.Optional {
			return next.ServeHTTP(w, r)
		}
		// Counted under the app the refused token names, or the first app
		// when it names none of them (no token, a forged one, another app's).
		metrics := cmp.Or(app, h.apps[0]).metrics
		return refuse(w, r, newRefusal(http.StatusUnauthorized, refusalInvalidSession, "a valid session is required: log in again"),
			func(string) { metrics.sessionRejected(sessionRejection(err)) })
	}
	h.attachIdentity(r, app, id)
	return next.ServeHTTP(w, r)
}

// serveLogin serves a login at app; presented holds the family headers the
// client sent, already stripped from the request.
func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, app *loginApp, presented presentedHeaders) error {
	id, token, expires, refusal := h.decideLogin(r, app, presented)
	if refusal != nil {
		return refuse(w, r, refusal, app.metrics.login)
	}
	app.metrics.login(loginOK)
	dropCode(r, h.CodeField, app.platform)
	h.attachIdentity(r, app, id)
	switch {
	case h.sessions == nil:
		return next.ServeHTTP(w, r)
	case h.Session.Respond:
		return respondLogin(w, id, token, expires)
	}
	return next.ServeHTTP(newSessionIssuingWriter(w, app.platform.headers.session, token), r)
}

// respondLogin answers a login at the gateway (session respond mode).
func respondLogin(w http.ResponseWriter, id Identity, token string, expires time.Time) error {
	body := struct {
		OpenID          string `json:"openid"`
		UnionID         string `json:"unionid,omitempty"`
		AnonymousOpenID string `json:"anonymous_openid,omitempty"`
		Token           string `json:"token"`
		ExpiresAt       string `json:"expires_at"`
	}{id.OpenID, id.UnionID, id.AnonymousOpenID, token, expires.UTC().Format(time.RFC3339)}
	return writeJSON(w, http.StatusOK, "application/json", body)
}

// attachIdentity sets the identity headers, in app's family, and the
// placeholders.
func (h *Handler) attachIdentity(r *http.Request, app *loginApp, id Identity) {
	setIdentityHeaders(r.Header, app.platform.headers, app.appID, id, h.ForwardSessionKey)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.wechat.openid", id.OpenID)
		repl.Set("http.wechat.unionid", id.UnionID)
		repl.Set("http.wechat.appid", app.appIDPlaceholder)
		repl.Set("http.wechat.platform", app.platform.namePlaceholder)
		repl.Set("http.wechat.anonymous_openid", id.AnonymousOpenID)
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

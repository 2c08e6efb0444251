package wechatlogin

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// PlatformApp is one more mini-game app the handler logs players in to,
// beside the WeChat app of the top-level app_id: the same game on another
// platform (QQ, Douyin…), or a second WeChat app. It shares everything
// else of the handler's configuration: the session, the per-IP budget,
// the cache, the retries, Redis.
type PlatformApp struct {
	// The platform: wechat, qq, douyin, taptap or bilibili. Required.
	Platform string `json:"platform,omitempty"`
	// The app's id on that platform. Required.
	AppID string `json:"app_id,omitempty"`
	// The app's secret on that platform. Required; placeholders such as
	// {env.X} and {file.PATH} are resolved at provision.
	AppSecret string `json:"app_secret,omitempty"`
	// Requests to exactly this path are this app's logins. Default the
	// platform's: /wx/login, /qq/login, /tt/login, /tap/login, /bili/login.
	LoginPath string `json:"login_path,omitempty"`
	// Base URL of the platform's API. Default the platform's own.
	Endpoint string `json:"endpoint,omitempty"`
	// Logins per player. Default 60 per 1m; more than the platform's own
	// quota is refused.
	Budget *Budget `json:"budget,omitempty"`
}

// setDefaults fills in what the app leaves to its platform.
func (a *PlatformApp) setDefaults() {
	p := platforms[a.Platform]
	if p == nil {
		return // Validate says so
	}
	if a.LoginPath == "" {
		a.LoginPath = p.loginPath
	}
	if a.Endpoint == "" {
		a.Endpoint = p.endpoint
	}
	if a.Budget == nil {
		a.Budget = &Budget{Events: defaultBudgetEvents, Window: caddy.Duration(defaultBudgetWindow)}
	}
}

// validate judges the app with its resolved secret; the messages name it.
func (a *PlatformApp) validate(resolvedSecret string) error {
	p := platforms[a.Platform]
	if p == nil {
		return errUnknownPlatform(a.Platform)
	}
	return a.named(firstError(
		checkAppID(a.AppID),
		checkAppSecret(a.AppSecret, resolvedSecret),
		checkLoginPath(a.LoginPath),
		checkEndpoint(a.Endpoint),
		checkPlayerBudget(a.Budget, p),
	))
}

// named gives err (if any) the app's name.
func (a *PlatformApp) named(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("app %s %s: %w", a.Platform, a.AppID, err)
}

func errUnknownPlatform(name string) error {
	return fmt.Errorf("app: unknown platform %q: %s", name, platformNames())
}

// loginApp is one app the handler serves, as provisioned: its platform,
// its exchange, and the state it shares across reloads (player budget,
// cached codes, calls in flight) with the handlers of the same (app_id,
// endpoint, app_secret).
type loginApp struct {
	platform  *platform
	appID     string
	loginPath string
	budget    Budget
	client    *exchangeClient
	failures  failureRefuser // of client's failed exchanges
	players   budgetStore
	codes     codeStore
	state     *appState
	// sessionKeys is the custody of the app's session_keys, which its
	// wechat_api handlers read; nil where the platform's are not kept.
	sessionKeys *sessionKeyCustody
	stateKey    string
	release     func()    // ends this app's leases on the shared state
	appRedis    *appRedis // nil without a redis block
	metrics     *loginMetrics
	// appIDPlaceholder is appID as the placeholder's value, boxed once
	// rather than on every request.
	appIDPlaceholder any
}

// configuredApps lists the handler's apps, the top-level WeChat app first
// when there is one, with their resolved secrets.
func (h *Handler) configuredApps() []*PlatformApp {
	var apps []*PlatformApp
	if h.hasWechatApp() {
		apps = append(apps, &PlatformApp{Platform: wechatPlatform.name, AppID: h.AppID, AppSecret: h.AppSecret,
			LoginPath: h.LoginPath, Endpoint: h.Endpoint, Budget: h.Budget})
	}
	return append(apps, h.Apps...)
}

// hasWechatApp reports whether the top level names a WeChat app: it does
// unless the handler has other apps and no top-level app_id.
func (h *Handler) hasWechatApp() bool { return h.AppID != "" || len(h.Apps) == 0 }

// attachApp provisions one app: its exchange, and the state it shares.
// With a redis block the state is the fleet's, and the memory tables serve
// while Redis cannot.
func (h *Handler) attachApp(ctx caddy.Context, cfg *PlatformApp, secret string) (*loginApp, error) {
	p := platforms[cfg.Platform]
	endpoint := canonicalEndpoint(cfg.Endpoint)
	app := &loginApp{
		platform:         p,
		appID:            cfg.AppID,
		loginPath:        cfg.LoginPath,
		budget:           *cfg.Budget,
		appIDPlaceholder: cfg.AppID,
		client: &exchangeClient{
			platform:   p,
			http:       newHTTPClient(time.Duration(h.Timeout)),
			requestURL: p.exchangeURL(cfg.Endpoint, cfg.AppID, secret),
			timeout:    time.Duration(h.Timeout),
			retry:      retryPolicy{attempts: h.Retry.Attempts, base: time.Duration(h.Retry.Base), max: time.Duration(h.Retry.Max)},
			sleep:      sleepContext,
		},
	}
	app.failures = loginRefuser(p, app.client.retry)
	app.stateKey = stateKey(app.appID, endpoint, secret)
	value, _, _ := appStates.LoadOrNew(app.stateKey, func() (caddy.Destructor, error) { return newAppState(), nil })
	app.state = value.(*appState)
	releases := []func(){app.state.players.lease(h.BudgetSize), app.state.codes.lease(h.CacheSize)}
	if p.keepsSessionKeys {
		releases = append(releases, app.state.sessionKeys.entries.lease(sessionKeyCapacity))
		app.sessionKeys = app.state.sessionKeys
	}
	app.release = func() {
		for _, release := range releases {
			release()
		}
	}
	cacheTTL := time.Duration(*h.CacheTTL)
	app.players = newMemoryBudget(app.state.players, app.budget, h.now)
	local := memoryCodes{table: app.state.codes, ttl: cacheTTL, flights: &app.state.flights, now: h.now, players: app.players}
	app.codes = local
	metrics, err := newLoginMetrics(ctx.GetMetricsRegistry(), app.appID)
	if err != nil {
		return app, err
	}
	app.metrics = metrics
	if h.Redis == nil {
		return app, nil
	}
	if app.appRedis, err = newAppRedis(ctx, h.Redis, app.appID, endpoint, secret); err != nil {
		return app, err
	}
	players := app.appRedis.budget("player", app.budget, app.state.players, h.now)
	app.players, local.players = players, players
	app.codes = app.appRedis.codes(local, players, cacheTTL, app.client.worstCase(), p.keepsSessionKeys)
	return app, nil
}

// attachIPBudget gives the handler its per-IP budget: one per client
// address whichever app a login is for, kept with the first app's state
// (and in its share of Redis).
func (h *Handler) attachIPBudget() {
	h.ips = unlimited{}
	if h.IPBudget.Off {
		return
	}
	first := h.apps[0]
	release := first.state.ips.lease(h.BudgetSize)
	previous := first.release
	first.release = func() { previous(); release() }
	if first.appRedis != nil {
		h.ips = first.appRedis.budget("ip", *h.IPBudget, first.state.ips, h.now)
		return
	}
	h.ips = newMemoryBudget(first.state.ips, *h.IPBudget, h.now)
}

// detach releases the app's shared state and idle connections.
func (a *loginApp) detach() error {
	a.client.http.CloseIdleConnections()
	if a.release == nil {
		return nil
	}
	a.release()
	_, err := appStates.Delete(a.stateKey)
	if a.appRedis != nil {
		err = errors.Join(err, a.appRedis.release())
	}
	return err
}

// appFor returns the app whose login path is path, if any.
func (h *Handler) appFor(path string) *loginApp {
	for _, app := range h.apps {
		if app.loginPath == path {
			return app
		}
	}
	return nil
}

package wechatlogin

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Defaults, as documented in docs/configuration.md.
const (
	defaultLoginPath = "/wx/login"
	defaultCodeField = "code"
	defaultEndpoint  = "https://api.weixin.qq.com"
	defaultTimeout   = 3 * time.Second
	defaultAttempts  = 3
	defaultRetryBase = 100 * time.Millisecond
	defaultRetryMax  = time.Second
	// Long enough for a client's retry, short enough that a leaked code is
	// not a lasting credential.
	defaultCacheTTL   = time.Minute
	defaultCacheSize  = 10000
	defaultBudgetSize = 100000
	defaultSessionTTL = 2 * time.Hour
	// The player budget: well under WeChat's and QQ's 100 per minute.
	defaultBudgetEvents = 60
	defaultBudgetWindow = time.Minute
	// wechat_api's: a call and its answer, an upload's included.
	defaultAPITimeout = 5 * time.Second
)

// Bounds, as documented in docs/configuration.md. Past them a value is a
// mistake or an overflow waiting to happen (a timeout of a million hours
// made every login's deadline negative), so it is refused at load.
const (
	minTimeout = 10 * time.Millisecond
	maxTimeout = time.Minute
	minBackoff = time.Millisecond
	maxBackoff = time.Minute
	// A login waits through every attempt, and past a few, WeChat is down
	// rather than busy.
	maxAttempts   = 10
	maxCacheTTL   = 5 * time.Minute
	minSessionTTL = time.Second
	maxSessionTTL = 30 * 24 * time.Hour
	minWindow     = time.Second
	maxWindow     = 24 * time.Hour
	maxIPEvents   = 10_000_000
	maxTableSize  = 10_000_000
	maxAPITimeout = time.Minute
)

// RetryConfig bounds how WeChat's transient failures (errcode -1, HTTP 5xx,
// connection failures, timeouts) are retried: exponential backoff with full
// jitter from Base, capped at Max.
type RetryConfig struct {
	// Calls at most, the first included; 1 means no retry. Default 3.
	Attempts int `json:"attempts,omitempty"`
	// Backoff ceiling after the first failure; it doubles after each.
	// Default 100ms.
	Base caddy.Duration `json:"base,omitempty"`
	// Largest backoff. Default 1s, or Base if that is larger.
	Max caddy.Duration `json:"max,omitempty"`
}

// resolvedSecrets are the configured secrets with their placeholders
// resolved: resolved once, at provision, and kept out of the JSON.
type resolvedSecrets struct {
	apps    []string // of configuredApps, in order
	session [][]byte
}

func (h *Handler) setDefaults() {
	if h.hasWechatApp() {
		if h.LoginPath == "" {
			h.LoginPath = defaultLoginPath
		}
		if h.Endpoint == "" {
			h.Endpoint = defaultEndpoint
		}
		if h.Budget == nil {
			h.Budget = &Budget{Events: defaultBudgetEvents, Window: caddy.Duration(defaultBudgetWindow)}
		}
	}
	for _, app := range h.Apps {
		if app != nil {
			app.setDefaults()
		}
	}
	if h.CodeField == "" {
		h.CodeField = defaultCodeField
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.Retry == nil {
		h.Retry = &RetryConfig{}
	}
	if h.Retry.Attempts == 0 {
		h.Retry.Attempts = defaultAttempts
	}
	if h.Retry.Base == 0 {
		h.Retry.Base = caddy.Duration(defaultRetryBase)
	}
	if h.Retry.Max == 0 {
		h.Retry.Max = caddy.Duration(max(defaultRetryMax, time.Duration(h.Retry.Base)))
	}
	if h.IPBudget == nil {
		h.IPBudget = &Budget{Events: 600, Window: caddy.Duration(time.Minute)}
	}
	if h.CacheTTL == nil {
		ttl := caddy.Duration(defaultCacheTTL)
		h.CacheTTL = &ttl
	}
	if h.CacheSize == 0 {
		h.CacheSize = defaultCacheSize
	}
	if h.BudgetSize == 0 {
		h.BudgetSize = defaultBudgetSize
	}
	if h.Session != nil && h.Session.TTL == 0 {
		h.Session.TTL = caddy.Duration(defaultSessionTTL)
	}
}

// resolveSecrets resolves the placeholders ({env.X}, {file.PATH}) of the
// app secrets and the session secrets into h.resolved.
func (h *Handler) resolveSecrets() {
	repl := caddy.NewReplacer()
	h.resolved = resolvedSecrets{}
	for _, app := range h.configuredApps() {
		if app != nil {
			h.resolved.apps = append(h.resolved.apps, repl.ReplaceKnown(app.AppSecret, ""))
		}
	}
	if h.Session != nil {
		for _, s := range h.Session.Secrets {
			h.resolved.session = append(h.resolved.session, []byte(repl.ReplaceKnown(s, "")))
		}
	}
}

// Validate refuses a config that cannot work, with the message the
// Caddyfile parser gives for the same value. It reads the config and the
// resolved secrets only, so Caddy may call it again at no cost.
func (h *Handler) Validate() error {
	return firstError(
		h.checkApps(),
		checkCodeField(h.CodeField),
		checkTimeout(h.Timeout),
		checkRetry(h.Retry),
		checkIPBudget(h.IPBudget),
		checkOptionalCacheTTL(h.CacheTTL),
		checkCacheSize(h.CacheSize),
		checkBudgetSize(h.BudgetSize),
		checkSession(h.Session, h.resolved.session),
		checkRedis(h.Redis),
	)
}

// checkApps judges the apps: the top-level WeChat app as v2 did (its
// messages name no app), each app block, and the apps together: each login
// path and app_id once.
func (h *Handler) checkApps() error {
	apps := h.configuredApps()
	if len(h.resolved.apps) != len(apps) {
		return errors.New("app secrets are not resolved") // Provision resolves them before Validate
	}
	if !h.hasWechatApp() && (h.AppSecret != "" || h.LoginPath != "" || h.Endpoint != "" || h.Budget != nil) {
		return errors.New("app_secret, login_path, endpoint and budget at the top are the WeChat app's, which needs app_id; an app block takes its own")
	}
	loginPaths, appIDs := map[string]bool{}, map[string]bool{}
	for i, app := range apps {
		var err error
		switch {
		case app == nil:
			err = errors.New("apps: an empty app")
		case i == 0 && h.hasWechatApp():
			err = firstError(checkAppID(app.AppID), checkAppSecret(app.AppSecret, h.resolved.apps[0]),
				checkLoginPath(app.LoginPath), checkEndpoint(app.Endpoint), checkPlayerBudget(app.Budget, wechatPlatform))
		default:
			err = app.validate(h.resolved.apps[i])
		}
		if err != nil {
			return err
		}
		if loginPaths[app.LoginPath] {
			return fmt.Errorf("login_path %s is given to two apps: each app needs its own", app.LoginPath)
		}
		if appIDs[app.AppID] {
			return fmt.Errorf("app_id %s is configured twice", app.AppID)
		}
		loginPaths[app.LoginPath], appIDs[app.AppID] = true, true
	}
	return nil
}

// firstError is the first of errs that is not nil.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// setDefaults fills in what a wechat_api config leaves out.
func (h *APIHandler) setDefaults() {
	if h.Endpoint == "" {
		h.Endpoint = defaultEndpoint
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultAPITimeout)
	}
}

// resolveSecrets resolves the placeholders ({env.X}, {file.PATH}) of the
// app secret and the virtual payment AppKeys.
func (h *APIHandler) resolveSecrets() {
	repl := caddy.NewReplacer()
	h.secret = repl.ReplaceKnown(h.AppSecret, "")
	h.appKeys = h.VirtualPayment.appKeys(repl)
}

// Validate refuses a config that cannot work, with the message the
// Caddyfile parser gives for the same value. It reads the config and the
// resolved secrets only, so Caddy may call it again at no cost.
func (h *APIHandler) Validate() error {
	return firstError(
		checkAppID(h.AppID),
		checkAppSecret(h.AppSecret, h.secret),
		checkEndpoint(h.Endpoint),
		checkAPITimeout(h.Timeout),
		checkRedis(h.Redis),
		checkVirtualPayment(h.VirtualPayment, h.appKeys),
		checkAllowHosts(h.AllowHosts),
	)
}

// The checks below each judge one value and name it in their message; the
// Caddyfile parser calls them too, adding the line.

func checkRedis(c *RedisConfig) error {
	if c == nil {
		return nil
	}
	return c.validate()
}

// checkAppID refuses an app_id that could not be WeChat's. It becomes a
// header value, a URL parameter and a metric label, where a control
// character would break every request rather than the load.
func checkAppID(id string) error {
	switch {
	case id == "":
		return errors.New("app_id is required")
	case strings.ContainsAny(id, "/?&#"):
		return errors.New("app_id is not a WeChat AppID")
	}
	return checkVisibleASCII("app_id", id)
}

// checkVisibleASCII refuses a value that is not visible ASCII (no spaces,
// control characters or other bytes), for a setting that becomes a header
// value, a URL part or a metric label. The value is not repeated: it may be
// anything, a secret included.
func checkVisibleASCII(name, value string) error {
	if value != "" && !isVisibleASCII(value, len(value)) {
		return fmt.Errorf("%s must be visible ASCII, without spaces or control characters", name)
	}
	return nil
}

// checkAppSecret judges the secret as written and as resolved; the
// Caddyfile parser, which cannot resolve it, passes the written one twice.
func checkAppSecret(written, resolved string) error {
	switch {
	case written == "":
		return errors.New("app_secret is required")
	case resolved == "":
		return errors.New("app_secret is empty once its placeholders are resolved (is the environment variable or file there?)")
	}
	return nil
}

func checkLoginPath(path string) error {
	switch {
	case !strings.HasPrefix(path, "/"):
		return fmt.Errorf("login_path must start with /: %q", path)
	case strings.ContainsAny(path, "?#"):
		// A request's path never holds them, so no login would ever match.
		return fmt.Errorf("login_path must be a path alone, without ? or #: %q", path)
	}
	return nil
}

func checkCodeField(name string) error {
	if name == "" {
		return errors.New("code_field must not be empty")
	}
	return nil
}

// canonicalEndpoint is endpoint as state is keyed by: scheme and host lower
// case, no default port, no trailing slash, so that two spellings of one
// endpoint (a reload that adds a "/") never get two budgets.
func canonicalEndpoint(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return endpoint
	}
	u.Scheme, u.Host = strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	if port := u.Port(); (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		u.Host = u.Hostname()
		if strings.Contains(u.Host, ":") {
			u.Host = "[" + u.Host + "]"
		}
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u.String()
}

func checkEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return errors.New("endpoint must be an http or https base URL, got something that is not a URL")
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		// Scheme and host alone: a query or user:password may hold a secret.
		return fmt.Errorf("endpoint must be an http or https base URL without a query or fragment, got scheme %q, host %q", u.Scheme, u.Host)
	}
	return nil
}

func checkTimeout(d caddy.Duration) error {
	return checkDuration("timeout", d, minTimeout, maxTimeout)
}

// checkAPITimeout judges wechat_api's timeout: positive, a minute at most.
func checkAPITimeout(timeout caddy.Duration) error {
	if timeout <= 0 || time.Duration(timeout) > maxAPITimeout {
		return fmt.Errorf("timeout must be positive and at most %s", maxAPITimeout)
	}
	return nil
}

// checkAllowHosts accepts host names as DNS, /etc/hosts, Docker and
// Kubernetes spell them: letters, digits, '.', '-' and '_', no port.
func checkAllowHosts(names []string) error {
	for _, name := range names {
		if name == "" || len(name) > 253 || strings.TrimLeft(strings.ToLower(name), "abcdefghijklmnopqrstuvwxyz0123456789.-_") != "" {
			return fmt.Errorf("allow_host: %q is not a host name (letters, digits, '.', '-' and '_', without a port)", name)
		}
	}
	return nil
}

func checkAttempts(n int) error { return checkRange("retry: attempts", n, 1, maxAttempts) }

func checkRetryBase(d caddy.Duration) error {
	return checkDuration("retry: base", d, minBackoff, maxBackoff)
}

func checkRetryMax(d caddy.Duration) error {
	return checkDuration("retry: max", d, minBackoff, maxBackoff)
}

func checkBackoffOrder(base, largest caddy.Duration) error {
	if largest < base {
		return fmt.Errorf("retry: max %s is below base %s", formatDuration(time.Duration(largest)), formatDuration(time.Duration(base)))
	}
	return nil
}

// checkRetry judges a whole RetryConfig; nil is the default.
func checkRetry(r *RetryConfig) error {
	if r == nil {
		return nil
	}
	return firstError(checkAttempts(r.Attempts), checkRetryBase(r.Base), checkRetryMax(r.Max), checkBackoffOrder(r.Base, r.Max))
}

// checkPlayerBudget judges budget for platform p; nil is the default.
func checkPlayerBudget(b *Budget, p *platform) error {
	if b == nil {
		return nil
	}
	if b.Off {
		return fmt.Errorf("budget cannot be off: it keeps players under %s's limit", p.title)
	}
	if err := checkBudget("budget", *b, maxIPEvents); err != nil {
		return err
	}
	if err := b.withinQuota(p); err != nil {
		return fmt.Errorf("budget: %w", err)
	}
	return nil
}

// checkIPBudget judges ip_budget; nil is the default.
func checkIPBudget(b *Budget) error {
	switch {
	case b == nil:
		return nil
	case b.Off && (b.Events != 0 || b.Window != 0):
		return errors.New("ip_budget: off takes no events or window")
	case b.Off:
		return nil
	}
	return checkBudget("ip_budget", *b, maxIPEvents)
}

func checkBudget(name string, b Budget, maxEvents int) error {
	switch {
	case b.Events < 1 || b.Window <= 0:
		return fmt.Errorf("%s needs a positive number of events and a positive window", name)
	case b.Events > maxEvents:
		return fmt.Errorf("%s: events must be at most %d, got %d", name, maxEvents, b.Events)
	}
	return checkDuration(name+": window", b.Window, minWindow, maxWindow)
}

func checkCacheTTL(d caddy.Duration) error { return checkDuration("cache_ttl", d, 0, maxCacheTTL) }

// checkOptionalCacheTTL is checkCacheTTL where nil is the default.
func checkOptionalCacheTTL(d *caddy.Duration) error {
	if d == nil {
		return nil
	}
	return checkCacheTTL(*d)
}

func checkCacheSize(n int) error  { return checkRange("cache_size", n, 1, maxTableSize) }
func checkBudgetSize(n int) error { return checkRange("budget_size", n, 1, maxTableSize) }

var errNoSessionSecret = errors.New("session: at least one secret is required")

// checkSession judges the session block with its resolved secrets; nil is
// no session.
func checkSession(s *SessionConfig, resolved [][]byte) error {
	switch {
	case s == nil:
		return nil
	case len(s.Secrets) == 0:
		return errNoSessionSecret
	}
	for i, secret := range resolved {
		if err := checkSessionSecret(i+1, secret); err != nil {
			return err
		}
	}
	return checkSessionTTL(s.TTL)
}

// checkSessionSecret judges the n-th (from 1) session secret, resolved.
func checkSessionSecret(n int, secret []byte) error {
	if len(secret) < minSessionSecret {
		return fmt.Errorf("session: secret %d is %d bytes once resolved; at least %d are required", n, len(secret), minSessionSecret)
	}
	return nil
}

func checkSessionTTL(d caddy.Duration) error {
	return checkDuration("session: ttl", d, minSessionTTL, maxSessionTTL)
}

func checkRange(name string, n, lo, hi int) error {
	if n < lo || n > hi {
		return fmt.Errorf("%s must be from %d to %d, got %d", name, lo, hi, n)
	}
	return nil
}

func checkDuration(name string, d caddy.Duration, lo, hi time.Duration) error {
	switch v := time.Duration(d); {
	case v < 0 && lo == 0:
		return fmt.Errorf("%s must not be negative, got %s", name, formatDuration(v))
	case v < lo:
		return fmt.Errorf("%s must be at least %s, got %s", name, formatDuration(lo), formatDuration(v))
	case v > hi:
		return fmt.Errorf("%s must be at most %s, got %s", name, formatDuration(hi), formatDuration(v))
	}
	return nil
}

// formatDuration writes d as a Caddyfile would: 1m rather than 1m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// cleartextEndpoint reports whether requests to endpoint, which carry the
// app secret, would cross a network unencrypted: plain http to anything but
// a loopback address.
func cleartextEndpoint(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// warnIfCleartext logs one line when the endpoint is a cleartext one: a
// simulator on another host is a legitimate test setup, so it is a warning,
// not a refusal.
func warnIfCleartext(logger *zap.Logger, appID, endpoint string) {
	if !cleartextEndpoint(endpoint) {
		return
	}
	// The host alone: an endpoint may carry user:password.
	host := ""
	if u, err := url.Parse(endpoint); err == nil {
		host = u.Host
	}
	logger.Warn("endpoint is plain http to a host that is not loopback: the app_secret crosses the network in clear text; use https",
		zap.String("app_id", appID), zap.String("endpoint_host", host))
}

// addSaturating is a+b, or the largest (or smallest) Duration where that
// would overflow, so that a sum of timeouts never wraps into the past.
func addSaturating(a, b time.Duration) time.Duration {
	switch {
	case b > 0 && a > math.MaxInt64-b:
		return math.MaxInt64
	case b < 0 && a < math.MinInt64-b:
		return math.MinInt64
	}
	return a + b
}

package wechatlogin

import (
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The handlers' directives. Identity must be established before anything
// that authenticates or proxies, and wechat_api is ordered alike, so users
// need no `order` option.
func init() {
	httpcaddyfile.RegisterHandlerDirective("wechat_login", parseHandler[Handler])
	httpcaddyfile.RegisterDirectiveOrder("wechat_login", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("wechat_api", parseHandler[APIHandler])
	httpcaddyfile.RegisterDirectiveOrder("wechat_api", httpcaddyfile.Before, "basic_auth")
}

// parseHandler reads a handler's directive with its UnmarshalCaddyfile.
func parseHandler[H any, P interface {
	*H
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := P(new(H))
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Every value
// is judged by the check Validate applies to a JSON config, so a bad one is
// refused here with the same message and its line. Syntax:
//
//	wechat_login [<matcher>] {
//		app_id        <appid>
//		app_secret    <secret>
//		login_path    <path>
//		code_field    <name>
//		endpoint      <base-url>
//		timeout       <duration>
//		retry         <attempts> [<base> [<max>]]
//		budget        <events> <window>
//		ip_budget     <events> <window> | off
//		cache_ttl     <duration>
//		cache_size    <n>
//		budget_size   <n>
//		forward_session_key
//		session {
//			secret   <key>
//			ttl      <duration>
//			optional
//			respond
//		}
//		redis [<address>...] {
//			... (see redis_config.go)
//		}
//		app <platform> <app_id> {     # repeatable: the game on another platform
//			app_secret  <secret>
//			login_path  <path>
//			endpoint    <base-url>
//			budget      <events> <window>
//		}
//	}
//
// app_id and app_secret are the WeChat app's; without them the handler
// serves its app blocks alone.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	servesAppBlocksAlone := func() bool { return h.AppID == "" && h.AppSecret == "" && len(h.Apps) > 0 }
	return eachAppSubdirective(d, &h.AppID, &h.AppSecret, servesAppBlocksAlone, func(sub string) error {
		var err error
		switch sub {
		case "app":
			var app *PlatformApp
			app, err = parseApp(d)
			h.Apps = append(h.Apps, app)
		case "login_path":
			h.LoginPath, err = stringArg(d, checkLoginPath)
		case "code_field":
			h.CodeField, err = stringArg(d, checkCodeField)
		case "endpoint":
			h.Endpoint, err = stringArg(d, checkEndpoint)
		case "timeout":
			h.Timeout, err = durationArg(d, checkTimeout)
		case "retry":
			h.Retry, err = parseRetry(d)
		case "budget":
			h.Budget, err = parseBudget(d, false, func(b *Budget) error { return checkPlayerBudget(b, wechatPlatform) })
		case "ip_budget":
			h.IPBudget, err = parseBudget(d, true, checkIPBudget)
		case "cache_ttl":
			var ttl caddy.Duration
			ttl, err = durationArg(d, checkCacheTTL)
			h.CacheTTL = &ttl
		case "cache_size":
			h.CacheSize, err = intArg(d, checkCacheSize)
		case "budget_size":
			h.BudgetSize, err = intArg(d, checkBudgetSize)
		case "forward_session_key":
			h.ForwardSessionKey, err = flagArg(d)
		case "redis":
			h.Redis, err = parseRedisBlock(d)
		case "session":
			h.Session, err = parseSession(d)
		default:
			err = d.Errf("unrecognized subdirective: %s", sub)
		}
		return err
	}, "app")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Every value
// is judged by the check Validate applies to a JSON config, so a bad one is
// refused here with the same message and its line. Syntax:
//
//	wechat_api [<matcher>] {
//		app_id     <appid>
//		app_secret <secret>
//		endpoint   <base-url>
//		timeout    <duration>
//		redis      { … }
//		virtual_payment {
//			app_key         <key>
//			sandbox_app_key <key>
//		}
//		allow_host <name>...
//	}
func (h *APIHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return eachAppSubdirective(d, &h.AppID, &h.AppSecret, nil, func(sub string) error {
		var err error
		switch sub {
		case "endpoint":
			h.Endpoint, err = stringArg(d, checkEndpoint)
		case "timeout":
			h.Timeout, err = durationArg(d, checkAPITimeout)
		case "redis":
			h.Redis, err = parseRedisBlock(d)
		case "virtual_payment":
			h.VirtualPayment, err = parseVirtualPaymentBlock(d)
		case "allow_host":
			if h.AllowHosts = d.RemainingArgs(); len(h.AllowHosts) == 0 {
				return d.Errf("allow_host: missing value")
			}
			if err = checkAllowHosts(h.AllowHosts); err != nil {
				err = d.WrapErr(err)
			}
		default:
			err = d.Errf("unrecognized subdirective: %s", sub)
		}
		return err
	})
}

// parseApp reads `app <platform> <app_id> { … }`. What needs the
// placeholders resolved (the secret) or the other apps (a login path given
// twice) is judged at provision.
func parseApp(d *caddyfile.Dispenser) (*PlatformApp, error) {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return nil, d.Errf("app: expected <platform> <app_id>")
	}
	a := &PlatformApp{Platform: args[0], AppID: args[1]}
	p := platforms[a.Platform]
	if p == nil {
		return nil, d.WrapErr(errUnknownPlatform(a.Platform))
	}
	if err := checkAppID(a.AppID); err != nil {
		return nil, d.WrapErr(a.named(err))
	}
	// named gives a check's message the app's name, as Validate does.
	named := func(check func(string) error) func(string) error {
		return func(v string) error { return a.named(check(v)) }
	}
	line := *d
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return nil, d.Errf("app: %s given more than once", sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "app_secret":
			a.AppSecret, err = stringArg(d, named(func(s string) error { return checkAppSecret(s, s) }))
		case "login_path":
			a.LoginPath, err = stringArg(d, named(checkLoginPath))
		case "endpoint":
			a.Endpoint, err = stringArg(d, named(checkEndpoint))
		case "budget":
			a.Budget, err = parseBudget(d, false, func(b *Budget) error { return a.named(checkPlayerBudget(b, p)) })
		default:
			err = d.Errf("app: unrecognized subdirective: %s", sub)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := checkAppSecret(a.AppSecret, a.AppSecret); err != nil {
		return nil, line.WrapErr(a.named(err))
	}
	return a, nil
}

// eachAppSubdirective is eachSubdirective for the block of a handler's
// app: it reads app_id and app_secret into appID and appSecret itself,
// hands every other subdirective to parse, and refuses a block without
// them, naming the directive's line, unless appOptional (if given) says
// the block may name none. Placeholders in the secret are resolved, and
// checked, at provision.
func eachAppSubdirective(d *caddyfile.Dispenser, appID, appSecret *string, appOptional func() bool, parse func(sub string) error, repeatable ...string) error {
	directive := *d
	err := eachSubdirective(d, func(sub string) error {
		var err error
		switch sub {
		case "app_id":
			*appID, err = stringArg(d, checkAppID)
		case "app_secret":
			*appSecret, err = stringArg(d, func(s string) error { return checkAppSecret(s, s) })
		default:
			err = parse(sub)
		}
		return err
	}, repeatable...)
	if err != nil || (appOptional != nil && appOptional()) {
		return err
	}
	directive.Next() // the line to name: the directive's
	if err := firstError(checkAppID(*appID), checkAppSecret(*appSecret, *appSecret)); err != nil {
		return directive.WrapErr(err)
	}
	return nil
}

// eachSubdirective reads a directive's block: no arguments, then each
// subdirective once (but those named repeatable), handed to parse with the
// dispenser on its name. Errors are parse's, which should name the
// Caddyfile line.
func eachSubdirective(d *caddyfile.Dispenser, parse func(sub string) error, repeatable ...string) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] && !slices.Contains(repeatable, sub) {
			return d.Errf("%s: given more than once", sub)
		}
		seen[sub] = true
		if err := parse(sub); err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads a subdirective's one value. The refusal of a second does not
// repeat it: it may be the rest of a secret written with a space.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	sub := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: missing value", sub)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: one value expected, got more", sub)
	}
	return v, nil
}

// flagArg reads a subdirective that takes no value.
func flagArg(d *caddyfile.Dispenser) (bool, error) {
	if d.NextArg() {
		return false, d.ArgErr()
	}
	return true, nil
}

func stringArg(d *caddyfile.Dispenser, check func(string) error) (string, error) {
	v, err := oneArg(d)
	if err != nil {
		return "", err
	}
	if err := check(v); err != nil {
		return "", d.WrapErr(err)
	}
	return v, nil
}

func durationArg(d *caddyfile.Dispenser, check func(caddy.Duration) error) (caddy.Duration, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	return parseDuration(d, sub, v, check)
}

// parseDuration parses v and judges it with check, unless check is nil
// because the value is judged together with others.
func parseDuration(d *caddyfile.Dispenser, sub, v string, check func(caddy.Duration) error) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: bad duration %q: %v", sub, v, err)
	}
	if check == nil {
		return caddy.Duration(dur), nil
	}
	if err := check(caddy.Duration(dur)); err != nil {
		return 0, d.WrapErr(err)
	}
	return caddy.Duration(dur), nil
}

func intArg(d *caddyfile.Dispenser, check func(int) error) (int, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	return parseInt(d, sub, v, check)
}

func parseInt(d *caddyfile.Dispenser, sub, v string, check func(int) error) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, d.Errf("%s: %q is not a whole number", sub, v)
	}
	if check == nil { // judged together with other values
		return n, nil
	}
	if err := check(n); err != nil {
		return 0, d.WrapErr(err)
	}
	return n, nil
}

// parseRetry reads `retry <attempts> [<base> [<max>]]`.
func parseRetry(d *caddyfile.Dispenser) (*RetryConfig, error) {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 3 {
		return nil, d.Errf("retry: expected <attempts> [<base> [<max>]]")
	}
	r := new(RetryConfig)
	var err error
	if r.Attempts, err = parseInt(d, "retry", args[0], checkAttempts); err != nil {
		return nil, err
	}
	if len(args) > 1 {
		if r.Base, err = parseDuration(d, "retry", args[1], checkRetryBase); err != nil {
			return nil, err
		}
	}
	if len(args) > 2 {
		if r.Max, err = parseDuration(d, "retry", args[2], checkRetryMax); err != nil {
			return nil, err
		}
		if err := checkBackoffOrder(r.Base, r.Max); err != nil {
			return nil, d.WrapErr(err)
		}
	}
	return r, nil
}

// parseBudget reads `<events> <window>`, or `off` where allowed.
func parseBudget(d *caddyfile.Dispenser, offAllowed bool, check func(*Budget) error) (*Budget, error) {
	sub := d.Val()
	args := d.RemainingArgs()
	b := new(Budget)
	switch {
	case len(args) == 1 && args[0] == "off":
		b.Off = true
	case len(args) == 2:
		var err error
		if b.Events, err = strconv.Atoi(args[0]); err != nil {
			return nil, d.Errf("%s: %q is not a whole number", sub, args[0])
		}
		if b.Window, err = parseDuration(d, sub, args[1], nil); err != nil {
			return nil, err
		}
	case offAllowed:
		return nil, d.Errf("%s: expected <events> <window> or off", sub)
	default:
		return nil, d.Errf("%s: expected <events> <window>", sub)
	}
	// Events and window are judged together, as Validate does.
	if err := check(b); err != nil {
		return nil, d.WrapErr(err)
	}
	return b, nil
}

func parseSession(d *caddyfile.Dispenser) (*SessionConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	s := new(SessionConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "secret" { // secret repeats to rotate keys
			return nil, d.Errf("session: %s given more than once", sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "secret":
			n := len(s.Secrets) + 1
			var v string
			v, err = stringArg(d, func(v string) error {
				if strings.Contains(v, "{") {
					return nil // placeholders are resolved, and checked, at provision
				}
				return checkSessionSecret(n, []byte(v))
			})
			s.Secrets = append(s.Secrets, v)
		case "ttl":
			s.TTL, err = durationArg(d, checkSessionTTL)
		case "optional":
			s.Optional, err = flagArg(d)
		case "respond":
			s.Respond, err = flagArg(d)
		default:
			return nil, d.Errf("session: unrecognized subdirective: %s", sub)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(s.Secrets) == 0 {
		return nil, d.WrapErr(errNoSessionSecret)
	}
	return s, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*APIHandler)(nil)
)

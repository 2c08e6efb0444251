package wechatlogin

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("wechat_login", parseCaddyfile)
	// Identity must be established before anything that authenticates or
	// proxies, so users need no `order` option.
	httpcaddyfile.RegisterDirectiveOrder("wechat_login", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
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
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("%s: given more than once", sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "app_id":
			h.AppID, err = oneArg(d)
		case "app_secret":
			h.AppSecret, err = oneArg(d)
		case "login_path":
			h.LoginPath, err = oneArg(d)
		case "code_field":
			h.CodeField, err = oneArg(d)
		case "endpoint":
			h.Endpoint, err = oneArg(d)
		case "timeout":
			h.Timeout, err = durationArg(d)
			if err == nil && h.Timeout <= 0 {
				err = d.Errf("timeout: must be positive")
			}
		case "retry":
			h.Retry, err = parseRetry(d)
		case "budget":
			h.Budget, err = parseBudget(d, false)
		case "ip_budget":
			h.IPBudget, err = parseBudget(d, true)
		case "cache_ttl":
			var ttl caddy.Duration
			ttl, err = durationArg(d)
			if err == nil && ttl < 0 {
				err = d.Errf("cache_ttl: must not be negative")
			}
			h.CacheTTL = &ttl
		case "cache_size":
			h.CacheSize, err = positiveIntArg(d)
		case "budget_size":
			h.BudgetSize, err = positiveIntArg(d)
		case "forward_session_key":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.ForwardSessionKey = true
		case "session":
			h.Session, err = parseSession(d)
		default:
			return d.Errf("unrecognized subdirective: %s", sub)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	sub := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: missing value", sub)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: one value expected, got another: %s", sub, d.Val())
	}
	return v, nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	return parseDuration(d, sub, v)
}

func parseDuration(d *caddyfile.Dispenser, sub, v string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: bad duration %q: %v", sub, v, err)
	}
	return caddy.Duration(dur), nil
}

func positiveIntArg(d *caddyfile.Dispenser) (int, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	return parsePositiveInt(d, sub, v)
}

func parsePositiveInt(d *caddyfile.Dispenser, sub, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, d.Errf("%s: %q is not a positive whole number", sub, v)
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
	if r.Attempts, err = parsePositiveInt(d, "retry", args[0]); err != nil {
		return nil, err
	}
	if len(args) > 1 {
		if r.Base, err = parseDuration(d, "retry", args[1]); err != nil {
			return nil, err
		}
	}
	if len(args) > 2 {
		if r.Max, err = parseDuration(d, "retry", args[2]); err != nil {
			return nil, err
		}
		if r.Max < r.Base {
			return nil, d.Errf("retry: max %s is below base %s", time.Duration(r.Max), time.Duration(r.Base))
		}
	}
	return r, nil
}

// parseBudget reads `<events> <window>`, or `off` where allowed.
func parseBudget(d *caddyfile.Dispenser, offAllowed bool) (*Budget, error) {
	sub := d.Val()
	args := d.RemainingArgs()
	if offAllowed && len(args) == 1 && args[0] == "off" {
		return &Budget{Off: true}, nil
	}
	if len(args) != 2 {
		if offAllowed {
			return nil, d.Errf("%s: expected <events> <window> or off", sub)
		}
		return nil, d.Errf("%s: expected <events> <window>", sub)
	}
	events, err := parsePositiveInt(d, sub, args[0])
	if err != nil {
		return nil, err
	}
	window, err := parseDuration(d, sub, args[1])
	if err != nil {
		return nil, err
	}
	if window <= 0 {
		return nil, d.Errf("%s: window must be positive", sub)
	}
	b := &Budget{Events: events, Window: window}
	if !offAllowed {
		if err := b.withinWechatQuota(); err != nil {
			return nil, d.Errf("%s: %v", sub, err)
		}
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
		switch sub {
		case "secret":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			s.Secrets = append(s.Secrets, v)
		case "ttl":
			ttl, err := durationArg(d)
			if err != nil {
				return nil, err
			}
			if ttl <= 0 {
				return nil, d.Errf("session: ttl must be positive")
			}
			s.TTL = ttl
		case "optional":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			s.Optional = true
		case "respond":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			s.Respond = true
		default:
			return nil, d.Errf("session: unrecognized subdirective: %s", sub)
		}
	}
	if len(s.Secrets) == 0 {
		return nil, d.Errf("session: at least one secret is required")
	}
	return s, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

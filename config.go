package wechatlogin

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Defaults, as documented in the README.
const (
	defaultLoginPath  = "/wx/login"
	defaultCodeField  = "code"
	defaultEndpoint   = "https://api.weixin.qq.com"
	defaultTimeout    = 3 * time.Second
	defaultAttempts   = 3
	defaultRetryBase  = 100 * time.Millisecond
	defaultRetryMax   = time.Second
	defaultCacheTTL   = 5 * time.Minute // a code lives 5 minutes
	defaultCacheSize  = 10000
	defaultBudgetSize = 100000
	defaultSessionTTL = 2 * time.Hour
	// maxAttempts bounds retry: a login waits through every attempt, and
	// past a few, WeChat is down rather than busy.
	maxAttempts = 10
)

// RetryConfig bounds how WeChat's transient failures (errcode -1, HTTP 5xx,
// connection failures, timeouts) are retried: exponential backoff with full
// jitter from Base, capped at Max.
type RetryConfig struct {
	// Calls at most, the first included; 1 means no retry.
	Attempts int `json:"attempts,omitempty"`
	// Backoff ceiling after the first failure; it doubles after each.
	Base caddy.Duration `json:"base,omitempty"`
	// Largest backoff.
	Max caddy.Duration `json:"max,omitempty"`
}

func (h *Handler) setDefaults() {
	if h.LoginPath == "" {
		h.LoginPath = defaultLoginPath
	}
	if h.CodeField == "" {
		h.CodeField = defaultCodeField
	}
	if h.Endpoint == "" {
		h.Endpoint = defaultEndpoint
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
	if h.Budget == nil {
		h.Budget = &Budget{Events: 60, Window: caddy.Duration(time.Minute)}
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

// Validate refuses a config that cannot work, naming the field at fault.
func (h *Handler) Validate() error {
	var sessionSecrets [][]byte
	if h.sessions != nil {
		for _, k := range h.sessions.keys {
			sessionSecrets = append(sessionSecrets, k.secret)
		}
	}
	return h.validate(sessionSecrets)
}

func (h *Handler) validate(sessionSecrets [][]byte) error {
	switch {
	case h.AppID == "":
		return errors.New("app_id is required")
	case strings.ContainsAny(h.AppID, " \t\r\n/?&#"):
		return errors.New("app_id is not a WeChat AppID")
	case h.AppSecret == "":
		return errors.New("app_secret is required")
	case h.secret == "":
		return errors.New("app_secret is empty once its placeholders are resolved (is the environment variable or file there?)")
	case !strings.HasPrefix(h.LoginPath, "/"):
		return fmt.Errorf("login_path must start with /: %q", h.LoginPath)
	case h.CodeField == "":
		return errors.New("code_field must not be empty")
	case h.Timeout <= 0:
		return errors.New("timeout must be positive")
	case h.Retry.Attempts < 1 || h.Retry.Attempts > maxAttempts:
		return fmt.Errorf("retry: attempts must be from 1 to %d", maxAttempts)
	case h.Retry.Base < 0 || h.Retry.Max < h.Retry.Base:
		return errors.New("retry: need 0 <= base <= max")
	case h.CacheTTL != nil && *h.CacheTTL < 0:
		return errors.New("cache_ttl must not be negative")
	case h.CacheSize < 1:
		return errors.New("cache_size must be at least 1")
	case h.BudgetSize < 1:
		return errors.New("budget_size must be at least 1")
	}
	if err := validateEndpoint(h.Endpoint); err != nil {
		return err
	}
	if err := h.Budget.validate("budget"); err != nil {
		return err
	}
	if h.Budget.Off {
		return errors.New("budget cannot be off: it keeps players under WeChat's limit")
	}
	if err := h.Budget.withinWechatQuota(); err != nil {
		return fmt.Errorf("budget: %w", err)
	}
	if err := h.IPBudget.validate("ip_budget"); err != nil {
		return err
	}
	if h.Session != nil {
		if len(sessionSecrets) == 0 {
			return errors.New("session: at least one secret is required")
		}
		for i, s := range sessionSecrets {
			if len(s) < minSessionSecret {
				return fmt.Errorf("session: secret %d is %d bytes once resolved; at least %d are required", i+1, len(s), minSessionSecret)
			}
		}
		if h.Session.TTL <= 0 {
			return errors.New("session: ttl must be positive")
		}
	}
	return nil
}

func (b *Budget) validate(name string) error {
	if b.Off {
		return nil
	}
	if b.Events < 1 || b.Window <= 0 {
		return fmt.Errorf("%s needs a positive number of events and a positive window", name)
	}
	return nil
}

func validateEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("endpoint must be an http or https base URL, got %q", endpoint)
	}
	return nil
}

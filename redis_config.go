package wechatlogin

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Defaults and bounds of the redis block, as documented in docs/fleet.md.
const (
	defaultRedisKeyPrefix = "wechat_login:"
	defaultRedisTimeout   = 100 * time.Millisecond
	defaultRedisPort      = "6379"
	maxRedisTimeout       = time.Minute
	maxFleetSize          = 1000
	maxRedisDB            = 65535
	maxRedisKeyPrefix     = 128
)

// RedisConfig shares a handler's budgets, code cache and calls in flight
// with the other gateways of a fleet through Redis (or Valkey, Sentinel,
// Cluster). While Redis is unreachable, each gateway serves logins from its
// own memory with budgets divided by FleetSize.
type RedisConfig struct {
	// Where Redis is: host:port, redis://[user:password@]host:port[/db] or
	// rediss://… (TLS). One address for a single server; several for Cluster
	// seeds, or the Sentinels with MasterName. Placeholders are resolved at
	// provision. Required.
	Address []string `json:"address,omitempty"`
	// Username for Redis ACLs. Default none.
	Username string `json:"username,omitempty"`
	// Password; placeholders such as {env.REDIS_PASSWORD} are resolved at
	// provision. Default none.
	Password string `json:"password,omitempty"`
	// Database number; Cluster has only 0. Default 0.
	DB int `json:"db,omitempty"`
	// Connect with TLS; rediss:// addresses imply it. Default off.
	TLS bool `json:"tls,omitempty"`
	// Name of the Sentinel master; the addresses are then the Sentinels'.
	// Default none (no Sentinel).
	MasterName string `json:"master_name,omitempty"`
	// Prefix of every key the gateways write. Default wechat_login:.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Time allowed for one Redis operation; a slower answer counts as a
	// failure and logins are served from memory. At most 1m. Default 100ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Gateways sharing this Redis; while it is unreachable each allows
	// budget/fleet_size (at least 1). At most 1000. Default 1.
	FleetSize int `json:"fleet_size,omitempty"`
}

// parseRedisBlock reads the redis block of a Caddyfile:
//
//	redis [<address>...] {
//		address     <address>...
//		username    <name>
//		password    <password>
//		db          <n>
//		tls
//		master_name <name>
//		key_prefix  <prefix>
//		timeout     <duration>
//		fleet_size  <n>
//	}
func parseRedisBlock(d *caddyfile.Dispenser) (*RedisConfig, error) {
	c := new(RedisConfig)
	if err := addRedisAddresses(d, c, d.RemainingArgs()); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "address" { // address repeats for Cluster and Sentinel
			return nil, d.Errf("redis: %s given more than once", sub)
		}
		seen[sub] = true
		if err := parseRedisSetting(d, c, sub); err != nil {
			return nil, err
		}
	}
	if len(c.Address) == 0 {
		return nil, d.Errf("redis: address is required")
	}
	if err := c.validate(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return c, nil
}

// parseRedisSetting reads one line of the block; its errors carry the line.
func parseRedisSetting(d *caddyfile.Dispenser, c *RedisConfig, sub string) error {
	var err error // from the argument helpers, which locate their own errors
	var bad error // a value that reads but cannot work
	switch sub {
	case "address":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("redis: address: missing value")
		}
		return addRedisAddresses(d, c, args)
	case "username":
		c.Username, err = oneArg(d)
	case "password":
		c.Password, err = oneArg(d)
	case "db":
		var v string
		if v, err = oneArg(d); err == nil {
			c.DB, bad = parseRedisDB(v)
		}
	case "tls":
		if d.NextArg() {
			return d.ArgErr()
		}
		c.TLS = true
	case "master_name":
		c.MasterName, err = oneArg(d)
	case "key_prefix":
		if c.KeyPrefix, err = oneArg(d); err == nil {
			bad = checkRedisKeyPrefix(c.KeyPrefix)
		}
	case "timeout":
		if c.Timeout, err = durationArg(d, nil); err == nil {
			bad = checkRedisTimeout(c.Timeout)
		}
	case "fleet_size":
		if c.FleetSize, err = intArg(d, nil); err == nil {
			bad = checkFleetSize(c.FleetSize)
		}
	default:
		return d.Errf("redis: unrecognized subdirective: %s", sub)
	}
	if bad != nil {
		return d.Errf("redis: %v", bad)
	}
	return err
}

// addRedisAddresses appends addresses, refusing at their line those that
// cannot work (addresses with placeholders are checked once resolved).
func addRedisAddresses(d *caddyfile.Dispenser, c *RedisConfig, addrs []string) error {
	for _, a := range addrs {
		if !strings.Contains(a, "{") {
			if _, err := parseRedisAddress(a); err != nil {
				return d.Errf("redis: address %d: %v", len(c.Address)+1, err)
			}
		}
		c.Address = append(c.Address, a)
	}
	return nil
}

func parseRedisDB(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxRedisDB {
		return 0, fmt.Errorf("db must be a whole number from 0 to %d, got %q", maxRedisDB, v)
	}
	return n, nil
}

func checkRedisTimeout(t caddy.Duration) error {
	return checkDuration("timeout", t, time.Millisecond, maxRedisTimeout)
}

func checkFleetSize(n int) error { return checkRange("fleet_size", n, 1, maxFleetSize) }

// checkRedisKeyPrefix refuses braces: Redis Cluster hashes the first {…} of
// a key, and a code's result and lock keys must hash alike. Keys appear in
// Redis's logs and tools: visible ASCII only.
func checkRedisKeyPrefix(p string) error {
	if err := checkVisibleASCII("key_prefix", p); err != nil {
		return err
	}
	if strings.ContainsAny(p, "{}") {
		return fmt.Errorf("key_prefix must not contain { or }: Redis Cluster reads them as a hash tag")
	}
	if len(p) > maxRedisKeyPrefix {
		return fmt.Errorf("key_prefix is %d bytes; at most %d", len(p), maxRedisKeyPrefix)
	}
	return nil
}

// validate refuses a block that cannot work, before its placeholders are
// resolved; zero values stand for the defaults.
func (c *RedisConfig) validate() error {
	if len(c.Address) == 0 {
		return errors.New("redis: address is required")
	}
	for i, a := range c.Address {
		if a == "" {
			return fmt.Errorf("redis: address %d is empty", i+1)
		}
	}
	checks := []error{checkRedisKeyPrefix(c.KeyPrefix)}
	if c.DB != 0 {
		_, err := parseRedisDB(strconv.Itoa(c.DB))
		checks = append(checks, err)
	}
	if c.Timeout != 0 {
		checks = append(checks, checkRedisTimeout(c.Timeout))
	}
	if c.FleetSize != 0 {
		checks = append(checks, checkFleetSize(c.FleetSize))
	}
	if c.isCluster() && c.DB != 0 {
		checks = append(checks, errors.New("db must be 0 with Redis Cluster (several addresses and no master_name)"))
	}
	if err := errors.Join(checks...); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

func (c *RedisConfig) isCluster() bool { return len(c.Address) > 1 && c.MasterName == "" }

// redisAddress is one address taken apart.
type redisAddress struct {
	hostPort           string
	username, password string
	hasPassword        bool
	db                 int // -1 when the address names none
	scheme             string
}

// parseRedisAddress reads host:port (port 6379 when omitted) or a redis://
// or rediss:// URL. Its errors never repeat the address, which may hold a
// password.
func parseRedisAddress(a string) (redisAddress, error) {
	addr := redisAddress{db: -1}
	if !strings.Contains(a, "://") {
		hostPort, err := withDefaultPort(a)
		addr.hostPort = hostPort
		return addr, err
	}
	u, err := url.Parse(a)
	if err != nil {
		return addr, errors.New("not a URL")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return addr, fmt.Errorf("scheme %q is not redis or rediss", u.Scheme)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return addr, errors.New("URL options are not supported; use the redis block's settings")
	}
	addr.scheme = u.Scheme
	if addr.hostPort, err = withDefaultPort(u.Host); err != nil {
		return addr, err
	}
	if u.User != nil {
		addr.username = u.User.Username()
		addr.password, addr.hasPassword = u.User.Password()
	}
	if path := strings.TrimPrefix(u.Path, "/"); path != "" {
		if addr.db, err = parseRedisDB(path); err != nil {
			return addr, err
		}
	}
	return addr, nil
}

func withDefaultPort(hostPort string) (string, error) {
	if hostPort == "" {
		return "", errors.New("no host")
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		// No port: the whole is the host (an IPv6 host must be bracketed).
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostPort, "["), "]"), defaultRedisPort
	}
	// Neither part is repeated: "password@host:port" would be read as a
	// host, and "user:password@host" as a host and a port.
	if host == "" {
		return "", errors.New("no host")
	}
	if !isVisibleASCII(host, len(host)) || strings.ContainsAny(host, "[]/@") {
		return "", errors.New("not host:port: a host has no @, / or spaces (a password goes in the password setting, or in a redis:// URL)")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", errors.New("the port is not a port number")
	}
	return net.JoinHostPort(host, port), nil
}

// redisSettings is a RedisConfig resolved at provision: placeholders
// replaced, URLs taken apart and defaults applied. It holds what a client
// connection needs; handlers with equal settings share one client.
type redisSettings struct {
	addrs      []string
	username   string
	password   string
	db         int
	tls        bool
	masterName string
	timeout    time.Duration
}

// resolve replaces placeholders and merges what the URLs say with the
// block's own settings; a disagreement is an error rather than a guess.
func (c *RedisConfig) resolve(repl *caddy.Replacer) (redisSettings, error) {
	if err := c.validate(); err != nil {
		return redisSettings{}, err
	}
	s := redisSettings{
		username:   repl.ReplaceKnown(c.Username, ""),
		password:   repl.ReplaceKnown(c.Password, ""),
		db:         c.DB,
		tls:        c.TLS,
		masterName: c.MasterName,
		timeout:    time.Duration(c.Timeout),
	}
	if s.timeout == 0 {
		s.timeout = defaultRedisTimeout
	}
	schemes := map[string]bool{}
	for i, raw := range c.Address {
		a, err := parseRedisAddress(repl.ReplaceKnown(raw, ""))
		if err != nil {
			return redisSettings{}, fmt.Errorf("redis: address %d: %v", i+1, err)
		}
		schemes[a.scheme] = true
		if err := mergeSetting(&s.username, a.username, "username"); err != nil {
			return redisSettings{}, fmt.Errorf("redis: address %d: %v", i+1, err)
		}
		if a.hasPassword {
			if err := mergeSetting(&s.password, a.password, "password"); err != nil {
				return redisSettings{}, fmt.Errorf("redis: address %d: %v", i+1, err)
			}
		}
		if a.db >= 0 {
			if s.db != 0 && s.db != a.db {
				return redisSettings{}, fmt.Errorf("redis: address %d names db %d, but db is %d", i+1, a.db, s.db)
			}
			s.db = a.db
		}
		s.addrs = append(s.addrs, a.hostPort)
	}
	switch {
	case schemes["rediss"] && schemes["redis"]:
		return redisSettings{}, errors.New("redis: addresses mix redis:// and rediss://")
	case schemes["redis"] && c.TLS:
		return redisSettings{}, errors.New("redis: tls is set, but an address is redis://; use rediss://")
	case c.isCluster() && s.db != 0:
		return redisSettings{}, errors.New("redis: db must be 0 with Redis Cluster (several addresses and no master_name)")
	}
	s.tls = s.tls || schemes["rediss"]
	return s, nil
}

// mergeSetting takes a setting from an address URL unless the block gave a
// different one. Its error names the setting, never its value.
func mergeSetting(setting *string, fromURL, name string) error {
	switch {
	case fromURL == "":
	case *setting == "":
		*setting = fromURL
	case *setting != fromURL:
		return fmt.Errorf("its %s differs from the %s given elsewhere", name, name)
	}
	return nil
}

// keyPrefix and fleetSize are the block's per-handler settings, defaults
// applied.
func (c *RedisConfig) keyPrefix() string {
	if c.KeyPrefix == "" {
		return defaultRedisKeyPrefix
	}
	return c.KeyPrefix
}

func (c *RedisConfig) fleetSize() int {
	if c.FleetSize == 0 {
		return 1
	}
	return c.FleetSize
}

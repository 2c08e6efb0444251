package wechatlogin

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// parseRedis parses a Caddyfile redis block as the wechat_login parser
// meets it: the dispenser on the word redis.
func parseRedis(input string) (*RedisConfig, error) {
	d := caddyfile.NewTestDispenser(input)
	d.Next()
	return parseRedisBlock(d)
}

func TestParseRedisBlock(t *testing.T) {
	got, err := parseRedis(`redis {
		address     redis-a:6379 redis-b:6379
		address     redis-c:6379
		username    gateway
		password    {env.REDIS_PASSWORD}
		tls
		key_prefix  game:
		timeout     250ms
		fleet_size  3
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &RedisConfig{
		Address: []string{"redis-a:6379", "redis-b:6379", "redis-c:6379"}, Username: "gateway",
		Password: "{env.REDIS_PASSWORD}", TLS: true, KeyPrefix: "game:",
		Timeout: caddy.Duration(250 * time.Millisecond), FleetSize: 3,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	sentinel, err := parseRedis(`redis sentinel-a:26379 sentinel-b:26379 {
		master_name mymaster
		db 2
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if want := (&RedisConfig{Address: []string{"sentinel-a:26379", "sentinel-b:26379"}, MasterName: "mymaster", DB: 2}); !reflect.DeepEqual(sentinel, want) {
		t.Errorf("got  %+v\nwant %+v", sentinel, want)
	}

	short, err := parseRedis("redis 127.0.0.1:6379")
	if err != nil || !reflect.DeepEqual(short, &RedisConfig{Address: []string{"127.0.0.1:6379"}}) {
		t.Errorf("redis <address> without a block: %+v, %v", short, err)
	}
}

func TestParseRedisBlockErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"", "redis: address is required"},
		{"address", "redis: address: missing value"},
		{"address redis://h:6379?dial_timeout=1s", "redis: address 1: URL options are not supported"},
		{"address http://h:6379", `redis: address 1: scheme "http" is not redis or rediss`},
		{"address h:http", `redis: address 1: the port is not a port number`},
		{"address h:6379\naddress h:0", `redis: address 2: the port is not a port number`},
		// A password written into a plain address must not load as a host
		// name, to be logged with every Redis error.
		{"address s3cret-pw@redis.internal:6379", "redis: address 1: not host:port: a host has no @, / or spaces"},
		{"address s3cret-pw@redis.internal", "redis: address 1: not host:port"},
		{"address user:s3cret-pw@redis.internal", "redis: address 1: the port is not a port number"},
		{"address redis.internal/s3cret-pw:6379", "redis: address 1: not host:port"},
		{"address \"s3cret pw redis.internal:6379\"", "redis: address 1: not host:port"},
		{"address \"redis.internal\t:6379\"", "redis: address 1: not host:port"},
		{"address h\nkey_prefix \"game\x7f:\"", "redis: key_prefix must be visible ASCII, without spaces or control characters"},
		{"address h\nkey_prefix \"jeu de rôle:\"", "redis: key_prefix must be visible ASCII"},
		{"address h\ntimeout", "timeout: missing value"},
		{"address h\ntimeout soon", `timeout: bad duration "soon"`},
		{"address h\ntimeout 0s", "redis: timeout must be at least 1ms, got 0s"},
		{"address h\ntimeout 2m", "redis: timeout must be at most 1m, got 2m"},
		{"address h\nfleet_size 0", "redis: fleet_size must be from 1 to 1000, got 0"},
		{"address h\nfleet_size 1001", "redis: fleet_size must be from 1 to 1000, got 1001"},
		{"address h\ndb -1", `redis: db must be a whole number from 0 to 65535, got "-1"`},
		{"address h\ndb two", `redis: db must be a whole number from 0 to 65535, got "two"`},
		{"address h\nkey_prefix {game}:", "redis: key_prefix must not contain { or }"},
		{"address h\ntls yes", "wrong argument count"},
		{"address h\nusername a b", "username: one value expected"},
		{"address h\ntimeout 1s\ntimeout 2s", "redis: timeout given more than once"},
		{"address h\nhost h", "redis: unrecognized subdirective: host"},
		{"address a:6379 b:6379\ndb 1", "redis: db must be 0 with Redis Cluster"},
	} {
		input := "redis {\n" + tc.body + "\n}"
		_, err := parseRedis(input)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.body, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: the error repeats the address: %v", tc.body, err)
		}
		if !strings.Contains(err.Error(), ", at Testfile:") {
			t.Errorf("%q: the error does not name its line: %v", tc.body, err)
		}
	}
	// The line is the bad value's, not the block's.
	_, err := parseRedis("redis {\n\taddress h\n\tkey_prefix ok:\n\ttimeout 2m\n}")
	if err == nil || !strings.HasSuffix(err.Error(), "at Testfile:4") {
		t.Errorf("got %v, want the error at line 4", err)
	}
}

func TestRedisConfigValidateJSON(t *testing.T) {
	for _, tc := range []struct {
		config string
		want   string // "" when valid
	}{
		{`{"address":["h:6379"]}`, ""},
		{`{"address":["h:6379"],"timeout":"1m","fleet_size":1000,"db":65535}`, ""},
		{`{}`, "redis: address is required"},
		{`{"address":[""]}`, "redis: address 1 is empty"},
		{`{"address":["h"],"timeout":"61s"}`, "redis: timeout must be at most 1m"},
		{`{"address":["h"],"timeout":-1}`, "redis: timeout must be at least 1ms"},
		{`{"address":["h"],"fleet_size":-2}`, "redis: fleet_size must be from 1 to 1000, got -2"},
		{`{"address":["h"],"db":70000}`, "redis: db must be a whole number from 0 to 65535"},
		{`{"address":["h"],"key_prefix":"a}"}`, "redis: key_prefix must not contain"},
		{`{"address":["h"],"key_prefix":"` + strings.Repeat("k", 129) + `"}`, "redis: key_prefix is 129 bytes; at most 128"},
		{`{"address":["a","b"],"db":3}`, "redis: db must be 0 with Redis Cluster"},
		{`{"address":["a","b"],"db":3,"master_name":"m"}`, ""},
	} {
		var c RedisConfig
		if err := json.Unmarshal([]byte(tc.config), &c); err != nil {
			t.Fatal(err)
		}
		err := c.validate()
		if tc.want == "" && err != nil {
			t.Errorf("%s: %v", tc.config, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", tc.config, err, tc.want)
		}
	}
}

func TestRedisConfigJSONRoundTrip(t *testing.T) {
	c, err := parseRedis(`redis {
		address rediss://redis.example:6380
		password {env.REDIS_PASSWORD}
		timeout 1s
		fleet_size 4
	}`)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(c)
	const want = `{"address":["rediss://redis.example:6380"],"password":"{env.REDIS_PASSWORD}","timeout":1000000000,"fleet_size":4}`
	if string(out) != want {
		t.Errorf("got  %s\nwant %s", out, want)
	}
	var back RedisConfig
	if err := json.Unmarshal(out, &back); err != nil || !reflect.DeepEqual(&back, c) {
		t.Errorf("the JSON does not read back: %+v %v", back, err)
	}
}

func TestRedisSettingsResolve(t *testing.T) {
	t.Setenv("WL_TEST_REDIS_PASSWORD", "pw-from-env")
	t.Setenv("WL_TEST_REDIS_URL", "rediss://gw:pw-in-url@redis.example:6380/3")
	for _, tc := range []struct {
		name   string
		config RedisConfig
		want   redisSettings
	}{
		{"defaults", RedisConfig{Address: []string{"localhost"}},
			redisSettings{addrs: []string{"localhost:6379"}, timeout: 100 * time.Millisecond}},
		{"password placeholder", RedisConfig{Address: []string{"10.0.0.1:7000"}, Password: "{env.WL_TEST_REDIS_PASSWORD}", Timeout: caddy.Duration(time.Second)},
			redisSettings{addrs: []string{"10.0.0.1:7000"}, password: "pw-from-env", timeout: time.Second}},
		{"a URL gives credentials, db and tls", RedisConfig{Address: []string{"{env.WL_TEST_REDIS_URL}"}},
			redisSettings{addrs: []string{"redis.example:6380"}, username: "gw", password: "pw-in-url", db: 3, tls: true, timeout: 100 * time.Millisecond}},
		{"the same password twice", RedisConfig{Address: []string{"redis://:pw@h1", "redis://:pw@h2"}, Password: "pw", MasterName: "m"},
			redisSettings{addrs: []string{"h1:6379", "h2:6379"}, password: "pw", masterName: "m", timeout: 100 * time.Millisecond}},
		{"IPv6", RedisConfig{Address: []string{"[::1]:6380", "redis://[::1]"}},
			redisSettings{addrs: []string{"[::1]:6380", "[::1]:6379"}, timeout: 100 * time.Millisecond}},
	} {
		got, err := tc.config.resolve(caddy.NewReplacer())
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\ngot  %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

func TestRedisSettingsConflictsAreErrorsWithoutSecrets(t *testing.T) {
	const secret = "hunter2-redis"
	for _, tc := range []struct {
		config RedisConfig
		want   string
	}{
		{RedisConfig{Address: []string{"redis://:" + secret + "@h"}, Password: "other"}, "redis: address 1: its password differs from the password given elsewhere"},
		{RedisConfig{Address: []string{"redis://a:" + secret + "@h", "redis://b:" + secret + "@h2"}, MasterName: "m"}, "redis: address 2: its username differs"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h/2"}, DB: 1}, "redis: address 1 names db 2, but db is 1"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1", "rediss://h2"}, MasterName: "m"}, "redis: addresses mix redis:// and rediss://"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1"}, TLS: true}, "redis: tls is set, but an address is redis://"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1/2", "redis://:" + secret + "@h2"}}, "redis: db must be 0 with Redis Cluster"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1:99999"}}, `redis: address 1: the port is not a port number`},
		{RedisConfig{Address: []string{secret + "@h1:6379"}}, "redis: address 1: not host:port"},
		{RedisConfig{Address: []string{secret + "@h1"}}, "redis: address 1: not host:port"},
		{RedisConfig{Address: []string{"user:" + secret + "@h1"}}, "redis: address 1: the port is not a port number"},
		{RedisConfig{Address: []string{"h1/" + secret}}, "redis: address 1: not host:port"},
		{RedisConfig{Address: []string{"h1 " + secret + ":6379"}}, "redis: address 1: not host:port"},
		{RedisConfig{Address: []string{"h1:6379"}, KeyPrefix: "game\n"}, "redis: key_prefix must be visible ASCII"},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1/x"}}, `redis: address 1: db must be a whole number`},
		{RedisConfig{Address: []string{"redis://:" + secret + "@h1%zz"}}, "redis: address 1: not a URL"},
	} {
		_, err := tc.config.resolve(caddy.NewReplacer())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.config.Address, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

func TestRedisPoolKeyHidesThePassword(t *testing.T) {
	a := redisSettings{addrs: []string{"h:6379"}, password: "hunter2-redis", timeout: time.Second}
	b := a
	b.password = "another"
	if strings.Contains(a.poolKey(), "hunter2") {
		t.Error("the pool key holds the password")
	}
	if a.poolKey() == b.poolKey() {
		t.Error("settings with different passwords share a client")
	}
	c := a
	c.timeout = 2 * time.Second
	if a.poolKey() == c.poolKey() {
		t.Error("settings with different timeouts share a client")
	}
}

// FuzzParseRedisBlock feeds arbitrary block bodies to the parser: it must
// never panic, and what it accepts must pass validation and resolve
// without a secret in any error.
func FuzzParseRedisBlock(f *testing.F) {
	for _, seed := range []string{
		"address h:6379",
		"address redis://user:pw@h:6379/2\ntimeout 1s\nfleet_size 3",
		"address rediss://h\ntls\nkey_prefix x:",
		"address a b c\nmaster_name m\ndb 3",
		"address [::1]\ntimeout 1m",
		"address redis://:pw@h/1?x=y",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		c, err := parseRedis("redis {\n" + body + "\n}")
		if err != nil {
			return
		}
		if err := c.validate(); err != nil {
			t.Fatalf("the parser accepted what validate refuses: %v", err)
		}
		s, err := c.resolve(caddy.NewReplacer())
		if err != nil {
			if c.Password != "" && strings.Contains(err.Error(), c.Password) {
				t.Fatalf("an error shows the password: %v", err)
			}
			return
		}
		if len(s.addrs) != len(c.Address) || s.timeout <= 0 || s.timeout > maxRedisTimeout {
			t.Fatalf("resolved settings out of bounds: %+v", s)
		}
	})
}

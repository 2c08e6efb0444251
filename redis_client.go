package wechatlogin

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// redisClients holds one redisClient per distinct redis settings, so that
// every handler (of any app, in any config) with the same settings shares
// its connections and its health, across reloads.
var redisClients = caddy.NewUsagePool()

// A Redis that failed is asked every redisProbeEvery whether it is back.
// One that fails again within redisFlapWindow of coming back (a replica
// that refuses writes answers PING all the same) is probed half as often
// each time, up to redisMaxProbeEvery, so that its log lines stay few.
const (
	redisProbeEvery    = time.Second
	redisFlapWindow    = time.Minute
	redisMaxProbeEvery = time.Minute
)

// redisClient is a Redis connection pool and what this process knows of its
// health. It starts up; any failed or late operation marks it down, and
// from then on no login touches it until a background probe finds it
// answering again.
type redisClient struct {
	client  redis.UniversalClient
	timeout time.Duration
	addrs   string // for log lines
	logger  *zap.Logger

	down atomic.Bool

	mu         sync.Mutex // guards the fields below
	closed     bool
	stop       chan struct{} // closed by Destruct, to end the prober
	probing    sync.WaitGroup
	probeEvery time.Duration // the first probe interval after a failure
	probeWait  time.Duration // the current probe interval
	upSince    time.Time     // when the last probe found Redis back
}

func newRedisClient(s redisSettings, logger *zap.Logger) *redisClient {
	opts := &redis.UniversalOptions{
		Addrs:      s.addrs,
		Username:   s.username,
		Password:   s.password,
		DB:         s.db,
		MasterName: s.masterName,
		// A charge that timed out may still have run: sending it again
		// could charge twice, so go-redis must never retry a command.
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           s.timeout,
		ReadTimeout:           s.timeout,
		WriteTimeout:          s.timeout,
		PoolTimeout:           s.timeout,
		ContextTimeoutEnabled: true,
		// Redis before 7.2 and Valkey do not know the command that turns
		// these on; asking costs a log line per connection.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if s.tls {
		// ServerName is left empty: each connection checks the name of the
		// node it dials (Cluster and Sentinel reach several).
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &redisClient{
		client:     redis.NewUniversalClient(opts),
		timeout:    s.timeout,
		addrs:      strings.Join(s.addrs, ","),
		logger:     logger,
		stop:       make(chan struct{}),
		probeEvery: redisProbeEvery,
	}
}

// Destruct satisfies caddy.Destructor: the last handler using the client
// has gone.
func (c *redisClient) Destruct() error {
	c.mu.Lock()
	c.closed = true
	close(c.stop)
	c.mu.Unlock()
	c.probing.Wait()
	if c.down.Load() {
		storeMetrics.fallback.Dec()
	}
	return c.client.Close()
}

// do runs one Redis operation on the login path, bounded by the timeout
// whatever ctx allows (a client hanging up does not make Redis look
// broken), and records its latency. It reports false, without calling op,
// when Redis is marked down, and false when op fails, marking Redis down:
// either way the caller serves the login from memory.
func (c *redisClient) do(ctx context.Context, operation string, op func(context.Context) error) bool {
	if c.down.Load() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	start := time.Now()
	err := op(ctx)
	storeMetrics.duration.WithLabelValues(operation).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, redis.Nil) {
		storeMetrics.errors.WithLabelValues(operation).Inc()
		c.markDown(operation, err)
		return false
	}
	return true
}

// markDown switches to memory, once however many logins fail together, and
// starts probing.
func (c *redisClient) markDown(operation string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.down.CompareAndSwap(false, true) {
		return
	}
	storeMetrics.fallback.Inc()
	if time.Since(c.upSince) < redisFlapWindow {
		c.probeWait = min(2*c.probeWait, redisMaxProbeEvery)
	} else {
		c.probeWait = c.probeEvery
	}
	c.logger.Warn("redis failed: this gateway serves from its own memory (budgets divided by fleet_size, its own access token) until Redis is reachable",
		zap.String("redis", c.addrs), zap.String("operation", operation), zap.Error(err), zap.Duration("probe_every", c.probeWait))
	c.probing.Add(1)
	go c.probe(c.probeWait)
}

// probe pings Redis every interval until it answers or the client is
// destructed.
func (c *redisClient) probe(interval time.Duration) {
	defer c.probing.Done()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-ticker.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		err := c.client.Ping(ctx).Err()
		cancel()
		if err == nil {
			c.mu.Lock()
			if !c.closed {
				c.upSince = time.Now()
				c.down.Store(false)
				storeMetrics.fallback.Dec()
				c.logger.Info("redis answers again: budgets, codes and access tokens are shared with the fleet", zap.String("redis", c.addrs))
			}
			c.mu.Unlock()
			return
		}
	}
}

// poolKey names the settings in redisClients without holding the password.
func (s redisSettings) poolKey() string {
	password := sha256.Sum256([]byte(s.password))
	key, _ := json.Marshal([]any{s.addrs, s.username, hex.EncodeToString(password[:]), s.db, s.tls, s.masterName, s.timeout})
	return string(key)
}

// The store metrics are process-wide like the others (see metrics.go).
var storeMetrics = struct {
	once     sync.Once
	fallback prometheus.Gauge
	errors   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}{}

func registerStoreMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "wechat_login"
	m := &storeMetrics
	m.once.Do(func() {
		m.fallback = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "store_fallback",
			Help: "Redis stores (one per distinct redis settings) that failed and are being probed; meanwhile logins are served from memory. 0 when all answer.",
		})
		m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_errors_total",
			Help: "Redis operations that failed or answered after the timeout, by operation.",
		}, []string{"operation"})
		m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_duration_seconds",
			Help:    "Time of one Redis operation, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"operation"})
	})
	return registerAll(registry, m.fallback, m.errors, m.duration)
}

// redisLogs sends go-redis' own log lines (one per failed dial, say) to
// Caddy's current default log at debug level instead of standard error,
// where they would repeat every probe while Redis is down. go-redis has one
// logger per process.
var redisLogs sync.Once

type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	caddy.Log().Named("redis").Debug(fmt.Sprintf(format, v...))
}

// fleet is one app's share of a Redis: its key space, the keys that hide
// what it stores, and how many gateways share it. State is shared by the
// handlers of one (app_id, endpoint, app_secret), as in memory: a staging
// site pointing at a simulator never meets the production site's state,
// even in the same Redis under the same key_prefix.
type fleet struct {
	redis   *redisClient
	poolKey string
	prefix  string // key_prefix and the app's scope
	nameKey []byte // names keys without revealing what they count
	sealer  cipher.AEAD
	size    int
}

// newFleet resolves cfg and attaches to the shared client for its settings.
// Release it in Cleanup.
func newFleet(ctx caddy.Context, cfg *RedisConfig, appID, endpoint, appSecret string) (*fleet, error) {
	settings, err := cfg.resolve(caddy.NewReplacer())
	if err != nil {
		return nil, err
	}
	if err := registerStoreMetrics(ctx.GetMetricsRegistry()); err != nil {
		return nil, err
	}
	redisLogs.Do(func() { redis.SetLogger(redisLogger{}) })
	key := settings.poolKey()
	value, _, err := redisClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newRedisClient(settings, ctx.Logger()), nil
	})
	if err != nil {
		return nil, err
	}
	salt := appID + "\x00" + endpoint
	derive := func(purpose string, n int) []byte {
		k, _ := hkdf.Key(sha256.New, []byte(appSecret), []byte(salt), "wechat_login redis "+purpose, n) // n is far below HKDF's limit
		return k
	}
	block, _ := aes.NewCipher(derive("seal", 32)) // a 32-byte key is always valid
	sealer, _ := cipher.NewGCM(block)
	return &fleet{
		redis:   value.(*redisClient),
		poolKey: key,
		prefix:  cfg.keyPrefix() + hex.EncodeToString(derive("scope", 8)) + ":",
		nameKey: derive("name", 32),
		sealer:  sealer,
		size:    cfg.fleetSize(),
	}, nil
}

// release lets go of the shared client; the last one closes it.
func (f *fleet) release() error {
	_, err := redisClients.Delete(f.poolKey)
	return err
}

// hide names an id (a player, an address, a code) by a MAC under a key
// derived from the app secret: nothing in Redis can be read back, nor
// tested against a guess, without the secret.
func (f *fleet) hide(id []byte) string {
	mac := hmac.New(sha256.New, f.nameKey)
	mac.Write(id)
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// seal encrypts v (AES-GCM under a key derived from the app secret) bound
// to the key it is stored under, behind a clear kind byte for the scripts.
func (f *fleet) seal(kind byte, name string, v any) []byte {
	plain, _ := json.Marshal(v) // plain strings and numbers always encode
	out := make([]byte, 1+f.sealer.NonceSize(), 1+f.sealer.NonceSize()+len(plain)+f.sealer.Overhead())
	out[0] = kind
	nonce := out[1:]
	_, _ = rand.Read(nonce) // crypto/rand never fails
	return f.sealer.Seal(out, nonce, plain, sealedFor(kind, name))
}

func (f *fleet) open(name, stored string, v any) error {
	if len(stored) < 1+f.sealer.NonceSize() {
		return errors.New("a stored value too short to open")
	}
	nonce, sealed := stored[1:1+f.sealer.NonceSize()], stored[1+f.sealer.NonceSize():]
	plain, err := f.sealer.Open(nil, []byte(nonce), []byte(sealed), sealedFor(stored[0], name))
	if err != nil {
		return err
	}
	return json.Unmarshal(plain, v)
}

// sealedFor is the data a sealed value is bound to: its kind and its key,
// so that no value can be moved to another key or read as another kind.
func sealedFor(kind byte, name string) []byte {
	return append([]byte{kind}, name...)
}

// newLockToken names one holder of a lock, so that a holder whose lock ran
// out never lets go of the next holder's.
func newLockToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails
	return hex.EncodeToString(b[:])
}

// Waiters (on a code's call, on the fleet's token) poll every 10-25ms,
// jittered so that gateways do not poll in step.
const (
	pollMin = 10 * time.Millisecond
	pollMax = 25 * time.Millisecond
)

// pollPause is one waiter's pause between two looks at Redis.
func pollPause() time.Duration { return pollMin + mathrand.N(pollMax-pollMin) }

package wechatlogin

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
// either way the caller serves the login from memory. Every operation of
// both handlers goes through do, never through client directly (only the
// prober does): so none is made while Redis is down, and every one is
// counted by store_duration_seconds.
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

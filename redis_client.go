package wechatlogin

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
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
//
// A silence is confirmed by a PING that gets no answer within
// redisConfirmWithin (or the timeout, if longer): far longer than a loaded
// machine's scheduling delays.
const (
	redisConfirmWithin = time.Second
	redisProbeEvery    = time.Second
	redisFlapWindow    = time.Minute
	redisMaxProbeEvery = time.Minute
)

// redisClient is a Redis connection pool and what this process knows of its
// health. It starts up; an operation that Redis refused, or that got no
// answer while Redis answered nothing else, marks it down, and from then on
// no login touches it until a background probe finds it answering again.
// This process being too busy (every connection in use, or its own CPU late
// to read a reply Redis sent) is not Redis failing: the login it delays is
// served from memory alone, and Redis stays up for the others.
type redisClient struct {
	client  redis.UniversalClient
	timeout time.Duration
	addrs   string // for log lines
	logger  *zap.Logger

	// inFlight holds one token per operation running: at most the pool's
	// connections, so that no operation waits inside go-redis' pool, where
	// its wait would eat into its own deadline.
	inFlight chan struct{}
	// confirmer is one connection of its own, with redisConfirmWithin for
	// every step (dialling included), for confirmDown.
	confirmer redis.UniversalClient
	// lastAnswer is when an operation last got Redis' answer (UnixNano): a
	// late operation begun before it was late for this process's reasons.
	lastAnswer atomic.Int64

	down       atomic.Bool
	confirming atomic.Bool // confirmDown asks Redis

	mu         sync.Mutex // guards the fields below
	closed     bool
	stop       chan struct{} // closed by Destruct, to end the prober
	probing    sync.WaitGroup
	probeEvery time.Duration // the first probe interval after a failure
	probeWait  time.Duration // the current probe interval
	upSince    time.Time     // when the last probe found Redis back
}

// redisPoolSize is go-redis' own default: ten connections per processor.
func redisPoolSize() int { return 10 * runtime.GOMAXPROCS(0) }

func newRedisClient(s redisSettings, logger *zap.Logger, poolSize int) *redisClient {
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
		PoolSize:              poolSize,
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
	confirmOpts := *opts
	confirmOpts.PoolSize, confirmOpts.MaxIdleConns = 1, 1
	confirmWithin := max(s.timeout, redisConfirmWithin)
	confirmOpts.DialTimeout, confirmOpts.ReadTimeout, confirmOpts.WriteTimeout, confirmOpts.PoolTimeout = confirmWithin, confirmWithin, confirmWithin, confirmWithin
	return &redisClient{
		client:     redis.NewUniversalClient(opts),
		confirmer:  redis.NewUniversalClient(&confirmOpts),
		timeout:    s.timeout,
		addrs:      strings.Join(s.addrs, ","),
		logger:     logger,
		inFlight:   make(chan struct{}, poolSize),
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
	return errors.Join(c.client.Close(), c.confirmer.Close())
}

// do runs one Redis operation on the login path and records its latency.
// It reports false, without calling op, when Redis is marked down (or its
// silence is being confirmed) or when no connection came free in time
// (see acquire), and false when op fails: either way the caller serves the login
// from memory. Only Redis failing marks it down (see judge). op runs on
// its own deadline, the timeout from when it has a connection, whatever
// ctx allows (a client hanging up does not make Redis look broken). Every
// operation of both handlers goes through do, never through client
// directly (only the probes do): so none is made while Redis is down, and
// every one is counted by store_duration_seconds.
func (c *redisClient) do(ctx context.Context, operation string, op func(context.Context) error) bool {
	return c.try(ctx, operation, op) == redisAnswered
}

// try is do, telling why an operation was not served: redisUnasked (Redis
// is down, or its silence being confirmed), or judge's word on its failure
// (redisBusy also when no connection came free in time).
func (c *redisClient) try(ctx context.Context, operation string, op func(context.Context) error) int {
	if !c.usable() {
		return redisUnasked
	}
	if !c.acquire(operation) {
		return redisBusy
	}
	defer func() { <-c.inFlight }()
	if !c.usable() { // found silent while this one waited
		return redisUnasked
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	start := time.Now()
	err := op(ctx)
	end := time.Now()
	storeMetrics.duration.WithLabelValues(operation).Observe(end.Sub(start).Seconds())
	if err == nil || errors.Is(err, redis.Nil) {
		c.lastAnswer.Store(end.UnixNano())
		return redisAnswered
	}
	judged := c.judge(start, err)
	switch judged {
	case redisBusy:
		storeMetrics.saturated.WithLabelValues(operation).Inc()
	case redisSilent:
		storeMetrics.errors.WithLabelValues(operation).Inc()
		c.confirmDown(operation, err)
	default:
		storeMetrics.errors.WithLabelValues(operation).Inc()
		c.markDown(operation, err)
	}
	return judged
}

// acquire waits for a connection of the pool to be free, up to
// redisConfirmWithin (or the timeout, if longer): waiting for this
// process's own connections is not Redis being slow, and a login served
// from memory instead may spend a code that another gateway is exchanging.
// While Redis is silent, the operations holding the connections end within
// the timeout, and the waiters then find it so.
func (c *redisClient) acquire(operation string) bool {
	select {
	case c.inFlight <- struct{}{}:
		return true
	default:
	}
	wait := time.NewTimer(max(c.timeout, redisConfirmWithin))
	defer wait.Stop()
	select {
	case c.inFlight <- struct{}{}:
		return true
	case <-wait.C:
		storeMetrics.saturated.WithLabelValues(operation).Inc()
		return false
	}
}

// usable reports whether logins may ask Redis: it is neither down nor
// being confirmed silent.
func (c *redisClient) usable() bool { return !c.down.Load() && !c.confirming.Load() }

// What an operation's failure says of Redis, and try's other outcomes.
const (
	redisFailing  = iota // Redis refused it or dropped the connection
	redisBusy            // this process was late: Redis answered others meanwhile
	redisSilent          // Redis answered nothing since the operation began
	redisAnswered        // the operation ran
	redisUnasked         // not run: Redis is down, or its silence being confirmed
)

// judge tells Redis failing from this process being late. An operation
// begun at start that ran out of time says Redis is silent only if Redis
// has answered no operation since: a busy gateway reads the others'
// answers, late; a frozen or unreachable Redis answers none.
func (c *redisClient) judge(start time.Time, err error) int {
	var netErr net.Error
	switch {
	case errors.Is(err, redis.ErrPoolTimeout):
		return redisBusy
	case !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &netErr) && netErr.Timeout()):
		return redisFailing
	case c.lastAnswer.Load() >= start.UnixNano():
		return redisBusy
	}
	return redisSilent
}

// confirmDown asks Redis once, on a connection of its own, whether it
// answers, after an operation got no answer while Redis answered no
// other: on a machine loaded enough, even a lone operation is read late.
// A Redis that does not answer that either is down. Meanwhile budgets are
// served from memory, and codes wait for the answer (see
// redisClaim.attempt).
func (c *redisClient) confirmDown(operation string, cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.confirming.CompareAndSwap(false, true) {
		return
	}
	c.probing.Add(1)
	go func() {
		defer c.probing.Done()
		defer c.confirming.Store(false) // after markDown: do sees one or the other
		start := time.Now()
		// Its own deadline: with Sentinel or Cluster a PING may dial several
		// nodes, and logins skip Redis until it ends.
		ctx, cancel := context.WithTimeout(context.Background(), max(c.timeout, redisConfirmWithin))
		defer cancel()
		err := c.confirmer.Ping(ctx).Err()
		if err != nil && c.lastAnswer.Load() < start.UnixNano() {
			c.markDown(operation, cause)
		}
	}()
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
	once      sync.Once
	fallback  prometheus.Gauge
	errors    *prometheus.CounterVec
	saturated *prometheus.CounterVec
	duration  *prometheus.HistogramVec
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
		m.saturated = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_saturated_total",
			Help: "Redis operations not made, or late, because this process was too busy (no connection free within a second, or the timeout if longer, or a reply read late while Redis answered others): the login was served from memory, and Redis was not marked down. By operation.",
		}, []string{"operation"})
		m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_duration_seconds",
			Help:    "Time of one Redis operation, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"operation"})
	})
	return registerAll(registry, m.fallback, m.errors, m.saturated, m.duration)
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

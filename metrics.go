package wechatlogin

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors are process-wide, so their counts survive config reloads;
// each config's registry (ctx.GetMetricsRegistry) gets them registered anew.
// Labels name only bounded things: app_id, a result, a budget, a reason.
var wechatMetrics = struct {
	once             sync.Once
	logins           *prometheus.CounterVec
	wechatCalls      *prometheus.CounterVec
	wechatRetries    *prometheus.CounterVec
	exchangeDuration *prometheus.HistogramVec
	budgetRejections *prometheus.CounterVec
	cacheHits        *prometheus.CounterVec
	coalesced        *prometheus.CounterVec
	sessionsIssued   *prometheus.CounterVec
	sessionsRejected *prometheus.CounterVec
}{}

func initWechatMetrics() {
	const ns, sub = "caddy", "wechat_login"
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, append([]string{"app_id"}, labels...))
	}
	m := &wechatMetrics
	m.logins = counter("logins_total", "Logins by result: ok or the error code of the response.", "result")
	m.wechatCalls = counter("wechat_calls_total", "Calls made to jscode2session, retries included.")
	m.wechatRetries = counter("wechat_retries_total", "Calls to jscode2session that were retries.")
	m.exchangeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "exchange_duration_seconds",
		Help:    "Time to exchange a code at WeChat, retries included.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"app_id"})
	m.budgetRejections = counter("budget_rejections_total", "Logins refused by a budget: the player's or the address's, in memory or shared through Redis.", "budget")
	m.cacheHits = counter("cache_hits_total", "Logins served from the code cache.")
	m.coalesced = counter("coalesced_total", "Logins that joined a WeChat call already in flight for the same code.")
	m.sessionsIssued = counter("sessions_issued_total", "Session tokens issued.")
	m.sessionsRejected = counter("sessions_rejected_total", "Requests refused for a missing or invalid session.", "reason")
}

// appMetrics are the collectors' children for one app_id, resolved once at
// provision so that the hot path does no label lookups.
type appMetrics struct {
	appID            string
	loginsOK         prometheus.Counter
	wechatCalls      prometheus.Counter
	wechatRetries    prometheus.Counter
	exchangeDuration prometheus.Observer
	cacheHits        prometheus.Counter
	coalescedLogins  prometheus.Counter
	sessionsIssued   prometheus.Counter
}

func newAppMetrics(registry *prometheus.Registry, appID string) (*appMetrics, error) {
	wechatMetrics.once.Do(initWechatMetrics)
	m := &wechatMetrics
	if err := registerAll(registry, m.logins, m.wechatCalls, m.wechatRetries, m.exchangeDuration,
		m.budgetRejections, m.cacheHits, m.coalesced, m.sessionsIssued, m.sessionsRejected); err != nil {
		return nil, err
	}
	return &appMetrics{
		appID:            appID,
		loginsOK:         m.logins.WithLabelValues(appID, loginOK),
		wechatCalls:      m.wechatCalls.WithLabelValues(appID),
		wechatRetries:    m.wechatRetries.WithLabelValues(appID),
		exchangeDuration: m.exchangeDuration.WithLabelValues(appID),
		cacheHits:        m.cacheHits.WithLabelValues(appID),
		coalescedLogins:  m.coalesced.WithLabelValues(appID),
		sessionsIssued:   m.sessionsIssued.WithLabelValues(appID),
	}, nil
}

// registerAll registers process-wide collectors with a config's registry
// (none when nil). One already registered is fine: every handler of the
// config registers the same ones.
func registerAll(registry *prometheus.Registry, collectors ...prometheus.Collector) error {
	if registry == nil {
		return nil
	}
	for _, c := range collectors {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

// loginOK is the result label of a successful login.
const loginOK = "ok"

// login counts a finished login; result is loginOK or a documented error
// code.
func (m *appMetrics) login(result string) {
	if result == loginOK {
		m.loginsOK.Inc() // every successful login: resolved once
		return
	}
	wechatMetrics.logins.WithLabelValues(m.appID, result).Inc()
}

func (m *appMetrics) exchanged(attempts int, elapsed time.Duration) {
	m.wechatCalls.Add(float64(attempts))
	if attempts > 1 {
		m.wechatRetries.Add(float64(attempts - 1))
	}
	m.exchangeDuration.Observe(elapsed.Seconds())
}

func (m *appMetrics) budgetRejected(budget string) {
	wechatMetrics.budgetRejections.WithLabelValues(m.appID, budget).Inc()
}

func (m *appMetrics) cacheHit()      { m.cacheHits.Inc() }
func (m *appMetrics) coalesced()     { m.coalescedLogins.Inc() }
func (m *appMetrics) sessionIssued() { m.sessionsIssued.Inc() }

func (m *appMetrics) sessionRejected(reason string) {
	wechatMetrics.sessionsRejected.WithLabelValues(m.appID, reason).Inc()
}

package wechatlogin

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors of both handlers are process-wide, made once, so that
// their counts survive config reloads; each config's registry
// (ctx.GetMetricsRegistry) gets them registered anew when a handler is
// provisioned. Labels name only bounded things: app_id, a result or
// outcome, a budget, a reason.

// loginCollectors are wechat_login's.
var loginCollectors = sync.OnceValue(func() *loginCollectorSet {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return newCounterVec("wechat_login", name, help, labels...)
	}
	return &loginCollectorSet{
		logins:          counter("logins_total", "Logins by result: ok or the error code of the response.", "result"),
		exchangeCalls:   counter("wechat_calls_total", "Calls made to jscode2session, retries included."),
		exchangeRetries: counter("wechat_retries_total", "Calls to jscode2session that were retries."),
		exchangeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "caddy", Subsystem: "wechat_login", Name: "exchange_duration_seconds",
			Help:    "Time to exchange a code at WeChat, retries included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"app_id"}),
		budgetRejections: counter("budget_rejections_total", "Logins refused by a budget: the player's or the address's, in memory or shared through Redis.", "budget"),
		cacheHits:        counter("cache_hits_total", "Logins served from the code cache."),
		coalesced:        counter("coalesced_total", "Logins that joined a WeChat call already in flight for the same code."),
		sessionsIssued:   counter("sessions_issued_total", "Session tokens issued."),
		sessionsRejected: counter("sessions_rejected_total", "Requests refused for a missing or invalid session.", "reason"),
	}
})

type loginCollectorSet struct {
	logins           *prometheus.CounterVec
	exchangeCalls    *prometheus.CounterVec
	exchangeRetries  *prometheus.CounterVec
	exchangeDuration *prometheus.HistogramVec
	budgetRejections *prometheus.CounterVec
	cacheHits        *prometheus.CounterVec
	coalesced        *prometheus.CounterVec
	sessionsIssued   *prometheus.CounterVec
	sessionsRejected *prometheus.CounterVec
}

// apiCollectors are wechat_api's.
var apiCollectors = sync.OnceValue(func() *apiCollectorSet {
	return &apiCollectorSet{
		calls: newCounterVec("wechat_api", "calls_total",
			"Requests by outcome: forwarded, repeated (forwarded again with a new token after WeChat refused one), token (a token request answered by the gateway), gateway (a /gateway/ endpoint answered) or the error code of the response.",
			"outcome"),
		tokenFetches: newCounterVec("wechat_api", "token_fetches_total",
			"Calls to stable_token by outcome: ok, forced (a force_refresh) or the error code a request would get.",
			"outcome"),
	}
})

type apiCollectorSet struct {
	calls        *prometheus.CounterVec
	tokenFetches *prometheus.CounterVec
}

// newCounterVec is a counter of a handler's (subsystem), labelled by
// app_id and labels.
func newCounterVec(subsystem, name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: subsystem, Name: name, Help: help},
		append([]string{"app_id"}, labels...))
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

// loginMetrics are wechat_login's collectors' children for one app,
// resolved once at provision so that the hot path does no label lookups.
type loginMetrics struct {
	appID            string
	loginsOK         prometheus.Counter
	exchangeCalls    prometheus.Counter
	exchangeRetries  prometheus.Counter
	exchangeDuration prometheus.Observer
	cacheHits        prometheus.Counter
	coalescedLogins  prometheus.Counter
	sessionsIssued   prometheus.Counter
}

func newLoginMetrics(registry *prometheus.Registry, appID string) (*loginMetrics, error) {
	m := loginCollectors()
	if err := registerAll(registry, m.logins, m.exchangeCalls, m.exchangeRetries, m.exchangeDuration,
		m.budgetRejections, m.cacheHits, m.coalesced, m.sessionsIssued, m.sessionsRejected); err != nil {
		return nil, err
	}
	return &loginMetrics{
		appID:            appID,
		loginsOK:         m.logins.WithLabelValues(appID, loginOK),
		exchangeCalls:    m.exchangeCalls.WithLabelValues(appID),
		exchangeRetries:  m.exchangeRetries.WithLabelValues(appID),
		exchangeDuration: m.exchangeDuration.WithLabelValues(appID),
		cacheHits:        m.cacheHits.WithLabelValues(appID),
		coalescedLogins:  m.coalesced.WithLabelValues(appID),
		sessionsIssued:   m.sessionsIssued.WithLabelValues(appID),
	}, nil
}

// loginOK is the result label of a successful login.
const loginOK = "ok"

// login counts a finished login; result is loginOK or a documented error
// code.
func (m *loginMetrics) login(result string) {
	if result == loginOK {
		m.loginsOK.Inc() // every successful login: resolved once
		return
	}
	loginCollectors().logins.WithLabelValues(m.appID, result).Inc()
}

func (m *loginMetrics) exchanged(attempts int, elapsed time.Duration) {
	m.exchangeCalls.Add(float64(attempts))
	if attempts > 1 {
		m.exchangeRetries.Add(float64(attempts - 1))
	}
	m.exchangeDuration.Observe(elapsed.Seconds())
}

func (m *loginMetrics) budgetRejected(budget string) {
	loginCollectors().budgetRejections.WithLabelValues(m.appID, budget).Inc()
}

func (m *loginMetrics) cacheHit()      { m.cacheHits.Inc() }
func (m *loginMetrics) coalesced()     { m.coalescedLogins.Inc() }
func (m *loginMetrics) sessionIssued() { m.sessionsIssued.Inc() }

func (m *loginMetrics) sessionRejected(reason string) {
	loginCollectors().sessionsRejected.WithLabelValues(m.appID, reason).Inc()
}

// apiMetrics are wechat_api's collectors' children for one app_id.
type apiMetrics struct {
	appID     string
	forwarded prometheus.Counter // the hot path, resolved once
}

func newAPIMetrics(registry *prometheus.Registry, appID string) (*apiMetrics, error) {
	m := apiCollectors()
	if err := registerAll(registry, m.calls, m.tokenFetches); err != nil {
		return nil, err
	}
	return &apiMetrics{appID: appID, forwarded: m.calls.WithLabelValues(appID, callForwarded)}, nil
}

// Outcomes of a request to wechat_api, besides the error codes.
const (
	callForwarded = "forwarded"
	callRepeated  = "repeated"
	callToken     = "token"
)

// call counts a request to wechat_api by its outcome: one of the calls
// above, callGateway or a documented error code.
func (m *apiMetrics) call(outcome string) {
	if outcome == callForwarded {
		m.forwarded.Inc()
		return
	}
	apiCollectors().calls.WithLabelValues(m.appID, outcome).Inc()
}

func (m *apiMetrics) tokenFetched(outcome string) {
	apiCollectors().tokenFetches.WithLabelValues(m.appID, outcome).Inc()
}

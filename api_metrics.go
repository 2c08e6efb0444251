package wechatlogin

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The wechat_api collectors are process-wide, like wechat_login's, so their
// counts survive config reloads; each config's registry gets them registered
// anew. Labels name only bounded things: app_id and an outcome.
var apiMetricsSet = struct {
	once         sync.Once
	calls        *prometheus.CounterVec
	tokenFetches *prometheus.CounterVec
}{}

func initAPIMetrics() {
	const ns, sub = "caddy", "wechat_api"
	m := &apiMetricsSet
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "calls_total",
		Help: "Requests by outcome: forwarded, repeated (forwarded again with a new token after WeChat refused one), token (a token request answered by the gateway), gateway (a /gateway/ endpoint answered) or the error code of the response.",
	}, []string{"app_id", "outcome"})
	m.tokenFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "token_fetches_total",
		Help: "Calls to stable_token by outcome: ok, forced (a force_refresh) or the error code a request would get.",
	}, []string{"app_id", "outcome"})
}

// apiMetrics counts one app's calls and token fetches.
type apiMetrics struct {
	appID     string
	forwarded prometheus.Counter // the hot path, resolved once
}

func newAPIMetrics(registry *prometheus.Registry, appID string) (*apiMetrics, error) {
	apiMetricsSet.once.Do(initAPIMetrics)
	m := &apiMetricsSet
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

func (m *apiMetrics) call(outcome string) {
	if outcome == callForwarded {
		m.forwarded.Inc()
		return
	}
	apiMetricsSet.calls.WithLabelValues(m.appID, outcome).Inc()
}

func (m *apiMetrics) tokenFetched(outcome string) {
	apiMetricsSet.tokenFetches.WithLabelValues(m.appID, outcome).Inc()
}

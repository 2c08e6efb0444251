package wechatlogin

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// Test helpers shared by the package's test files.

// The app every unit test uses; the simulator knows it.
const (
	testAppID  = "wxunittest"
	testSecret = "unit-test-app-secret"
)

// newTestSim starts a simulator knowing the test app.
func newTestSim(t testing.TB) (*wechatsim.Server, string) {
	t.Helper()
	sim, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: testAppID, Secret: testSecret, UnionBound: true}}})
	return sim, simURL
}

// provisionHandler provisions h as Caddy would and cleans it up after the test.
func provisionHandler(t testing.TB, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		return err
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h.Validate()
}

func newTestHandler(t testing.TB, endpoint string, configure ...func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint}
	for _, c := range configure {
		c(h)
	}
	if err := provisionHandler(t, h); err != nil {
		t.Fatal(err)
	}
	return h
}

// newTestRequest is a request as Caddy hands it to a handler: with a replacer and
// the client IP in the context.
func newTestRequest(ctx context.Context, method, target string, body io.Reader) (*http.Request, *caddy.Replacer) {
	r := httptest.NewRequestWithContext(ctx, method, target, body)
	repl := caddy.NewReplacer()
	ctx = context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "203.0.113.7"})
	return r.WithContext(ctx), repl
}

// recordingUpstream records what reached the next handler, which answers
// status (204 if 0).
type recordingUpstream struct {
	status  int
	mu      sync.Mutex
	headers []http.Header
}

func (u *recordingUpstream) handler() caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		w.WriteHeader(cmp.Or(u.status, http.StatusNoContent))
		return nil
	})
}

func (u *recordingUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.headers)
}

// counterValue reads a counter's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// testEpoch is where fake clocks start: mid-minute, so that a minute boundary
// is never hit by accident.
var testEpoch = time.Date(2026, 11, 23, 12, 0, 30, 0, time.UTC)

// newTestClock is a fake clock standing at testEpoch.
func newTestClock() *testkit.Clock { return testkit.NewClock(testEpoch) }

// newClockedHandler provisions a handler for the test app on clock.
func newClockedHandler(t testing.TB, endpoint string, clock *testkit.Clock, configure ...func(*Handler)) *Handler {
	t.Helper()
	return newTestHandler(t, endpoint, append([]func(*Handler){func(h *Handler) { h.now = clock.Now }}, configure...)...)
}

// serveTestLogin serves a login with code from ip and reports the response and
// whether it was forwarded.
func serveTestLogin(t testing.TB, h *Handler, code, ip string) (*httptest.ResponseRecorder, bool) {
	t.Helper()
	res := testLogin{code: code, ip: ip}.serve(context.Background(), h)
	if res.err != nil {
		t.Fatal(res.err)
	}
	return res.w, res.forwarded()
}

// wantRateLimited checks a 429 as the contract words it.
func wantRateLimited(t *testing.T, w *httptest.ResponseRecorder, forwarded bool, retryAfter string) {
	t.Helper()
	var body errorBody
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != http.StatusTooManyRequests || body.Error != refusalRateLimited || forwarded {
		t.Fatalf("got %d %s (forwarded: %v), want 429 rate_limited and nothing forwarded", w.Code, w.Body, forwarded)
	}
	if got := w.Header().Get("Retry-After"); got != retryAfter {
		t.Errorf("Retry-After %q, want %q", got, retryAfter)
	}
}

// leasedBudgetTable is a budget table holding size keys.
func leasedBudgetTable(size int) *budgetTable {
	table := newBudgetTable()
	table.lease(size)
	return table
}

// withSessions turns sessions on, signed with sessionSecret, and lets
// configure (if any) change the rest of the session block.
func withSessions(configure func(*SessionConfig)) func(*Handler) {
	return func(h *Handler) {
		h.Session = &SessionConfig{Secrets: []string{sessionSecret}}
		if configure != nil {
			configure(h.Session)
		}
	}
}

// withBudget sets the player budget to events per window.
func withBudget(events int, window time.Duration) func(*Handler) {
	return func(h *Handler) { h.Budget = &Budget{Events: events, Window: caddy.Duration(window)} }
}

// testLogin is a login request for a test to serve through a handler.
type testLogin struct {
	code   string
	ip     string      // the client address Caddy determined; newTestRequest's if empty
	header http.Header // added to the request
	status int         // the upstream's answer; 204 if 0
}

// loginResult is what one login through a handler gave.
type loginResult struct {
	w        *httptest.ResponseRecorder
	upstream http.Header // what the next handler received; nil if nothing was forwarded
	err      error       // what ServeHTTP returned
}

func (r loginResult) forwarded() bool { return r.upstream != nil }

// checked reports an error ServeHTTP returned on t, with Error (so any
// goroutine may call it), and returns r.
func (r loginResult) checked(t testing.TB) loginResult {
	t.Helper()
	if r.err != nil {
		t.Error(r.err)
	}
	return r
}

// serve serves l through h on ctx. It touches no testing.T, so any goroutine
// may call it.
func (l testLogin) serve(ctx context.Context, h *Handler) loginResult {
	r, _ := newTestRequest(ctx, http.MethodGet, "/wx/login?code="+l.code, nil)
	if l.ip != "" {
		caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, l.ip)
	}
	for name, values := range l.header {
		r.Header[name] = values
	}
	up := &recordingUpstream{status: l.status}
	res := loginResult{w: httptest.NewRecorder()}
	res.err = h.ServeHTTP(res.w, r, up.handler())
	if up.count() > 0 {
		res.upstream = up.headers[0]
	}
	return res
}

// goLogin serves l on a goroutine of its own.
func goLogin(ctx context.Context, h *Handler, l testLogin) <-chan loginResult {
	done := make(chan loginResult, 1)
	go func() { done <- l.serve(ctx, h) }()
	return done
}

// bearerHeader presents token as a session, in Authorization: Bearer.
func bearerHeader(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// waitingContext is a request context that tells when a login first waits
// on it: a login waits on its request's Done once the WeChat call for its
// code is in flight, led by it or by another login, and reads Done nowhere
// before.
type waitingContext struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func newWaitingContext(parent context.Context) *waitingContext {
	return &waitingContext{Context: parent, waiting: make(chan struct{})}
}

func (c *waitingContext) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// await waits until a login waits on c, failing the test after 10 seconds.
func (c *waitingContext) await(t testing.TB) {
	t.Helper()
	select {
	case <-c.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("gave up waiting for the login to wait for its code's result")
	}
}

// awaitLogin is the result of a login started with goLogin, failing the test
// after 10 seconds.
func awaitLogin(t testing.TB, done <-chan loginResult) loginResult {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("gave up waiting for a login to finish")
		return loginResult{}
	}
}

// Session tokens. The token format is tested on its own app and clock
// (sessionAppID, sessionEpoch), with no handler or simulator; a handler
// that issues sessions uses the test app and testEpoch, with sessionSecret.

const (
	sessionAppID       = "wxtokentest0001"
	sessionSecret      = "session-test-secret-0123456789abcdef"
	otherSessionSecret = "session-test-other-secret-0123456789"
	sessionTTL         = 2 * time.Hour
)

var (
	sessionEpoch  = time.Date(2026, 11, 23, 12, 0, 20, 0, time.UTC)
	aliceIdentity = Identity{OpenID: "oAliceAliceAliceAliceAlice01", UnionID: "oUnionAliceUnionAliceUnion01", SessionKey: "c2Vzc2lvbi1rZXktYWxpY2U="}
	bobIdentity   = Identity{OpenID: "oBobBobBobBobBobBobBobBobB01", SessionKey: "c2Vzc2lvbi1rZXktYm9i"}
)

// newTestSessionTokens makes the tokens of appID on clock; the first secret signs.
func newTestSessionTokens(clock *testkit.Clock, appID string, secrets ...string) *sessionTokens {
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		keys[i] = []byte(s)
	}
	return newSessionTokens([]*loginApp{{platform: wechatPlatform, appID: appID}}, keys, sessionTTL, clock.Now)
}

// verified is the identity token proves now, or why it proves none.
func verified(tokens *sessionTokens, token string) (Identity, error) {
	id, _, err := tokens.verifyWithin(token, 0)
	return id, err
}

// issueToken is the token tokens issue for id.
func issueToken(tokens *sessionTokens, id Identity) string {
	token, _ := tokens.issue(tokens.apps[0], id)
	return token
}

// publicIdentity is what a verified session proves: the identity without
// the session_key, which a token never carries.
func publicIdentity(id Identity) Identity { return Identity{OpenID: id.OpenID, UnionID: id.UnionID} }

func encodeSegment(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// signRaw signs a header and a payload, both as written, with HS256 and key:
// a token whatever its JSON, as a holder of the key could make.
func signRaw(header, payload, key string) string {
	return signSegments(encodeSegment(header), encodeSegment(payload), key)
}

// signSegments signs two segments, both as encoded, with HS256 and key.
func signSegments(header, payload, key string) string {
	signed := header + "." + payload
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// rejectionReason is sessionRejection, with "" for no error.
func rejectionReason(err error) string {
	if err == nil {
		return ""
	}
	return sessionRejection(err)
}

// wechat_api's access tokens.

const (
	apiAppID  = "wxtokens"
	apiSecret = "token-test-secret"
)

// accessTokenEpoch is 10:00 in Beijing.
var accessTokenEpoch = time.Date(2024, 5, 1, 2, 0, 0, 0, time.UTC)

// testTokenManager is a token manager on a test clock, with its renewal's
// waits and its log lines in the test's hands.
type testTokenManager struct {
	*tokenManager
	clock *testkit.Clock
	waits renewalWaits
	logs  *observer.ObservedLogs
}

func newTestTokenManager(t *testing.T, endpoint string, clock *testkit.Clock) testTokenManager {
	t.Helper()
	metrics, err := newAPIMetrics(nil, apiAppID)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	waits := make(renewalWaits, 16)
	m := newTokenManager(apiAppID, endpoint, apiSecret, metrics)
	m.now, m.after, m.logger = clock.Now, waits.after, func() *zap.Logger { return logger }
	t.Cleanup(func() {
		stopped := make(chan struct{})
		go func() { m.Destruct(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Error("Destruct did not stop the renewal")
		}
		for _, entry := range logs.All() {
			line := fmt.Sprint(entry.Message, entry.ContextMap())
			if leaks := testkit.Leaks(line); len(leaks) > 0 {
				t.Errorf("a log line carries %d secret(s) or token(s)", len(leaks))
			}
		}
	})
	return testTokenManager{m, clock, waits, logs}
}

// newTokenSim starts a simulator of the test app on clock.
func newTokenSim(t *testing.T, clock *testkit.Clock) (*wechatsim.Server, string) {
	t.Helper()
	return testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: apiAppID, Secret: apiSecret}}, Now: clock.Now})
}

func newStuckWechat(t *testing.T) (*stuckWechat, string) {
	w := &stuckWechat{latest: "stuck-token-0"}
	testkit.Forbid(apiSecret)
	server := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if r.URL.Path == tokenCheckPath { // the stuck token is refused by every API
			fmt.Fprint(rw, `{"errcode":40001,"errmsg":"invalid credential"}`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), `"force_refresh":true`) {
			w.forced++
			w.latest = fmt.Sprintf("stuck-token-%d", w.forced)
		}
		fmt.Fprintf(rw, `{"access_token":%q,"expires_in":7200}`, w.latest)
	}))
	t.Cleanup(server.Close)
	return w, server.URL
}

// assertForcedRefreshRule checks that spend, a ledger of forced refreshes
// asked to spend one at the given time, keeps to WeChat's limits.
func assertForcedRefreshRule(t *testing.T, spend func(time.Time) bool) {
	t.Helper()
	at := func(d time.Duration) time.Time { return accessTokenEpoch.Add(d) }
	if !spend(at(0)) || spend(at(29*time.Second)) || !spend(at(30*time.Second)) {
		t.Fatal("forced refreshes are not kept 30 s apart")
	}
	for i := 2; i < forcedRefreshesPerDay; i++ {
		if !spend(at(time.Duration(i) * time.Minute)) {
			t.Fatalf("forced refresh %d of the day refused", i+1)
		}
	}
	if spend(at(time.Hour)) {
		t.Fatal("a 21st forced refresh within a day was allowed")
	}
	// Each allowance comes back 24 hours after it was spent.
	if spend(at(24*time.Hour - time.Second)) {
		t.Error("allowed before a day had passed since the first")
	}
	if !spend(at(24 * time.Hour)) {
		t.Error("refused a day after the first")
	}
	if spend(at(24*time.Hour + 29*time.Second)) {
		t.Error("allowed 29 s after the last")
	}
	if !spend(at(24*time.Hour + 30*time.Second)) {
		t.Error("refused a day after the second")
	}
	if spend(at(24*time.Hour + time.Minute)) {
		t.Error("allowed a 21st within 24 hours")
	}
}

// renewalWait is one wait the renewal asked for; the test fires it.
type renewalWait struct {
	d    time.Duration
	fire chan time.Time
}

// renewalWaits stands in for time.After in the renewal, so that a test
// decides when each wait ends.
type renewalWaits chan renewalWait

func (w renewalWaits) after(d time.Duration) <-chan time.Time {
	fire := make(chan time.Time, 1)
	w <- renewalWait{d, fire}
	return fire
}

// next is the renewal's next wait; the test fails if it never comes.
func (w renewalWaits) next(t *testing.T) renewalWait {
	t.Helper()
	select {
	case wait := <-w:
		return wait
	case <-time.After(10 * time.Second):
		t.Fatal("the renewal never waited")
		return renewalWait{}
	}
}

// stuckWechat is a stable_token that keeps handing out its latest token in
// normal mode, whatever WeChat's API says of it: only force_refresh makes a
// new one.
type stuckWechat struct {
	mu     sync.Mutex
	latest string
	forced int
}

func (w *stuckWechat) forcedRefreshes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.forced
}

// The exchange with WeChat.

const (
	exchangeSecret = "exchange-test-secret-0123456789"
	exchangeAppID  = "wxexchange"
)

// The code cache.

// memoryCodesAt is a code store caching for ttl, at most size codes, on clock.
func memoryCodesAt(clock *testkit.Clock, ttl time.Duration, size int) memoryCodes {
	table := newCodeTable()
	table.lease(size)
	return memoryCodes{table: table, ttl: ttl, flights: new(singleflight.Group), now: clock.Now}
}

// Configuration.

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A fleet on a real Redis.

const (
	fleetAppID    = "wxfleettest"
	fleetEndpoint = "https://api.weixin.qq.com"
	fleetSecret   = "fleet-test-app-secret-0123456789"
)

func init() { testkit.Forbid(fleetSecret) }

// gateway is one gateway's view of a shared Redis: a fleet attached as
// Provision would attach it.
type gateway struct {
	*appRedis
	logs *observer.ObservedLogs
}

// newGateway attaches gateway number n of a fleet to the Redis at addr,
// and releases it when t ends. Gateways are separate processes with a
// client each; in one test process, each gets its own client through
// settings that differ in a nanosecond of timeout. The client probes a
// Redis that failed every 20ms, so that tests wait for recovery briefly.
func newGateway(t testing.TB, addr string, n int, configure func(*RedisConfig)) gateway {
	t.Helper()
	cfg := &RedisConfig{Address: []string{addr}, Timeout: caddy.Duration(defaultRedisTimeout + time.Duration(n))}
	if configure != nil {
		configure(cfg)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	f, err := newAppRedis(ctx, cfg, fleetAppID, fleetEndpoint, fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.release(); err != nil {
			t.Error(err)
		}
	})
	core, logs := observer.New(zapcore.InfoLevel)
	f.redis.logger = zap.New(core)
	f.redis.probeEvery = 20 * time.Millisecond
	return gateway{appRedis: f, logs: logs}
}

// waitDown waits until gw has found its Redis down: a frozen Redis is
// found silent by a PING of its own, redisConfirmWithin after the
// operation that got no answer.
func (gw gateway) waitDown(t testing.TB) {
	t.Helper()
	testkit.WaitFor(t, "the gateway finds Redis down", gw.redis.down.Load)
}

// newRedisGateway is gateway 0 of a fleet on a Redis of the test's own.
func newRedisGateway(t testing.TB) gateway {
	t.Helper()
	return newGateway(t, testkit.StartRedis(t).Addr(), 0, nil)
}

// newTestRedisClient is a plain client, for tests that look inside Redis.
func newTestRedisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// reportCPU runs a benchmark's operations and reports the processor time
// they cost per operation, in µs: this process's (cpu-us/op: the caller's
// side, summed over its threads, so under RunParallel it can exceed the
// time per operation) and, when srv is not nil, Redis's (redis-cpu-us/op).
// Both include what waiting costs, such as the runtime looking for work
// while a reply is on its way, which a busier process would spend on other
// requests: read them side by side with the memory variant, as an upper
// bound of what a fleet's Redis adds to a login on shared cores.
func reportCPU(b *testing.B, srv *testkit.Redis, run func()) {
	perOp := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
	self := testkit.ProcessCPUTime()
	var redisBefore time.Duration
	redisOK := false
	if srv != nil {
		redisBefore, redisOK = srv.CPUTime()
	}
	run()
	b.ReportMetric(perOp(testkit.ProcessCPUTime()-self), "cpu-us/op")
	if redisOK {
		if after, ok := srv.CPUTime(); ok {
			b.ReportMetric(perOp(after-redisBefore), "redis-cpu-us/op")
		}
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}

// addFleetUser adds the user of the documented ACL, with password, to the
// Redis rdb talks to, and returns the settings that log in as it.
func addFleetUser(t testing.TB, rdb *redis.Client, password string) func(*RedisConfig) {
	t.Helper()
	testkit.Forbid(password)
	if err := rdb.Do(context.Background(), append([]any{"ACL", "SETUSER", "gateway", ">" + password}, documentedACL(t)...)...).Err(); err != nil {
		t.Fatal(err)
	}
	return func(c *RedisConfig) { c.Username, c.Password = "gateway", password }
}

// documentedACL is the ACL line of docs/fleet.md, after its
// "ACL SETUSER gateway on >PASSWORD": what the docs tell users to give the
// gateways' Redis user, read from the docs so that the two cannot drift.
func documentedACL(t testing.TB) []any {
	t.Helper()
	doc, err := os.ReadFile("docs/fleet.md")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "ACL SETUSER gateway on >PASSWORD "
	for line := range strings.Lines(string(doc)) {
		if rules, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			acl := []any{"on"}
			for _, rule := range strings.Fields(rules) {
				acl = append(acl, rule)
			}
			return acl
		}
	}
	t.Fatalf("docs/fleet.md has no line starting %q", prefix)
	return nil
}

// The fleet's codes.

const (
	fleetCode       = "fleet-code-0a1b2c3d4e5f"
	fleetSessionKey = "fleet-session-key-tGzv3JOkF0XG5Qx2TlKWIA=="
)

func init() { testkit.Forbid(fleetCode, fleetSessionKey) }

var fleetIdentity = Identity{OpenID: "oFleetPlayer", UnionID: "uFleetPlayer", SessionKey: fleetSessionKey}

// newLocalCodes is a gateway's in-memory code store, which a Redis code
// store keeps in front, charging players.
func newLocalCodes(cacheTTL time.Duration, players budgetStore) memoryCodes {
	table := newCodeTable()
	table.lease(1000)
	return memoryCodes{table: table, ttl: cacheTTL, flights: new(singleflight.Group), now: time.Now, players: players}
}

// codesPlayerLimit is the player budget that the code stores of tests
// charge.
var codesPlayerLimit = Budget{Events: 5, Window: caddy.Duration(time.Minute)}

// fleetCodes is gw's code store, in front of a memory one of its own,
// charging players under codesPlayerLimit.
func (gw gateway) fleetCodes(cacheTTL time.Duration) *redisCodes {
	players := gw.budget("player", codesPlayerLimit, leasedBudgetTable(100), time.Now)
	return gw.codes(newLocalCodes(cacheTTL, players), players, cacheTTL, 10*time.Second, true).(*redisCodes)
}

// dumpRedis reads every key with its value, failing t for a key without
// an expiry.
func dumpRedis(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := rdb.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 {
			t.Errorf("key %q has no expiry (PTTL %v)", k, ttl)
		}
		switch typ := rdb.Type(ctx, k).Val(); typ {
		case "string":
			out[k] = rdb.Get(ctx, k).Val()
		case "hash":
			out[k] = fmt.Sprint(rdb.HGetAll(ctx, k).Val())
		default:
			t.Errorf("key %q is a %s, which no store writes", k, typ)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// withRedis gives a handler a redis block on the server at addr, each
// operation bounded by timeout.
func withRedis(addr string, timeout time.Duration) func(*Handler) {
	return func(h *Handler) { h.Redis = &RedisConfig{Address: []string{addr}, Timeout: caddy.Duration(timeout)} }
}

// storeErrorsTotal is store_errors_total summed over its operations.
func storeErrorsTotal() float64 {
	return sumCollected(storeMetrics.errors, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

// operationCount is how many Redis operations this process has made, as
// store_duration_seconds counts them.
func operationCount() uint64 {
	return uint64(sumCollected(storeMetrics.duration, func(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) }))
}

// operationsOf is how many operation Redis operations this process has
// made, as store_duration_seconds counts them.
func operationsOf(operation string) uint64 {
	var m dto.Metric
	_ = storeMetrics.duration.WithLabelValues(operation).(prometheus.Histogram).Write(&m)
	return m.GetHistogram().GetSampleCount()
}

// sumCollected is value summed over the metrics c collects.
func sumCollected(c prometheus.Collector, value func(*dto.Metric) float64) float64 {
	metrics := make(chan prometheus.Metric, 64)
	go func() {
		c.Collect(metrics)
		close(metrics)
	}()
	var total float64
	for metric := range metrics {
		var m dto.Metric
		_ = metric.Write(&m)
		total += value(&m)
	}
	return total
}

// keyPTTL is the remaining lifetime of the one key in Redis that matches
// pattern, failing t unless there is exactly one.
func keyPTTL(t testing.TB, rdb *redis.Client, pattern string) time.Duration {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, pattern).Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys matching %q: %q %v, want one", pattern, keys, err)
	}
	ttl, err := rdb.PTTL(ctx, keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ttl
}

// wantRetryFromCache redeems key at codes, as a client's retry at another
// gateway, and fails t unless the retry gets the fleet's identity from the
// cache and WeChat has seen calls calls through wechat: one more would
// spend the code again (40163).
func wantRetryFromCache(t *testing.T, codes codeStore, key codeKey, wechat *countingExchange, calls int32) {
	t.Helper()
	res, outcome, _ := codes.redeem(context.Background(), key, wechat.exchange)
	if res != proving(fleetIdentity) || outcome != redeemedFromCache {
		t.Errorf("the retry at another gateway: %+v %v, want the stored identity, from the cache", res, outcome)
	}
	if got := wechat.calls.Load(); got != calls {
		t.Errorf("%d WeChat calls, want %d: the retry spent the code again (40163)", got, calls)
	}
}

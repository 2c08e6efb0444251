package wechatlogin

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

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

func newTestHandler(t testing.TB, endpoint string, configure func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint}
	if configure != nil {
		configure(h)
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
func newClockedHandler(t testing.TB, endpoint string, clock *testkit.Clock, configure func(*Handler)) *Handler {
	t.Helper()
	return newTestHandler(t, endpoint, func(h *Handler) {
		h.AppID, h.AppSecret, h.now = testAppID, testSecret, clock.Now
		if configure != nil {
			configure(h)
		}
	})
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
	if w.Code != http.StatusTooManyRequests || body.Error != errRateLimited || forwarded {
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

// withSessions turns sessions on, signed with tokenSecret, and lets
// configure (if any) change the rest of the session block.
func withSessions(configure func(*SessionConfig)) func(*Handler) {
	return func(h *Handler) {
		h.Session = &SessionConfig{Secrets: []string{tokenSecret}}
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

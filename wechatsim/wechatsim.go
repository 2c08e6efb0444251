// Package wechatsim simulates WeChat's code2Session login endpoint
// (GET https://api.weixin.qq.com/sns/jscode2session) so that a login backend
// can be tested end to end without WeChat.
//
// The simulator follows WeChat's documented behaviour, quirks included:
// every answer is HTTP 200 with Content-Type text/plain, errors are reported
// only through errcode/errmsg (errmsg carries a ", rid: …" request id),
// successful answers carry no errcode at all, and each code redeems once.
//
// There is no real wx.login, so the js_code itself names the player: a code is
// "<player>" or "<player>.<anything>", the suffix making several codes for one
// player distinct. Three players are reserved to provoke failures:
//
//	invalid  → 40029 invalid code
//	blocked  → 40226 code blocked (high-risk user)
//	busy     → -1 system error
//
// Any other player logs in and gets OpenID(appid, player), plus
// UnionID(player) when the app is UnionBound.
package wechatsim

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	endpoint = "/sns/jscode2session"

	// quotaPerMinute is WeChat's limit on code2Session calls per user per minute.
	quotaPerMinute = 100
	quotaWindow    = time.Minute
)

// App is a mini-game registered with the simulator.
type App struct {
	AppID  string
	Secret string
	// UnionBound: the app is bound to an Open Platform account, so responses
	// carry unionid.
	UnionBound bool
}

// Options configures a Server.
type Options struct {
	// Apps are the mini-games that may call the endpoint.
	Apps []App
	// BusyRate is the probability (0..1) that a call fails with errcode -1 at
	// random (fault tests). The failure is decided before the code is
	// consumed, so the same code can be retried.
	BusyRate float64
	// Latency is added before every answer (honouring the request context:
	// when it ends the handler returns without answering).
	Latency time.Duration
	// Now is the clock; nil means time.Now. It drives the 45011 per-minute
	// window, so tests can move time instead of sleeping.
	Now func() time.Time
	// Seed for the random source used by BusyRate and session_key
	// generation; 0 = random.
	Seed int64
}

// Server is an http.Handler serving GET /sns/jscode2session. Safe for
// concurrent use.
type Server struct {
	now      func() time.Time
	busyRate atomic.Uint64 // math.Float64bits of the probability
	latency  atomic.Int64  // time.Duration
	calls    atomic.Int64

	mu       sync.Mutex
	rng      *rand.Rand
	apps     map[string]App
	used     map[codeKey]bool
	recent   map[string][]time.Time // openid → successful exchanges in the current window
	callsFor map[string]int64       // openid → successful exchanges, all time
	secrets  []string               // codes received and session_keys issued
}

// codeKey identifies a code: WeChat issues codes per app, so the same string
// under two appids is two codes.
type codeKey struct{ appid, code string }

// New returns a Server configured by opts.
func New(opts Options) *Server {
	seed := uint64(opts.Seed)
	if seed == 0 {
		seed = rand.Uint64()
	}
	s := &Server{
		now:      opts.Now,
		rng:      rand.New(rand.NewPCG(seed, 0)),
		apps:     make(map[string]App, len(opts.Apps)),
		used:     make(map[codeKey]bool),
		recent:   make(map[string][]time.Time),
		callsFor: make(map[string]int64),
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, a := range opts.Apps {
		s.apps[a.AppID] = a
	}
	s.SetBusyRate(opts.BusyRate)
	s.SetLatency(opts.Latency)
	return s
}

// NewTestServer starts an httptest.Server running New(opts) and registers
// t.Cleanup to close it. Point the client's jscode2session URL at
// ts.URL + "/sns/jscode2session".
func NewTestServer(t testing.TB, opts Options) (*Server, *httptest.Server) {
	t.Helper()
	s := New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// AddApp registers a, replacing any app with the same AppID.
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[a.AppID] = a
}

// SetBusyRate changes the probability that a call fails with errcode -1.
func (s *Server) SetBusyRate(p float64) { s.busyRate.Store(math.Float64bits(p)) }

// SetLatency changes the delay added before every answer.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// Calls reports the total /sns/jscode2session requests received, whatever
// their outcome.
func (s *Server) Calls() int64 { return s.calls.Load() }

// CallsFor reports the successful exchanges that returned openid.
func (s *Server) CallsFor(openid string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsFor[openid]
}

// ResetCalls zeroes the counters reported by Calls and CallsFor. Used codes
// and the 45011 window are unaffected.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls.Store(0)
	clear(s.callsFor)
}

// Sensitive returns everything the simulator has seen or made that a login
// gateway must never log, show or label a metric with: every app secret,
// every code received and every session_key issued. Tests scan their logs,
// responses and metrics for these.
func (s *Server) Sensitive() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.apps)+len(s.secrets))
	for _, a := range s.apps {
		out = append(out, a.Secret)
	}
	return append(out, s.secrets...)
}

// OpenID is the stable 28-character openid the simulator gives player in
// appid: the same (appid, player) always gives the same openid; different
// appids give different openids for one player (as WeChat does). It looks
// like a real openid: "o" followed by base64url characters.
func OpenID(appid, player string) string {
	return derive("openid\x00" + appid + "\x00" + player)
}

// UnionID is the stable unionid of player: the same across all apps,
// 28 characters, starting with "o".
func UnionID(player string) string {
	return derive("unionid\x00" + player)
}

func derive(s string) string {
	sum := sha256.Sum256([]byte("wechatsim\x00" + s))
	return "o" + base64.RawURLEncoding.EncodeToString(sum[:])[:27]
}

// PlayerOf returns the player part of a code: the code is "<player>" or
// "<player>.<anything>".
func PlayerOf(code string) string {
	player, _, _ := strings.Cut(code, ".")
	return player
}

// session is the success body. WeChat omits errcode on success, and unionid
// unless the app is bound to an Open Platform account.
type session struct {
	SessionKey string `json:"session_key"`
	OpenID     string `json:"openid"`
	UnionID    string `json:"unionid,omitempty"`
}

type failure struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

// ServeHTTP answers GET /sns/jscode2session as WeChat does; any other path
// is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != endpoint {
		http.NotFound(w, r)
		return
	}
	s.calls.Add(1)
	if !s.delay(r.Context()) {
		return // the caller has gone; answering (or consuming the code) is pointless
	}
	// Marshalling structs of strings and ints cannot fail.
	body, _ := json.Marshal(s.exchange(r))
	// WeChat labels its JSON text/plain and reports every error with HTTP 200.
	w.Header().Set("Content-Type", "text/plain")
	w.Write(body)
}

// delay waits for the configured latency and reports whether ctx is still
// live.
func (s *Server) delay(ctx context.Context) bool {
	d := time.Duration(s.latency.Load())
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// exchange validates the request and redeems its code, returning the body
// to send.
func (s *Server) exchange(r *http.Request) any {
	s.mu.Lock()
	defer s.mu.Unlock()

	if r.Method != http.MethodGet {
		return s.fail(43001, "require GET method")
	}
	q := r.URL.Query()
	appid, secret, code := q.Get("appid"), q.Get("secret"), q.Get("js_code")
	switch {
	case appid == "":
		return s.fail(41002, "appid missing")
	case secret == "":
		return s.fail(41004, "appsecret missing")
	case code == "":
		return s.fail(41008, "missing code")
	}
	s.secrets = append(s.secrets, code)
	app, ok := s.apps[appid]
	switch {
	case !ok:
		return s.fail(40013, "invalid appid")
	case secret != app.Secret:
		return s.fail(40125, "invalid appsecret")
	case q.Get("grant_type") != "authorization_code":
		return s.fail(40002, "invalid grant_type")
	case s.rng.Float64() < math.Float64frombits(s.busyRate.Load()):
		return s.fail(-1, "system error")
	}

	player := PlayerOf(code)
	switch player {
	case "", "invalid":
		return s.fail(40029, "invalid code")
	case "blocked":
		return s.fail(40226, "code blocked")
	case "busy":
		return s.fail(-1, "system error")
	}
	key := codeKey{appid, code}
	if s.used[key] {
		return s.fail(40163, "code been used")
	}

	openid := OpenID(appid, player)
	now := s.now()
	// Filter rather than trim a prefix: a test clock may move backwards.
	recent := s.recent[openid][:0]
	for _, t := range s.recent[openid] {
		if now.Sub(t) < quotaWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) >= quotaPerMinute {
		s.recent[openid] = recent
		return s.fail(45011, "api minute-quota reach limit  mustslower  retry next minute")
	}
	s.recent[openid] = append(recent, now)
	s.used[key] = true
	s.callsFor[openid]++

	resp := session{SessionKey: s.sessionKey(), OpenID: openid}
	s.secrets = append(s.secrets, resp.SessionKey)
	if app.UnionBound {
		resp.UnionID = UnionID(player)
	}
	return resp
}

// fail builds an error body. WeChat appends a request id to every errmsg;
// its first part is the hex Unix time. Callers hold s.mu (for s.rng).
func (s *Server) fail(code int, msg string) failure {
	rid := fmt.Sprintf("%08x-%08x-%08x", uint32(s.now().Unix()), s.rng.Uint32(), s.rng.Uint32())
	return failure{ErrCode: code, ErrMsg: msg + ", rid: " + rid}
}

// sessionKey returns base64 of 16 random bytes, as WeChat's session_key is.
// Callers hold s.mu.
func (s *Server) sessionKey() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], s.rng.Uint64())
	binary.LittleEndian.PutUint64(b[8:], s.rng.Uint64())
	return base64.StdEncoding.EncodeToString(b[:])
}

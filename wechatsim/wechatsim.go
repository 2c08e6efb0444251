// Package wechatsim simulates the parts of WeChat's server API a mini-game
// backend uses, so that a login gateway, an access-token manager and a game
// backend can be tested end to end without WeChat:
//
//	GET  /sns/jscode2session    code2Session (login)
//	POST /cgi-bin/stable_token  getStableAccessToken (normal and force_refresh)
//	GET  /cgi-bin/token         getAccessToken (classic: each call replaces the token)
//	POST /wxa/msg_sec_check     text security check, v2 (needs a valid access_token)
//	GET  /wxa/checksession      session_key check (needs a valid access_token)
//	GET  /wxa/resetusersessionkey  a new session_key for a player (the same signature)
//	POST /wxa/game/getbalance, /wxa/game/pay, /wxa/game/cancelpay, /wxa/game/present
//	                            mini-game virtual payments, with balances kept per
//	                            (app, player, env) and both signatures checked
//	                            (payments.go)
//
// The simulator follows WeChat's documented behaviour, quirks included:
// every answer is HTTP 200, errors are reported only through errcode/errmsg
// (errmsg carries a ", rid: …" request id), jscode2session labels its JSON
// text/plain and omits errcode on success, and each code redeems once. See
// tokens.go and openapi.go for the access-token rules.
//
// There is no real wx.login, so the js_code itself names the player: a code is
// "<player>" or "<player>.<anything>", the suffix making several codes for one
// player distinct. Four players are reserved to provoke failures:
//
//	invalid  → 40029 invalid code
//	blocked  → 40226 code blocked (high-risk user)
//	busy     → -1 system error
//	quota    → 45011 minute quota reached
//
// Any other player logs in and gets OpenID(appid, player), plus
// UnionID(player) when the app is UnionBound.
//
// The same server answers other mini-game platforms' logins, each under its
// own prefix and in its own words (see platforms.go): QQ, Douyin, TapTap and
// Bilibili.
//
// Tests start one with wechatsimtest.NewTestServer.
package wechatsim

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// jscode2sessionPath is WeChat's (and QQ's) login path.
const jscode2sessionPath = "/sns/jscode2session"

// App is a mini-game registered with the simulator.
type App struct {
	// Platform the app is registered with; "" is WeChat. An app answers only
	// on its own platform's endpoints.
	Platform Platform
	AppID    string
	Secret   string
	// UnionBound: the app is bound to an Open Platform account, so responses
	// carry unionid.
	UnionBound bool
	// AppKey and SandboxAppKey are the app's virtual payment keys for env 0
	// (production) and env 1 (sandbox); a payment call for an env without
	// one fails its pay_sig check.
	AppKey, SandboxAppKey string
}

// Options configures a Server.
type Options struct {
	// Apps are the mini-games that may call the API.
	Apps []App
	// BusyRate is the probability (0..1) that a call fails with errcode -1 at
	// random (fault tests). The failure is decided before the code is
	// consumed, so the same code can be retried.
	BusyRate float64
	// Latency is added before every answer (honouring the request context:
	// when it ends the handler returns without answering).
	Latency time.Duration
	// Now is the clock; nil means time.Now. It drives the 45011 per-minute
	// window and access-token lifetimes, so tests can move time instead of
	// sleeping.
	Now func() time.Time
	// Seed for the random source used by BusyRate, session_keys and access
	// tokens; 0 = random.
	Seed int64
}

// Server is an http.Handler serving the API listed in the package
// documentation. Safe for concurrent use.
type Server struct {
	now      func() time.Time
	busyRate atomic.Uint64 // math.Float64bits of the probability
	latency  atomic.Int64  // time.Duration

	mu          sync.Mutex
	rng         *rand.Rand
	apps        map[appKey]App
	callsTo     map[string]int64 // path → requests received
	used        map[codeKey]bool
	recent      map[string][]time.Time // openid → successful exchanges in the current window
	callsFor    map[string]int64       // openid → successful exchanges, all time
	sessionKeys map[string]string      // openid → the latest session_key issued
	sensitive   map[string]bool        // codes and secrets received, session_keys and tokens issued
	tokens      map[string]*issuedToken
	appTokens   map[string]*appTokens   // appid → its current tokens and force_refresh record
	received    []Request               // the latest requests to the API endpoints (openapi.go)
	accounts    map[accountKey]*account // game currency (payments.go)
}

// appKey identifies an app: an appid is unique on its platform only.
type appKey struct {
	platform Platform
	appid    string
}

func keyOf(a App) appKey { return appKey{a.Platform.orWeChat(), a.AppID} }

// codeKey identifies a code: platforms issue codes per app, so the same
// string under two apps is two codes (and Douyin's anonymous codes are apart
// from its codes).
type codeKey struct {
	app       appKey
	code      string
	anonymous bool
}

// New returns a Server configured by opts.
func New(opts Options) *Server {
	seed := uint64(opts.Seed)
	if seed == 0 {
		seed = rand.Uint64()
	}
	s := &Server{
		now:         opts.Now,
		rng:         rand.New(rand.NewPCG(seed, 0)),
		apps:        make(map[appKey]App, len(opts.Apps)),
		callsTo:     make(map[string]int64),
		used:        make(map[codeKey]bool),
		recent:      make(map[string][]time.Time),
		callsFor:    make(map[string]int64),
		sessionKeys: make(map[string]string),
		sensitive:   make(map[string]bool),
		tokens:      make(map[string]*issuedToken),
		appTokens:   make(map[string]*appTokens),
		accounts:    make(map[accountKey]*account),
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, a := range opts.Apps {
		s.apps[keyOf(a)] = a
	}
	s.SetBusyRate(opts.BusyRate)
	s.SetLatency(opts.Latency)
	return s
}

// AddApp registers a, replacing any app with the same Platform and AppID.
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[keyOf(a)] = a
}

// SetBusyRate changes the probability that a call fails with errcode -1.
func (s *Server) SetBusyRate(p float64) { s.busyRate.Store(math.Float64bits(p)) }

// SetLatency changes the delay added before every answer.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// Calls reports the total /sns/jscode2session requests received, whatever
// their outcome: CallsTo("/sns/jscode2session").
func (s *Server) Calls() int64 { return s.CallsTo(jscode2sessionPath) }

// CallsOn reports the login requests p's endpoint received, whatever their
// outcome: CallsTo(p.LoginPath()).
func (s *Server) CallsOn(p Platform) int64 { return s.CallsTo(p.LoginPath()) }

// CallsTo reports the requests received for path (one of the package's
// endpoints, such as "/cgi-bin/stable_token"), whatever their outcome.
func (s *Server) CallsTo(path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsTo[path]
}

// CallsFor reports the successful exchanges that returned openid (on
// Douyin, also anonymous_openid).
func (s *Server) CallsFor(openid string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsFor[openid]
}

// ResetCalls zeroes the counters reported by Calls, CallsTo and CallsFor.
// Used codes, tokens and the 45011 window are unaffected.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.callsTo)
	clear(s.callsFor)
}

// Sensitive returns everything the simulator has seen or made that a gateway
// must never log, show or label a metric with: every app secret, every
// secret and code received, every session_key and access token issued.
// Tests scan their logs, responses and metrics for these.
func (s *Server) Sensitive() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.apps)+len(s.sensitive))
	for _, a := range s.apps {
		out = append(out, a.Secret)
		if a.AppKey != "" {
			out = append(out, a.AppKey)
		}
		if a.SandboxAppKey != "" {
			out = append(out, a.SandboxAppKey)
		}
	}
	for v := range s.sensitive {
		out = append(out, v)
	}
	return out
}

// remember adds v to what Sensitive reports. Callers hold s.mu.
func (s *Server) remember(v string) {
	if v != "" {
		s.sensitive[v] = true
	}
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

// route is one endpoint: the body to answer a request with (computed
// holding s.mu) and the Content-Type the platform labels it with.
type route struct {
	answer      func(*Server, *http.Request, []byte) any
	contentType string
}

// wechatJSON is the Content-Type of WeChat's answers other than
// jscode2session's.
const wechatJSON = "application/json; encoding=utf-8"

// routes are the endpoints served: WeChat's at the root, every platform's
// login under its prefix.
var routes = withLogins(map[string]route{
	stableTokenPath:     {(*Server).stableToken, wechatJSON},
	classicTokenPath:    {(*Server).classicToken, wechatJSON},
	msgSecCheckPath:     {(*Server).msgSecCheck, wechatJSON},
	checkSessionPath:    {(*Server).checkSession, wechatJSON},
	apiDomainIPPath:     {(*Server).apiDomainIP, wechatJSON},
	getBalancePath:      {(*Server).getBalance, wechatJSON},
	payPath:             {(*Server).pay, wechatJSON},
	cancelPayPath:       {(*Server).cancelPay, wechatJSON},
	presentPath:         {(*Server).present, wechatJSON},
	resetSessionKeyPath: {(*Server).resetSessionKey, wechatJSON},
})

// maxRequestBody caps what the simulator reads of a request body (WeChat
// takes media uploads of up to 10 MB).
const maxRequestBody = 16 << 20

// ServeHTTP answers the package's endpoints as their platforms do; any
// other path is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, ok := routes[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.callsTo[r.URL.Path]++
	s.mu.Unlock()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
	if err != nil || !s.delay(r.Context()) {
		return // the caller has gone; answering (or consuming the code) is pointless
	}
	s.mu.Lock()
	answer := route.answer(s, r, body)
	s.mu.Unlock()
	// Marshalling structs of strings, ints and slices of them cannot fail.
	out, _ := json.Marshal(answer)
	// Every platform reports its errors with HTTP 200.
	w.Header().Set("Content-Type", route.contentType)
	w.Write(out)
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

// busy decides at random, by the busy rate, whether this call fails with
// errcode -1. Callers hold s.mu (for s.rng).
func (s *Server) busy() bool {
	return s.rng.Float64() < math.Float64frombits(s.busyRate.Load())
}

// failure is a WeChat-shaped error body.
type failure struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
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

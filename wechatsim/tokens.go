package wechatsim

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// The access-token endpoints and WeChat's documented rules for them.
const (
	stableTokenPath  = "/cgi-bin/stable_token"
	classicTokenPath = "/cgi-bin/token"

	// tokenLifetime is the expires_in of a new token.
	tokenLifetime = 7200 * time.Second
	// stableRenewWindow: in normal mode stable_token hands out the current
	// token until its last 5 minutes, then a new one; the old one stays
	// valid until it runs out, so callers switch over without a gap.
	stableRenewWindow = 5 * time.Minute
	// classicGrace: /cgi-bin/token issues a new token on every call, and the
	// previous one stays valid 5 minutes more.
	classicGrace = 5 * time.Minute
	// forcedRefreshGrace is how long the token a force_refresh replaced
	// stays valid. WeChat says only that it stops working; a few seconds
	// let calls already on their way land.
	forcedRefreshGrace = 5 * time.Second
	// A force_refresh within 30 s of the previous one does not refresh (it
	// hands back the current token), and an app has 20 a day.
	forcedRefreshSpacing  = 30 * time.Second
	forcedRefreshesPerDay = 20
)

// wechatDay is the time zone of WeChat's daily quotas (Beijing time).
var wechatDay = time.FixedZone("UTC+8", 8*60*60)

// issuedToken is an access token the simulator handed out.
type issuedToken struct {
	appid   string
	expires time.Time
	// revoked: it stops being valid before its natural end (replaced by a
	// force_refresh or a classic call, or revoked with RevokeTokens), so
	// WeChat calls it invalid (40001) rather than expired (42001).
	revoked bool
}

// appTokens is one app's current tokens and its force_refresh record.
type appTokens struct {
	stable, classic string
	lastForced      time.Time
	forcedDay       string // Beijing date of forcedOnDay
	forcedOnDay     int
	forcedTotal     int
}

// tokenAnswer is the success body of both token endpoints.
type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// stableTokenRequest is stable_token's JSON body.
type stableTokenRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

// stableToken answers POST /cgi-bin/stable_token. Callers hold s.mu.
func (s *Server) stableToken(r *http.Request, body []byte) any {
	if r.Method != http.MethodPost {
		return s.fail(43002, "require POST method")
	}
	var req stableTokenRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return s.fail(47001, "data format error")
	}
	if failed := s.checkCredentials(req.GrantType, req.AppID, req.Secret); failed != nil {
		return failed
	}
	now := s.now()
	app := s.tokensOf(req.AppID)
	current, valid := s.tokenState(app.stable, now)
	switch {
	case req.ForceRefresh && valid && now.Sub(app.lastForced) < forcedRefreshSpacing:
		// Too soon after the last: WeChat does not refresh.
	case req.ForceRefresh:
		if day := now.In(wechatDay).Format(time.DateOnly); day != app.forcedDay {
			app.forcedDay, app.forcedOnDay = day, 0
		}
		if app.forcedOnDay >= forcedRefreshesPerDay {
			return s.fail(45009, "reach max api daily quota limit")
		}
		app.forcedOnDay++
		app.forcedTotal++
		app.lastForced = now
		s.invalidate(app.stable, now.Add(forcedRefreshGrace))
		app.stable = s.issueToken(req.AppID, now)
	case !valid || current.expires.Sub(now) <= stableRenewWindow:
		app.stable = s.issueToken(req.AppID, now)
	}
	return tokenAnswer{AccessToken: app.stable, ExpiresIn: int(s.tokens[app.stable].expires.Sub(now) / time.Second)}
}

// classicToken answers GET /cgi-bin/token: a new token on every call, the
// previous one valid for a grace period only. Callers hold s.mu.
func (s *Server) classicToken(r *http.Request, _ []byte) any {
	q := r.URL.Query()
	appid := q.Get("appid")
	if failed := s.checkCredentials(q.Get("grant_type"), appid, q.Get("secret")); failed != nil {
		return failed
	}
	now := s.now()
	app := s.tokensOf(appid)
	s.invalidate(app.classic, now.Add(classicGrace))
	app.classic = s.issueToken(appid, now)
	return tokenAnswer{AccessToken: app.classic, ExpiresIn: int(tokenLifetime / time.Second)}
}

// checkCredentials checks a token request's grant_type, appid and secret,
// returning the failure to answer, or nil. It remembers the secret, right or
// wrong, as sensitive. Callers hold s.mu.
func (s *Server) checkCredentials(grantType, appid, secret string) *failure {
	s.remember(secret)
	var f failure
	app, known := s.apps[appKey{WeChat, appid}]
	switch {
	case grantType != "client_credential":
		f = s.fail(40002, "invalid grant_type")
	case appid == "":
		f = s.fail(41002, "appid missing")
	case secret == "":
		f = s.fail(41004, "appsecret missing")
	case !known:
		f = s.fail(40013, "invalid appid")
	case secret != app.Secret:
		f = s.fail(40125, "invalid appsecret")
	case s.busy():
		f = s.fail(-1, "system error")
	default:
		return nil
	}
	return &f
}

// tokensOf returns appid's token record, creating it. Callers hold s.mu.
func (s *Server) tokensOf(appid string) *appTokens {
	app := s.appTokens[appid]
	if app == nil {
		app = new(appTokens)
		s.appTokens[appid] = app
	}
	return app
}

// tokenState looks token up: what was issued, and whether it is valid now.
// Callers hold s.mu.
func (s *Server) tokenState(token string, now time.Time) (issuedToken, bool) {
	t, ok := s.tokens[token]
	if !ok {
		return issuedToken{}, false
	}
	return *t, now.Before(t.expires)
}

// issueToken makes a new token for appid, valid for tokenLifetime. It looks
// like WeChat's: a number, an underscore and 128 base64url characters.
// Callers hold s.mu.
func (s *Server) issueToken(appid string, now time.Time) string {
	var b [96]byte
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], s.rng.Uint64())
	}
	token := fmt.Sprintf("%d_%s", 80+s.rng.IntN(10), base64.RawURLEncoding.EncodeToString(b[:]))
	s.tokens[token] = &issuedToken{appid: appid, expires: now.Add(tokenLifetime)}
	s.remember(token)
	return token
}

// invalidate makes token stop working at until, if it would have lasted
// longer. Callers hold s.mu.
func (s *Server) invalidate(token string, until time.Time) {
	if t, ok := s.tokens[token]; ok && until.Before(t.expires) {
		t.expires, t.revoked = until, true
	}
}

// RevokeTokens invalidates appid's current access tokens at once, as
// WeChat does when they leak and the operator resets them: calls made with
// them get 40001, and the next stable_token call in normal mode hands out
// a new one.
func (s *Server) RevokeTokens(appid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	app := s.tokensOf(appid)
	now := s.now()
	s.invalidate(app.stable, now)
	s.invalidate(app.classic, now)
}

// ForcedRefreshes reports how many force_refresh calls of appid made a new
// token (those refused as too soon or over the day's limit are not counted).
func (s *Server) ForcedRefreshes(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokensOf(appid).forcedTotal
}

// TokenValid reports whether token is an access token of appid that WeChat
// would accept now.
func (s *Server) TokenValid(appid, token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, valid := s.tokenState(token, s.now())
	return valid && t.appid == appid
}

// checkToken checks the access_token of an API call, returning the failure
// to answer, or nil. Callers hold s.mu.
func (s *Server) checkToken(r *http.Request) *failure {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		f := s.fail(41001, "access_token missing")
		return &f
	}
	t, valid := s.tokenState(token, s.now())
	switch {
	case valid:
		return nil
	case t.appid != "" && !t.revoked:
		f := s.fail(42001, "access_token expired")
		return &f
	default:
		f := s.fail(40001, "invalid credential, access_token is invalid or not latest")
		return &f
	}
}

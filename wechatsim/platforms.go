package wechatsim

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// Platform is a mini-game platform the simulator answers logins for. Each
// serves its login endpoint under its own prefix at the platform's real path,
// so that a gateway whose endpoint is Endpoint(simulator URL) calls exactly
// the path the real platform has:
//
//	WeChat    /sns/jscode2session                           (no prefix)
//	QQ        /qq/sns/jscode2session
//	Douyin    /douyin/mgplatform/api/apps/jscode2session
//	TapTap    /taptap/auth/v1/jscode2session
//	Bilibili  /bilibili/api/sns/jscode2session
//
// Codes name players on every platform as on WeChat ("<player>" or
// "<player>.<anything>", each redeemed once). The reserved players provoke
// the platform's own documented error where it has one, and are ordinary
// players where it has none:
//
//	          invalid     busy  blocked  quota   code reused  bad appid  bad secret
//	WeChat    40029       -1    40226    45011   40163        40013      40125
//	QQ        40029       -1    -        45011   40029        40013      40125
//	Douyin    40018       -1    -        -       40018        40015      40017
//	TapTap    1040029     -1    -        -       1040029      40013      40125
//	Bilibili  40029       -1    -        -       40029        40013      40001
//
// WeChat and QQ also refuse a player's 101st exchange within a minute with
// 45011. Douyin's anonymous codes (anonymous_code, naming a device the same
// way) are described at douyinLogin.
type Platform string

// The platforms the simulator knows. The zero Platform is WeChat.
const (
	WeChat   Platform = "wechat"
	QQ       Platform = "qq"
	Douyin   Platform = "douyin"
	TapTap   Platform = "taptap"
	Bilibili Platform = "bilibili"
)

// Platforms lists every platform the simulator answers for.
func Platforms() []Platform { return []Platform{WeChat, QQ, Douyin, TapTap, Bilibili} }

func (p Platform) orWeChat() Platform {
	if p == "" {
		return WeChat
	}
	return p
}

// Known reports whether p is one of Platforms().
func (p Platform) Known() bool {
	_, ok := loginPaths[p.orWeChat()]
	return ok
}

// loginPaths are the real platforms' login paths: each WeChat-shaped
// dialect's, and Douyin's.
var loginPaths = func() map[Platform]string {
	paths := map[Platform]string{Douyin: douyinLoginPath}
	for _, d := range dialects {
		paths[d.platform] = d.loginPath
	}
	return paths
}()

// Prefix is the path under which the simulator serves p: "" for WeChat,
// "/<platform>" for the others.
func (p Platform) Prefix() string {
	if p.orWeChat() == WeChat {
		return ""
	}
	return "/" + string(p)
}

// LoginPath is the path of p's login endpoint on the simulator: Prefix()
// followed by the real platform's path.
func (p Platform) LoginPath() string { return p.Prefix() + loginPaths[p.orWeChat()] }

// Endpoint is the base URL that sends p's API calls to the simulator at
// base (such as an httptest.Server's URL): what a gateway's endpoint
// setting for p takes.
func (p Platform) Endpoint(base string) string { return strings.TrimSuffix(base, "/") + p.Prefix() }

// OpenID is the stable openid p gives player in appid. A player's openid
// differs per app and per platform, and looks like the platform's:
// WeChat's, TapTap's and Bilibili's 28 characters starting with "o", QQ's
// 32 upper-case hex digits, Douyin's "_000" and 32 base64url characters.
func (p Platform) OpenID(appid, player string) string {
	switch p = p.orWeChat(); p {
	case WeChat:
		return OpenID(appid, player)
	case QQ:
		return strings.ToUpper(hexDigest(string(p), "openid", appid, player))
	case Douyin:
		return "_000" + base64Digest(string(p), "openid", appid, player)[:32]
	default:
		return derive(string(p) + "\x00openid\x00" + appid + "\x00" + player)
	}
}

// UnionID is the stable unionid p gives player in every app bound to the
// same account: QQ's "UID_" and 32 upper-case hex digits, Douyin's a
// UUID-shaped string, the others 28 characters starting with "o".
func (p Platform) UnionID(player string) string {
	switch p = p.orWeChat(); p {
	case WeChat:
		return UnionID(player)
	case QQ:
		return "UID_" + strings.ToUpper(hexDigest(string(p), "unionid", player))
	case Douyin:
		h := hexDigest(string(p), "unionid", player)
		return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	default:
		return derive(string(p) + "\x00unionid\x00" + player)
	}
}

// AnonymousOpenID is the anonymous_openid Douyin gives device in appid for
// a player not logged in to Douyin: stable per device and app, and never
// equal to an openid.
func AnonymousOpenID(appid, device string) string {
	return "_000" + base64Digest(string(Douyin), "anonymous_openid", appid, device)[:32]
}

func digest(parts ...string) [32]byte {
	return sha256.Sum256([]byte("wechatsim\x00" + strings.Join(parts, "\x00")))
}

func hexDigest(parts ...string) string {
	sum := digest(parts...)
	return hex.EncodeToString(sum[:16])
}

func base64Digest(parts ...string) string {
	sum := digest(parts...)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// apiError is one of a platform's documented errors; a zero code means the
// platform documents no such error.
type apiError struct {
	code int
	msg  string
}

// dialect is a platform with WeChat's jscode2session (appid, secret,
// js_code, grant_type; openid, session_key, unionid; errcode and errmsg):
// where its login is, and how it words its answers. Such a platform is one
// entry in dialects.
type dialect struct {
	platform    Platform
	loginPath   string // the real platform's, Prefix() aside
	contentType string
	// quotaPerMinute is the platform's limit of exchanges per user per
	// minute; 0 = none documented.
	quotaPerMinute int

	requireGET, missingAppID, missingSecret, missingCode, badGrantType apiError
	badAppID, badSecret, systemError                                   apiError
	invalidCode, codeUsed, blocked, quota                              apiError

	fail    func(*Server, apiError) any
	success func(openid, sessionKey, unionid string) any
}

// WeChat's words, which the WeChat-shaped platforms share where their own
// documentation says nothing else.
var (
	requireGET    = apiError{43001, "require GET method"}
	missingAppID  = apiError{41002, "appid missing"}
	missingSecret = apiError{41004, "appsecret missing"}
	missingCode   = apiError{41008, "missing code"}
	badGrantType  = apiError{40002, "invalid grant_type"}
	badAppID      = apiError{40013, "invalid appid"}
	badSecret     = apiError{40125, "invalid appsecret"}
	systemError   = apiError{-1, "system error"}
	invalidCode   = apiError{40029, "invalid code"}
	minuteQuota   = apiError{45011, "api minute-quota reach limit  mustslower  retry next minute"}
)

// wechatSession is the success body of WeChat, TapTap and Bilibili: no
// errcode, and no unionid unless the app is bound to an Open Platform
// account.
type wechatSession struct {
	SessionKey string `json:"session_key"`
	OpenID     string `json:"openid"`
	UnionID    string `json:"unionid,omitempty"`
}

func newWeChatSession(openid, sessionKey, unionid string) any {
	return wechatSession{SessionKey: sessionKey, OpenID: openid, UnionID: unionid}
}

// plainFailure is an error body without WeChat's request id.
func plainFailure(_ *Server, e apiError) any { return failure{ErrCode: e.code, ErrMsg: e.msg} }

// qqAnswer is every answer of QQ's jscode2session: all fields always there,
// errcode 0 on success, empty strings for what it does not give (uin is a
// legacy field, always empty).
type qqAnswer struct {
	ErrCode    int    `json:"errcode"`
	ErrMsg     string `json:"errmsg"`
	OpenID     string `json:"openid"`
	SessionKey string `json:"session_key"`
	Uin        string `json:"uin"`
	UnionID    string `json:"unionid"`
}

var dialects = []*dialect{
	{
		// https://developers.weixin.qq.com/minigame/dev/api-backend/open-api/login/auth.code2Session.html
		platform: WeChat, loginPath: jscode2sessionPath, contentType: "text/plain", quotaPerMinute: 100,
		requireGET: requireGET, missingAppID: missingAppID, missingSecret: missingSecret,
		missingCode: missingCode, badGrantType: badGrantType, badAppID: badAppID,
		badSecret: badSecret, systemError: systemError, invalidCode: invalidCode,
		codeUsed: apiError{40163, "code been used"}, blocked: apiError{40226, "code blocked"},
		quota:   minuteQuota,
		fail:    func(s *Server, e apiError) any { return s.fail(e.code, e.msg) },
		success: newWeChatSession,
	},
	{
		// https://q.qq.com/wiki/develop/miniprogram/server/open_port/port_login.html
		// documents -1, 40029 and 45011 (100 per user per minute); a reused
		// code is refused as invalid; the rest is WeChat's.
		platform: QQ, loginPath: jscode2sessionPath, contentType: "application/json", quotaPerMinute: 100,
		requireGET: requireGET, missingAppID: missingAppID, missingSecret: missingSecret,
		missingCode: missingCode, badGrantType: badGrantType, badAppID: badAppID,
		badSecret: badSecret, systemError: systemError, invalidCode: invalidCode,
		codeUsed: invalidCode, quota: minuteQuota,
		fail: func(_ *Server, e apiError) any { return qqAnswer{ErrCode: e.code, ErrMsg: e.msg} },
		success: func(openid, sessionKey, unionid string) any {
			return qqAnswer{OpenID: openid, SessionKey: sessionKey, UnionID: unionid}
		},
	},
	{
		// https://developer.taptap.cn/minigameapidoc/dev/server/login/code2Session/
		// documents WeChat's parameters, a success without errcode, a
		// failure of errcode and errmsg, 1040029 (invalid code) as its only
		// error (its sample failure shows 40029), and no quota.
		platform: TapTap, loginPath: "/auth/v1/jscode2session", contentType: "application/json; charset=utf-8",
		requireGET: requireGET, missingAppID: missingAppID, missingSecret: missingSecret,
		missingCode: missingCode, badGrantType: badGrantType, badAppID: badAppID,
		badSecret: badSecret, systemError: systemError,
		invalidCode: apiError{1040029, "invalid code"}, codeUsed: apiError{1040029, "invalid code"},
		fail: plainFailure, success: newWeChatSession,
	},
	{
		// https://miniapp.bilibili.com/small-game-doc/api/open/getAccessToken
		// documents -1, 40001 (secret), 40002 (grant_type) and 40013 (appid)
		// in WeChat's shape. The login page (small-game-doc/open/login, where
		// bl.login's typings send a server for code2session) could not be
		// read: its path, parameters and answer are those of the SDKs and
		// servers that call it, WeChat's.
		platform: Bilibili, loginPath: "/api/sns/jscode2session", contentType: "application/json; charset=utf-8",
		requireGET: requireGET, missingAppID: missingAppID, missingSecret: missingSecret,
		missingCode: missingCode, badGrantType: badGrantType, badAppID: badAppID,
		badSecret: apiError{40001, "invalid appsecret"}, systemError: systemError,
		invalidCode: invalidCode, codeUsed: invalidCode,
		fail: plainFailure, success: newWeChatSession,
	},
}

// withLogins adds every platform's login endpoint to routes.
func withLogins(routes map[string]route) map[string]route {
	for _, d := range dialects {
		routes[d.platform.LoginPath()] = route{d.exchange, d.contentType}
	}
	routes[Douyin.LoginPath()] = route{(*Server).douyinLogin, douyinContentType}
	return routes
}

// exchange validates a WeChat-shaped jscode2session request and redeems its
// code, returning the body to send. Callers hold s.mu.
func (d *dialect) exchange(s *Server, r *http.Request, _ []byte) any {
	if r.Method != http.MethodGet {
		return d.fail(s, d.requireGET)
	}
	q := r.URL.Query()
	appid, secret, code := q.Get("appid"), q.Get("secret"), q.Get("js_code")
	switch {
	case appid == "":
		return d.fail(s, d.missingAppID)
	case secret == "":
		return d.fail(s, d.missingSecret)
	case code == "":
		return d.fail(s, d.missingCode)
	}
	s.remember(code)
	s.remember(secret)
	app, ok := s.apps[appKey{d.platform, appid}]
	switch {
	case !ok:
		return d.fail(s, d.badAppID)
	case secret != app.Secret:
		return d.fail(s, d.badSecret)
	case q.Get("grant_type") != "authorization_code":
		return d.fail(s, d.badGrantType)
	case s.busy():
		return d.fail(s, d.systemError)
	}

	player := PlayerOf(code)
	if refusal := d.reserved(player); refusal.code != 0 {
		return d.fail(s, refusal)
	}
	key := codeKey{app: keyOf(app), code: code}
	if s.used[key] {
		return d.fail(s, d.codeUsed)
	}
	openid := d.platform.OpenID(appid, player)
	if !s.takeQuota(openid, d.quotaPerMinute) {
		return d.fail(s, d.quota)
	}
	s.used[key] = true
	unionid := ""
	if app.UnionBound {
		unionid = d.platform.UnionID(player)
	}
	return d.success(openid, s.issueSessionKey(openid), unionid)
}

// reserved is the refusal a reserved player provokes on d's platform, or
// the zero apiError for a player who logs in.
func (d *dialect) reserved(player string) apiError {
	switch player {
	case "", "invalid":
		return d.invalidCode
	case "busy":
		return d.systemError
	case "blocked":
		return d.blocked
	case "quota":
		return d.quota
	}
	return apiError{}
}

// quotaWindow is the window of the platforms' per-user quotas.
const quotaWindow = time.Minute

// takeQuota counts an exchange for openid against a limit of perMinute (0 =
// none) and reports whether it is within the limit; one over it is not
// counted. Callers hold s.mu.
func (s *Server) takeQuota(openid string, perMinute int) bool {
	if perMinute == 0 {
		return true
	}
	now := s.now()
	// Filter rather than trim a prefix: a test clock may move backwards.
	recent := s.recent[openid][:0]
	for _, t := range s.recent[openid] {
		if now.Sub(t) < quotaWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) >= perMinute {
		s.recent[openid] = recent
		return false
	}
	s.recent[openid] = append(recent, now)
	return true
}

// issueSessionKey makes openid's new session_key, counting the successful
// exchange. Callers hold s.mu.
func (s *Server) issueSessionKey(openid string) string {
	key := s.sessionKey()
	s.remember(key)
	s.sessionKeys[openid] = key
	s.callsFor[openid]++
	return key
}

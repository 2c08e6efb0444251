package wechatsim

import "net/http"

// Douyin's mini-game code2Session, as
// https://developer.open-douyin.com/docs/resource/zh-CN/mini-game/develop/server/log-in/code-2-session
// documents it: GET with appid, secret, and code and/or anonymous_code;
// errors as a non-zero "error" with errcode, errmsg and message (the same
// text as errmsg).
const (
	douyinLoginPath   = "/mgplatform/api/apps/jscode2session"
	douyinContentType = "application/json; charset=utf-8"
)

var (
	douyinMissingParam     = apiError{40014, "missing param"}
	douyinBadAppID         = apiError{40015, "bad appid"}
	douyinBadSecret        = apiError{40017, "bad secret"}
	douyinBadCode          = apiError{40018, "bad code"}
	douyinBadAnonymousCode = apiError{40019, "bad anonymous_code"}
	douyinSystemError      = apiError{-1, "system error"}
)

// douyinErrorNumber is the "error" of a failure: the doc says only that it
// is not 0.
const douyinErrorNumber = 1

// douyinAnswer is Douyin's success body: every field present, empty where
// the request gave no code (openid, session_key, unionid) or no
// anonymous_code (anonymous_openid), and unionid empty unless the app is
// bound to a Douyin Open Platform account.
type douyinAnswer struct {
	Error           int    `json:"error"`
	SessionKey      string `json:"session_key"`
	OpenID          string `json:"openid"`
	AnonymousOpenID string `json:"anonymous_openid"`
	UnionID         string `json:"unionid"`
}

type douyinFailure struct {
	Error   int    `json:"error"`
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
	Message string `json:"message"`
}

func douyinFail(e apiError) douyinFailure {
	return douyinFailure{Error: douyinErrorNumber, ErrCode: e.code, ErrMsg: e.msg, Message: e.msg}
}

// douyinLogin answers Douyin's jscode2session. A code names a player, an
// anonymous_code a device ("<device>" or "<device>.<anything>"), both
// redeemed once. With a code the answer has the player's openid,
// session_key and (bound apps) unionid; with an anonymous_code the device's
// AnonymousOpenID; with both, both (Douyin's data migration). Reserved
// players and devices: "invalid" (40018 for a code, 40019 for an
// anonymous_code) and "busy" (-1); a reused code is refused as bad like an
// invalid one. Both codes are checked before either is spent, so a refusal
// spends neither. Callers hold s.mu.
func (s *Server) douyinLogin(r *http.Request, _ []byte) any {
	q := r.URL.Query()
	appid, secret := q.Get("appid"), q.Get("secret")
	code, anonymousCode := q.Get("code"), q.Get("anonymous_code")
	if appid == "" || secret == "" || code == "" && anonymousCode == "" {
		return douyinFail(douyinMissingParam)
	}
	s.remember(secret)
	s.remember(code)
	s.remember(anonymousCode)
	app, ok := s.apps[appKey{Douyin, appid}]
	switch {
	case !ok:
		return douyinFail(douyinBadAppID)
	case secret != app.Secret:
		return douyinFail(douyinBadSecret)
	case s.busy():
		return douyinFail(douyinSystemError)
	}

	player, playerKey, refusal := s.douyinCode(app, code, false)
	if refusal.code != 0 {
		return douyinFail(refusal)
	}
	device, deviceKey, refusal := s.douyinCode(app, anonymousCode, true)
	if refusal.code != 0 {
		return douyinFail(refusal)
	}
	var answer douyinAnswer
	if code != "" {
		s.used[playerKey] = true
		answer.OpenID = Douyin.OpenID(appid, player)
		answer.SessionKey = s.issueSessionKey(answer.OpenID)
		if app.UnionBound {
			answer.UnionID = Douyin.UnionID(player)
		}
	}
	if anonymousCode != "" {
		s.used[deviceKey] = true
		answer.AnonymousOpenID = AnonymousOpenID(appid, device)
		s.callsFor[answer.AnonymousOpenID]++
	}
	return answer
}

// douyinCode checks one of a request's codes (a code, or an anonymous_code
// if anonymous; "" = not given): it returns the player or device the code
// names and its key, or the refusal. Callers hold s.mu.
func (s *Server) douyinCode(app App, code string, anonymous bool) (string, codeKey, apiError) {
	bad := douyinBadCode
	if anonymous {
		bad = douyinBadAnonymousCode
	}
	key := codeKey{app: keyOf(app), code: code, anonymous: anonymous}
	owner := PlayerOf(code)
	switch {
	case code == "":
		return "", key, apiError{}
	case owner == "" || owner == "invalid" || s.used[key]:
		return "", key, bad
	case owner == "busy":
		return "", key, douyinSystemError
	}
	return owner, key, apiError{}
}

package wechatlogin

import (
	"cmp"
	"encoding/json"
)

// douyinPlatform: Douyin mini-games' jscode2session takes a code, an
// anonymous player's anonymous_code, or both, and answers a non-zero
// "error" with errcode and errmsg when it fails. Douyin documents no
// per-player quota, so the default budget applies.
var douyinPlatform = registerPlatform(&platform{
	name:               "douyin",
	title:              "Douyin",
	clientLogin:        "tt.login",
	endpoint:           "https://minigame.zijieapi.com",
	path:               "/mgplatform/api/apps/jscode2session",
	loginPath:          "/tt/login",
	codeParam:          "code",
	anonymousCodeParam: "anonymous_code",
	answer: douyinAnswer{errcodes: errcodeTable{
		-1:    kindBusy,        // system error
		40018: kindInvalidCode, // bad code (a reused one too)
		40019: kindInvalidCode, // bad anonymous_code (a reused one too)
		// 40014 (a parameter missing), 40015 (appid), 40017 (secret) and
		// the rest blame the configuration.
	}},
	headers: douyinHeaders,
})

// douyinHeaders are Douyin Cloud's identity headers, so that a backend
// written for it runs unchanged behind the gateway.
var douyinHeaders = &headerFamily{
	prefix: "x-tt-",
	openID: "X-Tt-Openid", unionID: "X-Tt-Unionid", appID: "X-Tt-Appid", sessionKey: "X-Tt-Session-Key",
	anonymousOpenID: "X-Tt-Anonymous-Openid", source: "X-Tt-Source", sourceValue: "tt_client",
	code: "X-Tt-Code", anonymousCode: "X-Tt-Anonymous-Code", session: "X-Tt-Session",
}

// douyinAnswer reads Douyin's answer: error 0 with openid and session_key
// (and unionid) for a code, anonymous_openid for an anonymous_code (an
// anonymous player has no session_key), or a non-zero error with errcode
// and errmsg.
type douyinAnswer struct {
	errcodes errcodeTable
}

func (d douyinAnswer) read(body []byte) (Identity, *platformError) {
	var a struct {
		Error           int    `json:"error"`
		ErrCode         int    `json:"errcode"`
		ErrMsg          string `json:"errmsg"`
		OpenID          string `json:"openid"`
		AnonymousOpenID string `json:"anonymous_openid"`
		UnionID         string `json:"unionid"`
		SessionKey      string `json:"session_key"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Identity{}, badResponse("the answer is not the expected JSON")
	}
	if a.Error != 0 || a.ErrCode != 0 {
		return Identity{}, d.errcodes.failure(cmp.Or(a.ErrCode, a.Error), ridOf(a.ErrMsg))
	}
	if (a.OpenID == "" && a.AnonymousOpenID == "") || (a.OpenID != "" && a.SessionKey == "") {
		return Identity{}, badResponse("the answer lacks openid and session_key, and anonymous_openid")
	}
	return checkedIdentity(Identity{OpenID: a.OpenID, AnonymousOpenID: a.AnonymousOpenID, UnionID: a.UnionID, SessionKey: a.SessionKey})
}

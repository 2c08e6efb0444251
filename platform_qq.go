package wechatlogin

import "net/url"

// qqPlatform: QQ mini-games' code2Session copies WeChat's: its parameters,
// its answer (every field present, empty when it has no value, errcode 0 on
// success) and the errcodes it documents: -1 busy, 40029 invalid code (a
// reused one too), 45011 past 100 calls per player per minute.
var qqPlatform = registerPlatform(&platform{
	name:         "qq",
	title:        "QQ",
	clientLogin:  "qq.login",
	endpoint:     "https://api.q.qq.com",
	path:         "/sns/jscode2session",
	loginPath:    "/qq/login",
	query:        url.Values{"grant_type": {"authorization_code"}},
	codeParam:    "js_code",
	quota:        100,
	quotaErrcode: errcodeRateLimited,
	answer: wechatShaped{errcodes: errcodeTable{
		errcodeBusy:        kindBusy,
		errcodeInvalidCode: kindInvalidCode,
		errcodeRateLimited: kindQuota,
	}},
	headers: qqHeaders,
})

// qqHeaders copy WeChat's under QQ's prefix: QQ has no cloud that sets
// identity headers.
var qqHeaders = &headerFamily{
	prefix: "x-qq-",
	openID: "X-Qq-Openid", unionID: "X-Qq-Unionid", appID: "X-Qq-Appid", sessionKey: "X-Qq-Session-Key",
	source: "X-Qq-Source", sourceValue: "qq_client",
	code: "X-Qq-Code", session: "X-Qq-Session",
}

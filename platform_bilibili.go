package wechatlogin

import "net/url"

// bilibiliPlatform: Bilibili mini-games' code2Session, WeChat's shape at
// their own host, as the SDKs that call it use it (Bilibili's reference
// page could not be read: docs/platforms.md).
var bilibiliPlatform = registerPlatform(&platform{
	name:        "bilibili",
	title:       "Bilibili",
	clientLogin: "bl.login",
	endpoint:    "https://miniapp.bilibili.com",
	path:        "/api/sns/jscode2session",
	loginPath:   "/bili/login",
	query:       url.Values{"grant_type": {"authorization_code"}},
	codeParam:   "js_code",
	answer: wechatShaped{errcodes: errcodeTable{
		errcodeBusy:        kindBusy,
		errcodeInvalidCode: kindInvalidCode,
	}},
	headers: bilibiliHeaders,
})

// bilibiliHeaders copy WeChat's under Bilibili's prefix: Bilibili has no
// cloud that sets identity headers.
var bilibiliHeaders = &headerFamily{
	prefix: "x-bili-",
	openID: "X-Bili-Openid", unionID: "X-Bili-Unionid", appID: "X-Bili-Appid", sessionKey: "X-Bili-Session-Key",
	source: "X-Bili-Source", sourceValue: "bili_client",
	code: "X-Bili-Code", session: "X-Bili-Session",
}

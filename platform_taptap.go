package wechatlogin

import "net/url"

// taptapPlatform: TapTap mini-games' code2Session copies WeChat's
// parameters and answer at their own host; its error table says 1040029
// for an invalid code, its sample 40029, so both are.
var taptapPlatform = registerPlatform(&platform{
	name:        "taptap",
	title:       "TapTap",
	clientLogin: "tap.login",
	endpoint:    "https://cloud-miniapp.tapapis.cn",
	path:        "/auth/v1/jscode2session",
	loginPath:   "/tap/login",
	query:       url.Values{"grant_type": {"authorization_code"}},
	codeParam:   "js_code",
	answer: wechatShaped{errcodes: errcodeTable{
		errcodeBusy:        kindBusy,
		errcodeInvalidCode: kindInvalidCode,
		1040029:            kindInvalidCode,
	}},
	headers: taptapHeaders,
})

// taptapHeaders copy WeChat's under TapTap's prefix: TapTap has no cloud
// that sets identity headers.
var taptapHeaders = &headerFamily{
	prefix: "x-tap-",
	openID: "X-Tap-Openid", unionID: "X-Tap-Unionid", appID: "X-Tap-Appid", sessionKey: "X-Tap-Session-Key",
	source: "X-Tap-Source", sourceValue: "tap_client",
	code: "X-Tap-Code", session: "X-Tap-Session",
}

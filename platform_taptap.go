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

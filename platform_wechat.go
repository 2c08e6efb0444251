package wechatlogin

import "net/url"

// WeChat's errcodes the gateway treats specially.
const (
	errcodeBusy        = -1
	errcodeInvalidCode = 40029
	errcodeCodeUsed    = 40163
	errcodeBlocked     = 40226
	errcodeRateLimited = 45011
)

// wechatErrcodes are WeChat's errcodes by kind; the rest (40013 appid,
// 40125 secret, 41002, 40164 IP allow-list…) blame the configuration.
var wechatErrcodes = errcodeTable{
	errcodeBusy:        kindBusy,
	errcodeInvalidCode: kindInvalidCode,
	errcodeCodeUsed:    kindCodeUsed,
	errcodeBlocked:     kindBlocked,
	errcodeRateLimited: kindQuota,
}

// wechatPlatform: code2Session (jscode2session), 100 calls per player per
// minute (45011 past it).
var wechatPlatform = registerPlatform(&platform{
	name:         "wechat",
	title:        "WeChat",
	clientLogin:  "wx.login",
	endpoint:     "https://api.weixin.qq.com",
	path:         "/sns/jscode2session",
	loginPath:    "/wx/login",
	query:        url.Values{"grant_type": {"authorization_code"}},
	codeParam:    "js_code",
	quota:        100,
	quotaErrcode: errcodeRateLimited,
	answer:       wechatShaped{errcodes: wechatErrcodes},
	headers:      wechatHeaders,
	// wechat_api decrypts, verifies and signs with them.
	keepsSessionKeys: true,
})

// wechatHeaders are WeChat Cloud Hosting's identity headers, so that a
// backend written for it runs unchanged behind the gateway.
var wechatHeaders = &headerFamily{
	prefix: "x-wx-",
	openID: "X-Wx-Openid", unionID: "X-Wx-Unionid", appID: "X-Wx-Appid", sessionKey: "X-Wx-Session-Key",
	source: "X-Wx-Source", sourceValue: "wx_client",
	code: "X-Wx-Code", session: "X-Wx-Session",
}

package testkit

import (
	"fmt"
	"strings"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// PlatformFront is what a client and a backend see of a platform at the
// gateway by default, as the users' documentation states it.
type PlatformFront struct {
	LoginPath string // the default login_path: "/tt/login"
	Family    string // the identity headers' prefix, lower case: "x-tt-"
	Source    string // the family's SOURCE header's value: "tt_client"
}

// Header is the family's header named suffix: Header("openid") is
// "x-tt-openid" on Douyin.
func (f PlatformFront) Header(suffix string) string { return f.Family + suffix }

// PlatformFronts are every platform's front but WeChat's (a top-level app).
var PlatformFronts = map[wechatsim.Platform]PlatformFront{
	wechatsim.Douyin:   {"/tt/login", "x-tt-", "tt_client"},
	wechatsim.QQ:       {"/qq/login", "x-qq-", "qq_client"},
	wechatsim.TapTap:   {"/tap/login", "x-tap-", "tap_client"},
	wechatsim.Bilibili: {"/bili/login", "x-bili-", "bili_client"},
}

// AppBlock is a wechat_login app block for app, whose endpoint is the
// simulator at simURL, with more subdirectives (one per line).
func AppBlock(app wechatsim.App, simURL string, more ...string) string {
	lines := append([]string{"app_secret " + app.Secret, "endpoint " + app.Platform.Endpoint(simURL)}, more...)
	return fmt.Sprintf("app %s %s {\n\t\t%s\n\t}", app.Platform, app.AppID, strings.Join(lines, "\n\t\t"))
}

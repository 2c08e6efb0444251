package wechatlogin

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// platform is one mini-game platform's login, as data: where its exchange
// is, how a code is put to it, how its answer reads, and its limits. Its
// files (platform_*.go) hold nothing else; the HTTP call, the retries, the
// refusal table and the state are written once, for every platform.
type platform struct {
	name        string // in configs, metrics and logs: "wechat", "qq", "douyin"
	title       string // in messages to players: "WeChat"
	clientLogin string // the client call that gives a code, for messages: "wx.login"
	endpoint    string // the exchange's default base URL
	path        string // the exchange's path at the endpoint
	loginPath   string // the default login_path
	// query holds the exchange's fixed parameters besides appid and secret.
	query url.Values
	// codeParam names the code in the exchange's query; anonymousCodeParam
	// an anonymous player's code, "" where the platform has none.
	codeParam, anonymousCodeParam string
	// quota is how many exchanges per player per minute the platform allows
	// (a player budget above it is refused at load), and quotaErrcode what
	// it answers past it; 0 when it documents none.
	quota, quotaErrcode int
	// answer reads what the exchange answered.
	answer answerReader
	// headers are the identity headers the upstream gets.
	headers *headerFamily
	// namePlaceholder is name as {http.wechat.platform}'s value, boxed
	// once: boxed per request, it would be an allocation.
	namePlaceholder any
	// keepsSessionKeys: the gateway keeps the session_keys its logins
	// prove, per app, for the app's wechat_api (custody); only WeChat's
	// have a reader.
	keepsSessionKeys bool
}

// answerReader reads a platform's answer to an exchange: the identity it
// proves, or why it proves none.
type answerReader interface {
	read(body []byte) (Identity, *platformError)
}

// platforms are the platforms a login app can name, by their name.
var platforms = map[string]*platform{}

// registerPlatform adds p to platforms. Its header family must be one of
// headerFamilies, those stripped from every request: a family left out
// would reach a backend as the client sent it.
func registerPlatform(p *platform) *platform {
	if !slices.Contains(headerFamilies, p.headers) {
		panic("platform " + p.name + ": its header family is not in headerFamilies")
	}
	p.namePlaceholder = p.name
	platforms[p.name] = p
	return p
}

// platformNames lists the platforms' names, for messages.
func platformNames() string {
	names := slices.Sorted(maps.Keys(platforms))
	return "one of " + strings.Join(names, ", ")
}

// exchangeURL is the exchange's URL for one app, every parameter but the
// player's credentials, which appendCredentials adds: built once, as it
// holds the secret.
func (p *platform) exchangeURL(endpoint, appID, secret string) string {
	query := url.Values{"appid": {appID}, "secret": {secret}}
	for k, v := range p.query {
		query[k] = v
	}
	return strings.TrimSuffix(endpoint, "/") + p.path + "?" + query.Encode()
}

// credentials is what a client sends to log in: a code, and on Douyin an
// anonymous player's code instead of it, or beside it.
type credentials struct {
	code, anonymousCode string
}

// appendCredentials completes an exchangeURL with c.
func (p *platform) appendCredentials(prefix string, c credentials) string {
	u := prefix
	if c.code != "" {
		u += "&" + p.codeParam + "=" + url.QueryEscape(c.code)
	}
	if c.anonymousCode != "" {
		u += "&" + p.anonymousCodeParam + "=" + url.QueryEscape(c.anonymousCode)
	}
	return u
}

// failureKind is how an exchange (or any call to a platform) failed, in
// terms every platform shares: the refusal table is written from these,
// and the fleet stores them.
type failureKind uint8

const (
	kindInvalidCode   failureKind = iota + 1 // the code is wrong or expired
	kindCodeUsed                             // the code was redeemed already
	kindBlocked                              // the platform refuses this player
	kindQuota                                // the player is over the platform's own quota
	kindBusy                                 // the platform says to try again
	kindMisconfigured                        // the platform refuses the app's configuration, or said something unlisted
	kindBadResponse                          // the answer is not the platform's
	kindUnavailable                          // 5xx or no connection
	kindTimeout                              // no answer in time
)

// kindNames name the kinds where they are stored (Redis), so that a
// stored failure does not depend on the order of the constants.
var kindNames = map[failureKind]string{
	kindInvalidCode:   "invalid_code",
	kindCodeUsed:      "code_used",
	kindBlocked:       "blocked",
	kindQuota:         "quota",
	kindBusy:          "busy",
	kindMisconfigured: "misconfigured",
	kindBadResponse:   "bad_response",
	kindUnavailable:   "unavailable",
	kindTimeout:       "timeout",
}

func kindNamed(name string) (failureKind, bool) {
	for kind, n := range kindNames {
		if n == name {
			return kind, true
		}
	}
	return 0, false
}

// platformError is how a call to a platform failed: the kind, and the
// platform's own errcode when it gave one. Its text never carries the
// request URL, nor the platform's free-text message.
type platformError struct {
	kind       failureKind
	errcode    int
	hasErrcode bool   // errcode 0 is never a failure, but -1 is, so a flag rather than a sentinel
	rid        string // the platform's request id, for support tickets
	detail     string
}

func (e *platformError) Error() string {
	switch {
	case e.hasErrcode && e.rid != "":
		return fmt.Sprintf("errcode %d (rid %s)", e.errcode, e.rid)
	case e.hasErrcode:
		return fmt.Sprintf("errcode %d", e.errcode)
	case e.kind == kindTimeout:
		return "no answer in time"
	}
	return e.detail
}

// retryable reports whether the call may succeed if made again: the
// platform said it is busy, or did not answer.
func (e *platformError) retryable() bool {
	return e.kind == kindBusy || e.kind == kindUnavailable || e.kind == kindTimeout
}

// refusedTheCode reports whether the platform judged the code itself
// (invalid, already used, or a refused player's), naming no player.
func (e *platformError) refusedTheCode() bool {
	return e.kind == kindInvalidCode || e.kind == kindCodeUsed || e.kind == kindBlocked
}

func badResponse(detail string) *platformError {
	return &platformError{kind: kindBadResponse, detail: detail}
}

// errcodeTable maps a platform's errcodes to kinds; an errcode it does not
// list is kindMisconfigured: the operator must look.
type errcodeTable map[int]failureKind

func (t errcodeTable) failure(errcode int, rid string) *platformError {
	kind, ok := t[errcode]
	if !ok {
		kind = kindMisconfigured
	}
	return &platformError{kind: kind, errcode: errcode, hasErrcode: true, rid: rid}
}

// wechatShaped reads jscode2session's answer as WeChat writes it, and as
// the platforms that copied it do: errcode (absent means 0) and errmsg, or
// openid, session_key and unionid.
type wechatShaped struct {
	errcodes errcodeTable
}

func (w wechatShaped) read(body []byte) (Identity, *platformError) {
	var a struct {
		OpenID     string `json:"openid"`
		UnionID    string `json:"unionid"`
		SessionKey string `json:"session_key"`
		ErrCode    int    `json:"errcode"`
		ErrMsg     string `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Identity{}, badResponse("the answer is not the expected JSON")
	}
	if a.ErrCode != 0 {
		return Identity{}, w.errcodes.failure(a.ErrCode, ridOf(a.ErrMsg))
	}
	if a.OpenID == "" || a.SessionKey == "" {
		return Identity{}, badResponse("the answer lacks openid or session_key")
	}
	return checkedIdentity(Identity{OpenID: a.OpenID, UnionID: a.UnionID, SessionKey: a.SessionKey})
}

// checkedIdentity is id if it is well formed, a bad response otherwise.
func checkedIdentity(id Identity) (Identity, *platformError) {
	if !id.wellFormed() {
		return Identity{}, badResponse("the answer has an openid, unionid or session_key that is not short printable ASCII")
	}
	return id, nil
}

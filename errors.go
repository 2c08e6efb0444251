package wechatlogin

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The refusals' error codes (the JSON body's "error"), as README.md and
// docs/wechat-api.md list them. They are part of the contract: game clients
// and backends switch on them. The platform's own failures read "wechat_…"
// whatever the platform, so that a client ported to another platform
// switches on the same codes.
const (
	refusalInvalidRequest = "invalid_request"
	refusalInvalidCode    = "invalid_code"
	refusalCodeUsed       = "code_used"
	refusalInvalidSession = "invalid_session"
	refusalUserBlocked    = "user_blocked"
	refusalRateLimited    = "rate_limited"
	refusalMisconfigured  = "wechat_misconfigured"
	refusalBadResponse    = "wechat_bad_response"
	refusalUnavailable    = "wechat_unavailable"
	refusalTimeout        = "wechat_timeout"

	// wechat_api's own.

	// refusalTokenUnavailable: WeChat gives no access token.
	refusalTokenUnavailable = "wechat_token_unavailable"
	// refusalBrowserRequestRefused: the request came from a web browser.
	refusalBrowserRequestRefused = "browser_request_refused"
	// refusalHostNotAllowed: the request's Host is not one a backend uses.
	refusalHostNotAllowed = "host_not_allowed"
	// refusalSessionKeyUnknown: the gateway keeps no session_key for the
	// player its endpoint was asked about.
	refusalSessionKeyUnknown = "session_key_unknown"
	// refusalDecryptFailed: encryptedData did not open with the player's
	// key, or not as data for this app.
	refusalDecryptFailed = "decrypt_failed"
)

// jsonRefusal is a refusal the client sees as a JSON body. Its message is
// written for humans and must never carry a code, a secret or a session_key.
type jsonRefusal struct {
	status     int
	code       string
	message    string
	errcode    int  // WeChat's errcode, when hasErrcode
	hasErrcode bool // errcode 0 is never a refusal, but -1 is, so a flag rather than a sentinel
	retryAfter time.Duration
}

func newRefusal(status int, code, message string) *jsonRefusal {
	return &jsonRefusal{status: status, code: code, message: message}
}

func badRequest(message string) *jsonRefusal {
	return newRefusal(http.StatusBadRequest, refusalInvalidRequest, message)
}

func rateLimited(message string, wait time.Duration) *jsonRefusal {
	e := newRefusal(http.StatusTooManyRequests, refusalRateLimited, message)
	e.retryAfter = wait
	return e
}

// errorBody is the documented JSON shape of every refusal.
type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Errcode *int   `json:"errcode,omitempty"`
}

// write sends the refusal. Nothing has been forwarded upstream when this runs.
func (e *jsonRefusal) write(w http.ResponseWriter) {
	body := errorBody{Error: e.code, Message: e.message}
	if e.hasErrcode {
		body.Errcode = &e.errcode
	}
	h := w.Header()
	if e.code == refusalInvalidSession {
		// RFC 6750: a 401 names the scheme that would have been accepted.
		h.Set("WWW-Authenticate", "Bearer")
	}
	if e.retryAfter > 0 {
		h.Set("Retry-After", retryAfterSeconds(e.retryAfter))
	}
	_ = writeJSON(w, e.status, "application/json", body)
}

// writeJSON answers with status and body, marshalled, as the content type
// given. The body ends at its closing brace, as WeChat's answers do:
// json.Encoder's trailing newline breaks SDKs that escape control characters
// before they parse. Nothing the gateway answers is cached.
func writeJSON(w http.ResponseWriter, status int, contentType string, body any) error {
	out, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return writeJSONBytes(w, status, contentType, out)
}

// writeJSONBytes is writeJSON for a body already encoded.
func writeJSONBytes(w http.ResponseWriter, status int, contentType string, out []byte) error {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(out)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(out)
	return err
}

// refuse answers with the documented JSON error, once count (the
// handler's metric) has recorded it; nothing is forwarded. A client that
// went away is neither answered nor counted: it is recorded as 499, as
// reverse_proxy records it, so that the access log shows the disconnect.
func refuse(w http.ResponseWriter, r *http.Request, refusal *jsonRefusal, count func(code string)) error {
	if r.Context().Err() != nil {
		w.WriteHeader(statusClientClosedRequest)
		return nil
	}
	count(refusal.code)
	refusal.write(w)
	return nil
}

// refusalColumn names who refuses a failed platform call: a column of
// failureRefusals.
type refusalColumn int

const (
	// loginColumn: wechat_login, when a login's exchange failed.
	loginColumn refusalColumn = iota
	// apiColumn: wechat_api, when WeChat gave no access token or an API
	// call got no answer.
	apiColumn
)

// refusalRow is one refusal of failureRefusals. Its message names the
// platform as {platform} and the client's login call as {login}.
type refusalRow struct {
	status  int
	code    string
	message string
	wait    retryWait
}

// retryWait says which Retry-After a refusal carries.
type retryWait int

const (
	noRetryAfter retryWait = iota
	// retryAfterBusy: the platform is busy or away; the caller says how
	// long to wait (failureRefuser.busyRetryAfter).
	retryAfterBusy
	// retryAfterNextMinute: the player is over the platform's minute
	// quota (WeChat's 45011), spent until the next minute.
	retryAfterNextMinute
)

// noAccessToken is wechat_api's refusal when WeChat refuses to give the
// app a token: the operator must look.
var noAccessToken = refusalRow{http.StatusBadGateway, refusalTokenUnavailable, "{platform} gives no access token; the operator has been told", noRetryAfter}

// failureRefusals is the refusal table of a failed platform call, by kind
// and by who refuses it (refusalColumn). wechat_api calls WeChat for a
// token and for the backend's calls, whose answers it passes on whatever
// they say, so for it every failure that is not WeChat being away or slow
// means no token.
var failureRefusals = map[failureKind][2]refusalRow{
	kindInvalidCode: {
		loginColumn: {http.StatusUnauthorized, refusalInvalidCode, "the login code is invalid or expired; call {login} again", noRetryAfter},
		apiColumn:   noAccessToken,
	},
	kindCodeUsed: {
		loginColumn: {http.StatusUnauthorized, refusalCodeUsed, "the login code was already used; call {login} again", noRetryAfter},
		apiColumn:   noAccessToken,
	},
	kindBlocked: {
		loginColumn: {http.StatusForbidden, refusalUserBlocked, "{platform} refused this player as high risk", noRetryAfter},
		apiColumn:   noAccessToken,
	},
	kindQuota: {
		loginColumn: {http.StatusTooManyRequests, refusalRateLimited, "{platform}'s per-player login limit was reached; retry next minute", retryAfterNextMinute},
		apiColumn:   noAccessToken,
	},
	kindBusy: {
		loginColumn: {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is busy; call {login} again and retry", retryAfterBusy},
		apiColumn:   {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is unavailable; retry later", retryAfterBusy},
	},
	kindMisconfigured: {
		loginColumn: {http.StatusBadGateway, refusalMisconfigured, "the login service is misconfigured; the operator has been told", noRetryAfter},
		apiColumn:   noAccessToken,
	},
	kindBadResponse: {
		loginColumn: {http.StatusBadGateway, refusalBadResponse, "{platform} answered with something other than a login result", noRetryAfter},
		apiColumn:   {http.StatusBadGateway, refusalTokenUnavailable, "{platform}'s answer holds no access token the gateway can use", noRetryAfter},
	},
	kindUnavailable: {
		loginColumn: {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is unavailable; call {login} again and retry", retryAfterBusy},
		apiColumn:   {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is unavailable; retry later", retryAfterBusy},
	},
	kindTimeout: {
		loginColumn: {http.StatusGatewayTimeout, refusalTimeout, "{platform} did not answer in time; call {login} again and retry", noRetryAfter},
		apiColumn:   {http.StatusGatewayTimeout, refusalTimeout, "{platform} did not answer in time", noRetryAfter},
	},
}

// failureRefuser refuses the failed calls of one caller to one platform.
type failureRefuser struct {
	column   refusalColumn
	platform *platform
	// busyRetryAfter is the Retry-After when the platform is busy or away.
	busyRetryAfter time.Duration
}

// loginRefuser refuses the failed exchanges of logins at p, whose retries
// follow retry: busy or away, the platform is worth asking again after the
// backoff's ceiling.
func loginRefuser(p *platform, retry retryPolicy) failureRefuser {
	return failureRefuser{column: loginColumn, platform: p, busyRetryAfter: max(retry.max, time.Second)}
}

// apiRefuser refuses wechat_api's failed calls to WeChat.
var apiRefuser = failureRefuser{column: apiColumn, platform: wechatPlatform, busyRetryAfter: apiRetryAfter}

// code is the error code of the refusal of err.
func (f failureRefuser) code(err *platformError) string {
	return failureRefusals[err.kind][f.column].code
}

// refusal is the documented refusal of a call that failed with err at now:
// with the platform's errcode when it gave one, and when to retry.
func (f failureRefuser) refusal(err *platformError, now time.Time) *jsonRefusal {
	row := failureRefusals[err.kind][f.column]
	e := newRefusal(row.status, row.code, strings.NewReplacer("{platform}", f.platform.title, "{login}", f.platform.clientLogin).Replace(row.message))
	e.errcode, e.hasErrcode = err.errcode, err.hasErrcode
	switch row.wait {
	case retryAfterBusy:
		e.retryAfter = f.busyRetryAfter
	case retryAfterNextMinute:
		e.retryAfter = untilNextMinute(now)
	}
	return e
}

// untilNextMinute is how long a platform's minute quota (WeChat's 45011)
// stays spent.
func untilNextMinute(now time.Time) time.Duration {
	return now.Truncate(time.Minute).Add(time.Minute).Sub(now)
}

// retryAfterSeconds renders a wait as Retry-After wants it: whole seconds,
// rounded up, at least 1 (0 would invite an immediate retry storm).
func retryAfterSeconds(d time.Duration) string {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}

// statusClientClosedRequest is nginx's code for a client that hung up,
// which Caddy's reverse_proxy records too.
const statusClientClosedRequest = 499

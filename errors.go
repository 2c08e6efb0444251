package wechatlogin

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The refusals' error codes (the JSON body's "error"), as listed in the
// README. They are part of the contract: game clients switch on them. The
// platform's own failures read "wechat_…" whatever the platform, so that a
// client ported to another platform switches on the same codes.
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

// failureRefusals is the refusal table for a platform's failures, by kind.
// A message names the platform as {platform} and the client's login call
// as {login}.
var failureRefusals = map[failureKind]struct {
	status  int
	code    string
	message string
}{
	kindInvalidCode:   {http.StatusUnauthorized, refusalInvalidCode, "the login code is invalid or expired; call {login} again"},
	kindCodeUsed:      {http.StatusUnauthorized, refusalCodeUsed, "the login code was already used; call {login} again"},
	kindBlocked:       {http.StatusForbidden, refusalUserBlocked, "{platform} refused this player as high risk"},
	kindQuota:         {http.StatusTooManyRequests, refusalRateLimited, "{platform}'s per-player login limit was reached; retry next minute"},
	kindBusy:          {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is busy; call {login} again and retry"},
	kindMisconfigured: {http.StatusBadGateway, refusalMisconfigured, "the login service is misconfigured; the operator has been told"},
	kindBadResponse:   {http.StatusBadGateway, refusalBadResponse, "{platform} answered with something other than a login result"},
	kindUnavailable:   {http.StatusServiceUnavailable, refusalUnavailable, "{platform} is unavailable; call {login} again and retry"},
	kindTimeout:       {http.StatusGatewayTimeout, refusalTimeout, "{platform} did not answer in time; call {login} again and retry"},
}

// failureRefusal is the documented refusal of a login that p failed with
// err: the platform's errcode when it gave one, and when to retry: after
// the backoff's ceiling when the platform is busy or away, at the next
// minute when the player is over the platform's minute quota.
func failureRefusal(p *platform, err *platformError, retry retryPolicy, now time.Time) *jsonRefusal {
	row := failureRefusals[err.kind]
	e := newRefusal(row.status, row.code, strings.NewReplacer("{platform}", p.title, "{login}", p.clientLogin).Replace(row.message))
	e.errcode, e.hasErrcode = err.errcode, err.hasErrcode
	switch err.kind {
	case kindBusy, kindUnavailable:
		e.retryAfter = max(retry.max, time.Second)
	case kindQuota:
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

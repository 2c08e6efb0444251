package wechatlogin

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Error codes of the JSON error body, as listed in the README. They are part of
// the contract: game clients switch on them.
const (
	errInvalidRequest      = "invalid_request"
	errInvalidCode         = "invalid_code"
	errCodeUsed            = "code_used"
	errInvalidSession      = "invalid_session"
	errUserBlocked         = "user_blocked"
	errRateLimited         = "rate_limited"
	errWechatMisconfigured = "wechat_misconfigured"
	errWechatBadResponse   = "wechat_bad_response"
	errWechatUnavailable   = "wechat_unavailable"
	errWechatTimeout       = "wechat_timeout"
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

func (e *jsonRefusal) Error() string {
	if e.hasErrcode {
		return fmt.Sprintf("%s (%d): %s", e.code, e.errcode, e.message)
	}
	return e.code + ": " + e.message
}

func newRefusal(status int, code, message string) *jsonRefusal {
	return &jsonRefusal{status: status, code: code, message: message}
}

func badRequest(message string) *jsonRefusal {
	return newRefusal(http.StatusBadRequest, errInvalidRequest, message)
}

func rateLimited(message string, wait time.Duration) *jsonRefusal {
	e := newRefusal(http.StatusTooManyRequests, errRateLimited, message)
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
	if e.code == errInvalidSession {
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

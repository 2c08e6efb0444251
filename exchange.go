package wechatlogin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// WeChat errcodes the exchange treats specially.
const (
	errcodeBusy        = -1
	errcodeInvalidCode = 40029
	errcodeCodeUsed    = 40163
	errcodeBlocked     = 40226
	errcodeRateLimited = 45011
)

// maxWechatBody caps a jscode2session response; a real one is under 200 bytes.
const maxWechatBody = 64 << 10

// wechatClient calls jscode2session. It is safe for concurrent use.
type wechatClient struct {
	http *http.Client
	// requestURL is the jscode2session URL with every parameter but the
	// code, which comes last: built once, as it holds the secret.
	requestURL string
	timeout    time.Duration
	retry      retryPolicy
	// sleep waits between attempts; tests swap it to avoid real waiting.
	sleep func(context.Context, time.Duration) error
}

type retryPolicy struct {
	attempts  int
	base, max time.Duration
}

// backoff is the wait after the given failed attempt (1-based): exponential,
// capped at max, with full jitter so that a WeChat hiccup does not make every
// gateway retry in lockstep.
func (p retryPolicy) backoff(attempt int) time.Duration {
	ceiling := p.base << (attempt - 1)
	if ceiling > p.max || ceiling <= 0 {
		ceiling = p.max
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

// worstCase bounds one whole exchange: every attempt timing out and every
// backoff at its ceiling. A coalesced exchange runs on this bound rather than
// on any one client's request.
func (c *wechatClient) worstCase() time.Duration {
	total := c.timeout
	for a := 1; a < c.retry.attempts; a++ {
		total = addSaturating(total, addSaturating(min(c.retry.base<<(a-1), c.retry.max), c.timeout))
	}
	return total
}

func jscode2sessionURL(endpoint, appID, secret string) string {
	query := url.Values{"appid": {appID}, "secret": {secret}, "grant_type": {"authorization_code"}}
	return strings.TrimSuffix(endpoint, "/") + "/sns/jscode2session?" + query.Encode() + "&js_code="
}

func newHTTPClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		// A launch sends logins in bursts; the default of 2 idle connections
		// per host would make most of them dial anew.
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   timeout,
		// jscode2session does not redirect; following one could send the
		// secret in the query string to another host.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// attemptError is how one attempt failed, in terms the retry loop and the
// error table need. Its text never carries the request URL.
type attemptError struct {
	kind    attemptKind
	errcode int
	rid     string // WeChat's request id, for support tickets
	detail  string
}

type attemptKind int

const (
	kindErrcode     attemptKind = iota // WeChat answered with a nonzero errcode
	kindBadResponse                    // the body is not jscode2session's JSON
	kindUnavailable                    // 5xx or a connection failure
	kindTimeout                        // no answer within timeout
)

func (e *attemptError) Error() string {
	switch e.kind {
	case kindErrcode:
		return fmt.Sprintf("wechat errcode %d (rid %s)", e.errcode, e.rid)
	case kindTimeout:
		return "wechat did not answer in time"
	default:
		return e.detail
	}
}

func (e *attemptError) retryable() bool {
	return e.kind == kindUnavailable || e.kind == kindTimeout || (e.kind == kindErrcode && e.errcode == errcodeBusy)
}

// exchangeResult describes a finished exchange for logs and metrics.
type exchangeResult struct {
	attempts int
	last     *attemptError // nil on success
}

// redeemCode exchanges code at jscode2session, retrying what WeChat documents as transient. It
// stops when ctx ends.
func (c *wechatClient) redeemCode(ctx context.Context, code string) (Identity, exchangeResult, *attemptError) {
	var res exchangeResult
	// Whether an earlier attempt may have reached WeChat and spent the code
	// even though its answer was lost.
	answerLost := false
	for {
		res.attempts++
		id, err := c.attempt(ctx, code)
		if err == nil {
			res.last = nil
			return id, res, nil
		}
		res.last = err
		if err.kind == kindErrcode && err.errcode == errcodeCodeUsed && answerLost {
			err = &attemptError{kind: kindUnavailable, detail: "the code was spent by an attempt whose answer was lost"}
			res.last = err
			return Identity{}, res, err
		}
		if !err.retryable() || res.attempts >= c.retry.attempts {
			return Identity{}, res, err
		}
		answerLost = answerLost || err.kind == kindTimeout || err.kind == kindUnavailable
		if ctx.Err() != nil {
			return Identity{}, res, err
		}
		if serr := c.sleep(ctx, c.retry.backoff(res.attempts)); serr != nil {
			return Identity{}, res, err
		}
	}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// attempt makes one jscode2session call.
func (c *wechatClient) attempt(ctx context.Context, code string) (Identity, *attemptError) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.requestURL+url.QueryEscape(code), nil)
	if err != nil {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: "could not build the wechat request"}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Identity{}, transportError(ctx, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode >= 500 {
		return Identity{}, &attemptError{kind: kindUnavailable, detail: fmt.Sprintf("wechat answered HTTP %d", resp.StatusCode)}
	}
	if resp.StatusCode != http.StatusOK {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: fmt.Sprintf("wechat answered HTTP %d", resp.StatusCode)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWechatBody+1))
	if err != nil {
		return Identity{}, transportError(ctx, err)
	}
	if len(body) > maxWechatBody {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: "wechat response is too large"}
	}
	return decodeJscode2Session(body)
}

// transportError classifies a failed round trip. Go wraps those in a
// *url.Error whose text holds the whole URL, secret and code included, so only
// the inner error's text is kept.
func transportError(ctx context.Context, err error) *attemptError {
	if ctx.Err() != nil || isTimeout(err) {
		return &attemptError{kind: kindTimeout}
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return &attemptError{kind: kindUnavailable, detail: "wechat request failed: " + redact(err.Error())}
}

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// redact cuts anything that looks like a query string out of an error text,
// in case a nested error repeats the URL.
func redact(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?[redacted]"
	}
	return s
}

// jscode2sessionAnswer is jscode2session's answer.
type jscode2sessionAnswer struct {
	OpenID     string `json:"openid"`
	UnionID    string `json:"unionid"`
	SessionKey string `json:"session_key"`
	ErrCode    int    `json:"errcode"` // absent means 0
	ErrMsg     string `json:"errmsg"`
}

// decodeJscode2Session reads a jscode2session body. WeChat labels it text/plain, so
// the Content-Type is not consulted.
func decodeJscode2Session(body []byte) (Identity, *attemptError) {
	var s jscode2sessionAnswer
	if err := json.Unmarshal(body, &s); err != nil {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: "wechat response is not the expected JSON"}
	}
	if s.ErrCode != 0 {
		return Identity{}, &attemptError{kind: kindErrcode, errcode: s.ErrCode, rid: ridOf(s.ErrMsg)}
	}
	if s.OpenID == "" || s.SessionKey == "" {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: "wechat response lacks openid or session_key"}
	}
	id := Identity{OpenID: s.OpenID, UnionID: s.UnionID, SessionKey: s.SessionKey}
	if !id.wellFormed() {
		return Identity{}, &attemptError{kind: kindBadResponse, detail: "wechat response has an openid, unionid or session_key that is not short printable ASCII"}
	}
	return id, nil
}

// wellFormed reports whether id has an openid and every value of it is as
// WeChat writes them: up to maxWechatValueLen bytes of visible ASCII. They
// become header values and session claims: an endpoint that answers
// anything else (a misconfigured endpoint, a broken proxy) proves nobody,
// rather than signing a token verify would refuse or sending a control
// character upstream.
func (id Identity) wellFormed() bool {
	return isVisibleASCII(id.OpenID, maxWechatValueLen) &&
		(id.UnionID == "" || isVisibleASCII(id.UnionID, maxWechatValueLen)) &&
		(id.SessionKey == "" || isVisibleASCII(id.SessionKey, maxWechatValueLen))
}

// maxWechatValueLen bounds an openid, unionid or session_key (WeChat's are
// 24 to 29 bytes), so that every session token fits maxSessionTokenLen.
const maxWechatValueLen = 128

// isVisibleASCII reports whether s is 1 to maxLen bytes of printable ASCII
// without spaces: what WeChat's ids, keys and tokens are made of, and what
// the gateway accepts of them.
func isVisibleASCII(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// ridOf extracts the request id WeChat appends to errmsg ("..., rid: 6543-ab").
// Only the id is kept, never errmsg itself, which is WeChat's free text.
func ridOf(errmsg string) string {
	_, rid, ok := strings.Cut(errmsg, "rid: ")
	if !ok {
		return ""
	}
	end := 0
	for end < len(rid) && end < 64 && isRidChar(rid[end]) {
		end++
	}
	return rid[:end]
}

func isRidChar(c byte) bool {
	return c == '-' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// exchangeRefusal maps a failed exchange to the documented response.
func exchangeRefusal(err *attemptError, retry retryPolicy, now time.Time) *jsonRefusal {
	switch err.kind {
	case kindTimeout:
		return newRefusal(http.StatusGatewayTimeout, errWechatTimeout, "WeChat did not answer in time; call wx.login again and retry")
	case kindUnavailable:
		e := newRefusal(http.StatusServiceUnavailable, errWechatUnavailable, "WeChat is unavailable; call wx.login again and retry")
		e.retryAfter = max(retry.max, time.Second)
		return e
	case kindBadResponse:
		return newRefusal(http.StatusBadGateway, errWechatBadResponse, "WeChat answered with something other than a login result")
	}
	var e *jsonRefusal
	switch err.errcode {
	case errcodeBusy:
		e = newRefusal(http.StatusServiceUnavailable, errWechatUnavailable, "WeChat is busy; call wx.login again and retry")
		e.retryAfter = max(retry.max, time.Second)
	case errcodeInvalidCode:
		e = newRefusal(http.StatusUnauthorized, errInvalidCode, "the login code is invalid or expired; call wx.login again")
	case errcodeCodeUsed:
		e = newRefusal(http.StatusUnauthorized, errCodeUsed, "the login code was already used; call wx.login again")
	case errcodeBlocked:
		e = newRefusal(http.StatusForbidden, errUserBlocked, "WeChat refused this player as high risk")
	case errcodeRateLimited:
		e = rateLimited("WeChat's per-player login limit was reached; retry next minute", untilNextMinute(now))
	default:
		e = newRefusal(http.StatusBadGateway, errWechatMisconfigured, "the login service is misconfigured; the operator has been told")
	}
	e.errcode, e.hasErrcode = err.errcode, true
	return e
}

// untilNextMinute is how long WeChat's minute quota (45011) stays spent.
func untilNextMinute(now time.Time) time.Duration {
	return now.Truncate(time.Minute).Add(time.Minute).Sub(now)
}

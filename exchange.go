package wechatlogin

import (
	"context"
	"crypto/tls"
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

// maxExchangeAnswer caps an exchange's answer; a real one is under 300 bytes.
const maxExchangeAnswer = 64 << 10

// exchangeClient makes one app's exchanges at its platform. It is safe for
// concurrent use.
type exchangeClient struct {
	platform *platform
	http     *http.Client
	// requestURL is the exchange's URL with every parameter but the
	// player's credentials: built once, as it holds the secret.
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
func (c *exchangeClient) worstCase() time.Duration {
	total := c.timeout
	for a := 1; a < c.retry.attempts; a++ {
		total = addSaturating(total, addSaturating(min(c.retry.base<<(a-1), c.retry.max), c.timeout))
	}
	return total
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
		// No platform's API redirects; following one could send the
		// secret in the query string to another host.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// redeem exchanges a player's credentials at the platform, retrying what
// the platform documents as transient. It stops when ctx ends. attempts
// counts the calls made.
func (c *exchangeClient) redeem(ctx context.Context, creds credentials) (id Identity, attempts int, err *platformError) {
	// Whether an earlier attempt may have reached the platform and spent
	// the code even though its answer was lost.
	answerLost := false
	for {
		attempts++
		id, err := c.attempt(ctx, creds)
		if err == nil {
			return id, attempts, nil
		}
		if err.kind == kindCodeUsed && answerLost {
			return Identity{}, attempts, &platformError{kind: kindUnavailable, detail: "the code was spent by an attempt whose answer was lost"}
		}
		if !err.retryable() || attempts >= c.retry.attempts {
			return Identity{}, attempts, err
		}
		answerLost = answerLost || err.kind == kindTimeout || err.kind == kindUnavailable
		if ctx.Err() != nil {
			return Identity{}, attempts, err
		}
		if serr := c.sleep(ctx, c.retry.backoff(attempts)); serr != nil {
			return Identity{}, attempts, err
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

// attempt makes one exchange call.
func (c *exchangeClient) attempt(ctx context.Context, creds credentials) (Identity, *platformError) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.platform.appendCredentials(c.requestURL, creds), nil)
	if err != nil {
		return Identity{}, badResponse("could not build the request")
	}
	answer, perr := callPlatform(c.http, req, maxExchangeAnswer)
	if perr != nil {
		return Identity{}, perr
	}
	return c.platform.answer.read(answer)
}

// callPlatform makes one call to a platform's API and returns the answer's
// body, or how the call failed, classified for the retry loop and the
// refusal table: a 5xx or no connection is unavailable, no answer within
// req's context a timeout, any other status than 200 or a body over
// maxAnswer a bad response.
func callPlatform(client *http.Client, req *http.Request, maxAnswer int64) ([]byte, *platformError) {
	ctx := req.Context()
	resp, err := client.Do(req)
	if err != nil {
		return nil, transportError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		return nil, &platformError{kind: kindUnavailable, detail: fmt.Sprintf("answered HTTP %d", resp.StatusCode)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, badResponse(fmt.Sprintf("answered HTTP %d", resp.StatusCode))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, transportError(ctx, err)
	}
	if int64(len(body)) > maxAnswer {
		return nil, badResponse("the answer is too large")
	}
	return body, nil
}

// transportError classifies a failed round trip. Go wraps those in a
// *url.Error whose text holds the whole URL, secret and code included, so only
// the inner error's text is kept.
func transportError(ctx context.Context, err error) *platformError {
	if ctx.Err() != nil || isTimeout(err) {
		return &platformError{kind: kindTimeout}
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return &platformError{kind: kindUnavailable, detail: "request failed: " + redact(err.Error())}
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

// wellFormed reports whether id names a player and every value of it is as
// the platforms write them: up to maxWechatValueLen bytes of visible ASCII.
// They become header values and session claims: an endpoint that answers
// anything else (a misconfigured endpoint, a broken proxy) proves nobody,
// rather than signing a token verify would refuse or sending a control
// character upstream.
func (id Identity) wellFormed() bool {
	optional := func(s string) bool { return s == "" || isVisibleASCII(s, maxWechatValueLen) }
	return id.proves() && optional(id.OpenID) && optional(id.UnionID) && optional(id.SessionKey) && optional(id.AnonymousOpenID)
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

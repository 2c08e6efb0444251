package wechatlogin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(APIHandler{})
}

const (
	// maxRepeatableBody: a request body up to this size is kept in memory, so
	// that the call can be repeated with a new token if WeChat refuses the
	// first; a larger one (a media upload) is streamed, and not repeated.
	maxRepeatableBody = 1 << 20
	// maxInspectedAnswer: an answer up to this size is read for its errcode
	// before it is passed on; a larger one (an image, a file) is streamed.
	maxInspectedAnswer = 64 << 10
	// apiRetryAfter is the wait suggested when WeChat is busy or unreachable.
	apiRetryAfter = 5 * time.Second
)

// APIHandler is the wechat_api HTTP handler: it sends each request on to
// WeChat's server API with the app's access_token set, so that backends call
// WeChat without managing tokens, as they do on WeChat Cloud Hosting. It
// answers every request itself (nothing is passed to the next handler) and
// belongs on a listener that only the backends can reach.
type APIHandler struct {
	// The mini-game's AppID. Required.
	AppID string `json:"app_id,omitempty"`
	// The mini-game's AppSecret. Required. Placeholders such as {env.X} and
	// {file.PATH} are resolved at provision.
	AppSecret string `json:"app_secret,omitempty"`
	// Base URL of the WeChat API. Default https://api.weixin.qq.com.
	Endpoint string `json:"endpoint,omitempty"`
	// Time allowed for one WeChat call, a token fetch or the API call itself;
	// a minute at most. Default 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Share the access token with the other gateways of a fleet through
	// Redis (the block wechat_login takes), so that the fleet makes one
	// stable_token call and keeps one ledger of forced refreshes. Default:
	// none, every gateway fetches its own (the same, from stable_token).
	Redis *RedisConfig `json:"redis,omitempty"`
	// The virtual payment AppKeys, with which payment calls and the
	// gateway's sign endpoint are signed. Default: none.
	VirtualPayment *VirtualPaymentConfig `json:"virtual_payment,omitempty"`
	// Host names, besides IP addresses and localhost, that a request's Host
	// header may carry (with any port): the names backends on other machines
	// call the gateway by. A request for any other Host is refused, so that a
	// web page whose DNS name its owner rebinds to the listener's address
	// never reaches the app's token. Default: none.
	AllowHosts []string `json:"allow_hosts,omitempty"`

	allowedHosts map[string]bool // AllowHosts, lower case
	secret       string          // AppSecret, resolved
	endpoint     string          // Endpoint without a trailing slash
	client       *http.Client
	// tokens is shared with the app's other handlers, across reloads; the
	// timeout and the metrics registry are this handler's.
	tokens    *tokenManager
	tokensKey string
	appRedis  *appRedis // nil without a redis block
	metrics   *apiMetrics
	logger    *zap.Logger
	// appKeys are VirtualPayment's keys by env, resolved.
	appKeys [2]string
	// sessionKeys are the app's kept session_keys, shared with its
	// wechat_login handlers through appStates[stateKey].
	sessionKeys *sessionKeyCustody
	stateKey    string
}

// CaddyModule returns the Caddy module information.
func (APIHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.wechat_api",
		New: func() caddy.Module { return new(APIHandler) },
	}
}

// Provision sets defaults, resolves the secrets and attaches the app's
// token manager and kept session_keys, shared across reloads.
func (h *APIHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	h.resolveSecrets()
	// Shared state is only touched by a valid config, so a bad reload
	// cannot disturb the running one.
	if err := h.Validate(); err != nil {
		return err
	}
	warnIfCleartext(h.logger, h.AppID, h.Endpoint)
	h.endpoint = strings.TrimSuffix(h.Endpoint, "/")
	h.allowedHosts = make(map[string]bool, len(h.AllowHosts))
	for _, name := range h.AllowHosts {
		h.allowedHosts[strings.ToLower(name)] = true
	}
	h.client = newHTTPClient(time.Duration(h.Timeout))
	var err error
	if h.metrics, err = newAPIMetrics(ctx.GetMetricsRegistry(), h.AppID); err != nil {
		return err
	}
	endpoint := canonicalEndpoint(h.Endpoint)
	h.attachSessionKeys(endpoint)
	key := stateKey(h.AppID, endpoint, h.secret)
	if h.Redis != nil {
		// Every handler of the manager holds the client it uses, so that
		// the client outlives the manager whichever handler goes first.
		if h.appRedis, err = newAppRedis(ctx, h.Redis, h.AppID, endpoint, h.secret); err != nil {
			return err
		}
		// A manager keeps the store it was made with: another Redis (or
		// none) is another manager.
		key += "\x00" + h.appRedis.poolKey + "\x00" + h.appRedis.prefix
	}
	manager, _, err := tokenManagers.LoadOrNew(key, func() (caddy.Destructor, error) {
		m := newTokenManager(h.AppID, h.endpoint, h.secret, h.metrics)
		if h.appRedis != nil {
			m.store = h.appRedis.tokenStore()
		}
		return m, nil
	})
	if err != nil {
		return err
	}
	h.tokens, h.tokensKey = manager.(*tokenManager), key
	return nil
}

// Cleanup releases the token manager, then the Redis client it may use, and
// idle WeChat connections.
func (h *APIHandler) Cleanup() error {
	if h.client != nil {
		h.client.CloseIdleConnections()
	}
	var err error
	if h.tokens != nil { // nil when provision failed before attaching it
		_, err = tokenManagers.Delete(h.tokensKey)
	}
	if h.appRedis != nil {
		err = errors.Join(err, h.appRedis.release())
	}
	err = errors.Join(err, h.releaseSessionKeys())
	return err
}

// ServeHTTP answers a token request from the managed token, and sends any
// other request on to WeChat with the token set.
func (h *APIHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	// Before anything else: whatever the path, a request a backend would
	// not send gets nothing.
	if refusal := h.notFromABackend(r); refusal != nil {
		h.logger.Debug("wechat_api refused a request not from a backend", zap.String("app_id", h.AppID),
			zap.String("result", refusal.code), zap.String("host", r.Host), zap.String("origin", r.Header.Get("Origin")))
		return refuse(w, r, refusal, h.metrics.call)
	}
	// What is checked is what is sent: the path cleaned, in the characters
	// WeChat's API paths are made of, and compared ignoring case, so that
	// no spelling of /cgi-bin/token ("//cgi-bin/token", "/CGI-BIN/TOKEN",
	// "/cgi-bin/token%00") reaches WeChat with a backend's guess at the
	// secret (and invalidates the fleet's token).
	cleanPath := path.Clean("/" + r.URL.Path)
	if !isAPIPath(cleanPath) {
		return refuse(w, r, badRequest("not a WeChat API path"), h.metrics.call)
	}
	r.URL.Path, r.URL.RawPath = cleanPath, ""
	if strings.HasPrefix(cleanPath, gatewayPathPrefix) {
		return h.serveGateway(w, r, cleanPath)
	}
	if strings.EqualFold(cleanPath, classicTokenPath) || strings.EqualFold(cleanPath, stableTokenPath) {
		t, err := h.tokens.token(r.Context(), time.Duration(h.Timeout))
		if err != nil {
			return refuse(w, r, apiRefuser.refusal(err, time.Now()), h.metrics.call)
		}
		h.metrics.call(callToken)
		return writeTokenAnswer(w, t, h.tokens.now())
	}
	start := time.Now()
	var signedWith keptSessionKey
	answer, outcome, refusal := h.call(r, cleanPath, &signedWith)
	if refusal != nil {
		h.logCall(r, refusal.status, refusal.code, start)
		return refuse(w, r, refusal, h.metrics.call)
	}
	defer answer.Body.Close()
	h.keepRotatedKey(r, cleanPath, signedWith, answer)
	h.metrics.call(outcome)
	h.logCall(r, answer.StatusCode, outcome, start)
	if err := passOn(w, answer); err != nil {
		// The status is sent; all that is left is to say so.
		h.logger.Debug("wechat answer cut short", zap.String("app_id", h.AppID), zap.String("error", redact(err.Error())))
	}
	return nil
}

// notFromABackend returns the refusal of a request that a web browser sent,
// or that names the gateway by a Host the operator did not list; nil for a
// backend's. The listener is reachable from the browser of anyone on the
// machine or the network, and any web page can make it send requests:
// those always carry Origin or Sec-Fetch-Site (other than none, a person
// typing the URL), and a page that rebinds its own DNS name to the
// listener's address sends that name as Host. Backends and their SDKs send
// neither header, and call the gateway by address, localhost or a name in
// allow_host.
func (h *APIHandler) notFromABackend(r *http.Request) *jsonRefusal {
	_, hasOrigin := r.Header["Origin"]
	if hasOrigin || slices.ContainsFunc(r.Header.Values("Sec-Fetch-Site"), func(site string) bool { return site != "none" }) {
		return newRefusal(http.StatusForbidden, refusalBrowserRequestRefused, "a request from a web browser is refused: wechat_api serves backends only")
	}
	if !h.hostAllowed(r) {
		return newRefusal(http.StatusMisdirectedRequest, refusalHostNotAllowed, "the Host header is neither an IP address, localhost nor a name in allow_host")
	}
	return nil
}

// hostAllowed reports whether r's Host, port aside, is an IP address,
// localhost or a name in allow_host. Requests over a Unix socket, which no
// browser reaches and whose clients name the host as they please, need none.
func (h *APIHandler) hostAllowed(r *http.Request) bool {
	if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && local.Network() == "unix" {
		return true
	}
	host := r.Host
	if name, _, err := net.SplitHostPort(host); err == nil {
		host = name
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return strings.EqualFold(host, "localhost") || h.allowedHosts[strings.ToLower(host)]
}

// call sends r on to WeChat with the app's token, and once more with a new
// token if WeChat refuses the first (the refused call did nothing). It
// returns WeChat's answer and the outcome, or the refusal to send instead;
// signedWith (when not nil) gets the session_key the gateway signed with.
//
// Only APIs called with the app's access token can refuse it: the /sns/
// APIs take a player's credentials, so their 40001 says nothing of the
// app's token, and must not make the fleet replace it.
func (h *APIHandler) call(r *http.Request, cleanPath string, signedWith *keptSessionKey) (*http.Response, string, *jsonRefusal) {
	ctx, timeout := r.Context(), time.Duration(h.Timeout)
	body, err := readRequestBody(r)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, "", newRefusal(http.StatusRequestEntityTooLarge, refusalInvalidRequest, "the request body is too large")
		}
		return nil, "", badRequest("the request body could not be read")
	}
	// From here r is the call as WeChat gets it.
	r, refusal := h.signForPlayer(r, cleanPath, body, signedWith)
	if refusal != nil {
		return nil, "", refusal
	}
	t, terr := h.tokens.token(ctx, timeout)
	if terr != nil {
		return nil, "", apiRefuser.refusal(terr, time.Now())
	}
	answer, refusal := h.send(r, body, t)
	if refusal != nil {
		return nil, "", refusal
	}
	errcode := inspectAnswer(answer)
	if !refusesToken(errcode) || hasPrefixFold(cleanPath, "/sns/") {
		return answer, callForwarded, nil
	}
	if !body.repeatable() {
		// The body was streamed and cannot be sent again; WeChat's refusal
		// goes back as it is, and the next call gets a new token.
		_, _ = h.tokens.replace(ctx, timeout, t, errcode, cleanPath)
		return answer, callForwarded, nil
	}
	next, terr := h.tokens.replace(ctx, timeout, t, errcode, cleanPath)
	if terr != nil {
		answer.Body.Close()
		return nil, "", apiRefuser.refusal(terr, time.Now())
	}
	if next.value == t.value {
		// WeChat takes the token: the API refused something else the call
		// carried, and would refuse a repeat alike. Its answer goes back.
		return answer, callForwarded, nil
	}
	answer.Body.Close()
	if answer, refusal = h.send(r, body, next); refusal != nil {
		return nil, "", refusal
	}
	return answer, callRepeated, nil
}

// isAPIPath reports whether p is made of what WeChat's API paths are made
// of: letters, digits, '/', '_', '-' and '.'.
func isAPIPath(p string) bool {
	for i := range len(p) {
		switch c := p[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '/', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// send makes one call of r at WeChat with token t: the same method, path,
// query (its access_token replaced), body and Content-Type.
func (h *APIHandler) send(r *http.Request, body requestBody, t accessToken) (*http.Response, *jsonRefusal) {
	ctx := r.Context()
	target := h.endpoint + r.URL.EscapedPath() + "?" + withAccessToken(r.URL.RawQuery, t.value)
	req, err := http.NewRequestWithContext(ctx, r.Method, target, body.reader())
	if err != nil {
		return nil, badRequest("the request cannot be sent on to WeChat")
	}
	if !body.repeatable() {
		req.ContentLength = body.length
	}
	if contentType := r.Header.Get("Content-Type"); contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	answer, err := h.client.Do(req)
	if err != nil {
		// transportError keeps nothing of the URL, which holds the token.
		return nil, apiRefuser.refusal(transportError(ctx, err), time.Now())
	}
	return answer, nil
}

// logCall writes one debug line per call, without the query (a client may
// have sent a token in it).
func (h *APIHandler) logCall(r *http.Request, status int, outcome string, start time.Time) {
	if ce := h.logger.Check(zap.DebugLevel, "wechat api call"); ce != nil {
		ce.Write(zap.String("app_id", h.AppID), zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("status", status), zap.String("result", outcome), zap.Duration("duration", time.Since(start)))
	}
}

// withAccessToken returns rawQuery with every access_token parameter removed
// and token's appended, the other parameters untouched and in their order.
func withAccessToken(rawQuery, token string) string {
	var q strings.Builder
	for param := range strings.SplitSeq(rawQuery, "&") {
		if param == "" || isAccessTokenParam(param) {
			continue
		}
		q.WriteString(param)
		q.WriteByte('&')
	}
	q.WriteString("access_token=")
	q.WriteString(url.QueryEscape(token))
	return q.String()
}

// isAccessTokenParam reports whether a "key=value" query parameter is an
// access_token, however its key is escaped.
func isAccessTokenParam(param string) bool {
	key, _, _ := strings.Cut(param, "=")
	if unescaped, err := url.QueryUnescape(key); err == nil {
		key = unescaped
	}
	return key == "access_token"
}

// requestBody is a client's request body, read as far as a repeat needs.
type requestBody struct {
	head []byte    // the whole body, or its first maxRepeatableBody+1 bytes
	rest io.Reader // the remainder, to stream once; nil when head is the whole body
	// length is the whole body's, -1 when unknown.
	length int64
}

func readRequestBody(r *http.Request) (requestBody, error) {
	head, err := io.ReadAll(io.LimitReader(r.Body, maxRepeatableBody+1))
	if err != nil {
		return requestBody{}, err
	}
	if len(head) <= maxRepeatableBody {
		return requestBody{head: head, length: int64(len(head))}, nil
	}
	return requestBody{head: head, rest: r.Body, length: r.ContentLength}, nil
}

func (b requestBody) repeatable() bool { return b.rest == nil }

// reader reads the whole body: as often as needed when it is repeatable,
// once otherwise.
func (b requestBody) reader() io.Reader {
	if b.rest == nil {
		return bytes.NewReader(b.head)
	}
	return io.MultiReader(bytes.NewReader(b.head), b.rest)
}

// inspectAnswer returns the errcode of a small JSON answer (0 if it has
// none, or is not small JSON), reading it into memory; answer.Body still
// yields the whole body afterwards. A small answer read whole lets go of its
// connection, as it may be kept while the token is looked into.
func inspectAnswer(answer *http.Response) int {
	if answer.ContentLength > maxInspectedAnswer {
		return 0
	}
	head, err := io.ReadAll(io.LimitReader(answer.Body, maxInspectedAnswer+1))
	if err != nil || len(head) > maxInspectedAnswer {
		answer.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), answer.Body), answer.Body}
		return 0
	}
	answer.Body.Close()
	answer.Body = io.NopCloser(bytes.NewReader(head))
	errcode, _ := answerErrcode(head)
	return errcode
}

// answerErrcode reads the top-level errcode of a WeChat answer, reporting
// false when the answer is not a JSON object with an integer errcode.
func answerErrcode(answer []byte) (int, bool) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(answer, &fields) != nil {
		return 0, false
	}
	var errcode int
	if raw, ok := fields["errcode"]; !ok || json.Unmarshal(raw, &errcode) != nil {
		return 0, false
	}
	return errcode, true
}

// passOn sends WeChat's answer to the client as it is: status, Content-Type
// and body.
func passOn(w http.ResponseWriter, answer *http.Response) error {
	if contentType := answer.Header.Get("Content-Type"); contentType != "" {
		w.Header().Set("Content-Type", contentType)
	}
	if answer.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(answer.ContentLength, 10))
	}
	w.WriteHeader(answer.StatusCode)
	_, err := io.Copy(w, answer.Body)
	return err
}

// wechatJSONType is the Content-Type of WeChat's JSON answers on its
// /cgi-bin/ APIs, token endpoints included (its own spelling: encoding, not
// charset).
const wechatJSONType = "application/json; encoding=utf-8"

// writeTokenAnswer answers a token request as WeChat would, byte for byte in
// shape, with the time the token has left on this gateway.
func writeTokenAnswer(w http.ResponseWriter, t accessToken, now time.Time) error {
	body := struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}{t.value, max(int64(t.usableUntil().Sub(now)/time.Second), 1)}
	return writeJSON(w, http.StatusOK, wechatJSONType, body)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*APIHandler)(nil)
	_ caddy.Validator             = (*APIHandler)(nil)
	_ caddy.CleanerUpper          = (*APIHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*APIHandler)(nil)
	_ caddy.Destructor            = (*tokenManager)(nil)
)

package wechatlogin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// wechat_api's work with the session_keys wechat_login keeps: the gateway's
// own endpoints under /gateway/, and the signatures it adds to the calls
// that need the player's key or the payment AppKey.

// callGateway is the outcome of a request the gateway answered itself.
const callGateway = "gateway"

const (
	// gatewayPathPrefix is the gateway's own endpoints' (WeChat uses none
	// like it).
	gatewayPathPrefix = "/gateway/"
	// maxGatewayBody bounds a request to those endpoints: encryptedData of
	// a month of WeRun steps is a few KB.
	maxGatewayBody = 256 << 10
	// midasPaymentGameItem is the "uri" of pay_sig for the client's
	// wx.requestMidasPaymentGameItem.
	midasPaymentGameItem = "requestMidasPaymentGameItem"
	resetSessionKeyPath  = "/wxa/resetusersessionkey"
)

// VirtualPaymentConfig holds the mini-game's virtual payment AppKeys, with
// which wechat_api signs payment calls (pay_sig). Placeholders such as
// {env.X} and {file.PATH} are resolved at provision.
type VirtualPaymentConfig struct {
	// The AppKey of the production environment (env 0).
	AppKey string `json:"app_key,omitempty"`
	// The AppKey of the sandbox (env 1).
	SandboxAppKey string `json:"sandbox_app_key,omitempty"`
}

// parseVirtualPaymentBlock reads
//
//	virtual_payment {
//		app_key         <key>
//		sandbox_app_key <key>
//	}
func parseVirtualPaymentBlock(d *caddyfile.Dispenser) (*VirtualPaymentConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	c := new(VirtualPaymentConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return nil, d.Errf("virtual_payment: %s given more than once", sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "app_key":
			c.AppKey, err = oneArg(d)
		case "sandbox_app_key":
			c.SandboxAppKey, err = oneArg(d)
		default:
			err = d.Errf("virtual_payment: unrecognized subdirective: %s", sub)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := checkVirtualPayment(c, c.appKeys(nil)); err != nil {
		return nil, d.WrapErr(err)
	}
	return c, nil
}

// appKeys are the keys by env, resolved by repl (as written when nil).
func (c *VirtualPaymentConfig) appKeys(repl *caddy.Replacer) [2]string {
	if c == nil {
		return [2]string{}
	}
	keys := [2]string{c.AppKey, c.SandboxAppKey}
	if repl != nil {
		for i := range keys {
			keys[i] = repl.ReplaceKnown(keys[i], "")
		}
	}
	return keys
}

// checkVirtualPayment judges the block as written and its keys as
// resolved. Its messages never repeat a key.
func checkVirtualPayment(c *VirtualPaymentConfig, resolved [2]string) error {
	if c == nil {
		return nil
	}
	if c.AppKey == "" && c.SandboxAppKey == "" {
		return errors.New("virtual_payment needs app_key, sandbox_app_key or both")
	}
	for i, written := range []string{c.AppKey, c.SandboxAppKey} {
		name := [2]string{"app_key", "sandbox_app_key"}[i]
		switch {
		case written == "":
		case resolved[i] == "":
			return fmt.Errorf("virtual_payment %s is empty once its placeholders are resolved (is the environment variable or file there?)", name)
		case !isVisibleASCII(resolved[i], maxWechatValueLen):
			return fmt.Errorf("virtual_payment %s is not a WeChat AppKey (printable ASCII without spaces)", name)
		}
	}
	return nil
}

// attachSessionKeys reads the session_keys the app's wechat_login handlers
// keep in this process (the state of the same app_id, endpoint and
// app_secret). Release with releaseSessionKeys.
func (h *APIHandler) attachSessionKeys(endpoint string) {
	h.stateKey = stateKey(h.AppID, endpoint, h.secret)
	value, _, _ := appStates.LoadOrNew(h.stateKey, func() (caddy.Destructor, error) { return newAppState(), nil })
	h.sessionKeys = value.(*appState).sessionKeys
}

func (h *APIHandler) releaseSessionKeys() error {
	if h.sessionKeys == nil {
		return nil
	}
	_, err := appStates.Delete(h.stateKey)
	return err
}

// playerKey is the kept session_key of openid, or the refusal to answer:
// the newest of this process's and, with redis, the fleet's.
func (h *APIHandler) playerKey(ctx context.Context, openid string) (keptSessionKey, *jsonRefusal) {
	if !isVisibleASCII(openid, maxWechatValueLen) {
		return keptSessionKey{}, badRequest("openid must be a WeChat openid")
	}
	now := time.Now()
	kept, ok := h.sessionKeys.lookup(openid, now)
	if h.appRedis != nil {
		if shared, found, _ := h.appRedis.lookupSessionKey(ctx, openid, now); found && (!ok || shared.issuedAt.After(kept.issuedAt)) {
			kept, ok = shared, true
		}
	}
	if !ok {
		return keptSessionKey{}, newRefusal(http.StatusNotFound, refusalSessionKeyUnknown, "the gateway keeps no session_key for this player: they must log in again")
	}
	return kept, nil
}

// gatewayRequest is the JSON body of the gateway's endpoints.
type gatewayRequest struct {
	OpenID        string `json:"openid"`
	EncryptedData string `json:"encrypted_data"`
	IV            string `json:"iv"`
	RawData       string `json:"raw_data"`
	Signature     string `json:"signature"`
	SignData      string `json:"sign_data"`
	Env           *int   `json:"env"`
}

// serveGateway answers a request to the gateway's own endpoints.
func (h *APIHandler) serveGateway(w http.ResponseWriter, r *http.Request, cleanPath string) error {
	start := time.Now()
	status, refusal := h.answerGateway(w, r, strings.TrimPrefix(cleanPath, gatewayPathPrefix))
	if refusal != nil {
		h.logCall(r, refusal.status, refusal.code, start)
		return refuse(w, r, refusal, h.metrics.call)
	}
	h.metrics.call(callGateway)
	h.logCall(r, status, callGateway, start)
	return nil
}

// answerGateway decides and writes the answer of one endpoint, or returns
// the refusal to write.
func (h *APIHandler) answerGateway(w http.ResponseWriter, r *http.Request, endpoint string) (int, *jsonRefusal) {
	switch endpoint {
	case "decrypt", "verify_signature", "sign", "check_session":
	default:
		return 0, newRefusal(http.StatusNotFound, refusalInvalidRequest, "no such gateway endpoint: decrypt, verify_signature, sign and check_session exist")
	}
	if r.Method != http.MethodPost {
		return 0, newRefusal(http.StatusMethodNotAllowed, refusalInvalidRequest, "the gateway's endpoints take POST with a JSON body")
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxGatewayBody))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return 0, newRefusal(http.StatusRequestEntityTooLarge, refusalInvalidRequest, "the request body is too large")
		}
		return 0, badRequest("the request body could not be read")
	}
	var req gatewayRequest
	if json.Unmarshal(body, &req) != nil {
		return 0, badRequest("the body must be a JSON object")
	}
	kept, refusal := h.playerKey(r.Context(), req.OpenID)
	if refusal != nil {
		return 0, refusal
	}
	key := kept.key
	switch endpoint {
	case "decrypt":
		return h.decrypt(w, req, key)
	case "verify_signature":
		if req.RawData == "" || req.Signature == "" {
			return 0, badRequest("raw_data and signature are required")
		}
		return writeGatewayAnswer(w, map[string]bool{"valid": sameSignature(req.Signature, rawDataSignature(req.RawData, key))})
	case "sign":
		return h.signForClient(w, req, key)
	}
	return h.checkSession(w, r, req.OpenID, key)
}

// decrypt answers the player's open data as the JSON object it is, after
// checking that its watermark names this app.
func (h *APIHandler) decrypt(w http.ResponseWriter, req gatewayRequest, key string) (int, *jsonRefusal) {
	ciphertext, ok := decodeOpenData(req.EncryptedData, req.IV)
	if !ok {
		return 0, badRequest("encrypted_data and iv must be the base64 the client received")
	}
	plain, err := ciphertext.decrypt(key)
	if err != nil {
		return 0, newRefusal(http.StatusUnprocessableEntity, refusalDecryptFailed, "the data does not decrypt under the player's latest session_key: it was most likely fetched before their latest wx.login or a reset of their session_key")
	}
	var data struct {
		Watermark struct {
			AppID string `json:"appid"`
		} `json:"watermark"`
	}
	if json.Unmarshal(plain, &data) != nil || data.Watermark.AppID != h.AppID {
		return 0, newRefusal(http.StatusUnprocessableEntity, refusalDecryptFailed, "the decrypted data is not a JSON object watermarked for this app")
	}
	_ = writeJSONBytes(w, http.StatusOK, "application/json", plain)
	return http.StatusOK, nil
}

// signForClient answers the signature and pay_sig of
// wx.requestMidasPaymentGameItem's signData.
func (h *APIHandler) signForClient(w http.ResponseWriter, req gatewayRequest, key string) (int, *jsonRefusal) {
	if req.SignData == "" || req.Env == nil {
		return 0, badRequest("sign_data and env are required")
	}
	// The client pays in signData's env: a pay_sig made with another env's
	// AppKey would only fail at the client.
	switch signEnv, ok := signDataEnv(req.SignData); {
	case !ok:
		return 0, badRequest("sign_data must be the signData of wx.requestMidasPaymentGameItem: a JSON object, with env 0 or 1 if any")
	case signEnv != *req.Env:
		return 0, badRequest(fmt.Sprintf("env is %d but sign_data's env is %d (0 when it has none): they must be the same", *req.Env, signEnv))
	}
	appKey, refusal := h.appKey(*req.Env)
	if refusal != nil {
		return 0, refusal
	}
	return writeGatewayAnswer(w, map[string]string{
		"signature": userStateSignature(key, []byte(req.SignData)),
		"pay_sig":   paySignature(appKey, midasPaymentGameItem, []byte(req.SignData)),
	})
}

// signDataEnv is the env signData pays in (0 when it names none, as at
// WeChat), or false when signData is not a JSON object with an integer
// env.
func signDataEnv(signData string) (int, bool) {
	var fields map[string]json.RawMessage
	if json.Unmarshal([]byte(signData), &fields) != nil || fields == nil {
		return 0, false
	}
	env := 0
	if raw, has := fields["env"]; has && json.Unmarshal(raw, &env) != nil {
		return 0, false
	}
	return env, true
}

// appKey is the configured AppKey of env, or the refusal to sign.
func (h *APIHandler) appKey(env int) (string, *jsonRefusal) {
	if env != 0 && env != 1 {
		return "", badRequest("env must be 0 (production) or 1 (sandbox)")
	}
	if h.appKeys[env] == "" {
		return "", badRequest("wechat_api's virtual_payment has no AppKey for env " + strconv.Itoa(env))
	}
	return h.appKeys[env], nil
}

// checkSession asks WeChat's checksession whether the kept key is still
// the player's.
func (h *APIHandler) checkSession(w http.ResponseWriter, r *http.Request, openid, key string) (int, *jsonRefusal) {
	check := r.Clone(r.Context())
	check.Method, check.Body, check.ContentLength = http.MethodGet, http.NoBody, 0
	check.Header.Del("Content-Type")
	check.URL.Path = "/wxa/checksession"
	check.URL.RawQuery = url.Values{"openid": {openid}, "signature": {userStateSignature(key, nil)}, "sig_method": {"hmac_sha256"}}.Encode()
	answer, _, refusal := h.call(check, check.URL.Path, nil)
	if refusal != nil {
		return 0, refusal
	}
	defer answer.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(answer.Body, maxInspectedAnswer))
	switch errcode, ok := answerErrcode(body); {
	case ok && errcode == 0:
		return writeGatewayAnswer(w, map[string]bool{"valid": true})
	case ok && errcode == errcodeStaleSessionKey:
		return writeGatewayAnswer(w, map[string]bool{"valid": false})
	case ok:
		e := newRefusal(http.StatusBadGateway, refusalBadResponse, "WeChat did not say whether the session is valid")
		e.errcode, e.hasErrcode = errcode, true
		return 0, e
	}
	return 0, newRefusal(http.StatusBadGateway, refusalBadResponse, "WeChat's checksession answer is not its JSON")
}

// errcodeStaleSessionKey is checksession's answer for a key that is not the
// player's latest.
const errcodeStaleSessionKey = 87009

func writeGatewayAnswer(w http.ResponseWriter, v any) (int, *jsonRefusal) {
	_ = writeJSON(w, http.StatusOK, "application/json", v) // maps of strings and bools always encode
	return http.StatusOK, nil
}

// playerSignedAPI is a WeChat API whose calls need the player's
// user-state signature, which the gateway adds when the backend sent none.
type playerSignedAPI struct {
	// payment: the openid and env are the JSON body's, the signature is
	// over the body, and pay_sig (AppKey of env) is added too. Otherwise
	// the openid is the query's and the signature is over "".
	payment bool
}

// playerSignedAPIs are the calls signed on the way: the mini-game virtual
// payment APIs (each of their pages asks for signature and pay_sig) and
// the session_key checks.
var playerSignedAPIs = map[string]playerSignedAPI{
	"/wxa/game/getbalance":     {payment: true},
	"/wxa/game/pay":            {payment: true},
	"/wxa/game/cancelpay":      {payment: true},
	"/wxa/game/present":        {payment: true},
	"/wxa/game/queryorderinfo": {payment: true},
	"/wxa/checksession":        {},
	resetSessionKeyPath:        {},
}

// signForPlayer returns the call to send WeChat: r as it is, or, for a
// call that needs the player's signatures and has none (a backend that
// signs itself is left alone), a copy of r with sig_method, signature with
// the kept session_key (recorded in signedWith) and, for a payment,
// pay_sig with the AppKey of the body's env, over the exact bytes sent.
// r's own URL stays as the backend sent it, so that a log or an error page
// showing {http.request.uri} never shows a signature. Without a kept key
// nothing is sent.
func (h *APIHandler) signForPlayer(r *http.Request, cleanPath string, body requestBody, signedWith *keptSessionKey) (*http.Request, *jsonRefusal) {
	api, ok := playerSignedAPIs[cleanPath]
	if !ok {
		return r, nil
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || query.Has("signature") || query.Has("pay_sig") || (api.payment && h.VirtualPayment == nil) {
		return r, nil
	}
	openid := query.Get("openid")
	var signed []byte // what the user-state signature covers
	var env int
	if api.payment {
		var fields struct {
			OpenID string `json:"openid"`
			Env    *int   `json:"env"`
		}
		if !body.repeatable() || json.Unmarshal(body.head, &fields) != nil || fields.Env == nil {
			return nil, badRequest("a payment call's body must be JSON with openid and env")
		}
		openid, env, signed = fields.OpenID, *fields.Env, body.head
	}
	kept, refusal := h.playerKey(r.Context(), openid)
	if refusal != nil {
		return nil, refusal
	}
	add := url.Values{"sig_method": {"hmac_sha256"}, "signature": {userStateSignature(kept.key, signed)}}
	if api.payment {
		appKey, refusal := h.appKey(env)
		if refusal != nil {
			return nil, refusal
		}
		add.Set("pay_sig", paySignature(appKey, cleanPath, body.head))
	}
	rest := withoutParam(r.URL.RawQuery, "sig_method")
	if rest != "" {
		rest += "&"
	}
	sent, sentURL := r.WithContext(r.Context()), *r.URL
	sentURL.RawQuery = rest + add.Encode()
	sent.URL = &sentURL
	if signedWith != nil {
		*signedWith = kept
	}
	return sent, nil
}

// withoutParam is rawQuery without its name parameters, the others
// untouched.
func withoutParam(rawQuery, name string) string {
	var kept []string
	for param := range strings.SplitSeq(rawQuery, "&") {
		key, _, _ := strings.Cut(param, "=")
		if unescaped, err := url.QueryUnescape(key); param == "" || (err == nil && unescaped == name) {
			continue
		}
		kept = append(kept, param)
	}
	return strings.Join(kept, "&")
}

// keepRotatedKey follows resetusersessionkey's answer when the call reset
// a key the gateway keeps: the custody moves to the new key. A backend the
// gateway signed for (signedWith is the key it signed with) gets the answer
// without the new key (it never held the old one either); one that signed
// itself (forward_session_key) gets it as WeChat sent it, or its own copy
// of the key would be stale for good.
func (h *APIHandler) keepRotatedKey(r *http.Request, cleanPath string, signedWith keptSessionKey, answer *http.Response) {
	if cleanPath != resetSessionKeyPath || answer.StatusCode != http.StatusOK {
		return
	}
	query := r.URL.Query()
	openid := query.Get("openid")
	// Whether the backend gets the new key depends only on who signed: a
	// gateway-signed call never hands it over, even when the key kept by
	// now is another (a login meanwhile).
	gatewaySigned := signedWith.key != ""
	reset := signedWith
	if !gatewaySigned {
		kept, refusal := h.playerKey(r.Context(), openid)
		if refusal != nil || !sameSignature(query.Get("signature"), userStateSignature(kept.key, nil)) {
			return // a key the gateway does not keep
		}
		reset = kept
	}
	body, err := io.ReadAll(io.LimitReader(answer.Body, maxInspectedAnswer))
	answer.Body.Close()
	if err != nil {
		body = nil // a broken answer, which may hold part of the key
	}
	answer.Body, answer.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return
	}
	var rotated struct {
		Errcode    int    `json:"errcode"`
		OpenID     string `json:"openid"`
		SessionKey string `json:"session_key"`
	}
	if json.Unmarshal(body, &rotated) == nil &&
		rotated.Errcode == 0 && rotated.OpenID == openid && isVisibleASCII(rotated.SessionKey, maxWechatValueLen) {
		h.keepRotation(r.Context(), openid, reset, rotated.SessionKey)
	}
	if !gatewaySigned {
		return
	}
	delete(fields, "session_key")
	body, _ = json.Marshal(fields) // raw JSON values always encode
	answer.Body, answer.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
}

// keepRotation moves the custody of openid from old, the key the reset was
// signed with (as looked up then), to successor, which keeps old's issue
// time (and so its expiry, as at WeChat): in this process if old is still
// the key kept there, and with redis in the fleet, where a newer login's
// key wins as always.
func (h *APIHandler) keepRotation(ctx context.Context, openid string, old keptSessionKey, successor string) {
	h.sessionKeys.replace(openid, old.key, successor)
	if h.appRedis != nil {
		h.appRedis.keepSessionKey(ctx, openid, successor, old.issuedAt)
	}
}

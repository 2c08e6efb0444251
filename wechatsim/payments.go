package wechatsim

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"regexp"
)

// Mini-game virtual payment (虚拟支付 2.0) and session_key endpoints.
const (
	getBalancePath      = "/wxa/game/getbalance"
	payPath             = "/wxa/game/pay"
	cancelPayPath       = "/wxa/game/cancelpay"
	presentPath         = "/wxa/game/present"
	resetSessionKeyPath = "/wxa/resetusersessionkey"
)

// Errcodes of the payment APIs, as their pages list them.
const (
	errcodeOrderMissing      = 90000
	errcodeBadSignature      = 90010 // the user-state signature does not match the player's session_key
	errcodeBadPaySig         = 90011
	errcodeOrderExists       = 90012
	errcodeBalanceLow        = 90013
	errcodeSessionKeyExpired = 90016 // no valid session_key for the player: log in again
	errcodeBadParam          = 90018
)

// Environments of a payment request's env field.
const (
	EnvProduction = 0
	EnvSandbox    = 1
)

// account is one player's game currency in one app and environment.
type account struct {
	balance, present             int64 // present is the part of balance that was given, not bought
	sumSave, sumPresent, sumCost int64
	payments                     map[string]int64 // pay bill_no → amount still deducted
	cancels, presents            map[string]bool  // bill_nos seen
	firstSaveDone                bool
}

type accountKey struct {
	appid, openid string
	env           int
}

// paymentRequest is the part of a payment API's body the simulator reads.
type paymentRequest struct {
	OpenID    string `json:"openid"`
	OfferID   string `json:"offer_id"`
	TS        int64  `json:"ts"`
	ZoneID    string `json:"zone_id"`
	Env       *int   `json:"env"`
	Amount    int64  `json:"amount"`
	BillNo    string `json:"bill_no"`
	PayBillNo string `json:"pay_bill_no"`
}

// billNoPattern is what WeChat accepts as a bill_no: up to 63 letters,
// digits, '_', '-' and '*', not starting with '_'.
var billNoPattern = regexp.MustCompile(`^[0-9A-Za-z*\-][0-9A-Za-z_*\-]{0,62}$`)

// Deposit adds amount bought coins to the player's balance, as a completed
// wx.requestMidasPayment would.
func (s *Server) Deposit(appid, openid string, env int, amount int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.account(accountKey{appid, openid, env})
	a.balance += amount
	a.sumSave += amount
	a.firstSaveDone = true
}

// Balance is the player's balance (bought and given coins).
func (s *Server) Balance(appid, openid string, env int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.account(accountKey{appid, openid, env}).balance
}

// account returns the account of k, opening it. Callers hold s.mu.
func (s *Server) account(k accountKey) *account {
	a, ok := s.accounts[k]
	if !ok {
		a = &account{payments: map[string]int64{}, cancels: map[string]bool{}, presents: map[string]bool{}}
		s.accounts[k] = a
	}
	return a
}

// paymentCall checks a payment API call as WeChat does: a valid token, a
// POST of JSON, pay_sig = hex HMAC-SHA256(AppKey of env, path + "&" + body)
// and signature = hex HMAC-SHA256(the player's latest session_key, body),
// sig_method hmac_sha256. It returns the account and request, or the
// failure to answer. Callers hold s.mu.
func (s *Server) paymentCall(r *http.Request, body []byte) (*account, paymentRequest, *failure) {
	s.record(r, body)
	if failed := s.checkToken(r); failed != nil {
		return nil, paymentRequest{}, failed
	}
	fail := func(code int, msg string) (*account, paymentRequest, *failure) {
		f := s.fail(code, msg)
		return nil, paymentRequest{}, &f
	}
	if r.Method != http.MethodPost {
		return fail(43002, "require POST method")
	}
	var req paymentRequest
	if json.Unmarshal(body, &req) != nil || req.OpenID == "" || req.OfferID == "" || req.ZoneID == "" || req.TS == 0 || req.Env == nil {
		return fail(errcodeBadParam, "post data type not right")
	}
	token, _ := s.tokenState(r.URL.Query().Get("access_token"), s.now())
	app := s.apps[appKey{WeChat, token.appid}]
	payKey := app.AppKey
	switch *req.Env {
	case EnvProduction:
	case EnvSandbox:
		payKey = app.SandboxAppKey
	default:
		return fail(errcodeBadParam, "invalid env")
	}
	q := r.URL.Query()
	if payKey == "" || !hmac.Equal([]byte(q.Get("pay_sig")), []byte(hexHMAC(payKey, append([]byte(r.URL.Path+"&"), body...)))) {
		return fail(errcodeBadPaySig, "[pay_sig] pay_sig is invalid")
	}
	sessionKey, known := s.sessionKeys[req.OpenID]
	if !known {
		return fail(errcodeSessionKeyExpired, "sessionkey fail")
	}
	if q.Get("sig_method") != "hmac_sha256" || !hmac.Equal([]byte(q.Get("signature")), []byte(hexHMAC(sessionKey, body))) {
		return fail(errcodeBadSignature, "[signature] signature is invalid")
	}
	if s.busy() {
		return fail(-1, "system error")
	}
	return s.account(accountKey{token.appid, req.OpenID, *req.Env}), req, nil
}

// hexHMAC is hex HMAC-SHA256(key as text, msg): both payment signatures.
func hexHMAC(key string, msg []byte) string {
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}

type okAnswer struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

// getBalance answers POST /wxa/game/getbalance. Callers hold s.mu.
func (s *Server) getBalance(r *http.Request, body []byte) any {
	a, _, failed := s.paymentCall(r, body)
	if failed != nil {
		return failed
	}
	return struct {
		okAnswer
		Balance        int64 `json:"balance"`
		PresentBalance int64 `json:"present_balance"`
		SumSave        int64 `json:"sum_save"`
		SumPresent     int64 `json:"sum_present"`
		SumBalance     int64 `json:"sum_balance"`
		SumCost        int64 `json:"sum_cost"`
		FirstSave      bool  `json:"first_save"`
	}{okAnswer{0, "ok"}, a.balance, a.present, a.sumSave, a.sumPresent, a.sumSave + a.sumPresent, a.sumCost, !a.firstSaveDone}
}

// pay answers POST /wxa/game/pay: deducts amount, given coins first; a
// bill_no already used is 90012 and deducts nothing. Callers hold s.mu.
func (s *Server) pay(r *http.Request, body []byte) any {
	a, req, failed := s.paymentCall(r, body)
	switch {
	case failed != nil:
		return failed
	case req.Amount <= 0 || !billNoPattern.MatchString(req.BillNo):
		return s.fail(errcodeBadParam, "invalid amount or bill_no")
	case a.payments[req.BillNo] != 0:
		return s.fail(errcodeOrderExists, "bill_no exists")
	case a.balance < req.Amount:
		return s.fail(errcodeBalanceLow, "balance not enough")
	}
	usedPresent := min(a.present, req.Amount)
	a.present -= usedPresent
	a.balance -= req.Amount
	a.sumCost += req.Amount
	a.payments[req.BillNo] = req.Amount
	return struct {
		okAnswer
		BillNo            string `json:"bill_no"`
		Balance           int64  `json:"balance"`
		UsedPresentAmount int64  `json:"used_present_amount"`
	}{okAnswer{0, "ok"}, req.BillNo, a.balance, usedPresent}
}

// cancelPay answers POST /wxa/game/cancelpay: gives back up to what the
// payment pay_bill_no deducted. Callers hold s.mu.
func (s *Server) cancelPay(r *http.Request, body []byte) any {
	a, req, failed := s.paymentCall(r, body)
	switch {
	case failed != nil:
		return failed
	case req.Amount <= 0 || !billNoPattern.MatchString(req.BillNo):
		return s.fail(errcodeBadParam, "invalid amount or bill_no")
	case a.cancels[req.BillNo]:
		return s.fail(errcodeOrderExists, "bill_no exists")
	case a.payments[req.PayBillNo] == 0:
		return s.fail(errcodeOrderMissing, "order not exist")
	case a.payments[req.PayBillNo] < req.Amount:
		return s.fail(errcodeBadParam, "amount exceeds the payment")
	}
	a.cancels[req.BillNo] = true
	a.payments[req.PayBillNo] -= req.Amount
	a.balance += req.Amount
	a.sumCost -= req.Amount
	return struct {
		okAnswer
		BillNo string `json:"bill_no"`
	}{okAnswer{0, "ok"}, req.BillNo}
}

// present answers POST /wxa/game/present: gives the player amount coins.
// Callers hold s.mu.
func (s *Server) present(r *http.Request, body []byte) any {
	a, req, failed := s.paymentCall(r, body)
	switch {
	case failed != nil:
		return failed
	case req.Amount <= 0 || !billNoPattern.MatchString(req.BillNo):
		return s.fail(errcodeBadParam, "invalid amount or bill_no")
	case a.presents[req.BillNo]:
		return s.fail(errcodeOrderExists, "bill_no exists")
	}
	a.presents[req.BillNo] = true
	a.balance += req.Amount
	a.present += req.Amount
	a.sumPresent += req.Amount
	return struct {
		okAnswer
		BillNo  string `json:"bill_no"`
		Balance int64  `json:"balance"`
	}{okAnswer{0, "ok"}, req.BillNo, a.balance}
}

// resetSessionKey answers GET /wxa/resetusersessionkey: a signature of ""
// with the player's latest session_key earns a new key, which replaces it.
// Callers hold s.mu.
func (s *Server) resetSessionKey(r *http.Request, body []byte) any {
	s.record(r, body)
	if failed := s.checkToken(r); failed != nil {
		return failed
	}
	q := r.URL.Query()
	openid := q.Get("openid")
	sessionKey, known := s.sessionKeys[openid]
	switch {
	case q.Get("sig_method") != "hmac_sha256":
		return s.fail(87008, "invalid sig_method")
	case !known || !hmac.Equal([]byte(q.Get("signature")), []byte(SessionSignature(sessionKey))):
		return s.fail(87009, "invalid signature")
	}
	fresh := s.sessionKey()
	s.remember(fresh)
	s.sessionKeys[openid] = fresh
	return struct {
		okAnswer
		OpenID     string `json:"openid"`
		SessionKey string `json:"session_key"`
	}{okAnswer{0, "ok"}, openid, fresh}
}

// Encrypt returns what a client of appid gets from an open-data API (such
// as wx.getGroupEnterInfo) for the player openid: plaintext encrypted as
// WeChat does, AES-128-CBC with PKCS#7 padding, the key being the player's
// latest session_key base64-decoded, and a fresh iv, both base64. ok is
// false when the player has no session_key (never logged in).
func (s *Server) Encrypt(openid string, plaintext []byte) (encryptedData, iv string, ok bool) {
	s.mu.Lock()
	sessionKey, known := s.sessionKeys[openid]
	var ivBytes [aes.BlockSize]byte
	binary.LittleEndian.PutUint64(ivBytes[:8], s.rng.Uint64())
	binary.LittleEndian.PutUint64(ivBytes[8:], s.rng.Uint64())
	s.mu.Unlock()
	if !known {
		return "", "", false
	}
	key, _ := base64.StdEncoding.DecodeString(sessionKey) // the simulator issued it: 16 bytes
	return base64.StdEncoding.EncodeToString(encryptOpenData(key, ivBytes[:], plaintext)), base64.StdEncoding.EncodeToString(ivBytes[:]), true
}

// encryptOpenData is AES-128-CBC of plaintext, PKCS#7-padded.
func encryptOpenData(key, iv, plaintext []byte) []byte {
	block, _ := aes.NewCipher(key) // 16 bytes: the simulator's own keys and WeChat's
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	padded := append(append([]byte(nil), plaintext...), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(padded, padded)
	return padded
}

// SignRawData is the signature a client's wx.getUserInfo-style call gives
// with rawData for the player openid: hex sha1(rawData + session_key). ok is
// false when the player has no session_key.
func (s *Server) SignRawData(openid, rawData string) (signature string, ok bool) {
	s.mu.Lock()
	sessionKey, known := s.sessionKeys[openid]
	s.mu.Unlock()
	sum := sha1.Sum([]byte(rawData + sessionKey))
	return hex.EncodeToString(sum[:]), known
}

// errcodeMidasSignatureInvalid is what wx.requestMidasPaymentGameItem
// fails with when paySig or signature is wrong ("SIGNATURE INVALID").
const errcodeMidasSignatureInvalid = -15012

// RequestMidasPaymentGameItem checks a client's wx.requestMidasPaymentGameItem
// as WeChat would for the player openid of appid: paySig = hex
// HMAC-SHA256(AppKey of signData's env, "requestMidasPaymentGameItem&" +
// signData), signature = hex HMAC-SHA256(the latest session_key, signData).
// It returns the client's errCode: 0, or -15012.
func (s *Server) RequestMidasPaymentGameItem(appid, openid, signData, paySig, signature string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var fields struct {
		Env int `json:"env"`
	}
	app := s.apps[appKey{WeChat, appid}]
	payKey := app.AppKey
	if json.Unmarshal([]byte(signData), &fields) == nil && fields.Env == EnvSandbox {
		payKey = app.SandboxAppKey
	}
	sessionKey, known := s.sessionKeys[openid]
	if !known || payKey == "" ||
		!hmac.Equal([]byte(paySig), []byte(hexHMAC(payKey, []byte("requestMidasPaymentGameItem&"+signData)))) ||
		!hmac.Equal([]byte(signature), []byte(hexHMAC(sessionKey, []byte(signData)))) {
		return errcodeMidasSignatureInvalid
	}
	return 0
}

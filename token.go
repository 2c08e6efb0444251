package wechatlogin

// Session tokens are HS256 JWTs (RFC 7519), issued at login and verified on
// every later request of the player. docs/sessions.md is their contract.
//
// They are written and read here by hand, with no JWT library in production
// code: verification runs on every proxied request, whose whole cost must
// stay within 3% of a plain reverse_proxy. BenchmarkTokenVerify measures
// verify against the fastest golang-jwt v5.3.1 setup for these tokens
// (ParseWithClaims into a struct embedding RegisteredClaims, with
// WithValidMethods HS256, WithStrictDecoding, WithLeeway,
// WithExpirationRequired, WithIssuedAt, a VerificationKeySet of two keys),
// side by side in one binary, 10 rounds alternating, on 2 shared cores:
//
//	              time/op, median (range)   B/op   allocs/op
//	this file      0.77µs (0.56–1.9)            64          2
//	golang-jwt     8.6µs  (4.2–59)            2944         49
//
// golang-jwt took 7.9 times as long in the median round (5.7 at least) and
// allocates 25 times as often, so it stays out. (Since then the openid and
// unionid strings share one allocation: verify makes one.) In exchange, token_test.go
// fuzzes this verifier for agreement with golang-jwt
// (FuzzTokenAgreesWithGolangJWT): every token, whatever its header, is
// accepted by both with the same identity, or refused by both.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxClockSkew is the leeway given to a token's exp, nbf and iat, as RFC 7519
// allows: gateways behind one load balancer verify each other's tokens, and
// their clocks differ a little.
const maxClockSkew = 60 * time.Second

// tokenHeader is the encoded JOSE header of every token the gateway issues.
// verify compares a token's header with it as a string, so that the
// gateway's own tokens never pay for JSON parsing; any other header is read
// by acceptableHeader, once the signature has proved it a key holder's.
var tokenHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// refusedHeaderParams are the JOSE header parameters that would change how
// a token is read or which key checks it (RFC 7515 §4.1, RFC 7797): a token
// carrying one is refused rather than read as if it did not. kid is not
// among them: every configured secret is tried whatever it names.
var refusedHeaderParams = []string{"crit", "b64", "jku", "jwk", "x5u", "x5c"}

// signatureLen is the length of an encoded HS256 signature: 32 bytes in
// unpadded base64url.
const signatureLen = 43

// maxSessionTokenLen bounds a token: the claims issue writes come to about 300
// bytes, and a client must not make the gateway hash megabytes per request.
const maxSessionTokenLen = 4096

// strictRawURL refuses the spellings of a segment that differ only in unused
// trailing bits, so that a token has exactly one valid form.
var strictRawURL = base64.RawURLEncoding.Strict()

// maxNumericDate bounds exp, nbf and iat, in seconds either side of 1970:
// beyond 2^53, float64 (what JSON libraries read numbers into) no longer
// holds every whole second, and libraries disagree about such dates.
const maxNumericDate = 1 << 53

var (
	errNoSession          = errors.New("no session token")
	errMalformedSession   = errors.New("session token is malformed")
	errSessionSignature   = errors.New("session token signature is invalid")
	errSessionExpired     = errors.New("session token has expired")
	errSessionNotYetValid = errors.New("session token is not valid yet")
	errSessionAudience    = errors.New("session token is meant for an audience this gateway is not")
	errForeignSession     = errors.New("session token was issued for another app")
)

// sessionTokens issues and verifies the tokens of a handler's apps: one
// format for all, each token naming its app (appid, and platform unless it
// is WeChat's, so that a WeChat token reads as it always did). Safe for
// concurrent use: nothing in it changes after provision.
type sessionTokens struct {
	apps []*loginApp
	keys []hmacKey // the first signs; all verify
	ttl  time.Duration
	now  func() time.Time
}

// hmacKey is one HMAC key with a pool of hashes keyed with it, so that
// verifying a token neither allocates nor takes a shared lock.
type hmacKey struct {
	secret []byte
	macs   *sync.Pool // of *pooledMAC
}

// pooledMAC is an HMAC with room for its input and output: hash.Hash takes
// and returns byte slices, which would otherwise be allocated per token.
type pooledMAC struct {
	hash.Hash
	input []byte
	sum   [sha256.Size]byte
}

// maxPooledInput bounds the input buffer a pooled HMAC keeps, so that one
// huge token does not pin memory.
const maxPooledInput = 4 << 10

func newSessionTokens(apps []*loginApp, secrets [][]byte, ttl time.Duration, now func() time.Time) *sessionTokens {
	t := &sessionTokens{apps: apps, ttl: ttl, now: now}
	for _, secret := range secrets {
		t.keys = append(t.keys, hmacKey{secret: secret, macs: &sync.Pool{
			New: func() any { return &pooledMAC{Hash: hmac.New(sha256.New, secret)} },
		}})
	}
	return t
}

// sessionClaims are a token's claims: those issue writes, and those verify
// reads. Nothing in them is secret: a token is signed, not encrypted, and
// clients can read it.
type sessionClaims struct {
	Subject         string `json:"sub,omitempty"` // the openid; absent for an anonymous player
	AppID           string `json:"appid"`
	Platform        string `json:"platform,omitempty"` // absent for WeChat
	UnionID         string `json:"unionid,omitempty"`
	AnonymousOpenID string `json:"anonymous_openid,omitempty"`
	IssuedAt        int64  `json:"iat"`
	ExpiresAt       int64  `json:"exp"`

	// notBefore is read, never written: a token signed with the key
	// elsewhere (by a backend) may carry one.
	notBefore int64
	present   claimSet // of exp, nbf, iat and aud: which the token carries
}

// claimSet records which optional registered claims a token carries.
type claimSet uint8

const (
	hasExpiresAt claimSet = 1 << iota
	hasNotBefore
	hasIssuedAt
	hasAudience
)

// issue signs a token for id at app, valid from now for the configured ttl.
// It runs on every successful login, cached ones included, so the token is
// built in one buffer and allocated once: the claims are written by hand,
// byte for byte as encoding/json writes sessionClaims (BenchmarkTokenIssue:
// 1.3µs and 8 allocations with json.Marshal and string concatenation).
func (t *sessionTokens) issue(app *loginApp, id Identity) (token string, expires time.Time) {
	now := t.now()
	expires = now.Add(t.ttl).Truncate(time.Second)
	var claimsBuf [maxFlatPayload]byte
	claims := appendClaims(claimsBuf[:0], sessionClaims{
		Subject:         id.OpenID,
		AppID:           app.appID,
		Platform:        app.tokenPlatform(),
		UnionID:         id.UnionID,
		AnonymousOpenID: id.AnonymousOpenID,
		IssuedAt:        now.Unix(),
		ExpiresAt:       expires.Unix(),
	})
	var tokenBuf [2 * maxFlatPayload]byte
	buf := append(append(tokenBuf[:0], tokenHeader...), '.')
	buf = base64.RawURLEncoding.AppendEncode(buf, claims)
	signed := len(buf)
	var mac [sha256.Size]byte
	buf = base64.RawURLEncoding.AppendEncode(append(buf, '.'), hmacSum(t.keys[0], buf[:signed], mac[:0]))
	return string(buf), expires
}

// appendClaims appends c as json.Marshal writes it: the fields in order,
// the optional ones omitted when empty.
func appendClaims(buf []byte, c sessionClaims) []byte {
	buf = append(buf, '{')
	if c.Subject != "" {
		buf = appendJSONString(append(buf, `"sub":`...), c.Subject)
		buf = append(buf, ',')
	}
	buf = appendJSONString(append(buf, `"appid":`...), c.AppID)
	buf = appendOptionalClaim(buf, `,"platform":`, c.Platform)
	buf = appendOptionalClaim(buf, `,"unionid":`, c.UnionID)
	buf = appendOptionalClaim(buf, `,"anonymous_openid":`, c.AnonymousOpenID)
	buf = strconv.AppendInt(append(buf, `,"iat":`...), c.IssuedAt, 10)
	buf = strconv.AppendInt(append(buf, `,"exp":`...), c.ExpiresAt, 10)
	return append(buf, '}')
}

// appendOptionalClaim appends name and value unless value is empty
// (omitempty).
func appendOptionalClaim(buf []byte, name, value string) []byte {
	if value == "" {
		return buf
	}
	return appendJSONString(append(buf, name...), value)
}

// appendJSONString appends s as a JSON string the way encoding/json does:
// as it is when it is printable ASCII that needs no escape (openids,
// unionids and app_ids are), through encoding/json otherwise.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if jsonBytes[s[i]]&writtenAsIs == 0 {
			quoted, _ := json.Marshal(s) // a string always marshals (invalid UTF-8 as U+FFFD)
			return append(buf, quoted...)
		}
	}
	return append(append(append(buf, '"'), s...), '"')
}

// jsonBytes classes the bytes of a JSON string, for the loops above and
// below that run over every byte of a token's claims: a table look-up
// rather than a chain of comparisons.
var jsonBytes = func() (classes [256]uint8) {
	for c := 0x20; c < 0x7f; c++ {
		if c != '"' && c != '\\' {
			classes[c] |= readAsIs
			if c != '<' && c != '>' && c != '&' {
				classes[c] |= writtenAsIs
			}
		}
	}
	return classes
}()

const (
	// readAsIs: printable ASCII that is not '"' or '\\', which stands for
	// itself in a JSON string.
	readAsIs = 1 << iota
	// writtenAsIs: those of readAsIs that encoding/json writes as they
	// are (it escapes <, > and & for HTML).
	writtenAsIs
)

// verifyWithin returns the identity a token proves, and its app, accepting
// it up to expiredFor past its expiry; or why it proves none, with the app
// its signed claims name when they name one of the handler's (an expired
// token's, say: its refusal is counted under that app), else nil.
// It runs on every game request: the signature is checked with a pooled
// hash before anything of the header or the payload is read, the header
// compared as a string, and the claims as issue writes them read without
// reflection.
func (t *sessionTokens) verifyWithin(token string, expiredFor time.Duration) (Identity, *loginApp, error) {
	if len(token) > maxSessionTokenLen { // refused before any hashing: a huge token costs nothing
		return Identity{}, nil, errMalformedSession
	}
	header, rest, ok := strings.Cut(token, ".")
	if !ok {
		return Identity{}, nil, errMalformedSession
	}
	payload, signature, ok := strings.Cut(rest, ".")
	if !ok || len(signature) != signatureLen {
		return Identity{}, nil, errMalformedSession
	}
	var encoded [signatureLen]byte // copied so that decoding it allocates nothing
	var mac, want [sha256.Size]byte
	if n, err := strictRawURL.Decode(mac[:], encoded[:copy(encoded[:], signature)]); err != nil || n != sha256.Size {
		return Identity{}, nil, errMalformedSession
	}
	if !t.signedByAKey(token[:len(header)+1+len(payload)], mac[:], want[:0]) {
		return Identity{}, nil, errSessionSignature
	}
	// A header other than the gateway's own is JSON-parsed only now: a
	// forgery costs the HMAC and nothing more.
	if header != tokenHeader && !acceptableHeader(header) {
		return Identity{}, nil, errMalformedSession
	}

	// A payload as issue writes it is decoded on the stack; others, which
	// only a holder of the key can have signed, may cost allocations.
	var encodedPayload [maxFlatPayload * 4 / 3]byte
	var decodedPayload [maxFlatPayload]byte
	var raw []byte
	if len(payload) <= len(encodedPayload) {
		n, err := strictRawURL.Decode(decodedPayload[:], encodedPayload[:copy(encodedPayload[:], payload)])
		if err != nil {
			return Identity{}, nil, errMalformedSession
		}
		raw = decodedPayload[:n]
	} else {
		var err error
		if raw, err = strictRawURL.DecodeString(payload); err != nil {
			return Identity{}, nil, errMalformedSession
		}
	}
	var claims sessionClaims
	if !claims.parseFlat(raw, t.apps) {
		claims = sessionClaims{}
		// A copy: what encoding/json is given escapes to the heap, and the
		// fast path's buffer must not.
		if err := claims.parseJSON(bytes.Clone(raw)); err != nil {
			return Identity{}, nil, err
		}
	}
	app := t.appOf(claims)
	id, err := claims.identity(t.now(), expiredFor)
	switch {
	case err != nil:
		return Identity{}, app, err
	case app == nil:
		return Identity{}, nil, errForeignSession
	}
	return id, app, nil
}

// appOf is the app a token's claims name, nil if none of the handler's.
func (t *sessionTokens) appOf(c sessionClaims) *loginApp {
	for _, app := range t.apps {
		if app.appID == c.AppID && app.tokenPlatform() == c.Platform {
			return app
		}
	}
	return nil
}

// tokenPlatform is the platform claim of the app's tokens: none for
// WeChat, whose tokens predate platforms.
func (a *loginApp) tokenPlatform() string {
	if a.platform == wechatPlatform {
		return ""
	}
	return a.platform.name
}

// acceptableHeader reports whether an encoded JOSE header other than the
// gateway's own is one verify accepts, as JWT libraries write them: a JSON
// object with alg exactly "HS256", typ absent or "JWT", no parameter of
// refusedHeaderParams, and no member named twice (RFC 7515 §4 lets a
// parser refuse duplicates; reading only the last, as some libraries do,
// would let two readers see two different headers). Members may come in
// any order, with JSON whitespace anywhere; others (kid, cty…) are ignored.
func acceptableHeader(encoded string) bool {
	raw, err := strictRawURL.DecodeString(encoded)
	if err != nil {
		return false
	}
	members, ok := jsonObjectMembers(raw)
	if !ok {
		return false
	}
	for _, name := range refusedHeaderParams {
		if _, present := members[name]; present {
			return false
		}
	}
	if typ, present := members["typ"]; present {
		if s, err := jsonString(typ); err != nil || s != "JWT" {
			return false
		}
	}
	alg, err := jsonString(members["alg"])
	return err == nil && alg == "HS256"
}

// jsonObjectMembers reads b as one JSON object, its members by name (names
// unescaped), and reports false when b is anything else or names a member
// twice.
func jsonObjectMembers(b []byte) (map[string]json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if open, err := dec.Token(); err != nil || open != json.Delim('{') {
		return nil, false
	}
	members := make(map[string]json.RawMessage)
	for dec.More() {
		token, err := dec.Token()
		name, isName := token.(string)
		if err != nil || !isName {
			return nil, false
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, false
		}
		if _, seen := members[name]; seen {
			return nil, false
		}
		members[name] = value
	}
	if closing, err := dec.Token(); err != nil || closing != json.Delim('}') {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // something after the object
	}
	return members, true
}

// maxFlatPayload is the largest decoded payload verify reads without
// allocating: a token issue writes is about half of it.
const maxFlatPayload = 384

// identity applies RFC 7519's rules and the gateway's own to claims whose
// signature and types have been checked; the caller checks that they name
// one of its apps.
func (c *sessionClaims) identity(now time.Time, expiredFor time.Duration) (Identity, error) {
	switch {
	case c.present&hasAudience != 0:
		// The gateway claims no audience, and RFC 7519 requires refusing
		// a token whose aud does not name the one reading it.
		return Identity{}, errSessionAudience
	case c.present&hasExpiresAt == 0:
		return Identity{}, errMalformedSession
	case !now.Before(time.Unix(c.ExpiresAt, 0).Add(maxClockSkew + expiredFor)):
		return Identity{}, errSessionExpired
	case c.present&hasNotBefore != 0 && now.Before(time.Unix(c.notBefore, 0).Add(-maxClockSkew)),
		c.present&hasIssuedAt != 0 && now.Before(time.Unix(c.IssuedAt, 0).Add(-maxClockSkew)):
		return Identity{}, errSessionNotYetValid
	case c.Subject == "" && c.AnonymousOpenID == "",
		!isHeaderValue(c.Subject) || !isHeaderValue(c.UnionID) || !isHeaderValue(c.AnonymousOpenID):
		// They become header values upstream.
		return Identity{}, errMalformedSession
	}
	return Identity{OpenID: c.Subject, UnionID: c.UnionID, AnonymousOpenID: c.AnonymousOpenID}, nil
}

// isHeaderValue reports whether s can be sent as an HTTP header value as it
// is: no control characters.
func isHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// parseFlat reads the claims the way issue writes them: a flat JSON object
// of the keys sub, appid, platform, unionid, anonymous_openid (plain
// strings: printable ASCII, no escapes), iat, nbf and exp (whole numbers of
// at most 15 digits). It reports false for anything else, which parseJSON
// then reads; it exists because reflection-based decoding was the largest
// cost of a verified request. Repeated keys keep the last value, as
// encoding/json does. An appid or platform equal to one of apps' is not
// copied.
func (c *sessionClaims) parseFlat(b []byte, apps []*loginApp) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	last := len(b) - 1
	var subject, unionID []byte // turned into strings once, at the end
	for i := 1; i < last; {
		key, next, ok := flatString(b, i)
		if !ok || next >= last || b[next] != ':' {
			return false
		}
		i = next + 1
		var text []byte
		var number int64
		switch string(key) {
		case "sub", "appid", "platform", "unionid", "anonymous_openid":
			text, i, ok = flatString(b, i)
		case "iat", "nbf", "exp":
			number, i, ok = flatInt(b, i)
		default:
			return false // not a key issue writes: let encoding/json decide
		}
		if !ok {
			return false
		}
		switch string(key) {
		case "sub":
			subject = text
		case "appid":
			c.AppID = knownOr(text, apps, func(a *loginApp) string { return a.appID })
		case "platform":
			c.Platform = knownOr(text, apps, (*loginApp).tokenPlatform)
		case "unionid":
			unionID = text
		case "anonymous_openid":
			c.AnonymousOpenID = string(text)
		case "iat":
			c.IssuedAt, c.present = number, c.present|hasIssuedAt
		case "nbf":
			c.notBefore, c.present = number, c.present|hasNotBefore
		case "exp":
			c.ExpiresAt, c.present = number, c.present|hasExpiresAt
		}
		if i < last && b[i] == ',' && i+1 < last {
			i++
		} else if i != last {
			return false
		}
	}
	c.Subject, c.UnionID = twoStrings(subject, unionID)
	return true
}

// knownOr is text as a string: one of apps' own (of), which costs no
// allocation, when it equals one.
func knownOr(text []byte, apps []*loginApp, of func(*loginApp) string) string {
	for _, app := range apps {
		if known := of(app); string(text) == known {
			return known
		}
	}
	return string(text)
}

// twoStrings returns a and b as strings sharing one allocation.
func twoStrings(a, b []byte) (string, string) {
	var joined strings.Builder
	joined.Grow(len(a) + len(b))
	joined.Write(a)
	joined.Write(b)
	s := joined.String()
	return s[:len(a)], s[len(a):]
}

// flatString reads a JSON string of plain printable ASCII at b[i], returning
// its contents and the index after it.
func flatString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	j := i + 1
	for j < len(b) && jsonBytes[b[j]]&readAsIs != 0 {
		j++
	}
	if j < len(b) && b[j] == '"' {
		return b[i+1 : j], j + 1, true
	}
	return nil, i, false // escapes, control bytes, non-ASCII: encoding/json's job
}

// flatInt reads a non-negative whole number of at most 15 digits at b[i],
// in JSON's form (no leading zeros).
func flatInt(b []byte, i int) (int64, int, bool) {
	var n int64
	j := i
	for ; j < len(b) && j-i < 15 && '0' <= b[j] && b[j] <= '9'; j++ {
		n = n*10 + int64(b[j]-'0')
	}
	if j == i || (j-i > 1 && b[i] == '0') || (j < len(b) && '0' <= b[j] && b[j] <= '9') {
		return 0, i, false
	}
	return n, j, true
}

// parseJSON reads any claims set, checking the type of every claim the
// gateway knows: sub, iss, jti, appid and unionid are strings; exp, nbf and
// iat are NumericDates (JSON numbers, read to the whole second below them).
// Other claims are ignored, as RFC 7519 asks. Repeated keys keep the last
// value.
func (c *sessionClaims) parseJSON(payload []byte) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(payload, &members); err != nil || members == nil {
		return errMalformedSession
	}
	for name, value := range members {
		var err error
		switch name {
		case "sub":
			c.Subject, err = jsonString(value)
		case "appid":
			c.AppID, err = jsonString(value)
		case "platform":
			c.Platform, err = jsonString(value)
		case "unionid":
			c.UnionID, err = jsonString(value)
		case "anonymous_openid":
			c.AnonymousOpenID, err = jsonString(value)
		case "iss", "jti":
			_, err = jsonString(value)
		case "exp":
			c.ExpiresAt, err = numericDate(value)
			c.present |= hasExpiresAt
		case "nbf":
			c.notBefore, err = numericDate(value)
			c.present |= hasNotBefore
		case "iat":
			c.IssuedAt, err = numericDate(value)
			c.present |= hasIssuedAt
		case "aud":
			c.present |= hasAudience
		}
		if err != nil {
			return errMalformedSession
		}
	}
	return nil
}

var errClaimType = errors.New("claim of the wrong type")

// jsonString reads a claim that must be a JSON string (null is not one).
func jsonString(value json.RawMessage) (string, error) {
	var s string
	if len(value) == 0 || value[0] != '"' {
		return "", errClaimType
	}
	err := json.Unmarshal(value, &s)
	return s, err
}

// numericDate reads a claim that must be a JSON number of seconds since
// 1970, within maxNumericDate, as the whole second at or before it.
func numericDate(value json.RawMessage) (int64, error) {
	if len(value) == 0 || (value[0] != '-' && (value[0] < '0' || value[0] > '9')) {
		return 0, errClaimType
	}
	f, err := strconv.ParseFloat(string(value), 64)
	if err != nil || math.Abs(f) >= maxNumericDate {
		return 0, errClaimType
	}
	return int64(math.Floor(f)), nil
}

// signedByAKey reports whether mac is the HMAC of signed under one of the
// keys, comparing in constant time.
func (t *sessionTokens) signedByAKey(signed string, mac, buf []byte) bool {
	for _, key := range t.keys {
		if hmac.Equal(hmacSum(key, signed, buf), mac) {
			return true
		}
	}
	return false
}

// hmacSum appends the HMAC-SHA256 of signed under k to buf. signed is
// copied into the pooled buffer first: handed to the hash.Hash interface,
// the caller's bytes would escape to the heap.
func hmacSum[S string | []byte](k hmacKey, signed S, buf []byte) []byte {
	m := k.macs.Get().(*pooledMAC)
	m.Reset()
	m.input = append(m.input[:0], signed...)
	_, _ = m.Write(m.input)
	buf = append(buf, m.Sum(m.sum[:0])...)
	if cap(m.input) > maxPooledInput {
		m.input = nil
	}
	k.macs.Put(m)
	return buf
}

package wechatlogin

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golang-jwt/jwt/v5"
)

// headerSession carries a session token: on a login response to the client,
// and on later requests from it (as does Authorization: Bearer).
const headerSession = "X-Wx-Session"

// maxClockSkew is how far in the future a token's iat may be: gateways behind
// one load balancer verify each other's tokens, and their clocks differ a
// little.
const maxClockSkew = 60 // seconds

// minSessionSecret is the shortest HMAC key accepted: HS256 is only as strong
// as its key, and 32 bytes matches the hash size.
const minSessionSecret = 32

// SessionConfig makes the handler issue a session token at login and accept
// it on later requests, so that every request of a player carries its
// identity and none costs a WeChat call.
type SessionConfig struct {
	// HMAC keys for the HS256 tokens, as written (placeholders such as
	// {env.X} and {file.PATH} are resolved at provision), 32 bytes or more.
	// The first signs new tokens; all of them verify, so a new key can be put
	// first without logging any player out.
	Secrets []string `json:"secrets,omitempty"`
	// How long a token is valid. Default 2h.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// Let requests without a valid session through, without identity,
	// instead of refusing them with 401.
	Optional bool `json:"optional,omitempty"`
	// Answer a successful login at the gateway with the token as JSON,
	// forwarding nothing, for backends with no login endpoint.
	Respond bool `json:"respond,omitempty"`
}

// sessionClaims are a token's claims. Nothing in them is secret: a token is
// only signed, and clients can read it.
type sessionClaims struct {
	AppID   string `json:"appid"`
	UnionID string `json:"unionid,omitempty"`
	jwt.RegisteredClaims
}

// sessions issues and verifies tokens for one app_id. Safe for concurrent
// use: nothing in it changes after provision.
type sessions struct {
	appID string
	keys  []sessionKey // the first signs
	ttl   time.Duration
	now   func() time.Time
}

// sessionKey is one verifying key with a pool of HMACs keyed with it, so
// that verifying a token neither allocates a hash nor takes a shared lock.
type sessionKey struct {
	secret []byte
	macs   *sync.Pool
}

func newSessions(appID string, secrets [][]byte, ttl time.Duration, now func() time.Time) *sessions {
	s := &sessions{appID: appID, ttl: ttl, now: now}
	for _, secret := range secrets {
		s.keys = append(s.keys, sessionKey{secret: secret, macs: &sync.Pool{
			New: func() any { return hmac.New(sha256.New, secret) },
		}})
	}
	return s
}

// issue signs a token for id.
func (s *sessions) issue(id Identity, now time.Time) (token string, expires time.Time, err error) {
	expires = now.Add(s.ttl).Truncate(time.Second)
	claims := sessionClaims{
		AppID:   s.appID,
		UnionID: id.UnionID,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   id.OpenID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(expires),
		},
	}
	signing, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SigningString()
	if err != nil {
		return "", time.Time{}, err
	}
	// Signed here rather than by SignedString, which keys a new HMAC for
	// every token; this is the same HS256 signature.
	var mac [sha256.Size]byte
	return signing + "." + base64.RawURLEncoding.EncodeToString(s.keys[0].sum(signing, mac[:0])), expires, nil
}

// hs256Header is the encoded JOSE header of every token issue makes. verify
// accepts no other, which rules out "none", other algorithms and key
// confusion before any parsing.
var hs256Header = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// strictRawURL refuses the spellings of a segment that differ only in unused
// trailing bits, so that a token has exactly one valid form.
var strictRawURL = base64.RawURLEncoding.Strict()

var (
	errNoSession        = errors.New("no session token")
	errMalformedSession = errors.New("session token is malformed")
	errSessionSignature = errors.New("session token signature is invalid")
	errSessionExpired   = errors.New("session token has expired or is not valid yet")
	errForeignSession   = errors.New("session was issued for another app")
)

// verifiedClaims are the claims verify reads, after the signature checked.
type verifiedClaims struct {
	Subject  string `json:"sub"`
	AppID    string `json:"appid"`
	UnionID  string `json:"unionid"`
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
}

// parseFlat reads the claims the way issue writes them: a flat JSON object of
// the five known keys, plain strings (no escapes) and whole numbers. It runs
// only on a payload whose signature checked, and reports false for anything
// else, which the caller then hands to encoding/json; it exists because
// reflection-based decoding was the largest cost of a verified request.
func (c *verifiedClaims) parseFlat(b []byte) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	last := len(b) - 1
	for i := 1; i < last; {
		key, next, ok := flatString(b, i)
		if !ok || next >= last || b[next] != ':' {
			return false
		}
		i = next + 1
		var text []byte
		var number int64
		switch string(key) {
		case "sub", "appid", "unionid":
			text, i, ok = flatString(b, i)
		case "iat", "exp":
			number, i, ok = flatInt(b, i)
		default:
			return false // not a key issue writes: let encoding/json decide
		}
		if !ok {
			return false
		}
		switch string(key) {
		case "sub":
			c.Subject = string(text)
		case "appid":
			c.AppID = string(text)
		case "unionid":
			c.UnionID = string(text)
		case "iat":
			c.IssuedAt = number
		case "exp":
			c.Expires = number
		}
		if i < last && b[i] == ',' && i+1 < last {
			i++
		} else if i != last {
			return false
		}
	}
	return true
}

// flatString reads a JSON string of plain printable ASCII at
// b[i], returning its contents and the index after it.
func flatString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80: // escapes, control bytes, non-ASCII: encoding/json's job
			return nil, i, false
		}
	}
	return nil, i, false
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

// verify checks a token's header, signature, expiry and app_id. It runs on
// every game request, so instead of a general JWT parser it checks exactly
// the shape issue produces: the header by string comparison, the HMAC with
// a pooled hash, then the claims.
func (s *sessions) verify(token string) (Identity, error) {
	header, rest, ok := strings.Cut(token, ".")
	if !ok || header != hs256Header {
		return Identity{}, errMalformedSession
	}
	payload, signature, ok := strings.Cut(rest, ".")
	if !ok || len(signature) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		return Identity{}, errMalformedSession
	}
	var encoded [43]byte // base64 of a SHA-256 sum, copied so that decoding it allocates nothing
	var mac, want [sha256.Size]byte
	if n, err := strictRawURL.Decode(mac[:], encoded[:copy(encoded[:], signature)]); err != nil || n != sha256.Size {
		return Identity{}, errMalformedSession
	}
	signed := token[:len(header)+1+len(payload)]
	if !s.signedByAKey(signed, mac[:], want[:0]) {
		return Identity{}, errSessionSignature
	}

	raw := make([]byte, base64.RawURLEncoding.DecodedLen(len(payload)))
	n, err := strictRawURL.Decode(raw, []byte(payload))
	if err != nil {
		return Identity{}, errMalformedSession
	}
	var claims verifiedClaims
	if !claims.parseFlat(raw[:n]) {
		claims = verifiedClaims{}
		if err := json.Unmarshal(raw[:n], &claims); err != nil {
			return Identity{}, errMalformedSession
		}
	}
	now := s.now().Unix()
	if claims.Expires == 0 || now >= claims.Expires || claims.IssuedAt > now+maxClockSkew {
		return Identity{}, errSessionExpired
	}
	if claims.AppID != s.appID {
		return Identity{}, errForeignSession
	}
	if claims.Subject == "" {
		return Identity{}, errMalformedSession
	}
	return Identity{OpenID: claims.Subject, UnionID: claims.UnionID}, nil
}

// signedByAKey reports whether mac is the HMAC of signed under one of the
// keys, comparing in constant time.
func (s *sessions) signedByAKey(signed string, mac, buf []byte) bool {
	for _, key := range s.keys {
		if hmac.Equal(key.sum(signed, buf), mac) {
			return true
		}
	}
	return false
}

// sum appends the HMAC-SHA256 of signed under k to buf.
func (k sessionKey) sum(signed string, buf []byte) []byte {
	h := k.macs.Get().(hash.Hash)
	h.Reset()
	_, _ = io.WriteString(h, signed)
	sum := h.Sum(buf)
	k.macs.Put(h)
	return sum
}

// sessionToken finds the token a request presents, and whether it came as
// Authorization: Bearer (which the caller may need to remove).
func sessionToken(r *http.Request) (token string, fromAuthorization bool) {
	if token = r.Header.Get(headerSession); token != "" {
		return token, false
	}
	auth := r.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		return strings.TrimSpace(auth[7:]), true
	}
	return "", false
}

// presentedSession returns the identity of a valid session on r, removing the
// token so it does not reach the upstream. The error says why there is none:
// errNoSession, or why the token presented was refused.
func (s *sessions) presentedSession(r *http.Request) (Identity, error) {
	token, fromAuthorization := sessionToken(r)
	// X-WX-SESSION is ours alone: it never goes upstream, valid or not. A
	// bearer token that is not ours may be the backend's own, so it is only
	// removed once verified.
	r.Header.Del(headerSession)
	if token == "" {
		return Identity{}, errNoSession
	}
	id, err := s.verify(token)
	if err != nil {
		return Identity{}, err
	}
	if fromAuthorization {
		r.Header.Del("Authorization")
	}
	return id, nil
}

// sessionRejection names why a request's session was refused, as the
// sessions_rejected_total metric's reason label: a small fixed set.
func sessionRejection(err error) string {
	switch err {
	case errNoSession:
		return "missing"
	case errSessionSignature:
		return "bad_signature"
	case errSessionExpired:
		return "expired"
	case errForeignSession:
		return "other_app"
	default:
		return "malformed"
	}
}

// sessionIssuingWriter adds the session token to a successful (2xx) upstream
// response to a login. Any other response goes out without a token.
type sessionIssuingWriter struct {
	*caddyhttp.ResponseWriterWrapper
	token       string
	wroteHeader bool
}

func (w *sessionIssuingWriter) WriteHeader(status int) {
	if !w.wroteHeader && status >= 200 {
		w.wroteHeader = true
		if status < 300 {
			w.Header().Set(headerSession, w.token)
		} else {
			w.Header().Del(headerSession)
		}
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}

func (w *sessionIssuingWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.Write(b)
}

// ReadFrom is overridden because the wrapper's own would reach the
// underlying writer without passing through WriteHeader above.
func (w *sessionIssuingWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

package wechatlogin

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golang-jwt/jwt/v5"
)

// headerSession carries a session token: on a login response to the client,
// and on later requests from it (as does Authorization: Bearer).
const headerSession = "X-Wx-Session"

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
	appID   string
	signKey []byte
	keys    jwt.VerificationKeySet
	ttl     time.Duration
	parser  *jwt.Parser
}

func newSessions(appID string, secrets [][]byte, ttl time.Duration, now func() time.Time) *sessions {
	s := &sessions{appID: appID, signKey: secrets[0], ttl: ttl}
	for _, secret := range secrets {
		s.keys.Keys = append(s.keys.Keys, secret)
	}
	s.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), // never "none", never RS/HS confusion
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(now),
	)
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
	token, err = jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.signKey)
	return token, expires, err
}

var errForeignSession = errors.New("session was issued for another app")

// verify checks a token's signature, algorithm, expiry and app_id.
func (s *sessions) verify(token string) (Identity, error) {
	var claims sessionClaims
	_, err := s.parser.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return s.keys, nil })
	if err != nil {
		return Identity{}, err
	}
	if claims.AppID != s.appID {
		return Identity{}, errForeignSession
	}
	if claims.Subject == "" {
		return Identity{}, jwt.ErrTokenInvalidSubject
	}
	return Identity{OpenID: claims.Subject, UnionID: claims.UnionID}, nil
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
// token so it does not reach the upstream. ok is false when r has no session
// or an invalid one.
func (s *sessions) presentedSession(r *http.Request) (id Identity, presented, ok bool) {
	token, fromAuthorization := sessionToken(r)
	// X-WX-SESSION is ours alone: it never goes upstream, valid or not. A
	// bearer token that is not ours may be the backend's own, so it is only
	// removed once verified.
	r.Header.Del(headerSession)
	if token == "" {
		return Identity{}, false, false
	}
	id, err := s.verify(token)
	if err != nil {
		return Identity{}, true, false
	}
	if fromAuthorization {
		r.Header.Del("Authorization")
	}
	return id, true, true
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

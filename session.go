package wechatlogin

import (
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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
	case errSessionNotYetValid:
		return "not_yet_valid"
	case errSessionAudience:
		return "wrong_audience"
	case errForeignSession:
		return "other_app"
	default:
		return "malformed"
	}
}

// sessionIssuingWriter adds the session token to a successful (2xx) upstream
// response to a login, in the header of the login app's family
// (X-WX-SESSION…), with Cache-Control: no-store in place of whatever
// caching the upstream allowed, so that no shared cache keeps one player's
// token for another. Any other response goes out without a token.
type sessionIssuingWriter struct {
	caddyhttp.ResponseWriterWrapper
	header      string
	token       string
	wroteHeader bool
	// values backs the two header values it sets, so that a login's writer
	// and its headers cost one allocation.
	values [2]string
}

func newSessionIssuingWriter(w http.ResponseWriter, header, token string) *sessionIssuingWriter {
	return &sessionIssuingWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, header: header, token: token}
}

func (w *sessionIssuingWriter) WriteHeader(status int) {
	if !w.wroteHeader && status >= 200 {
		w.wroteHeader = true
		if status < 300 {
			// Header().Set with the names already canonical, each value a
			// slice of its own (full capacity: an append copies it).
			w.values = [2]string{w.token, "no-store"}
			w.Header()[w.header] = w.values[0:1:1]
			w.Header()["Cache-Control"] = w.values[1:2:2]
		} else {
			w.Header().Del(w.header)
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

// bearerToken is the token of an Authorization: Bearer header, if any.
func bearerToken(r *http.Request) string {
	var auth string
	if values := r.Header["Authorization"]; len(values) > 0 { // Get, with the name already canonical
		auth = values[0]
	}
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		return strings.TrimSpace(auth[7:])
	}
	return ""
}

// presentedSession returns the identity of a valid session on r, and its
// app: session, the X-WX-SESSION (X-TT-SESSION…) value the client sent
// (read before the identity families were stripped), or an Authorization:
// Bearer token; either valid one will do.
// A bearer token that verifies is removed, whichever token names the
// identity, so that the gateway's token never reaches the upstream; one
// that does not verify may be the backend's own and stays. The error says
// why there is no session: errNoSession, or why the first token presented
// was refused.
func (t *sessionTokens) presentedSession(r *http.Request, session string) (Identity, *loginApp, error) {
	return t.presentedWithin(r, session, 0)
}

// presentedPlayer returns whose budget a token of app on r, as
// presentedSession finds it, names ("" if none), the token having maybe
// expired less than grace ago: the signature still proves whose it is, so
// a login loop can be charged to its player before any platform call.
func (t *sessionTokens) presentedPlayer(r *http.Request, app *loginApp, session string, grace time.Duration) string {
	id, tokenApp, err := t.presentedWithin(r, session, grace)
	if err != nil || tokenApp != app {
		return ""
	}
	return id.player()
}

// presentedWithin is presentedSession, accepting tokens up to expiredFor
// past their expiry. With a refusal, the app is the one the refused token
// names under a valid signature, as verifyWithin reports it, or nil.
func (t *sessionTokens) presentedWithin(r *http.Request, session string, expiredFor time.Duration) (Identity, *loginApp, error) {
	bearer := bearerToken(r)
	if session == "" && bearer == "" {
		return Identity{}, nil, errNoSession
	}
	var id Identity
	var app *loginApp
	var refused error
	if session != "" {
		id, app, refused = t.verifyWithin(session, expiredFor)
	}
	if bearer != "" {
		bearerID, bearerApp, err := t.verifyWithin(bearer, expiredFor)
		switch {
		case err == nil:
			delete(r.Header, "Authorization")
			if session == "" || refused != nil {
				id, app, refused = bearerID, bearerApp, nil
			}
		case session == "":
			app, refused = bearerApp, err
		}
	}
	return id, app, refused
}
